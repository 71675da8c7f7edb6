"""Error behaviour of the server API as `cent` (and plain HTTP) sees it."""

from __future__ import annotations

import httpx
import pytest
from cent import (
    CentApiResponseError,
    CentUnauthorizedError,
    InfoRequest,
    PresenceRequest,
    PublishRequest,
)

from tidings_testlib import make_sync_api, unique

UNKNOWN_CHANNEL = 102
BAD_REQUEST = 107


def test_wrong_api_key_raises_unauthorized(server):
    with make_sync_api(server, api_key="definitely-wrong") as api:
        with pytest.raises(CentUnauthorizedError):
            api.publish(PublishRequest(channel=unique("auth"), data={}))
        with pytest.raises(CentUnauthorizedError):
            api.info(InfoRequest())


async def test_wrong_api_key_raises_unauthorized_async(server):
    async with server.async_api(api_key="definitely-wrong") as api:
        with pytest.raises(CentUnauthorizedError):
            await api.info(InfoRequest())


def test_publish_to_unknown_namespace(api):
    with pytest.raises(CentApiResponseError) as err:
        api.publish(PublishRequest(channel="nosuchns:" + unique("chan"), data={"text": "x"}))
    assert err.value.code == UNKNOWN_CHANNEL


def test_presence_of_unknown_namespace(api):
    with pytest.raises(CentApiResponseError) as err:
        api.presence(PresenceRequest(channel="nosuchns:" + unique("chan")))
    assert err.value.code == UNKNOWN_CHANNEL


def test_publish_without_channel_is_bad_request(api):
    with pytest.raises(CentApiResponseError) as err:
        api.publish(PublishRequest(channel="", data={}))
    assert err.value.code == BAD_REQUEST


@pytest.fixture
def http():
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        yield client


def test_raw_error_body_shape(server, http):
    resp = http.post(server.api_url + "/publish", headers={"X-API-Key": server.api_key},
                     json={"channel": "nosuchns:a", "data": {}})
    # Centrifugo answers API-level errors with 200 and an `error` object.
    assert resp.status_code == 200
    body = resp.json()
    assert body["error"]["code"] == UNKNOWN_CHANNEL, body
    assert isinstance(body["error"]["message"], str), body
    assert "result" not in body, body


def test_missing_api_key_is_401(server, http):
    resp = http.post(server.api_url + "/info", json={})
    assert resp.status_code == 401


def test_authorization_apikey_header(server, http):
    resp = http.post(server.api_url + "/info", json={},
                     headers={"Authorization": f"apikey {server.api_key}"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"]["nodes"], resp.text
    wrong = http.post(server.api_url + "/info", json={},
                      headers={"Authorization": "apikey nope"})
    assert wrong.status_code == 401


def test_unknown_method_is_404(server, http):
    resp = http.post(server.api_url + "/no_such_method", json={},
                     headers={"X-API-Key": server.api_key})
    assert resp.status_code == 404


def test_unparsable_body_is_400(server, http):
    resp = http.post(server.api_url + "/publish", content=b"{not json",
                     headers={"X-API-Key": server.api_key, "Content-Type": "application/json"})
    assert resp.status_code == 400


def test_health(server, http):
    resp = http.get(server.base_url + "/health")
    assert resp.status_code == 200
    assert resp.json() == {}
