"""The NATS engine from Python: a backend publishes with nats-py on
`tidings.publish` (the envelope in docs/engines.md), and a real centrifuge-python
subscriber of a Tidings node on `engine.type = "nats"` receives it.

This module starts its own `nats-server -js` and its own Tidings node (the shared
server of the other tests runs the memory engine).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import nats
import pytest

from tidings_testlib import REPO_ROOT, Clients, ServerHandle, unique

STARTUP_TIMEOUT = 20.0
LISTEN_PREFIX = "tidings listening on http://"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nats_binary() -> str:
    for candidate in (shutil.which("nats-server"), "/usr/sbin/nats-server", "/usr/bin/nats-server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("nats-server is not installed (apt-get install nats-server)", pytrace=False)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def nats_node():
    """(nats URL, ServerHandle of a Tidings node on the NATS engine)."""
    store = tempfile.mkdtemp(prefix="tidings-py-nats-")
    port = _free_port()
    nats_proc = subprocess.Popen(
        [_nats_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"nats://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or nats_proc.poll() is not None:
                _stop(nats_proc)
                pytest.fail("nats-server did not start", pytrace=False)
            time.sleep(0.05)

    binary = Path(os.environ.get("TIDINGS_BIN", str(REPO_ROOT / "target" / "debug" / "tidings")))
    api_key = "py-nats-" + secrets.token_hex(8)
    secret = "py-nats-secret-" + secrets.token_hex(8)
    env = dict(os.environ)
    env.update({
        "TIDINGS_HTTP_API_KEY": api_key,
        "TIDINGS_CLIENT_TOKEN_HMAC_SECRET_KEY": secret,
        "TIDINGS_ENGINE_TYPE": "nats",
        "TIDINGS_ENGINE_NATS_URL": url,
        "TIDINGS_SHUTDOWN_TIMEOUT": "2s",
    })
    node = subprocess.Popen(
        [str(binary), "serve", "--address", "127.0.0.1", "--port", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )
    listen: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert node.stdout is not None
        for raw in node.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith(LISTEN_PREFIX):
                listen.append(line)
                seen.set()
        seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not seen.wait(STARTUP_TIMEOUT) or not listen:
            pytest.fail("tidings on the NATS engine did not start", pytrace=False)
        hostport = listen[0][len(LISTEN_PREFIX):].strip().rstrip("/")
        handle = ServerHandle(base_url=f"http://{hostport}", api_key=api_key, token_secret=secret)
        yield url, handle
    finally:
        _stop(node)
        reader.join(timeout=5)
        _stop(nats_proc)
        shutil.rmtree(store, ignore_errors=True)


async def _request_when_ready(nc, body: dict) -> dict:
    """The node subscribes to `tidings.publish` once it is connected to NATS."""
    deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT
    while True:
        try:
            msg = await nc.request("tidings.publish", json.dumps(body).encode(), timeout=2)
            return json.loads(msg.data)
        except nats.errors.NoRespondersError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_a_backend_publishes_with_nats_py_and_a_subscriber_receives_it(nats_node, wire):
    url, server = nats_node
    channel = unique("nats-py")
    nc = await nats.connect(url)
    try:
        await _request_when_ready(nc, {"channel": unique("warmup"), "data": {}})
        async with Clients(server, wire) as clients:
            conn = await clients.connect()
            sub = await conn.subscribe(channel)
            # The documented envelope, as docs/engines.md sends it.
            reply = await _request_when_ready(nc, {"channel": channel, "data": {"text": "hello"},
                                                   "tags": {"from": "python"}})
            assert reply["result"]["offset"] == 1, reply
            assert reply["result"]["epoch"]
            ctx = await sub.wait("publication")
            assert wire.read(ctx.pub.data) == {"text": "hello"}
            assert ctx.pub.offset == 1
            assert ctx.pub.tags == {"from": "python"}

            # A retry with the same idempotency key returns the first result.
            keyed = {"channel": channel, "data": {"n": 2}, "idempotency_key": "py-1"}
            first = await _request_when_ready(nc, keyed)
            again = await _request_when_ready(nc, keyed)
            assert first == again and first["result"]["offset"] == 2, (first, again)

            # A refused publish gets an error reply with the protocol code.
            refused = await _request_when_ready(nc, {"channel": "nope:" + channel, "data": 1})
            assert refused["error"]["code"] == 102, refused
    finally:
        await nc.close()
