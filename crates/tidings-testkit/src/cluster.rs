//! Several `tidings` nodes joined through one private broker: what a user runs
//! behind a load balancer.
//!
//! [`Cluster::start`] starts a `redis-server` or `nats-server -js` child and three
//! nodes configured for that engine, with a key/subject prefix of their own (so
//! tests never see each other's data) and short heartbeat, presence-refresh and
//! position-check intervals. The broker and each node can be killed with SIGKILL
//! and started again, to prove what happens when a machine dies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, Instant};

use crate::brokers::{NatsServer, RedisServer};
use crate::profile::open_config;
use crate::redis_cluster::RedisClusterSet;
use crate::sentinel::{RedisSentinelSet, SENTINEL_MASTER_NAME};
use crate::server::TidingsServer;

/// The API key every node of a test cluster uses.
pub const CLUSTER_API_KEY: &str = "cluster-api-key";

/// The HMAC secret every node of a test cluster uses.
pub const CLUSTER_SECRET: &str = "cluster-secret";

/// Makes prefixes unique within one test process.
static NEXT_PREFIX: AtomicU64 = AtomicU64::new(0);

/// Which engine joins the nodes, and for Redis, in which topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// One `redis-server`.
    Redis,
    /// Two `redis-server`s as two shards (`engine.redis.address` lists both).
    RedisShards,
    /// One master, one replica and three sentinels ([`RedisSentinelSet`]); the
    /// nodes find the master through `engine.redis.sentinel_address`.
    RedisSentinel,
    /// A Redis Cluster of three masters ([`RedisClusterSet`]); the nodes join it
    /// through `engine.redis.cluster_address`.
    RedisCluster,
    Nats,
}

/// One `#[tokio::test]` per engine for each scenario of the calling test file: a
/// scenario is `async fn name(engine: Engine) -> anyhow::Result<()>`, and the tests
/// are `redis::name`, `redis_shards::name`, `redis_sentinel::name`,
/// `redis_cluster::name` and `nats::name`, so `cargo test redis::` picks one engine.
#[macro_export]
macro_rules! per_engine_tests {
    ($($scenario:ident),* $(,)?) => {
        $crate::per_engine_tests!(@engine redis, Redis: $($scenario),*);
        $crate::per_engine_tests!(@engine redis_shards, RedisShards: $($scenario),*);
        $crate::per_engine_tests!(@engine redis_sentinel, RedisSentinel: $($scenario),*);
        $crate::per_engine_tests!(@engine redis_cluster, RedisCluster: $($scenario),*);
        $crate::per_engine_tests!(@engine nats, Nats: $($scenario),*);
    };
    (@engine $module:ident, $variant:ident: $($scenario:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() -> anyhow::Result<()> {
                    super::$scenario($crate::Engine::$variant).await
                }
            )*
        }
    };
}

impl Engine {
    /// The `engine.type` value.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Redis | Engine::RedisShards | Engine::RedisSentinel | Engine::RedisCluster => {
                "redis"
            }
            Engine::Nats => "nats",
        }
    }

    /// A Redis engine, in any topology.
    pub fn is_redis(self) -> bool {
        self.name() == "redis"
    }
}

/// The broker processes of a cluster.
pub enum BrokerProcess {
    /// The Redis servers, one per shard (one for [`Engine::Redis`]).
    Redis(Vec<RedisServer>),
    /// Boxed: larger than the other variants.
    RedisSentinel(Box<RedisSentinelSet>),
    RedisCluster(RedisClusterSet),
    /// Boxed: much larger than the list of Redis servers.
    Nats(Box<NatsServer>),
}

/// Options of a [`Cluster`]; see [`Cluster::builder`].
pub struct ClusterBuilder {
    engine: Engine,
    nodes: usize,
    config: Value,
    /// [`Engine::RedisCluster`] with a replica per master (a failover can
    /// happen).
    redis_replicas: bool,
}

impl ClusterBuilder {
    /// How many nodes (default 3).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// For [`Engine::RedisCluster`]: give each of the three masters a replica,
    /// so killing a master makes the cluster fail over.
    pub fn redis_replicas(mut self) -> Self {
        self.redis_replicas = true;
        self
    }

