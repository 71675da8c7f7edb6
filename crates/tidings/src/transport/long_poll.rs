//! `/connection/long_poll`: the full bidirectional protocol over plain HTTP requests.
//!
//! Wire format (documented in docs/transports.md):
//!
//! - `POST /connection/long_poll` with the connect command frame as the body opens a
//!   session and answers `{"session": ID, "node": UID}`. The connect reply arrives
//!   with the first poll.
//! - `GET /connection/long_poll?session=ID&cursor=N` returns
//!   `{"cursor": M, "first": F, "messages": [...], "close": {...}}`: the queued replies
//!   and pushes numbered `F..=M`, as soon as there are any, or an empty list after
//!   `long_poll.hold`. `cursor` acknowledges everything up to `N`; unacknowledged
//!   messages are sent again, so a retried or duplicated poll never loses a message,
//!   and numbering lets the client drop what it already has. When the session has
//!   ended, every poll that reaches the end also carries `close` (code, reason,
//!   reconnect), numbered after the last message, until the session is forgotten.
//! - Commands go to `POST /emulation` with `{"session": ID, "data": FRAME}`.
//! - `DELETE /connection/long_poll?session=ID` ends the session.
//! - Polls and closes may add `&node=UID` (the open response's `node`). When the
//!   request lands on a node that does not hold the session, that node asks the
//!   holding one through the broker, which runs the poll and sends back its answer.
//!
//! One poll at a time per session: a second concurrent poll gets 409 and the first
//! is unaffected. A session with no poll for `long_poll.session_timeout` is closed,
//! which removes its presence and sends its leave.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes as AxumBytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use serde::Deserialize;
use tidings_protocol::Disconnect;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::emulation::ForwardedHttp;
use crate::connection::{Connection, WireFormat};
use crate::node::Node;
use crate::outbox::Drained;
use crate::session::SessionMode;

use super::start_session;

/// How long a closed session waits for its client's next poll while the node shuts
/// down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The kinds of the node-to-node requests that run a poll, or end a session,
/// for a session another node holds.
const FORWARDED_POLL: &str = "long_poll.poll";
const FORWARDED_CLOSE: &str = "long_poll.close";

/// A poll or a close for a session of the asked node.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ForwardedPoll {
    session: String,
    #[serde(default)]
    cursor: u64,
}

/// Lets this node answer the polls and closes other nodes forward to its
/// sessions.
pub(super) fn serve_forwarded_requests(node: &Node) {
    node.serve_requests(
        FORWARDED_POLL,
        Arc::new(|node, body| {
            Box::pin(async move {
                let answer = match serde_json::from_value::<ForwardedPoll>(body) {
                    Ok(ask) => {
                        let max = node
                            .config()
                            .long_poll
                            .max_response_size
                            .min(crate::node::MAX_FORWARDED_BODY);
                        let (status, body) = poll_local(&node, &ask.session, ask.cursor, max).await;
                        ForwardedHttp {
                            status: status.as_u16(),
                            body: String::from_utf8_lossy(&body).into_owned(),
                        }
                    }
                    Err(_) => ForwardedHttp {
                        status: 400,
                        body: "bad forwarded poll".into(),
                    },
                };
                serde_json::to_value(answer).unwrap_or_default()
            })
        }),
    );
    node.serve_requests(
        FORWARDED_CLOSE,
        Arc::new(|node, body| {
            Box::pin(async move {
                let (status, body) = match serde_json::from_value::<ForwardedPoll>(body) {
                    Ok(ask) => close_local(&node, &ask.session),
                    Err(_) => (StatusCode::BAD_REQUEST, "bad forwarded close"),
                };
                let answer = ForwardedHttp {
                    status: status.as_u16(),
                    body: body.to_string(),
                };
                serde_json::to_value(answer).unwrap_or_default()
            })
        }),
    );
}

/// Sessions of this transport by session id, for the poll handler (kept by the
/// node as front-door state).
#[derive(Default)]
pub struct LongPolls {
    // A plain mutex: lookups, inserts and removals only.
    sessions: Mutex<HashMap<String, Arc<PollSession>>>,
}

impl LongPolls {
    /// The node's long-poll sessions.
    pub fn of(node: &Node) -> Arc<Self> {
        node.front_door_state::<Self>()
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, id: &str) -> Option<Arc<PollSession>> {
        self.sessions.lock().get(id).cloned()
    }
}

