//! The protocol state machine of one connection, shared by every transport.
//!
//! A transport turns its socket into a stream of [`Inbound`] frames and writes what
//! the connection's outbox hands it; everything in between (commands, permissions,
//! subscriptions, recovery, pings, expiry) happens here, once. A session runs on its
//! own task and is the only code that changes its state; the node reaches it through
//! the connection's control queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tidings_protocol::codes::{self, ErrorCode};
use tidings_protocol::command::{Empty, Method};
use tidings_protocol::{
    codec, subscribe_flags, ClientInfo, Command, ConnectRequest, ConnectResult, Disconnect,
    HistoryRequest, HistoryResult, PresenceResult, PresenceStatsResult, Push, RawJson,
    RefreshResult, Reply, RpcResult, StreamPosition, SubscribePush, SubscribeRequest,
    SubscribeResult, UnsubscribePush,
};
use tokio::time::Instant;

use crate::auth::{self, ConnectClaims, SubClaim, SubscribeClaims, SubscribeOverride, TokenError};
use crate::channel;
use crate::connection::WireFormat;
use crate::connection::{Connection, Control, ControlReceiver, ServerRefresh, ServerSubscribe};
use crate::limit::{Budget, CommandBudget};
use crate::node::{centrifugo_delta_pushes, centrifugo_pushes, json_delta_full, Shape};
use crate::node::{
    ConnectEvent, HistoryFilter, JoinRequest, Member, Node, NodeError, Pending, PublishRequest,
    RpcRequest, StreamAsk,
};
use crate::proxy::{wire, ProxyContext, Rejection};

/// What a transport hands the session.
pub type Inbound = Result<ClientFrame, InboundError>;

/// One frame from the client: text for the JSON protocol, bytes for Protobuf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Text(String),
    Binary(Bytes),
}

impl From<String> for ClientFrame {
    fn from(text: String) -> Self {
        ClientFrame::Text(text)
    }
}

/// Why a transport stopped delivering frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundError {
    /// A frame exceeded the transport's size limit (WebSocket close 1009).
    TooLarge,
    /// The transport failed; the client is gone.
    Transport,
    /// The frame cannot be the protocol (for example not UTF-8).
    Malformed,
    /// The client broke the transport's own framing rules (WebSocket: RSV bits,
    /// an unmasked or fragmented control frame, a bad opcode or fragment order):
    /// close 1002.
    ProtocolViolation,
    /// A text message that is not UTF-8 (WebSocket close 1007).
    InvalidText,
}

/// Close code for a frame over the size limit (RFC 6455 "message too big").
pub const CLOSE_TOO_LARGE: u32 = 1009;

/// Close code for a frame that breaks RFC 6455 itself ("protocol error").
pub const CLOSE_PROTOCOL_ERROR: u32 = 1002;

/// Close code for a text message whose bytes are not UTF-8 ("invalid frame
/// payload data").
pub const CLOSE_INVALID_PAYLOAD: u32 = 1007;

/// Decodes one line of a client's command frame (see [`codec::split_frame`]).
///
/// # Errors
/// Disconnect 3501 "bad request" when the line is not a JSON object (serde would
/// also read a JSON array into a struct) or does not fit [`Command`].
pub fn decode_command(line: &str) -> Result<Command, Disconnect> {
    if !line.trim_start().starts_with('{') {
        return Err(Disconnect::bad_request());
    }
    serde_json::from_str(line).map_err(|_| Disconnect::bad_request())
}

/// One subscription of this connection.
struct ChannelSub {
    /// The connection's membership in the channel (presence, join/leave, its
    /// place in the stream).
    member: Member,
    /// When a subscription token's validity runs out, grace included: past it the
    /// client is unsubscribed with 2501 unless `sub_refresh` moved it.
    expire_at: Option<Instant>,
    /// The namespace's sub_refresh proxy extends this subscription when it
    /// expires (no grace, and the client never sends `sub_refresh` for it).
    server_refresh: bool,
}

/// When the connection's credentials expire; `expire_at` wins over `exp`, and 0
/// means never.
fn expiry(claims: &ConnectClaims) -> Option<u64> {
    claims.expire_at.or(claims.exp).filter(|t| *t > 0)
}

/// Seconds from now until a Unix time (never negative).
fn secs_until(unix: i64) -> u64 {
    (unix - auth::unix_now() as i64).max(0) as u64
}

/// The instant of a Unix expiry with no grace (capped at a year), for expiries the
/// server itself acts on through a refresh proxy.
fn server_deadline(unix: i64) -> Instant {
    Instant::now() + Duration::from_secs(secs_until(unix).min(365 * 24 * 3600))
}

/// The token-shaped claims of a connect proxy's result, so that proxy and token
/// connections share one path.
fn claims_from_proxy(r: wire::ConnectResult) -> ConnectClaims {
    ConnectClaims {
        sub: r.user,
        expire_at: (r.expire_at > 0).then_some(r.expire_at as u64),
        info: r.info,
        channels: r.channels,
        subs: r
            .subs
            .into_iter()
            .map(|(channel, o)| {
                let claim = SubClaim {
                    info: o.info,
                    data: o.data,
                    r#override: o.overrides.map(override_from_proxy),
                    ..Default::default()
                };
                (channel, claim)
            })
            .collect(),
        meta: r.meta,
        ..Default::default()
    }
}

fn override_from_proxy(o: wire::Override) -> SubscribeOverride {
    let b = |v: Option<wire::BoolValue>| v.map(|v| auth::BoolValue { value: v.value });
    SubscribeOverride {
        presence: b(o.presence),
        join_leave: b(o.join_leave),
        force_push_join_leave: b(o.force_push_join_leave),
        force_recovery: b(o.force_recovery),
        force_positioning: b(o.force_positioning),
    }
}

/// When a subscription expires, by the same rule.
fn sub_expiry(claims: &SubscribeClaims) -> Option<u64> {
    claims.expire_at.or(claims.exp).filter(|t| *t > 0)
}

/// A Unix expiry as seconds left (the `ttl` clients see) and the instant, grace
/// included, at which the server acts on it.
fn expiry_deadline(expires_unix: u64, grace: Duration) -> (u32, Instant) {
    let ttl = expires_unix.saturating_sub(auth::unix_now());
    // Far-future expiries are capped at a year so the instant cannot overflow.
    let ttl = ttl.min(365 * 24 * 3600);
    (
        ttl as u32,
        Instant::now() + Duration::from_secs(ttl) + grace,
    )
}

/// Why a subscribe was refused: an error reply, or (for a token naming another
/// channel or user) the end of the connection.
enum Refusal {
    Error(ErrorCode),
    Disconnect(Disconnect),
}

impl From<ErrorCode> for Refusal {
    fn from(code: ErrorCode) -> Self {
        Refusal::Error(code)
    }
}

/// Client-side flags of a subscribe (what the client asked for).
#[derive(Default, Clone)]
struct SubscribeAsk {
    recover: Option<StreamPosition>,
    recoverable: bool,
    positioned: bool,
    join_leave: bool,
    /// Namespace options switched per subscriber by a token's `override`.
    overrides: Option<SubscribeOverride>,
    /// The subscription's expiry deadline (subscription tokens only).
    expire_at: Option<Instant>,
    /// Refreshed by the namespace's sub_refresh proxy.
    server_refresh: bool,
    /// The client can apply fossil deltas.
    delta: bool,
    /// Deliver only publications whose tags match (checked against the namespace
    /// in [`Session::subscribe_channel`]).
    tags_filter: Option<tidings_protocol::FilterNode>,
    /// Refuse with 112 a recovery that cannot recover.
    reject_unrecovered: bool,
}

impl SubscribeAsk {
    /// The subscribe request's `delta`, `tf` and `flag`.
    fn with_request_options(self, req: &SubscribeRequest) -> Self {
        SubscribeAsk {
            delta: !req.delta.is_empty(),
            tags_filter: req.tf.clone(),
            reject_unrecovered: req.flag & subscribe_flags::REJECT_UNRECOVERED != 0,
            ..self
        }
    }
}

/// Refuses what a subscribe asks for that Tidings does not do, with Centrifugo's
/// answers where no namespace enables it: a shared-poll subscription (`type` 4)
/// gets 108, any other non-stream `type` (the map kinds) 103; a `delta` other
/// than `"fossil"` closes the connection with 3501.
fn check_subscribe_request(req: &SubscribeRequest) -> Result<(), Refusal> {
    if !req.delta.is_empty() && req.delta != "fossil" {
        return Err(Refusal::Disconnect(Disconnect::bad_request()));
    }
    match req.r#type {
        0 => Ok(()),
        4 => Err(Refusal::Error(codes::ERROR_NOT_AVAILABLE)),
        _ => Err(Refusal::Error(codes::ERROR_PERMISSION_DENIED)),
    }
}

