//! Picks the [`Broker`] and [`PresenceManager`] that `engine.type` names.
//!
//! `memory` keeps everything in this process (one node). `redis` and `nats` join
//! nodes through a shared server. Each engine has its folder here; the traits they
//! implement live in [`crate::broker`] and [`crate::presence`].

pub(crate) mod epoch;
pub mod memory;
pub mod nats;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};

use futures_util::future::BoxFuture;
use tidings_protocol::{RawJson, StreamPosition};
use tokio_util::sync::CancellationToken;

use self::memory::{MemoryBroker, MemoryPresenceManager};
use self::nats::{NatsBroker, NatsConnection, NatsPresenceManager};
use self::redis::conn::RedisConn;
use self::redis::{RedisBroker, RedisPresenceManager};
use crate::broker::Broker;
use crate::config::Config;
use crate::node::{Node, NodeError, NodeInner, PublishRequest};
use crate::presence::PresenceManager;
/// The node's publish path, for publications that reach the node through the
/// engine instead of the HTTP API (a backend writing to NATS `<prefix>.publish`):
/// the same checks, options and history as an API publish.
pub type Ingest = Arc<
    dyn Fn(
            crate::node::PublishRequest,
        ) -> BoxFuture<'static, Result<StreamPosition, tidings_protocol::Error>>
        + Send
        + Sync,
>;

/// Where `Node::build` puts its [`Ingest`] once the node exists; an engine that
/// takes publishes from backends reads it for each one.
pub type IngestSlot = Arc<OnceLock<Ingest>>;

/// A node's broker and presence manager.
pub struct Engine {
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn PresenceManager>,
    /// The memory broker, when that is the engine, for the node's periodic sweep of
    /// idle streams (the networked engines expire their data on the server).
    pub memory: Option<Arc<MemoryBroker>>,
    /// Filled by `Node::build` with the node's publish path (see [`Ingest`]).
    pub ingest: IngestSlot,
    /// Starts the engine's direct-publish consumer (publishes that backends put
    /// straight into the engine, see docs/engines.md), when the engine has one.
    /// The node calls it once, with its publish path and its shutdown token.
    pub direct_publish: Option<Box<dyn FnOnce(DirectPublisher, CancellationToken) + Send>>,
}

/// A publication a backend handed to the engine directly (not through the API).
#[derive(Debug, Clone)]
pub struct DirectPublish {
    pub channel: String,
    pub data: RawJson,
    pub idempotency_key: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
}

/// Why a direct publish did not happen.
#[derive(Debug, Clone)]
pub enum DirectPublishError {
    /// It never can (bad channel, …): the engine drops the message.
    Rejected(String),
    /// The backend failed: the engine may try again later.
    Failed(String),
}

/// The node's publish path, as the engines' direct-publish consumers call it.
pub type DirectPublisher =
    Arc<dyn Fn(DirectPublish) -> BoxFuture<'static, Result<(), DirectPublishError>> + Send + Sync>;

/// The publish path of the node behind `node` (weak, so the consumer does not keep
/// the node alive), for [`Engine::direct_publish`].
pub(crate) fn node_publisher(node: Weak<NodeInner>) -> DirectPublisher {
    Arc::new(move |msg: DirectPublish| {
        let node = node.clone();
        Box::pin(async move {
            let Some(inner) = node.upgrade() else {
                return Err(DirectPublishError::Failed("node stopped".into()));
            };
            let req = PublishRequest {
                tags: msg.tags,
                idempotency_key: msg.idempotency_key,
                ..PublishRequest::new(msg.channel, msg.data)
            };
            match (Node { inner }).publish(req).await {
                Ok(_) => Ok(()),
                Err(NodeError::Protocol(code)) => {
                    Err(DirectPublishError::Rejected(code.message.to_string()))
                }
                Err(NodeError::Backend(e)) => Err(DirectPublishError::Failed(e)),
            }
        })
    })
}

/// Builds the engine the configuration names. `Config::validate` has already
/// refused unknown engine types.
///
/// # Errors
/// A message when the engine's settings cannot be used (bad address, TLS files).
pub fn build(config: &Config) -> Result<Engine, String> {
    match config.engine.kind.as_str() {
        "memory" => {
            let memory = Arc::new(MemoryBroker::new(config.channel.history_meta_ttl));
            Ok(Engine {
                broker: memory.clone(),
                presence: Arc::new(MemoryPresenceManager::new()),
                memory: Some(memory),
                ingest: IngestSlot::default(),
                direct_publish: None,
            })
        }
        "nats" => {
            let conn = NatsConnection::start(&config.engine.nats)?;
            let ingest = IngestSlot::default();
            let broker = Arc::new(
                NatsBroker::new(conn.clone(), ingest.clone())
                    .with_meta_ttl(config.channel.history_meta_ttl),
            );
            broker.start_sweeper();
            Ok(Engine {
                broker,
                presence: Arc::new(NatsPresenceManager::new(conn)),
                memory: None,
                ingest,
                direct_publish: None,
            })
        }
        "redis" => {
            let cfg = &config.engine.redis;
            // Broker and presence share one multiplexed command connection.
            let conn = Arc::new(RedisConn::new(cfg, cfg.io_timeout)?);
            let broker = Arc::new(RedisBroker::with_conn(
                cfg,
                config.channel.history_meta_ttl,
                conn.clone(),
            ));
            let ingest = broker.clone();
            Ok(Engine {
                broker,
                presence: Arc::new(RedisPresenceManager::with_conn(cfg, conn)),
                memory: None,
                ingest: IngestSlot::default(),
                direct_publish: Some(Box::new(move |publisher, stop| {
                    ingest.start_ingest(publisher, stop);
                })),
            })
        }
        other => Err(format!("engine.type {other:?} is not available")),
    }
}
