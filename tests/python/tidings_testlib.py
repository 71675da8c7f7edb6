"""Helpers shared by the Python compatibility tests.

`Clients` opens real centrifuge-python WebSocket connections and records every
event they report, so a test can wait (with a deadline) for the effect of a
server API call. A `Wire` picks the encoding those connections speak: JSON, or
Protobuf (`use_protobuf=True`); tests that take the `wire` fixture run in both.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import aiohttp
import requests
from cent import AsyncClient, Client as SyncApi
from centrifuge import (
    Client,
    ClientEventHandler,
    ClientState,
    Subscription,
    SubscriptionEventHandler,
    SubscriptionState,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# Default deadline for "wait until X happens".
WAIT_TIMEOUT = 5.0

# The error code of an RPC the binary has neither a handler nor a proxy for: 108 "not
# available" (docs/codes.md). The JSON and Protobuf runs assert this one value, so when
# the code changes it changes here only (and in crates/tidings-testkit/tests/connect.rs,
# rpc_without_handler_or_proxy_returns_108).
RPC_NO_HANDLER_CODE = 108


@dataclass(frozen=True)
class Wire:
    """One encoding of the client protocol, as centrifuge-python speaks it.

    The JSON client takes and gives back JSON values as `data`; the Protobuf client
    takes and gives back bytes. `data` and `read` convert, so one assertion serves
    both.
    """

    name: str
    use_protobuf: bool

    def data(self, value: Any) -> Any:
        """What to hand the client as `data` for the JSON value `value`."""
        if self.use_protobuf:
            return json.dumps(value, separators=(",", ":")).encode()
        return value

    def read(self, data: Any) -> Any:
        """The JSON value carried by a received `data`."""
        if self.use_protobuf:
            return json.loads(bytes(data).decode("utf-8"))
        return data

    def __str__(self) -> str:
        return self.name


JSON_WIRE = Wire("json", use_protobuf=False)
PROTOBUF_WIRE = Wire("protobuf", use_protobuf=True)
WIRES = (JSON_WIRE, PROTOBUF_WIRE)


def unique(prefix: str) -> str:
    """A channel or user name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def hs256_jwt(secret: str, claims: dict) -> str:
    """Build an HS256 JSON Web Token (the format Centrifugo connection tokens use)."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(signature)}"


@dataclass(frozen=True)
class ServerHandle:
    base_url: str
    api_key: str
    token_secret: str

    @property
    def api_url(self) -> str:
        return self.base_url + "/api"

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url[len("http"):] + "/connection/websocket"

    def token(self, user: str, ttl: int = 3600, info: Any = None, **claims: Any) -> str:
        """A connection token for `user` (with `info` and any other `claims`)."""
        claims.update({"sub": user, "exp": int(time.time()) + ttl})
        if info is not None:
            claims["info"] = info
        return hs256_jwt(self.token_secret, claims)

    def sub_token(self, user: str, channel: str, ttl: int = 3600) -> str:
        """A subscription token for `user` in `channel`."""
        claims = {"sub": user, "channel": channel, "exp": int(time.time()) + ttl}
        return hs256_jwt(self.token_secret, claims)

    def async_api(self, api_key: Optional[str] = None) -> AsyncClient:
        """A `cent.AsyncClient`; create it inside a running event loop and use `async with`."""
        session = aiohttp.ClientSession(trust_env=False)
        return AsyncClient(self.api_url, self.api_key if api_key is None else api_key,
                           timeout=5.0, session=session)


def make_sync_api(server: ServerHandle, api_key: Optional[str] = None) -> SyncApi:
    session = requests.Session()
    session.trust_env = False  # never route loopback traffic through an environment proxy
    return SyncApi(server.api_url, server.api_key if api_key is None else api_key,
                   timeout=5.0, session=session)


class EventLog:
    """Events reported by one client or subscription, in arrival order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()

    def add(self, kind: str, ctx: Any) -> None:
        self.events.append((kind, ctx))
        self._changed.set()

    def all(self, kind: str) -> list[Any]:
        return [ctx for k, ctx in self.events if k == kind]

    async def wait(self, kind: str, match: Callable[[Any], bool] = lambda _ctx: True,
                   timeout: float = WAIT_TIMEOUT) -> Any:
        """Return the first `kind` event for which `match` holds, waiting up to `timeout`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for k, ctx in self.events:
                if k == kind and match(ctx):
                    return ctx
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                seen = [(k, ctx) for k, ctx in self.events]
                raise AssertionError(f"no {kind!r} event matched within {timeout}s; events: {seen!r}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                pass

    async def assert_none(self, kind: str, match: Callable[[Any], bool] = lambda _ctx: True,
                          settle: float = 0.3) -> None:
        """Check that no matching event arrives during a short settle window."""
        await asyncio.sleep(settle)
        hits = [ctx for k, ctx in self.events if k == kind and match(ctx)]
        assert not hits, f"unexpected {kind!r} events: {hits!r}"


class _ClientEvents(ClientEventHandler):
    def __init__(self, log: EventLog) -> None:
        self.log = log

    async def on_connecting(self, ctx):
        self.log.add("connecting", ctx)

    async def on_connected(self, ctx):
        self.log.add("connected", ctx)

    async def on_disconnected(self, ctx):
        self.log.add("disconnected", ctx)

    async def on_error(self, ctx):
        self.log.add("error", ctx)

    async def on_subscribed(self, ctx):
        self.log.add("subscribed", ctx)

    async def on_subscribing(self, ctx):
        self.log.add("subscribing", ctx)

    async def on_unsubscribed(self, ctx):
        self.log.add("unsubscribed", ctx)

    async def on_publication(self, ctx):
        self.log.add("publication", ctx)

    async def on_join(self, ctx):
        self.log.add("join", ctx)

    async def on_leave(self, ctx):
        self.log.add("leave", ctx)


class _SubEvents(SubscriptionEventHandler):
    def __init__(self, log: EventLog) -> None:
        self.log = log

    async def on_subscribing(self, ctx):
        self.log.add("subscribing", ctx)

    async def on_subscribed(self, ctx):
        self.log.add("subscribed", ctx)

    async def on_unsubscribed(self, ctx):
        self.log.add("unsubscribed", ctx)

    async def on_publication(self, ctx):
        self.log.add("publication", ctx)

    async def on_join(self, ctx):
        self.log.add("join", ctx)

    async def on_leave(self, ctx):
        self.log.add("leave", ctx)

    async def on_error(self, ctx):
        self.log.add("error", ctx)


class Sub:
    """A client-side subscription and its events."""

    def __init__(self, sub: Subscription, log: EventLog) -> None:
        self.sub = sub
        self.log = log

    @property
    def channel(self) -> str:
        return self.sub.channel

    @property
    def state(self) -> SubscriptionState:
        return self.sub.state

    async def wait(self, kind: str, match: Callable[[Any], bool] = lambda _c: True,
                   timeout: float = WAIT_TIMEOUT) -> Any:
        return await self.log.wait(kind, match, timeout)

    async def publications(self, count: int, timeout: float = WAIT_TIMEOUT) -> list[Any]:
        """Wait until `count` publications arrived; return their data in order."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.log.all("publication")) < count:
            if asyncio.get_running_loop().time() > deadline:
                got = [c.pub.data for c in self.log.all("publication")]
                raise AssertionError(f"expected {count} publications on {self.channel}, got {got!r}")
            await asyncio.sleep(0.02)
        return [c.pub for c in self.log.all("publication")]