/// The outcome of subscribing, before the reply is sent.
struct Subscribed {
    result: SubscribeResult,
    /// Deliveries held until the reply is out.
    pending: Pending,
}

/// The `event` of a Centrifugo client's publication in `client_event` webhooks
/// (Centrifugo publications have no event name of their own).
const CLIENT_EVENT: &str = "publication";

/// How a connection speaks the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMode {
    /// Commands and replies over one socket (WebSocket).
    Bidirectional,
    /// Commands and replies, with commands arriving on separate requests (SSE, HTTP
    /// streaming, long polling): the connect reply carries the session id to send
    /// them with.
    Emulated,
    /// A connect request, then pushes only (uni_websocket, uni_sse, uni_http_stream).
    Unidirectional,
}

pub struct Session {
    node: Node,
    mode: SessionMode,
    conn: Arc<Connection>,
    control: ControlReceiver,
    connected: bool,
    /// `info` claim of the connection token, shown to others.
    conn_info: Option<RawJson>,
    /// Boxed values: a map allocates room for several entries at once, and a
    /// subscription is about 0.2 KiB, so inline a connection with one
    /// subscription kept about 0.9 KiB of map; boxed it keeps about 0.35 KiB.
    subs: HashMap<String, Box<ChannelSub>>,
    /// When the connection's credentials run out unless refreshed (grace included).
    expire_at: Option<Instant>,
    /// Earliest subscription expiry; may be early (then nothing is due yet), never
    /// late.
    sub_expire_at: Option<Instant>,
    /// Set after a ping; cleared by any frame from the client.
    pong_deadline: Option<Instant>,
    next_ping: Instant,
    stale_at: Instant,
    /// `None` when `client.command_rate_limit` is off.
    budget: Option<CommandBudget>,
    /// What the backend proxies get besides the connection: the emulated headers
    /// of the connect command and the connection's meta.
    /// `None` until a connect brings emulated headers or meta, which most never
    /// do; inline it would cost every session 88 bytes for its whole life.
    proxy_ctx: Option<Box<ProxyContext>>,
    /// The refresh proxy, not the client, extends this connection when it
    /// expires.
    server_refresh: bool,
}

impl Session {
    /// Creates the session of a new bidirectional connection.
    pub fn new(node: Node, conn: Arc<Connection>, control: ControlReceiver) -> Self {
        Self::with_mode(node, conn, control, SessionMode::Bidirectional)
    }

    /// Creates a session speaking the protocol in the given mode.
    pub fn with_mode(
        node: Node,
        conn: Arc<Connection>,
        control: ControlReceiver,
        mode: SessionMode,
    ) -> Self {
        let now = Instant::now();
        let stale = node.config().client.stale_close_delay;
        let budget = CommandBudget::from_config(&node.config().client.command_rate_limit, now);
        Self {
            node,
            mode,
            conn,
            control,
            connected: false,
            conn_info: None,
            subs: HashMap::new(),
            expire_at: None,
            sub_expire_at: None,
            pong_deadline: None,
            next_ping: now,
            stale_at: now + stale,
            budget,
            proxy_ctx: None,
            server_refresh: false,
        }
    }

    /// What the backend proxies get besides the connection.
    fn proxy_ctx(&self) -> &ProxyContext {
        static EMPTY: std::sync::LazyLock<ProxyContext> =
            std::sync::LazyLock::new(ProxyContext::default);
        self.proxy_ctx.as_deref().unwrap_or(&EMPTY)
    }

    fn proxy_ctx_mut(&mut self) -> &mut ProxyContext {
        self.proxy_ctx.get_or_insert_with(Box::default)
    }

    /// Runs until the client goes away or the connection is closed, then cleans up
    /// (subscriptions, presence, leave messages, registry).
    ///
    /// Not an `async fn`: an async fn keeps a second copy of its by-value
    /// arguments in its future (rust-lang/rust#62958), here the whole session
    /// (about 0.3 KiB) for the connection's life. The block below captures the
    /// session once and lends it to `serve`.
    pub fn run<S>(self, inbound: S) -> impl std::future::Future<Output = ()> + Send
    where
        S: Stream<Item = Inbound> + Unpin + Send,
    {
        // Rebound rather than `mut` parameters: with those, the body is the shape
        // clippy's `manual_async_fn` turns back into the async fn avoided here.
        let mut session = self;
        let mut inbound = inbound;
        async move {
            session.serve(&mut inbound).await;
            Box::pin(session.cleanup()).await;
        }
    }

    /// The session's loop: frames, control requests, timers, until the
    /// connection ends.
    async fn serve<S>(&mut self, inbound: &mut S)
    where
        S: Stream<Item = Inbound> + Unpin,
    {
        let closed = self.conn.outbox.closed_token().clone();
        let shutdown = self.node.shutdown_token();
        self.node.metrics().connections.increment(1.0);
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                _ = closed.cancelled() => break,
                _ = shutdown.cancelled() => {
                    self.close(Disconnect::shutdown());
                }
                // The handlers are boxed: the session's task holds its future for
                // the connection's whole life, and inline they would make that
                // future as large as the largest handler (about 4 KiB per idle
                // connection); boxed, it costs an allocation per frame instead.
                Some(ctrl) = self.control.recv() => {
                    if let Err(d) = Box::pin(self.handle_control(ctrl)).await {
                        self.close(d);
                    }
                }
                msg = inbound.next() => match msg {
                    Some(Ok(frame)) => {
                        self.pong_deadline = None;
                        if let Err(d) = Box::pin(self.handle_frame(frame)).await {
                            self.close(d);
                        }
                    }
                    Some(Err(InboundError::Malformed)) => {
                        self.close(Disconnect::bad_request());
                    }
                    Some(Err(InboundError::TooLarge)) => {
                        self.close(Disconnect::new(CLOSE_TOO_LARGE, "message too big"));
                    }
                    Some(Err(InboundError::ProtocolViolation)) => {
                        self.close(Disconnect::new(CLOSE_PROTOCOL_ERROR, "protocol error"));
                    }
                    Some(Err(InboundError::InvalidText)) => {
                        self.close(Disconnect::new(CLOSE_INVALID_PAYLOAD, "invalid text"));
                    }
                    Some(Err(InboundError::Transport)) | None => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    let refresh_due = self.server_refresh
                        && self.connected
                        && self.expire_at.is_some_and(|at| Instant::now() >= at);
                    if refresh_due {
                        if let Err(d) = Box::pin(self.refresh_by_proxy()).await {
                            self.close(d);
                        }
                    } else if let Err(d) = self.handle_timer() {
                        self.close(d);
                    } else {
                        Box::pin(self.expire_subscriptions()).await;
                    }
                }
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut at = if self.connected {
            self.pong_deadline.unwrap_or(self.next_ping)
        } else {
            self.stale_at
        };
        if let Some(exp) = self.expire_at {
            at = at.min(exp);
        }
        if let Some(exp) = self.sub_expire_at.filter(|_| self.connected) {
            at = at.min(exp);
        }
        at
    }

    /// Unsubscribes (2501) every subscription whose token ran out without a
    /// `sub_refresh`; the SDKs resubscribe with a fresh token.
    async fn expire_subscriptions(&mut self) {
        let now = Instant::now();
        if self.sub_expire_at.is_none_or(|at| now < at) {
            return;
        }
        let due: Vec<(String, bool)> = self
            .subs
            .iter()
            .filter(|(_, s)| s.expire_at.is_some_and(|at| now >= at))
            .map(|(c, s)| (c.clone(), s.server_refresh))
            .collect();
        for (channel, server_refresh) in due {
            if server_refresh {
                let node = self.node.clone();
                let r = node
                    .proxy_sub_refresh(&self.conn, self.proxy_ctx(), &channel)
                    .await;
                if !r.expired && r.expire_at > auth::unix_now() as i64 {
                    if let Some(sub) = self.subs.get_mut(&channel) {
                        sub.expire_at = Some(server_deadline(r.expire_at));
                        if r.info.is_some() {
                            sub.member.set_chan_info(r.info);
                        }
                    }
                    continue;
                }
            }
            let (code, reason) = codes::unsubscribe::EXPIRED;
            self.unsubscribe_channel(&channel, Some((code, reason)))
                .await;
        }
        self.sub_expire_at = self.subs.values().filter_map(|s| s.expire_at).min();
    }

    /// Asks the refresh proxy to extend the connection, which expired just now.
    async fn refresh_by_proxy(&mut self) -> Result<(), Disconnect> {
        let node = self.node.clone();
        let r = node.proxy_refresh(&self.conn, self.proxy_ctx()).await;
        if r.expired || r.expire_at <= auth::unix_now() as i64 {
            return Err(Disconnect::expired());
        }
        self.expire_at = Some(server_deadline(r.expire_at));
        if r.meta.is_some() {
            self.proxy_ctx_mut().meta = r.meta;
        }
        if let Some(info) = r.info {
            self.set_conn_info(info);
        }
        Ok(())
    }