/// Messages waiting for a poll, numbered from 1.
struct Buffer {
    items: VecDeque<(u64, Bytes)>,
    bytes: usize,
    next_seq: u64,
    close: Option<Disconnect>,
    /// The close has a number of its own, after the last message. Every poll that
    /// reaches the end gets the close again (a lost answer loses nothing); a poll
    /// acknowledging this number shows the client has it.
    close_seq: u64,
    close_acked: bool,
}

/// The server side of one long-poll session.
pub struct PollSession {
    conn: Arc<Connection>,
    // A plain mutex: appends and reads only, never held across an await.
    buffer: Mutex<Buffer>,
    /// Wakes a waiting poll when messages or the close arrive.
    notify: Notify,
    /// Set while a poll is in progress.
    polling: AtomicBool,
    /// When the last poll ended (or the session opened).
    last_poll: Mutex<Instant>,
}

impl PollSession {
    fn push(&self, items: Vec<Bytes>, close: Option<Disconnect>, limit: usize) {
        let mut buf = self.buffer.lock();
        for item in items {
            buf.bytes += item.len();
            let seq = buf.next_seq;
            buf.next_seq += 1;
            buf.items.push_back((seq, item));
        }
        if buf.bytes > limit && buf.close.is_none() {
            // The client polls too rarely for what it is sent: same rule as a full
            // outbox. What is buffered stays, so the client can still read up to
            // the close.
            drop(buf);
            self.conn.outbox.close_dropping_queued(Disconnect::slow());
            buf = self.buffer.lock();
        }
        if close.is_some() && buf.close.is_none() {
            buf.close = close;
            buf.close_seq = buf.next_seq;
            buf.next_seq += 1;
        }
        drop(buf);
        self.notify.notify_waiters();
    }
}

/// Moves what the session sends into the poll buffer, and closes the session when
/// nobody polls for `session_timeout`.
async fn pump(node: Node, session: Arc<PollSession>) {
    let cfg = node.config().long_poll.clone();
    let limit = node.config().client.queue_max_size;
    let mut check = tokio::time::interval(Duration::from_millis(500).min(cfg.session_timeout / 2));
    loop {
        tokio::select! {
            drained = session.conn.outbox.drain() => {
                match drained {
                    Drained::Batch(items) => session.push(items, None, limit),
                    Drained::Close(items, d) => {
                        session.push(items, Some(d), limit);
                        break;
                    }
                }
            }
            _ = check.tick() => {
                let idle = !session.polling.load(Ordering::Acquire)
                    && session.last_poll.lock().elapsed() >= cfg.session_timeout;
                if idle {
                    // The client is gone: end the session; the drain above then
                    // delivers the close into the buffer.
                    session.conn.outbox.close_dropping_queued(Disconnect::connection_closed());
                }
            }
        }
    }
    // Keep the closed session long enough for the client to collect the close, then
    // forget it. A live client polls again within moments of its last answer, so
    // during shutdown a short grace is enough and keeps the drain quick.
    let grace = if node.is_shutting_down() {
        SHUTDOWN_GRACE.min(cfg.session_timeout)
    } else {
        cfg.session_timeout
    };
    let linger = tokio::time::sleep(grace);
    tokio::pin!(linger);
    loop {
        tokio::select! {
            _ = &mut linger => break,
            _ = session.notify.notified() => {}
        }
        if session.buffer.lock().close_acked && !session.polling.load(Ordering::Acquire) {
            break;
        }
    }
    LongPolls::of(&node)
        .sessions
        .lock()
        .remove(&session.conn.session_id);
}

