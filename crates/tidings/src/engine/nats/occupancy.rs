//! Occupancy in a JetStream KV bucket, `<prefix>_occupancy`: one key per
//! occupancy key (its token), whose value is the JSON map `node uid → expiry`
//! (Unix ms, the writing node's clock). Every change reads the value and its
//! revision, drops the expired entries, makes the change and writes the result
//! back only if the revision is still the one read (a compare-and-set: `create`
//! for a new key, `update` with the revision, `delete` with the revision when the
//! map becomes empty). A node that loses the race reads again and redoes its
//! change on the new value, so of two nodes leaving at once exactly one sees the
//! map emptied by its own write.
//!
//! The bucket has no `max_age`: an entry leaves only through a change or a reap,
//! never silently, so that every emptying is seen by exactly one caller. The
//! reaper lists the bucket's keys and applies the same compare-and-set to each.
//! Expiry compares the nodes' clocks: keep them within a small part of the
//! presence TTL of each other (NTP).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{self, Operation};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;

use super::connection::{KvBucket, NatsConnection};
use super::subjects::{decode_token, encode_token};
use super::{failed, timeout};
use crate::broker::EngineError;
use crate::occupancy::{Change, OccupancyError, OccupancyTracker};

/// Compare-and-set rounds before a change gives up (each lost round means
/// another node changed the key meanwhile).
const MAX_ROUNDS: usize = 32;

/// Holders of one key: node uid → expiry (Unix ms).
type Holders = BTreeMap<String, u64>;

/// Occupancy over NATS JetStream KV; see the module docs.
pub struct NatsOccupancy {
    conn: Arc<NatsConnection>,
    store: KvBucket,
    ttl: Duration,
}

/// What one change does to a key's holders after the expired ones went.
#[derive(Clone, Copy)]
enum Op<'a> {
    Enter(&'a str),
    Leave(&'a str),
    Reap,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl NatsOccupancy {
    /// Occupancy on `conn`; entries live `engine.nats.presence_ttl` unless
    /// refreshed.
    pub fn new(conn: Arc<NatsConnection>) -> Self {
        Self {
            // No max_age (zero): entries must never vanish unseen.
            store: KvBucket::new(conn.subjects.occupancy_bucket(), Duration::ZERO),
            ttl: conn.config.presence_ttl,
            conn,
        }
    }

    async fn store(&self) -> Result<kv::Store, EngineError> {
        self.store.get(&self.conn).await
    }

    /// Applies `op` to the key with compare-and-set rounds; see the module docs.
    async fn change(&self, token: &str, op: Op<'_>) -> Result<Change, OccupancyError> {
        let store = self.store().await?;
        for _ in 0..MAX_ROUNDS {
            let entry = self
                .conn
                .timed("occupancy read", store.entry(token))
                .await?;
            let (mut holders, revision) = match entry {
                Some(e) if e.operation == Operation::Put => (
                    serde_json::from_slice::<Holders>(&e.value).unwrap_or_default(),
                    Some(e.revision),
                ),
                // A deletion marker: empty, but a write must name its revision.
                Some(e) => (Holders::new(), Some(e.revision)),
                None => (Holders::new(), None),
            };
            let now = now_ms();
            let before = holders.len();
            holders.retain(|_, expiry| *expiry > now);
            let expired = before > holders.len();
            let held = holders.len();
            let mut change = Change {
                expired: expired && held == 0,
                edge: false,
            };
            let mut dirty = expired;
            match op {
                Op::Enter(node) => {
                    change.edge = held == 0;
                    holders.insert(node.to_owned(), now + self.ttl.as_millis() as u64);
                    dirty = true;
                }
                Op::Leave(node) => {
                    if holders.remove(node).is_some() {
                        change.edge = holders.is_empty();
                        dirty = true;
                    }
                }
                Op::Reap => {}
            }
            if !dirty {
                return Ok(change);
            }
            if self.write(&store, token, &holders, revision).await? {
                return Ok(change);
            }
        }
        Err(failed("occupancy change", "too many concurrent changes of one key").into())
    }

    /// Writes `holders` if the key is still at `revision`: `Ok(false)` when
    /// another node changed it first.
    async fn write(
        &self,
        store: &kv::Store,
        token: &str,
        holders: &Holders,
        revision: Option<u64>,
    ) -> Result<bool, EngineError> {
        let budget = self.conn.config.request_timeout;
        let written = if holders.is_empty() {
            match revision {
                Some(r) => {
                    let r =
                        tokio::time::timeout(budget, store.delete_expect_revision(token, Some(r)))
                            .await
                            .map_err(|_| timeout("occupancy write"))?;
                    r.is_ok()
                }
                None => true,
            }
        } else {
            let value =
                Bytes::from(serde_json::to_vec(holders).map_err(|e| failed("occupancy write", e))?);
            let r = match revision {
                Some(r) => tokio::time::timeout(budget, store.update(token, value, r))
                    .await
                    .map(|r| r.is_ok()),
                None => tokio::time::timeout(budget, store.create(token, value))
                    .await
                    .map(|r| r.is_ok()),
            };
            r.map_err(|_| timeout("occupancy write"))?
        };
        if !written {
            // A lost race, or the server refusing: a failed read next round tells.
            self.conn.client()?;
        }
        Ok(written)
    }
}

#[async_trait]
impl OccupancyTracker for NatsOccupancy {
    async fn enter(&self, key: &str, node: &str) -> Result<Change, OccupancyError> {
        self.change(&encode_token(key), Op::Enter(node)).await
    }

    async fn leave(&self, key: &str, node: &str) -> Result<Change, OccupancyError> {
        self.change(&encode_token(key), Op::Leave(node)).await
    }

    async fn reap(&self, limit: usize) -> Result<Vec<String>, OccupancyError> {
        let store = self.store().await?;
        let list = async {
            let mut keys = store
                .keys()
                .await
                .map_err(|e| failed("occupancy list", e))?;
            let mut all = Vec::new();
            while let Some(key) = keys.next().await {
                all.push(key.map_err(|e| failed("occupancy list", e))?);
            }
            Ok::<_, EngineError>(all)
        };
        let tokens = tokio::time::timeout(self.conn.config.request_timeout * 2, list)
            .await
            .map_err(|_| timeout("occupancy list"))??;
        let mut out = Vec::new();
        for token in tokens {
            if out.len() >= limit.max(1) {
                break;
            }
            if self.change(&token, Op::Reap).await?.expired {
                if let Some(key) = decode_token(&token) {
                    out.push(key);
                }
            }
        }
        Ok(out)
    }
}