    /// New connection info, for this connection's later presence entries and
    /// publications.
    fn set_conn_info(&mut self, info: RawJson) {
        for sub in self.subs.values_mut() {
            sub.member.set_conn_info(Some(info.clone()));
        }
        self.conn_info = Some(info);
    }

    fn handle_timer(&mut self) -> Result<(), Disconnect> {
        let now = Instant::now();
        if !self.connected {
            if now >= self.stale_at {
                return Err(Disconnect::stale());
            }
            return Ok(());
        }
        if self.expire_at.is_some_and(|exp| now >= exp) {
            return Err(Disconnect::expired());
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            return Err(Disconnect::no_pong());
        }
        if now >= self.next_ping {
            let cfg = &self.node.config().client;
            let ping = match self.conn.format {
                WireFormat::Json => tidings_protocol::PING_FRAME,
                WireFormat::Protobuf => tidings_protocol::proto::PING_FRAME,
            };
            self.conn.send(Bytes::from_static(ping));
            // Unidirectional clients cannot answer; their pings only keep proxies
            // from closing an idle stream.
            if self.mode != SessionMode::Unidirectional {
                self.pong_deadline = Some(now + cfg.pong_timeout);
            }
            self.next_ping = now + cfg.ping_interval;
        }
        Ok(())
    }

    /// Queues the disconnect after what is already queued. The writer sends it and the
    /// closed token ends the loop.
    fn close(&mut self, d: Disconnect) {
        self.conn.outbox.close_after_queued(d);
    }

    /// A reply in this connection's encoding. A JSON connection cannot carry a
    /// payload that is not JSON (bytes a Protobuf client published): that is
    /// disconnect 3506, as in Centrifugo.
    fn encode(&self, reply: &Reply) -> Result<Bytes, Disconnect> {
        match self.conn.format {
            WireFormat::Json => reply
                .try_to_json()
                .map(Bytes::from)
                .map_err(|e| e.disconnect()),
            WireFormat::Protobuf => Ok(tidings_protocol::proto::reply_frame(reply)),
        }
    }

    fn send_reply(&self, reply: &Reply) {
        match self.encode(reply) {
            Ok(bytes) => {
                self.conn.send(bytes);
            }
            Err(d) => {
                self.conn.outbox.close_after_queued(d);
            }
        }
    }

    /// Sends a command's result as its reply (with the command's id), or its error.
    fn answer(&self, id: u32, result: Result<Reply, NodeError>) {
        match result {
            Ok(reply) => self.send_reply(&Reply { id, ..reply }),
            Err(e) => self.send_error(id, e.to_protocol()),
        }
    }

    fn send_error(&self, id: u32, err: impl Into<tidings_protocol::Error>) {
        self.send_reply(&Reply::error(id, err));
    }

    async fn handle_frame(&mut self, frame: ClientFrame) -> Result<(), Disconnect> {
        let frame = match (self.conn.format, frame) {
            (WireFormat::Protobuf, ClientFrame::Binary(bytes)) => {
                return self.handle_protobuf_frame(&bytes).await;
            }
            // A Protobuf connection speaks in binary frames only.
            (WireFormat::Protobuf, ClientFrame::Text(_)) => return Err(Disconnect::bad_request()),
            (WireFormat::Json, ClientFrame::Text(text)) => text,
            // The JSON protocol is text; a binary frame holding UTF-8 JSON is
            // accepted as well.
            (WireFormat::Json, ClientFrame::Binary(bytes)) => {
                String::from_utf8(bytes.to_vec()).map_err(|_| Disconnect::bad_request())?
            }
        };
        let frame = frame.as_str();
        if self.mode == SessionMode::Unidirectional {
            // The first frame is the connect request itself; a unidirectional client
            // has nothing else to say, so anything later is ignored.
            if self.connected {
                return Ok(());
            }
            self.node.metrics().messages_received.increment(1);
            let req: ConnectRequest = if frame.trim().is_empty() {
                ConnectRequest::default()
            } else if !frame.trim_start().starts_with('{') {
                return Err(Disconnect::bad_request());
            } else {
                serde_json::from_str(frame).map_err(|_| Disconnect::bad_request())?
            };
            self.node.metrics().command(Method::Connect);
            return self.on_connect(0, req).await;
        }
        for line in codec::split_frame(frame) {
            self.node.metrics().messages_received.increment(1);
            let cmd = decode_command(line)?;
            self.handle_command(cmd).await?;
        }
        Ok(())
    }

    /// The commands of a Protobuf frame (varint-length-delimited), each handled
    /// before the next is decoded. A frame that does not decode, or holds none,
    /// closes the connection with 3501, as in Centrifugo.
    async fn handle_protobuf_frame(&mut self, frame: &[u8]) -> Result<(), Disconnect> {
        let limits = tidings_protocol::proto::FrameLimits {
            // A message cannot be longer than the frame, which the transport bounds.
            max_message_len: frame.len(),
            ..Default::default()
        };
        let mut any = false;
        for cmd in tidings_protocol::proto::commands(frame, limits) {
            self.node.metrics().messages_received.increment(1);
            let cmd = cmd.map_err(|e| e.disconnect())?;
            any = true;
            self.handle_command(cmd).await?;
        }
        if !any {
            return Err(Disconnect::bad_request());
        }
        Ok(())
    }

    async fn handle_command(&mut self, cmd: Command) -> Result<(), Disconnect> {
        // Every command takes a token, pongs and `send` included.
        let budget = match &mut self.budget {
            Some(budget) => budget.check(Instant::now()),
            None => Budget::Allowed,
        };
        match budget {
            Budget::Allowed => {}
            Budget::Refused => {
                // An error reply needs an id; a pong or `send` over budget is dropped.
                if cmd.id != 0 {
                    self.send_error(cmd.id, codes::ERROR_TOO_MANY_REQUESTS);
                }
                return Ok(());
            }
            Budget::Exhausted => return Err(Disconnect::too_many_requests()),
        }
        if cmd.is_pong() {
            // A pong answers a ping, and pings start after connect.
            return if self.connected {
                Ok(())
            } else {
                Err(Disconnect::bad_request())
            };
        }
        let Some(method) = cmd.method() else {
            // An id with no request this server knows.
            return Err(Disconnect::bad_request());
        };
        if cmd.id == 0 && method != Method::Send {
            return Err(Disconnect::bad_request());
        }
        self.node.metrics().command(method);
        if !self.connected && method != Method::Connect {
            return Err(Disconnect::bad_request());
        }
        let id = cmd.id;
        match method {
            Method::Connect => self.on_connect(id, cmd.connect.unwrap_or_default()).await?,
            Method::Subscribe => {
                self.on_subscribe(id, cmd.subscribe.unwrap_or_default())
                    .await?;
            }
            Method::Unsubscribe => {
                let channel = cmd.unsubscribe.unwrap_or_default().channel;
                self.unsubscribe_channel(&channel, None).await;
                self.send_reply(&Reply {
                    id,
                    unsubscribe: Some(Empty {}),
                    ..Default::default()
                });
            }
            Method::Publish => {
                let req = cmd.publish.unwrap_or_default();
                match self.on_publish(req).await {
                    Ok(()) => self.send_reply(&Reply {
                        id,
                        publish: Some(Empty {}),
                        ..Default::default()
                    }),
                    Err(Rejection::Error(e)) => self.send_error(id, e),
                    Err(Rejection::Disconnect(d)) => return Err(d),
                }
            }
            Method::Presence => {
                let channel = cmd.presence.unwrap_or_default().channel;
                let result = self.on_presence(&channel).await.map(|presence| Reply {
                    presence: Some(PresenceResult { presence }),
                    ..Default::default()
                });
                self.answer(id, result);
            }
            Method::PresenceStats => {
                let channel = cmd.presence_stats.unwrap_or_default().channel;
                let result = self.on_presence_stats(&channel).await.map(|stats| Reply {
                    presence_stats: Some(stats),
                    ..Default::default()
                });
                self.answer(id, result);
            }
            Method::History => {
                let req = cmd.history.unwrap_or_default();
                let result = self.on_history(req).await.map(|history| Reply {
                    history: Some(history),
                    ..Default::default()
                });
                self.answer(id, result);
            }
            Method::Ping => self.send_reply(&Reply {
                id,
                ping: Some(Empty {}),
                ..Default::default()
            }),
            Method::Send => {
                // Fire-and-forget messages have no handler in the server binary; the
                // protocol defines no reply, so they are accepted and dropped.
            }
            Method::Rpc => self.on_rpc(id, cmd.rpc.unwrap_or_default()).await?,
            Method::Refresh => {
                // The refresh proxy refreshes this connection; the client has no say.
                if self.server_refresh {
                    return Err(Disconnect::bad_request());
                }
                self.on_refresh(id, &cmd.refresh.unwrap_or_default().token)
                    .await?;
            }
            Method::SubRefresh => {
                self.on_sub_refresh(id, cmd.sub_refresh.unwrap_or_default())
                    .await?;
            }
        }
        Ok(())
    }

