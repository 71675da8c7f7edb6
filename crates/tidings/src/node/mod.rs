//! The [`Node`]: owner of the hub, the broker, presence, configuration and metrics.
//!
//! Its methods are the library's API (publish, history, presence, disconnect, …)
//! and the only way into the core: the front doors (the Centrifugo session, the
//! Socket.IO session), the transports and the server HTTP API call them and never
//! reach the hub, the broker or presence directly. A `Node` is a cheap handle
//! (`Clone`); every clone is the same node.
//!
//! - [`membership`]: joining and leaving channels, for every front door;
//! - [`users`]: the registry of clients and the server API's user operations;
//! - [`upkeep`]: the node's timers (heartbeat, presence refresh, position check);
//! - [`delivery`]: what the broker delivers, handed to the hub;
//! - [`cluster`]: messages and requests between nodes;
//! - `proxies`: the calls to the backend proxies ([`crate::proxy`]);
//! - `webhooks`: the events the webhooks get ([`crate::webhook`]), and the
//!   cluster-wide occupancy behind the first/last ones;
//! - [`online`]: users' online status, tracked by that same occupancy.

mod cluster;
mod delivery;
pub mod membership;
pub mod online;
mod proxies;
mod upkeep;
mod users;
mod webhooks;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tidings_protocol::codes::{self, ErrorCode};
use tidings_protocol::{ClientInfo, Disconnect, Publication, RawJson, StreamPosition};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{BatchPublish, Broker, BrokerError, PublishOptions};
pub use crate::broker::{HistoryFilter, HistoryPage};
use crate::channel;
use crate::config::Config;
use crate::hub::Hub;
pub use crate::hub::{
    centrifugo_delta_pushes, centrifugo_pushes, json_delta_full, JsonPushes, ProtobufPushes,
    PushEncoder, Shape, JSON_PUSHES, PROTOBUF_PUSHES,
};
use crate::limit::{AdmitError, ConnectionGate, ConnectionPermit};
use crate::metrics::Metrics;
use crate::presence::PresenceManager;
pub use crate::presence::PresenceStats;
pub use cluster::{ForwardError, RequestHandler, MAX_REPLY_BODY as MAX_FORWARDED_BODY};
pub use membership::{JoinRequest, Joined, Member, Pending, StreamAsk};
pub use proxies::ConnectEvent;

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
    /// Deliver as a fossil delta to subscribers that negotiated one (the
    /// namespace's `delta_publish` marks every publication so).
    pub delta: bool,
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
            delta: false,
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

/// What a node owns. Private to this module: everything outside reaches it
/// through [`Node`]'s methods.
struct NodeInner {
    config: Arc<Config>,
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    presence: Arc<dyn PresenceManager>,
    metrics: Arc<Metrics>,
    /// Fired once when the node starts shutting down.
    shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them to drain.
    tracker: TaskTracker,
    uid: String,
    name: String,
    started: Instant,
    // A plain mutex: held only for map updates at connect/disconnect time.
    clients: Mutex<users::Clients>,
    /// Counts client connections and applies the connection and connection-rate
    /// limits before a transport starts a session.
    gate: ConnectionGate,
    /// The per-node state of front doors and transports (their session
    /// registries), one value per type, so that the core names none of them. A
    /// plain mutex: a lookup per request.
    front_doors: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    rpc: Option<RpcHandler>,
    /// Token verifiers (keys parsed once; the JWKS cache lives here).
    auth: Arc<crate::auth::Auth>,
    /// Other nodes and requests to them (see [`cluster`]).
    cluster: cluster::Cluster,
    /// The backend proxies the configuration uses.
    proxies: crate::proxy::Proxies,
    /// Cluster-wide holders of channels and presence members (the engine's).
    occupancy: Arc<dyn crate::occupancy::OccupancyTracker>,
    /// The configured webhooks; `None` without any.
    webhooks: Option<Arc<crate::webhook::Webhooks>>,
    /// What the node tracks for the webhooks' first/last events; `None` when no
    /// webhook wants them.
    tracking: Option<webhooks::Tracking>,
    /// Channels whose broker subscription the node's first subscriber is making:
    /// the others joining meanwhile wait for it (see [`Node::join`]). A plain
    /// mutex: an insert and a remove per first subscribe, a lookup per other.
    subscribing: Subscribing,
}

/// Channel → a receiver that turns `true` once the broker subscription is made
/// (or closes when it failed); see [`NodeInner::subscribing`].
type Subscribing = Mutex<HashMap<String, tokio::sync::watch::Receiver<bool>>>;

