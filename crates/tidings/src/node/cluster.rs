//! Node-to-node control messages, carried by the broker as opaque bytes.
//!
//! Every node receives the broadcast ones (its own included) and the ones addressed
//! to its uid. The set of messages and their handling live here, so the brokers
//! stay transport only. This module carries requests; it does not know who answers
//! them: each front door or transport registers the handler of its own request
//! kind with [`Node::serve_requests`] (the emulation and long-poll transports,
//! the Socket.IO door), and the core answers only its own (`/api/channels`).
//!
//! A message is a JSON [`Envelope`]: a version, the sender's uid and one
//! [`Message`]. A node ignores messages of another version and kinds it does not
//! know, so nodes of different versions can share a broker during a rolling
//! upgrade (the ones that cannot read each other only miss those messages).
//!
//! What travels:
//! - user operations of the server API (disconnect, unsubscribe, subscribe), sent to
//!   every node and applied by each to its own connections, the sender's included:
//!   one code path whatever the engine;
//! - node info heartbeats, for `/api/info`;
//! - requests with replies, built on the one-way messages: an id, the asking node's
//!   uid to reply to, and a bounded map of waiting requests on the asking node. They
//!   route emulation, long-poll and Socket.IO polling requests to the node that
//!   holds the session, and gather channel lists for `/api/channels`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tidings_protocol::{Disconnect, RawJson};
use tokio::sync::{oneshot, Semaphore};

use super::{Node, NodeInfo};
use crate::connection::{ServerRefresh, ServerSubscribe};

/// Version of the message format; messages of another version are ignored.
/// Version 2 carries front-door requests by kind instead of one variant each.
pub const VERSION: u32 = 2;

/// Most bytes of one control message, sent or accepted. It stays under NATS's
/// default `max_payload` (1 MiB), so both engines carry every message that passes.
pub const MAX_MESSAGE: usize = 512 * 1024;

/// Room kept for the envelope around a forwarded body.
const ENVELOPE_ROOM: usize = 4 * 1024;

/// Most bytes of a body (a long-poll answer) carried in a reply.
pub const MAX_REPLY_BODY: usize = MAX_MESSAGE - ENVELOPE_ROOM;

/// Most requests this node may have waiting for replies; past it new ones fail at
/// once rather than grow memory.
pub const MAX_PENDING: usize = 10_000;

/// Most requests from other nodes this node serves at once (long polls wait up to
/// `long_poll.hold`); past it they are answered 503.
pub const MAX_SERVING: usize = 10_000;

/// Most other nodes remembered from their heartbeats.
pub const MAX_NODES: usize = 1_024;

/// One control message.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// [`VERSION`].
    pub v: u32,
    /// Uid of the sending node: where replies go.
    pub from: String,
    pub msg: Message,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Message {
    /// Server API `disconnect`.
    Disconnect {
        user: String,
        client: Option<String>,
        whitelist: Vec<String>,
        disconnect: Disconnect,
    },
    /// Server API `unsubscribe`.
    Unsubscribe {
        user: String,
        channel: String,
        client: Option<String>,
    },
    /// Server API `subscribe`.
    Subscribe {
        user: String,
        channel: String,
        client: Option<String>,
        info: Option<RawJson>,
        data: Option<RawJson>,
    },
    /// Server API `refresh`.
    Refresh {
        user: String,
        client: Option<String>,
        session: Option<String>,
        refresh: ServerRefresh,
    },
    /// Heartbeat: the sender is alive and these are its figures.
    Info(NodeInfo),
    /// The sender is shutting down: forget it now rather than when its
    /// heartbeats stop.
    Leave,
    /// A request to the node it is addressed to.
    Request { id: u64, request: Request },
    /// The answer to request `id` of the node it is addressed to.
    Reply { id: u64, reply: Reply },
}

/// What one node asks another.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Request {
    /// The channels with subscribers on the node (`/api/channels`).
    Channels { pattern: Option<String> },
    /// A request of a kind some front door or transport registered a handler for
    /// (see [`Node::serve_requests`]); the body is theirs.
    Handler {
        kind: String,
        body: serde_json::Value,
    },
}

/// An answer to a [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Reply {
    Channels {
        channels: Vec<(String, usize)>,
    },
    /// The handler's answer.
    Handler(serde_json::Value),
    /// The node serves too many requests already.
    Busy,
    /// The node has no handler for the request's kind.
    NoHandler,
    /// The answer was larger than [`MAX_MESSAGE`].
    TooLarge,
}

/// Answers the requests of one kind from other nodes: gets this node and the
/// request's body, returns the reply's body.
pub type RequestHandler =
    Arc<dyn Fn(Node, serde_json::Value) -> BoxFuture<'static, serde_json::Value> + Send + Sync>;

