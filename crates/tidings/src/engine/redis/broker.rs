//! The Redis broker: nodes joined through one Redis (6.2+, or Valkey).
//!
//! - Fan-out: Redis pub/sub, one subscription per channel per node on a dedicated
//!   connection. The subscription task owns that connection: it reconnects with
//!   backoff, resubscribes every channel in batches, and only then tells the node
//!   ([`BrokerEventHandler::handle_reconnect`]).
//! - History: one Redis Stream per channel plus a meta hash (top offset, epoch). One
//!   Lua script increments the offset, appends to the stream, trims it, sets the
//!   expiries, remembers the idempotency key and publishes, atomically.
//! - Commands share one multiplexed connection, which pipelines concurrent requests
//!   on one socket, so publish throughput is not bound by round trips.
//! - Control messages: `PUBLISH <prefix>.control` (every node) or
//!   `<prefix>.node.<uid>` (one node).
//! - Direct publish: backends `XADD <prefix>.publish * payload <json>`; one node of
//!   the consumer group publishes each entry (see [`RedisBroker::start_ingest`]).
//!
//! The key layout and the envelopes are documented in docs/engines.md.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt as _;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Value};
use tidings_protocol::{ClientInfo, Publication, RawJson, StreamPosition};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::broker::{
    BatchPublish, Broker, BrokerError, BrokerEventHandler, HistoryFilter, HistoryPage,
    PublishOptions, IDEMPOTENCY_WINDOW,
};
use crate::config::RedisEngineConfig;
use crate::engine::{DirectPublish, DirectPublishError, DirectPublisher};

/// Channels per SUBSCRIBE / UNSUBSCRIBE command when many change at once
/// (resubscription after a reconnect).
const SUBSCRIBE_BATCH: usize = 512;

/// Pause between reconnect attempts of the pub/sub connection, doubling up to the max.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// How often the pub/sub connection is checked with a PING (a connection that dies
/// without a FIN is otherwise noticed only by the kernel, much later).
const PUBSUB_PING: Duration = Duration::from_secs(3);

/// After a failed connect, calls fail at once for this long instead of each one
/// trying (and waiting) again.
const CONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// Direct-publish consumer: entries read per XREADGROUP, and how long it blocks.
const INGEST_BATCH: usize = 64;
const INGEST_BLOCK: Duration = Duration::from_secs(2);
/// Pending entries idle this long (their node died or failed) are claimed by another.
const INGEST_CLAIM_IDLE: Duration = Duration::from_secs(30);
const INGEST_CLAIM_EVERY: Duration = Duration::from_secs(10);
/// Consumers of the group (one per node process ever started) with nothing pending
/// and idle this long are removed, so restarts do not grow the group forever.
const INGEST_FORGET_IDLE: Duration = Duration::from_secs(3600);
const INGEST_FORGET_EVERY: Duration = Duration::from_secs(300);
/// Consumer group of the direct-publish stream.
pub const INGEST_GROUP: &str = "tidings";

/// Builds the `redis::Client` from the engine settings.
fn client(cfg: &RedisEngineConfig) -> Result<redis::Client, String> {
    let address = cfg
        .address
        .first()
        .ok_or_else(|| "engine.redis.address is empty".to_string())?;
    let mut url = address.clone();
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
    let tls = &cfg.tls;
    if url.starts_with("rediss://") && (!tls.server_ca_pem.is_empty() || !tls.cert_pem.is_empty()) {
        let pem = |field: &'static str, value: &str| {
            crate::tls::pem_bytes(field, value).map_err(|e| e.to_string())
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
        let certs = redis::TlsCertificates {
            client_tls,
            root_cert,
        };
        return redis::Client::build_with_tls(info, certs)
            .map_err(|e| format!("engine.redis.tls: {e}"));
    }
    redis::Client::open(info).map_err(|e| format!("engine.redis.address {address:?}: {e}"))
}

/// One multiplexed command connection, opened on first use and replaced after it
/// fails. Every call is bounded by the I/O timeout, so a call made while Redis is
/// down fails promptly instead of waiting for it to come back.
///
/// Written here rather than using redis-rs's `ConnectionManager` because that one
/// makes callers wait through its whole reconnect backoff and stays on a failed
/// connection future after connect errors that are not I/O errors.
pub struct RedisConn {
    client: redis::Client,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    /// Bound on one call, connecting included.
    call_timeout: Duration,
    slot: Mutex<Slot>,
    /// One connect at a time; the others wait for its result.
    connecting: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

#[derive(Default)]
struct Slot {
    conn: Option<(u64, MultiplexedConnection)>,
    /// When the last connect failed, and why.
    failed: Option<(Instant, String)>,
}

impl RedisConn {
    /// A command connection with the engine's timeouts. `response_timeout` bounds
    /// one command (longer for the blocking reads of the direct-publish consumer).
    pub fn new(cfg: &RedisEngineConfig, response_timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            client: client(cfg)?,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(cfg.connect_timeout))
                .set_response_timeout(Some(response_timeout)),
            connect_timeout: cfg.connect_timeout,
            call_timeout: response_timeout + cfg.connect_timeout,
            slot: Mutex::new(Slot::default()),
            connecting: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        })
    }

    async fn get(&self) -> Result<(u64, MultiplexedConnection), String> {
        if let Some(c) = self.current()? {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.current()? {
            return Ok(c);
        }
        let result = tokio::time::timeout(
            self.connect_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&self.config),
        )
        .await;
        let mut slot = self.slot.lock();
        match result {
            Ok(Ok(conn)) => {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                slot.conn = Some((generation, conn.clone()));
                slot.failed = None;
                Ok((generation, conn))
            }
            Ok(Err(e)) => {
                let msg = format!("redis connect: {e}");
                slot.failed = Some((Instant::now(), msg.clone()));
                Err(msg)
            }
            Err(_) => {
                let msg = "redis connect: timed out".to_string();
                slot.failed = Some((Instant::now(), msg.clone()));
                Err(msg)
            }
        }
    }

    /// The open connection, or the recent connect failure, or `None` (connect now).
    fn current(&self) -> Result<Option<(u64, MultiplexedConnection)>, String> {
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
        if slot.conn.as_ref().is_some_and(|(g, _)| *g == generation) {
            slot.conn = None;
        }
    }

    /// Runs one request on the shared connection, bounded by the call timeout.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        self.call_on(|_, conn| f(conn)).await
    }

    /// [`Self::call`], also telling `f` which connection it runs on: a number that
    /// changes whenever a new connection replaces a failed one (what a caller
    /// set up on one connection, like loaded scripts, may be gone on the next).
    pub async fn call_on<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        F: FnOnce(u64, MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let mut used = None;
        let run = async {
            let (generation, conn) = self.get().await?;
            used = Some(generation);
            match f(generation, conn).await {
                Ok(v) => Ok(v),
                Err(e) => {
                    if breaks_connection(&e) {
                        self.forget(generation);
                    }
                    Err(format!("redis: {e}"))
                }
            }
        };
        match tokio::time::timeout(self.call_timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                if let Some(g) = used {
                    self.forget(g);
                }
                Err("redis: timed out".into())
            }
        }
    }
}

