//! The shared handle of one client connection, seen by the hub (to deliver), the node
//! (to find a user's connections) and the connection's own tasks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use bytes::Bytes;
use parking_lot::Mutex;
use tidings_protocol::{ClientInfo, Disconnect};
use tokio::sync::Notify;

use crate::outbox::Outbox;

/// Something the node asks a session to do on the session's own task, because only
/// that task may change the session's state.
#[derive(Debug)]
pub enum Control {
    /// Subscribe the client to a channel (server API `subscribe`). Boxed: tokio's
    /// channel allocates room for 32 messages up front, per connection, so the
    /// largest variant sets what every idle connection pays (about 3 KiB unboxed).
    Subscribe(Box<ServerSubscribe>),
    /// Unsubscribe the client from a channel (server API `unsubscribe`).
    Unsubscribe { channel: String },
    /// Disconnect the client (server API `disconnect`, shutdown).
    Disconnect(Disconnect),
    /// Extend, end or update the connection (server API `refresh`). Boxed for the
    /// same reason as `Subscribe`.
    Refresh(Box<ServerRefresh>),
    /// The hub lost this client's place in a channel's stream: unsubscribe it with
    /// 2500 so it resubscribes with recovery (if that subscription is still the one
    /// that lost its place).
    Insufficient { channel: String },
}

/// How a connection encodes the Centrifugo client protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireFormat {
    /// Newline-delimited JSON (text frames).
    #[default]
    Json,
    /// Varint-length-delimited Protobuf messages (binary frames): the
    /// `centrifuge-protobuf` WebSocket subprotocol, or an HTTP-streaming connection
    /// opened with `Content-Type: application/octet-stream`.
    Protobuf,
}

/// A server-side subscription request.
#[derive(Debug, Clone, Default)]
pub struct ServerSubscribe {
    pub channel: String,
    pub info: Option<tidings_protocol::RawJson>,
    pub data: Option<tidings_protocol::RawJson>,
}

/// A server-side refresh of a connection (server API `refresh`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ServerRefresh {
    /// End the connection now (disconnect 3005).
    #[serde(default)]
    pub expired: bool,
    /// New expiry, Unix seconds; 0 = never expires.
    #[serde(default)]
    pub expire_at: i64,
    /// New connection info, when given.
    #[serde(default)]
    pub info: Option<tidings_protocol::RawJson>,
}

/// Bound of the control queue: API calls aimed at one connection. A connection
/// that cannot take more is busy enough that dropping the newest request with an
/// error to the API caller is the right answer.
pub const CONTROL_QUEUE: usize = 64;

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// One client connection.
pub struct Connection {
    /// Process-unique number: the hub's map key, cheaper than the client id string.
    pub serial: u64,
    /// The client id sent in the connect reply (a UUID). Other clients see it in
    /// presence, so it is not a secret.
    pub client_id: String,
    /// The session id that emulation and long-poll requests name to reach this
    /// connection. Only this client learns it, so it acts as a capability.
    pub session_id: String,
    /// The user id, known once the connect command is accepted ("" = anonymous).
    user: OnceLock<String>,
    /// Name of the transport, for logs and metrics.
    pub transport: &'static str,
    /// How this connection's replies and pushes are encoded.
    pub format: WireFormat,
    pub outbox: Outbox,
    /// API requests aimed at this connection, for its session to carry out.
    pub control: ControlQueue,
    /// The presence entries this connection holds, by channel, so the node's
    /// presence timer can refresh them without asking the session. A plain mutex:
    /// map updates and a copy for the timer, never held across an await.
    presence: parking_lot::Mutex<HashMap<String, ClientInfo>>,
    /// Channels the connection is in (see `Node::join`), for `client.channel_limit`.
    channels: AtomicUsize,
    /// The headers of the client's connection request that a backend proxy
    /// forwards (`http_headers`); unset when no proxy forwards any.
    request_headers: OnceLock<crate::proxy::RequestHeaders>,
}

impl Connection {
    /// A JSON connection.
    pub fn new(
        transport: &'static str,
        queue_max_size: usize,
    ) -> (std::sync::Arc<Self>, ControlReceiver) {
        Self::with_format(transport, WireFormat::Json, queue_max_size)
    }

    /// A connection that speaks the protocol in `format`.
    pub fn with_format(
        transport: &'static str,
        format: WireFormat,
        queue_max_size: usize,
    ) -> (std::sync::Arc<Self>, ControlReceiver) {
        let conn = Connection {
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            client_id: uuid::Uuid::new_v4().to_string(),
            session_id: uuid::Uuid::new_v4().simple().to_string(),
            user: OnceLock::new(),
            transport,
            format,
            outbox: Outbox::new(queue_max_size),
            control: ControlQueue::default(),
            presence: parking_lot::Mutex::new(HashMap::new()),
            channels: AtomicUsize::new(0),
            request_headers: OnceLock::new(),
        };
        let conn = std::sync::Arc::new(conn);
        let rx = ControlReceiver { conn: conn.clone() };
        (conn, rx)
    }

    /// The authenticated user ("" before connect or when anonymous).
    pub fn user(&self) -> &str {
        self.user.get().map(String::as_str).unwrap_or("")
    }

    pub(crate) fn set_user(&self, user: String) {
        let _ = self.user.set(user);
    }

    /// The kept headers of the client's connection request.
    pub fn request_headers(
        &self,
    ) -> &[(reqwest::header::HeaderName, reqwest::header::HeaderValue)] {
        self.request_headers.get().map_or(&[], |h| &h[..])
    }