    /// Changes the config every node gets (the engine section is filled in by
    /// [`ClusterBuilder::start`]).
    pub fn config(mut self, edit: impl FnOnce(&mut Value)) -> Self {
        edit(&mut self.config);
        self
    }

    /// Starts the broker, then the nodes.
    ///
    /// # Errors
    ///
    /// Fails when the broker or a node does not start.
    pub async fn start(self) -> anyhow::Result<Cluster> {
        let prefix = format!(
            "t{}x{}",
            std::process::id(),
            NEXT_PREFIX.fetch_add(1, Ordering::Relaxed)
        );
        let broker = match self.engine {
            Engine::Redis => BrokerProcess::Redis(vec![RedisServer::start().await?]),
            Engine::RedisShards => BrokerProcess::Redis(vec![
                RedisServer::start().await?,
                RedisServer::start().await?,
            ]),
            Engine::RedisSentinel => {
                BrokerProcess::RedisSentinel(Box::new(RedisSentinelSet::start().await?))
            }
            Engine::RedisCluster if self.redis_replicas => {
                BrokerProcess::RedisCluster(RedisClusterSet::start_with_replicas().await?)
            }
            Engine::RedisCluster => BrokerProcess::RedisCluster(RedisClusterSet::start().await?),
            Engine::Nats => BrokerProcess::Nats(Box::new(NatsServer::start().await?)),
        };
        let mut config = self.config;
        let engine = match &broker {
            BrokerProcess::Redis(shards) => json!({
                "type": "redis",
                "redis": {
                    "address": shards.iter().map(RedisServer::url).collect::<Vec<_>>(),
                    "prefix": prefix,
                },
            }),
            BrokerProcess::RedisSentinel(set) => json!({
                "type": "redis",
                "redis": {
                    "sentinel_address": [set.sentinel_address()],
                    "sentinel_master_name": SENTINEL_MASTER_NAME,
                    "prefix": prefix,
                },
            }),
            BrokerProcess::RedisCluster(set) => json!({
                "type": "redis",
                "redis": {
                    "cluster_address": [set.cluster_address()],
                    "prefix": prefix,
                },
            }),
            BrokerProcess::Nats(n) => json!({
                "type": "nats",
                "nats": { "url": n.url(), "prefix": prefix },
            }),
        };
        merge(&mut config, &json!({ "engine": engine }));
        let mut cluster = Cluster {
            engine: self.engine,
            broker,
            nodes: Vec::new(),
            config,
            names: 0,
        };
        for _ in 0..self.nodes {
            let node = cluster.spawn_node().await?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }
}

/// A broker and the nodes that share it.
pub struct Cluster {
    engine: Engine,
    broker: BrokerProcess,
    nodes: Vec<TidingsServer>,
    /// The config every node gets, engine section included.
    config: Value,
    /// Nodes started so far, for their names.
    names: usize,
}

/// The open development-like config with short cluster intervals.
pub fn cluster_config() -> Value {
    let mut config = open_config(CLUSTER_API_KEY, CLUSTER_SECRET);
    merge(
        &mut config,
        &json!({
            "client": {
                "presence_update_interval": "1s",
                "channel_position_check_delay": "1s",
            },
            "node": { "info_publish_interval": "300ms" },
            "long_poll": { "enabled": true, "hold": "2s" },
            "sse": { "enabled": true },
            "http_stream": { "enabled": true },
        }),
    );
    config
}

/// Copies every key of `patch` into `target`, recursing into objects.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

impl Cluster {
    /// Three nodes with [`cluster_config`] on `engine`.
    ///
    /// # Errors
    ///
    /// Fails when the broker or a node does not start.
    pub async fn start(engine: Engine) -> anyhow::Result<Self> {
        Self::builder(engine).start().await
    }

    /// Starts from [`cluster_config`] and three nodes.
    pub fn builder(engine: Engine) -> ClusterBuilder {
        ClusterBuilder {
            engine,
            nodes: 3,
            config: cluster_config(),
            redis_replicas: false,
        }
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Node `i` (0-based).
    ///
    /// # Panics
    ///
    /// When there is no such node.
    pub fn node(&self, i: usize) -> &TidingsServer {
        &self.nodes[i]
    }

    /// How many nodes the cluster has (killed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The broker process.
    pub fn broker(&mut self) -> &mut BrokerProcess {
        &mut self.broker
    }

    async fn spawn_node(&mut self) -> anyhow::Result<TidingsServer> {
        self.names += 1;
        let mut config = self.config.clone();
        merge(
            &mut config,
            &json!({ "node": { "name": format!("node-{}", self.names) } }),
        );
        TidingsServer::builder()
            .config_json(config)
            .start()
            .await
            .with_context(|| format!("starting node {}", self.names))
    }

    /// SIGKILL for node `i`: its clients lose their connections, its presence
    /// entries stay in the broker until they expire.
    ///
    /// # Errors
    ///
    /// Fails when the process cannot be killed.
    pub async fn kill9_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].kill9().await
    }

