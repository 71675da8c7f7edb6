//! The in-memory broker of a single node.
//!
//! Each channel with history has a stream: an epoch chosen at creation, a top offset
//! and a bounded deque of publications. Publishing appends and delivers while holding
//! the stream's lock, so delivery order equals offset order even with concurrent
//! publishers, and a reader of the stream never sees a position whose publication has
//! not been delivered.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use tidings_protocol::{ClientInfo, Publication, StreamPosition};
use tokio_util::sync::CancellationToken;

use crate::broker::{
    Broker, BrokerError, BrokerEventHandler, HistoryFilter, HistoryPage, MetaTtl, PublishOptions,
    IDEMPOTENCY_WINDOW,
};
use crate::engine::epoch::new_epoch;

const SHARDS: usize = 64;

/// Most idempotency keys remembered at once; past it the oldest are forgotten early.
const IDEMPOTENCY_MAX_KEYS: usize = 100_000;

/// A stream nobody published to is dropped after this long without reads, so that
/// subscribing to made-up channel names cannot grow memory for long.
const EMPTY_STREAM_TTL: Duration = Duration::from_secs(300);

/// How often [`MemoryBroker::start_sweeper`] sweeps.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

struct Stream {
    epoch: String,
    top: u64,
    /// Publications with the time they expire.
    items: VecDeque<(Publication, Instant)>,
    last_publish: Instant,
    /// Last publish or read, for dropping streams nobody published to.
    last_access: Instant,
}

impl Stream {
    fn new() -> Self {
        Self {
            epoch: new_epoch(),
            top: 0,
            items: VecDeque::new(),
            last_publish: Instant::now(),
            last_access: Instant::now(),
        }
    }