    async fn on_connect(&mut self, id: u32, req: ConnectRequest) -> Result<(), Disconnect> {
        if self.connected {
            return Err(Disconnect::bad_request());
        }
        let node = self.node.clone();
        let cfg = &node.config().client;
        let mut proxied = false;
        let mut connect_data = None;
        // Every proxy may forward some of these (`emulated_headers`).
        if !req.headers.is_empty() {
            self.proxy_ctx_mut().emulated_headers = req.headers.clone();
        }
        let (user, claims) = if !req.token.is_empty() {
            match node.auth().connection().verify_connect(&req.token).await {
                Ok(claims) => {
                    if claims.sub.is_empty() && cfg.disallow_anonymous_connection_tokens {
                        return Err(Disconnect::permission_denied());
                    }
                    (claims.sub.clone(), claims)
                }
                Err(TokenError::Expired) => {
                    self.send_error(id, codes::ERROR_TOKEN_EXPIRED);
                    return Ok(());
                }
                Err(TokenError::Invalid) => return Err(Disconnect::invalid_token()),
            }
        } else if node.connect_proxy_enabled() {
            let channels: Vec<String> = req.subs.keys().cloned().collect();
            let ev = ConnectEvent {
                name: &req.name,
                version: &req.version,
                data: req.data.as_ref(),
                channels: &channels,
            };
            match node.proxy_connect(&self.conn, self.proxy_ctx(), ev).await {
                Ok(Some(mut result)) => {
                    proxied = true;
                    connect_data = result.data.take();
                    let claims = claims_from_proxy(result);
                    (claims.sub.clone(), claims)
                }
                // No credentials from the backend: anonymous if allowed.
                Ok(None) if cfg.allow_anonymous_connect_without_token || cfg.insecure => {
                    (String::new(), ConnectClaims::default())
                }
                Ok(None) => return Err(Disconnect::bad_request()),
                Err(Rejection::Disconnect(d)) => return Err(d),
                Err(Rejection::Error(e)) => return self.refuse_connect(id, e),
            }
        } else if cfg.allow_anonymous_connect_without_token || cfg.insecure {
            (String::new(), ConnectClaims::default())
        } else {
            // No credentials and anonymous access is off.
            return Err(Disconnect::bad_request());
        };
        if self.node.is_shutting_down() {
            return Err(Disconnect::shutdown());
        }
        let personal = self.personal_channel(&user).await?;
        self.conn.set_user(user);
        self.conn_info = claims.info.clone();
        if claims.meta.is_some() {
            self.proxy_ctx_mut().meta = claims.meta.clone();
        }
        self.server_refresh = self.node.refresh_proxy_enabled();
        let expires_unix = expiry(&claims);
        let mut result = ConnectResult {
            client: self.conn.client_id.clone(),
            version: crate::node::VERSION.to_string(),
            ping: self.node.config().client.ping_interval.as_secs().max(1) as u32,
            pong: self.mode != SessionMode::Unidirectional,
            node: self.node.uid().to_string(),
            data: connect_data,
            ..Default::default()
        };
        if self.mode != SessionMode::Bidirectional {
            result.session = self.conn.session_id.clone();
        }
        if let Some(exp) = expires_unix {
            if self.server_refresh {
                // The server refreshes through the proxy: the client is not told.
                self.expire_at = Some(server_deadline(exp as i64));
            } else {
                let (ttl, at) = expiry_deadline(exp, self.node.config().client.expired_close_delay);
                result.expires = true;
                result.ttl = ttl;
                self.expire_at = Some(at);
            }
        }
        if !self.node.register(&self.conn) {
            return Err(Disconnect::connection_limit());
        }
        self.node.user_tracked(self.conn.user()).await;
        self.connected = true;
        let ping_interval = self.node.config().client.ping_interval;
        self.next_ping = Instant::now() + ping_interval;

        // Server-side subscriptions from the token, recovered with the positions the
        // client sent in `subs` (it remembers them across reconnects).
        type ServerSub = (
            String,
            Option<RawJson>,
            Option<RawJson>,
            Option<SubscribeOverride>,
        );
        let mut channels: Vec<ServerSub> = claims
            .channels
            .iter()
            .map(|c| (c.clone(), None, None, None))
            .collect();
        for (c, sub) in &claims.subs {
            channels.push((
                c.clone(),
                sub.info.clone(),
                sub.data.clone(),
                sub.r#override.clone(),
            ));
        }
        if let Some(personal) = personal {
            if !channels.iter().any(|(c, ..)| *c == personal) {
                channels.push((personal, None, None, None));
            }
        }
        // The connect proxy's answer decides the server-side channels alone.
        if self.mode == SessionMode::Unidirectional && !proxied {
            // A unidirectional client cannot subscribe later, so the channels it names
            // in `subs` are subscribed now, each under the usual permission rules.
            for (channel, sub) in &req.subs {
                let ask = SubscribeRequest {
                    channel: channel.clone(),
                    ..sub.clone()
                };
                let limit = self.node.config().client.channel_limit;
                if limit > 0 && channels.len() >= limit {
                    break;
                }
                if !channels.iter().any(|(c, ..)| c == channel)
                    && self.check_subscribe(&ask).is_ok()
                {
                    channels.push((channel.clone(), None, None, None));
                }
            }
        }
        let mut pending_live = Vec::new();
        for (channel, chan_info, data, overrides) in channels {
            if self.subs.contains_key(&channel)
                || channel::resolve(self.node.config(), &channel).is_err()
            {
                continue;
            }
            let ask = req
                .subs
                .get(&channel)
                .map(|s| SubscribeAsk {
                    recover: s.recover.then(|| StreamPosition {
                        offset: s.offset,
                        epoch: s.epoch.clone(),
                    }),
                    // As in Centrifugo, a server-side subscription takes the
                    // position and the delta type from the connect request's
                    // `subs`; any other type simply is not agreed.
                    delta: s.delta == "fossil",
                    ..Default::default()
                })
                .unwrap_or_default();
            let ask = SubscribeAsk { overrides, ..ask };
            match self.subscribe_channel(&channel, ask, chan_info).await {
                Ok(mut sub) => {
                    sub.result.data = data;
                    result.subs.insert(channel.clone(), sub.result.clone());
                    pending_live.push((channel, sub));
                }
                Err(e) => {
                    tracing::warn!(channel, error = %e, "server-side subscription failed");
                }
            }
        }
        if self.mode == SessionMode::Unidirectional {
            self.send_reply(&Reply::push(Push {
                connect: Some(result),
                ..Default::default()
            }));
        } else {
            self.send_reply(&Reply {
                id,
                connect: Some(result),
                ..Default::default()
            });
        }
        for (channel, sub) in pending_live {
            self.go_live(&channel, sub.pending, None).await;
        }
        Ok(())
    }

    /// Answers a connect the connect proxy refused with an error: a bidirectional
    /// client gets the error reply (and retries on a temporary one); a
    /// unidirectional client, which reads no replies, is disconnected with the
    /// code `client.connect_code_to_unidirectional_disconnect` maps the error to,
    /// or 3004.
    fn refuse_connect(&mut self, id: u32, e: tidings_protocol::Error) -> Result<(), Disconnect> {
        if self.mode != SessionMode::Unidirectional {
            self.send_error(id, e);
            return Ok(());
        }
        let map = &self
            .node
            .config()
            .client
            .connect_code_to_unidirectional_disconnect;
        let mapped = map
            .enabled
            .then(|| map.transforms.iter().find(|t| t.code == e.code))
            .flatten()
            .map(|t| Disconnect::new(t.to.code, t.to.reason.clone()));
        Err(mapped.unwrap_or_else(Disconnect::server_error))
    }

    /// The user's personal channel, when `client.subscribe_to_user_personal_channel`
    /// is on and the user is not anonymous. With `single_connection`, the user's
    /// other connections (found in the channel's presence) are disconnected with
    /// 3504 first.
    async fn personal_channel(&self, user: &str) -> Result<Option<String>, Disconnect> {
        let config = self.node.config();
        let personal = &config.client.subscribe_to_user_personal_channel;
        if !personal.enabled || user.is_empty() {
            return Ok(None);
        }
        let channel = if personal.personal_channel_namespace.is_empty() {
            format!("{}{user}", config.channel.user_boundary)
        } else {
            format!(
                "{}{}{}{user}",
                personal.personal_channel_namespace,
                config.channel.namespace_boundary,
                config.channel.user_boundary
            )
        };
        if personal.single_connection {
            let stats = self.node.presence_stats(&channel).await.map_err(|e| {
                tracing::warn!(channel, error = %e, "personal channel presence failed");
                Disconnect::server_error()
            })?;
            if stats.num_clients >= 1 {
                let keep = [self.conn.client_id.clone()];
                self.node
                    .disconnect(user, None, &keep, Disconnect::connection_limit())
                    .await
                    .map_err(|e| {
                        tracing::warn!(user, error = %e, "single connection: disconnect failed");
                        Disconnect::server_error()
                    })?;
            }
        }
        Ok(Some(channel))
    }

