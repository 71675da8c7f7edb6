//! The Engine.IO endpoint: handshake, long polling (GET to receive, POST to send),
//! WebSocket (direct, or the upgrade from polling with `2probe`/`3probe`/`5`), the
//! session registry, and the writer side that turns outbox items into frames.
//!
//! A sid is `<node tag><random>`: the first [`TAG_LEN`] characters name the node that
//! holds the session, so a polling request that lands on another node can be routed
//! there (see [`forward_poll`]) without sticky sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::transport::ws::{self, Message, WsReader, WsUpgrade, WsWriter};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine as _;
use bytes::Bytes;
use parking_lot::Mutex;
use tidings_protocol::Disconnect;
use tokio::sync::{mpsc, watch};

use super::engine::{self, ClientPacket, Frame, Handshake, RequestError};
use super::packet::Packet;
use super::pushes;
use crate::connection::Connection;
use crate::limit::ConnectionPermit;
use crate::node::Node;
use crate::outbox::Drained;

/// Characters of a sid that name the node holding it.
pub const TAG_LEN: usize = 12;

/// Engine.IO packets one session may have waiting for its task. A POST waits for
/// room (one POST at a time per session), so a fast client is slowed, not buffered.
const INBOUND_QUEUE: usize = 64;

/// The disconnect code used when the client itself closed: the pending poll gets a
/// `noop` rather than a `close` packet, as Engine.IO servers do.
const CLIENT_CLOSED: u32 = 3000;

/// Which transport carries the session now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// HTTP long polling.
    Polling,
    /// A WebSocket answered `3probe`: polls get `noop` until the client sends `5`.
    Probing,
    /// Upgraded from polling, or opened as WebSocket: polling requests are refused.
    WebSocket,
}

/// What the transports hand the session task.
#[derive(Debug)]
pub enum Inbound {
    Packet(ClientPacket),
    /// The transport went away or the client broke the protocol: close with this.
    Gone(Disconnect),
}

/// A room one session is in: which Socket.IO namespaces joined it and the last
/// position written to the client (for the recovery offset).
#[derive(Debug, Clone, Default)]
pub struct Room {
    pub room: String,
    pub nsps: Vec<String>,
    pub epoch: String,
    pub offset: u64,
}

/// What the transports and the session task share for one Engine.IO session.
pub struct Shared {
    pub sid: String,
    pub conn: Arc<Connection>,
    pub inbound: mpsc::Sender<Inbound>,
    pub phase: watch::Sender<Phase>,
    /// A GET poll is in progress.
    polling: AtomicBool,
    /// A POST is in progress.
    posting: AtomicBool,
    /// Channel → room state, read by the writer to turn publications into events.
    pub rooms: Mutex<HashMap<String, Room>>,
    /// Add the recovery offset as the last argument of room events.
    pub recovery: bool,
}

impl Shared {
    /// Closes the session: the outbox stops, the task ends and cleans up.
    pub fn close(&self, d: Disconnect) {
        self.conn.outbox.close_dropping_queued(d);
    }

    fn is_closed(&self) -> bool {
        self.conn.outbox.closed_token().is_cancelled()
    }

    /// Queues a text Engine.IO packet.
    pub fn send_text(&self, packet: &str) -> bool {
        let mut item = Vec::with_capacity(packet.len() + 1);
        item.push(b'T');
        item.extend_from_slice(packet.as_bytes());
        self.conn.send(Bytes::from(item))
    }

    /// Queues a Socket.IO packet (a `4` message and its binary attachments).
    pub fn send_packet(&self, packet: Packet) -> bool {
        let (text, attachments) = packet.encode();
        let mut ok = self.send_text(&format!("4{text}"));
        for bytes in attachments {
            let mut item = Vec::with_capacity(bytes.len() + 1);
            item.push(b'B');
            item.extend_from_slice(&bytes);
            ok &= self.conn.send(Bytes::from(item));
        }
        ok
    }
}

