//! The shared handle of one client connection, seen by the hub (to deliver), the node
//! (to find a user's connections) and the connection's own tasks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use bytes::Bytes;
use tidings_protocol::{ClientInfo, Disconnect};
use tokio::sync::mpsc;

use crate::outbox::Outbox;

/// Something the node asks a session to do on the session's own task, because only
/// that task may change the session's state. The control queue carries it boxed:
/// tokio's bounded channel allocates a block of 32 slots when it is created, so every
/// idle connection pays 32 × the slot size (256 bytes boxed, 1.3 KiB unboxed).
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
    /// The hub lost this client's place in a channel's stream: unsubscribe it with
    /// 2500 so it resubscribes with recovery (if that subscription is still the one
    /// that lost its place).
    Insufficient { channel: String },
}

/// A server-side subscription request.
#[derive(Debug, Clone, Default)]
pub struct ServerSubscribe {
    pub channel: String,
    pub info: Option<tidings_protocol::RawJson>,
    pub data: Option<tidings_protocol::RawJson>,
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
    pub outbox: Outbox,
    pub control: mpsc::Sender<Box<Control>>,
    /// The presence entries this connection holds, by channel, so the node's
    /// presence timer can refresh them without asking the session. A plain mutex:
    /// map updates and a copy for the timer, never held across an await.
    presence: parking_lot::Mutex<HashMap<String, ClientInfo>>,
}

impl Connection {
    pub fn new(
        transport: &'static str,
        queue_max_size: usize,
    ) -> (std::sync::Arc<Self>, mpsc::Receiver<Box<Control>>) {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let conn = Connection {
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            client_id: uuid::Uuid::new_v4().to_string(),
            session_id: uuid::Uuid::new_v4().simple().to_string(),
            user: OnceLock::new(),
            transport,
            outbox: Outbox::new(queue_max_size),
            control: tx,
            presence: parking_lot::Mutex::new(HashMap::new()),
        };
        (std::sync::Arc::new(conn), rx)
    }

    /// The authenticated user ("" before connect or when anonymous).
    pub fn user(&self) -> &str {
        self.user.get().map(String::as_str).unwrap_or("")
    }

    pub(crate) fn set_user(&self, user: String) {
        let _ = self.user.set(user);
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
