//! Transports adapt a socket or an HTTP exchange to a [`Session`]: they hand it the
//! client's frames and write what the connection's outbox gives them, in their own
//! framing. Nothing here knows the protocol beyond that.
//!
//! - [`websocket`]: `/connection/websocket` and `/connection/uni_websocket`.
//! - [`stream`]: the response bodies of SSE and HTTP streaming, bidirectional
//!   (`/connection/sse`, `/connection/http_stream`, commands via [`emulation`]) and
//!   unidirectional (`/connection/uni_sse`, `/connection/uni_http_stream`).
//! - [`long_poll`]: `/connection/long_poll`, Tidings' own long-polling transport.

pub mod emulation;
pub mod long_poll;
pub mod stream;
pub mod websocket;
pub mod ws;

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::connection::{Connection, WireFormat};
use crate::limit::{AdmitError, ConnectionPermit};
use crate::node::Node;
use crate::session::{ClientFrame, Inbound, Session, SessionMode};

/// Where to deliver the commands of an emulated (SSE, HTTP streaming, long-poll)
/// session, which arrive on requests separate from the stream.
pub type SessionInbox = mpsc::Sender<Inbound>;

/// Commands one emulated session may have waiting; a client that posts faster than
/// its session handles them gets HTTP 429 until it catches up.
pub const SESSION_INBOX: usize = 64;

/// Why an emulation request could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No session with that id on this node (never existed, or closed).
    #[error("session not found")]
    NotFound,
    /// The session has too many commands waiting.
    #[error("session is busy")]
    Busy,
}

/// The emulated sessions of one node by session id, so that `/emulation` requests
/// reach them (kept by the node as front-door state). A plain mutex: lookups,
/// inserts and removals only.
#[derive(Default)]
pub struct EmulatedSessions {
    inboxes: Mutex<HashMap<String, SessionInbox>>,
}

impl EmulatedSessions {
    /// The node's emulated sessions.
    pub fn of(node: &Node) -> Arc<Self> {
        node.front_door_state::<Self>()
    }

    fn insert(&self, session_id: &str, inbox: SessionInbox) {
        self.inboxes.lock().insert(session_id.to_string(), inbox);
    }

    fn remove(&self, session_id: &str) {
        self.inboxes.lock().remove(session_id);
    }

    /// Number of emulated sessions on this node.
    pub fn len(&self) -> usize {
        self.inboxes.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands a frame of commands to the session that holds `session_id`.
    ///
    /// # Errors
    /// [`RouteError::NotFound`] for an unknown or closed session,
    /// [`RouteError::Busy`] when its inbox is full.
    pub fn route(&self, session_id: &str, frame: ClientFrame) -> Result<(), RouteError> {
        let inbox = self
            .inboxes
            .lock()
            .get(session_id)
            .cloned()
            .ok_or(RouteError::NotFound)?;
        inbox.try_send(Ok(frame)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RouteError::Busy,
            mpsc::error::TrySendError::Closed(_) => RouteError::NotFound,
        })
    }
}

/// Lets this node answer the requests other nodes forward to its emulated and
/// long-poll sessions. The server's router calls it when it mounts the
/// transports.
pub fn serve_forwarded_requests(node: &Node) {
    emulation::serve_forwarded_requests(node);
    long_poll::serve_forwarded_requests(node);
}

/// The encoded prefix of a push reply; unidirectional transports send the push
/// object itself, so they take a view of the shared bytes without it.
const PUSH_PREFIX: &[u8] = b"{\"push\":";

/// The unidirectional form of an encoded reply: `{"push":X}` becomes `X` (a slice
/// of the same bytes, no copy); anything else (the `{}` ping) is unchanged.
pub(crate) fn unwrap_push(item: &Bytes) -> Bytes {
    if item.starts_with(PUSH_PREFIX) && item.ends_with(b"}") {
        item.slice(PUSH_PREFIX.len()..item.len() - 1)
    } else {
        item.clone()
    }
}

