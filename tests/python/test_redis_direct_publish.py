"""Publishing from a Python backend straight into the Redis engine (docs/engines.md):
redis-py adds an entry to the `tidings.publish` stream, a tidings node on
`engine.type = "redis"` publishes it, and the HTTP API's history shows it.

This test runs its own redis-server and tidings processes (the session's shared
server uses the memory engine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from conftest import LISTEN_PREFIX, tidings_bin
from tidings_testlib import unique

DEADLINE = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(found).is_file():
        pytest.fail("redis-server is not installed (apt-get install redis-server)", pytrace=False)
    return found


@pytest.fixture
def redis_url():
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="tidings-py-redis-")
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", workdir],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("redis-server did not start", pytrace=False)
                time.sleep(0.02)
        yield url
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def redis_node(redis_url):
    """A tidings node on the Redis engine: (base URL, API key)."""
    api_key = "py-redis-" + secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update({
        "TIDINGS_HTTP_API_KEY": api_key,
        "TIDINGS_ENGINE_TYPE": "redis",
        "TIDINGS_ENGINE_REDIS_ADDRESS": redis_url,
    })
    proc = subprocess.Popen(
        [str(tidings_bin()), "serve", "--address", "127.0.0.1", "--port", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.decode("utf-8", "replace").rstrip())
            if lines[-1].startswith(LISTEN_PREFIX):
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(DEADLINE), "tidings did not start"
        listen = [l for l in lines if l.startswith(LISTEN_PREFIX)]
        assert listen, f"tidings exited: {lines}"
        yield "http://" + listen[0][len(LISTEN_PREFIX):].strip().rstrip("/"), api_key
    finally:
        proc.kill()
        proc.wait()


def test_redis_py_publishes_through_the_stream_envelope(redis_url, redis_node):
    base_url, api_key = redis_node
    channel = unique("direct")
    backend = redis.Redis.from_url(redis_url)
    # What docs/engines.md shows.
    backend.xadd("tidings.publish", {"payload": json.dumps({
        "channel": channel,
        "data": {"text": "hello"},
        "idempotency_key": "msg-42",
        "tags": {"kind": "update"},
    })})
    # A retry with the same idempotency key is published once.
    backend.xadd("tidings.publish", {"payload": json.dumps({
        "channel": channel, "data": {"text": "hello"}, "idempotency_key": "msg-42",
    })})
    backend.xadd("tidings.publish", {"payload": json.dumps({
        "channel": channel, "data": {"text": "second"},
    })})

    deadline = time.monotonic() + DEADLINE
    with httpx.Client(trust_env=False, timeout=5.0) as http:
        while True:
            reply = http.post(
                base_url + "/api/history",
                headers={"X-API-Key": api_key},
                json={"channel": channel, "limit": -1},
            ).json()
            pubs = reply.get("result", {}).get("publications", [])
            if len(pubs) >= 2:
                break
            assert time.monotonic() < deadline, f"not published: {reply}"
            time.sleep(0.05)
    assert [p["data"] for p in pubs] == [{"text": "hello"}, {"text": "second"}]
    assert pubs[0]["tags"] == {"kind": "update"}
    # Every entry was handled and deleted from the stream.
    deadline = time.monotonic() + DEADLINE
    while backend.xlen("tidings.publish") != 0:
        assert time.monotonic() < deadline, "entries left in the stream"
        time.sleep(0.05)