/// Errors after which the connection cannot be trusted (as opposed to an error
/// reply from the server, which leaves it usable).
fn breaks_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// Key and channel names of one prefix. `{<channel>}` is the hash tag: every key of
/// a channel lands in the same Redis Cluster slot.
#[derive(Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }
    fn stream(&self, channel: &str) -> String {
        format!("{}.stream.{{{channel}}}", self.prefix)
    }
    fn meta(&self, channel: &str) -> String {
        format!("{}.meta.{{{channel}}}", self.prefix)
    }
    fn idempotency(&self, channel: &str, key: &str) -> String {
        format!("{}.idempotency.{{{channel}}}.{key}", self.prefix)
    }
    pub(crate) fn presence_data(&self, channel: &str) -> String {
        format!("{}.presence.data.{{{channel}}}", self.prefix)
    }
    pub(crate) fn presence_expiry(&self, channel: &str) -> String {
        format!("{}.presence.expiry.{{{channel}}}", self.prefix)
    }
    fn client_channel_prefix(&self) -> String {
        format!("{}.client.", self.prefix)
    }
    fn client_channel(&self, channel: &str) -> String {
        format!("{}.client.{channel}", self.prefix)
    }
    fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }
    fn node(&self, uid: &str) -> String {
        format!("{}.node.{uid}", self.prefix)
    }
    /// The direct-publish stream.
    pub fn ingest(&self) -> String {
        format!("{}.publish", self.prefix)
    }
}

/// Publish with history, atomically: idempotency check, epoch (created when the
/// meta hash is missing, which also drops a stream left from an older epoch),
/// offset increment, XADD with exact MAXLEN, expiries, PUBLISH of the envelope,
/// idempotency result.
///
/// KEYS: stream, meta, idempotency key. ARGV: pub/sub channel, publication JSON
/// (without offset), history size, history TTL (ms), meta TTL (s, 0 = none), a
/// fresh epoch, "1" when the idempotency key is used, its TTL (s).
/// Returns "offset:epoch" ("0:" without history).
const PUBLISH_LUA: &str = r"
if ARGV[7] == '1' then
  local done = redis.call('GET', KEYS[3])
  if done then return done end
end
local size = tonumber(ARGV[3])
local result
if size > 0 then
  local epoch = redis.call('HGET', KEYS[2], 'e')
  if not epoch then
    epoch = ARGV[6]
    redis.call('HSET', KEYS[2], 'e', epoch)
    redis.call('DEL', KEYS[1])
  end
  local offset = redis.call('HINCRBY', KEYS[2], 's', 1)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local ttl = tonumber(ARGV[4])
  redis.call('XADD', KEYS[1], 'MAXLEN', size, offset .. '-0', 'd', ARGV[2], 'x', tostring(now + ttl))
  redis.call('PEXPIRE', KEYS[1], ttl)
  if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
  redis.call('PUBLISH', ARGV[1], 'P' .. offset .. ':' .. epoch .. ':' .. ARGV[2])
  result = offset .. ':' .. epoch
else
  redis.call('PUBLISH', ARGV[1], 'P0::' .. ARGV[2])
  result = '0:'
end
if ARGV[7] == '1' then redis.call('SET', KEYS[3], result, 'EX', ARGV[8]) end
return result
";

/// Publishes several publications of one channel with history, atomically and in
/// order: epoch (created when missing, as in [`PUBLISH_LUA`]), one offset increment
/// for all, an XADD and a PUBLISH per publication, one trim and the expiries.
/// Publications with an idempotency key go through [`PUBLISH_LUA`] instead.
///
/// KEYS: stream, meta. ARGV: pub/sub channel, history size, history TTL (ms), meta
/// TTL (s, 0 = none), a fresh epoch, then the publications' JSON (without offset).
/// Returns "first offset:epoch"; the others follow one by one.
const PUBLISH_MANY_LUA: &str = r"
local n = #ARGV - 5
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[2], 'e', epoch)
  redis.call('DEL', KEYS[1])
end
local first = redis.call('HINCRBY', KEYS[2], 's', n) - n + 1
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local expires = tostring(now + ttl)
local head = ':' .. epoch .. ':'
for i = 1, n do
  local offset = first + i - 1
  redis.call('XADD', KEYS[1], offset .. '-0', 'd', ARGV[5 + i], 'x', expires)
  redis.call('PUBLISH', ARGV[1], 'P' .. offset .. head .. ARGV[5 + i])
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
return first .. ':' .. epoch
";

/// Reads history: epoch (created when missing), top offset, and one range of the
/// stream after dropping expired entries from its front.
///
/// KEYS: stream, meta. ARGV: a fresh epoch, meta TTL (s), mode ("none", "fwd",
/// "rev"), range start, range end, count (-1 = all).
/// Returns {epoch, top, entries}.
const HISTORY_LUA: &str = r"
local epoch = redis.call('HGET', KEYS[2], 'e')
local top = 0
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'e', epoch)
  redis.call('DEL', KEYS[1])
  if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
else
  top = tonumber(redis.call('HGET', KEYS[2], 's') or '0')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
