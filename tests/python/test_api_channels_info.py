"""channels and info through `cent`."""

from __future__ import annotations

from cent import ChannelsRequest, ChannelsResult, InfoRequest, InfoResult

from tidings_testlib import Clients, eventually, unique


async def test_channels_lists_active_channels(server, wire):
    prefix = unique("chans")
    first, second = f"{prefix}-one", f"{prefix}-two"
    async with Clients(server, wire) as clients:
        c1 = await clients.connect()
        c2 = await clients.connect()
        await c1.subscribe(first)
        await c2.subscribe(first)
        sub_two = await c2.subscribe(second)

        async with server.async_api() as api:
            result = await api.channels(ChannelsRequest(pattern=f"{prefix}-*"))
            assert isinstance(result, ChannelsResult)
            assert set(result.channels) == {first, second}
            assert result.channels[first].num_clients == 2
            assert result.channels[second].num_clients == 1

            # Without a pattern every active channel is listed, ours included.
            everything = await api.channels(ChannelsRequest())
            assert {first, second} <= set(everything.channels)

            # A pattern that matches only one of them.
            only_two = await api.channels(ChannelsRequest(pattern=f"{prefix}-t*"))
            assert set(only_two.channels) == {second}

            # A channel with no subscribers left is no longer active.
            await sub_two.sub.unsubscribe()

            async def second_gone():
                r = await api.channels(ChannelsRequest(pattern=f"{prefix}-*"))
                return set(r.channels) == {first}
            await eventually(second_gone, what="channel list without the abandoned channel")


async def test_info_describes_the_node(server, wire):
    channel = unique("info")
    async with Clients(server, wire) as clients:
        conn = await clients.connect(unique("judy"))
        await conn.subscribe(channel)
        async with server.async_api() as api:
            result = await api.info(InfoRequest())
        assert isinstance(result, InfoResult)
        assert len(result.nodes) == 1
        node = result.nodes[0]
        assert node.uid
        assert node.name
        assert node.num_clients >= 1
        assert node.num_users >= 1
        assert node.num_channels >= 1
        assert node.num_subs >= 1
        assert node.uptime >= 0


def test_info_with_sync_client(api):
    result = api.info(InfoRequest())
    assert len(result.nodes) == 1
    assert result.nodes[0].uid