class Conn:
    """A connected centrifuge-python client and its events."""

    def __init__(self, client: Client, log: EventLog, user: str, wire: Wire) -> None:
        self.client = client
        self.log = log
        self.user = user
        self.wire = wire
        self.client_id = ""

    @property
    def state(self) -> ClientState:
        return self.client.state

    async def wait(self, kind: str, match: Callable[[Any], bool] = lambda _c: True,
                   timeout: float = WAIT_TIMEOUT) -> Any:
        return await self.log.wait(kind, match, timeout)

    async def subscribe(self, channel: str, **options: Any) -> Sub:
        log = EventLog()
        sub = self.client.new_subscription(channel, events=_SubEvents(log), **options)
        await sub.subscribe()
        await log.wait("subscribed")
        assert sub.state == SubscriptionState.SUBSCRIBED
        return Sub(sub, log)


class Clients:
    """Opens centrifuge-python connections speaking `wire` (JSON unless told) and
    closes them all on exit."""

    def __init__(self, server: ServerHandle, wire: Wire = JSON_WIRE) -> None:
        self.server = server
        self.wire = wire
        self.conns: list[Conn] = []

    async def __aenter__(self) -> "Clients":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for conn in self.conns:
            try:
                await asyncio.wait_for(conn.client.disconnect(), timeout=2.0)
            except Exception:
                pass

    async def connect(self, user: Optional[str] = None, info: Any = None, *,
                      wire: Optional[Wire] = None, address: Optional[str] = None,
                      token: Optional[str] = None, wait: bool = True, **options: Any) -> Conn:
        """Connect anonymously (user None) or with an HS256 token for `user`
        (with `info` as the token's connection info), or with `token` as given.
        `wire` overrides this set's encoding, `address` the server's WebSocket URL,
        and `options` go to centrifuge-python's `Client` (`get_token`, ...). With
        `wait=False` it returns without waiting for `connected`."""
        log = EventLog()
        wire = wire or self.wire
        if token is None:
            token = self.server.token(user, info=info) if user else ""
        options.setdefault("max_reconnect_delay", 1.0)
        client = Client(
            address or self.server.ws_url,
            events=_ClientEvents(log),
            token=token,
            use_protobuf=wire.use_protobuf,
            timeout=5.0,
            proxy=None,
            **options,
        )
        conn = Conn(client, log, user or "", wire)
        self.conns.append(conn)
        await client.connect()
        if not wait:
            return conn
        ctx = await log.wait("connected")
        conn.client_id = ctx.client
        assert conn.client_id, "connect reply carried no client id"
        return conn


async def eventually(check: Callable[[], Any], timeout: float = WAIT_TIMEOUT,
                     interval: float = 0.05, what: str = "condition") -> Any:
    """Poll an async or sync `check` until it returns a truthy value or the deadline passes."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last value: {last!r})")
        await asyncio.sleep(interval)


def eventually_sync(check: Callable[[], Any], timeout: float = WAIT_TIMEOUT,
                    interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last value: {last!r})")
        time.sleep(interval)


class TcpProxy:
    """A TCP proxy in front of the server that can cut every connection on demand and
    refuse new ones until restored: a network outage without touching the server.
    Runs in the test's event loop; `async with` closes it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.blocked = False
        self.accepted = 0
        self.port = 0
        self._server: Optional[asyncio.base_events.Server] = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                for w in (writer, up_writer):
                    self._writers.discard(w)
                    w.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Drops every proxied connection and refuses new ones."""
        self.blocked = True
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.blocked = False
