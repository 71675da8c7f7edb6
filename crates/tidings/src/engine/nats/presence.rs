//! Presence in a JetStream KV bucket (`<prefix>_presence`).
//!
//! One key per channel and client, `<channel token>.<client token>` (tokens as in
//! [`super::subjects::encode_token`]), holding the client's info as JSON. The
//! bucket's `max_age` is `engine.nats.presence_ttl`: an entry that is not written
//! again within the TTL disappears, so the clients of a node that died leave
//! presence on their own. `add` rewrites the entry, which refreshes it. Reading a
//! channel's presence lists the live keys under `<channel token>.` from the
//! stream's state and reads each one's last value with a direct get, skipping
//! deletion markers (see `read_last_values` for why not a consumer).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_nats::jetstream::response::Response;
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

/// Most entries one presence call reads.
const MAX_ENTRIES: u64 = 100_000;

/// Direct gets in flight at once while reading presence.
const GET_CONCURRENCY: usize = 64;

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
        let prefix = format!(
            "$KV.{}.{}.",
            self.conn.subjects.presence_bucket(),
            encode_token(channel)
        );
        let budget = self.conn.config.request_timeout;
        self.with_store(|store| {
            let prefix = prefix.clone();
            async move {
                let js = self.conn.jetstream()?.clone();
                tokio::time::timeout(budget * 2, read_last_values(js, store, prefix))
                    .await
                    .map_err(|_| timeout("presence read"))?
            }
        })
        .await
    }
}

/// The live keys of `store` under `prefix` (bucket prefix included), from the
/// stream's per-subject counts: one `STREAM.INFO` request with a subject filter
/// per page of subjects, at most [`MAX_ENTRIES`] keys in all.
async fn live_keys(
    js: &jetstream::Context,
    store: &kv::Store,
    prefix: &str,
) -> Result<Vec<String>, EngineError> {
    let subject = format!("STREAM.INFO.{}", store.stream_name);
    let filter = format!("{prefix}>");
    let mut keys = HashSet::new();
    loop {
        let request = serde_json::json!({ "subjects_filter": filter, "offset": keys.len() });
        let page: Response<SubjectsPage> = js
            .request(subject.clone(), &request)
            .await
            .map_err(|e| failed("presence read", e))?;
        let page = match page {
            Response::Ok(page) => page,
            Response::Err { error } => return Err(failed("presence read", error)),
        };
        let subjects = page.state.subjects.unwrap_or_default();
        let before = keys.len();
        for subject in subjects.into_keys() {
            if keys.len() as u64 >= MAX_ENTRIES {
                break;
            }
            if let Some(key) = subject.strip_prefix(store.prefix.as_str()) {
                keys.insert(key.to_owned());
            }
        }
        // One page unless the server pages (`total` past what was read) and
        // the last page brought new keys.
        if keys.len() == before || keys.len() >= page.total || keys.len() as u64 >= MAX_ENTRIES {
            break;
        }
    }
    Ok(keys.into_iter().collect())
}

/// The part of a `STREAM.INFO` answer the key listing needs.
#[derive(serde::Deserialize)]
struct SubjectsPage {
    state: SubjectsState,
    /// Subjects matching the filter in all pages; absent when the server does
    /// not page them.
    #[serde(default)]
    total: usize,
}

#[derive(serde::Deserialize)]
struct SubjectsState {
    /// Absent when no subject matches.
    #[serde(default)]
    subjects: Option<HashMap<String, u64>>,
}

/// The value of every live key of `store` under `prefix` (`<channel token>.`),
/// skipping deletion markers.
///
/// The keys come from the stream's per-subject state, then each key's last
/// message is read with a direct get, [`GET_CONCURRENCY`] at a time. Every step
/// is a request the server answers at once, so the read waits on nothing else.
///
/// Not a consumer: the read used to go through a short-lived `LastPerSubject`
/// consumer, fetching until the server reported nothing pending. When a key is
/// rewritten while such a consumer starts, nats-server 2.9 delivers one message
/// twice and from then on counts one message too many as pending. The read then
/// never saw "nothing pending", and its next fetch (a no-wait pull request
/// without expiry, which the server holds while it believes messages are
/// pending) came back only with the next write under the channel: the read
/// chased the presence refreshes until its deadline (twice
/// `engine.nats.request_timeout`), and was then tried again.
///
/// A key listed and then expired or removed before its get is left out (it left
/// presence meanwhile); a key first written after the listing is not seen by
/// this read.
async fn read_last_values(
    js: jetstream::Context,
    store: kv::Store,
    prefix: String,
) -> Result<Vec<ClientInfo>, EngineError> {
    let keys = live_keys(&js, &store, &prefix).await?;
    let store = &store;
    let mut gets = futures_util::stream::iter(keys)
        .map(|key| async move { store.entry(key).await })
        .buffer_unordered(GET_CONCURRENCY);
    let mut values = Vec::new();
    while let Some(entry) = gets.next().await {
        let Some(entry) = entry.map_err(|e| failed("presence read", e))? else {
            continue;
        };
        if entry.operation != kv::Operation::Put {
            continue;
        }
        if let Ok(info) = serde_json::from_slice::<ClientInfo>(&entry.value) {
            values.push(info);
        }
    }
    Ok(values)
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
