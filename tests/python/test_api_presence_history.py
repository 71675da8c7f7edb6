"""presence, presence_stats, history and history_remove through `cent`."""

from __future__ import annotations

import pytest
from cent import (
    CentApiResponseError,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRemoveResult,
    HistoryRequest,
    HistoryResult,
    PresenceRequest,
    PresenceResult,
    PresenceStatsRequest,
    PresenceStatsResult,
    PublishRequest,
    StreamPosition,
    SubscribeRequest,
)

from tidings_testlib import Clients, eventually, unique

UNRECOVERABLE_POSITION = 112


async def test_presence_lists_subscribers(server, wire):
    alice, bob = unique("alice"), unique("bob")
    channel = unique("room")
    async with Clients(server, wire) as clients:
        a1 = await clients.connect(alice)
        a2 = await clients.connect(alice)
        b = await clients.connect(bob)
        for conn in (a1, a2, b):
            await conn.subscribe(channel)
        # Connected but not subscribed: must not show up.
        await clients.connect(unique("outsider"))

        async with server.async_api() as api:
            presence = await api.presence(PresenceRequest(channel=channel))
            assert isinstance(presence, PresenceResult)
            assert set(presence.presence) == {a1.client_id, a2.client_id, b.client_id}
            for client_id, info in presence.presence.items():
                assert info.client == client_id
            users = {info.client: info.user for info in presence.presence.values()}
            assert users == {a1.client_id: alice, a2.client_id: alice, b.client_id: bob}

            stats = await api.presence_stats(PresenceStatsRequest(channel=channel))
            assert isinstance(stats, PresenceStatsResult)
            assert (stats.num_clients, stats.num_users) == (3, 2)

            # Presence follows the connection going away.
            await b.client.disconnect()

            async def two_left():
                s = await api.presence_stats(PresenceStatsRequest(channel=channel))
                return (s.num_clients, s.num_users) == (2, 1)
            await eventually(two_left, what="presence_stats 2 clients / 1 user")
            presence = await api.presence(PresenceRequest(channel=channel))
            assert set(presence.presence) == {a1.client_id, a2.client_id}


async def test_presence_carries_conn_info_and_chan_info(server, wire):
    """conn_info comes from the connection token's `info` claim, chan_info from the
    `info` of a server API subscribe."""
    user, channel = unique("kate"), unique("infos")
    async with Clients(server, wire) as clients:
        conn = await clients.connect(user, info={"name": "Kate"})
        async with server.async_api() as api:
            await api.subscribe(SubscribeRequest(user=user, channel=channel, info={"role": "admin"}))
            await conn.wait("subscribed", lambda c: c.channel == channel)
            presence = await api.presence(PresenceRequest(channel=channel))
        assert set(presence.presence) == {conn.client_id}
        info = presence.presence[conn.client_id]
        assert info.user == user
        assert info.conn_info == {"name": "Kate"}
        assert info.chan_info == {"role": "admin"}


async def test_join_and_leave_follow_api_actions(server, wire):
    """Subscribers see join when a client subscribes and leave when the API disconnects it."""
    watcher_user, user, channel = unique("leo"), unique("mia"), unique("joinleave")
    async with Clients(server, wire) as clients:
        watcher = await clients.connect(watcher_user)
        watch = await watcher.subscribe(channel, join_leave=True)
        conn = await clients.connect(user)
        async with server.async_api() as api:
            await api.subscribe(SubscribeRequest(user=user, channel=channel))
            join = await watch.wait("join", lambda c: c.info.user == user)
            assert join.info.client == conn.client_id
            await api.disconnect(DisconnectRequest(user=user))
            leave = await watch.wait("leave", lambda c: c.info.user == user)
            assert leave.info.client == conn.client_id


async def test_presence_matches_client_side_presence(server, wire):
    """The server API and the client protocol report the same presence."""
    channel = unique("both")
    async with Clients(server, wire) as clients:
        conn = await clients.connect(unique("ivan"))
        sub = await conn.subscribe(channel)
        client_side = await sub.sub.presence()
        async with server.async_api() as api:
            server_side = await api.presence(PresenceRequest(channel=channel))
        assert set(client_side.clients) == set(server_side.presence) == {conn.client_id}


def test_presence_of_empty_channel(api):
    channel = unique("empty")
    assert api.presence(PresenceRequest(channel=channel)).presence == {}
    stats = api.presence_stats(PresenceStatsRequest(channel=channel))
    assert (stats.num_clients, stats.num_users) == (0, 0)