while true do
  local batch = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 100)
  if #batch == 0 then break end
  local keep = nil
  for _, entry in ipairs(batch) do
    local fields = entry[2]
    local expires = 0
    for i = 1, #fields, 2 do
      if fields[i] == 'x' then expires = tonumber(fields[i + 1]) end
    end
    if expires > now then keep = entry[1] break end
  end
  if keep then
    redis.call('XTRIM', KEYS[1], 'MINID', keep)
    break
  end
  if #batch < 100 then
    redis.call('DEL', KEYS[1])
    break
  end
  local last = batch[#batch][1]
  local n = tonumber(string.match(last, '^(%d+)'))
  redis.call('XTRIM', KEYS[1], 'MINID', (n + 1) .. '-0')
end
local entries = {}
local count = tonumber(ARGV[6])
if ARGV[3] == 'fwd' then
  if count < 0 then
    entries = redis.call('XRANGE', KEYS[1], ARGV[4], ARGV[5])
  else
    entries = redis.call('XRANGE', KEYS[1], ARGV[4], ARGV[5], 'COUNT', count)
  end
elseif ARGV[3] == 'rev' then
  if count < 0 then
    entries = redis.call('XREVRANGE', KEYS[1], ARGV[4], ARGV[5])
  else
    entries = redis.call('XREVRANGE', KEYS[1], ARGV[4], ARGV[5], 'COUNT', count)
  end
end
return {epoch, top, entries}
";

/// A fresh random epoch (8 alphanumerics), offered to the scripts, which keep it
/// only when the channel has none.
fn new_epoch() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// What the subscription task must do, shared with the callers of
/// subscribe/unsubscribe.
#[derive(Default)]
struct SubState {
    /// Pub/sub channel → how many subscribe calls are not yet matched by an
    /// unsubscribe. Counting (rather than a set) keeps a late unsubscribe of an
    /// earlier subscriber from cancelling a newer subscription.
    wanted: HashMap<String, u32>,
    /// Channels whose wanted state may differ from the connection's.
    changed: HashSet<String>,
    /// Callers waiting for the next sync of the connection.
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
    /// The pub/sub connection is up and in sync (apart from `changed`).
    connected: bool,
    /// The first connection attempt has ended. Before that, subscribe calls wait
    /// for it (a node that just started is not "down").
    tried: bool,
}

/// The Redis broker. Built by `engine::build`; the tests build it directly.
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RedisEngineConfig,
    names: Names,
    conn: Arc<RedisConn>,
    meta_ttl: Duration,
    publish_script: redis::Script,
    publish_many_script: redis::Script,
    /// The connection generation on which the batch pipelines last loaded their
    /// scripts (0: not loaded, or lost).
    scripts_loaded_on: AtomicU64,
    history_script: redis::Script,
    handler: OnceLock<Arc<dyn BrokerEventHandler>>,
    node_uid: OnceLock<String>,
    subs: Mutex<SubState>,
    sub_notify: Notify,
    /// Cancelled when the broker is dropped: stops the background tasks.
    stop: CancellationToken,
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

impl RedisBroker {
    /// A broker for the engine settings; `meta_ttl` is `channel.history_meta_ttl`.
    /// Connects lazily: nothing fails here when Redis is down.
    ///
    /// # Errors
    /// A message when the address or TLS settings cannot be used.
    pub fn new(cfg: &RedisEngineConfig, meta_ttl: Duration) -> Result<Self, String> {
        let conn = Arc::new(RedisConn::new(cfg, cfg.io_timeout)?);
        Ok(Self::with_conn(cfg, meta_ttl, conn))
    }

    /// A broker that shares its command connection (with the presence manager).
    pub fn with_conn(cfg: &RedisEngineConfig, meta_ttl: Duration, conn: Arc<RedisConn>) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                names: Names::new(&cfg.prefix),
                conn,
                meta_ttl,
                publish_script: redis::Script::new(PUBLISH_LUA),
                publish_many_script: redis::Script::new(PUBLISH_MANY_LUA),
                scripts_loaded_on: AtomicU64::new(0),
                history_script: redis::Script::new(HISTORY_LUA),
                handler: OnceLock::new(),
                node_uid: OnceLock::new(),
                subs: Mutex::new(SubState::default()),
                sub_notify: Notify::new(),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// Starts consuming the direct-publish stream `<prefix>.publish` as member
    /// `<node uid>` of the consumer group [`INGEST_GROUP`]: each entry is published
    /// through `publisher` by exactly one node, then acknowledged and deleted.
    /// Entries whose publish failed for a backend reason stay pending and are
    /// claimed again (XAUTOCLAIM) after [`INGEST_CLAIM_IDLE`], by any node; entries
    /// that can never be published (bad JSON, bad channel) are logged and dropped.
    /// Call after [`Broker::run`]. Stops when `stop` fires or the broker is dropped.
    pub fn start_ingest(&self, publisher: DirectPublisher, stop: CancellationToken) {
        let consumer = self
            .inner
            .node_uid
            .get()
            .cloned()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let read_timeout = INGEST_BLOCK + self.inner.cfg.io_timeout;
        let conn = match RedisConn::new(&self.inner.cfg, read_timeout) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "direct publish: no Redis connection");
                return;
            }
        };
        let ingest = Ingest {
            conn,
            stream: self.inner.names.ingest(),
            consumer,
            publisher,
            forget_idle: INGEST_FORGET_IDLE,
        };
        let broker_stop = self.inner.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = broker_stop.cancelled() => {}
                _ = ingest.run() => {}
            }
        });
    }

    async fn publish_script(
        &self,
        channel: &str,
        json: &[u8],
        opts: &PublishOptions,
    ) -> Result<String, BrokerError> {
        let names = &self.inner.names;
        let idem_key = opts.idempotency_key.as_deref().unwrap_or("");
        let keys = [
            names.stream(channel),
            names.meta(channel),
            names.idempotency(channel, idem_key),
        ];
        let history_ttl_ms = opts.history_ttl.as_millis().max(1) as u64;
        let script = &self.inner.publish_script;
        let pubsub_channel = names.client_channel(channel);
        let epoch = new_epoch();
        self.inner
            .conn
            .call(|mut c| async move {
                script
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .arg(pubsub_channel)
                    .arg(json)
                    .arg(opts.history_size)
                    .arg(history_ttl_ms)
                    .arg(self.inner.meta_ttl.as_secs())
                    .arg(epoch)
                    .arg(if opts.idempotency_key.is_some() {
                        "1"
                    } else {
                        "0"
                    })
                    .arg(IDEMPOTENCY_WINDOW.as_secs())
                    .invoke_async::<String>(&mut c)
                    .await
            })
            .await
            .map_err(BrokerError::Backend)
    }

    /// The EVALSHA of [`PUBLISH_LUA`] for one publication (see `publish_script`).
    fn single_cmd(&self, channel: &str, json: &[u8], opts: &PublishOptions) -> redis::Cmd {
        let names = &self.inner.names;
        let idem_key = opts.idempotency_key.as_deref().unwrap_or("");
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.inner.publish_script.get_hash())
            .arg(3)
            .arg(names.stream(channel))
            .arg(names.meta(channel))
            .arg(names.idempotency(channel, idem_key))
            .arg(names.client_channel(channel))
            .arg(json)
            .arg(opts.history_size)
            .arg(opts.history_ttl.as_millis().max(1) as u64)
            .arg(self.inner.meta_ttl.as_secs())
            .arg(new_epoch())
            .arg(if opts.idempotency_key.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(IDEMPOTENCY_WINDOW.as_secs());
        cmd
    }

    /// Publishes a batch as one pipeline on the shared connection, so the whole
    /// batch costs one round trip. Runs of publications to the same channel with
    /// the same history settings (and no idempotency key) become one call of
    /// [`PUBLISH_MANY_LUA`] each, at most [`BATCH_RUN_MAX`] long; the others one
    /// call of [`PUBLISH_LUA`] or one PUBLISH each. Redis runs a pipeline in order,
    /// so the publications take effect in the order given.
    async fn publish_many(
        &self,
        mut items: Vec<BatchPublish>,
    ) -> Vec<Result<StreamPosition, BrokerError>> {
        let n = items.len();
        let mut results: Vec<Option<Result<StreamPosition, BrokerError>>> =
            (0..n).map(|_| None).collect();
        let mut encoded: Vec<Option<Vec<u8>>> = Vec::with_capacity(n);
        for (i, item) in items.iter_mut().enumerate() {
            item.publication.offset = 0;
            match serde_json::to_vec(&item.publication) {
                Ok(json) => encoded.push(Some(json)),
                Err(e) => {
                    encoded.push(None);
                    results[i] = Some(Err(BrokerError::Backend(format!(
                        "encoding publication: {e}"
                    ))));
                }
            }
        }
        let names = &self.inner.names;
        // What each command of the pipeline answers for: its first item, how many
        // items, and how to read its reply.
        let mut steps: Vec<(usize, usize, StepKind)> = Vec::new();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut i = 0;
        while i < n {
            let Some(json) = &encoded[i] else {
                i += 1;
                continue;
            };
            let item = &items[i];
            let opts = &item.opts;
            if opts.history_size == 0 && opts.idempotency_key.is_none() {
                let mut payload = Vec::with_capacity(json.len() + 4);
                payload.extend_from_slice(b"P0::");
                payload.extend_from_slice(json);
                pipe.cmd("PUBLISH")
                    .arg(names.client_channel(&item.channel))
                    .arg(payload);
                steps.push((i, 1, StepKind::Plain));
                i += 1;
                continue;
            }
            // The run of publications that can share one script call.
            let groupable = |j: usize| {
                let other = &items[j];
                encoded[j].is_some()
                    && other.channel == item.channel
                    && other.opts.idempotency_key.is_none()
                    && other.opts.history_size == opts.history_size
                    && other.opts.history_ttl == opts.history_ttl
            };
            let mut end = i + 1;
            if opts.idempotency_key.is_none() {
                while end < n && end - i < BATCH_RUN_MAX && groupable(end) {
                    end += 1;
                }
            }
            if end - i == 1 {
                pipe.add_command(self.single_cmd(&item.channel, json, opts));
                steps.push((i, 1, StepKind::Script));
            } else {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(self.inner.publish_many_script.get_hash())
                    .arg(2)
                    .arg(names.stream(&item.channel))
                    .arg(names.meta(&item.channel))
                    .arg(names.client_channel(&item.channel))
                    .arg(opts.history_size)
                    .arg(opts.history_ttl.as_millis().max(1) as u64)
                    .arg(self.inner.meta_ttl.as_secs())
                    .arg(new_epoch());
                for json in encoded[i..end].iter().flatten() {
                    cmd.arg(json.as_slice());
                }
                pipe.add_command(cmd);
                steps.push((i, end - i, StepKind::Script));
            }
            i = end;
        }
        if !steps.is_empty() {
            let scripts = [
                (&self.inner.publish_script, PUBLISH_LUA),
                (&self.inner.publish_many_script, PUBLISH_MANY_LUA),
            ];
            let loaded_on = &self.inner.scripts_loaded_on;
            let pipe = &pipe;
            let replies = self
                .inner
                .conn
                .call_on(|generation, mut c| async move {
                    // On a connection where the scripts were not loaded yet, load
                    // them at the head of the same pipeline: an EVALSHA that failed
                    // with NOSCRIPT while the commands after it succeeded would
                    // have to be sent again, after them, out of order.
                    let load = loaded_on.load(Ordering::Relaxed) != generation;
                    let mut replies: Vec<redis::RedisResult<Value>> = if load {
                        let mut loading = redis::pipe();
                        loading.ignore_errors();
                        for (_, text) in scripts {
                            loading.cmd("SCRIPT").arg("LOAD").arg(text);
                        }
                        for cmd in pipe.cmd_iter() {
                            loading.add_command(cmd.clone());
                        }
                        let mut all: Vec<redis::RedisResult<Value>> =
                            loading.query_async(&mut c).await?;
                        let rest = all.split_off(scripts.len().min(all.len()));
                        if let Some(Err(e)) = all.into_iter().find(Result::is_err) {
                            return Err(e);
                        }
                        loaded_on.store(generation, Ordering::Relaxed);
                        rest
                    } else {
                        pipe.query_async(&mut c).await?
                    };
                    // Redis lost the scripts since (SCRIPT FLUSH): load them and
                    // send the commands that failed again. Only this batch can
                    // then be applied out of order.
                    let missing: Vec<usize> = replies
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.as_ref().is_err_and(is_noscript))
                        .map(|(k, _)| k)
                        .collect();
                    if !missing.is_empty() {
                        for (script, _) in scripts {
                            script.load_async(&mut c).await?;
                        }
                        loaded_on.store(generation, Ordering::Relaxed);
                        let mut again = redis::pipe();
                        again.ignore_errors();
                        let cmds: Vec<&redis::Cmd> = pipe.cmd_iter().collect();
                        for &k in &missing {
                            again.add_command(cmds[k].clone());
                        }
                        let retried: Vec<redis::RedisResult<Value>> =
                            again.query_async(&mut c).await?;
                        for (k, r) in missing.into_iter().zip(retried) {
                            replies[k] = r;
                        }
                    }
                    Ok(replies)
                })
                .await;
            match replies {
                Ok(replies) if replies.len() == steps.len() => {
                    for ((first, count, kind), reply) in steps.into_iter().zip(replies) {
                        let positions = read_step(kind, count, reply);
                        for (k, r) in positions.into_iter().enumerate() {
                            results[first + k] = Some(r);
                        }
                    }
                }
                Ok(replies) => {
                    let msg = format!(
                        "redis: {} replies to a pipeline of {}",
                        replies.len(),
                        steps.len()
                    );
                    fill_errors(&mut results, &msg);
                }
                Err(e) => fill_errors(&mut results, &e),
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BrokerError::Backend("redis: no reply".into()))))
            .collect()
    }

    async fn plain_publish(&self, channel: String, payload: Vec<u8>) -> Result<(), BrokerError> {
        self.inner
            .conn
            .call(|mut c| async move {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|_| ())
            .map_err(BrokerError::Backend)
    }

    /// Waits until the pub/sub connection has caught up with the wanted channels.
    async fn sync_subscriptions(&self) -> Result<(), BrokerError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut s = self.inner.subs.lock();
            if !s.connected && s.tried {
                return Err(BrokerError::Backend("redis pub/sub not connected".into()));
            }
            s.waiters.push(tx);
        }
        self.inner.sub_notify.notify_one();
        match tokio::time::timeout(self.inner.cfg.io_timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(BrokerError::Backend(e)),
            Ok(Err(_)) => Err(BrokerError::Backend("redis pub/sub stopped".into())),
            Err(_) => Err(BrokerError::Backend("redis subscribe: timed out".into())),
        }
    }
}

