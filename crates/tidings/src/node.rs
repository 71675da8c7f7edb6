//! The [`Node`]: owner of the hub, the broker, presence, configuration and metrics.
//!
//! Its methods are the library's API (publish, history, presence, disconnect, …) and
//! are what both client sessions and the server HTTP API call. A `Node` is a cheap
//! handle (`Clone`); every clone is the same node.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tidings_protocol::codes::{self, ErrorCode};
use tidings_protocol::{
    ClientInfo, Disconnect, JoinLeave, Publication, Push, RawJson, Reply, StreamPosition,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{
    BatchPublish, Broker, BrokerError, BrokerEventHandler, HistoryFilter, HistoryPage,
    PublishOptions,
};
use crate::channel;
use crate::config::Config;
use crate::connection::{Connection, Control, ServerSubscribe};
use crate::hub::{Delivery, Hub};
use crate::limit::{AdmitError, ConnectionGate, ConnectionPermit};
use crate::metrics::Metrics;
use crate::presence::{PresenceManager, PresenceStats};

/// Version reported to clients and in `/api/info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An RPC handler: gets the client's user id, the method and the data, and returns the
/// reply data or a protocol error.
pub type RpcHandler = Arc<
    dyn Fn(
            RpcRequest,
        )
            -> futures_util::future::BoxFuture<'static, Result<RawJson, tidings_protocol::Error>>
        + Send
        + Sync,
>;

/// One `rpc` call from a client.
#[derive(Debug, Clone)]
pub struct RpcRequest {
    pub client_id: String,
    pub user: String,
    pub method: String,
    pub data: Option<RawJson>,
}

/// Why a node operation failed; each maps to one protocol error code.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A protocol-level refusal (bad channel, not available, …).
    #[error("{}", .0.message)]
    Protocol(ErrorCode),
    /// The broker or presence backend failed; the source says how (an
    /// [`crate::broker::EngineError`] for the engines).
    #[error("backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl NodeError {
    /// The client-visible error.
    pub fn to_protocol(&self) -> tidings_protocol::Error {
        match self {
            NodeError::Protocol(code) => (*code).into(),
            NodeError::Backend(_) => codes::ERROR_INTERNAL.into(),
        }
    }
}

impl From<ErrorCode> for NodeError {
    fn from(c: ErrorCode) -> Self {
        NodeError::Protocol(c)
    }
}

impl From<BrokerError> for NodeError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::UnrecoverablePosition => {
                NodeError::Protocol(codes::ERROR_UNRECOVERABLE_POSITION)
            }
            BrokerError::Backend(e) => NodeError::Backend(Box::new(e)),
        }
    }
}

impl From<crate::presence::PresenceError> for NodeError {
    fn from(e: crate::presence::PresenceError) -> Self {
        match e {
            crate::presence::PresenceError::Backend(e) => NodeError::Backend(Box::new(e)),
        }
    }
}

/// Options of a publish.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub channel: String,
    pub data: RawJson,
    /// Do not append to history (the publication still gets delivered).
    pub skip_history: bool,
    pub tags: Option<std::collections::BTreeMap<String, String>>,
    /// The publishing client, when a client published.
    pub info: Option<ClientInfo>,
    /// Retries with the same key within 5 minutes return the first result.
    pub idempotency_key: Option<String>,
}

impl PublishRequest {
    /// A plain publish of `data` to `channel`.
    pub fn new(channel: impl Into<String>, data: RawJson) -> Self {
        Self {
            channel: channel.into(),
            data,
            skip_history: false,
            tags: None,
            info: None,
            idempotency_key: None,
        }
    }
}

/// Node-level facts reported by `/api/info`, and sent to the other nodes in the
/// heartbeat.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub uid: String,
    pub name: String,
    pub version: String,
    pub num_clients: u32,
    pub num_users: u32,
    pub num_subs: u32,
    pub num_channels: u32,
    pub uptime: u64,
}

/// Who is connected, by client id and by user.
#[derive(Default)]
struct Registry {
    clients: HashMap<String, Arc<Connection>>,
    users: HashMap<String, HashSet<String>>,
}

/// Where to deliver the commands of an emulated (SSE, HTTP streaming, long-poll)
/// session, which arrive on requests separate from the stream.
pub type SessionInbox = tokio::sync::mpsc::Sender<crate::session::Inbound>;

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