    /// Replaces node `i` with a freshly started one (a new uid and port).
    ///
    /// # Errors
    ///
    /// Fails when the new node does not start.
    pub async fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].kill9().await?;
        let fresh = self.spawn_node().await?;
        self.nodes[i] = fresh;
        Ok(())
    }

    /// SIGKILL for the broker (every shard; both data servers of a Sentinel
    /// set, so no failover helps). A restarted Redis has lost everything; a
    /// restarted NATS keeps JetStream data unless `wipe`.
    ///
    /// # Errors
    ///
    /// Fails when the process cannot be killed.
    pub async fn kill9_broker(&mut self) -> anyhow::Result<()> {
        match &mut self.broker {
            BrokerProcess::Redis(shards) => {
                for r in shards {
                    r.kill9().await?;
                }
                Ok(())
            }
            BrokerProcess::RedisSentinel(set) => set.kill9_servers().await,
            BrokerProcess::RedisCluster(set) => set.kill9_all().await,
            BrokerProcess::Nats(n) => n.kill9().await,
        }
    }

    /// Starts the broker again on the same port.
    ///
    /// # Errors
    ///
    /// Fails when it does not start.
    pub async fn restart_broker(&mut self) -> anyhow::Result<()> {
        match &mut self.broker {
            BrokerProcess::Redis(shards) => {
                for r in shards {
                    r.restart().await?;
                }
                Ok(())
            }
            BrokerProcess::RedisSentinel(set) => set.restart_servers().await,
            BrokerProcess::RedisCluster(set) => set.restart_killed().await,
            BrokerProcess::Nats(n) => n.restart(true).await,
        }
    }

    /// Throws away the broker's data (Redis `FLUSHALL`); for NATS, a wiped
    /// restart, which is the closest equivalent.
    ///
    /// # Errors
    ///
    /// Fails when the broker does not confirm.
    pub async fn lose_history(&mut self) -> anyhow::Result<()> {
        match &mut self.broker {
            BrokerProcess::Redis(shards) => {
                for r in shards {
                    redis_command(r.addr(), &["FLUSHALL"]).await?;
                }
                Ok(())
            }
            BrokerProcess::RedisSentinel(set) => set.flushall().await,
            BrokerProcess::RedisCluster(set) => set.flushall().await,
            BrokerProcess::Nats(n) => n.restart(true).await,
        }
    }

    /// Waits until every live node lists `n` nodes in `/api/info`.
    ///
    /// # Errors
    ///
    /// Fails when they do not within `limit`.
    pub async fn wait_for_nodes(&self, n: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let mut all = true;
            let mut seen = Vec::new();
            for node in self.nodes.iter().filter(|s| !s.has_exited()) {
                let count = match node.api_ok("info", json!({})).await {
                    Ok(info) => info["nodes"].as_array().map_or(0, Vec::len),
                    Err(_) => 0,
                };
                seen.push(count);
                all &= count == n;
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nodes list {seen:?} nodes, not {n}, after {limit:?}");
            }
            sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sends one command to Redis in RESP and returns the first reply line. Written
/// here in a few lines rather than pulling a Redis client into the testkit for
/// one administrative command.
///
/// # Errors
///
/// Fails on a connection error or an error reply.
pub async fn redis_command(addr: std::net::SocketAddr, args: &[&str]) -> anyhow::Result<String> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .context("connecting to redis timed out")?
            .context("connecting to redis")?;
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(cmd.as_bytes()).await?;
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .context("redis did not answer")??;
    let line = String::from_utf8_lossy(&buf[..n]).trim_end().to_string();
    if line.starts_with('-') {
        bail!("redis answered {line}");
    }
    Ok(line)
}
