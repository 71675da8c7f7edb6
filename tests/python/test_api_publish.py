"""publish, broadcast and batch through the real `cent` library, observed by a
real centrifuge-python subscriber."""

from __future__ import annotations

import httpx
from cent import (
    BatchRequest,
    BatchResult,
    BroadcastRequest,
    BroadcastResult,
    HistoryRequest,
    HistoryResult,
    PresenceStatsRequest,
    PresenceStatsResult,
    PublishRequest,
    PublishResult,
)

from tidings_testlib import Clients, unique


async def test_publish_is_delivered_to_subscriber(server, wire):
    channel = unique("pub")
    async with Clients(server, wire) as clients:
        conn = await clients.connect()
        sub = await conn.subscribe(channel)
        async with server.async_api() as api:
            result = await api.publish(
                PublishRequest(channel=channel, data={"text": "hello"}, tags={"kind": "greeting"})
            )
        assert isinstance(result, PublishResult)
        # The development profile keeps history, so the publication gets a stream position.
        assert result.offset == 1
        assert result.epoch

        ctx = await sub.wait("publication")
        assert wire.read(ctx.pub.data) == {"text": "hello"}
        assert ctx.pub.offset == 1
        assert ctx.pub.tags == {"kind": "greeting"}
        # Published by the server API, so there is no publisher client info.
        assert ctx.pub.info is None


async def test_publish_offsets_increase_and_order_is_kept(server, wire):
    channel = unique("order")
    async with Clients(server, wire) as clients:
        conn = await clients.connect()
        sub = await conn.subscribe(channel)
        async with server.async_api() as api:
            results = [await api.publish(PublishRequest(channel=channel, data={"n": n}))
                       for n in range(5)]
        assert [r.offset for r in results] == [1, 2, 3, 4, 5]
        assert len({r.epoch for r in results}) == 1
        pubs = await sub.publications(5)
        assert [wire.read(p.data) for p in pubs] == [{"n": n} for n in range(5)]
        assert [p.offset for p in pubs] == [1, 2, 3, 4, 5]


async def test_publish_non_object_data(server, wire):
    """`data` is any JSON value, not only an object."""
    channel = unique("scalar")
    async with Clients(server, wire) as clients:
        conn = await clients.connect()
        sub = await conn.subscribe(channel)
        async with server.async_api() as api:
            for value in ("plain string", 42, [1, "two", None], True):
                await api.publish(PublishRequest(channel=channel, data=value))
        pubs = await sub.publications(4)
        assert [wire.read(p.data) for p in pubs] == ["plain string", 42, [1, "two", None], True]


def test_publish_idempotency_key(api):
    """A repeated publish with the same idempotency key is dropped and answers the
    first result (Centrifugo >= 5.2, exposed by cent's PublishRequest)."""
    channel = unique("idem")
    first = api.publish(PublishRequest(channel=channel, data={"n": 1}, idempotency_key="order-1"))
    again = api.publish(PublishRequest(channel=channel, data={"n": 1}, idempotency_key="order-1"))
    assert (again.offset, again.epoch) == (first.offset, first.epoch)
    history = api.history(HistoryRequest(channel=channel, limit=-1))
    assert [p.data for p in history.publications] == [{"n": 1}]


async def test_broadcast_reaches_every_channel(server, wire):
    first, second = unique("bc-a"), unique("bc-b")
    async with Clients(server, wire) as clients:
        conn_a = await clients.connect()
        sub_a = await conn_a.subscribe(first)
        conn_b = await clients.connect()
        sub_b = await conn_b.subscribe(second)
        async with server.async_api() as api:
            result = await api.broadcast(
                BroadcastRequest(channels=[first, second], data={"text": "to all"})
            )
        assert isinstance(result, BroadcastResult)
        assert len(result.responses) == 2
        for response in result.responses:
            assert response.error is None
            assert response.result is not None
            assert response.result.offset == 1
            assert response.result.epoch

        ctx_a = await sub_a.wait("publication")
        ctx_b = await sub_b.wait("publication")
        assert wire.read(ctx_a.pub.data) == {"text": "to all"}
        assert wire.read(ctx_b.pub.data) == {"text": "to all"}