/// Why a request to another node got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The broker would not take the message.
    #[error("the broker is unavailable")]
    Broker,
    /// No reply in time: the node is gone, or the broker lost a message.
    #[error("the node did not answer in time")]
    Timeout,
    /// Too many requests are waiting already, here or on the asked node.
    #[error("too many requests in flight")]
    Busy,
    /// The request or its reply is larger than [`MAX_MESSAGE`].
    #[error("message too large")]
    TooLarge,
    /// The asked node does not serve requests of this kind, or its answer was not
    /// what the kind's handler returns.
    #[error("the node cannot answer this request")]
    Unanswerable,
}

/// The cluster-facing state of a node: who else is alive, and requests waiting
/// for replies.
pub(crate) struct Cluster {
    /// Other nodes by uid, with when their last heartbeat came. A plain mutex:
    /// inserts and copies only.
    nodes: Mutex<HashMap<String, (NodeInfo, Instant)>>,
    /// Requests waiting for replies, by id. A plain mutex: inserts and removals.
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    /// Bounds the requests from other nodes served at once.
    serving: Arc<Semaphore>,
    /// Who answers which kind of request. A read-mostly lock: written when a
    /// front door is mounted.
    handlers: RwLock<HashMap<String, RequestHandler>>,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            nodes: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            serving: Arc::new(Semaphore::new(MAX_SERVING)),
            handlers: RwLock::new(HashMap::new()),
        }
    }
}

impl Cluster {
    /// Other nodes heard from within `max_age`, oldest entries dropped on the way.
    pub(crate) fn live_nodes(&self, max_age: Duration) -> Vec<NodeInfo> {
        let mut nodes = self.nodes.lock();
        nodes.retain(|_, (_, at)| at.elapsed() < max_age);
        nodes.values().map(|(info, _)| info.clone()).collect()
    }

    /// Whether `uid` sent a heartbeat within `max_age`.
    pub(crate) fn is_live(&self, uid: &str, max_age: Duration) -> bool {
        self.nodes
            .lock()
            .get(uid)
            .is_some_and(|(_, at)| at.elapsed() < max_age)
    }

    fn heard(&self, info: NodeInfo, max_age: Duration) {
        let mut nodes = self.nodes.lock();
        if nodes.len() >= MAX_NODES && !nodes.contains_key(&info.uid) {
            nodes.retain(|_, (_, at)| at.elapsed() < max_age);
            if nodes.len() >= MAX_NODES {
                return;
            }
        }
        nodes.insert(info.uid.clone(), (info, Instant::now()));
    }
}

impl Node {
    /// Answers the requests of `kind` that other nodes send with
    /// [`Node::ask_node`], replacing an earlier handler of that kind.
    pub fn serve_requests(&self, kind: &str, handler: RequestHandler) {
        self.inner
            .cluster
            .handlers
            .write()
            .insert(kind.to_string(), handler);
    }

    /// Sends a request of `kind` to node `uid` and waits up to `timeout` for the
    /// answer of the handler that node registered for the kind.
    ///
    /// # Errors
    /// [`ForwardError`] when there is no answer (broker down, timeout, too many
    /// requests, too large, or no handler there).
    pub async fn ask_node<Q: Serialize, A: serde::de::DeserializeOwned>(
        &self,
        uid: &str,
        kind: &str,
        body: &Q,
        timeout: Duration,
    ) -> Result<A, ForwardError> {
        let body = serde_json::to_value(body).map_err(|_| ForwardError::Unanswerable)?;
        let request = Request::Handler {
            kind: kind.to_string(),
            body,
        };
        match request_reply(self, uid, request, timeout).await? {
            Reply::Handler(value) => {
                serde_json::from_value(value).map_err(|_| ForwardError::Unanswerable)
            }
            Reply::Busy => Err(ForwardError::Busy),
            Reply::TooLarge => Err(ForwardError::TooLarge),
            Reply::NoHandler | Reply::Channels { .. } => Err(ForwardError::Unanswerable),
        }
    }
}

/// Encodes a message from `node`.
pub(crate) fn encode(node: &Node, msg: Message) -> Bytes {
    let envelope = Envelope {
        v: VERSION,
        from: node.uid().to_string(),
        msg,
    };
    // Serialising these plain structs cannot fail.
    Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
}

/// How long a node counts as alive after its last heartbeat.
pub(crate) fn node_max_age(node: &Node) -> Duration {
    node.config().node.info_publish_interval * 3 + Duration::from_secs(1)
}