/// The disconnect push that ends a stream, which has no close code of its own.
pub(crate) fn disconnect_push(d: &tidings_protocol::Disconnect, format: WireFormat) -> Bytes {
    let push = tidings_protocol::Reply::push(tidings_protocol::Push {
        disconnect: Some(d.clone()),
        ..Default::default()
    });
    match format {
        WireFormat::Json => Bytes::from(push.to_json()),
        WireFormat::Protobuf => tidings_protocol::proto::reply_frame(&push),
    }
}

/// A connection refused by `client.connection_limit` or
/// `client.connection_rate_limit` gets 503, whatever its transport.
impl IntoResponse for AdmitError {
    fn into_response(self) -> Response {
        (StatusCode::SERVICE_UNAVAILABLE, self.to_string()).into_response()
    }
}

/// Whether the frame that opens an HTTP-based connection (the body or `cf_connect`
/// of sse, http_stream, long_poll and the unidirectional transports) is something a
/// session can read: for a bidirectional connection, every non-blank line one JSON
/// object; for a unidirectional one, one JSON object or nothing. Anything else is
/// refused with HTTP 400 before a session, a task or a long-poll entry exists for
/// it, as docs/protocol.md ("Bad input") says of the HTTP transports. Whether the
/// objects are valid commands is still the session's call (close 3501).
///
/// # Examples
///
/// ```
/// use tidings::transport::opening_frame_is_json;
/// assert!(opening_frame_is_json("{\"id\":1,\"connect\":{}}", false));
/// assert!(opening_frame_is_json("", true));
/// assert!(!opening_frame_is_json("[1]", true));
/// assert!(!opening_frame_is_json("{\"id\":1}\nnot json", false));
/// ```
pub fn opening_frame_is_json(frame: &str, uni: bool) -> bool {
    fn one_object(text: &str) -> bool {
        text.trim_start().starts_with('{')
            && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    }
    if uni {
        frame.trim().is_empty() || one_object(frame)
    } else {
        let mut lines = tidings_protocol::codec::split_frame(frame).peekable();
        lines.peek().is_some() && lines.all(one_object)
    }
}

/// Starts a session on its own tracked task. `first` is the frame the client sent
/// with the opening request (its connect command, or for unidirectional transports
/// its connect request); `headers` those of the opening request, of which the
/// connection keeps what a backend proxy forwards. Emulated sessions become reachable by their session id
/// until they end. The task holds `permit` until the session ends.
pub(crate) fn start_session(
    node: &Node,
    transport: &'static str,
    (mode, format): (SessionMode, WireFormat),
    first: Option<ClientFrame>,
    permit: ConnectionPermit,
    headers: &axum::http::HeaderMap,
) -> (Arc<Connection>, mpsc::Sender<Inbound>) {
    let queue = node.config().client.queue_max_size;
    let (conn, control) = Connection::with_format(transport, format, queue);
    if let Some(kept) = node.proxy_request_headers(headers) {
        conn.set_request_headers(kept);
    }
    let (tx, rx) = mpsc::channel::<Inbound>(SESSION_INBOX);
    if let Some(frame) = first {
        // The channel is new and empty, so this cannot fail.
        let _ = tx.try_send(Ok(frame));
    }
    let sessions = EmulatedSessions::of(node);
    if mode == SessionMode::Emulated {
        sessions.insert(&conn.session_id, tx.clone());
    }
    let task_node = node.clone();
    let task_conn = conn.clone();
    let keep_open = tx.clone();
    node.spawn_connection(async move {
        // Holding a sender keeps the inbound stream open for as long as the session
        // runs; it ends when the connection closes, not when input stops.
        let _keep_open = keep_open;
        let _permit = permit;
        let inbound = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        }));
        Session::with_mode(task_node.clone(), task_conn.clone(), control, mode)
            .run(inbound)
            .await;
        sessions.remove(&task_conn.session_id);
    });
    (conn, tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwrap_push_takes_the_inner_object() {
        let item = Bytes::from_static(b"{\"push\":{\"channel\":\"a\",\"pub\":{\"data\":1}}}");
        assert_eq!(
            &unwrap_push(&item)[..],
            b"{\"channel\":\"a\",\"pub\":{\"data\":1}}"
        );
        assert_eq!(&unwrap_push(&Bytes::from_static(b"{}"))[..], b"{}");
    }
}
