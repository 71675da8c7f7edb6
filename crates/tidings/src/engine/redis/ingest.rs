//! Direct publish on Redis: backends `XADD <prefix>.publish * payload <json>`, and
//! the nodes read the stream as one consumer group, so each entry is published by
//! exactly one node (see [`RedisBroker::start_ingest`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;
use tokio_util::sync::CancellationToken;

use super::broker::RedisBroker;
use super::conn::{RedisConn, RECONNECT_MAX, RECONNECT_MIN};
use super::shards::Shards;
use super::ENGINE;
use crate::broker::EngineError;
use crate::engine::{Ingest, IngestError, IngestPublish};

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

impl RedisBroker {
    /// Starts consuming the direct-publish stream `<prefix>.publish` as member
    /// `<node uid>` of the consumer group [`INGEST_GROUP`]: each entry is published
    /// through `ingest` by exactly one node, then acknowledged and deleted.
    /// Entries whose publish failed for a backend reason stay pending and are
    /// claimed again (XAUTOCLAIM) after `INGEST_CLAIM_IDLE`, by any node; entries
    /// that can never be published (bad JSON, bad channel) are logged and dropped.
    /// Call after [`crate::broker::Broker::run`]. Stops when `stop` fires or the broker is dropped.
    pub fn start_ingest(&self, ingest: Ingest, stop: CancellationToken) {
        let consumer = self
            .inner
            .node_uid
            .get()
            .cloned()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let read_timeout = INGEST_BLOCK + self.inner.cfg.io_timeout;
        // One consumer per shard: a backend may XADD to the stream of any shard.
        let conns = match Shards::connect(&self.inner.cfg, read_timeout) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "direct publish: no Redis connection");
                return;
            }
        };
        for conn in conns.iter() {
            let ingest = IngestConsumer {
                conn: conn.clone(),
                stream: self.inner.keys.ingest(),
                consumer: consumer.clone(),
                ingest: ingest.clone(),
                forget_idle: INGEST_FORGET_IDLE,
            };
            let broker_stop = self.inner.stop.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = broker_stop.cancelled() => {}
                    _ = ingest.run() => {}
                }
            });
        }
    }
}

/// The direct-publish consumer of one node.
struct IngestConsumer {
    /// The connection of the consumer's shard.
    conn: Arc<RedisConn>,
    stream: String,
    consumer: String,
    /// The node's publish path.
    ingest: Ingest,
    /// [`INGEST_FORGET_IDLE`] (shorter in tests).
    forget_idle: Duration,
}

/// An entry that is not a publication at all.
fn bad_entry(why: &str) -> tidings_protocol::Error {
    tidings_protocol::Error {
        code: tidings_protocol::codes::ERROR_BAD_REQUEST.code,
        message: why.to_string(),
        temporary: false,
    }
}

/// Entries as XREADGROUP / XAUTOCLAIM return them: id and flat field list.
type IngestEntry = (String, Vec<Vec<u8>>);

impl IngestConsumer {
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

    async fn create_group(&self) -> Result<(), EngineError> {
        let stream = self.stream.clone();
        self.conn
            .call("ingest group", |mut c| async move {
                let created = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(stream)
                    .arg(INGEST_GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async::<()>(&mut c)
                    .await;
                match created {
                    // Another node (or an earlier run) made it.
                    Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                    other => other,
                }
            })
            .await
    }

    async fn read(&self) -> Result<Vec<IngestEntry>, EngineError> {
        let stream = self.stream.clone();
        let consumer = self.consumer.clone();
        let reply: Value = self
            .conn
            .call("ingest read", |mut c| async move {
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
        let streams: Vec<(String, Vec<IngestEntry>)> = redis::from_redis_value(reply)
            .map_err(|e| EngineError::failed(ENGINE, "ingest read", e))?;
        Ok(streams.into_iter().flat_map(|(_, e)| e).collect())
    }

    /// Removes consumers of dead nodes: nothing pending, idle for an hour.
    async fn forget_idle_consumers(&self) -> Result<(), EngineError> {
        let stream = self.stream.clone();
        let consumers: Vec<HashMap<String, Value>> = self
            .conn
            .call("ingest consumers", |mut c| async move {
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
                .call("ingest consumers", |mut c| async move {
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

    async fn claim(&self) -> Result<Vec<IngestEntry>, EngineError> {
        let stream = self.stream.clone();
        let consumer = self.consumer.clone();
        let reply: Value = self
            .conn
            .call("ingest claim", |mut c| async move {
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
            return Err(EngineError::failed(
                ENGINE,
                "ingest claim",
                "unexpected reply",
            ));
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
            // The `payload` field holds the JSON of an [`IngestPublish`].
            let outcome = match payload
                .as_deref()
                .map(serde_json::from_slice::<IngestPublish>)
            {
                None => Err(IngestError::Rejected(bad_entry("no payload field"))),
                Some(Err(e)) => Err(IngestError::Rejected(bad_entry(&format!("bad JSON: {e}")))),
                Some(Ok(publish)) => (self.ingest)(publish).await,
            };
            match outcome {
                Ok(_) => {}
                Err(IngestError::Rejected(why)) => {
                    tracing::warn!(entry = %id, reason = %why.message, "direct publish: entry dropped");
                }
                Err(IngestError::Failed(why)) => {
                    // Left pending: claimed again later, by this node or another.
                    tracing::warn!(entry = %id, reason = %why, "direct publish: will retry");
                    continue;
                }
            }
            let stream = self.stream.clone();
            let ack = self
                .conn
                .call("ingest ack", |mut c| async move {
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
    use std::sync::Arc;

    use super::*;
    use crate::config::RedisEngineConfig;
    use crate::engine::redis::keys::Keys;

    #[tokio::test]
    async fn idle_consumers_without_pending_entries_are_forgotten() {
        let redis = tidings_testkit::RedisServer::start().await.unwrap();
        let cfg = RedisEngineConfig {
            address: vec![redis.url()],
            ..Default::default()
        };
        let ingest = IngestConsumer {
            conn: Arc::new(RedisConn::new(&cfg, &redis.url(), Duration::from_secs(2)).unwrap()),
            stream: Keys::new("t").ingest(),
            consumer: "me".into(),
            ingest: Arc::new(|_| Box::pin(async { Ok(Default::default()) })),
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
