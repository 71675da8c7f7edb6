"""subscribe, unsubscribe and disconnect: server API calls whose effects a real
centrifuge-python client observes over its WebSocket."""

from __future__ import annotations

from cent import (
    Disconnect,
    DisconnectRequest,
    DisconnectResult,
    PresenceRequest,
    PublishRequest,
    SubscribeRequest,
    SubscribeResult,
    UnsubscribeRequest,
    UnsubscribeResult,
)
from centrifuge import ClientState, SubscriptionState

from tidings_testlib import Clients, eventually, unique

# Centrifugo codes (docs/transports/codes).
UNSUBSCRIBE_SERVER = 2000  # "server unsubscribe"
DISCONNECT_FORCE_NO_RECONNECT = 3503  # "force disconnect", the API default


async def presence_clients(api, channel: str) -> set[str]:
    result = await api.presence(PresenceRequest(channel=channel))
    return set(result.presence)


async def test_api_subscribe_creates_server_side_subscription(server, wire):
    user, channel = unique("alice"), unique("srvsub")
    async with Clients(server, wire) as clients:
        conn = await clients.connect(user)
        async with server.async_api() as api:
            result = await api.subscribe(
                SubscribeRequest(user=user, channel=channel, data={"welcome": True})
            )
            assert isinstance(result, SubscribeResult)

            ctx = await conn.wait("subscribed", lambda c: c.channel == channel)
            assert wire.read(ctx.data) == {"welcome": True}

            await api.publish(PublishRequest(channel=channel, data={"text": "server-side"}))
            pub = await conn.wait("publication", lambda c: c.channel == channel)
            assert wire.read(pub.pub.data) == {"text": "server-side"}

            # The server-side subscriber is present in the channel.
            assert await presence_clients(api, channel) == {conn.client_id}


async def test_api_subscribe_targets_one_client(server, wire):
    user, channel = unique("multi"), unique("target")
    async with Clients(server, wire) as clients:
        first = await clients.connect(user)
        second = await clients.connect(user)
        async with server.async_api() as api:
            await api.subscribe(SubscribeRequest(user=user, channel=channel, client=second.client_id))
            await second.wait("subscribed", lambda c: c.channel == channel)
            await api.publish(PublishRequest(channel=channel, data="only second"))
            await second.wait("publication", lambda c: c.channel == channel)
        await first.log.assert_none("subscribed", lambda c: c.channel == channel)
        await first.log.assert_none("publication", lambda c: c.channel == channel)


async def test_api_unsubscribe_ends_client_subscription(server, wire):
    user, channel = unique("bob"), unique("unsub")
    async with Clients(server, wire) as clients:
        conn = await clients.connect(user)
        sub = await conn.subscribe(channel)
        bystander = await clients.connect(unique("carol"))
        watch = await bystander.subscribe(channel)
        async with server.async_api() as api:
            assert await presence_clients(api, channel) == {conn.client_id, bystander.client_id}

            result = await api.unsubscribe(UnsubscribeRequest(user=user, channel=channel))
            assert isinstance(result, UnsubscribeResult)

            ctx = await sub.wait("unsubscribed")
            assert ctx.code == UNSUBSCRIBE_SERVER
            assert sub.state == SubscriptionState.UNSUBSCRIBED
            # The connection itself stays up.
            assert conn.state == ClientState.CONNECTED

            async def only_bystander():
                return await presence_clients(api, channel) == {bystander.client_id}
            await eventually(only_bystander, what="presence without the unsubscribed client")

            # Later publications reach the bystander but not the unsubscribed client.
            await api.publish(PublishRequest(channel=channel, data={"after": "unsubscribe"}))
            await watch.wait("publication", lambda c: wire.read(c.pub.data) == {"after": "unsubscribe"})
        assert sub.log.all("publication") == []
        assert watch.state == SubscriptionState.SUBSCRIBED


async def test_api_unsubscribe_server_side_subscription(server, wire):
    user, channel = unique("dave"), unique("srvunsub")
    async with Clients(server, wire) as clients:
        conn = await clients.connect(user)
        async with server.async_api() as api:
            await api.subscribe(SubscribeRequest(user=user, channel=channel))
            await conn.wait("subscribed", lambda c: c.channel == channel)
            await api.unsubscribe(UnsubscribeRequest(user=user, channel=channel))
            await conn.wait("unsubscribed", lambda c: c.channel == channel)

            async def empty():
                return await presence_clients(api, channel) == set()
            await eventually(empty, what="empty presence after server-side unsubscribe")


async def test_api_disconnect_closes_user_connections(server, wire):
    user, other_user = unique("eve"), unique("frank")
    async with Clients(server, wire) as clients:
        conn = await clients.connect(user)
        other = await clients.connect(other_user)
        async with server.async_api() as api:
            result = await api.disconnect(DisconnectRequest(user=user))
            assert isinstance(result, DisconnectResult)

        ctx = await conn.wait("disconnected")
        assert ctx.code == DISCONNECT_FORCE_NO_RECONNECT
        assert conn.state == ClientState.DISCONNECTED
        # A 35xx code means "do not reconnect": the client must not come back.
        await conn.log.assert_none("connected", lambda c: c.client != conn.client_id)
        # Other users are untouched.
        assert other.state == ClientState.CONNECTED
        assert other.log.all("disconnected") == []


async def test_api_disconnect_custom_code_and_client_filters(server, wire):
    user = unique("grace")
    channel = unique("kick")
    async with Clients(server, wire) as clients:
        a = await clients.connect(user)
        b = await clients.connect(user)
        c = await clients.connect(user)
        for conn in (a, b, c):
            await conn.subscribe(channel)
        async with server.async_api() as api:
            # Only client `a`.
            await api.disconnect(DisconnectRequest(
                user=user, client=a.client_id,
                disconnect=Disconnect(code=4501, reason="kicked one"),
            ))
            ctx = await a.wait("disconnected")
            assert (ctx.code, ctx.reason) == (4501, "kicked one")
            assert a.state == ClientState.DISCONNECTED

            # Everyone of the user except the whitelisted `c`.
            await api.disconnect(DisconnectRequest(
                user=user, whitelist=[c.client_id],
                disconnect=Disconnect(code=4502, reason="kicked rest"),
            ))
            ctx = await b.wait("disconnected")
            assert (ctx.code, ctx.reason) == (4502, "kicked rest")

            async def only_c():
                return await presence_clients(api, channel) == {c.client_id}
            await eventually(only_c, what="presence with only the whitelisted client")
        assert c.state == ClientState.CONNECTED
        assert c.log.all("disconnected") == []


async def test_api_disconnect_with_reconnect_code(server, wire):
    """A 3000-3499 code tells the client to reconnect, and it does."""
    user = unique("heidi")
    async with Clients(server, wire) as clients:
        conn = await clients.connect(user)
        first_id = conn.client_id
        async with server.async_api() as api:
            await api.disconnect(DisconnectRequest(
                user=user, disconnect=Disconnect(code=3011, reason="force reconnect"),
            ))
        await conn.wait("connecting", lambda c: c.code == 3011)
        again = await conn.wait("connected", lambda c: c.client != first_id, timeout=8.0)
        assert again.client
        assert conn.state == ClientState.CONNECTED