/// A polling request for a session held by another node, as it travels between
/// nodes. Engine.IO v4 polling bodies are text; the body still travels as base64 so
/// that the owning node is the one that judges (and refuses) a bad one.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ForwardedPoll {
    pub sid: String,
    /// `true` for a POST (packets from the client), `false` for a GET (a poll).
    pub post: bool,
    /// The POST body, base64; empty for a GET.
    #[serde(default)]
    pub body: String,
}

/// The owning node's answer, returned to the client as it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ForwardedReply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// Sends a [`ForwardedPoll`] to the node whose tag (the sid's first [`TAG_LEN`]
/// characters) is given and returns its reply; `None` when that node cannot be
/// reached. A GET can take up to `socketio.ping_interval` to be answered.
pub type PollForwarder = Arc<
    dyn Fn(
            String,
            ForwardedPoll,
        ) -> futures_util::future::BoxFuture<'static, Option<ForwardedReply>>
        + Send
        + Sync,
>;

/// The Engine.IO sessions of one node, by sid (kept by the node as front-door
/// state, see [`registry`]).
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<Shared>>>,
    // A plain lock: read once per forwarded request, written at start-up.
    forwarder: parking_lot::RwLock<Option<PollForwarder>>,
}

impl Registry {
    /// Installs the node-to-node route for polls whose sid names another node,
    /// replacing the cluster's request/reply that [`router`] installs.
    pub fn set_forwarder(&self, forwarder: PollForwarder) {
        *self.forwarder.write() = Some(forwarder);
    }

    /// Installs `forwarder` unless one is installed already.
    fn default_forwarder(&self, forwarder: impl FnOnce() -> PollForwarder) {
        let mut slot = self.forwarder.write();
        if slot.is_none() {
            *slot = Some(forwarder());
        }
    }

    /// An open session; a closing one counts as gone.
    pub fn get(&self, sid: &str) -> Option<Arc<Shared>> {
        self.sessions
            .lock()
            .get(sid)
            .filter(|s| !s.is_closed())
            .cloned()
    }

    pub(crate) fn insert(&self, shared: Arc<Shared>) {
        self.sessions.lock().insert(shared.sid.clone(), shared);
    }

    pub(crate) fn remove(&self, sid: &str) {
        self.sessions.lock().remove(sid);
    }

    /// Number of Engine.IO sessions on this node.
    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The node's Socket.IO sessions (and where to install a [`PollForwarder`]).
pub fn registry(node: &Node) -> Arc<Registry> {
    node.front_door_state::<Registry>()
}

/// The kind of the node-to-node request that carries a forwarded poll.
const FORWARDED_POLL: &str = "socketio.poll";

/// Socket.IO polling without sticky sessions: the forwarder a node's registry uses
/// for a sid whose tag names another node. The tag is matched against the nodes
/// heard from recently; the request goes there through the cluster's request/reply
/// and the answer comes back as it is. `None` (the client gets "Session ID
/// unknown" and starts a new session) when no live node has that tag or it does
/// not answer.
fn cluster_forwarder(node: &Node) -> PollForwarder {
    // Weak: the registry lives in the node, and must not keep it alive.
    let node = node.downgrade();
    Arc::new(move |tag, poll| {
        let node = node.clone();
        Box::pin(async move {
            let node = node.upgrade()?;
            let uid = node
                .nodes()
                .into_iter()
                .map(|info| info.uid)
                .filter(|uid| uid != node.uid())
                .find(|uid| tag_of(uid) == tag)?;
            // A GET is held up to the ping interval before the owner answers it.
            let wait = node.config().socketio.ping_interval + std::time::Duration::from_secs(5);
            node.ask_node(&uid, FORWARDED_POLL, &poll, wait).await.ok()
        })
    })
}

/// The sid prefix of the node with this uid.
fn tag_of(uid: &str) -> String {
    uid.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(TAG_LEN)
        .collect()
}

/// This node's sid prefix.
pub fn node_tag(node: &Node) -> String {
    node.uid()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(TAG_LEN)
        .collect()
}

fn new_sid(node: &Node) -> String {
    format!("{}{}", node_tag(node), uuid::Uuid::new_v4().simple())
}

/// The Socket.IO routes, with CORS for allowed origins. Mounting them also lets
/// this node answer the polls other nodes forward to it, and forward its own.
pub fn router(node: &Node) -> Router<Node> {
    registry(node).default_forwarder(|| cluster_forwarder(node));
    node.serve_requests(
        FORWARDED_POLL,
        Arc::new(|node, body| {
            Box::pin(async move {
                let reply = match serde_json::from_value::<ForwardedPoll>(body) {
                    Ok(poll) => serve_forwarded(&node, poll).await,
                    Err(_) => ForwardedReply {
                        status: 400,
                        content_type: "text/plain; charset=UTF-8".into(),
                        body: "bad forwarded poll".into(),
                    },
                };
                serde_json::to_value(reply).unwrap_or_default()
            })
        }),
    );
    let cfg = node.config();
    let path = cfg.socketio.path.clone();
    let mut app = Router::new().route(&path, any(endpoint));
    let trimmed = path.trim_end_matches('/');
    if !trimmed.is_empty() && trimmed != path {
        app = app.route(trimmed, any(endpoint));
    }
    let config = node.config_arc();
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::predicate(
            move |origin, _| {
                origin
                    .to_str()
                    .is_ok_and(|o| crate::origin::matches_allowed(&config, o))
            },
        ))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE]);
    app.layer(cors)
}