    async fn on_refresh(&mut self, id: u32, token: &str) -> Result<(), Disconnect> {
        let node = self.node.clone();
        match node.auth().connection().verify_connect(token).await {
            Ok(claims) => {
                if claims.sub != self.conn.user() {
                    return Err(Disconnect::invalid_token());
                }
                let mut result = RefreshResult {
                    client: self.conn.client_id.clone(),
                    version: crate::node::VERSION.to_string(),
                    ..Default::default()
                };
                match expiry(&claims) {
                    Some(exp) => {
                        let grace = node.config().client.expired_close_delay;
                        let (ttl, at) = expiry_deadline(exp, grace);
                        result.expires = true;
                        result.ttl = ttl;
                        self.expire_at = Some(at);
                    }
                    None => self.expire_at = None,
                }
                if let Some(info) = claims.info {
                    for sub in self.subs.values_mut() {
                        sub.member.set_conn_info(Some(info.clone()));
                    }
                    self.conn_info = Some(info);
                }
                self.send_reply(&Reply {
                    id,
                    refresh: Some(result),
                    ..Default::default()
                });
                Ok(())
            }
            // The client was asked to refresh and came back with a stale token.
            Err(TokenError::Expired) => Err(Disconnect::expired()),
            Err(TokenError::Invalid) => Err(Disconnect::invalid_token()),
        }
    }

    /// Renews a subscription made with a token (`sub_refresh`).
    async fn on_sub_refresh(
        &mut self,
        id: u32,
        req: tidings_protocol::SubRefreshRequest,
    ) -> Result<(), Disconnect> {
        if req.channel.is_empty() {
            return Err(Disconnect::bad_request());
        }
        if !self.subs.contains_key(&req.channel) {
            self.send_error(id, codes::ERROR_PERMISSION_DENIED);
            return Ok(());
        }
        if self
            .subs
            .get(&req.channel)
            .is_some_and(|s| s.server_refresh)
        {
            // The sub_refresh proxy refreshes this subscription.
            return Err(Disconnect::bad_request());
        }
        if req.token.is_empty() {
            self.send_error(id, codes::ERROR_BAD_REQUEST);
            return Ok(());
        }
        let node = self.node.clone();
        let claims = match node
            .auth()
            .subscription()
            .verify_subscribe(&req.token)
            .await
        {
            Ok(claims) => claims,
            // The subscription keeps its old deadline; the SDK may try again.
            Err(TokenError::Expired) => {
                self.send_error(id, codes::ERROR_TOKEN_EXPIRED);
                return Ok(());
            }
            Err(TokenError::Invalid) => return Err(Disconnect::invalid_token()),
        };
        self.token_matches(&claims, &req.channel)?;
        let mut result = tidings_protocol::SubRefreshResult::default();
        let expire_at = sub_expiry(&claims).map(|exp| {
            let grace = node.config().client.expired_sub_close_delay;
            let (ttl, at) = expiry_deadline(exp, grace);
            result.expires = true;
            result.ttl = ttl;
            at
        });
        if let Some(sub) = self.subs.get_mut(&req.channel) {
            sub.expire_at = expire_at;
            if claims.info.is_some() {
                sub.member.set_chan_info(claims.info);
            }
        }
        self.sub_expire_at = self.subs.values().filter_map(|s| s.expire_at).min();
        self.send_reply(&Reply {
            id,
            sub_refresh: Some(result),
            ..Default::default()
        });
        Ok(())
    }

    /// A subscription token must be for this channel, this user and, when it names
    /// one, this client; otherwise the connection holds someone else's token and is
    /// closed with 3500, as Centrifugo does.
    fn token_matches(&self, claims: &SubscribeClaims, channel: &str) -> Result<(), Disconnect> {
        if claims.channel != channel
            || claims.sub != self.conn.user()
            || (!claims.client.is_empty() && claims.client != self.conn.client_id)
        {
            return Err(Disconnect::invalid_token());
        }
        Ok(())
    }

    async fn on_subscribe(&mut self, id: u32, req: SubscribeRequest) -> Result<(), Disconnect> {
        match check_subscribe_request(&req) {
            Ok(()) => {}
            Err(Refusal::Error(code)) => {
                self.send_error(id, code);
                return Ok(());
            }
            Err(Refusal::Disconnect(d)) => return Err(d),
        }
        if req.token.is_empty() && self.uses_subscribe_proxy(&req.channel) {
            return self.subscribe_by_proxy(id, req).await;
        }
        let granted = if req.token.is_empty() {
            self.check_subscribe(&req)
                .map(|()| None)
                .map_err(Refusal::from)
        } else {
            self.check_subscribe_token(&req).await.map(Some)
        };
        let token = match granted {
            Ok(token) => token,
            Err(Refusal::Error(code)) => {
                self.send_error(id, code);
                return Ok(());
            }
            Err(Refusal::Disconnect(d)) => return Err(d),
        };
        // Asking for a stream position or join/leave needs the permission to read
        // history or presence (the force_* options grant them regardless).
        let (may_history, may_presence) = self.stream_permissions(&req.channel);
        let mut ask = SubscribeAsk {
            recover: req.recover.then(|| StreamPosition {
                offset: req.offset,
                epoch: req.epoch.clone(),
            }),
            recoverable: req.recoverable && may_history,
            positioned: req.positioned && may_history,
            join_leave: req.join_leave && may_presence,
            ..Default::default()
        }
        .with_request_options(&req);
        let mut chan_info = None;
        let mut data = None;
        let mut ttl = None;
        ask.server_refresh = self.sub_refresh_by_proxy(&req.channel);
        if let Some(claims) = token {
            if let Some(exp) = sub_expiry(&claims) {
                if ask.server_refresh {
                    ask.expire_at = Some(server_deadline(exp as i64));
                } else {
                    let grace = self.node.config().client.expired_sub_close_delay;
                    let (secs, at) = expiry_deadline(exp, grace);
                    ttl = Some(secs);
                    ask.expire_at = Some(at);
                }
            }
            ask.overrides = claims.r#override;
            chan_info = claims.info;
            data = claims.data;
        }
        match self.subscribe_channel(&req.channel, ask, chan_info).await {
            Ok(mut sub) => {
                if let Some(ttl) = ttl {
                    sub.result.expires = true;
                    sub.result.ttl = ttl;
                }
                sub.result.data = data;
                let reply = Reply {
                    id,
                    subscribe: Some(sub.result),
                    ..Default::default()
                };
                // Recovered publications may hold what a JSON connection cannot
                // carry: then the connection ends (3506) and nothing goes live.
                match self.encode(&reply) {
                    Ok(reply) => self.go_live(&req.channel, sub.pending, Some(reply)).await,
                    Err(d) => return Err(d),
                }
            }
            Err(e) => self.send_error(id, e.to_protocol()),
        }
        Ok(())
    }

    /// Whether a subscribe without a token goes to the subscribe proxy: the
    /// namespace enables one and the name is not a user-limited one (whose user
    /// list decides), as in Centrifugo.
    fn uses_subscribe_proxy(&self, channel_name: &str) -> bool {
        let config = self.node.config();
        let Ok(ch) = channel::resolve(config, channel_name) else {
            return false;
        };
        ch.options.subscribe_proxy_enabled
            && !(ch.options.allow_user_limited_channels
                && channel_name.contains(config.channel.user_boundary.as_str()))
    }

    /// Whether the namespace's sub_refresh proxy extends this channel's
    /// subscriptions.
    fn sub_refresh_by_proxy(&self, channel_name: &str) -> bool {
        channel::resolve(self.node.config(), channel_name)
            .is_ok_and(|ch| ch.options.sub_refresh_proxy_enabled)
    }