pub(crate) struct NodeInner {
    pub(crate) config: Arc<Config>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) presence: Arc<dyn PresenceManager>,
    pub(crate) metrics: Arc<Metrics>,
    /// Fired once when the node starts shutting down.
    pub(crate) shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them to drain.
    pub(crate) tracker: TaskTracker,
    pub(crate) uid: String,
    pub(crate) name: String,
    started: Instant,
    // A plain mutex: held only for map updates at connect/disconnect time.
    registry: Mutex<Registry>,
    /// Counts client connections and applies the connection and connection-rate
    /// limits before a transport starts a session.
    gate: ConnectionGate,
    /// Emulated sessions by session id. A plain mutex: lookups and inserts only.
    sessions: Mutex<HashMap<String, SessionInbox>>,
    /// Long-poll sessions, for the poll requests.
    pub(crate) long_polls: crate::transport::long_poll::Registry,
    /// Socket.IO (Engine.IO) sessions, by sid.
    pub(crate) socketio: crate::socketio::Registry,
    pub(crate) rpc: Option<RpcHandler>,
    /// Token verifiers (keys parsed once; the JWKS cache lives here).
    pub(crate) auth: Arc<crate::auth::Auth>,
    /// Other nodes and requests to them (see [`crate::control`]).
    pub(crate) cluster: crate::control::Cluster,
}

/// A Tidings node. See the module docs.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

/// Builds a [`Node`].
pub struct NodeBuilder {
    config: Config,
    rpc: Option<RpcHandler>,
}

impl NodeBuilder {
    /// Handles `rpc` commands from clients; without one they get error 104.
    pub fn rpc_handler(mut self, handler: RpcHandler) -> Self {
        self.rpc = Some(handler);
        self
    }

    /// Creates the node and starts its background tasks. Must run inside a Tokio
    /// runtime.
    pub fn build(self) -> Node {
        let config = Arc::new(self.config);
        let hub = Arc::new(Hub::new());
        let metrics = Arc::new(Metrics::new());
        let engine = crate::engine::build(&config).unwrap_or_else(|e| {
            // Config::load validates the engine; a hand-built config that skipped it
            // gets a memory engine (one node) and an error in the log.
            tracing::error!(error = %e, "engine unusable: running with the memory engine");
            let mut memory_only = (*config).clone();
            memory_only.engine = Default::default();
            crate::engine::build(&memory_only).expect("the memory engine always builds")
        });
        let broker = engine.broker.clone();
        let fanout = Arc::new(Fanout {
            hub: hub.clone(),
            metrics: metrics.clone(),
            node: std::sync::OnceLock::new(),
        });
        let name = if config.node.name.is_empty() {
            format!("tidings-{}", std::process::id())
        } else {
            config.node.name.clone()
        };
        let gate = ConnectionGate::new(
            config.client.connection_limit,
            config.client.connection_rate_limit,
        );
        let auth = crate::auth::Auth::new(&config.client).unwrap_or_else(|e| {
            // Config::load validates this; a hand-built config that skipped it gets a
            // node that accepts no token rather than one that accepts any.
            tracing::error!(error = %e, "token configuration unusable: every token will be refused");
            crate::auth::Auth::reject_all()
        });
        let inner = Arc::new(NodeInner {
            config,
            hub,
            broker,
            presence: engine.presence.clone(),
            metrics,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            uid: uuid::Uuid::new_v4().to_string(),
            name,
            started: Instant::now(),
            registry: Mutex::new(Registry::default()),
            gate,
            sessions: Mutex::new(HashMap::new()),
            long_polls: Default::default(),
            socketio: Default::default(),
            rpc: self.rpc,
            auth: Arc::new(auth),
            cluster: Default::default(),
        });
        let _ = fanout.node.set(Arc::downgrade(&inner));
        inner.broker.run(&inner.uid, fanout);
        // Publishes that reach the node through the engine take the API's path; weak,
        // so the engine does not keep the node alive.
        let weak = Arc::downgrade(&inner);
        let ingest: crate::engine::Ingest = Arc::new(move |msg| {
            let node = weak.upgrade().map(|inner| Node { inner });
            Box::pin(async move {
                use crate::engine::IngestError;
                let node = node.ok_or_else(|| IngestError::Failed("node stopped".into()))?;
                let req = PublishRequest {
                    tags: msg.tags,
                    idempotency_key: msg.idempotency_key,
                    ..PublishRequest::new(msg.channel, msg.data)
                };
                node.publish(req).await.map_err(|e| match e {
                    NodeError::Protocol(code) => IngestError::Rejected(code.into()),
                    NodeError::Backend(e) => IngestError::Failed(e),
                })
            })
        });
        let hub = inner.hub.clone();
        engine.start(crate::engine::EngineHooks {
            ingest,
            shutdown: inner.shutdown.clone(),
            has_local_subscribers: Arc::new(move |channel| hub.num_subscribers(channel) > 0),
        });
        let node = Node {
            inner: inner.clone(),
        };
        inner
            .socketio
            .set_forwarder(crate::control::socketio_forwarder(Arc::downgrade(&inner)));
        node.start_timers();
        node
    }
}