def test_broadcast_reports_errors_per_channel(api):
    good = unique("bc-good")
    result = api.broadcast(
        BroadcastRequest(channels=[good, "nosuchns:" + unique("x")], data={"v": 1})
    )
    assert len(result.responses) == 2
    assert result.responses[0].error is None
    assert result.responses[0].result is not None and result.responses[0].result.offset == 1
    assert result.responses[1].result is None
    assert result.responses[1].error is not None
    assert result.responses[1].error.code == 102


def test_broadcast_raw_shape(server):
    """The exact wire shape cent parses: result.responses[i] is a PublishResponse."""
    good = unique("bc-raw")
    with httpx.Client(trust_env=False, timeout=5.0) as http:
        resp = http.post(
            server.api_url + "/broadcast",
            headers={"X-API-Key": server.api_key},
            json={"channels": [good, "nosuchns:y"], "data": {"v": 1}},
        )
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"result"}, body
    responses = body["result"]["responses"]
    assert len(responses) == 2, body
    assert "error" not in responses[0] or not responses[0]["error"], body
    assert responses[0]["result"]["offset"] == 1, body
    assert responses[1]["error"]["code"] == 102, body


async def test_batch_publishes_in_order(server, wire):
    first, second = unique("batch-a"), unique("batch-b")
    async with Clients(server, wire) as clients:
        conn = await clients.connect()
        sub_a = await conn.subscribe(first)
        sub_b = await conn.subscribe(second)
        async with server.async_api() as api:
            result = await api.batch(
                BatchRequest(
                    requests=[
                        PublishRequest(channel=first, data={"n": 1}),
                        PublishRequest(channel=first, data={"n": 2}),
                        PublishRequest(channel=second, data={"n": 3}),
                        HistoryRequest(channel=first, limit=10),
                        PresenceStatsRequest(channel=first),
                    ]
                )
            )
        assert isinstance(result, BatchResult)
        assert len(result.replies) == 5
        pub1, pub2, pub3, history, stats = result.replies
        assert isinstance(pub1, PublishResult) and pub1.offset == 1
        assert isinstance(pub2, PublishResult) and pub2.offset == 2
        assert isinstance(pub3, PublishResult) and pub3.offset == 1
        # Sequential batch: the history command sees both earlier publications.
        assert isinstance(history, HistoryResult)
        assert [p.data for p in history.publications] == [{"n": 1}, {"n": 2}]
        assert isinstance(stats, PresenceStatsResult)
        assert stats.num_clients == 1

        assert [wire.read(p.data) for p in await sub_a.publications(2)] == [{"n": 1}, {"n": 2}]
        assert [wire.read(p.data) for p in await sub_b.publications(1)] == [{"n": 3}]


def test_batch_parallel(api):
    channels = [unique("par") for _ in range(4)]
    result = api.batch(
        BatchRequest(
            requests=[PublishRequest(channel=ch, data={"ch": ch}) for ch in channels],
            parallel=True,
        )
    )
    assert len(result.replies) == 4
    assert all(isinstance(r, PublishResult) and r.offset == 1 for r in result.replies)
    for ch in channels:
        history = api.history(HistoryRequest(channel=ch, limit=10))
        assert [p.data for p in history.publications] == [{"ch": ch}]


def test_batch_raw_shape_with_error(server):
    """Batch replies are top-level `replies` (no `result` wrapper), one object per
    command keyed by the method name, or `error` for a failed command."""
    good = unique("batch-raw")
    with httpx.Client(trust_env=False, timeout=5.0) as http:
        resp = http.post(
            server.api_url + "/batch",
            headers={"X-API-Key": server.api_key},
            json={
                "commands": [
                    {"publish": {"channel": good, "data": {}}},
                    {"publish": {"channel": "nosuchns:z", "data": {}}},
                    {"presence_stats": {"channel": good}},
                ]
            },
        )
    assert resp.status_code == 200
    body = resp.json()
    assert list(body) == ["replies"], body
    replies = body["replies"]
    assert len(replies) == 3, body
    assert replies[0]["publish"]["offset"] == 1, body
    assert replies[1]["error"]["code"] == 102, body
    assert "publish" not in replies[1], body
    assert replies[2]["presence_stats"].get("num_clients", 0) == 0, body