/// Most publications one call of [`PUBLISH_MANY_LUA`] carries, so one script never
/// holds Redis for long (a few µs per publication).
const BATCH_RUN_MAX: usize = 128;

/// What a command of a batch pipeline answers.
#[derive(Clone, Copy)]
enum StepKind {
    /// PUBLISH without history: the number of receivers.
    Plain,
    /// A publish script: "offset:epoch" of its first publication.
    Script,
}

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// The positions of the `count` publications one pipeline command published.
fn read_step(
    kind: StepKind,
    count: usize,
    reply: redis::RedisResult<Value>,
) -> Vec<Result<StreamPosition, BrokerError>> {
    let first = match (kind, reply) {
        (_, Err(e)) => Err(BrokerError::Backend(format!("redis: {e}"))),
        (StepKind::Plain, Ok(_)) => Ok(StreamPosition::default()),
        (StepKind::Script, Ok(v)) => redis::from_redis_value::<String>(v)
            .map_err(|e| BrokerError::Backend(format!("bad publish result: {e}")))
            .and_then(|s| parse_position(&s)),
    };
    match first {
        Ok(pos) => (0..count as u64)
            .map(|k| {
                Ok(if pos.offset == 0 {
                    pos.clone()
                } else {
                    StreamPosition {
                        offset: pos.offset + k,
                        epoch: pos.epoch.clone(),
                    }
                })
            })
            .collect(),
        Err(e) => {
            let msg = e.to_string();
            (0..count)
                .map(|_| Err(BrokerError::Backend(msg.clone())))
                .collect()
        }
    }
}