/// The broker's delivery target: encodes once and hands the bytes to the hub.
struct Fanout {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// The node, for control messages; weak so the broker does not keep it alive.
    node: std::sync::OnceLock<std::sync::Weak<NodeInner>>,
}

impl Fanout {
    fn deliver(&self, channel: &str, publication: &Publication, epoch: Option<&str>) {
        if self.hub.num_subscribers(channel) == 0 {
            return;
        }
        let bytes = Bytes::from(
            Reply::push(Push {
                channel: channel.to_string(),
                publication: Some(publication.clone()),
                ..Default::default()
            })
            .to_json(),
        );
        match self.hub.publish(channel, epoch, publication.offset, &bytes) {
            Delivery::Delivered(n) => self.metrics.messages_sent.increment(n as u64),
            Delivery::Duplicate => {
                tracing::debug!(channel, offset = publication.offset, "duplicate dropped");
            }
            Delivery::Gap(n) => {
                self.metrics.recoveries_requested.increment(n as u64);
                tracing::warn!(
                    channel,
                    offset = publication.offset,
                    subscribers = n,
                    "publications missed on the way to this node: subscribers recover"
                );
            }
        }
    }

    fn node(&self) -> Option<Node> {
        self.node
            .get()
            .and_then(std::sync::Weak::upgrade)
            .map(|inner| Node { inner })
    }
}

impl BrokerEventHandler for Fanout {
    fn handle_publication(&self, channel: &str, publication: &Publication) {
        self.deliver(channel, publication, None);
    }

    fn handle_stream_publication(&self, channel: &str, publication: &Publication, epoch: &str) {
        self.deliver(channel, publication, Some(epoch));
    }

    fn handle_reconnect(&self) {
        // Publications sent while this node was cut off never arrive. Until each
        // channel's position is confirmed, a publication without an epoch makes its
        // subscribers recover; the check runs off the delivery path.
        self.hub.distrust_all();
        if let Some(node) = self.node() {
            let tracker = node.inner.tracker.clone();
            tracker.spawn(async move { node.check_positions().await });
        }
    }

    fn handle_join(&self, channel: &str, info: &ClientInfo) {
        let bytes = Bytes::from(
            Reply::push(Push {
                channel: channel.to_string(),
                join: Some(JoinLeave { info: info.clone() }),
                ..Default::default()
            })
            .to_json(),
        );
        let n = self.hub.join_leave(channel, &bytes, None);
        self.metrics.messages_sent.increment(n as u64);
    }

    fn handle_control(&self, data: &[u8]) {
        if let Some(node) = self.node() {
            crate::control::handle(&node, data);
        }
    }

    fn handle_leave(&self, channel: &str, info: &ClientInfo) {
        let bytes = Bytes::from(
            Reply::push(Push {
                channel: channel.to_string(),
                leave: Some(JoinLeave { info: info.clone() }),
                ..Default::default()
            })
            .to_json(),
        );
        let n = self.hub.join_leave(channel, &bytes, None);
        self.metrics.messages_sent.increment(n as u64);
    }
}

impl Node {
    /// Starts building a node with this configuration.
    pub fn builder(config: Config) -> NodeBuilder {
        NodeBuilder { config, rpc: None }
    }