/// A Tidings node. See the module docs.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

/// A handle that does not keep the node alive (for tasks and callbacks the node
/// itself owns).
#[derive(Clone)]
pub struct WeakNode(std::sync::Weak<NodeInner>);

impl WeakNode {
    /// The node, while it exists.
    pub fn upgrade(&self) -> Option<Node> {
        self.0.upgrade().map(|inner| Node { inner })
    }
}

/// Builds a [`Node`].
pub struct NodeBuilder {
    config: Config,
    rpc: Option<RpcHandler>,
}

impl NodeBuilder {
    /// Handles `rpc` commands from clients; without one they go to the RPC proxy,
    /// or get error 108.
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
        let events = Arc::new(delivery::BrokerEvents {
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
            // The binary checks this (`Auth::check`) after loading; a config that
            // skipped it gets a node that accepts no token rather than one that accepts any.
            tracing::error!(error = %e, "token configuration unusable: every token will be refused");
            crate::auth::Auth::reject_all()
        });
        let proxies = crate::proxy::Proxies::from_config(&config);
        let uid = uuid::Uuid::new_v4().to_string();
        let webhooks =
            crate::webhook::Webhooks::from_config(&config.webhooks, &uid, metrics.clone());
        let tracking = webhooks::Tracking::new(webhooks.as_deref(), config.online_status.enabled);
        let inner = Arc::new(NodeInner {
            config,
            hub,
            broker,
            presence: engine.presence.clone(),
            metrics,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            uid,
            name,
            started: Instant::now(),
            clients: Mutex::new(users::Clients::default()),
            gate,
            front_doors: Mutex::new(HashMap::new()),
            rpc: self.rpc,
            auth: Arc::new(auth),
            cluster: Default::default(),
            proxies,
            occupancy: engine.occupancy.clone(),
            webhooks,
            tracking,
            subscribing: Mutex::new(HashMap::new()),
        });
        let _ = events.node.set(Arc::downgrade(&inner));
        inner.broker.run(&inner.uid, events);
        // Publishes that reach the node through the engine (a backend writing to
        // the engine directly) take the API's path; weak, so the engine does not
        // keep the node alive.
        let weak = Arc::downgrade(&inner);
        let ingest: crate::engine::Ingest = Arc::new(move |msg| {
            let node = weak.upgrade().map(|inner| Node { inner });
            Box::pin(async move {
                use crate::engine::IngestError;
                let node = node.ok_or_else(|| IngestError::Failed("node stopped".into()))?;
                let req = PublishRequest {
                    tags: msg.tags,
                    idempotency_key: msg.idempotency_key,
                    delta: msg.delta,
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
        node.start_timers();
        if let Some(hooks) = &node.inner.webhooks {
            hooks.start();
        }
        node.start_tracking();
        node
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

    /// The configuration, shared (for callbacks that outlive a borrow).
    pub fn config_arc(&self) -> Arc<Config> {
        self.inner.config.clone()
    }

    /// A handle that does not keep the node alive.
    pub fn downgrade(&self) -> WeakNode {
        WeakNode(Arc::downgrade(&self.inner))
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
        let started = Instant::now();
        let result = self
            .inner
            .broker
            .publish(&item.channel, item.publication, item.opts)
            .await;
        self.engine_timed("publish", started);
        Ok(result?)
    }

    /// Records how long an engine call that started at `started` took.
    fn engine_timed(&self, op: &'static str, started: Instant) {
        self.inner.metrics.engine_duration(op, started.elapsed());
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
        let started = Instant::now();
        let results = self.inner.broker.publish_batch(items, ordered).await;
        self.engine_timed("publish_batch", started);
        let mut results = results.into_iter();
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
            delta: req.delta || ch.options.delta_publish,
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
        let started = Instant::now();
        let page = self.inner.broker.history(channel, filter).await;
        self.engine_timed("history", started);
        let mut page = page?;
        // A publisher's delta mark is for live delivery only.
        for p in &mut page.publications {
            p.delta = false;
        }
        Ok(page)
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
        let started = Instant::now();
        let removed = self.inner.broker.remove_history(channel).await;
        self.engine_timed("remove_history", started);
        Ok(removed?)
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
        let started = Instant::now();
        let presence = self.inner.presence.presence(channel).await;
        self.engine_timed("presence", started);
        Ok(presence?)
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
        let started = Instant::now();
        let stats = self.inner.presence.stats(channel).await;
        self.engine_timed("presence_stats", started);
        Ok(stats?)
    }

    /// Channels with subscribers on this node, with counts, filtered by a glob-like
    /// pattern (`*` matches any run of characters) when one is given.
    pub fn local_channels(&self, pattern: Option<&str>) -> Vec<(String, usize)> {
        let mut all = self.inner.hub.channels();
        if let Some(p) = pattern.filter(|p| !p.is_empty()) {
            all.retain(|(name, _)| channel::glob_match(p, name));
        }
        all.sort();
        all
    }

    /// Channels with subscribers on any live node, with the subscriber counts added
    /// up. Nodes that do not answer within a second are left out.
    pub async fn channels(&self, pattern: Option<&str>) -> Vec<(String, usize)> {
        let mut total: HashMap<String, usize> = self.local_channels(pattern).into_iter().collect();
        let max_age = cluster::node_max_age(self);
        let asks = self
            .inner
            .cluster
            .live_nodes(max_age)
            .into_iter()
            .map(|other| {
                let req = cluster::Request::Channels {
                    pattern: pattern.map(str::to_owned),
                };
                let node = self.clone();
                async move {
                    cluster::request_reply(&node, &other.uid, req, Duration::from_secs(1)).await
                }
            });
        for reply in futures_util::future::join_all(asks).await {
            if let Ok(cluster::Reply::Channels { channels }) = reply {
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
        let reg = self.inner.clients.lock();
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
        let max_age = cluster::node_max_age(self);
        let mut all = self.inner.cluster.live_nodes(max_age);
        all.push(self.info());
        all.sort_by(|a, b| a.name.cmp(&b.name).then(a.uid.cmp(&b.uid)));
        all
    }

    /// Whether `uid` is this node or a node heard from recently.
    pub fn is_live_node(&self, uid: &str) -> bool {
        uid == self.uid() || self.inner.cluster.is_live(uid, cluster::node_max_age(self))
    }

    /// Whether this node has run long enough to have heard every live node.
    pub(crate) fn knows_the_cluster(&self) -> bool {
        self.inner.started.elapsed() >= cluster::node_max_age(self)
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

    /// Takes a slot of `client.connection_limit` for a request whose body is still
    /// arriving (see [`ConnectionGate::try_hold`](crate::limit::ConnectionGate::try_hold)).
    ///
    /// # Errors
    /// [`AdmitError::ConnectionLimit`] when every slot is taken.
    pub fn try_hold_for_body(&self) -> Result<ConnectionPermit, AdmitError> {
        let held = self.inner.gate.try_hold();
        if let Err(why) = held {
            self.inner.metrics.connection_refused(why);
            tracing::debug!(reason = %why, "request body refused");
        }
        held
    }

    /// Client connections on this node, counted from admission until their
    /// session ends (connected or not yet), and requests whose body is still
    /// arriving.
    pub fn num_connections(&self) -> usize {
        self.inner.gate.open()
    }

    /// The per-node state of type `T` of a front door or transport (a session
    /// registry, say), created with `T::default()` on first use. The core keeps
    /// it without knowing the type.
    pub fn front_door_state<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut map = self.inner.front_doors.lock();
        let entry = map
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()));
        match Arc::clone(entry).downcast::<T>() {
            Ok(state) => state,
            // Entries are keyed by their own type, so this cannot happen; a fresh
            // value keeps the caller working if it ever did.
            Err(_) => Arc::new(T::default()),
        }
    }

    /// Whether `rpc` commands have a handler in this node.
    pub fn has_rpc_handler(&self) -> bool {
        self.inner.rpc.is_some()
    }

    /// Runs the node's RPC handler.
    ///
    /// # Errors
    /// The handler's error; 108 "not available" without a handler (the RPC proxy
    /// is [`Node::rpc`]'s).
    pub async fn call_rpc(&self, req: RpcRequest) -> Result<RawJson, tidings_protocol::Error> {
        match self.inner.rpc.clone() {
            Some(handler) => handler(req).await,
            None => Err(codes::ERROR_NOT_AVAILABLE.into()),
        }
    }

    /// Begins shutdown: every connection gets disconnect 3001 after what it has
    /// queued, new connections are refused, and this waits up to `shutdown.timeout`
    /// for connection tasks to finish.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        cluster::publish_leave(self).await;
        let conns = self.all_connections();
        for conn in conns {
            conn.outbox.close_after_queued(Disconnect::shutdown());
        }
        self.inner.tracker.close();
        let _ = tokio::time::timeout(
            self.inner.config.shutdown.timeout,
            self.inner.tracker.wait(),
        )
        .await;
        // The leaves of the drained connections, then one more try to deliver.
        self.finish_webhooks(self.inner.config.shutdown.timeout)
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
