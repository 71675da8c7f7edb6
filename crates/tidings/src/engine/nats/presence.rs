//! Presence in a JetStream KV bucket (`<prefix>_presence`).
//!
//! One key per channel and client, `<channel token>.<client token>` (tokens as in
//! [`super::subjects::encode_token`]), holding the client's info as JSON. The
//! bucket's `max_age` is `engine.nats.presence_ttl`: an entry that is not written
//! again within the TTL disappears, so the clients of a node that died leave
//! presence on their own. `add` rewrites the entry, which refreshes it. Reading a
//! channel's presence reads the last value of every key under `<channel token>.`
//! with a short-lived consumer, skipping deletion markers (see `read_last_values`
//! for when the read stops).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;
use tidings_protocol::ClientInfo;

use super::connection::{KvBucket, NatsConnection};
use super::subjects::encode_token;
use super::{failed, timeout};
use crate::broker::EngineError;
use crate::presence::{PresenceError, PresenceManager, PresenceStats};

/// Most messages one presence call reads.
const MAX_ENTRIES: u64 = 100_000;

/// Messages asked for per fetch while reading presence.
const FETCH_BATCH: u64 = 1000;

/// Presence manager over NATS JetStream KV; see the module docs.
pub struct NatsPresenceManager {
    conn: Arc<NatsConnection>,
    /// The bucket, once looked up or created; dropped when the server lost it.
    store: KvBucket,
}

impl NatsPresenceManager {
    pub fn new(conn: Arc<NatsConnection>) -> Self {
        Self {
            store: KvBucket::new(conn.subjects.presence_bucket(), conn.config.presence_ttl),
            conn,
        }
    }

    fn key(channel: &str, client_id: &str) -> String {
        format!("{}.{}", encode_token(channel), encode_token(client_id))
    }

    /// Runs `op` on the bucket; when it fails, looks the bucket up again (the
    /// server may have lost it) and tries once more.
    async fn with_store<T, F, Fut>(&self, op: F) -> Result<T, PresenceError>
    where
        F: Fn(kv::Store) -> Fut,
        Fut: std::future::Future<Output = Result<T, EngineError>>,
    {
        let store = self.store.get(&self.conn).await?;
        match op(store).await {
            Ok(v) => Ok(v),
            Err(first) => {
                self.conn.client()?;
                tracing::debug!(error = %first, "NATS presence: trying again with the bucket looked up anew");
                self.store.forget();
                let store = self.store.get(&self.conn).await?;
                Ok(op(store).await?)
            }
        }
    }

    /// Every live entry of a channel.
    async fn entries(&self, channel: &str) -> Result<Vec<ClientInfo>, PresenceError> {
        let filter = format!(
            "$KV.{}.{}.>",
            self.conn.subjects.presence_bucket(),
            encode_token(channel)
        );
        let budget = self.conn.config.request_timeout;
        self.with_store(|store| {
            let filter = filter.clone();
            async move {
                tokio::time::timeout(budget * 2, read_last_values(store, filter))
                    .await
                    .map_err(|_| timeout("presence read"))?
            }
        })
        .await
    }
}

/// The last value of every key matching `filter`, skipping deletion markers.
///
/// The read ends when the server says nothing more is pending (the `pending`
/// count each delivered message carries), not after the count the consumer
/// reported when it was made: while a key is rewritten (every presence refresh
/// does that) nats-server 2.9 can deliver one message twice and the rewritten key
/// after the count, so stopping at the count lost that key now and then. Values
/// are kept per key, the latest stream sequence winning, so a repeated or
/// superseded message cannot list a client twice or bring back a removed one.
async fn read_last_values(
    store: kv::Store,
    filter: String,
) -> Result<Vec<ClientInfo>, EngineError> {
    let consumer = store
        .stream
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
            ack_policy: jetstream::consumer::AckPolicy::None,
            filter_subject: filter,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| failed("presence read", e))?;
    let name = consumer.cached_info().name.clone();
    let pending = consumer.cached_info().num_pending;
    // Key -> (stream sequence, value; `None` once deleted).
    let mut latest: HashMap<String, (u64, Option<ClientInfo>)> = HashMap::new();
    let result = async {
        let mut seen = 0u64;
        let mut done = pending == 0;
        while !done {
            let room = MAX_ENTRIES.saturating_sub(seen).min(FETCH_BATCH);
            if room == 0 {
                break;
            }
            let mut batch = consumer
                .fetch()
                .max_messages(room as usize)
                .messages()
                .await
                .map_err(|e| failed("presence read", e))?;
            let before = seen;
            while let Some(msg) = batch.next().await {
                let msg = msg.map_err(|e| failed("presence read", e))?;
                seen += 1;
                let info = msg.info().map_err(|e| failed("presence read", e))?;
                let (sequence, left) = (info.stream_sequence, info.pending);
                let deleted = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some_and(|op| op.as_str() != "PUT");
                let value = if deleted {
                    None
                } else {
                    serde_json::from_slice::<ClientInfo>(&msg.payload).ok()
                };
                let key = msg.subject.to_string();
                match latest.get(&key) {
                    Some((known, _)) if *known >= sequence => {}
                    _ => {
                        latest.insert(key, (sequence, value));
                    }
                }
                if left == 0 {
                    done = true;
                }
            }
            // An empty batch: the server has nothing more for this consumer.
            if seen == before {
                break;
            }
        }
        Ok::<_, EngineError>(())
    }
    .await;
    // Deleted in the background; it would expire by itself anyway.
    let stream = store.stream.clone();
    tokio::spawn(async move {
        let _ = stream.delete_consumer(&name).await;
    });
    result?;
    Ok(latest.into_values().filter_map(|(_, v)| v).collect())
}

#[async_trait]
impl PresenceManager for NatsPresenceManager {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), PresenceError> {
        let key = Self::key(channel, &info.client);
        let value = Bytes::from(serde_json::to_vec(&info).map_err(|e| failed("presence add", e))?);
        let conn = self.conn.clone();
        self.with_store(|store| {
            let (key, value, conn) = (key.clone(), value.clone(), conn.clone());
            async move {
                conn.timed("presence add", store.put(key, value))
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), PresenceError> {
        let key = Self::key(channel, client_id);
        let conn = self.conn.clone();
        self.with_store(|store| {
            let (key, conn) = (key.clone(), conn.clone());
            async move { conn.timed("presence remove", store.delete(key)).await }
        })
        .await
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, PresenceError> {
        Ok(self
            .entries(channel)
            .await?
            .into_iter()
            .map(|info| (info.client.clone(), info))
            .collect())
    }

    async fn stats(&self, channel: &str) -> Result<PresenceStats, PresenceError> {
        let entries = self.entries(channel).await?;
        let users: HashSet<&str> = entries.iter().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats {
            num_clients: u32::try_from(entries.len()).unwrap_or(u32::MAX),
            num_users: u32::try_from(users.len()).unwrap_or(u32::MAX),
        })
    }
}