    fn expire(&mut self, now: Instant) {
        while self.items.front().is_some_and(|(_, exp)| *exp <= now) {
            self.items.pop_front();
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

type StreamShard = Mutex<HashMap<String, Arc<Mutex<Stream>>>>;

/// Single-node broker: fan-out is a function call, history lives in process memory.
pub struct MemoryBroker {
    handler: OnceLock<Arc<dyn BrokerEventHandler>>,
    node_uid: OnceLock<String>,
    // Shard locks are held only to find or create a stream; the stream's own lock
    // orders publications. Both are plain mutexes: nothing awaits while holding them.
    streams: Box<[StreamShard]>,
    hasher: BuildHasherDefault<DefaultHasher>,
    /// Streams idle for longer than this are dropped (their epoch with them).
    meta_ttl: MetaTtl,
    /// (channel, key) → first result, for idempotent publishes. A plain mutex held
    /// across the (synchronous) publish, so two concurrent retries publish once.
    idempotency: Mutex<Idempotency>,
}

#[derive(Default)]
struct Idempotency {
    results: HashMap<(String, String), (StreamPosition, Instant)>,
    order: VecDeque<((String, String), Instant)>,
}

impl Idempotency {
    fn get(&mut self, key: &(String, String), now: Instant) -> Option<StreamPosition> {
        self.evict(now);
        self.results.get(key).map(|(p, _)| p.clone())
    }

    fn insert(&mut self, key: (String, String), pos: StreamPosition, now: Instant) {
        while self.results.len() >= IDEMPOTENCY_MAX_KEYS {
            let Some((old, _)) = self.order.pop_front() else {
                break;
            };
            self.results.remove(&old);
        }
        let expires = now + IDEMPOTENCY_WINDOW;
        self.order.push_back((key.clone(), expires));
        self.results.insert(key, (pos, expires));
    }

    fn evict(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(_, exp)| *exp <= now) {
            if let Some((key, _)) = self.order.pop_front() {
                self.results.remove(&key);
            }
        }
    }
}

impl MemoryBroker {
    pub fn new(meta_ttl: impl Into<MetaTtl>) -> Self {
        Self {
            handler: OnceLock::new(),
            node_uid: OnceLock::new(),
            streams: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: BuildHasherDefault::default(),
            meta_ttl: meta_ttl.into(),
            idempotency: Mutex::new(Idempotency::default()),
        }
    }

    fn shard(&self, channel: &str) -> &StreamShard {
        &self.streams[self.hasher.hash_one(channel) as usize % SHARDS]
    }

    /// The channel's stream, created (with a new epoch) when it has none.
    fn stream(&self, channel: &str) -> Arc<Mutex<Stream>> {
        let mut shard = self.shard(channel).lock();
        if let Some(s) = shard.get(channel) {
            return s.clone();
        }
        let s = Arc::new(Mutex::new(Stream::new()));
        shard.insert(channel.to_string(), s.clone());
        s
    }

    /// The channel's stream, when it has one.
    fn existing_stream(&self, channel: &str) -> Option<Arc<Mutex<Stream>>> {
        self.shard(channel).lock().get(channel).cloned()
    }

    fn handler(&self) -> Option<&Arc<dyn BrokerEventHandler>> {
        self.handler.get()
    }

    /// Runs [`Self::sweep`] now and every minute after, until `stop` is cancelled
    /// or the broker dropped. `in_use` tells whether this node has subscribers on
    /// a channel.
    pub fn start_sweeper(
        self: &Arc<Self>,
        in_use: Arc<dyn Fn(&str) -> bool + Send + Sync>,
        stop: CancellationToken,
    ) {
        let broker = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        let Some(broker) = broker.upgrade() else { break };
                        broker.sweep(in_use.as_ref());
                    }
                }
            }
        });
    }

    /// Drops expired publications and idle streams: streams nobody published to
    /// after `EMPTY_STREAM_TTL` without reads unless `in_use` says the channel still
    /// has subscribers, others after the meta TTL. Called periodically by
    /// [`Self::start_sweeper`]; returns how many streams were dropped.
    pub fn sweep(&self, in_use: impl Fn(&str) -> bool) -> usize {
        let now = Instant::now();
        let mut dropped = 0;
        for shard in self.streams.iter() {
            let mut shard = shard.lock();
            shard.retain(|channel, stream| {
                let mut s = stream.lock();
                s.expire(now);
                let keep = if s.top == 0 {
                    now.duration_since(s.last_access) < EMPTY_STREAM_TTL || in_use(channel)
                } else {
                    now.duration_since(s.last_publish) < self.meta_ttl.of(channel)
                };
                if !keep {
                    dropped += 1;
                }
                keep
            });
        }
        dropped
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn run(&self, node_uid: &str, handler: Arc<dyn BrokerEventHandler>) {
        let _ = self.node_uid.set(node_uid.to_string());
        let _ = self.handler.set(handler);
    }

    async fn publish_control(
        &self,
        data: bytes::Bytes,
        to: Option<&str>,
    ) -> Result<(), BrokerError> {
        // One node: a message for everyone, or for this node, is delivered here.
        let for_us = to.is_none_or(|uid| self.node_uid.get().is_some_and(|me| me == uid));
        if let (true, Some(h)) = (for_us, self.handler()) {
            h.handle_control(&data);
        }
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        let Some(key) = opts.idempotency_key.clone() else {
            return self.publish_now(channel, publication, &opts);
        };
        let now = Instant::now();
        let key = (channel.to_string(), key);
        let mut idem = self.idempotency.lock();
        if let Some(pos) = idem.get(&key, now) {
            return Ok(pos);
        }
        let pos = self.publish_now(channel, publication, &opts)?;
        idem.insert(key, pos.clone(), now);
        Ok(pos)
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        if let Some(h) = self.handler() {
            h.handle_join(channel, &info);
        }
        Ok(())
    }

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        if let Some(h) = self.handler() {
            h.handle_leave(channel, &info);
        }
        Ok(())
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, BrokerError> {
        self.read_history(channel, filter)
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        if let Some(stream) = self.existing_stream(channel) {
            stream.lock().items.clear();
        }
        Ok(())
    }
}