#[derive(Debug, Default, serde::Deserialize)]
struct Query {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

async fn endpoint(State(node): State<Node>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let query: Query = parts
        .uri
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    if query.eio.as_deref() != Some("4") {
        return RequestError::UnsupportedProtocolVersion.into_response();
    }
    let websocket = match query.transport.as_deref() {
        Some("polling") => false,
        Some("websocket") => true,
        _ => return RequestError::UnknownTransport.into_response(),
    };
    if !crate::origin::allowed(node.config(), &parts.headers) {
        return RequestError::Forbidden.into_response();
    }
    let registry = registry(&node);
    if websocket {
        if parts.method != Method::GET {
            return RequestError::BadHandshakeMethod.into_response();
        }
        let ws = match WsUpgrade::from_request_parts(&mut parts, &node).await {
            Ok(ws) => ws,
            Err(refused) => return refused.into_response(),
        };
        return match query.sid {
            None => {
                let kept = node.proxy_request_headers(&parts.headers);
                open_websocket(node, ws, kept)
            }
            Some(sid) => match registry.get(&sid) {
                Some(shared) if *shared.phase.borrow() == Phase::Polling => {
                    upgrade_websocket(node, shared, ws)
                }
                Some(_) => RequestError::BadRequest.into_response(),
                // A WebSocket upgrade cannot be forwarded; the client stays on
                // polling, which can.
                None => RequestError::UnknownSid.into_response(),
            },
        };
    }
    let Some(sid) = query.sid else {
        if parts.method != Method::GET {
            return RequestError::BadHandshakeMethod.into_response();
        }
        let kept = node.proxy_request_headers(&parts.headers);
        return open_polling(node, kept);
    };
    let binary = parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .eq_ignore_ascii_case(b"application/octet-stream")
    });
    if parts.method == Method::POST && binary {
        // Engine.IO v4 polling carries binary as base64 text; a raw binary body is
        // refused and ends the session (when it is here), as the reference does.
        if let Some(shared) = registry.get(&sid) {
            shared.close(Disconnect::new(3503, "binary polling body"));
        }
        return RequestError::BadRequest.into_response();
    }
    match registry.get(&sid) {
        Some(shared) => serve_poll(&node, shared, parts.method, body).await,
        None => {
            if sid.len() > TAG_LEN && !sid.starts_with(&node_tag(&node)) {
                if let Some(response) = forward_poll(&node, &sid, &parts, body).await {
                    return response;
                }
            }
            RequestError::UnknownSid.into_response()
        }
    }
}