pub async fn open(State(node): State<Node>, headers: HeaderMap, body: AxumBytes) -> Response {
    if node.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    if !crate::origin::allowed(node.config(), &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if body.len() > node.config().emulation.max_request_body_size {
        return (StatusCode::PAYLOAD_TOO_LARGE, "connect request too large").into_response();
    }
    let Ok(first) = String::from_utf8(body.to_vec()) else {
        return (StatusCode::BAD_REQUEST, "the body must be UTF-8 JSON").into_response();
    };
    if first.trim().is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "send the connect command as the body",
        )
            .into_response();
    }
    if !super::opening_frame_is_json(&first, false) {
        return (
            StatusCode::BAD_REQUEST,
            "the body must be the connect command frame: one JSON object per line",
        )
            .into_response();
    }
    let permit = match node.try_admit() {
        Ok(permit) => permit,
        Err(refused) => return refused.into_response(),
    };
    let (conn, _inbox) = start_session(
        &node,
        "long_poll",
        (SessionMode::Emulated, WireFormat::Json),
        Some(first.into()),
        permit,
        &headers,
    );
    let session = Arc::new(PollSession {
        conn: conn.clone(),
        buffer: Mutex::new(Buffer {
            items: VecDeque::new(),
            bytes: 0,
            next_seq: 1,
            close: None,
            close_seq: 0,
            close_acked: false,
        }),
        notify: Notify::new(),
        polling: AtomicBool::new(false),
        last_poll: Mutex::new(Instant::now()),
    });
    LongPolls::of(&node)
        .sessions
        .lock()
        .insert(conn.session_id.clone(), session.clone());
    let pump_node = node.clone();
    node.spawn_connection(pump(pump_node, session));
    json_response(
        StatusCode::OK,
        serde_json::json!({ "session": conn.session_id, "node": node.uid() })
            .to_string()
            .into(),
    )
}

/// The query of a poll or close: `?session=ID&cursor=N`.
#[derive(Debug, Deserialize)]
pub struct PollParams {
    #[serde(default)]
    pub session: String,
    #[serde(default)]
    pub cursor: u64,
    /// The node that holds the session (the open response's `node`); a poll that
    /// lands on another node is run there through the broker.
    #[serde(default)]
    pub node: String,
}

/// Resets the in-progress flag however the poll ends, including when the client
/// gives up and the request is dropped.
struct PollGuard(Arc<PollSession>);

impl Drop for PollGuard {
    fn drop(&mut self) {
        *self.0.last_poll.lock() = Instant::now();
        self.0.polling.store(false, Ordering::Release);
        self.0.notify.notify_waiters();
    }
}

pub async fn poll(
    State(node): State<Node>,
    headers: HeaderMap,
    Query(params): Query<PollParams>,
) -> Response {
    if !crate::origin::allowed(node.config(), &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if let Some(to) = elsewhere(&node, &params) {
        if !node.is_live_node(to) && node.knows_the_cluster() {
            return (StatusCode::NOT_FOUND, "session not found").into_response();
        }
        // The holding node waits up to its hold; this one a little longer.
        let wait = node.config().long_poll.hold + FORWARD_MARGIN;
        let ask = ForwardedPoll {
            session: params.session.clone(),
            cursor: params.cursor,
        };
        let reply = node.ask_node(to, FORWARDED_POLL, &ask, wait).await;
        return super::emulation::forwarded(reply, true);
    }
    let max = node.config().long_poll.max_response_size;
    match poll_local(&node, &params.session, params.cursor, max).await {
        (StatusCode::OK, body) => json_response(StatusCode::OK, body),
        (status, body) => (status, body).into_response(),
    }
}

/// Extra wait, over `long_poll.hold`, for a poll run by another node.
const FORWARD_MARGIN: Duration = Duration::from_secs(5);

/// The node named by the request's `node`, when this node does not hold the
/// session and another one may. Requests without `node` (older clients) are
/// served here only.
fn elsewhere<'a>(node: &Node, params: &'a PollParams) -> Option<&'a str> {
    let to = params.node.as_str();
    let other = !to.is_empty() && to != node.uid();
    (other && LongPolls::of(node).get(&params.session).is_none()).then_some(to)
}

/// Runs a poll for a session of this node: waits up to `long_poll.hold` for
/// something to deliver. Answers the status and body (JSON when 200), with at most
/// `max_bytes` of messages (and at least one).
pub(crate) async fn poll_local(
    node: &Node,
    session_id: &str,
    cursor: u64,
    max_bytes: usize,
) -> (StatusCode, Bytes) {
    let Some(session) = LongPolls::of(node).get(session_id) else {
        return (
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"session not found"),
        );
    };
    if session.polling.swap(true, Ordering::AcqRel) {
        return (
            StatusCode::CONFLICT,
            Bytes::from_static(b"another poll is in progress for this session"),
        );
    }
    let _guard = PollGuard(session.clone());
    let cfg = &node.config().long_poll;
    let deadline = Instant::now() + cfg.hold;
    loop {
        let notified = session.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(body) = take(&session, cursor, max_bytes) {
            return (StatusCode::OK, body);
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {
                let body = format!("{{\"cursor\":{cursor},\"messages\":[]}}");
                return (StatusCode::OK, body.into());
            }
        }
    }
}