impl MemoryBroker {
    /// Publishes synchronously: append, then deliver under the stream's lock.
    fn publish_now(
        &self,
        channel: &str,
        mut publication: Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        if opts.history_size == 0 {
            // No history: no offset, and the result carries no position.
            publication.offset = 0;
            if let Some(h) = self.handler() {
                h.handle_publication(channel, &publication);
            }
            return Ok(StreamPosition::default());
        }
        let stream = self.stream(channel);
        let mut s = stream.lock();
        let now = Instant::now();
        s.expire(now);
        s.top += 1;
        s.last_publish = now;
        s.last_access = now;
        publication.offset = s.top;
        s.items
            .push_back((publication.clone(), now + opts.history_ttl));
        while s.items.len() > opts.history_size {
            s.items.pop_front();
        }
        if let Some(h) = self.handler() {
            h.handle_stream_publication(channel, &publication, &s.epoch);
        }
        Ok(s.position())
    }

    fn read_history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, BrokerError> {
        // Reading creates the stream, so a subscriber learns the epoch that later
        // publications will carry.
        let stream = self.stream(channel);
        let mut s = stream.lock();
        let now = Instant::now();
        s.expire(now);
        s.last_access = now;
        let position = s.position();
        let limit = filter.limit.unwrap_or(usize::MAX);
        // A client that saw nothing yet (offset 0, no epoch) matches any stream.
        let epoch_ok = |since: &StreamPosition| {
            since.epoch == s.epoch || (since.offset == 0 && since.epoch.is_empty())
        };
        if limit == 0 {
            if let Some(since) = &filter.since {
                if !epoch_ok(since) {
                    return Err(BrokerError::UnrecoverablePosition);
                }
            }
            return Ok(HistoryPage {
                publications: Vec::new(),
                position,
            });
        }
        let publications: Vec<Publication> = match &filter.since {
            Some(since) if filter.reverse => {
                // Paging backwards from a known position: publications before it.
                if !epoch_ok(since) {
                    return Err(BrokerError::UnrecoverablePosition);
                }
                s.items
                    .iter()
                    .rev()
                    .filter(|(p, _)| p.offset < since.offset)
                    .take(limit)
                    .map(|(p, _)| p.clone())
                    .collect()
            }
            Some(since) => {
                if !epoch_ok(since) || since.offset > s.top {
                    return Err(BrokerError::UnrecoverablePosition);
                }
                if since.offset < s.top {
                    let first = s.items.front().map_or(s.top + 1, |(p, _)| p.offset);
                    if first > since.offset + 1 {
                        return Err(BrokerError::UnrecoverablePosition);
                    }
                }
                s.items
                    .iter()
                    .filter(|(p, _)| p.offset > since.offset)
                    .take(limit)
                    .map(|(p, _)| p.clone())
                    .collect()
            }
            None if filter.reverse => s
                .items
                .iter()
                .rev()
                .take(limit)
                .map(|(p, _)| p.clone())
                .collect(),
            None => s.items.iter().take(limit).map(|(p, _)| p.clone()).collect(),
        };
        Ok(HistoryPage {
            publications,
            position,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_protocol::RawJson;

    fn opts() -> PublishOptions {
        PublishOptions {
            history_size: 3,
            history_ttl: Duration::from_secs(60),
            idempotency_key: None,
        }
    }

    fn publication(n: u32) -> Publication {
        Publication {
            data: Some(RawJson::from_value(&n)),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn offsets_grow_and_history_is_bounded() {
        let broker = MemoryBroker::new(Duration::from_secs(3600));
        for n in 0..5 {
            let pos = broker.publish("c", publication(n), opts()).await.unwrap();
            assert_eq!(pos.offset, u64::from(n) + 1);
        }
        let page = broker.history("c", HistoryFilter::default()).await.unwrap();
        let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![3, 4, 5]);
        assert_eq!(page.position.offset, 5);
    }

    #[tokio::test]
    async fn since_a_trimmed_offset_is_unrecoverable() {
        let broker = MemoryBroker::new(Duration::from_secs(3600));
        let mut epoch = String::new();
        for n in 0..5 {
            epoch = broker
                .publish("c", publication(n), opts())
                .await
                .unwrap()
                .epoch;
        }
        let filter = |offset| HistoryFilter {
            since: Some(StreamPosition {
                offset,
                epoch: epoch.clone(),
            }),
            ..Default::default()
        };
        assert!(broker.history("c", filter(1)).await.is_err());
        let page = broker.history("c", filter(2)).await.unwrap();
        assert_eq!(page.publications.len(), 3);
        let page = broker.history("c", filter(5)).await.unwrap();
        assert!(page.publications.is_empty());
    }

    #[tokio::test]
    async fn an_unpublished_channel_has_the_epoch_later_publications_get() {
        let broker = MemoryBroker::new(Duration::from_secs(3600));
        let page = broker
            .history("quiet", HistoryFilter::default())
            .await
            .unwrap();
        assert_eq!(page.position.offset, 0);
        assert!(!page.position.epoch.is_empty());
        let pos = broker
            .publish("quiet", publication(1), opts())
            .await
            .unwrap();
        assert_eq!(pos.epoch, page.position.epoch);
        // A client that saw nothing (offset 0, no epoch) recovers everything.
        let since_zero = HistoryFilter {
            since: Some(StreamPosition::default()),
            ..Default::default()
        };
        let page = broker.history("quiet", since_zero).await.unwrap();
        assert_eq!(page.publications.len(), 1);
        // A foreign epoch does not match, even at offset 0.
        let foreign = HistoryFilter {
            since: Some(StreamPosition {
                offset: 0,
                epoch: "other".into(),
            }),
            ..Default::default()
        };
        assert!(broker.history("quiet", foreign).await.is_err());
    }

    #[tokio::test]
    async fn a_retried_idempotent_publish_is_published_once() {
        let broker = MemoryBroker::new(Duration::from_secs(3600));
        let keyed = PublishOptions {
            idempotency_key: Some("k".into()),
            ..opts()
        };
        let first = broker
            .publish("c", publication(1), keyed.clone())
            .await
            .unwrap();
        let again = broker.publish("c", publication(1), keyed).await.unwrap();
        assert_eq!(first, again);
        let page = broker.history("c", HistoryFilter::default()).await.unwrap();
        assert_eq!(page.publications.len(), 1);
    }

    #[tokio::test]
    async fn limit_and_reverse() {
        let broker = MemoryBroker::new(Duration::from_secs(3600));
        for n in 0..3 {
            broker.publish("c", publication(n), opts()).await.unwrap();
        }
        let first_two = broker
            .history(
                "c",
                HistoryFilter {
                    limit: Some(2),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let offsets: Vec<u64> = first_two.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![1, 2]);
        let reversed = broker
            .history(
                "c",
                HistoryFilter {
                    limit: Some(2),
                    reverse: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let offsets: Vec<u64> = reversed.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![3, 2]);
    }

    #[tokio::test]
    async fn each_channel_keeps_its_stream_for_its_own_meta_ttl() {
        // "short:" streams expire at once, the others after an hour.
        let ttl = MetaTtl::per_channel(|ch| {
            if ch.starts_with("short:") {
                Duration::ZERO
            } else {
                Duration::from_secs(3600)
            }
        });
        let broker = MemoryBroker::new(ttl);
        let short = broker
            .publish("short:a", publication(1), opts())
            .await
            .unwrap();
        let long = broker
            .publish("long:a", publication(1), opts())
            .await
            .unwrap();
        assert_eq!(broker.sweep(|_| false), 1);
        let top = |ch: &'static str| {
            let broker = &broker;
            async move {
                let filter = HistoryFilter {
                    limit: Some(0),
                    ..Default::default()
                };
                broker.history(ch, filter).await.unwrap().position
            }
        };
        let after = top("short:a").await;
        assert_ne!(after.epoch, short.epoch, "a new stream");
        assert_eq!(after.offset, 0);
        assert_eq!(top("long:a").await, long);
    }
}
