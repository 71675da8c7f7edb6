//! The engine a node runs on: the [`Broker`], [`PresenceManager`] and
//! [`OccupancyTracker`] that `engine.type` names, and their background jobs.
//!
//! `memory` keeps everything in this process (one node). `redis` and `nats` join
//! nodes through a shared server. Each engine has its folder here; the traits they
//! implement live in [`crate::broker`] and [`crate::presence`], and none of them
//! knows the node.
//!
//! This module is the only place that knows the engine kinds ([`build`]). It also
//! holds the one shape of a publication that reaches the node through the engine
//! instead of the HTTP API (a backend writing to Redis or NATS, see
//! docs/engines.md): [`IngestPublish`], answered through [`Ingest`].

pub(crate) mod epoch;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tidings_protocol::{RawJson, StreamPosition};
use tokio_util::sync::CancellationToken;

use self::memory::{MemoryBroker, MemoryOccupancy, MemoryPresenceManager};
use crate::broker::Broker;
use crate::config::{Config, EngineKind};
use crate::occupancy::OccupancyTracker;
use crate::presence::PresenceManager;

/// A publication a backend handed to the engine rather than to the HTTP API. Its
/// JSON is the envelope backends write (`XADD <prefix>.publish * payload <json>` on
/// Redis, a request to `<prefix>.publish` on NATS).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct IngestPublish {
    pub channel: String,
    pub data: RawJson,
    /// As the API's `idempotency_key`: a retry within the window publishes once.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    /// As the API's `delta`: delta subscribers get a fossil delta.
    #[serde(default)]
    pub delta: bool,
}

/// Why an [`IngestPublish`] was not published.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// It never can be (unknown channel, publishing not allowed, …): the engine
    /// drops it, or answers the backend with this error.
    #[error("rejected: {} ({})", .0.message, .0.code)]
    Rejected(tidings_protocol::Error),
    /// It failed this time (the broker is down, the node is stopping): the engine
    /// may try again later, and answers a backend that waits with error 100.
    #[error("failed: {0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The node's publish path, for [`IngestPublish`]es: the same checks, options and
/// history as an API publish. Given to the engine once, by [`Engine::start`].
pub type Ingest = Arc<
    dyn Fn(IngestPublish) -> BoxFuture<'static, Result<StreamPosition, IngestError>> + Send + Sync,
>;

/// What the engine's background jobs need from the node, handed over once by
/// [`Engine::start`].
pub struct EngineHooks {
    /// Publishes what backends hand to the engine (Redis stream consumer, NATS
    /// `<prefix>.publish`).
    pub ingest: Ingest,
    /// Cancelled when the node shuts down: every job of the engine stops.
    pub shutdown: CancellationToken,
    /// Whether this node has subscribers on a channel: the memory engine's sweep
    /// keeps the streams of such channels even when nobody published to them.
    pub has_local_subscribers: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

/// A node's broker and presence manager, and the jobs that run beside them.
pub struct Engine {
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn PresenceManager>,
    /// Cluster-wide holders of keys (channel occupancy, presence members), for
    /// the webhooks' first/last events.
    pub occupancy: Arc<dyn OccupancyTracker>,
    /// Starts the engine's own background jobs (sweeps, consumers); taken by the
    /// first [`Engine::start`]. A plain mutex: taken once, never held across an
    /// await.
    jobs: Mutex<Option<Jobs>>,
}

/// What [`Engine::start`] runs, chosen by [`build`] for the engine's kind.
type Jobs = Box<dyn FnOnce(EngineHooks) + Send>;

impl Engine {
    fn new(
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceManager>,
        occupancy: Arc<dyn OccupancyTracker>,
        jobs: Jobs,
    ) -> Self {
        Self {
            broker,
            presence,
            occupancy,
            jobs: Mutex::new(Some(jobs)),
        }
    }

    /// Starts the engine's background jobs: the memory engine's sweep of idle
    /// streams, the NATS sweep of unneeded streams, and the ingest of the Redis
    /// stream consumer or the NATS `<prefix>.publish` subscription. Call once,
    /// after [`Broker::run`] (the Redis consumer is named after the node); later
    /// calls do nothing. The jobs stop when `hooks.shutdown` is cancelled.
    pub fn start(&self, hooks: EngineHooks) {
        let jobs = self.jobs.lock().take();
        if let Some(jobs) = jobs {
            jobs(hooks);
        }
    }
}

/// Why [`build`] could not make the engine.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `engine.type` names an engine this build of tidings leaves out.
    #[error(
        "engine.type {kind:?} is not available: tidings was built without the `{feature}` feature"
    )]
    NotBuiltIn {
        kind: &'static str,
        feature: &'static str,
    },
    /// The engine's settings cannot be used (an address that does not parse, TLS
    /// files); the message names the setting.
    #[error("{0}")]
    Settings(String),
}