def test_history_limit_since_reverse(api):
    channel = unique("hist")
    for n in range(1, 6):
        api.publish(PublishRequest(channel=channel, data={"n": n}))

    # No limit: only the stream position.
    top = api.history(HistoryRequest(channel=channel))
    assert isinstance(top, HistoryResult)
    assert top.publications == []
    assert top.offset == 5
    assert top.epoch
    epoch = top.epoch

    def offsets(result):
        return [p.offset for p in result.publications]

    everything = api.history(HistoryRequest(channel=channel, limit=-1))
    assert offsets(everything) == [1, 2, 3, 4, 5]
    assert [p.data for p in everything.publications] == [{"n": n} for n in range(1, 6)]
    assert (everything.offset, everything.epoch) == (5, epoch)

    assert offsets(api.history(HistoryRequest(channel=channel, limit=2))) == [1, 2]
    assert offsets(api.history(HistoryRequest(channel=channel, limit=2, reverse=True))) == [5, 4]
    assert offsets(api.history(HistoryRequest(channel=channel, limit=-1, reverse=True))) == [5, 4, 3, 2, 1]

    since_two = StreamPosition(offset=2, epoch=epoch)
    assert offsets(api.history(HistoryRequest(channel=channel, limit=10, since=since_two))) == [3, 4, 5]
    assert offsets(api.history(HistoryRequest(channel=channel, limit=1, since=since_two))) == [3]

    since_four = StreamPosition(offset=4, epoch=epoch)
    assert offsets(api.history(
        HistoryRequest(channel=channel, limit=2, since=since_four, reverse=True)
    )) == [3, 2]

    # Nothing after the top.
    at_top = api.history(HistoryRequest(channel=channel, limit=10, since=StreamPosition(offset=5, epoch=epoch)))
    assert at_top.publications == []
    assert at_top.offset == 5


def test_history_since_wrong_epoch_is_unrecoverable(api):
    channel = unique("epoch")
    api.publish(PublishRequest(channel=channel, data={}))
    with pytest.raises(CentApiResponseError) as err:
        api.history(HistoryRequest(
            channel=channel, limit=10, since=StreamPosition(offset=0, epoch="not-the-epoch"),
        ))
    assert err.value.code == UNRECOVERABLE_POSITION


def test_publish_skip_history(api):
    channel = unique("skip")
    api.publish(PublishRequest(channel=channel, data={"kept": True}))
    api.publish(PublishRequest(channel=channel, data={"kept": False}, skip_history=True))
    history = api.history(HistoryRequest(channel=channel, limit=-1))
    assert [p.data for p in history.publications] == [{"kept": True}]
    assert history.offset == 1


def test_history_remove_keeps_stream_position(api):
    channel = unique("remove")
    for n in range(3):
        api.publish(PublishRequest(channel=channel, data={"n": n}))
    before = api.history(HistoryRequest(channel=channel, limit=-1))
    assert len(before.publications) == 3

    result = api.history_remove(HistoryRemoveRequest(channel=channel))
    assert isinstance(result, HistoryRemoveResult)

    after = api.history(HistoryRequest(channel=channel, limit=-1))
    assert after.publications == []
    # The top position is kept so that subscribers are not forced into insufficient state.
    assert (after.offset, after.epoch) == (before.offset, before.epoch)

    # The stream continues from where it was.
    next_pub = api.publish(PublishRequest(channel=channel, data={"n": 3}))
    assert next_pub.offset == 4
    assert [p.offset for p in api.history(HistoryRequest(channel=channel, limit=-1)).publications] == [4]


def test_history_keeps_tags(api):
    channel = unique("tags")
    api.publish(PublishRequest(channel=channel, data={"v": 1}, tags={"kind": "price"}))
    history = api.history(HistoryRequest(channel=channel, limit=-1))
    assert [(p.data, p.tags) for p in history.publications] == [({"v": 1}, {"kind": "price"})]


async def test_history_has_publisher_info_for_client_publications(server, wire):
    """A publication made by a client over the WebSocket carries that client's info in history."""
    user, channel = unique("nina"), unique("clientpub")
    async with Clients(server, wire) as clients:
        conn = await clients.connect(user)
        sub = await conn.subscribe(channel)
        await sub.sub.publish(wire.data({"from": "client"}))
        await sub.wait("publication")
        async with server.async_api() as api:
            history = await api.history(HistoryRequest(channel=channel, limit=-1))
        assert len(history.publications) == 1
        pub = history.publications[0]
        assert pub.data == {"from": "client"}
        assert pub.info is not None
        assert (pub.info.client, pub.info.user) == (conn.client_id, user)


async def test_history_seen_by_late_subscriber(server, wire):
    """What cent publishes is what a client reads through the client-protocol history call."""
    channel = unique("late")
    async with server.async_api() as api:
        for n in range(3):
            await api.publish(PublishRequest(channel=channel, data={"n": n}))
    async with Clients(server, wire) as clients:
        conn = await clients.connect()
        sub = await conn.subscribe(channel)
        result = await sub.sub.history(limit=-1)
        assert [wire.read(p.data) for p in result.publications] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert result.offset == 3
