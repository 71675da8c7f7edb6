//! The command connection the Redis broker, its presence manager and the ingest
//! consumer call through, one per shard: one multiplexed connection (to a fixed
//! server, to the master the sentinels name, or a cluster connection that
//! routes by slot), opened on first use, replaced after it fails, every call
//! bounded by a timeout. Also builds the `redis::Client` (address, database,
//! credentials, TLS) from the settings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Value};

use super::cluster::{ClusterTarget, CLUSTER_NODE_ID};
use super::sentinel::SentinelTarget;
use super::ENGINE;
use crate::broker::EngineError;
use crate::config::RedisEngineConfig;

/// Pause between reconnect attempts of the pub/sub connection (and of the ingest
/// consumer after a failure), doubling up to the max.
pub(super) const RECONNECT_MIN: Duration = Duration::from_millis(50);
pub(super) const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// After a failed connect, calls fail at once for this long instead of each one
/// trying (and waiting) again.
const CONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// Builds the `redis::Client` of one server `address` from the engine settings
/// (database, credentials and TLS when the address names none).
pub(super) fn client(cfg: &RedisEngineConfig, address: &str) -> Result<redis::Client, String> {
    let mut url = address.to_string();
    if cfg.tls.enabled {
        if let Some(rest) = url.strip_prefix("redis://") {
            url = format!("rediss://{rest}");
        }
    }
    if url.starts_with("rediss://") && cfg.tls.insecure_skip_verify && !url.contains('#') {
        url.push_str("#insecure");
    }
    let mut info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
        .map_err(|e| format!("engine.redis.address {address:?}: {e}"))?;
    let mut settings = info.redis_settings().clone();
    if cfg.db != 0 && settings.db() == 0 {
        settings = settings.set_db(cfg.db);
    }
    if !cfg.user.is_empty() && settings.username().is_none() {
        settings = settings.set_username(&cfg.user);
    }
    if !cfg.password.is_empty() && settings.password().is_none() {
        settings = settings.set_password(&cfg.password);
    }
    info = info.set_redis_settings(settings);
    if url.starts_with("rediss://") {
        if let Some(certs) = tls_certificates(cfg)? {
            return redis::Client::build_with_tls(info, certs)
                .map_err(|e| format!("engine.redis.tls: {e}"));
        }
    }
    redis::Client::open(info).map_err(|e| format!("engine.redis.address {address:?}: {e}"))
}

