//! The Redis broker: nodes joined through Redis (6.2+, or Valkey), one server or
//! several shards (each channel on the shard `shards` picks for it).
//!
//! - Fan-out: Redis pub/sub, one subscription per channel per node on a dedicated
//!   connection per shard. The subscription task owns that connection: it reconnects with
//!   backoff, resubscribes every channel in batches, and only then tells the node
//!   ([`BrokerEventHandler::handle_reconnect`]).
//! - History: one Redis Stream per channel plus a meta hash (top offset, epoch). One
//!   Lua script increments the offset, appends to the stream, trims it, sets the
//!   expiries, remembers the idempotency key and publishes, atomically.
//! - Commands share one multiplexed connection, which pipelines concurrent requests
//!   on one socket, so publish throughput is not bound by round trips.
//! - Control messages: `PUBLISH <prefix>.control` (every node) or
//!   `<prefix>.node.<uid>` (one node), on the first shard.
//! - Direct publish: backends `XADD <prefix>.publish * payload <json>`; one node of
//!   the consumer group publishes each entry (see [`RedisBroker::start_ingest`]).
//!
//! The key layout and the envelopes are documented in docs/engines.md.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use parking_lot::Mutex;
use tidings_protocol::{ClientInfo, Publication, StreamPosition};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::cluster_pubsub::cluster_subscription_task;
use super::conn::RedisConn;
use super::keys::Keys;
use super::pubsub::{subscription_task, SubState};
use super::scripts::{for_keys, HISTORY_LUA, PUBLISH_LUA, PUBLISH_MANY_LUA};
use super::shards::Shards;
use super::ENGINE;
use crate::broker::{
    BatchPublish, Broker, BrokerError, BrokerEventHandler, EngineError, HistoryFilter, HistoryPage,
    MetaTtl, PublishOptions, IDEMPOTENCY_WINDOW,
};
use crate::config::RedisEngineConfig;
use crate::engine::epoch::new_epoch;

/// The Redis broker. Built by `engine::build`; the tests build it directly.
pub struct RedisBroker {
    pub(super) inner: Arc<Inner>,
}

/// What the broker and its background tasks share.
pub(super) struct Inner {
    /// The engine settings (timeouts, prefix; the ingest consumer opens its own
    /// connections with them).
    pub(super) cfg: RedisEngineConfig,
    /// Key and channel names under the prefix.
    pub(super) keys: Keys,
    /// The command connections, one per shard, shared with the presence manager
    /// and occupancy.
    pub(super) conns: Shards,
    /// What the broker keeps per shard, in the order of `conns`.
    pub(super) shards: Vec<ShardState>,
    /// How long a channel's meta hash outlives its last publish
    /// (`channel.history_meta_ttl`).
    pub(super) meta_ttl: MetaTtl,
    /// The scripts, with their SHA1 computed once, and the publish scripts'
    /// text (as `scripts::for_keys` made it), which batches load themselves.
    pub(super) publish_script: redis::Script,
    pub(super) publish_many_script: redis::Script,
    pub(super) publish_text: String,
    pub(super) publish_many_text: String,
    pub(super) history_script: redis::Script,
    /// The node's handler and uid, set once by [`Broker::run`].
    pub(super) handler: OnceLock<Arc<dyn BrokerEventHandler>>,
    pub(super) node_uid: OnceLock<String>,
    /// Cancelled when the broker is dropped: stops the background tasks.
    pub(super) stop: CancellationToken,
}

/// The broker's state for one shard.
#[derive(Default)]
pub(super) struct ShardState {
    /// The connection generation on which the batch pipelines last loaded their
    /// scripts (0: not loaded, or lost).
    pub(super) scripts_loaded_on: AtomicU64,
    /// Wanted channel subscriptions on this shard; a plain mutex, nothing awaits
    /// while it is held.
    pub(super) subs: Mutex<SubState>,
    /// Wakes the shard's subscription task when `subs` changed.
    pub(super) sub_notify: Notify,
}

impl Inner {
    /// The index of the shard that keeps `channel`.
    pub(super) fn shard_of(&self, channel: &str) -> usize {
        self.conns.index_of(channel)
    }
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
    pub fn new(cfg: &RedisEngineConfig, meta_ttl: impl Into<MetaTtl>) -> Result<Self, String> {
        Ok(Self::with_conns(
            cfg,
            meta_ttl,
            Shards::connect(cfg, cfg.io_timeout)?,
        ))
    }