    /// A subscribe the subscribe proxy decides. Recovery, positioning and
    /// join/leave pushes follow the namespace's `force_*` options and the
    /// backend's `override`, not the client's flags (Centrifugo's rule).
    async fn subscribe_by_proxy(
        &mut self,
        id: u32,
        req: SubscribeRequest,
    ) -> Result<(), Disconnect> {
        if let Err(code) = self.check_subscribe_limits(&req) {
            self.send_error(id, code);
            return Ok(());
        }
        if channel::resolve(self.node.config(), &req.channel).is_ok_and(|ch| ch.is_private()) {
            self.send_error(id, codes::ERROR_PERMISSION_DENIED);
            return Ok(());
        }
        let node = self.node.clone();
        let r = match node
            .proxy_subscribe(
                &self.conn,
                self.proxy_ctx(),
                &req.channel,
                req.data.as_ref(),
            )
            .await
        {
            Ok(r) => r,
            Err(Rejection::Error(e)) => {
                self.send_error(id, e);
                return Ok(());
            }
            Err(Rejection::Disconnect(d)) => return Err(d),
        };
        // The client may have subscribed meanwhile (a second subscribe sent
        // before this one was answered).
        if self.subs.contains_key(&req.channel) {
            self.send_error(id, codes::ERROR_ALREADY_SUBSCRIBED);
            return Ok(());
        }
        let server_refresh = self.sub_refresh_by_proxy(&req.channel);
        let mut ask = SubscribeAsk {
            recover: req.recover.then(|| StreamPosition {
                offset: req.offset,
                epoch: req.epoch.clone(),
            }),
            overrides: r.overrides.map(override_from_proxy),
            server_refresh,
            ..Default::default()
        }
        .with_request_options(&req);
        let mut ttl = None;
        if r.expire_at > 0 {
            if server_refresh {
                ask.expire_at = Some(server_deadline(r.expire_at));
            } else {
                let grace = self.node.config().client.expired_sub_close_delay;
                let (secs, at) = expiry_deadline(r.expire_at as u64, grace);
                ttl = Some(secs);
                ask.expire_at = Some(at);
            }
        }
        match self.subscribe_channel(&req.channel, ask, r.info).await {
            Ok(mut sub) => {
                if let Some(ttl) = ttl {
                    sub.result.expires = true;
                    sub.result.ttl = ttl;
                }
                sub.result.data = r.data;
                // In the connection's own encoding (it was always JSON, which a
                // Protobuf client cannot read); a payload a JSON client cannot
                // carry ends the connection with 3506, as in on_subscribe.
                let reply = self.encode(&Reply {
                    id,
                    subscribe: Some(sub.result),
                    ..Default::default()
                })?;
                self.go_live(&req.channel, sub.pending, Some(reply)).await;
            }
            Err(e) => self.send_error(id, e.to_protocol()),
        }
        Ok(())
    }

    /// Checks a subscribe that carries a token. The token alone decides, for any
    /// channel (Centrifugo v6): namespace permissions and user lists are not consulted.
    async fn check_subscribe_token(
        &self,
        req: &SubscribeRequest,
    ) -> Result<SubscribeClaims, Refusal> {
        self.check_subscribe_limits(req)?;
        let node = self.node.clone();
        let claims = match node
            .auth()
            .subscription()
            .verify_subscribe(&req.token)
            .await
        {
            Ok(claims) => claims,
            Err(TokenError::Expired) => return Err(codes::ERROR_TOKEN_EXPIRED.into()),
            Err(TokenError::Invalid) => return Err(codes::ERROR_PERMISSION_DENIED.into()),
        };
        self.token_matches(&claims, &req.channel)
            .map_err(Refusal::Disconnect)?;
        Ok(claims)
    }

    /// Whether this client may read history and presence of a channel it is
    /// subscribing to.
    fn stream_permissions(&self, channel_name: &str) -> (bool, bool) {
        let config = self.node.config();
        let Ok(ch) = channel::resolve(config, channel_name) else {
            return (false, false);
        };
        if config.client.insecure {
            return (true, true);
        }
        let user = self.conn.user();
        (
            channel::can_history(ch.options, user, true),
            channel::can_presence(ch.options, user, true),
        )
    }

    /// Checks that hold for every subscribe: a valid name in a known namespace, not
    /// subscribed yet, under the channel limit.
    fn check_subscribe_limits(&self, req: &SubscribeRequest) -> Result<(), ErrorCode> {
        channel::resolve_for_client(self.node.config(), &req.channel)?;
        if self.subs.contains_key(&req.channel) {
            return Err(codes::ERROR_ALREADY_SUBSCRIBED);
        }
        self.node.check_join(&self.conn, &req.channel)
    }

    /// Checks a subscribe without a token against the namespace's permissions.
    fn check_subscribe(&self, req: &SubscribeRequest) -> Result<(), ErrorCode> {
        self.check_subscribe_limits(req)?;
        channel::check_client_subscribe(self.node.config(), &req.channel, self.conn.user())
    }

    fn client_info(&self, chan_info: Option<RawJson>) -> ClientInfo {
        ClientInfo {
            user: self.conn.user().to_string(),
            client: self.conn.client_id.clone(),
            conn_info: self.conn_info.clone(),
            chan_info,
        }
    }

    /// Adds the connection to the channel and works out the subscribe result,
    /// reading history for the position or the recovery. The caller sends the reply
    /// through [`Session::go_live`].
    async fn subscribe_channel(
        &mut self,
        channel: &str,
        ask: SubscribeAsk,
        chan_info: Option<RawJson>,
    ) -> Result<Subscribed, NodeError> {
        let node = self.node.clone();
        let config = node.config();
        let ch = channel::resolve(config, channel)?;
        let history = ch.history_enabled();
        let mut effective;
        let opts = match &ask.overrides {
            None => ch.options,
            Some(o) => {
                effective = ch.options.clone();
                let set = |field: &mut bool, value: &Option<auth::BoolValue>| {
                    if let Some(v) = value {
                        *field = v.value;
                    }
                };
                set(&mut effective.presence, &o.presence);
                set(&mut effective.join_leave, &o.join_leave);
                set(
                    &mut effective.force_push_join_leave,
                    &o.force_push_join_leave,
                );
                set(&mut effective.force_recovery, &o.force_recovery);
                set(&mut effective.force_positioning, &o.force_positioning);
                &effective
            }
        };
        let recoverable =
            history && (opts.force_recovery || (opts.allow_recovery && ask.recoverable));
        let positioned = history
            && (recoverable
                || opts.force_positioning
                || (opts.allow_positioning && ask.positioned));
        let stream = match ask.recover.clone().filter(|_| recoverable) {
            Some(since) => StreamAsk::Recover(since),
            None if positioned => StreamAsk::Position,
            None => StreamAsk::None,
        };
        let tags_filter = match &ask.tags_filter {
            None => None,
            Some(_) if !opts.allow_tags_filter => return Err(codes::ERROR_BAD_REQUEST.into()),
            Some(tf) => {
                tidings_protocol::filter::validate(tf).map_err(|_| codes::ERROR_BAD_REQUEST)?;
                Some(Arc::new(tf.clone()))
            }
        };
        // As in Centrifugo: deltas need a namespace that allows them and a
        // positioned stream (history with positioning or recovery).
        let delta = ask.delta && positioned && opts.allows_fossil_delta();
        let encoder = if delta {
            centrifugo_delta_pushes(self.conn.format)
        } else {
            centrifugo_pushes(self.conn.format)
        };
        let joined = node
            .join(
                &self.conn,
                JoinRequest {
                    channel: channel.to_string(),
                    info: self.client_info(chan_info),
                    presence: opts.presence,
                    join_leave: opts.join_leave,
                    push_join_leave: opts.join_leave
                        && (opts.force_push_join_leave || ask.join_leave),
                    stream,
                    encoder,
                    shape: Shape { tags_filter, delta },
                    reject_unrecovered: ask.reject_unrecovered,
                },
            )
            .await?;
        let mut result = SubscribeResult {
            delta,
            ..Default::default()
        };
        if let Some(position) = joined.position {
            result.positioned = true;
            result.recoverable = recoverable;
            result.epoch = position.epoch;
            result.offset = position.offset;
            result.publications = joined.publications;
            if delta && self.conn.format == WireFormat::Json {
                // Every publication of a JSON delta subscription carries its data
                // as a string; recovered ones are full. One that is not JSON stays
                // as it is and the reply fails with 3506, as without deltas.
                for p in &mut result.publications {
                    if let Some(full) = json_delta_full(p) {
                        *p = full;
                    }
                }
            }
            result.recovered = joined.recovered;
            result.was_recovering = joined.recovering;
        }
        self.subs.insert(
            channel.to_string(),
            Box::new(ChannelSub {
                member: joined.member,
                expire_at: ask.expire_at,
                server_refresh: ask.server_refresh,
            }),
        );
        if let Some(at) = ask.expire_at {
            self.sub_expire_at = Some(self.sub_expire_at.map_or(at, |t| t.min(at)));
        }
        Ok(Subscribed {
            result,
            pending: joined.pending,
        })
    }

    /// Sends the subscribe reply (`first`, unless it went out with another
    /// reply), what arrived meanwhile, then live publications; the channel hears
    /// the join.
    async fn go_live(&self, channel: &str, pending: Pending, first: Option<Bytes>) {
        if let Some(sub) = self.subs.get(channel) {
            self.node.go_live(&sub.member, pending, first).await;
        }
    }