/// Fails every publication without a result yet.
fn fill_errors(results: &mut [Option<Result<StreamPosition, BrokerError>>], msg: &str) {
    for r in results.iter_mut().filter(|r| r.is_none()) {
        *r = Some(Err(BrokerError::Backend(msg.to_string())));
    }
}

/// Parses "offset:epoch" from the publish script.
fn parse_position(s: &str) -> Result<StreamPosition, BrokerError> {
    let (offset, epoch) = s
        .split_once(':')
        .ok_or_else(|| BrokerError::Backend(format!("bad publish result {s:?}")))?;
    let offset = offset
        .parse::<u64>()
        .map_err(|_| BrokerError::Backend(format!("bad publish result {s:?}")))?;
    if offset == 0 {
        return Ok(StreamPosition::default());
    }
    Ok(StreamPosition {
        offset,
        epoch: epoch.to_string(),
    })
}

/// One stream entry as the history script returns it: id and flat field list.
type RawEntry = (String, Vec<Vec<u8>>);

fn entry_to_publication((id, fields): RawEntry) -> Result<Publication, BrokerError> {
    let offset = id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<u64>().ok())
        .ok_or_else(|| BrokerError::Backend(format!("bad stream id {id:?}")))?;
    let data = fields
        .chunks(2)
        .find(|kv| kv.len() == 2 && kv[0] == b"d")
        .map(|kv| &kv[1])
        .ok_or_else(|| BrokerError::Backend(format!("stream entry {id} has no data")))?;
    let mut publication: Publication = serde_json::from_slice(data)
        .map_err(|e| BrokerError::Backend(format!("stream entry {id}: {e}")))?;
    publication.offset = offset;
    Ok(publication)
}

