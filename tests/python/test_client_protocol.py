"""The client protocol through centrifuge-python, with JSON and with Protobuf clients
(the `wire` fixture): connect with a token, publish, presence and presence stats,
history, recovery after a cut connection, RPC, refresh, sub_refresh, join and leave,
server-side subscriptions. Then the two encodings in one channel: each sees the other's
publications, bytes that are not JSON go from one Protobuf client to another exactly
(live and from history), and a JSON subscriber is disconnected with 3506."""

from __future__ import annotations

import time

import pytest
from cent import PublishRequest
from centrifuge import ClientState, ReplyError, StreamPosition, SubscriptionState

from tidings_testlib import (
    JSON_WIRE,
    PROTOBUF_WIRE,
    RPC_NO_HANDLER_CODE,
    Clients,
    TcpProxy,
    eventually,
    hs256_jwt,
    unique,
)

# Centrifugo codes (docs/codes.md).
DISCONNECT_INVALID_TOKEN = 3500
DISCONNECT_INAPPROPRIATE_PROTOCOL = 3506


async def test_connect_with_a_token_names_the_user(server, wire):
    user, channel = unique("olga"), unique("who")
    async with Clients(server, wire) as clients:
        conn = await clients.connect(user, info={"name": "Olga"})
        sub = await conn.subscribe(channel)
        presence = await sub.sub.presence()
        info = presence.clients[conn.client_id]
        assert (info.client, info.user) == (conn.client_id, user)
        assert wire.read(info.conn_info) == {"name": "Olga"}


async def test_a_forged_token_is_disconnected_with_3500(server, wire):
    async with Clients(server, wire) as clients:
        forged = hs256_jwt("not-the-secret", {"sub": unique("mallory"), "exp": int(time.time()) + 60})
        conn = await clients.connect(token=forged, wait=False)
        ctx = await conn.wait("disconnected")
        assert ctx.code == DISCONNECT_INVALID_TOKEN
        assert conn.state == ClientState.DISCONNECTED
        assert conn.log.all("connected") == []


async def test_client_publish_reaches_every_subscriber_with_publisher_info(server, wire):
    user, channel = unique("pia"), unique("chat")
    async with Clients(server, wire) as clients:
        alice = await clients.connect(user)
        bob = await clients.connect()
        a = await alice.subscribe(channel)
        b = await bob.subscribe(channel)
        await a.sub.publish(wire.data({"text": "hello", "n": 1}))
        for sub in (a, b):
            [pub] = await sub.publications(1)
            assert wire.read(pub.data) == {"text": "hello", "n": 1}
            assert pub.offset == 1
            assert (pub.info.client, pub.info.user) == (alice.client_id, user)


async def test_presence_and_presence_stats_from_the_client(server, wire):
    channel = unique("room")
    alice, bob = unique("alice"), unique("bob")
    async with Clients(server, wire) as clients:
        conns = [await clients.connect(u) for u in (alice, alice, bob)]
        subs = [await c.subscribe(channel) for c in conns]
        presence = await conns[0].client.presence(channel)
        assert set(presence.clients) == {c.client_id for c in conns}
        assert {i.client: i.user for i in presence.clients.values()} == {
            c.client_id: c.user for c in conns
        }
        stats = await subs[2].sub.presence_stats()
        assert (stats.num_clients, stats.num_users) == (3, 2)

        await subs[2].sub.unsubscribe()

        async def bob_gone():
            s = await conns[0].client.presence_stats(channel)
            return (s.num_clients, s.num_users) == (2, 1)
        await eventually(bob_gone, what="presence_stats 2 clients / 1 user")


async def test_join_and_leave_between_two_clients(server, wire):
    channel = unique("lobby")
    async with Clients(server, wire) as clients:
        watcher = await clients.connect(unique("quinn"))
        watch = await watcher.subscribe(channel, join_leave=True)
        user = unique("rita")
        comer = await clients.connect(user)
        sub = await comer.subscribe(channel, join_leave=True)
        join = await watch.wait("join", lambda c: c.info.client == comer.client_id)
        assert join.info.user == user
        await sub.sub.unsubscribe()
        leave = await watch.wait("leave", lambda c: c.info.client == comer.client_id)
        assert leave.info.user == user


async def test_history_honours_limit_since_and_reverse(server, wire):
    channel = unique("feed")
    async with server.async_api() as api:
        for n in range(1, 7):
            await api.publish(PublishRequest(channel=channel, data={"n": n}))
    async with Clients(server, wire) as clients:
        conn = await clients.connect()
        sub = await conn.subscribe(channel)

        def values(result):
            return [wire.read(p.data)["n"] for p in result.publications]

        top = await sub.sub.history()
        assert (top.publications, top.offset) == ([], 6)
        assert top.epoch
        assert values(await sub.sub.history(limit=-1)) == [1, 2, 3, 4, 5, 6]
        assert values(await sub.sub.history(limit=2, reverse=True)) == [6, 5]
        since = StreamPosition(offset=2, epoch=top.epoch)
        assert values(await sub.sub.history(limit=3, since=since)) == [3, 4, 5]
        assert values(await conn.client.history(channel, limit=-1, since=since, reverse=True)) == [1]