/// The private CA and client certificate of `engine.redis.tls`, when either is
/// set.
pub(super) fn tls_certificates(
    cfg: &RedisEngineConfig,
) -> Result<Option<redis::TlsCertificates>, String> {
    let tls = &cfg.tls;
    if tls.server_ca_pem.is_empty() && tls.cert_pem.is_empty() {
        return Ok(None);
    }
    let pem = |field: &'static str, value: &str| {
        crate::config::pem::pem_bytes(field, value).map_err(|e| e.to_string())
    };
    let client_tls = if tls.cert_pem.is_empty() {
        None
    } else {
        Some(redis::ClientTlsConfig {
            client_cert: pem("engine.redis.tls.cert_pem", &tls.cert_pem)?,
            client_key: pem("engine.redis.tls.key_pem", &tls.key_pem)?,
        })
    };
    let root_cert = if tls.server_ca_pem.is_empty() {
        None
    } else {
        Some(pem("engine.redis.tls.server_ca_pem", &tls.server_ca_pem)?)
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// Where a shard's connections go.
pub(super) enum Target {
    /// One server at a fixed address.
    Server(redis::Client),
    /// The server the sentinels name as the master (see `sentinel`).
    Sentinel(SentinelTarget),
    /// A Redis Cluster (see `cluster`).
    Cluster(ClusterTarget),
}

/// A command connection: to one server, or to a whole Redis Cluster (which
/// routes each command to the node that owns its key's slot).
#[derive(Clone)]
pub(crate) enum AnyConn {
    Single(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for AnyConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            AnyConn::Single(c) => c.req_packed_command(cmd),
            AnyConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            AnyConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            AnyConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConn::Single(c) => c.get_db(),
            AnyConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Which connection a call runs on, for what a caller sets up per connection or
/// per server.
#[derive(Clone, Debug, Default)]
pub(crate) struct Link {
    /// Changes whenever a new connection replaces a failed one (what a caller
    /// set up on one connection, like loaded scripts, may be gone on the next).
    pub(crate) generation: u64,
    /// The run id of the master behind a Sentinel shard ("" for a fixed
    /// server): the scripts start a channel on a new epoch when its meta hash
    /// was written by another server (a failover happened since).
    pub(crate) server: String,
}

/// One multiplexed command connection, opened on first use and replaced after it
/// fails. Every call is bounded by the I/O timeout, so a call made while Redis is
/// down fails promptly instead of waiting for it to come back.
///
/// Written here rather than using redis-rs's `ConnectionManager` because that one
/// makes callers wait through its whole reconnect backoff and stays on a failed
/// connection future after connect errors that are not I/O errors.
pub(crate) struct RedisConn {
    target: Target,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    /// Bound on one command.
    response_timeout: Duration,
    /// Bound on one call, connecting included.
    call_timeout: Duration,
    slot: Mutex<Slot>,
    /// One connect at a time; the others wait for its result.
    connecting: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

#[derive(Default)]
struct Slot {
    conn: Option<(Link, AnyConn)>,
    /// When the last connect failed, and why.
    failed: Option<(Instant, EngineError)>,
}

impl RedisConn {
    /// A command connection to the server at `address` with the engine's
    /// timeouts. `response_timeout` bounds one command (longer for the blocking
    /// reads of the direct-publish consumer).
    pub fn new(
        cfg: &RedisEngineConfig,
        address: &str,
        response_timeout: Duration,
    ) -> Result<Self, String> {
        Ok(Self::with_target(
            cfg,
            Target::Server(client(cfg, address)?),
            response_timeout,
        ))
    }

    /// A command connection to `target`.
    pub(super) fn with_target(
        cfg: &RedisEngineConfig,
        target: Target,
        response_timeout: Duration,
    ) -> Self {
        Self {
            target,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(cfg.connect_timeout))
                .set_response_timeout(Some(response_timeout)),
            connect_timeout: cfg.connect_timeout,
            response_timeout,
            call_timeout: response_timeout + cfg.connect_timeout,
            slot: Mutex::new(Slot::default()),
            connecting: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        }
    }

    /// The client of the server to connect to now, and its `host:port` for a
    /// Sentinel shard.
    async fn resolve(&self) -> Result<(redis::Client, String), EngineError> {
        match &self.target {
            Target::Server(client) => Ok((client.clone(), String::new())),
            Target::Sentinel(s) => s.master().await.map(|m| (m.client, m.addr)),
            Target::Cluster(_) => Err(EngineError::failed(
                ENGINE,
                "connect",
                "a Redis Cluster has no single server",
            )),
        }
    }

    /// The cluster behind this connection, for a Redis Cluster shard.
    pub(super) fn cluster(&self) -> Option<&ClusterTarget> {
        match &self.target {
            Target::Cluster(c) => Some(c),
            _ => None,
        }
    }

    /// Connects: to the fixed server, to the master the sentinels name (and
    /// checks that it is one), or to the cluster.
    async fn open(&self) -> Result<(Link, AnyConn), EngineError> {
        if let Target::Cluster(c) = &self.target {
            let client = c
                .command_client(self.response_timeout)
                .map_err(|e| EngineError::failed(ENGINE, "connect", e))?;
            let conn = client
                .get_async_connection()
                .await
                .map_err(|e| EngineError::failed(ENGINE, "connect", e))?;
            let link = Link {
                generation: 0,
                server: CLUSTER_NODE_ID.to_string(),
            };
            return Ok((link, AnyConn::Cluster(conn)));
        }
        let (client, _) = self.resolve().await?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(|e| EngineError::failed(ENGINE, "connect", e))?;
        let server = match &self.target {
            Target::Sentinel(_) => super::sentinel::master_run_id(&mut conn).await?,
            _ => String::new(),
        };
        Ok((
            Link {
                generation: 0,
                server,
            },
            AnyConn::Single(conn),
        ))
    }

    /// A new pub/sub connection to the shard's server (the master the
    /// sentinels name now, for a Sentinel shard), bounded by the connect
    /// timeout; also the master's `host:port` ("" for a fixed server).
    pub(super) async fn pubsub(&self) -> Result<(redis::aio::PubSub, String), EngineError> {
        let open = async {
            let (client, addr) = self.resolve().await?;
            let pubsub = client
                .get_async_pubsub()
                .await
                .map_err(|e| EngineError::failed(ENGINE, "pub/sub connect", e))?;
            Ok((pubsub, addr))
        };
        tokio::time::timeout(self.connect_timeout * 2, open)
            .await
            .unwrap_or(Err(EngineError::Timeout {
                engine: ENGINE,
                operation: "pub/sub connect",
            }))
    }

    /// For a Sentinel shard, the `host:port` the sentinels name as the master
    /// now (`None` for a fixed server, or when no sentinel answers).
    pub(super) async fn named_master(&self) -> Option<String> {
        match &self.target {
            Target::Sentinel(s) => s.master().await.ok().map(|m| m.addr),
            _ => None,
        }
    }

    async fn get(&self) -> Result<(Link, AnyConn), EngineError> {
        if let Some(c) = self.current()? {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.current()? {
            return Ok(c);
        }
        // Asking the sentinels and checking the master take round trips too.
        let result = tokio::time::timeout(self.connect_timeout * 2, self.open()).await;
        let mut slot = self.slot.lock();
        match result {
            Ok(Ok((mut link, conn))) => {
                link.generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                slot.conn = Some((link.clone(), conn.clone()));
                slot.failed = None;
                Ok((link, conn))
            }
            Ok(Err(e)) => {
                slot.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
            Err(_) => {
                let e = EngineError::Timeout {
                    engine: ENGINE,
                    operation: "connect",
                };
                slot.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// The open connection, or the recent connect failure, or `None` (connect now).
    fn current(&self) -> Result<Option<(Link, AnyConn)>, EngineError> {
        let slot = self.slot.lock();
        if let Some(c) = &slot.conn {
            return Ok(Some(c.clone()));
        }
        match &slot.failed {
            Some((at, why)) if at.elapsed() < CONNECT_BACKOFF => Err(why.clone()),
            _ => Ok(None),
        }
    }

    /// Forgets connection `generation` after an error that may have broken it.
    fn forget(&self, generation: u64) {
        let mut slot = self.slot.lock();
        if slot
            .conn
            .as_ref()
            .is_some_and(|(l, _)| l.generation == generation)
        {
            slot.conn = None;
        }
    }

    /// Runs one request on the shared connection, bounded by the call timeout.
    /// `operation` names it in the error.
    pub async fn call<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T, EngineError>
    where
        F: FnOnce(AnyConn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        self.call_on(operation, |_, conn| f(conn)).await
    }

    /// [`Self::call`], also telling `f` which connection it runs on (see
    /// [`Link`]).
    pub async fn call_on<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T, EngineError>
    where
        F: FnOnce(Link, AnyConn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let mut used = None;
        let run = async {
            let (link, conn) = self.get().await?;
            let generation = link.generation;
            used = Some(generation);
            match f(link, conn).await {
                Ok(v) => Ok(v),
                Err(e) => {
                    if breaks_connection(&e) {
                        self.forget(generation);
                    }
                    Err(EngineError::failed(ENGINE, operation, e))
                }
            }
        };
        match tokio::time::timeout(self.call_timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                if let Some(g) = used {
                    self.forget(g);
                }
                Err(EngineError::Timeout {
                    engine: ENGINE,
                    operation,
                })
            }
        }
    }
}

/// Errors after which the connection cannot be trusted (as opposed to an error
/// reply from the server, which leaves it usable).
/// A `READONLY` reply means the server was demoted to a replica (a Sentinel
/// failover): connect again, to the new master.
fn breaks_connection(e: &RedisError) -> bool {
    e.code() == Some("READONLY")
        || e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}