    /// A node with default extras.
    pub fn new(config: Config) -> Node {
        Self::builder(config).build()
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The token verifiers.
    pub fn auth(&self) -> &crate::auth::Auth {
        &self.inner.auth
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Fired when shutdown begins; long-lived tasks select on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Unique id of this node process.
    pub fn uid(&self) -> &str {
        &self.inner.uid
    }

    /// Publishes data to a channel and returns its stream position.
    ///
    /// # Errors
    /// 107/102 for a bad channel; internal errors from the broker.
    pub async fn publish(&self, req: PublishRequest) -> Result<StreamPosition, NodeError> {
        let item = self.prepare_publish(req)?;
        Ok(self
            .inner
            .broker
            .publish(&item.channel, item.publication, item.opts)
            .await?)
    }

    /// Publishes several publications at once and returns one result per request,
    /// in order. With `ordered` they are applied in the order given; the broker
    /// gets them in one call (for Redis: one pipeline, one round trip).
    pub async fn publish_many(
        &self,
        reqs: Vec<PublishRequest>,
        ordered: bool,
    ) -> Vec<Result<StreamPosition, NodeError>> {
        let mut out: Vec<Option<Result<StreamPosition, NodeError>>> =
            Vec::with_capacity(reqs.len());
        let mut items = Vec::with_capacity(reqs.len());
        for req in reqs {
            match self.prepare_publish(req) {
                Ok(item) => {
                    items.push(item);
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let mut results = self
            .inner
            .broker
            .publish_batch(items, ordered)
            .await
            .into_iter();
        out.into_iter()
            .map(|slot| match slot {
                Some(r) => r,
                None => match results.next() {
                    Some(r) => r.map_err(NodeError::from),
                    None => Err(NodeError::Backend(
                        "broker returned fewer results than publications".into(),
                    )),
                },
            })
            .collect()
    }

    /// Checks the channel and turns a request into what the broker publishes.
    fn prepare_publish(&self, req: PublishRequest) -> Result<BatchPublish, NodeError> {
        let ch = channel::resolve(&self.inner.config, &req.channel)?;
        let opts = if req.skip_history || !ch.history_enabled() {
            PublishOptions::default()
        } else {
            PublishOptions {
                history_size: ch.options.history_size,
                history_ttl: ch.options.history_ttl,
                idempotency_key: None,
            }
        };
        let opts = PublishOptions {
            idempotency_key: req.idempotency_key.filter(|k| !k.is_empty()),
            ..opts
        };
        let publication = Publication {
            data: Some(req.data),
            info: req.info,
            tags: req.tags,
            ..Default::default()
        };
        Ok(BatchPublish {
            channel: req.channel,
            publication,
            opts,
        })
    }

    /// Reads a channel's history.
    ///
    /// # Errors
    /// 108 when the channel keeps no history; 112 for a position no longer in it.
    pub async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, NodeError> {
        let ch = channel::resolve(&self.inner.config, channel)?;
        if !ch.history_enabled() {
            return Err(codes::ERROR_NOT_AVAILABLE.into());
        }
        Ok(self.inner.broker.history(channel, filter).await?)
    }

    /// Removes a channel's publications.
    ///
    /// # Errors
    /// 108 when the channel keeps no history.
    pub async fn remove_history(&self, channel: &str) -> Result<(), NodeError> {
        let ch = channel::resolve(&self.inner.config, channel)?;
        if !ch.history_enabled() {
            return Err(codes::ERROR_NOT_AVAILABLE.into());
        }
        Ok(self.inner.broker.remove_history(channel).await?)
    }

    /// Who is in a channel.
    ///
    /// # Errors
    /// 108 when presence is off for the channel.
    pub async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, NodeError> {
        let ch = channel::resolve(&self.inner.config, channel)?;
        if !ch.options.presence {
            return Err(codes::ERROR_NOT_AVAILABLE.into());
        }
        Ok(self.inner.presence.presence(channel).await?)
    }

    /// How many clients and users are in a channel.
    ///
    /// # Errors
    /// 108 when presence is off for the channel.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, NodeError> {
        let ch = channel::resolve(&self.inner.config, channel)?;
        if !ch.options.presence {
            return Err(codes::ERROR_NOT_AVAILABLE.into());
        }
        Ok(self.inner.presence.stats(channel).await?)
    }

    /// Channels with subscribers on this node, with counts, filtered by a glob-like
    /// pattern (`*` matches any run of characters) when one is given.
    pub fn local_channels(&self, pattern: Option<&str>) -> Vec<(String, usize)> {
        let mut all = self.inner.hub.channels();
        if let Some(p) = pattern.filter(|p| !p.is_empty()) {
            all.retain(|(name, _)| glob_match(p, name));
        }
        all.sort();
        all
    }

    /// Channels with subscribers on any live node, with the subscriber counts added
    /// up. Nodes that do not answer within a second are left out.
    pub async fn channels(&self, pattern: Option<&str>) -> Vec<(String, usize)> {
        let mut total: HashMap<String, usize> = self.local_channels(pattern).into_iter().collect();
        let max_age = crate::control::node_max_age(self);
        let asks = self
            .inner
            .cluster
            .live_nodes(max_age)
            .into_iter()
            .map(|other| {
                let req = crate::control::Request::Channels {
                    pattern: pattern.map(str::to_owned),
                };
                let node = self.clone();
                async move {
                    crate::control::request(&node, &other.uid, req, Duration::from_secs(1)).await
                }
            });
        for reply in futures_util::future::join_all(asks).await {
            if let Ok(crate::control::Reply::Channels { channels }) = reply {
                for (name, n) in channels {
                    *total.entry(name).or_default() += n;
                }
            }
        }
        let mut all: Vec<(String, usize)> = total.into_iter().collect();
        all.sort();
        all
    }

    /// Waits, at most `within`, until the engine's broker is connected (at once
    /// for the memory engine); `false` when it is not yet.
    pub async fn wait_engine_ready(&self, within: Duration) -> bool {
        self.inner.broker.ready(within).await
    }

    /// Facts about this node.
    pub fn info(&self) -> NodeInfo {
        let reg = self.inner.registry.lock();
        NodeInfo {
            uid: self.inner.uid.clone(),
            name: self.inner.name.clone(),
            version: VERSION.to_string(),
            num_clients: reg.clients.len() as u32,
            num_users: reg.users.len() as u32,
            num_subs: self.inner.metrics.subscriptions_value(),
            num_channels: self.inner.hub.num_channels() as u32,
            uptime: self.inner.started.elapsed().as_secs(),
        }
    }

    /// This node and every other node heard from recently (see
    /// `node.info_publish_interval`), sorted by name.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let max_age = crate::control::node_max_age(self);
        let mut all = self.inner.cluster.live_nodes(max_age);
        all.push(self.info());
        all.sort_by(|a, b| a.name.cmp(&b.name).then(a.uid.cmp(&b.uid)));
        all
    }

    /// Whether `uid` is this node or a node heard from recently.
    pub fn is_live_node(&self, uid: &str) -> bool {
        uid == self.uid()
            || self
                .inner
                .cluster
                .is_live(uid, crate::control::node_max_age(self))
    }

    /// Whether this node has run long enough to have heard every live node.
    pub(crate) fn knows_the_cluster(&self) -> bool {
        self.inner.started.elapsed() >= crate::control::node_max_age(self)
    }

    /// Connections matching a user and optional client id.
    fn targets(&self, user: &str, client: Option<&str>) -> Vec<Arc<Connection>> {
        let reg = self.inner.registry.lock();
        let ids: Vec<String> = match client.filter(|c| !c.is_empty()) {
            Some(c) => vec![c.to_string()],
            None => reg
                .users
                .get(user)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
        };
        ids.iter()
            .filter_map(|id| reg.clients.get(id))
            .filter(|c| c.user() == user)
            .cloned()
            .collect()
    }

    /// Sends a user operation to every node, this one included. When the broker
    /// refuses it, this node still applies it to its own connections and the
    /// caller gets the error (the other nodes may not have it).
    async fn broadcast(
        &self,
        msg: crate::control::Message,
        apply_here: impl FnOnce(),
    ) -> Result<(), NodeError> {
        let bytes = crate::control::encode(self, msg);
        if bytes.len() > crate::control::MAX_MESSAGE {
            return Err(codes::ERROR_BAD_REQUEST.into());
        }
        match self.inner.broker.publish_control(bytes, None).await {
            Ok(()) => Ok(()),
            Err(e) => {
                apply_here();
                Err(e.into())
            }
        }
    }

    /// Disconnects a user's connections (or one of them) on every node, except
    /// those whitelisted.
    ///
    /// # Errors
    /// A backend error when the broker could not carry the request to the other
    /// nodes (this node's connections are disconnected anyway).
    pub async fn disconnect(
        &self,
        user: &str,
        client: Option<&str>,
        whitelist: &[String],
        d: Disconnect,
    ) -> Result<(), NodeError> {
        let msg = crate::control::Message::Disconnect {
            user: user.to_string(),
            client: client.map(str::to_owned),
            whitelist: whitelist.to_vec(),
            disconnect: d.clone(),
        };
        self.broadcast(msg, || {
            self.disconnect_local(user, client, whitelist, d);
        })
        .await
    }

    /// Disconnects a user's connections (or one of them) on this node, except those
    /// whitelisted. Returns how many were told to disconnect.
    pub fn disconnect_local(
        &self,
        user: &str,
        client: Option<&str>,
        whitelist: &[String],
        d: Disconnect,
    ) -> usize {
        let mut n = 0;
        for conn in self.targets(user, client) {
            if whitelist.iter().any(|w| w == &conn.client_id) {
                continue;
            }
            if conn
                .control
                .try_send(Control::Disconnect(d.clone()))
                .is_ok()
            {
                n += 1;
            } else {
                // The control queue is full: close directly, the session notices.
                conn.outbox.close(d.clone(), true);
                n += 1;
            }
        }
        n
    }

    /// Unsubscribes a user's connections (or one) from a channel, on every node.
    ///
    /// # Errors
    /// 107/102 for a bad channel; a backend error when the broker could not carry
    /// the request to the other nodes.
    pub async fn unsubscribe(
        &self,
        user: &str,
        channel: &str,
        client: Option<&str>,
    ) -> Result<(), NodeError> {
        channel::resolve(&self.inner.config, channel)?;
        let msg = crate::control::Message::Unsubscribe {
            user: user.to_string(),
            channel: channel.to_string(),
            client: client.map(str::to_owned),
        };
        self.broadcast(msg, || {
            self.unsubscribe_local(user, channel, client);
        })
        .await
    }

    /// Unsubscribes a user's connections (or one) on this node from a channel.
    /// Returns how many were asked.
    pub fn unsubscribe_local(&self, user: &str, channel: &str, client: Option<&str>) -> usize {
        if channel::resolve(&self.inner.config, channel).is_err() {
            return 0;
        }
        let mut n = 0;
        for conn in self.targets(user, client) {
            if conn
                .control
                .try_send(Control::Unsubscribe {
                    channel: channel.to_string(),
                })
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Subscribes a user's connections (or one) to a channel, server-side, on every
    /// node.
    ///
    /// # Errors
    /// 107/102 for a bad channel; a backend error when the broker could not carry
    /// the request to the other nodes.
    pub async fn subscribe(
        &self,
        user: &str,
        req: ServerSubscribe,
        client: Option<&str>,
    ) -> Result<(), NodeError> {
        channel::resolve(&self.inner.config, &req.channel)?;
        let msg = crate::control::Message::Subscribe {
            user: user.to_string(),
            channel: req.channel.clone(),
            client: client.map(str::to_owned),
            info: req.info.clone(),
            data: req.data.clone(),
        };
        self.broadcast(msg, || {
            self.subscribe_local(user, req, client);
        })
        .await
    }

    /// Subscribes a user's connections (or one) on this node to a channel. Returns
    /// how many were asked.
    pub fn subscribe_local(&self, user: &str, req: ServerSubscribe, client: Option<&str>) -> usize {
        if channel::resolve(&self.inner.config, &req.channel).is_err() {
            return 0;
        }
        let mut n = 0;
        for conn in self.targets(user, client) {
            if conn
                .control
                .try_send(Control::Subscribe(Box::new(req.clone())))
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Starts the node's coarse timers: the heartbeat to other nodes, the presence
    /// refresh and the channel position check. One task each for the whole node,
    /// not one per connection; each stops at shutdown.
    fn start_timers(&self) {
        let cfg = &self.inner.config;
        let every =
            |period: Duration,
             node: Node,
             job: fn(Node) -> futures_util::future::BoxFuture<'static, ()>| {
                let token = node.inner.shutdown.clone();
                let tracker = node.inner.tracker.clone();
                tracker.spawn(async move {
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = token.cancelled() => break,
                            _ = tick.tick() => job(node.clone()).await,
                        }
                    }
                });
            };
        every(cfg.node.info_publish_interval, self.clone(), |node| {
            Box::pin(async move { crate::control::publish_info(&node).await })
        });
        every(cfg.client.presence_update_interval, self.clone(), |node| {
            Box::pin(async move { node.refresh_presence().await })
        });
        every(
            cfg.client.channel_position_check_delay,
            self.clone(),
            |node| Box::pin(async move { node.check_positions().await }),
        );
    }

    /// A snapshot of every live connection, taken without holding the registry
    /// lock afterwards.
    fn all_connections(&self) -> Vec<Arc<Connection>> {
        self.inner
            .registry
            .lock()
            .clients
            .values()
            .cloned()
            .collect()
    }

    /// Re-adds the presence entry of every live client in every channel it is in,
    /// so the entries outlive the engine's presence TTL only while their node runs.
    async fn refresh_presence(&self) {
        use futures_util::StreamExt;
        let conns = self.all_connections();
        let entries = conns.into_iter().flat_map(|conn| {
            conn.presence_entries()
                .into_iter()
                .map(move |(channel, info)| (conn.clone(), channel, info))
        });
        let presence = self.inner.presence.clone();
        futures_util::stream::iter(entries)
            .for_each_concurrent(16, |(conn, channel, info)| {
                let presence = presence.clone();
                async move {
                    if let Err(e) = presence.add(&channel, info).await {
                        tracing::debug!(channel, error = %e, "presence refresh failed");
                        return;
                    }
                    // The client may have left while the entry was re-added.
                    if !conn.holds_presence(&channel) {
                        let _ = presence.remove(&channel, &conn.client_id).await;
                    }
                }
            })
            .await;
    }

    /// Compares the last position this node delivered on each channel with the
    /// broker's stream top. A channel that is behind (or in another epoch) is
    /// checked once more after a short pause, so a publication still on its way is
    /// not mistaken for a lost one; if it is still behind, its subscribers are told
    /// to resubscribe and recover.
    pub async fn check_positions(&self) {
        let suspects = self.behind(self.inner.hub.positions()).await;
        if suspects.is_empty() {
            return;
        }
        let pause = (self.inner.config.client.channel_position_check_delay / 4)
            .min(Duration::from_millis(500));
        tokio::select! {
            _ = self.inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let again: Vec<(String, StreamPosition)> = suspects
            .into_iter()
            .filter_map(|(channel, _)| {
                let last = self.inner.hub.position(&channel)?;
                Some((channel, last))
            })
            .collect();
        for (channel, top) in self.behind(again).await {
            let n = self.inner.hub.lost_place(&channel, &top);
            self.inner.metrics.recoveries_requested.increment(n as u64);
            tracing::warn!(
                channel,
                offset = top.offset,
                epoch = top.epoch,
                subscribers = n,
                "channel behind the broker's stream: subscribers recover"
            );
        }
    }

    /// The channels among `positions` whose broker stream is ahead of, or in
    /// another epoch than, the given position, with the broker's top. Those that
    /// match are confirmed in the hub.
    async fn behind(
        &self,
        positions: Vec<(String, StreamPosition)>,
    ) -> Vec<(String, StreamPosition)> {
        use futures_util::StreamExt;
        let config = self.inner.config.clone();
        futures_util::stream::iter(positions)
            .filter(|(channel, _)| {
                let keeps_history =
                    channel::resolve(&config, channel).is_ok_and(|ch| ch.history_enabled());
                std::future::ready(keeps_history)
            })
            .map(|(channel, last)| async move {
                let filter = HistoryFilter {
                    limit: Some(0),
                    ..Default::default()
                };
                let top = self
                    .inner
                    .broker
                    .history(&channel, filter)
                    .await
                    .ok()?
                    .position;
                let behind =
                    (top.epoch != last.epoch && !last.epoch.is_empty()) || top.offset > last.offset;
                if !behind {
                    self.inner.hub.confirm(&channel, &top);
                }
                behind.then_some((channel, top))
            })
            .buffer_unordered(16)
            .filter_map(std::future::ready)
            .collect()
            .await
    }

    /// Makes a session reachable by [`Node::route`].
    pub fn register_session(&self, session_id: &str, inbox: SessionInbox) {
        self.inner
            .sessions
            .lock()
            .insert(session_id.to_string(), inbox);
    }

    pub fn unregister_session(&self, session_id: &str) {
        self.inner.sessions.lock().remove(session_id);
    }

    /// Number of emulated sessions on this node.
    pub fn num_sessions(&self) -> usize {
        self.inner.sessions.lock().len()
    }

    /// Hands a frame of commands to the session that holds `session_id`.
    ///
    /// # Errors
    /// [`RouteError::NotFound`] for an unknown or closed session,
    /// [`RouteError::Busy`] when its inbox is full.
    pub fn route(&self, session_id: &str, frame: String) -> Result<(), RouteError> {
        let inbox = self
            .inner
            .sessions
            .lock()
            .get(session_id)
            .cloned()
            .ok_or(RouteError::NotFound)?;
        inbox.try_send(Ok(frame)).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => RouteError::Busy,
            tokio::sync::mpsc::error::TrySendError::Closed(_) => RouteError::NotFound,
        })
    }

    /// Admits a new client connection. Transports call it before they start a
    /// session and hold the permit for as long as the session runs.
    ///
    /// # Errors
    /// [`AdmitError`] when `client.connection_limit` connections are open or new
    /// ones arrive faster than `client.connection_rate_limit`.
    pub fn try_admit(&self) -> Result<ConnectionPermit, AdmitError> {
        let admitted = self.inner.gate.try_admit();
        if let Err(why) = admitted {
            self.inner.metrics.connection_refused(why);
            tracing::debug!(reason = %why, "connection refused");
        }
        admitted
    }

    /// Client connections on this node, counted from admission until their
    /// session ends (connected or not yet).
    pub fn num_connections(&self) -> usize {
        self.inner.gate.open()
    }

    /// Records a connected client. `false` when its user already holds
    /// `client.user_connection_limit` connections on this node (anonymous users are
    /// not counted); the check and the insert share one lock, so simultaneous
    /// connects of one user cannot overshoot.
    #[must_use]
    pub(crate) fn register(&self, conn: &Arc<Connection>) -> bool {
        let limit = self.inner.config.client.user_connection_limit;
        let mut reg = self.inner.registry.lock();
        let user = conn.user();
        if limit > 0 && !user.is_empty() && reg.users.get(user).is_some_and(|s| s.len() >= limit) {
            return false;
        }
        reg.clients.insert(conn.client_id.clone(), conn.clone());
        reg.users
            .entry(user.to_string())
            .or_default()
            .insert(conn.client_id.clone());
        true
    }

    pub(crate) fn unregister(&self, conn: &Connection) {
        let mut reg = self.inner.registry.lock();
        if reg.clients.remove(&conn.client_id).is_none() {
            return;
        }
        if let Some(set) = reg.users.get_mut(conn.user()) {
            set.remove(&conn.client_id);
            if set.is_empty() {
                reg.users.remove(conn.user());
            }
        }
    }

    /// Begins shutdown: every connection gets disconnect 3001 after what it has
    /// queued, new connections are refused, and this waits up to `shutdown.timeout`
    /// for connection tasks to finish.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        crate::control::publish_leave(self).await;
        let conns = self.all_connections();
        for conn in conns {
            conn.outbox.close(Disconnect::shutdown(), true);
        }
        self.inner.tracker.close();
        let _ = tokio::time::timeout(
            self.inner.config.shutdown.timeout,
            self.inner.tracker.wait(),
        )
        .await;
    }

    /// Tracks a connection task so shutdown waits for it.
    pub fn spawn_connection<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.tracker.spawn(fut);
    }

    /// True once shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob_patterns() {
        assert!(glob_match("chat:*", "chat:room"));
        assert!(glob_match("*room*", "chat:room1"));
        assert!(!glob_match("chat:*", "news"));
        assert!(glob_match("news", "news"));
    }
}
