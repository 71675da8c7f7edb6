//! One task per Engine.IO session: the heartbeat, Socket.IO namespaces (CONNECT with
//! its auth, DISCONNECT), events and acks, rooms as Tidings channels, presence and
//! connection state recovery from channel history.
//!
//! The events a client uses (each answers through its ack, `{ok: true, ...}` or
//! `{ok: false, error}`):
//! - `tidings:join` `{room}`: join a room the channel rules permit;
//! - `tidings:leave` `{room}`;
//! - `tidings:publish` `{room, event, args}`: publish `{event, args}` to the room's
//!   channel when permitted;
//! - `tidings:presence` `{room}`: the room's members.
//!
//! With `socketio.connection_state_recovery`, the server also sends `tidings:offset`
//! with no arguments but the offset after every join, so that a client that has not
//! received a room event yet still has a position to come back with.

use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;

use bytes::Bytes;
use serde_json::{json, Value};
use tidings_protocol::codes::{self, ErrorCode};
use tidings_protocol::{ClientInfo, Disconnect, Publication, RawJson, StreamPosition};
use tokio::sync::mpsc;

use super::engine::ClientPacket;
use super::packet::{self, Packet};
use super::pushes::SOCKETIO_PUSHES;
use super::transport::{self, Inbound, Room, Shared};
use crate::auth::TokenError;
use crate::channel;
use crate::connection::{Control, ControlReceiver, ServerSubscribe};
use crate::limit::{Budget, CommandBudget};
use crate::node::{
    ConnectEvent, JoinRequest, Member, Node, NodeError, Pending, PublishRequest, StreamAsk,
};
use crate::proxy::{ProxyContext, Rejection};

/// A connected Socket.IO namespace.
struct Socket {
    tidings_ns: String,
}

/// A binary packet waiting for its attachments.
struct Partial {
    packet: Packet,
    attachments: Vec<Bytes>,
    bytes: usize,
}

struct Sio {
    node: Node,
    /// `client.command_rate_limit` applied to CONNECT and EVENT packets: each takes
    /// a token; an event over budget is answered `{ok: false, error: "too many
    /// requests"}`, and a client that keeps going past `disconnect_after` refusals
    /// is closed.
    budget: Option<CommandBudget>,
    shared: Arc<Shared>,
    sockets: HashMap<String, Socket>,
    /// Set by the first accepted CONNECT; every namespace must be the same user.
    user: Option<String>,
    conn_info: Option<RawJson>,
    /// The channels this session is in, by name.
    subs: HashMap<String, Member>,
    /// The connection's meta from the connect proxy, for the other proxies.
    proxy_ctx: ProxyContext,
    partial: Option<Partial>,
}

/// What a join produced, before the subscriber goes live.
struct Joined {
    pending: Pending,
    missed: Vec<Publication>,
    recovered: bool,
}

fn err_text(code: ErrorCode) -> String {
    code.message.to_string()
}