#[async_trait]
impl Broker for RedisBroker {
    fn run(&self, node_uid: &str, handler: Arc<dyn BrokerEventHandler>) {
        if self.inner.node_uid.set(node_uid.to_string()).is_err() {
            return;
        }
        let _ = self.inner.handler.set(handler);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let stop = inner.stop.clone();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = subscription_task(inner) => {}
            }
        });
    }

    async fn publish_control(
        &self,
        data: bytes::Bytes,
        to: Option<&str>,
    ) -> Result<(), BrokerError> {
        let channel = match to {
            None => self.inner.names.control(),
            Some(uid) => self.inner.names.node(uid),
        };
        self.plain_publish(channel, data.to_vec()).await
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        opts: PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        publication.offset = 0;
        let json = serde_json::to_vec(&publication)
            .map_err(|e| BrokerError::Backend(format!("encoding publication: {e}")))?;
        if opts.history_size == 0 && opts.idempotency_key.is_none() {
            let mut payload = Vec::with_capacity(json.len() + 3);
            payload.extend_from_slice(b"P0::");
            payload.extend_from_slice(&json);
            self.plain_publish(self.inner.names.client_channel(channel), payload)
                .await?;
            return Ok(StreamPosition::default());
        }
        let result = self.publish_script(channel, &json, &opts).await?;
        parse_position(&result)
    }

    async fn publish_batch(
        &self,
        items: Vec<BatchPublish>,
        _ordered: bool,
    ) -> Vec<Result<StreamPosition, BrokerError>> {
        // Always in order: one pipeline costs no more than an unordered batch.
        self.publish_many(items).await
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        let mut payload = b"J".to_vec();
        serde_json::to_writer(&mut payload, &info)
            .map_err(|e| BrokerError::Backend(e.to_string()))?;
        self.plain_publish(self.inner.names.client_channel(channel), payload)
            .await
    }

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        let mut payload = b"L".to_vec();
        serde_json::to_writer(&mut payload, &info)
            .map_err(|e| BrokerError::Backend(e.to_string()))?;
        self.plain_publish(self.inner.names.client_channel(channel), payload)
            .await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let name = self.inner.names.client_channel(channel);
        {
            let mut s = self.inner.subs.lock();
            let n = s.wanted.entry(name.clone()).or_insert(0);
            *n += 1;
            s.changed.insert(name);
        }
        self.sync_subscriptions().await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let name = self.inner.names.client_channel(channel);
        {
            let mut s = self.inner.subs.lock();
            if let Some(n) = s.wanted.get_mut(&name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    s.wanted.remove(&name);
                }
            }
            s.changed.insert(name);
            if !s.connected {
                // The next connection subscribes only what is wanted.
                return Ok(());
            }
        }
        self.inner.sub_notify.notify_one();
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, BrokerError> {
        let names = &self.inner.names;
        let limit = filter.limit.map_or(-1, |l| l.min(i64::MAX as usize) as i64);
        // The range to read; the script reads nothing for "none".
        let (mode, start, end) = match (&filter.since, filter.reverse) {
            _ if limit == 0 => ("none", String::new(), String::new()),
            (Some(since), true) if since.offset <= 1 => ("none", String::new(), String::new()),
            (Some(since), true) => ("rev", format!("{}-0", since.offset - 1), "-".into()),
            (Some(since), false) => ("fwd", format!("{}-0", since.offset + 1), "+".into()),
            (None, true) => ("rev", "+".into(), "-".into()),
            (None, false) => ("fwd", "-".into(), "+".into()),
        };
        let keys = [names.stream(channel), names.meta(channel)];
        let script = &self.inner.history_script;
        let meta_ttl = self.inner.meta_ttl.as_secs();
        let epoch = new_epoch();
        let (epoch, top, entries): (String, u64, Vec<RawEntry>) = self
            .inner
            .conn
            .call(|mut c| async move {
                script
                    .key(&keys[0])
                    .key(&keys[1])
                    .arg(epoch)
                    .arg(meta_ttl)
                    .arg(mode)
                    .arg(start)
                    .arg(end)
                    .arg(limit)
                    .invoke_async(&mut c)
                    .await
            })
            .await
            .map_err(BrokerError::Backend)?;
        let position = StreamPosition { offset: top, epoch };
        let publications = entries
            .into_iter()
            .map(entry_to_publication)
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(since) = &filter.since {
            // A client that saw nothing yet (offset 0, no epoch) matches any stream.
            let epoch_ok =
                since.epoch == position.epoch || (since.offset == 0 && since.epoch.is_empty());
            if !epoch_ok {
                return Err(BrokerError::UnrecoverablePosition);
            }
            if !filter.reverse && limit != 0 {
                if since.offset > top {
                    return Err(BrokerError::UnrecoverablePosition);
                }
                // Offsets are contiguous in the stream: the first one read must be
                // the one right after `since`, or some were trimmed or expired.
                if since.offset < top
                    && publications.first().map(|p| p.offset) != Some(since.offset + 1)
                {
                    return Err(BrokerError::UnrecoverablePosition);
                }
            }
        }
        Ok(HistoryPage {
            publications,
            position,
        })
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let key = self.inner.names.stream(channel);
        self.inner
            .conn
            .call(
                |mut c| async move { redis::cmd("DEL").arg(key).query_async::<i64>(&mut c).await },
            )
            .await
            .map(|_| ())
            .map_err(BrokerError::Backend)
    }
}

/// Owns the pub/sub connection for the broker's life: connect, subscribe the
/// control channels and every wanted channel in batches, deliver messages in order,
/// apply subscription changes, and start over when the connection fails.
async fn subscription_task(inner: Arc<Inner>) {
    let Some(handler) = inner.handler.get().cloned() else {
        return;
    };
    let uid = inner.node_uid.get().cloned().unwrap_or_default();
    let fixed = [inner.names.control(), inner.names.node(&uid)];
    let client_prefix = inner.names.client_channel_prefix();
    let mut backoff = RECONNECT_MIN;
    let mut connected_before = false;
    loop {
        let pubsub = tokio::time::timeout(
            inner.cfg.connect_timeout,
            inner.conn.client.get_async_pubsub(),
        )
        .await
        .map_err(|_| "connect timed out".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        let pubsub = match pubsub {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "redis pub/sub: connect failed");
                fail_waiters(&inner, &e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        let (mut sink, mut messages) = pubsub.split();
        // Everything wanted now; changes made from here on are marked `changed`
        // and applied by the loop below.
        let (all, waiters) = {
            let mut s = inner.subs.lock();
            s.changed.clear();
            let all: Vec<String> = s.wanted.keys().cloned().collect();
            (all, std::mem::take(&mut s.waiters))
        };
        let mut subscribed: HashSet<String> = HashSet::new();
        let mut ok = send_batched(&mut sink, &fixed, true, inner.cfg.io_timeout).await;
        if ok.is_ok() {
            ok = send_batched(&mut sink, &all, true, inner.cfg.io_timeout).await;
        }
        if let Err(e) = ok {
            tracing::warn!(error = %e, "redis pub/sub: subscribing failed");
            for w in waiters {
                let _ = w.send(Err(e.clone()));
            }
            fail_waiters(&inner, &e);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_MAX);
            continue;
        }
        subscribed.extend(all);
        {
            let mut s = inner.subs.lock();
            s.connected = true;
            s.tried = true;
        }
        for w in waiters {
            let _ = w.send(Ok(()));
        }
        backoff = RECONNECT_MIN;
        if connected_before {
            tracing::info!(
                channels = subscribed.len(),
                "redis pub/sub: reconnected and resubscribed"
            );
            handler.handle_reconnect();
        }
        connected_before = true;
        // Changes that arrived while subscribing.
        inner.sub_notify.notify_one();

        let mut ping = tokio::time::interval(PUBSUB_PING);
        ping.tick().await;
        let why = loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { break "connection closed".to_string() };
                    deliver(&*handler, &client_prefix, &fixed, msg.get_channel_name(), msg.get_payload_bytes());
                }
                _ = inner.sub_notify.notified() => {
                    if let Err(e) = apply_changes(&inner, &mut sink, &mut subscribed).await {
                        break e;
                    }
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(inner.cfg.io_timeout, sink.ping::<Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break e.to_string(),
                        Err(_) => break "ping timed out".to_string(),
                    }
                }
            }
        };
        tracing::warn!(reason = %why, "redis pub/sub: connection lost");
        inner.subs.lock().connected = false;
        fail_waiters(&inner, &why);
    }
}