    /// Leaves a channel (hub, presence, leave message), and optionally sends an
    /// unsubscribe push.
    async fn unsubscribe_channel(&mut self, channel: &str, push: Option<(u32, &str)>) {
        let Some(sub) = self.subs.remove(channel) else {
            return;
        };
        self.node.leave(sub.member).await;
        if let Some((code, reason)) = push {
            self.send_reply(&Reply::push(Push {
                channel: channel.to_string(),
                unsubscribe: Some(UnsubscribePush {
                    code,
                    reason: reason.to_string(),
                }),
                ..Default::default()
            }));
        }
    }

    /// A client publication: the publish proxy decides (and may rewrite it) where
    /// the namespace enables one; the namespace's permissions otherwise.
    async fn on_publish(&mut self, req: tidings_protocol::PublishRequest) -> Result<(), Rejection> {
        // Map publications (Centrifugo's `type: 1`) need a map handler, which
        // Tidings does not have: 108, as Centrifugo answers without one.
        if req.r#type != 0 {
            return Err(codes::ERROR_NOT_AVAILABLE.into());
        }
        let node = self.node.clone();
        let config = node.config();
        let ch = channel::resolve_for_client(config, &req.channel)?;
        let subscribed = self.subs.get(&req.channel);
        if ch.options.publish_proxy_enabled {
            let data = req.data.ok_or(codes::ERROR_BAD_REQUEST)?;
            let r = node
                .proxy_publish(&self.conn, self.proxy_ctx(), &req.channel, &data)
                .await?;
            let chan_info = subscribed.and_then(|s| s.member.info().chan_info.clone());
            return node
                .publish_from_client(
                    &self.conn,
                    CLIENT_EVENT,
                    PublishRequest {
                        info: Some(self.client_info(chan_info)),
                        skip_history: r.skip_history,
                        tags: r.tags,
                        idempotency_key: Some(r.idempotency_key).filter(|k| !k.is_empty()),
                        ..PublishRequest::new(req.channel, r.data.unwrap_or(data))
                    },
                )
                .await
                .map(|_| ())
                .map_err(|e| Rejection::Error(e.to_protocol()));
        }
        if !config.client.insecure
            && !channel::can_publish(ch.options, self.conn.user(), subscribed.is_some())
        {
            return Err(codes::ERROR_PERMISSION_DENIED.into());
        }
        let data = req.data.ok_or(codes::ERROR_BAD_REQUEST)?;
        let chan_info = subscribed.and_then(|s| s.member.info().chan_info.clone());
        self.node
            .publish_from_client(
                &self.conn,
                CLIENT_EVENT,
                PublishRequest {
                    info: Some(self.client_info(chan_info)),
                    ..PublishRequest::new(req.channel, data)
                },
            )
            .await
            .map(|_| ())
            .map_err(|e| Rejection::Error(e.to_protocol()))
    }

    /// Presence queries: 108 where presence is off, then the permission (103).
    fn check_presence(&self, channel: &str) -> Result<(), NodeError> {
        let config = self.node.config();
        let ch = channel::resolve_for_client(config, channel)?;
        if !ch.options.presence {
            return Err(codes::ERROR_NOT_AVAILABLE.into());
        }
        if !config.client.insecure
            && !channel::can_presence(
                ch.options,
                self.conn.user(),
                self.subs.contains_key(channel),
            )
        {
            return Err(codes::ERROR_PERMISSION_DENIED.into());
        }
        Ok(())
    }

    async fn on_presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, NodeError> {
        self.check_presence(channel)?;
        self.node.presence(channel).await
    }

    async fn on_presence_stats(&self, channel: &str) -> Result<PresenceStatsResult, NodeError> {
        self.check_presence(channel)?;
        let stats = self.node.presence_stats(channel).await?;
        Ok(PresenceStatsResult {
            num_clients: stats.num_clients,
            num_users: stats.num_users,
        })
    }

    async fn on_history(&self, req: HistoryRequest) -> Result<HistoryResult, NodeError> {
        let config = self.node.config();
        let ch = channel::resolve_for_client(config, &req.channel)?;
        if !ch.history_enabled() {
            return Err(codes::ERROR_NOT_AVAILABLE.into());
        }
        if !config.client.insecure
            && !channel::can_history(
                ch.options,
                self.conn.user(),
                self.subs.contains_key(&req.channel),
            )
        {
            return Err(codes::ERROR_PERMISSION_DENIED.into());
        }
        let max = config.client.history_max_publication_limit;
        let limit = match req.limit {
            0 => 0,
            n if n < 0 => max,
            n => (n as usize).min(max),
        };
        let page = self
            .node
            .history(
                &req.channel,
                HistoryFilter {
                    since: req.since,
                    limit: Some(limit),
                    reverse: req.reverse,
                },
            )
            .await?;
        Ok(HistoryResult {
            publications: page.publications,
            epoch: page.position.epoch,
            offset: page.position.offset,
        })
    }

    async fn on_rpc(&self, id: u32, req: tidings_protocol::RpcRequest) -> Result<(), Disconnect> {
        let call = RpcRequest {
            client_id: self.conn.client_id.clone(),
            user: self.conn.user().to_string(),
            method: req.method,
            data: req.data,
        };
        match self.node.rpc(&self.conn, self.proxy_ctx(), call).await {
            Ok(data) => self.send_reply(&Reply {
                id,
                rpc: Some(RpcResult { data }),
                ..Default::default()
            }),
            Err(Rejection::Error(e)) => self.send_error(id, e),
            Err(Rejection::Disconnect(d)) => return Err(d),
        }
        Ok(())
    }

    async fn handle_control(&mut self, ctrl: Control) -> Result<(), Disconnect> {
        match ctrl {
            Control::Disconnect(d) => return Err(d),
            Control::Refresh(r) => self.on_server_refresh(*r)?,
            Control::Insufficient { channel } => {
                let lost = self
                    .subs
                    .get(&channel)
                    .is_some_and(|s| s.member.lost_place());
                if lost {
                    let (code, reason) = codes::unsubscribe::INSUFFICIENT;
                    self.unsubscribe_channel(&channel, Some((code, reason)))
                        .await;
                }
            }
            Control::Unsubscribe { channel } => {
                let (code, reason) = codes::unsubscribe::SERVER;
                self.unsubscribe_channel(&channel, Some((code, reason)))
                    .await;
            }
            Control::Subscribe(sub) => {
                let ServerSubscribe {
                    channel,
                    info,
                    data,
                } = *sub;
                if !self.connected || self.subs.contains_key(&channel) {
                    return Ok(());
                }
                match self
                    .subscribe_channel(&channel, SubscribeAsk::default(), info)
                    .await
                {
                    Ok(sub) => {
                        let push = Reply::push(Push {
                            channel: channel.clone(),
                            subscribe: Some(SubscribePush {
                                recoverable: sub.result.recoverable,
                                epoch: sub.result.epoch.clone(),
                                offset: sub.result.offset,
                                positioned: sub.result.positioned,
                                data,
                            }),
                            ..Default::default()
                        });
                        let first = Some(self.encode(&push)?);
                        self.go_live(&channel, sub.pending, first).await;
                    }
                    Err(e) => {
                        tracing::warn!(channel, error = %e, "server API subscribe failed");
                    }
                }
            }
        }
        Ok(())
    }

    /// Server API `refresh`: ends the connection, moves its expiry (grace
    /// included) and tells the client with a refresh push, or updates its info.
    fn on_server_refresh(&mut self, r: ServerRefresh) -> Result<(), Disconnect> {
        if !self.connected {
            return Ok(());
        }
        if r.expired {
            return Err(Disconnect::expired());
        }
        let mut push = tidings_protocol::RefreshResult::default();
        if r.expire_at > 0 {
            if r.expire_at <= auth::unix_now() as i64 {
                return Err(Disconnect::expired());
            }
            let grace = self.node.config().client.expired_close_delay;
            let (ttl, at) = expiry_deadline(r.expire_at as u64, grace);
            self.expire_at = Some(at);
            push.expires = true;
            push.ttl = ttl;
        } else {
            self.expire_at = None;
        }
        if let Some(info) = r.info {
            self.set_conn_info(info);
        }
        self.send_reply(&Reply::push(Push {
            refresh: Some(push),
            ..Default::default()
        }));
        Ok(())
    }

    async fn cleanup(&mut self) {
        // Make sure the writer stops even when the client left on its own.
        self.conn
            .outbox
            .close_dropping_queued(Disconnect::connection_closed());
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.unsubscribe_channel(&channel, None).await;
        }
        if self.connected {
            self.node.unregister(&self.conn);
        }
        let metrics = self.node.metrics();
        metrics.connections.decrement(1.0);
        let code = self.conn.outbox.closed_with().map_or(3000, |d| d.code);
        metrics.disconnect(code);
    }
}