/// Sends a request to node `to` and waits up to `timeout` for its reply.
pub(crate) async fn request_reply(
    node: &Node,
    to: &str,
    request: Request,
    timeout: Duration,
) -> Result<Reply, ForwardError> {
    let metrics = node.metrics();
    metrics.forwarded_requests.increment(1);
    let reply = send_request(node, to, request, timeout).await;
    if reply.is_err() {
        metrics.forwarded_failures.increment(1);
    }
    reply
}

async fn send_request(
    node: &Node,
    to: &str,
    request: Request,
    timeout: Duration,
) -> Result<Reply, ForwardError> {
    let cluster = &node.inner.cluster;
    let id = cluster.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    {
        let mut pending = cluster.pending.lock();
        if pending.len() >= MAX_PENDING {
            return Err(ForwardError::Busy);
        }
        pending.insert(id, tx);
    }
    // Removes the entry however this ends (reply, timeout, or the caller gone).
    struct Forget<'a>(&'a Cluster, u64);
    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            self.0.pending.lock().remove(&self.1);
        }
    }
    let _forget = Forget(cluster, id);
    let bytes = encode(node, Message::Request { id, request });
    if bytes.len() > MAX_MESSAGE {
        return Err(ForwardError::TooLarge);
    }
    node.inner
        .broker
        .publish_control(bytes, Some(to))
        .await
        .map_err(|_| ForwardError::Broker)?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(reply)) => Ok(reply),
        _ => Err(ForwardError::Timeout),
    }
}

/// Tells the other nodes this one is going away (best effort, one second at most).
pub(crate) async fn publish_leave(node: &Node) {
    let bytes = encode(node, Message::Leave);
    let send = node.inner.broker.publish_control(bytes, None);
    if !matches!(
        tokio::time::timeout(Duration::from_secs(1), send).await,
        Ok(Ok(()))
    ) {
        tracing::debug!("leave message not sent");
    }
}

/// Sends this node's heartbeat to every node.
pub(crate) async fn publish_info(node: &Node) {
    let bytes = encode(node, Message::Info(node.info()));
    if let Err(e) = node.inner.broker.publish_control(bytes, None).await {
        tracing::debug!(error = %e, "node info not sent");
    }
}

/// Handles a control message that arrived through the broker. Runs on the broker's
/// delivery path, so anything that waits is spawned.
pub(crate) fn handle(node: &Node, data: &[u8]) {
    if data.len() > MAX_MESSAGE {
        tracing::warn!(len = data.len(), "control message too large, ignored");
        return;
    }
    let envelope: Envelope = match serde_json::from_slice(data) {
        Ok(e) => e,
        Err(e) => {
            // Another version, or a kind this node does not know.
            tracing::debug!(error = %e, "control message not understood, ignored");
            return;
        }
    };
    if envelope.v != VERSION {
        tracing::debug!(
            v = envelope.v,
            "control message of another version, ignored"
        );
        return;
    }
    let from = envelope.from;
    match envelope.msg {
        Message::Disconnect {
            user,
            client,
            whitelist,
            disconnect,
        } => {
            node.disconnect_local(&user, client.as_deref(), &whitelist, disconnect);
        }
        Message::Unsubscribe {
            user,
            channel,
            client,
        } => {
            node.unsubscribe_local(&user, &channel, client.as_deref());
        }
        Message::Refresh {
            user,
            client,
            session,
            refresh,
        } => {
            node.refresh_local(&user, client.as_deref(), session.as_deref(), &refresh);
        }
        Message::Subscribe {
            user,
            channel,
            client,
            info,
            data,
        } => {
            let req = ServerSubscribe {
                channel,
                info,
                data,
            };
            node.subscribe_local(&user, req, client.as_deref());
        }
        Message::Info(info) => {
            if info.uid != node.uid() && info.uid == from {
                node.inner.cluster.heard(info, node_max_age(node));
            }
        }
        Message::Leave => {
            node.inner.cluster.nodes.lock().remove(&from);
        }
        Message::Request { id, request } => serve(node, from, id, request),
        Message::Reply { id, reply } => {
            if let Some(tx) = node.inner.cluster.pending.lock().remove(&id) {
                let _ = tx.send(reply);
            }
        }
    }
}

/// Answers a request of node `from` on a task of its own.
fn serve(node: &Node, from: String, id: u64, request: Request) {
    if from.is_empty() {
        return;
    }
    let permit = node.inner.cluster.serving.clone().try_acquire_owned();
    let node = node.clone();
    tokio::spawn(async move {
        let reply = match permit {
            Ok(_permit) => answer(&node, request).await,
            Err(_) => Reply::Busy,
        };
        let mut bytes = encode(&node, Message::Reply { id, reply });
        if bytes.len() > MAX_MESSAGE {
            // Rather than let the asking node time out waiting for a message that
            // can never travel, tell it why at once.
            bytes = encode(
                &node,
                Message::Reply {
                    id,
                    reply: Reply::TooLarge,
                },
            );
        }
        if let Err(e) = node.inner.broker.publish_control(bytes, Some(&from)).await {
            tracing::debug!(error = %e, "reply to another node not sent");
        }
    });
}