    /// A broker that shares its command connections (with the presence manager
    /// and occupancy).
    pub(crate) fn with_conns(
        cfg: &RedisEngineConfig,
        meta_ttl: impl Into<MetaTtl>,
        conns: Shards,
    ) -> Self {
        let keys = Keys::of(cfg);
        let publish_text = for_keys(PUBLISH_LUA, &keys);
        let publish_many_text = for_keys(PUBLISH_MANY_LUA, &keys);
        Self {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                keys,
                shards: (0..conns.len()).map(|_| ShardState::default()).collect(),
                conns,
                meta_ttl: meta_ttl.into(),
                publish_script: redis::Script::new(&publish_text),
                publish_many_script: redis::Script::new(&publish_many_text),
                publish_text,
                publish_many_text,
                history_script: redis::Script::new(HISTORY_LUA),
                handler: OnceLock::new(),
                node_uid: OnceLock::new(),
                stop: CancellationToken::new(),
            }),
        }
    }

    async fn publish_script(
        &self,
        channel: &str,
        json: &[u8],
        opts: &PublishOptions,
    ) -> Result<String, BrokerError> {
        let keys = &self.inner.keys;
        let idem_key = opts.idempotency_key.as_deref().unwrap_or("");
        let script_keys = [
            keys.stream(channel),
            keys.meta(channel),
            keys.idempotency(channel, idem_key),
        ];
        let history_ttl_ms = opts.history_ttl.as_millis().max(1) as u64;
        let script = &self.inner.publish_script;
        let pubsub_channel = keys.client_channel(channel);
        let epoch = new_epoch();
        let position = self
            .inner
            .conns
            .of(channel)
            .call_on("publish", |link, mut c| async move {
                script
                    .key(&script_keys[0])
                    .key(&script_keys[1])
                    .key(&script_keys[2])
                    .arg(pubsub_channel)
                    .arg(json)
                    .arg(opts.history_size)
                    .arg(history_ttl_ms)
                    .arg(self.inner.meta_ttl.of(channel).as_secs())
                    .arg(epoch)
                    .arg(if opts.idempotency_key.is_some() {
                        "1"
                    } else {
                        "0"
                    })
                    .arg(IDEMPOTENCY_WINDOW.as_secs())
                    .arg(link.server)
                    .invoke_async::<String>(&mut c)
                    .await
            })
            .await?;
        Ok(position)
    }

    /// A PUBLISH (SPUBLISH on a Redis Cluster) of `payload` to the pub/sub
    /// `channel` on `conn`; `operation` names it in an error.
    async fn plain_publish(
        &self,
        conn: &RedisConn,
        operation: &'static str,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<(), BrokerError> {
        let command = self.inner.keys.publish_command();
        conn.call(operation, |mut c| async move {
            redis::cmd(command)
                .arg(channel)
                .arg(payload)
                .query_async::<i64>(&mut c)
                .await
        })
        .await?;
        Ok(())
    }
}

/// Parses "offset:epoch" from the publish script.
pub(super) fn parse_position(s: &str) -> Result<StreamPosition, BrokerError> {
    let bad = || EngineError::failed(ENGINE, "publish", format!("bad publish result {s:?}"));
    let (offset, epoch) = s.split_once(':').ok_or_else(bad)?;
    let offset = offset.parse::<u64>().map_err(|_| bad())?;
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

fn entry_to_publication((id, fields): RawEntry) -> Result<Publication, EngineError> {
    let bad = |why: String| EngineError::failed(ENGINE, "history", why);
    let offset = id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<u64>().ok())
        .ok_or_else(|| bad(format!("bad stream id {id:?}")))?;
    let data = fields
        .chunks(2)
        .find(|kv| kv.len() == 2 && kv[0] == b"d")
        .map(|kv| &kv[1])
        .ok_or_else(|| bad(format!("stream entry {id} has no data")))?;
    let mut publication: Publication = crate::broker::decode_publication(data)
        .map_err(|e| bad(format!("stream entry {id}: {e}")))?;
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
        for shard in 0..self.inner.shards.len() {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let stop = inner.stop.clone();
                if inner.conns.get(shard).cluster().is_some() {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = cluster_subscription_task(inner, shard) => {}
                    }
                } else {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = subscription_task(inner, shard) => {}
                    }
                }
            });
        }
    }

    async fn publish_control(
        &self,
        data: bytes::Bytes,
        to: Option<&str>,
    ) -> Result<(), BrokerError> {
        let channel = match to {
            None => self.inner.keys.control(),
            Some(uid) => self.inner.keys.node(uid),
        };
        self.plain_publish(self.inner.conns.first(), "control", channel, data.to_vec())
            .await
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        opts: PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        publication.offset = 0;
        let json = crate::broker::encode_publication(&publication)
            .map_err(|e| EngineError::failed(ENGINE, "publish", e))?;
        if opts.history_size == 0 && opts.idempotency_key.is_none() {
            let mut payload = Vec::with_capacity(json.len() + 3);
            payload.extend_from_slice(b"P0::");
            payload.extend_from_slice(&json);
            self.plain_publish(
                self.inner.conns.of(channel),
                "publish",
                self.inner.keys.client_channel(channel),
                payload,
            )
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
            .map_err(|e| EngineError::failed(ENGINE, "join", e))?;
        self.plain_publish(
            self.inner.conns.of(channel),
            "join",
            self.inner.keys.client_channel(channel),
            payload,
        )
        .await
    }

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        let mut payload = b"L".to_vec();
        serde_json::to_writer(&mut payload, &info)
            .map_err(|e| EngineError::failed(ENGINE, "leave", e))?;
        self.plain_publish(
            self.inner.conns.of(channel),
            "leave",
            self.inner.keys.client_channel(channel),
            payload,
        )
        .await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.want(channel).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.unwant(channel);
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, BrokerError> {
        let keys = &self.inner.keys;
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
        let script_keys = [keys.stream(channel), keys.meta(channel)];
        let script = &self.inner.history_script;
        let meta_ttl = self.inner.meta_ttl.of(channel).as_secs();
        let epoch = new_epoch();
        let (epoch, top, entries): (String, u64, Vec<RawEntry>) = self
            .inner
            .conns
            .of(channel)
            .call_on("history", |link, mut c| async move {
                script
                    .key(&script_keys[0])
                    .key(&script_keys[1])
                    .arg(epoch)
                    .arg(meta_ttl)
                    .arg(mode)
                    .arg(start)
                    .arg(end)
                    .arg(limit)
                    .arg(link.server)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
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
        let key = self.inner.keys.stream(channel);
        self.inner
            .conns
            .of(channel)
            .call("remove history", |mut c| async move {
                redis::cmd("DEL").arg(key).query_async::<i64>(&mut c).await
            })
            .await?;
        Ok(())
    }
}