/// Fails every waiting subscribe (and marks the connection down).
fn fail_waiters(inner: &Inner, why: &str) {
    let waiters = {
        let mut s = inner.subs.lock();
        s.connected = false;
        s.tried = true;
        std::mem::take(&mut s.waiters)
    };
    for w in waiters {
        let _ = w.send(Err(format!("redis pub/sub: {why}")));
    }
}

/// SUBSCRIBE or UNSUBSCRIBE `channels`, [`SUBSCRIBE_BATCH`] per command.
async fn send_batched(
    sink: &mut redis::aio::PubSubSink,
    channels: &[String],
    subscribe: bool,
    io_timeout: Duration,
) -> Result<(), String> {
    for batch in channels.chunks(SUBSCRIBE_BATCH) {
        let fut = async {
            if subscribe {
                sink.subscribe(batch).await
            } else {
                sink.unsubscribe(batch).await
            }
        };
        match tokio::time::timeout(io_timeout, fut).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("subscribe timed out".into()),
        }
    }
    Ok(())
}

/// Brings the connection's subscriptions in line with what is wanted, then answers
/// the callers that were waiting.
async fn apply_changes(
    inner: &Inner,
    sink: &mut redis::aio::PubSubSink,
    subscribed: &mut HashSet<String>,
) -> Result<(), String> {
    let (add, remove, waiters) = {
        let mut s = inner.subs.lock();
        let changed = std::mem::take(&mut s.changed);
        let mut add = Vec::new();
        let mut remove = Vec::new();
        for ch in changed {
            let want = s.wanted.contains_key(&ch);
            let have = subscribed.contains(&ch);
            if want && !have {
                add.push(ch);
            } else if !want && have {
                remove.push(ch);
            }
        }
        (add, remove, std::mem::take(&mut s.waiters))
    };
    let mut result = send_batched(sink, &add, true, inner.cfg.io_timeout).await;
    if result.is_ok() {
        subscribed.extend(add);
        result = send_batched(sink, &remove, false, inner.cfg.io_timeout).await;
        if result.is_ok() {
            for ch in &remove {
                subscribed.remove(ch);
            }
        }
    }
    for w in waiters {
        let _ = w.send(result.clone());
    }
    result
}

/// Hands one pub/sub message to the node.
fn deliver(
    handler: &dyn BrokerEventHandler,
    client_prefix: &str,
    fixed: &[String; 2],
    channel: &str,
    payload: &[u8],
) {
    if let Some(ch) = channel.strip_prefix(client_prefix) {
        match payload.split_first() {
            Some((b'P', rest)) => match parse_publication(rest) {
                Some((p, epoch)) if p.offset > 0 && !epoch.is_empty() => {
                    handler.handle_stream_publication(ch, &p, epoch)
                }
                Some((p, _)) => handler.handle_publication(ch, &p),
                None => tracing::warn!(channel = ch, "redis: malformed publication dropped"),
            },
            Some((b'J', rest)) => match serde_json::from_slice::<ClientInfo>(rest) {
                Ok(info) => handler.handle_join(ch, &info),
                Err(_) => tracing::warn!(channel = ch, "redis: malformed join dropped"),
            },
            Some((b'L', rest)) => match serde_json::from_slice::<ClientInfo>(rest) {
                Ok(info) => handler.handle_leave(ch, &info),
                Err(_) => tracing::warn!(channel = ch, "redis: malformed leave dropped"),
            },
            _ => tracing::warn!(channel = ch, "redis: unknown message dropped"),
        }
    } else if fixed.iter().any(|f| f == channel) {
        handler.handle_control(payload);
    }
}

/// `<offset>:<epoch>:<publication JSON>` → the publication with its offset.
fn parse_publication(rest: &[u8]) -> Option<(Publication, &str)> {
    let colon = rest.iter().position(|&b| b == b':')?;
    let offset: u64 = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    let rest = &rest[colon + 1..];
    let colon = rest.iter().position(|&b| b == b':')?;
    let epoch = std::str::from_utf8(&rest[..colon]).ok()?;
    let mut p: Publication = serde_json::from_slice(&rest[colon + 1..]).ok()?;
    p.offset = offset;
    Some((p, epoch))
}

/// The direct-publish consumer of one node.
struct Ingest {
    conn: RedisConn,
    stream: String,
    consumer: String,
    publisher: DirectPublisher,
    /// [`INGEST_FORGET_IDLE`] (shorter in tests).
    forget_idle: Duration,
}

/// The JSON a backend puts in the `payload` field of a direct-publish entry.
#[derive(serde::Deserialize)]
struct Envelope {
    channel: String,
    data: RawJson,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    tags: Option<std::collections::BTreeMap<String, String>>,
}

/// Entries as XREADGROUP / XAUTOCLAIM return them: id and flat field list.
type IngestEntry = (String, Vec<Vec<u8>>);

impl Ingest {
    /// Runs until cancelled: every failure (Redis down, group gone after a
    /// FLUSHALL) is followed by a pause and a fresh start.
    async fn run(self) {
        let mut last_claim = Instant::now();
        let mut last_forget = Instant::now();
        let mut group_ready = false;
        loop {
            if !group_ready {
                match self.create_group().await {
                    Ok(()) => group_ready = true,
                    Err(e) => {
                        tracing::debug!(error = %e, "direct publish: no consumer group yet");
                        tokio::time::sleep(RECONNECT_MAX).await;
                        continue;
                    }
                }
            }
            if last_claim.elapsed() >= INGEST_CLAIM_EVERY {
                last_claim = Instant::now();
                match self.claim().await {
                    Ok(entries) => self.handle(entries).await,
                    Err(e) => {
                        tracing::debug!(error = %e, "direct publish: claim failed");
                        group_ready = false;
                        continue;
                    }
                }
            }
            if last_forget.elapsed() >= INGEST_FORGET_EVERY {
                last_forget = Instant::now();
                if let Err(e) = self.forget_idle_consumers().await {
                    tracing::debug!(error = %e, "direct publish: consumer cleanup failed");
                }
            }
            match self.read().await {
                Ok(entries) => self.handle(entries).await,
                Err(e) => {
                    tracing::debug!(error = %e, "direct publish: read failed");
                    group_ready = false;
                    tokio::time::sleep(RECONNECT_MIN).await;
                }
            }
        }
    }