/// Builds the engine the configuration names. Must run inside a Tokio runtime
/// (the networked engines start connecting at once, in the background).
///
/// # Errors
/// [`BuildError`] when the kind is not available or its settings cannot be used.
pub fn build(config: &Config) -> Result<Engine, BuildError> {
    match config.engine.kind {
        EngineKind::Memory => Ok(build_memory(config)),
        EngineKind::Redis => build_redis(config),
        EngineKind::Nats => build_nats(config),
    }
}

/// Each channel's `history_meta_ttl`, from its namespace or `channel.*`.
fn meta_ttl(config: &Config) -> crate::broker::MetaTtl {
    let config = config.clone();
    crate::broker::MetaTtl::per_channel(move |channel| config.history_meta_ttl_of(channel))
}

fn build_memory(config: &Config) -> Engine {
    let broker = Arc::new(MemoryBroker::new(meta_ttl(config)));
    let sweeper = broker.clone();
    Engine::new(
        broker,
        Arc::new(MemoryPresenceManager::new()),
        Arc::new(MemoryOccupancy::new()),
        Box::new(move |hooks| sweeper.start_sweeper(hooks.has_local_subscribers, hooks.shutdown)),
    )
}

#[cfg(feature = "redis")]
fn build_redis(config: &Config) -> Result<Engine, BuildError> {
    use self::redis::shards::Shards;
    use self::redis::{RedisBroker, RedisOccupancy, RedisPresenceManager};

    let cfg = &config.engine.redis;
    // Broker, presence and occupancy share one multiplexed command connection per
    // shard.
    let conns = Shards::connect(cfg, cfg.io_timeout).map_err(BuildError::Settings)?;
    let broker = Arc::new(RedisBroker::with_conns(
        cfg,
        meta_ttl(config),
        conns.clone(),
    ));
    let consumer = broker.clone();
    Ok(Engine::new(
        broker,
        Arc::new(RedisPresenceManager::with_conns(cfg, conns.clone())),
        Arc::new(RedisOccupancy::with_conn(cfg, conns.first().clone())),
        Box::new(move |hooks| consumer.start_ingest(hooks.ingest, hooks.shutdown)),
    ))
}

#[cfg(feature = "nats")]
fn build_nats(config: &Config) -> Result<Engine, BuildError> {
    use self::nats::{NatsBroker, NatsConnection, NatsOccupancy, NatsPresenceManager};

    let conn = NatsConnection::start(&config.engine.nats).map_err(BuildError::Settings)?;
    let broker = Arc::new(NatsBroker::new(conn.clone()).with_meta_ttl(meta_ttl(config)));
    let jobs = broker.clone();
    Ok(Engine::new(
        broker,
        Arc::new(NatsPresenceManager::new(conn.clone())),
        Arc::new(NatsOccupancy::new(conn)),
        Box::new(move |hooks| {
            jobs.set_ingest(hooks.ingest);
            jobs.start_sweeper(hooks.shutdown);
        }),
    ))
}

#[cfg(not(feature = "redis"))]
fn build_redis(_: &Config) -> Result<Engine, BuildError> {
    Err(BuildError::NotBuiltIn {
        kind: "redis",
        feature: "redis",
    })
}

#[cfg(not(feature = "nats"))]
fn build_nats(_: &Config) -> Result<Engine, BuildError> {
    Err(BuildError::NotBuiltIn {
        kind: "nats",
        feature: "nats",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine_of(kind: EngineKind) -> Result<Engine, BuildError> {
        let mut config = Config::development();
        config.engine.kind = kind;
        build(&config)
    }

    #[tokio::test]
    async fn an_engine_left_out_of_the_build_names_the_missing_feature() {
        for (kind, built) in [
            (EngineKind::Redis, cfg!(feature = "redis")),
            (EngineKind::Nats, cfg!(feature = "nats")),
        ] {
            let kind_name = kind.as_str();
            match engine_of(kind) {
                Ok(_) => assert!(built, "{kind_name} built without its feature"),
                Err(e) => {
                    assert!(!built, "{kind_name}: {e}");
                    assert_eq!(
                        e.to_string(),
                        format!(
                            "engine.type \"{kind_name}\" is not available: tidings was built \
                             without the `{kind_name}` feature"
                        )
                    );
                }
            }
        }
        assert!(engine_of(EngineKind::Memory).is_ok());
    }
}
