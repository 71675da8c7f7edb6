"""The python-socketio client against Tidings' Socket.IO front door: it connects
over each transport, joins a room, emits an event other clients receive, and
receives server API publications."""

from __future__ import annotations

import asyncio

import pytest
import socketio
from cent import PublishRequest

from tidings_testlib import unique


async def _connected(server, transport: str, **kwargs) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(server.base_url, transports=[transport], wait_timeout=5, **kwargs)
    return client


@pytest.mark.parametrize("transport", ["polling", "websocket"])
async def test_python_socketio_connects_emits_and_receives(server, transport):
    room = unique("pysio")
    alice = await _connected(server, transport)
    bob = await _connected(server, transport)
    try:
        got: asyncio.Queue = asyncio.Queue()
        bob.on("chat", lambda *args: got.put_nowait(list(args)))
        bob.on("message", lambda data: got.put_nowait(["message", data]))
        for client in (alice, bob):
            ack = await client.call("tidings:join", {"room": room}, timeout=5)
            assert ack == {"ok": True, "room": room}

        ack = await alice.call(
            "tidings:publish", {"room": room, "event": "chat", "args": ["hi", {"n": 1}]}, timeout=5
        )
        assert ack["ok"] is True
        assert await asyncio.wait_for(got.get(), 5) == ["hi", {"n": 1}]

        async with server.async_api() as api:
            await api.publish(PublishRequest(channel=room, data={"from": "api"}))
        assert await asyncio.wait_for(got.get(), 5) == ["message", {"from": "api"}]

        presence = await alice.call("tidings:presence", {"room": room}, timeout=5)
        assert presence["ok"] is True
        assert sorted(m["client"] for m in presence["members"]) == sorted([alice.get_sid(), bob.get_sid()])
    finally:
        await alice.disconnect()
        await bob.disconnect()


async def test_python_socketio_refused_room_gets_an_error_ack(server):
    client = await _connected(server, "websocket")
    try:
        ack = await client.call("tidings:join", {"room": "$private"}, timeout=5)
        assert ack == {"ok": False, "error": "permission denied"}
        ack = await client.call("no-such-event", {}, timeout=5)
        assert ack["ok"] is False
    finally:
        await client.disconnect()