async def test_recovery_after_a_cut_connection(server, wire):
    channel = unique("recover")
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    async with TcpProxy(host, int(port)) as proxy, Clients(server, wire) as clients, \
            server.async_api() as api:
        conn = await clients.connect(address=proxy.ws_url())
        sub = await conn.subscribe(channel, recoverable=True, positioned=True)
        first = await api.publish(PublishRequest(channel=channel, data={"n": 0}))
        await sub.publications(1)

        proxy.cut()
        await conn.wait("connecting")
        # Published while the client is away: it gets them by recovery, not live.
        for n in range(1, 6):
            await api.publish(PublishRequest(channel=channel, data={"n": n}))
        proxy.restore()

        ctx = await sub.wait("subscribed", lambda c: c.was_recovering, timeout=10.0)
        assert ctx.recovered
        assert ctx.stream_position.epoch == first.epoch
        await api.publish(PublishRequest(channel=channel, data={"n": "marker"}))
        pubs = await sub.publications(7)
        assert [wire.read(p.data)["n"] for p in pubs] == [0, 1, 2, 3, 4, 5, "marker"]
        assert [p.offset for p in pubs] == list(range(1, 8))
        assert proxy.accepted >= 2


async def test_rpc_without_a_handler_answers_the_documented_error(server, wire):
    async with Clients(server, wire) as clients:
        conn = await clients.connect()
        with pytest.raises(ReplyError) as err:
            await conn.client.rpc("sum", wire.data({"a": 1, "b": 2}))
        assert err.value.code == RPC_NO_HANDLER_CODE
        assert conn.state == ClientState.CONNECTED
        sub = await conn.subscribe(unique("after-rpc"))
        await sub.sub.publish(wire.data({"still": "here"}))
        await sub.publications(1)


async def test_refresh_and_sub_refresh_renew_short_lived_tokens(server, wire):
    """Both tokens live two seconds: the client renews the connection with `refresh`
    and the subscription with `sub_refresh`, and neither is interrupted."""
    user = unique("sam")
    channel = "$" + unique("private")
    renewed = {"connection": 0, "subscription": -1}  # the first subscription token is no renewal

    async def connection_token() -> str:
        renewed["connection"] += 1
        return server.token(user, ttl=2)

    async def subscription_token(ch: str) -> str:
        renewed["subscription"] += 1
        return server.sub_token(user, ch, ttl=2)

    async with Clients(server, wire) as clients:
        conn = await clients.connect(token=server.token(user, ttl=2), get_token=connection_token)
        sub = await conn.subscribe(channel, get_token=subscription_token)
        await eventually(lambda: renewed["connection"] >= 1 and renewed["subscription"] >= 1,
                         timeout=8.0, what=f"a refresh and a sub_refresh (so far {renewed})")
        # Only the first connect and subscribe: nothing was interrupted.
        assert (len(conn.log.all("connecting")), len(conn.log.all("connected"))) == (1, 1)
        assert (len(sub.log.all("subscribing")), len(sub.log.all("subscribed"))) == (1, 1)
        assert sub.state == SubscriptionState.SUBSCRIBED
        async with server.async_api() as api:
            await api.publish(PublishRequest(channel=channel, data={"after": "refresh"}))
        [pub] = await sub.publications(1)
        assert wire.read(pub.data) == {"after": "refresh"}


async def test_server_side_subscription_from_the_token(server, wire):
    user, channel = unique("tara"), unique("inbox")
    async with Clients(server, wire) as clients:
        conn = await clients.connect(token=server.token(user, channels=[channel]))
        ctx = await conn.wait("subscribed", lambda c: c.channel == channel)
        assert ctx.channel == channel
        async with server.async_api() as api:
            await api.publish(PublishRequest(channel=channel, data={"note": "for tara"}))
        pub = await conn.wait("publication", lambda c: c.channel == channel)
        assert wire.read(pub.pub.data) == {"note": "for tara"}


# --- JSON and Protobuf in one channel ------------------------------------------------


async def test_json_and_protobuf_clients_receive_each_others_publications(server):
    channel = unique("mixed")
    async with Clients(server) as clients:
        json_conn = await clients.connect(wire=JSON_WIRE)
        pb_conn = await clients.connect(wire=PROTOBUF_WIRE)
        j = await json_conn.subscribe(channel)
        p = await pb_conn.subscribe(channel)
        await j.sub.publish({"from": "json"})
        await p.sub.publish(PROTOBUF_WIRE.data({"from": "protobuf"}))
        for conn, sub in ((json_conn, j), (pb_conn, p)):
            pubs = await sub.publications(2)
            assert [conn.wire.read(x.data) for x in pubs] == [{"from": "json"}, {"from": "protobuf"}]
            assert [x.info.client for x in pubs] == [json_conn.client_id, pb_conn.client_id]


async def test_binary_payload_round_trips_between_protobuf_clients_and_json_gets_3506(server):
    channel = unique("binary")
    payload = b"\x00" + bytes(range(255, -1, -1))  # not UTF-8, not JSON
    async with Clients(server, PROTOBUF_WIRE) as clients:
        sender = await clients.connect()
        receiver = await clients.connect()
        json_conn = await clients.connect(wire=JSON_WIRE)
        s = await sender.subscribe(channel)
        r = await receiver.subscribe(channel)
        j = await json_conn.subscribe(channel)

        await s.sub.publish(payload)
        for sub in (s, r):
            [pub] = await sub.publications(1)
            assert bytes(pub.data) == payload

        gone = await json_conn.wait("disconnected")
        assert (gone.code, gone.reason) == (DISCONNECT_INAPPROPRIATE_PROTOCOL, "inappropriate protocol")
        assert json_conn.state == ClientState.DISCONNECTED
        assert j.log.all("publication") == []

        history = await r.sub.history(limit=-1)
        assert [bytes(p.data) for p in history.publications] == [payload]

        # The Protobuf clients go on as before.
        await s.sub.publish(PROTOBUF_WIRE.data({"after": "binary"}))
        pubs = await r.publications(2)
        assert PROTOBUF_WIRE.read(pubs[1].data) == {"after": "binary"}