#[cfg(test)]
mod tests {
    //! The session without a socket: frames go in through a channel, and what the
    //! client would receive is read from the outbox. Time is paused, so pings and
    //! deadlines run instantly.

    use super::*;
    use crate::outbox::Drained;
    use crate::Config;
    use tokio::sync::mpsc;

    struct Harness {
        frames: mpsc::Sender<Inbound>,
        conn: Arc<Connection>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(config: Config) -> Harness {
        let node = Node::new(config);
        let (conn, control) = Connection::new("test", 65_536);
        let (frames, rx) = mpsc::channel::<Inbound>(16);
        let inbound = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        }));
        let task = tokio::spawn(Session::new(node, conn.clone(), control).run(inbound));
        Harness { frames, conn, task }
    }

    impl Harness {
        async fn send(&self, frame: &str) {
            self.frames
                .send(Ok(frame.to_string().into()))
                .await
                .unwrap();
        }

        /// Next batch the writer would send, or the close it would send.
        async fn next(&self) -> Result<Vec<String>, Disconnect> {
            match self.conn.outbox.drain().await {
                Drained::Batch(items) => Ok(items
                    .iter()
                    .map(|b| String::from_utf8(b.to_vec()).unwrap())
                    .collect()),
                Drained::Close(_, d) => Err(d),
            }
        }

        async fn closed_with(&self) -> Disconnect {
            loop {
                if let Err(d) = self.next().await {
                    return d;
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn missing_pong_disconnects_with_no_pong() {
        let h = start(Config::development());
        h.send(r#"{"id":1,"connect":{}}"#).await;
        let connect = h.next().await.unwrap();
        assert!(connect[0].contains(r#""ping":25"#), "{connect:?}");
        // 25 s later the server pings with an empty object…
        assert_eq!(h.next().await.unwrap(), vec!["{}".to_string()]);
        // …and without an answer within pong_timeout it disconnects.
        assert_eq!(h.closed_with().await.code, 3012);
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn answered_pings_keep_the_connection() {
        let h = start(Config::development());
        h.send(r#"{"id":1,"connect":{}}"#).await;
        h.next().await.unwrap();
        for _ in 0..3 {
            assert_eq!(h.next().await.unwrap(), vec!["{}".to_string()]);
            h.send("{}").await;
        }
        assert!(h.conn.outbox.closed_with().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn unrefreshed_token_closes_with_3005_once_the_grace_is_over() {
        let mut config = Config::development();
        config.client.token.hmac_secret_key = "session-test-secret".into();
        let h = start(config);
        let claims = ConnectClaims {
            sub: "u".into(),
            exp: Some(auth::unix_now() + 30),
            ..Default::default()
        };
        let token = auth::sign_connect_token("session-test-secret", &claims).unwrap();
        let started = Instant::now();
        h.send(&format!(r#"{{"id":1,"connect":{{"token":"{token}"}}}}"#))
            .await;
        let connect = h.next().await.unwrap();
        assert!(connect[0].contains(r#""expires":true"#), "{connect:?}");
        // Pings are answered, so only the expiry can end the connection.
        let closed = loop {
            match h.next().await {
                Ok(batch) if batch == ["{}"] => h.send("{}").await,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(d) => break d,
            }
        };
        assert_eq!(closed.code, 3005);
        // ttl (29–30 s by the wall clock) plus the default 25 s grace.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(54), "{waited:?}");
        assert!(waited <= Duration::from_secs(56), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn connection_that_never_connects_goes_stale() {
        let h = start(Config::development());
        assert_eq!(h.closed_with().await.code, 3502);
    }

    #[tokio::test]
    async fn command_before_connect_is_a_bad_request() {
        let h = start(Config::development());
        h.send(r#"{"id":1,"subscribe":{"channel":"a"}}"#).await;
        assert_eq!(h.closed_with().await.code, 3501);
    }

    #[tokio::test]
    async fn batched_commands_get_replies_in_order() {
        let h = start(Config::development());
        h.send("{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"a\"}}\n{\"id\":3,\"subscribe\":{\"channel\":\"a\"}}")
            .await;
        let mut lines = Vec::new();
        while lines.len() < 3 {
            lines.extend(h.next().await.unwrap());
        }
        assert!(lines[0].starts_with(r#"{"id":1,"connect""#));
        assert!(lines[1].starts_with(r#"{"id":2,"subscribe""#));
        // The join push of the subscriber itself may come before the 105 error.
        assert!(lines
            .iter()
            .any(|l| l == r#"{"id":3,"error":{"code":105,"message":"already subscribed"}}"#));
    }

    fn with_budget(rate: u32, burst: u32, disconnect_after: u32) -> Config {
        let mut config = Config::development();
        config.client.command_rate_limit = crate::config::CommandRateLimitConfig {
            enabled: true,
            rate,
            burst,
            disconnect_after,
        };
        config
    }

    /// The next `n` replies, however the writer batches them.
    async fn replies(h: &Harness, n: usize) -> Vec<String> {
        let mut lines = Vec::new();
        while lines.len() < n {
            lines.extend(h.next().await.unwrap());
        }
        lines
    }

    fn pings(ids: std::ops::RangeInclusive<u32>) -> String {
        ids.map(|id| format!(r#"{{"id":{id},"ping":{{}}}}"#))
            .collect::<Vec<_>>()
            .join("\n")
    }

    const TOO_MANY: &str = r#"{"code":111,"message":"too many requests","temporary":true}"#;

    // Paused time: the bucket refills only when the test advances the clock.
    #[tokio::test(start_paused = true)]
    async fn commands_over_the_budget_get_111_until_tokens_come_back() {
        let h = start(with_budget(1, 3, 0));
        h.send(r#"{"id":1,"connect":{}}"#).await;
        h.next().await.unwrap();
        // Connect took one of the three tokens: two pings pass, the third is refused.
        h.send(&pings(2..=4)).await;
        let lines = replies(&h, 3).await;
        assert!(lines[0].starts_with(r#"{"id":2,"ping""#), "{lines:?}");
        assert!(lines[1].starts_with(r#"{"id":3,"ping""#), "{lines:?}");
        assert_eq!(lines[2], format!(r#"{{"id":4,"error":{TOO_MANY}}}"#));
        // A second later one token is back, and only one.
        tokio::time::advance(Duration::from_secs(1)).await;
        h.send(&pings(5..=6)).await;
        let lines = replies(&h, 2).await;
        assert!(lines[0].starts_with(r#"{"id":5,"ping""#), "{lines:?}");
        assert_eq!(lines[1], format!(r#"{{"id":6,"error":{TOO_MANY}}}"#));
        assert!(h.conn.outbox.closed_with().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_keeps_going_over_budget_is_closed_3013() {
        let h = start(with_budget(1, 2, 3));
        h.send(r#"{"id":1,"connect":{}}"#).await;
        h.next().await.unwrap();
        h.send(&pings(2..=8)).await;
        // What was queued before the close comes with it.
        let mut lines = Vec::new();
        let closed = loop {
            let (items, close) = match h.conn.outbox.drain().await {
                Drained::Batch(items) => (items, None),
                Drained::Close(items, d) => (items, Some(d)),
            };
            lines.extend(items.iter().map(|b| String::from_utf8(b.to_vec()).unwrap()));
            if let Some(d) = close {
                break d;
            }
        };
        assert_eq!(closed.code, 3013);
        assert_eq!(closed.reason, "too many requests");
        // One ping passed, two were refused, and the third refusal closed it.
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with(r#"{"id":2,"ping""#), "{lines:?}");
        assert!(lines[1..].iter().all(|l| l.contains(TOO_MANY)), "{lines:?}");
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_forgiven_once_the_bucket_refills() {
        let h = start(with_budget(1, 2, 3));
        h.send(r#"{"id":1,"connect":{}}"#).await;
        h.next().await.unwrap();
        h.send(&pings(2..=4)).await;
        assert_eq!(
            replies(&h, 3)
                .await
                .iter()
                .filter(|l| l.contains(TOO_MANY))
                .count(),
            2
        );
        // Quiet long enough to fill the bucket: the two refusals no longer count,
        // so one more refusal (the third overall) keeps the connection.
        tokio::time::advance(Duration::from_secs(2)).await;
        h.send(&pings(5..=7)).await;
        assert_eq!(
            replies(&h, 3)
                .await
                .iter()
                .filter(|l| l.contains(TOO_MANY))
                .count(),
            1
        );
        assert!(h.conn.outbox.closed_with().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn pongs_count_against_the_budget_but_get_no_reply() {
        let h = start(with_budget(1, 2, 3));
        h.send(r#"{"id":1,"connect":{}}"#).await;
        h.next().await.unwrap();
        // One pong passes and three more are dropped; the third refusal closes.
        h.send("{}\n{}\n{}\n{}").await;
        assert_eq!(h.closed_with().await.code, 3013);
    }
}
