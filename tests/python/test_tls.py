"""TLS (`http_server.tls`): `cent` publishes over https:// and centrifuge-python
receives over wss://, both trusting only a self-signed certificate that
`tidings dev-cert` made for this test."""

from __future__ import annotations

import os
import queue
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from cent import Client as SyncApi, CentNetworkError, PublishRequest, PublishResult
from centrifuge import Client

from conftest import tidings_bin
from tidings_testlib import EventLog, _ClientEvents, _SubEvents, unique

STARTUP_TIMEOUT = 20.0
API_KEY = "py-tls-key"
LISTEN_PREFIX = "tidings listening on https://"


@pytest.fixture
def tls_server(tmp_path: Path):
    """A `tidings serve` with TLS on a free port; yields (base URL, cert path)."""
    binary = str(tidings_bin())
    subprocess.run(
        [binary, "dev-cert", "--out", str(tmp_path)],
        check=True, timeout=10, stdout=subprocess.DEVNULL,
    )
    cert = tmp_path / "cert.pem"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(
        {
            "TIDINGS_HTTP_API_KEY": API_KEY,
            "TIDINGS_HTTP_SERVER_TLS_ENABLED": "true",
            "TIDINGS_HTTP_SERVER_TLS_CERT_PEM": str(cert),
            "TIDINGS_HTTP_SERVER_TLS_KEY_PEM": str(tmp_path / "key.pem"),
        }
    )
    proc = subprocess.Popen(
        [binary, "serve", "--address", "127.0.0.1", "--port", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )
    lines: "queue.Queue[str | None]" = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode("utf-8", "replace").strip())
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        base_url = None
        while base_url is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail("tidings did not announce an https:// listener in time", pytrace=False)
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"tidings exited early (code {proc.poll()})", pytrace=False)
            if line.startswith(LISTEN_PREFIX):
                base_url = "https://" + line[len(LISTEN_PREFIX):].rstrip("/")
        yield base_url, cert
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def https_api(base_url: str, verify) -> SyncApi:
    session = requests.Session()
    session.trust_env = False
    session.verify = verify
    return SyncApi(base_url + "/api", API_KEY, timeout=5.0, session=session)


async def test_cent_publishes_over_https_to_a_wss_subscriber(tls_server):
    base_url, cert = tls_server
    channel = unique("tls")
    context = ssl.create_default_context(cafile=str(cert))
    log = EventLog()
    client = Client(
        "wss" + base_url[len("https"):] + "/connection/websocket",
        events=_ClientEvents(log), timeout=5.0, proxy=None, ssl_context=context,
    )
    try:
        await client.connect()
        await log.wait("connected")
        sub_log = EventLog()
        sub = client.new_subscription(channel, events=_SubEvents(sub_log))
        await sub.subscribe()
        await sub_log.wait("subscribed")

        api = https_api(base_url, str(cert))
        try:
            result = api.publish(PublishRequest(channel=channel, data={"text": "over https"}))
        finally:
            api.close()
        assert isinstance(result, PublishResult)

        ctx = await sub_log.wait("publication")
        assert ctx.pub.data == {"text": "over https"}
    finally:
        await client.disconnect()


def test_cent_refuses_the_certificate_when_it_does_not_trust_it(tls_server):
    base_url, _cert = tls_server
    api = https_api(base_url, True)  # the system CA bundle only
    try:
        with pytest.raises(CentNetworkError):
            api.publish(PublishRequest(channel=unique("tls"), data={}))
    finally:
        api.close()
