"""Backend proxies with centrifuge-python and a real Python backend:
examples/backend-python (aiohttp, sqlite3) started by the test, and Tidings with the
example's configuration. The client signs in by cookie with no token; the backend
allows one subscription and refuses another, stores and rewrites publications and
answers an RPC; python-socketio signs in and joins through the same proxies."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import socketio
from centrifuge import Client, SubscriptionState

from conftest import tidings_bin
from tidings_testlib import REPO_ROOT, EventLog, _ClientEvents, _SubEvents

EXAMPLE = REPO_ROOT / "examples" / "backend-python"
STARTUP_TIMEOUT = 20.0
LISTEN_PREFIX = "tidings listening on http://"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(name, None)
    return env


def _wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the example backend exited early (code {proc.returncode})", pytrace=False)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail("the example backend did not listen in time", pytrace=False)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)


@pytest.fixture
def proxied(tmp_path: Path):
    """The example backend and a Tidings configured for it; yields the base URL."""
    port = _free_port()
    backend = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "app.py"), "--port", str(port), "--db", str(tmp_path / "chat.sqlite3")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_clean_env(),
    )
    try:
        _wait_port(port, backend)
        config = (EXAMPLE / "tidings.toml").read_text().replace("127.0.0.1:3001", f"127.0.0.1:{port}")
        config_file = tmp_path / "tidings.toml"
        config_file.write_text(config)
        server = subprocess.Popen(
            [str(tidings_bin()), "serve", "--config", str(config_file), "--address", "127.0.0.1", "--port", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_clean_env(),
        )
        lines: "queue.Queue[str | None]" = queue.Queue()

        def read() -> None:
            assert server.stdout is not None
            for raw in server.stdout:
                lines.put(raw.decode("utf-8", "replace").strip())
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            base = None
            while base is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail("tidings did not start in time", pytrace=False)
                try:
                    line = lines.get(timeout=remaining)
                except queue.Empty:
                    continue
                if line is None:
                    pytest.fail(f"tidings exited early (code {server.poll()})", pytrace=False)
                if line.startswith(LISTEN_PREFIX):
                    base = "http://" + line[len(LISTEN_PREFIX):].rstrip("/")
            yield base
        finally:
            _stop(server)
            if server.stdout is not None:
                server.stdout.close()
    finally:
        _stop(backend)


def _client(base: str, log: EventLog, cookie: str | None) -> Client:
    url = "ws" + base[len("http"):] + "/connection/websocket"
    headers = {"Cookie": cookie} if cookie else None
    return Client(url, events=_ClientEvents(log), timeout=5.0, proxy=None, headers=headers,
                  max_reconnect_delay=0.5)


async def test_centrifuge_python_signs_in_by_cookie_through_the_connect_proxy(proxied):
    log = EventLog()
    alice = _client(proxied, log, "session=alice")
    try:
        await alice.connect()
        connected = await log.wait("connected")
        assert connected.data == {"welcome": "alice"}

        sub_log = EventLog()
        lobby = alice.new_subscription("chat:lobby", events=_SubEvents(sub_log))
        await lobby.subscribe()
        await sub_log.wait("subscribed")

        admin_log = EventLog()
        admin = alice.new_subscription("chat:admin", events=_SubEvents(admin_log))
        await admin.subscribe()
        refused = await admin_log.wait("unsubscribed")
        assert refused.code == 403
        assert admin.state == SubscriptionState.UNSUBSCRIBED

        # Stored by the backend and published as its stored copy.
        await lobby.publish({"text": "  stored in sqlite  "})
        publication = await sub_log.wait("publication")
        assert publication.pub.data["text"] == "stored in sqlite"
        assert publication.pub.data["author"] == "alice"
        assert isinstance(publication.pub.data["id"], int)

        history = await alice.rpc("history", {"room": "chat:lobby"})
        assert [m["text"] for m in history.data["messages"]] == ["stored in sqlite"]
    finally:
        await alice.disconnect()

    # No cookie: the backend's disconnect (4501) ends the attempt for good.
    stranger_log = EventLog()
    stranger = _client(proxied, stranger_log, None)
    try:
        await stranger.connect()
        gone = await stranger_log.wait("disconnected")
        assert gone.code == 4501
    finally:
        await stranger.disconnect()


async def _sio(base: str, user: str) -> socketio.AsyncClient:
    sio = socketio.AsyncClient(reconnection=False)
    await asyncio.wait_for(
        sio.connect(base, namespaces=["/chat"], transports=["polling"],
                    headers={"Cookie": f"session={user}"}),
        10,
    )
    return sio


async def test_python_socketio_connects_and_joins_through_the_proxies(proxied):
    sio = await _sio(proxied, "sam")
    # Another socket in the room hears the publication (the sender does not).
    listener = await _sio(proxied, "una")
    try:
        heard: asyncio.Queue = asyncio.Queue()
        listener.on("message", lambda msg: heard.put_nowait(msg), namespace="/chat")
        ok = await listener.call("tidings:join", {"room": "lobby"}, namespace="/chat", timeout=5)
        assert ok["ok"] is True, ok
        joined = await sio.call("tidings:join", {"room": "lobby"}, namespace="/chat", timeout=5)
        assert joined["ok"] is True, joined
        refused = await sio.call("tidings:join", {"room": "admin"}, namespace="/chat", timeout=5)
        assert refused == {"ok": False, "error": "permission denied"}
        sent = await sio.call(
            "tidings:publish", {"room": "lobby", "event": "message", "args": [{"text": "hi from python"}]},
            namespace="/chat", timeout=5,
        )
        assert sent["ok"] is True, sent
        msg = await asyncio.wait_for(heard.get(), 5)
        assert msg["author"] == "sam"
        assert msg["text"] == "hi from python"
    finally:
        await sio.disconnect()
        await listener.disconnect()


def _stored_webhooks(db_path: Path) -> list[tuple]:
    import sqlite3

    if not db_path.exists():
        return []
    db = sqlite3.connect(db_path)
    try:
        return db.execute("SELECT name, channel, user_id, event, data FROM webhook_events").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


async def _wait_stored(db_path: Path, wanted: tuple, timeout: float = 15.0) -> list[tuple]:
    deadline = time.monotonic() + timeout
    while True:
        rows = _stored_webhooks(db_path)
        if any(row[: len(wanted)] == wanted for row in rows):
            return rows
        if time.monotonic() > deadline:
            pytest.fail(f"webhook event {wanted} not stored; stored: {rows}", pytrace=False)
        await asyncio.sleep(0.05)


async def test_webhooks_are_verified_by_pushers_own_library_in_the_example(proxied, tmp_path: Path):
    """The example backend checks every webhook with the `pusher` package's
    validate_webhook (key, HMAC-SHA256 signature, time_ms) and stores its events."""
    db_path = tmp_path / "chat.sqlite3"
    log = EventLog()
    alice = _client(proxied, log, "session=alice")
    try:
        await alice.connect()
        await log.wait("connected")
        sub_log = EventLog()
        room = alice.new_subscription("chat:hooks", events=_SubEvents(sub_log))
        await room.subscribe()
        await sub_log.wait("subscribed")
        await room.publish({"text": "hello hooks"})
        await sub_log.wait("publication")
        await _wait_stored(db_path, ("channel_occupied", "chat:hooks", None))
        await _wait_stored(db_path, ("member_added", "chat:hooks", "alice"))
        rows = await _wait_stored(db_path, ("client_event", "chat:hooks", "alice", "publication"))
        event = next(r for r in rows if r[0] == "client_event")
        assert '"hello hooks"' in event[4], event
    finally:
        await alice.disconnect()
    await _wait_stored(db_path, ("member_removed", "chat:hooks", "alice"))
    await _wait_stored(db_path, ("channel_vacated", "chat:hooks", None))

    # A forged webhook is refused by the library's check.
    import urllib.error
    import urllib.request

    config = (tmp_path / "tidings.toml").read_text()
    backend = config.split('endpoint = "http://')[1].split("/")[0]
    forged = urllib.request.Request(
        f"http://{backend}/tidings/webhooks",
        data=b'{"time_ms": 1, "events": []}',
        headers={"Content-Type": "application/json", "X-Pusher-Key": "example-webhook-key",
                 "X-Pusher-Signature": "0" * 64},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=5)
    assert refused.value.code == 401