/// Polling without sticky sessions: a request whose sid names another node is sent
/// to that node through the registry's [`PollForwarder`], which answers it with
/// [`serve_forwarded`], and its answer is returned as it is. Without a forwarder, or
/// when the node cannot be reached, `None`: the client gets 400 "Session ID unknown"
/// and opens a new session, as with any lost session.
pub async fn forward_poll(
    node: &Node,
    sid: &str,
    parts: &axum::http::request::Parts,
    body: axum::body::Body,
) -> Option<Response> {
    let forwarder = registry(node).forwarder.read().clone()?;
    let post = match parts.method {
        Method::GET => false,
        Method::POST => true,
        _ => return Some(RequestError::BadRequest.into_response()),
    };
    let body = if post {
        let max = node.config().socketio.max_payload;
        match axum::body::to_bytes(body, max).await {
            Ok(bytes) => base64::engine::general_purpose::STANDARD.encode(bytes),
            Err(_) => {
                return Some((StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large").into_response())
            }
        }
    } else {
        String::new()
    };
    let tag = sid.get(..TAG_LEN)?.to_string();
    let request = ForwardedPoll {
        sid: sid.to_string(),
        post,
        body,
    };
    let reply = forwarder(tag, request).await?;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    Some(
        (
            status,
            [(header::CONTENT_TYPE, reply.content_type)],
            reply.body,
        )
            .into_response(),
    )
}

/// Answers a poll forwarded by another node, for a session this node holds.
pub async fn serve_forwarded(node: &Node, request: ForwardedPoll) -> ForwardedReply {
    let response = match registry(node).get(&request.sid) {
        None => RequestError::UnknownSid.into_response(),
        Some(shared) => {
            let (method, body) = if request.post {
                match base64::engine::general_purpose::STANDARD.decode(&request.body) {
                    Ok(bytes) => (Method::POST, axum::body::Body::from(bytes)),
                    Err(_) => (Method::PUT, axum::body::Body::empty()),
                }
            } else {
                (Method::GET, axum::body::Body::empty())
            };
            serve_poll(node, shared, method, body).await
        }
    };
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain; charset=UTF-8")
        .to_string();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    ForwardedReply {
        status,
        content_type,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Answers a polling GET or POST for a session held by this node. Public for the
/// node that receives a forwarded request.
pub async fn serve_poll(
    node: &Node,
    shared: Arc<Shared>,
    method: Method,
    body: axum::body::Body,
) -> Response {
    match method {
        Method::GET => poll(shared).await,
        Method::POST => post(node, shared, body).await,
        _ => RequestError::BadRequest.into_response(),
    }
}

fn handshake(node: &Node, sid: &str, upgrades: &[&str]) -> String {
    let cfg = &node.config().socketio;
    Handshake {
        sid,
        upgrades,
        ping_interval: cfg.ping_interval.as_millis() as u64,
        ping_timeout: cfg.ping_timeout.as_millis() as u64,
        max_payload: cfg.max_payload,
    }
    .packet()
}

/// Creates a session and starts its task.
/// `kept`: the handshake request's headers a backend proxy forwards.
fn start(
    node: &Node,
    phase: Phase,
    permit: ConnectionPermit,
    kept: Option<crate::proxy::RequestHeaders>,
) -> Arc<Shared> {
    let (conn, control) = Connection::new("socketio", node.config().client.queue_max_size);
    if let Some(kept) = kept {
        conn.set_request_headers(kept);
    }
    let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let (phase, _) = watch::channel(phase);
    let shared = Arc::new(Shared {
        sid: new_sid(node),
        conn,
        inbound,
        phase,
        polling: AtomicBool::new(false),
        posting: AtomicBool::new(false),
        rooms: Mutex::new(HashMap::new()),
        recovery: node.config().socketio.connection_state_recovery,
    });
    registry(node).insert(shared.clone());
    let task_node = node.clone();
    let task_shared = shared.clone();
    node.spawn_connection(async move {
        let _permit = permit;
        super::session::run(task_node.clone(), task_shared.clone(), inbound_rx, control).await;
        registry(&task_node).remove(&task_shared.sid);
    });
    shared
}

fn admit(node: &Node) -> Result<ConnectionPermit, Box<Response>> {
    if node.is_shutting_down() {
        return Err(Box::new(
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response(),
        ));
    }
    node.try_admit()
        .map_err(|refused| Box::new(refused.into_response()))
}

fn text_response(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        body,
    )
        .into_response()
}

fn open_polling(node: Node, kept: Option<crate::proxy::RequestHeaders>) -> Response {
    let permit = match admit(&node) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let shared = start(&node, Phase::Polling, permit, kept);
    text_response(handshake(&node, &shared.sid, &["websocket"]))
}

/// Clears the poll flag when a GET ends; a GET that is dropped before it answered
/// (the client went away) closes the session, as Engine.IO servers do.
struct PollGuard {
    shared: Arc<Shared>,
    answered: bool,
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        self.shared.polling.store(false, Ordering::Release);
        if !self.answered {
            self.shared
                .close(Disconnect::new(CLIENT_CLOSED, "poll cancelled"));
        }
    }
}

async fn poll(shared: Arc<Shared>) -> Response {
    let mut phase = shared.phase.subscribe();
    match *phase.borrow_and_update() {
        Phase::WebSocket => return RequestError::BadRequest.into_response(),
        Phase::Probing => return text_response("6".into()),
        Phase::Polling => {}
    }
    if shared.polling.swap(true, Ordering::AcqRel) {
        // A second poll while one is pending: the protocol allows one at a time.
        shared.close(Disconnect::new(3501, "overlapping polls"));
        return RequestError::BadRequest.into_response();
    }
    let mut guard = PollGuard {
        shared: shared.clone(),
        answered: false,
    };
    loop {
        tokio::select! {
            drained = shared.conn.outbox.drain() => {
                let mut frames = Vec::new();
                let closing = match drained {
                    Drained::Batch(items) => {
                        render_all(&shared, &items, &mut frames);
                        None
                    }
                    Drained::Close(items, d) => {
                        render_all(&shared, &items, &mut frames);
                        Some(d)
                    }
                };
                if let Some(d) = closing {
                    let last = if d.code == CLIENT_CLOSED { "6" } else { "1" };
                    frames.push(Frame::Text(last.into()));
                }
                if frames.is_empty() {
                    continue;
                }
                guard.answered = true;
                return text_response(engine::encode_payload(&frames));
            }
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow_and_update() != Phase::Polling {
                    guard.answered = true;
                    return text_response("6".into());
                }
            }
        }
    }
}

async fn post(node: &Node, shared: Arc<Shared>, body: axum::body::Body) -> Response {
    if *shared.phase.borrow() == Phase::WebSocket {
        return RequestError::BadRequest.into_response();
    }
    if shared.posting.swap(true, Ordering::AcqRel) {
        shared.close(Disconnect::new(3501, "overlapping posts"));
        return RequestError::BadRequest.into_response();
    }
    let response = post_inner(node, &shared, body).await;
    shared.posting.store(false, Ordering::Release);
    response
}

async fn post_inner(node: &Node, shared: &Shared, body: axum::body::Body) -> Response {
    let max = node.config().socketio.max_payload;
    let bytes = match axum::body::to_bytes(body, max).await {
        Ok(bytes) => bytes,
        Err(e) if crate::request_body::cut_of(&e).is_some() => {
            // Cut at the body deadline or the connection limit (the client gets
            // 408 or 503): this session's transport has failed, as the reference
            // server closes it on a POST that ends early.
            shared.close(Disconnect::connection_closed());
            return RequestError::BadRequest.into_response();
        }
        Err(_) => {
            shared.close(Disconnect::new(3502, "payload too large"));
            return (StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large").into_response();
        }
    };
    let packets = std::str::from_utf8(&bytes)
        .map_err(|_| engine::Malformed)
        .and_then(engine::decode_payload);
    let Ok(packets) = packets else {
        shared.close(Disconnect::new(3503, "malformed packet"));
        return RequestError::BadRequest.into_response();
    };
    for packet in packets {
        if shared.inbound.send(Inbound::Packet(packet)).await.is_err() {
            return RequestError::UnknownSid.into_response();
        }
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/html")], "ok").into_response()
}

/// The Socket.IO door's WebSocket settings: `socketio.max_payload` bounds a message
/// on the wire and inflated; compression follows the `websocket` section.
fn configure(node: &Node, ws: WsUpgrade) -> WsUpgrade {
    let max = node.config().socketio.max_payload;
    let (limits, deflate) = crate::transport::websocket::endpoint_settings(node, false);
    ws.limits(ws::Limits {
        message: max,
        decompressed: max,
        read_chunk: limits.read_chunk,
    })
    .deflate(deflate.as_ref())
}

fn open_websocket(
    node: Node,
    ws: WsUpgrade,
    kept: Option<crate::proxy::RequestHeaders>,
) -> Response {
    let permit = match admit(&node) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    configure(&node, ws).on_upgrade(move |socket| async move {
        let shared = start(&node, Phase::WebSocket, permit, kept);
        shared.send_text(&handshake(&node, &shared.sid, &[]));
        let (reader, writer) = socket.split();
        pump(node, shared, reader, writer).await;
    })
}

fn upgrade_websocket(node: Node, shared: Arc<Shared>, ws: WsUpgrade) -> Response {
    configure(&node, ws).on_upgrade(move |socket| async move {
        let wait = node.config().socketio.ping_timeout;
        let (mut reader, writer) = socket.split();
        // 2probe → 3probe; polls get noop from here; 5 completes the upgrade.
        let probed = matches!(
            tokio::time::timeout(wait, reader.next()).await,
            Ok(Some(Ok(Message::Text(t)))) if t == "2probe"
        );
        let probe_reply = [Bytes::from_static(b"3probe")];
        if !probed || writer.send_joined(true, &probe_reply, None).await.is_err() {
            return;
        }
        shared.phase.send_replace(Phase::Probing);
        let upgraded = matches!(
            tokio::time::timeout(wait, reader.next()).await,
            Ok(Some(Ok(Message::Text(t)))) if t == "5"
        );
        if !upgraded || shared.is_closed() {
            shared.phase.send_replace(Phase::Polling);
            return;
        }
        shared.phase.send_replace(Phase::WebSocket);
        pump(node, shared, reader, writer).await;
    })
}

/// Runs a WebSocket as the session's transport until either side ends it.
async fn pump(node: Node, shared: Arc<Shared>, mut stream: WsReader, sink: WsWriter) {
    let write_timeout = node.config().websocket.write_timeout;
    let writer_shared = shared.clone();
    let reader_sink = sink.clone();
    let writer = tokio::spawn(async move {
        loop {
            let mut frames = Vec::new();
            let close = match writer_shared.conn.outbox.drain().await {
                Drained::Batch(items) => {
                    render_all(&writer_shared, &items, &mut frames);
                    None
                }
                Drained::Close(items, d) => {
                    render_all(&writer_shared, &items, &mut frames);
                    Some(d)
                }
            };
            for frame in frames {
                let sent = match frame {
                    Frame::Text(t) => {
                        let item = [Bytes::from(t)];
                        tokio::time::timeout(write_timeout, sink.send_joined(true, &item, None))
                            .await
                    }
                    Frame::Binary(b) => {
                        let item = [b];
                        tokio::time::timeout(write_timeout, sink.send_joined(false, &item, None))
                            .await
                    }
                };
                if !matches!(sent, Ok(Ok(()))) {
                    writer_shared.close(Disconnect::write_error());
                    return;
                }
            }
            if let Some(d) = close {
                let _ =
                    tokio::time::timeout(write_timeout, sink.close(ws::CLOSE_NORMAL, &d.reason))
                        .await;
                return;
            }
        }
    });
    let closed = shared.conn.outbox.closed_token().clone();
    loop {
        let msg = tokio::select! {
            _ = closed.cancelled() => break,
            msg = stream.next() => msg,
        };
        let inbound = match msg {
            Some(Ok(Message::Text(text))) => match engine::decode_text(&text) {
                Ok(packet) => Inbound::Packet(packet),
                Err(_) => Inbound::Gone(Disconnect::new(3503, "malformed packet")),
            },
            Some(Ok(Message::Binary(bytes))) => Inbound::Packet(ClientPacket::Binary(bytes)),
            Some(Err(e)) if e.close_code().is_some() => {
                // A broken WebSocket rule: the close frame says which.
                let code = e.close_code().unwrap_or(ws::CLOSE_PROTOCOL_ERROR);
                let _ = tokio::time::timeout(write_timeout, reader_sink.close(code, "")).await;
                Inbound::Gone(Disconnect::new(3503, "transport error"))
            }
            Some(Err(_)) | None => Inbound::Gone(Disconnect::new(CLIENT_CLOSED, "transport close")),
        };
        let gone = matches!(inbound, Inbound::Gone(_));
        if shared.inbound.send(inbound).await.is_err() || gone {
            break;
        }
    }
    let _ = writer.await;
}

fn render_all(shared: &Shared, items: &[Bytes], out: &mut Vec<Frame>) {
    for item in items {
        render(shared, item, out);
    }
}

/// Turns one outbox item into frames: our own tagged packets as they are, and the
/// hub's publications (encoded once for every Socket.IO subscriber, see
/// [`pushes`]) into an event for every namespace that joined the channel,
/// skipping the session's own publications, as `socket.to(room)` does.
pub fn render(shared: &Shared, item: &Bytes, out: &mut Vec<Frame>) {
    match item.first() {
        Some(b'T') => {
            if let Ok(text) = std::str::from_utf8(&item[1..]) {
                out.push(Frame::Text(text.to_string()));
            }
        }
        Some(b'B') => out.push(Frame::Binary(item.slice(1..))),
        Some(&pushes::TAG) => render_publication(shared, item, out),
        _ => {}
    }
}

fn render_publication(shared: &Shared, item: &Bytes, out: &mut Vec<Frame>) {
    let Some(encoded) = pushes::decode(item) else {
        return;
    };
    let mut rooms = shared.rooms.lock();
    let Some(room) = rooms.get_mut(encoded.channel) else {
        return;
    };
    room.offset = room.offset.max(encoded.offset);
    if encoded.client == shared.conn.client_id {
        return;
    }
    let nsps = room.nsps.clone();
    for nsp in nsps {
        let offset = shared.recovery.then(|| offset_string(&rooms, &nsp));
        pushes::render_event(&encoded, &nsp, offset.as_deref(), out);
    }
}

/// The recovery offset of a namespace: every room it is in, with its epoch and last
/// offset, as base64url JSON `[[channel, epoch, offset], ...]`. A room without
/// history has an empty epoch: it is joined again on recovery but cannot be
/// recovered.
pub fn offset_string(rooms: &HashMap<String, Room>, nsp: &str) -> String {
    let mut entries: Vec<(&str, &str, u64)> = rooms
        .iter()
        .filter(|(_, r)| r.nsps.iter().any(|n| n == nsp))
        .map(|(c, r)| (c.as_str(), r.epoch.as_str(), r.offset))
        .collect();
    entries.sort_unstable();
    let json = serde_json::to_vec(&entries).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// Decodes a recovery offset, keeping at most `max` entries.
pub fn parse_offset(offset: &str, max: usize) -> Option<Vec<(String, String, u64)>> {
    if offset.len() > 64 * 1024 {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(offset)
        .ok()?;
    let mut entries: Vec<(String, String, u64)> = serde_json::from_slice(&json).ok()?;
    entries.truncate(max);
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_name_only_the_namespace_rooms() {
        let mut rooms = HashMap::new();
        rooms.insert(
            "a".to_string(),
            Room {
                room: "a".into(),
                nsps: vec!["/".into()],
                epoch: "e1".into(),
                offset: 4,
            },
        );
        rooms.insert(
            "chat:b".to_string(),
            Room {
                room: "b".into(),
                nsps: vec!["/chat".into()],
                epoch: "e2".into(),
                offset: 9,
            },
        );
        let s = offset_string(&rooms, "/");
        assert_eq!(
            parse_offset(&s, 10),
            Some(vec![("a".into(), "e1".into(), 4)])
        );
        assert_eq!(parse_offset("not base64!", 10), None);
    }
}