    /// Keeps the headers a proxy forwards (see `Node::proxy_request_headers`);
    /// the first call wins.
    pub fn set_request_headers(&self, headers: crate::proxy::RequestHeaders) {
        let _ = self.request_headers.set(headers);
    }

    /// Channels the connection is in.
    pub fn num_channels(&self) -> usize {
        self.channels.load(Ordering::Relaxed)
    }

    pub(crate) fn channel_joined(&self) {
        self.channels.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn channel_left(&self) {
        self.channels.fetch_sub(1, Ordering::Relaxed);
    }

    /// Remembers a presence entry for the refresh timer.
    pub(crate) fn hold_presence(&self, channel: &str, info: ClientInfo) {
        self.presence.lock().insert(channel.to_string(), info);
    }

    /// Forgets a presence entry; `true` when there was one.
    pub(crate) fn drop_presence(&self, channel: &str) -> bool {
        self.presence.lock().remove(channel).is_some()
    }

    /// Whether the connection still holds its entry in `channel`.
    pub(crate) fn holds_presence(&self, channel: &str) -> bool {
        self.presence.lock().contains_key(channel)
    }

    /// A copy of the presence entries, for the refresh timer.
    pub(crate) fn presence_entries(&self) -> Vec<(String, ClientInfo)> {
        self.presence
            .lock()
            .iter()
            .map(|(c, i)| (c.clone(), i.clone()))
            .collect()
    }

    /// Queues encoded bytes for this client; `false` when the connection is closing.
    pub fn send(&self, bytes: Bytes) -> bool {
        self.outbox.push(bytes)
    }
}

/// The control queue of one connection: bounded by [`CONTROL_QUEUE`], and holding no
/// memory until something is queued. Written here rather than taken from tokio's
/// `mpsc`, whose bounded channel allocates its state and a first block of 32 slots
/// up front: about 1.5 KiB for every connection, nearly all of which never receive a
/// single control message (measured with heaptrack, see docs/benchmarks.md).
#[derive(Default)]
pub struct ControlQueue {
    state: Mutex<ControlState>,
    /// Wakes the session; `notify_one` keeps a permit, so no wake-up is lost.
    notify: Notify,
}

#[derive(Default)]
struct ControlState {
    queue: std::collections::VecDeque<Control>,
    /// The session is gone: nothing more is accepted.
    closed: bool,
}

/// Why a control message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRejected {
    /// The session holds [`CONTROL_QUEUE`] requests already.
    Full,
    /// The session has ended.
    Closed,
}

impl ControlQueue {
    /// Queues a request for the session, without waiting.
    pub fn try_send(&self, ctrl: Control) -> Result<(), ControlRejected> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(ControlRejected::Closed);
        }
        if st.queue.len() >= CONTROL_QUEUE {
            return Err(ControlRejected::Full);
        }
        st.queue.push_back(ctrl);
        drop(st);
        self.notify.notify_one();
        Ok(())
    }
}

/// The session's end of its connection's control queue. Dropping it closes the
/// queue (what is still queued is dropped, later sends are refused).
pub struct ControlReceiver {
    conn: std::sync::Arc<Connection>,
}

impl ControlReceiver {
    /// The next request; waits for one. `None` only once the queue is closed,
    /// which cannot happen while this receiver exists. Cancel-safe: a request is
    /// taken only when it is returned.
    pub async fn recv(&mut self) -> Option<Control> {
        let q = &self.conn.control;
        loop {
            {
                let mut st = q.state.lock();
                if let Some(ctrl) = st.queue.pop_front() {
                    return Some(ctrl);
                }
                if st.closed {
                    return None;
                }
            }
            q.notify.notified().await;
        }
    }

    /// The next request if one is queued.
    pub fn try_recv(&mut self) -> Option<Control> {
        self.conn.control.state.lock().queue.pop_front()
    }
}

impl Drop for ControlReceiver {
    fn drop(&mut self) {
        let mut st = self.conn.control.state.lock();
        st.closed = true;
        // Dropped outside the lock: a queued request may own sizeable data.
        let pending = std::mem::take(&mut st.queue);
        drop(st);
        drop(pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsubscribe() -> Control {
        Control::Unsubscribe {
            channel: "c".into(),
        }
    }

    #[tokio::test]
    async fn control_queue_is_bounded_and_closes_with_its_receiver() {
        let (conn, mut rx) = Connection::new("test", 1024);
        for _ in 0..CONTROL_QUEUE {
            assert_eq!(conn.control.try_send(unsubscribe()), Ok(()));
        }
        assert_eq!(
            conn.control.try_send(unsubscribe()),
            Err(ControlRejected::Full)
        );
        assert!(matches!(rx.recv().await, Some(Control::Unsubscribe { .. })));
        assert_eq!(conn.control.try_send(unsubscribe()), Ok(()));
        drop(rx);
        assert_eq!(
            conn.control.try_send(unsubscribe()),
            Err(ControlRejected::Closed)
        );
    }

    #[tokio::test]
    async fn a_waiting_receiver_gets_a_later_request() {
        let (conn, mut rx) = Connection::new("test", 1024);
        let waiting = tokio::spawn(async move { rx.recv().await });
        // Let the receiver find the queue empty and wait.
        tokio::task::yield_now().await;
        assert_eq!(conn.control.try_send(unsubscribe()), Ok(()));
        // A deadline only so that a lost wake-up fails instead of hanging.
        let got = tokio::time::timeout(std::time::Duration::from_secs(30), waiting)
            .await
            .expect("the receiver was not woken")
            .expect("receiver task");
        assert!(matches!(got, Some(Control::Unsubscribe { .. })));
    }
}