/// Acknowledges up to `cursor` and builds a response from what follows, if there is
/// anything to say.
fn take(session: &PollSession, cursor: u64, max_bytes: usize) -> Option<Bytes> {
    let mut buf = session.buffer.lock();
    while buf.items.front().is_some_and(|(seq, _)| *seq <= cursor) {
        if let Some((_, item)) = buf.items.pop_front() {
            buf.bytes -= item.len();
        }
    }
    if buf.items.is_empty() && buf.close.is_none() {
        return None;
    }
    if buf.close.is_some() && cursor >= buf.close_seq {
        buf.close_acked = true;
    }
    let close = buf.close.as_ref().map(|d| (d, buf.close_seq));
    Some(poll_body(&buf.items, cursor, max_bytes, close))
}

/// The JSON body of a poll answer (see the module docs) from the waiting messages,
/// numbered and all after `cursor`: as many as fit in `max_bytes`, and at least one.
/// `close` (the disconnect and its number) is added when every waiting message is in
/// the answer, and the cursor then names the close. Public for the fuzzers.
pub fn poll_body(
    items: &VecDeque<(u64, Bytes)>,
    cursor: u64,
    max_bytes: usize,
    close: Option<(&Disconnect, u64)>,
) -> Bytes {
    let waiting: usize = items.iter().map(|(_, item)| item.len()).sum();
    let mut out = BytesMut::with_capacity(64 + waiting.min(max_bytes));
    let mut last = cursor;
    let mut first = 0;
    out.put_slice(b"\"messages\":[");
    for (seq, item) in items {
        if first != 0 && out.len() + item.len() > max_bytes {
            break;
        }
        if first == 0 {
            first = *seq;
        } else {
            out.put_u8(b',');
        }
        out.put_slice(item);
        last = *seq;
    }
    out.put_u8(b']');
    let complete = items.back().is_none_or(|(seq, _)| *seq == last);
    if let (true, Some((_, close_seq))) = (complete, close) {
        last = close_seq;
    }
    let mut head = format!("{{\"cursor\":{last},");
    if first != 0 {
        head.push_str(&format!("\"first\":{first},"));
    }
    let mut body = BytesMut::from(head.as_bytes());
    body.put_slice(&out);
    if let (true, Some((d, _))) = (complete, close) {
        let close =
            serde_json::json!({"code": d.code, "reason": d.reason, "reconnect": d.reconnect});
        body.put_slice(format!(",\"close\":{close}").as_bytes());
    }
    body.put_u8(b'}');
    body.freeze()
}

pub async fn close(
    State(node): State<Node>,
    headers: HeaderMap,
    Query(params): Query<PollParams>,
) -> Response {
    if !crate::origin::allowed(node.config(), &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if let Some(to) = elsewhere(&node, &params) {
        if !node.is_live_node(to) && node.knows_the_cluster() {
            return (StatusCode::NOT_FOUND, "session not found").into_response();
        }
        let ask = ForwardedPoll {
            session: params.session.clone(),
            cursor: 0,
        };
        let reply = node
            .ask_node(to, FORWARDED_CLOSE, &ask, FORWARD_MARGIN)
            .await;
        return super::emulation::forwarded(reply, false);
    }
    let (status, body) = close_local(&node, &params.session);
    if body.is_empty() {
        status.into_response()
    } else {
        (status, body).into_response()
    }
}

/// Ends a long-poll session of this node.
pub(crate) fn close_local(node: &Node, session_id: &str) -> (StatusCode, &'static str) {
    match LongPolls::of(node).get(session_id) {
        Some(session) => {
            session
                .conn
                .outbox
                .close_dropping_queued(Disconnect::connection_closed());
            (StatusCode::NO_CONTENT, "")
        }
        None => (StatusCode::NOT_FOUND, "session not found"),
    }
}

/// A JSON body that no cache may keep (poll answers, routed replies).
pub(super) fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    res
}