async fn answer(node: &Node, request: Request) -> Reply {
    match request {
        Request::Channels { pattern } => Reply::Channels {
            channels: node.local_channels(pattern.as_deref()),
        },
        Request::Handler { kind, body } => {
            let handler = node.inner.cluster.handlers.read().get(&kind).cloned();
            match handler {
                Some(handler) => Reply::Handler(handler(node.clone(), body).await),
                None => Reply::NoHandler,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    /// With the memory broker, a request to the node's own uid goes the whole way:
    /// out through the broker, served by the handler of its kind, and the reply
    /// matched to its request.
    #[tokio::test]
    async fn requests_get_their_replies_and_unanswered_ones_time_out() {
        let node = Node::new(Config::default());
        let uid = node.uid().to_string();
        let short = Duration::from_secs(2);
        let reply = request_reply(&node, &uid, Request::Channels { pattern: None }, short).await;
        assert!(matches!(reply, Ok(Reply::Channels { channels }) if channels.is_empty()));
        // A kind nobody serves is refused at once, not timed out.
        let asked: Result<u32, _> = node.ask_node(&uid, "echo", &1u32, short).await;
        assert_eq!(asked.unwrap_err(), ForwardError::Unanswerable);
        node.serve_requests(
            "echo",
            Arc::new(|_, body| {
                Box::pin(async move {
                    let n = body.as_u64().unwrap_or(0);
                    serde_json::json!(n + 1)
                })
            }),
        );
        let asked: Result<u32, _> = node.ask_node(&uid, "echo", &1u32, short).await;
        assert_eq!(asked, Ok(2));
        // Nobody answers for a node that does not exist.
        let asked: Result<u32, _> = node
            .ask_node("elsewhere", "echo", &1u32, Duration::from_millis(50))
            .await;
        assert_eq!(asked.unwrap_err(), ForwardError::Timeout);
        assert!(node.inner.cluster.pending.lock().is_empty());
    }

    #[tokio::test]
    async fn heartbeats_of_other_nodes_are_listed_and_expire() {
        let node = Node::new(Config::default());
        let other = NodeInfo {
            uid: "other".into(),
            name: "b".into(),
            version: "x".into(),
            num_clients: 1,
            num_users: 1,
            num_subs: 0,
            num_channels: 0,
            uptime: 5,
        };
        let bytes = serde_json::to_vec(&Envelope {
            v: VERSION,
            from: "other".into(),
            msg: Message::Info(other),
        })
        .unwrap();
        handle(&node, &bytes);
        assert_eq!(node.nodes().len(), 2);
        assert!(node.is_live_node("other"));
        let leave = serde_json::to_vec(&Envelope {
            v: VERSION,
            from: "other".into(),
            msg: Message::Leave,
        })
        .unwrap();
        handle(&node, &leave);
        assert!(!node.is_live_node("other"));
        handle(&node, &bytes);
        assert!(node.is_live_node("other"));
        assert!(node.inner.cluster.live_nodes(Duration::ZERO).is_empty());
        // Another version is ignored.
        let third = NodeInfo {
            uid: "third".into(),
            ..node.info()
        };
        let mut future = serde_json::to_value(Envelope {
            v: VERSION,
            from: "third".into(),
            msg: Message::Info(third.clone()),
        })
        .unwrap();
        future["v"] = serde_json::json!(VERSION + 1);
        handle(&node, future.to_string().as_bytes());
        assert!(!node.is_live_node("third"));
        future["v"] = serde_json::json!(VERSION);
        handle(&node, future.to_string().as_bytes());
        assert!(node.is_live_node("third"));
    }

    #[test]
    fn messages_round_trip_and_unknown_kinds_are_refused() {
        let msg = Envelope {
            v: VERSION,
            from: "n1".into(),
            msg: Message::Request {
                id: 7,
                request: Request::Handler {
                    kind: "long_poll.poll".into(),
                    body: serde_json::json!({"session": "s", "cursor": 3}),
                },
            },
        };
        let bytes = serde_json::to_vec(&msg).unwrap();
        let back: Envelope = serde_json::from_slice(&bytes).unwrap();
        assert!(matches!(
            back.msg,
            Message::Request {
                id: 7,
                request: Request::Handler { ref kind, .. }
            } if kind == "long_poll.poll"
        ));
        let unknown = br#"{"v":2,"from":"n1","msg":{"teleport":{}}}"#;
        assert!(serde_json::from_slice::<Envelope>(unknown).is_err());
    }
}