pub async fn run(
    node: Node,
    shared: Arc<Shared>,
    mut inbound: mpsc::Receiver<Inbound>,
    mut control: ControlReceiver,
) {
    let metrics = node.metrics();
    metrics.connections.increment(1.0);
    metrics.socketio_sessions().increment(1.0);
    let cfg = node.config().socketio.clone();
    let budget =
        CommandBudget::from_config(&node.config().client.command_rate_limit, Instant::now());
    let mut sio = Sio {
        node: node.clone(),
        budget,
        shared: shared.clone(),
        sockets: HashMap::new(),
        user: None,
        conn_info: None,
        subs: HashMap::new(),
        proxy_ctx: ProxyContext::default(),
        partial: None,
    };
    let closed = shared.conn.outbox.closed_token().clone();
    let shutdown = node.shutdown_token();
    let mut next_ping = Instant::now() + cfg.ping_interval;
    let mut pong_deadline: Option<Instant> = None;
    // A session that never connects a namespace is closed, like a Centrifugo
    // connection that never sends connect (`client.stale_close_delay`).
    let stale_at = Instant::now() + node.config().client.stale_close_delay;
    loop {
        let mut deadline = pong_deadline.unwrap_or(next_ping);
        if sio.user.is_none() {
            deadline = deadline.min(stale_at);
        }
        tokio::select! {
            _ = closed.cancelled() => break,
            _ = shutdown.cancelled() => {
                shared.conn.outbox.close_after_queued(Disconnect::shutdown());
                break;
            }
            msg = inbound.recv() => {
                let result = match msg {
                    None => Err(Disconnect::connection_closed()),
                    Some(Inbound::Gone(d)) => Err(d),
                    Some(Inbound::Packet(ClientPacket::Pong(_))) => {
                        pong_deadline = None;
                        next_ping = Instant::now() + cfg.ping_interval;
                        Ok(())
                    }
                    Some(Inbound::Packet(p)) => sio.handle(p).await,
                };
                if let Err(d) = result {
                    // What is queued (acks, refusals) still goes out before the close.
                    shared.conn.outbox.close_after_queued(d);
                    break;
                }
            }
            Some(ctrl) = control.recv() => {
                if let Err(d) = sio.handle_control(ctrl).await {
                    sio.disconnect_all(&d);
                    shared.conn.outbox.close_after_queued(d);
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if sio.user.is_none() && Instant::now() >= stale_at {
                    shared.close(Disconnect::stale());
                    break;
                }
                if Instant::now() < deadline {
                    continue;
                }
                if pong_deadline.is_some() {
                    shared.close(Disconnect::no_pong());
                    break;
                }
                shared.send_text("2");
                pong_deadline = Some(Instant::now() + cfg.ping_timeout);
            }
        }
    }
    sio.cleanup().await;
}

impl Sio {
    async fn handle(&mut self, packet: ClientPacket) -> Result<(), Disconnect> {
        self.node.metrics().messages_received.increment(1);
        match packet {
            ClientPacket::Close => Err(Disconnect::connection_closed()),
            ClientPacket::Ping(data) => {
                self.shared.send_text(&format!("3{data}"));
                Ok(())
            }
            ClientPacket::Pong(_) | ClientPacket::Noop | ClientPacket::Upgrade => Ok(()),
            ClientPacket::Message(text) => {
                if self.partial.is_some() {
                    return Err(malformed());
                }
                let max = self.node.config().socketio.max_attachments;
                let packet = Packet::decode(&text, max).map_err(|_| malformed())?;
                if packet.attachments > 0 {
                    self.partial = Some(Partial {
                        packet,
                        attachments: Vec::new(),
                        bytes: 0,
                    });
                    return Ok(());
                }
                self.dispatch(packet).await
            }
            ClientPacket::Binary(bytes) => {
                let max_bytes = self.node.config().socketio.max_payload;
                let partial = self.partial.as_mut().ok_or_else(malformed)?;
                partial.bytes += bytes.len();
                if partial.bytes > max_bytes {
                    return Err(Disconnect::new(3502, "payload too large"));
                }
                partial.attachments.push(bytes);
                if partial.attachments.len() < partial.packet.attachments {
                    return Ok(());
                }
                let Partial {
                    mut packet,
                    attachments,
                    ..
                } = self.partial.take().ok_or_else(malformed)?;
                packet.fill(&attachments).map_err(|_| malformed())?;
                self.dispatch(packet).await
            }
        }
    }

    async fn dispatch(&mut self, packet: Packet) -> Result<(), Disconnect> {
        match packet.kind {
            packet::CONNECT => {
                // A CONNECT can cost a token verification: it takes a token too.
                if !self.take_token()? {
                    self.connect_error(
                        &packet.nsp,
                        codes::ERROR_TOO_MANY_REQUESTS.message,
                        Some(111),
                    );
                    return Ok(());
                }
                self.on_connect(&packet.nsp, packet.data).await
            }
            packet::DISCONNECT => {
                self.on_namespace_disconnect(&packet.nsp).await;
                Ok(())
            }
            packet::EVENT | packet::BINARY_EVENT => {
                if !self.sockets.contains_key(&packet.nsp) {
                    // Events for a namespace the client has not joined are ignored,
                    // as the reference server does.
                    return Ok(());
                }
                let Some(Value::Array(args)) = packet.data else {
                    return Err(malformed());
                };
                let reply = if self.take_token()? {
                    self.on_event(&packet.nsp, args).await
                } else {
                    self.node.metrics().socketio_event("refused");
                    json!({"ok": false, "error": codes::ERROR_TOO_MANY_REQUESTS.message})
                };
                if let Some(id) = packet.id {
                    let mut ack = Packet::new(packet::ACK, &packet.nsp, Some(json!([reply])));
                    ack.id = Some(id);
                    self.shared.send_packet(ack);
                }
                Ok(())
            }
            // The server never asks for acks.
            _ => Ok(()),
        }
    }

    /// One token of the budget: `Ok(false)` to refuse, `Err` to close.
    fn take_token(&mut self) -> Result<bool, Disconnect> {
        match self.budget.as_mut().map(|b| b.check(Instant::now())) {
            None | Some(Budget::Allowed) => Ok(true),
            Some(Budget::Refused) => Ok(false),
            Some(Budget::Exhausted) => Err(Disconnect::too_many_requests()),
        }
    }

    fn connect_error(&self, nsp: &str, message: &str, code: Option<u32>) {
        let data = match code {
            Some(code) => json!({"message": message, "data": {"code": code}}),
            None => json!({"message": message}),
        };
        self.shared
            .send_packet(Packet::new(packet::CONNECT_ERROR, nsp, Some(data)));
    }

    async fn on_connect(&mut self, nsp: &str, auth: Option<Value>) -> Result<(), Disconnect> {
        if self.sockets.contains_key(nsp) {
            return Ok(());
        }
        let node = self.node.clone();
        let config = node.config();
        let Some(tidings_ns) = super::tidings_namespace(config, nsp) else {
            self.connect_error(nsp, "Invalid namespace", None);
            return Ok(());
        };
        let auth = auth.unwrap_or(Value::Null);
        let token = auth.get("token").and_then(Value::as_str).unwrap_or("");
        let cfg = &config.client;
        let claims = if token.is_empty() && node.connect_proxy_enabled() {
            // The whole `auth` object goes to the connect proxy as its `data`; the
            // backend also sees the handshake's forwarded headers (a cookie, say).
            let data = (!auth.is_null()).then(|| RawJson::from_value(&auth));
            let ev = ConnectEvent {
                data: data.as_ref(),
                ..Default::default()
            };
            match node
                .proxy_connect(&self.shared.conn, &self.proxy_ctx, ev)
                .await
            {
                Ok(Some(result)) => {
                    let mut claims = crate::auth::ConnectClaims {
                        sub: result.user,
                        info: result.info,
                        channels: result.channels,
                        meta: result.meta,
                        ..Default::default()
                    };
                    // Channel options of `subs` (info, data, override) do not
                    // apply to Socket.IO rooms; the channels are joined.
                    for channel in result.subs.into_keys() {
                        claims.channels.push(channel);
                    }
                    claims
                }
                Ok(None) if cfg.allow_anonymous_connect_without_token || cfg.insecure => {
                    crate::auth::ConnectClaims::default()
                }
                Ok(None) => {
                    self.connect_error(nsp, "unauthorized", Some(3501));
                    return Ok(());
                }
                Err(Rejection::Error(e)) => {
                    self.connect_error(nsp, &e.message, Some(e.code));
                    return Ok(());
                }
                Err(Rejection::Disconnect(d)) => {
                    self.connect_error(nsp, &d.reason, Some(d.code));
                    return Ok(());
                }
            }
        } else if !token.is_empty() {
            match node.auth().connection().verify_connect(token).await {
                Ok(claims) if claims.sub.is_empty() && cfg.disallow_anonymous_connection_tokens => {
                    self.connect_error(nsp, "permission denied", Some(3500));
                    return Ok(());
                }
                Ok(claims) => claims,
                Err(TokenError::Expired) => {
                    self.connect_error(nsp, "token expired", Some(109));
                    return Ok(());
                }
                Err(TokenError::Invalid) => {
                    self.connect_error(nsp, "invalid token", Some(3500));
                    return Ok(());
                }
            }
        } else if cfg.allow_anonymous_connect_without_token || cfg.insecure {
            crate::auth::ConnectClaims::default()
        } else {
            self.connect_error(nsp, "unauthorized: auth.token is required", Some(3501));
            return Ok(());
        };
        match &self.user {
            Some(user) if *user != claims.sub => {
                self.connect_error(nsp, "every namespace must be the same user", Some(3501));
                return Ok(());
            }
            Some(_) => {}
            None => {
                self.shared.conn.set_user(claims.sub.clone());
                if !node.register(&self.shared.conn) {
                    self.connect_error(nsp, "connection limit", Some(4503));
                    return Err(Disconnect::connection_limit());
                }
                node.user_tracked(&claims.sub).await;
                self.user = Some(claims.sub.clone());
                self.conn_info = claims.info.clone();
                self.proxy_ctx.meta = claims.meta.clone();
            }
        }
        self.sockets.insert(
            nsp.to_string(),
            Socket {
                tidings_ns: tidings_ns.clone(),
            },
        );

        // Rooms to join: the token's channels, the configured subscriptions, and the
        // rooms of a recovered session, each in this namespace only.
        let mut wanted: Vec<(String, Option<StreamPosition>)> = Vec::new();
        let in_ns = |c: &String| super::room_of(config, &tidings_ns, c).is_some();
        let personal = personal_channel(config, self.user());
        for c in claims
            .channels
            .iter()
            .chain(claims.subs.keys())
            .chain(config.socketio.subscriptions.iter())
            .chain(personal.iter())
        {
            if in_ns(c) && !wanted.iter().any(|(w, _)| w == c) {
                wanted.push((c.clone(), None));
            }
        }
        let recovery = config.socketio.connection_state_recovery;
        let pid = auth.get("pid").and_then(Value::as_str).filter(|p| {
            recovery
                && !p.is_empty()
                && p.len() <= 64
                && p.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        let offset = auth.get("offset").and_then(Value::as_str);
        let mut recovering = false;
        if let (Some(_), Some(offset)) = (pid, offset) {
            if let Some(entries) =
                transport::parse_offset(offset, config.client.channel_limit.max(1))
            {
                recovering = true;
                for (c, epoch, off) in entries {
                    // A forged offset gains nothing: every room is checked like a join.
                    if !in_ns(&c)
                        || channel::check_client_subscribe(config, &c, self.user()).is_err()
                    {
                        recovering = false;
                        continue;
                    }
                    // A room without history is joined again but not recovered.
                    let since = if epoch.is_empty() {
                        recovering = false;
                        None
                    } else {
                        Some(StreamPosition { offset: off, epoch })
                    };
                    match wanted.iter_mut().find(|(w, _)| *w == c) {
                        Some(w) => w.1 = since,
                        None => wanted.push((c, since)),
                    }
                }
            }
        }
        let mut live = Vec::new();
        let mut all_recovered = recovering;
        for (c, since) in wanted {
            let was_recovering = since.is_some();
            match self.join(&c, nsp, since).await {
                Ok(Some(joined)) => {
                    if was_recovering && !joined.recovered {
                        all_recovered = false;
                    }
                    live.push((c, joined));
                }
                Ok(None) => {}
                Err(e) => {
                    all_recovered = false;
                    tracing::warn!(channel = c, error = %e, "socket.io room join failed");
                }
            }
        }
        let mut reply = json!({"sid": self.shared.conn.client_id});
        if recovery {
            let pid = match pid {
                Some(p) if all_recovered => p.to_string(),
                _ => uuid::Uuid::new_v4().simple().to_string(),
            };
            reply["pid"] = Value::String(pid);
        }
        self.shared
            .send_packet(Packet::new(packet::CONNECT, nsp, Some(reply)));
        for (c, joined) in live {
            self.go_live(&c, joined).await;
        }
        if recovery {
            self.send_offset(nsp);
        }
        Ok(())
    }

    fn user(&self) -> &str {
        self.user.as_deref().unwrap_or("")
    }

    fn client_info(&self) -> ClientInfo {
        ClientInfo {
            user: self.user().to_string(),
            client: self.shared.conn.client_id.clone(),
            conn_info: self.conn_info.clone(),
            chan_info: None,
        }
    }

    /// Sends `tidings:offset` so that the client holds a position for every room.
    fn send_offset(&self, nsp: &str) {
        let offset = transport::offset_string(&self.shared.rooms.lock(), nsp);
        self.shared.send_packet(Packet::new(
            packet::EVENT,
            nsp,
            Some(json!(["tidings:offset", offset])),
        ));
    }

    /// Joins a channel for a namespace through the node's membership: hub, broker
    /// interest, position or recovery, presence. `Ok(None)` when the session was in
    /// the channel already (the namespace is added to it).
    async fn join(
        &mut self,
        channel_name: &str,
        nsp: &str,
        since: Option<StreamPosition>,
    ) -> Result<Option<Joined>, NodeError> {
        self.join_with_info(channel_name, nsp, since, None).await
    }

    /// [`Sio::join`] with this member's channel info (from the subscribe proxy).
    async fn join_with_info(
        &mut self,
        channel_name: &str,
        nsp: &str,
        since: Option<StreamPosition>,
        chan_info: Option<RawJson>,
    ) -> Result<Option<Joined>, NodeError> {
        let node = self.node.clone();
        let config = node.config();
        let ch = channel::resolve(config, channel_name)?;
        let tidings_ns = self
            .sockets
            .get(nsp)
            .map(|s| s.tidings_ns.clone())
            .unwrap_or_default();
        let room = super::room_of(config, &tidings_ns, channel_name)
            .unwrap_or(channel_name)
            .to_string();
        if self.subs.contains_key(channel_name) {
            let mut rooms = self.shared.rooms.lock();
            if let Some(r) = rooms.get_mut(channel_name) {
                if !r.nsps.iter().any(|n| n == nsp) {
                    r.nsps.push(nsp.to_string());
                }
            }
            return Ok(None);
        }
        let history = ch.history_enabled();
        let stream = match since.clone() {
            Some(since) if history => StreamAsk::Recover(since),
            _ if history => StreamAsk::Position,
            _ => StreamAsk::None,
        };
        let joined = node
            .join(
                &self.shared.conn,
                JoinRequest {
                    channel: channel_name.to_string(),
                    info: ClientInfo {
                        chan_info,
                        ..self.client_info()
                    },
                    presence: ch.options.presence,
                    join_leave: ch.options.join_leave,
                    push_join_leave: false,
                    stream,
                    encoder: &SOCKETIO_PUSHES,
                    shape: Default::default(),
                    reject_unrecovered: false,
                },
            )
            .await?;
        let (epoch, start_offset) = match &joined.position {
            // Offsets move forward as the missed publications are written.
            Some(position) => match since {
                Some(s) if joined.recovered => (position.epoch.clone(), s.offset),
                _ => (position.epoch.clone(), position.offset),
            },
            None => (String::new(), 0),
        };
        self.subs.insert(channel_name.to_string(), joined.member);
        self.shared.rooms.lock().insert(
            channel_name.to_string(),
            Room {
                room,
                nsps: vec![nsp.to_string()],
                epoch,
                offset: start_offset,
            },
        );
        Ok(Some(Joined {
            pending: joined.pending,
            missed: joined.publications,
            recovered: joined.recovered,
        }))
    }

    /// Writes what was missed, switches the subscriber to live delivery and sends
    /// the join message.
    async fn go_live(&self, channel_name: &str, joined: Joined) {
        for publication in &joined.missed {
            self.shared
                .conn
                .send(super::pushes::encode(channel_name, publication));
        }
        if let Some(member) = self.subs.get(channel_name) {
            self.node.go_live(member, joined.pending, None).await;
        }
    }

    /// Leaves a channel for one namespace, or for all when `nsp` is `None`.
    async fn leave(&mut self, channel_name: &str, nsp: Option<&str>) {
        {
            let mut rooms = self.shared.rooms.lock();
            let Some(room) = rooms.get_mut(channel_name) else {
                return;
            };
            if let Some(nsp) = nsp {
                room.nsps.retain(|n| n != nsp);
                if !room.nsps.is_empty() {
                    return;
                }
            }
            rooms.remove(channel_name);
        }
        if let Some(member) = self.subs.remove(channel_name) {
            self.node.leave(member).await;
        }
    }

    async fn on_namespace_disconnect(&mut self, nsp: &str) {
        if self.sockets.remove(nsp).is_none() {
            return;
        }
        let channels: Vec<String> = self
            .shared
            .rooms
            .lock()
            .iter()
            .filter(|(_, r)| r.nsps.iter().any(|n| n == nsp))
            .map(|(c, _)| c.clone())
            .collect();
        for c in channels {
            self.leave(&c, Some(nsp)).await;
        }
    }

    /// The room argument of the tidings events, as a channel of this namespace.
    fn room_channel(&self, nsp: &str, arg: Option<&Value>) -> Result<(String, String), String> {
        let room = arg
            .and_then(|a| a.get("room"))
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| "a room is required: {room: \"name\"}".to_string())?;
        let tidings_ns = &self.sockets.get(nsp).ok_or("not connected")?.tidings_ns;
        let config = self.node.config();
        let channel_name = super::channel_of(config, tidings_ns, room);
        // The room must stay inside the namespace (no boundary tricks).
        if super::room_of(config, tidings_ns, &channel_name) != Some(room) {
            return Err(err_text(codes::ERROR_BAD_REQUEST));
        }
        Ok((room.to_string(), channel_name))
    }

    fn in_room(&self, nsp: &str, channel_name: &str) -> bool {
        self.shared
            .rooms
            .lock()
            .get(channel_name)
            .is_some_and(|r| r.nsps.iter().any(|n| n == nsp))
    }

    /// Runs a `tidings:*` event and returns its ack value.
    async fn on_event(&mut self, nsp: &str, args: Vec<Value>) -> Value {
        let name = args.first().and_then(Value::as_str).unwrap_or("");
        let arg = args.get(1);
        let kind = match name {
            "tidings:join" => "join",
            "tidings:leave" => "leave",
            "tidings:publish" => "publish",
            "tidings:presence" => "presence",
            _ => "unknown",
        };
        self.node.metrics().socketio_event(kind);
        let result = match kind {
            "join" => self.event_join(nsp, arg).await,
            "leave" => self.event_leave(nsp, arg).await,
            "publish" => self.event_publish(nsp, arg).await,
            "presence" => self.event_presence(nsp, arg).await,
            _ => Err(format!("unknown event {name:?}")),
        };
        match result {
            Ok(Value::Object(mut map)) => {
                map.insert("ok".into(), Value::Bool(true));
                Value::Object(map)
            }
            Ok(_) => json!({"ok": true}),
            Err(error) => json!({"ok": false, "error": error}),
        }
    }

    async fn event_join(&mut self, nsp: &str, arg: Option<&Value>) -> Result<Value, String> {
        let (room, channel_name) = self.room_channel(nsp, arg)?;
        if self.in_room(nsp, &channel_name) {
            return Ok(json!({"room": room}));
        }
        let config = self.node.config();
        let by_proxy = channel::resolve(config, &channel_name).is_ok_and(|ch| {
            ch.options.subscribe_proxy_enabled
                && !ch.is_private()
                && !(ch.options.allow_user_limited_channels
                    && channel_name.contains(config.channel.user_boundary.as_str()))
        });
        let mut reply = json!({"room": room});
        let mut chan_info = None;
        if by_proxy {
            // The subscribe proxy alone decides, as for a Centrifugo client; its
            // `data` comes back in the ack.
            let node = self.node.clone();
            let data = arg.and_then(|a| a.get("data")).map(RawJson::from_value);
            match node
                .proxy_subscribe(
                    &self.shared.conn,
                    &self.proxy_ctx,
                    &channel_name,
                    data.as_ref(),
                )
                .await
            {
                Ok(r) => {
                    chan_info = r.info;
                    if let Some(data) = r.data {
                        reply["data"] = serde_json::from_str(data.as_str()).unwrap_or(Value::Null);
                    }
                }
                Err(Rejection::Error(e)) => return Err(e.message),
                Err(Rejection::Disconnect(d)) => return Err(d.reason),
            }
        } else {
            channel::check_client_subscribe(config, &channel_name, self.user())
                .map_err(err_text)?;
        }
        match self
            .join_with_info(&channel_name, nsp, None, chan_info)
            .await
        {
            Ok(Some(joined)) => self.go_live(&channel_name, joined).await,
            Ok(None) => {}
            Err(e) => return Err(e.to_protocol().message),
        }
        if self.shared.recovery {
            self.send_offset(nsp);
        }
        Ok(reply)
    }

    async fn event_leave(&mut self, nsp: &str, arg: Option<&Value>) -> Result<Value, String> {
        let (room, channel_name) = self.room_channel(nsp, arg)?;
        self.leave(&channel_name, Some(nsp)).await;
        Ok(json!({"room": room}))
    }

    async fn event_publish(&mut self, nsp: &str, arg: Option<&Value>) -> Result<Value, String> {
        let (_, channel_name) = self.room_channel(nsp, arg)?;
        let arg = arg.ok_or("missing argument")?;
        let event = arg
            .get("event")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
            .ok_or("an event name is required: {room, event, args}")?;
        let args = match arg.get("args") {
            None => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err("args must be an array".into()),
        };
        let node = self.node.clone();
        let config = node.config();
        let ch = channel::resolve(config, &channel_name).map_err(err_text)?;
        let data = RawJson::from_value(&json!({"event": event, "args": args}));
        let mut req = PublishRequest {
            info: Some(self.client_info()),
            ..PublishRequest::new(channel_name.clone(), data)
        };
        if ch.options.publish_proxy_enabled {
            // The publish proxy decides and may rewrite `{event, args}`.
            let r = node
                .proxy_publish(&self.shared.conn, &self.proxy_ctx, &channel_name, &req.data)
                .await
                .map_err(|r| match r {
                    Rejection::Error(e) => e.message,
                    Rejection::Disconnect(d) => d.reason,
                })?;
            if let Some(data) = r.data {
                req.data = data;
            }
            req.skip_history = r.skip_history;
            req.tags = r.tags;
            req.idempotency_key = Some(r.idempotency_key).filter(|k| !k.is_empty());
        } else if !config.client.insecure
            && !channel::can_publish(ch.options, self.user(), self.in_room(nsp, &channel_name))
        {
            return Err(err_text(codes::ERROR_PERMISSION_DENIED));
        }
        let position = self
            .node
            .publish_from_client(&self.shared.conn, event, req)
            .await
            .map_err(|e| e.to_protocol().message)?;
        Ok(json!({"offset": position.offset}))
    }

    async fn event_presence(&mut self, nsp: &str, arg: Option<&Value>) -> Result<Value, String> {
        let (room, channel_name) = self.room_channel(nsp, arg)?;
        let config = self.node.config();
        let ch = channel::resolve(config, &channel_name).map_err(err_text)?;
        if !ch.options.presence {
            return Err(err_text(codes::ERROR_NOT_AVAILABLE));
        }
        if !config.client.insecure
            && !channel::can_presence(ch.options, self.user(), self.in_room(nsp, &channel_name))
        {
            return Err(err_text(codes::ERROR_PERMISSION_DENIED));
        }
        let members = self
            .node
            .presence(&channel_name)
            .await
            .map_err(|e| e.to_protocol().message)?;
        let mut list: Vec<&ClientInfo> = members.values().collect();
        list.sort_by(|a, b| a.client.cmp(&b.client));
        Ok(json!({"room": room, "members": list}))
    }

    async fn handle_control(&mut self, ctrl: Control) -> Result<(), Disconnect> {
        match ctrl {
            Control::Disconnect(d) => Err(d),
            // Socket.IO sockets do not expire; only an explicit end applies.
            Control::Refresh(r) if r.expired => Err(Disconnect::expired()),
            Control::Refresh(_) => Ok(()),
            // This node missed part of a room's stream. Socket.IO has no
            // resubscribe, so the connection is closed with a reconnect: the client
            // comes back with its connection-state-recovery offsets and gets what it
            // missed from history (or `recovered: false`), never a silent gap.
            Control::Insufficient { channel } => {
                if self.subs.contains_key(&channel) {
                    return Err(Disconnect::insufficient_state());
                }
                Ok(())
            }
            Control::Unsubscribe { channel } => {
                self.leave(&channel, None).await;
                Ok(())
            }
            Control::Subscribe(req) => {
                let ServerSubscribe { channel, .. } = *req;
                let config = self.node.config();
                let nsp = self
                    .sockets
                    .iter()
                    .find(|(_, s)| super::room_of(config, &s.tidings_ns, &channel).is_some())
                    .map(|(n, _)| n.clone());
                let Some(nsp) = nsp else { return Ok(()) };
                match self.join(&channel, &nsp, None).await {
                    Ok(Some(joined)) => {
                        self.go_live(&channel, joined).await;
                        if self.shared.recovery {
                            self.send_offset(&nsp);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(channel, error = %e, "server API subscribe failed"),
                }
                Ok(())
            }
        }
    }

    /// A server-side disconnect that asks the client not to come back also ends
    /// every namespace (DISCONNECT), so socket.io-client does not reconnect.
    fn disconnect_all(&self, d: &Disconnect) {
        if d.reconnect {
            return;
        }
        for nsp in self.sockets.keys() {
            self.shared
                .send_packet(Packet::new(packet::DISCONNECT, nsp, None));
        }
    }

    async fn cleanup(&mut self) {
        self.shared
            .conn
            .outbox
            .close_dropping_queued(Disconnect::connection_closed());
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for c in channels {
            self.leave(&c, None).await;
        }
        if self.user.is_some() {
            self.node.unregister(&self.shared.conn);
        }
        let metrics = self.node.metrics();
        metrics.connections.decrement(1.0);
        metrics.socketio_sessions().decrement(1.0);
        let code = self
            .shared
            .conn
            .outbox
            .closed_with()
            .map_or(3000, |d| d.code);
        metrics.disconnect(code);
    }
}

/// The user's personal channel when `client.subscribe_to_user_personal_channel` is
/// on (joined like the token's channels when it falls in the namespace).
fn personal_channel(config: &crate::Config, user: &str) -> Option<String> {
    let personal = &config.client.subscribe_to_user_personal_channel;
    if !personal.enabled || user.is_empty() {
        return None;
    }
    Some(if personal.personal_channel_namespace.is_empty() {
        format!("{}{user}", config.channel.user_boundary)
    } else {
        format!(
            "{}{}{}{user}",
            personal.personal_channel_namespace,
            config.channel.namespace_boundary,
            config.channel.user_boundary
        )
    })
}

fn malformed() -> Disconnect {
    Disconnect::new(3503, "malformed packet")
}