    async fn create_group(&self) -> Result<(), String> {
        let stream = self.stream.clone();
        let r = self
            .conn
            .call(|mut c| async move {
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(stream)
                    .arg(INGEST_GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn read(&self) -> Result<Vec<IngestEntry>, String> {
        let stream = self.stream.clone();
        let consumer = self.consumer.clone();
        let reply: Value = self
            .conn
            .call(|mut c| async move {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(INGEST_GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(INGEST_BATCH)
                    .arg("BLOCK")
                    .arg(INGEST_BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(stream)
                    .arg(">")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if matches!(reply, Value::Nil) {
            return Ok(Vec::new());
        }
        // [[stream, [[id, fields], ...]]] (a map with RESP3).
        let streams: Vec<(String, Vec<IngestEntry>)> =
            redis::from_redis_value(reply).map_err(|e| format!("XREADGROUP reply: {e}"))?;
        Ok(streams.into_iter().flat_map(|(_, e)| e).collect())
    }

    /// Removes consumers of dead nodes: nothing pending, idle for an hour.
    async fn forget_idle_consumers(&self) -> Result<(), String> {
        let stream = self.stream.clone();
        let consumers: Vec<HashMap<String, Value>> = self
            .conn
            .call(|mut c| async move {
                redis::cmd("XINFO")
                    .arg("CONSUMERS")
                    .arg(stream)
                    .arg(INGEST_GROUP)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let int =
            |v: Option<&Value>| v.and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok());
        for consumer in consumers {
            let Some(name) = consumer
                .get("name")
                .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            else {
                continue;
            };
            let idle_ms = int(consumer.get("idle")).unwrap_or(0);
            let pending = int(consumer.get("pending")).unwrap_or(1);
            if name == self.consumer
                || pending != 0
                || idle_ms < self.forget_idle.as_millis() as i64
            {
                continue;
            }
            let stream = self.stream.clone();
            self.conn
                .call(|mut c| async move {
                    redis::cmd("XGROUP")
                        .arg("DELCONSUMER")
                        .arg(stream)
                        .arg(INGEST_GROUP)
                        .arg(name)
                        .query_async::<i64>(&mut c)
                        .await
                })
                .await?;
        }
        Ok(())
    }

    async fn claim(&self) -> Result<Vec<IngestEntry>, String> {
        let stream = self.stream.clone();
        let consumer = self.consumer.clone();
        let reply: Value = self
            .conn
            .call(|mut c| async move {
                redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(INGEST_GROUP)
                    .arg(consumer)
                    .arg(INGEST_CLAIM_IDLE.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(INGEST_BATCH)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        // [next id, [[id, fields] or nil, ...], [deleted ids]] (6.2 has no third).
        let Value::Array(parts) = reply else {
            return Err("XAUTOCLAIM: unexpected reply".into());
        };
        let Some(Value::Array(items)) = parts.into_iter().nth(1) else {
            return Ok(Vec::new());
        };
        Ok(items
            .into_iter()
            .filter_map(|v| redis::from_redis_value::<IngestEntry>(v).ok())
            .collect())
    }

    async fn handle(&self, entries: Vec<IngestEntry>) {
        for (id, fields) in entries {
            let payload = fields
                .chunks(2)
                .find(|kv| kv.len() == 2 && kv[0] == b"payload")
                .map(|kv| kv[1].clone());
            let outcome = match payload.as_deref().map(serde_json::from_slice::<Envelope>) {
                None => Err(DirectPublishError::Rejected("no payload field".into())),
                Some(Err(e)) => Err(DirectPublishError::Rejected(format!("bad JSON: {e}"))),
                Some(Ok(env)) => {
                    (self.publisher)(DirectPublish {
                        channel: env.channel,
                        data: env.data,
                        idempotency_key: env.idempotency_key,
                        tags: env.tags,
                    })
                    .await
                }
            };
            match outcome {
                Ok(()) => {}
                Err(DirectPublishError::Rejected(why)) => {
                    tracing::warn!(entry = %id, reason = %why, "direct publish: entry dropped");
                }
                Err(DirectPublishError::Failed(why)) => {
                    // Left pending: claimed again later, by this node or another.
                    tracing::warn!(entry = %id, reason = %why, "direct publish: will retry");
                    continue;
                }
            }
            let stream = self.stream.clone();
            let ack = self
                .conn
                .call(|mut c| async move {
                    redis::pipe()
                        .cmd("XACK")
                        .arg(&stream)
                        .arg(INGEST_GROUP)
                        .arg(&id)
                        .ignore()
                        .cmd("XDEL")
                        .arg(&stream)
                        .arg(&id)
                        .ignore()
                        .query_async::<()>(&mut c)
                        .await
                })
                .await;
            if let Err(e) = ack {
                tracing::warn!(error = %e, "direct publish: acknowledging failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_consumers_without_pending_entries_are_forgotten() {
        let redis = tidings_testkit::RedisServer::start().await.unwrap();
        let cfg = RedisEngineConfig {
            address: vec![redis.url()],
            ..Default::default()
        };
        let ingest = Ingest {
            conn: RedisConn::new(&cfg, Duration::from_secs(2)).unwrap(),
            stream: Names::new("t").ingest(),
            consumer: "me".into(),
            publisher: Arc::new(|_| Box::pin(async { Ok(()) })),
            forget_idle: Duration::ZERO,
        };
        ingest.create_group().await.unwrap();
        let stream = ingest.stream.clone();
        // "busy" reads an entry and leaves it pending; "gone" and "me" read nothing.
        let cmd = |name: &str| {
            let mut c = redis::cmd("XREADGROUP");
            c.arg("GROUP")
                .arg(INGEST_GROUP)
                .arg(name)
                .arg("COUNT")
                .arg(1)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">");
            c
        };
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        for name in ["gone", "me"] {
            let _: i64 = redis::cmd("XGROUP")
                .arg("CREATECONSUMER")
                .arg(&stream)
                .arg(INGEST_GROUP)
                .arg(name)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("payload")
            .arg("{}")
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: Value = cmd("busy").query_async(&mut conn).await.unwrap();
        ingest.forget_idle_consumers().await.unwrap();
        let left: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&stream)
            .arg(INGEST_GROUP)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut names: Vec<String> = left
            .iter()
            .map(|c| redis::from_redis_value::<String>(c["name"].clone()).unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["busy".to_string(), "me".to_string()]);
    }
}
