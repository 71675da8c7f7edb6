//! [`NatsBroker`]: the [`Broker`] of the NATS engine. Publishing, history and
//! delivery live in the files beside this one; this one holds the broker's state,
//! its node-wide subscriptions (control, backend publishes, reconnects) and the
//! trait's entry points.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;
use parking_lot::Mutex;
use tidings_protocol::{ClientInfo, Publication, StreamPosition};
use tokio::sync::watch;

use super::connection::{KvBucket, NatsConnection};
use super::epochs::EPOCH_CLAIM_TTL;
use super::idempotency::KeyClaim;
use super::ingest::serve_ingest;
use super::streams::{is_stream_not_found, StreamMemo};
use super::subjects::Subjects;
use super::{failed, timeout};
use crate::broker::{
    BatchPublish, Broker, BrokerError, BrokerEventHandler, HistoryFilter, HistoryPage, MetaTtl,
    PublishOptions, IDEMPOTENCY_WINDOW,
};
use crate::engine::Ingest;

/// Header naming what a fan-out message is: `pub`, `join` or `leave`.
pub(super) const KIND_HEADER: &str = "Tidings-Kind";

/// A channel subscription: its task (which owns the NATS subscription) and an id
/// that tells a newer subscription of the same channel from an older one.
pub(super) struct ChannelSub {
    pub(super) id: u64,
    pub(super) task: tokio::task::AbortHandle,
}

/// Broker over NATS; see [`super`] for how it maps channels onto NATS.
pub struct NatsBroker {
    /// The connection, shared with the presence manager.
    pub(super) conn: Arc<NatsConnection>,
    /// The node's handler, set once by [`Broker::run`].
    pub(super) handler: OnceLock<Arc<dyn BrokerEventHandler>>,
    /// The node's publish path for messages backends send to `<prefix>.publish`,
    /// set once by [`NatsBroker::set_ingest`].
    pub(super) ingest: Arc<OnceLock<Ingest>>,
    /// Per channel, the stream settings last seen (see [`StreamMemo`]).
    pub(super) memo: Arc<Mutex<HashMap<String, StreamMemo>>>,
    /// This node's channel subscriptions. A plain mutex: map updates only.
    pub(super) subs: Mutex<HashMap<String, ChannelSub>>,
    /// Numbers [`ChannelSub`]s, so a late cleanup cannot remove a newer one.
    pub(super) next_sub: std::sync::atomic::AtomicU64,
    /// Background tasks (control subscriptions, reconnect watcher); aborted on drop.
    pub(super) tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Streams whose last publication is older than this are deleted by the sweep
    /// (`channel.history_meta_ttl`).
    pub(super) meta_ttl: MetaTtl,
    /// Idempotency keys of publishes without history (with history, the stream's
    /// duplicate detection does it).
    pub(super) idempotency: Arc<KvBucket>,
    /// The bucket of epoch claims, once looked up.
    pub(super) epochs: Arc<KvBucket>,
    /// True once the node-wide subscriptions (control, publish) are in place.
    pub(super) ready: watch::Sender<bool>,
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        for (_, s) in self.subs.lock().drain() {
            s.task.abort();
        }
    }
}

impl NatsBroker {
    /// A broker on `conn`.
    pub fn new(conn: Arc<NatsConnection>) -> Self {
        Self {
            handler: OnceLock::new(),
            ingest: Arc::default(),
            memo: Arc::new(Mutex::new(HashMap::new())),
            subs: Mutex::new(HashMap::new()),
            next_sub: std::sync::atomic::AtomicU64::new(1),
            tasks: Mutex::new(Vec::new()),
            ready: watch::channel(false).0,
            idempotency: Arc::new(KvBucket::new(
                conn.subjects.idempotency_bucket(),
                IDEMPOTENCY_WINDOW,
            )),
            epochs: Arc::new(KvBucket::new(conn.subjects.epoch_bucket(), EPOCH_CLAIM_TTL)),
            meta_ttl: Duration::from_secs(30 * 24 * 3600).into(),
            conn,
        }
    }

    /// Publishes what backends send to `<prefix>.publish` through `ingest` (the
    /// node's publish path) from now on; until then they are answered "node is
    /// starting". Only the first call counts.
    pub fn set_ingest(&self, ingest: Ingest) {
        let _ = self.ingest.set(ingest);
    }

    /// Sets how long a channel's stream outlives its last publication
    /// (`channel.history_meta_ttl`; default 30 days).
    pub fn with_meta_ttl(mut self, meta_ttl: impl Into<MetaTtl>) -> Self {
        self.meta_ttl = meta_ttl.into();
        self
    }

    /// Waits until the broker is connected and its node-wide subscriptions
    /// (control messages, backend publishes) are in place at the server.
    pub async fn wait_ready(&self, within: Duration) -> bool {
        let mut rx = self.ready.subscribe();
        tokio::time::timeout(within, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn connection(&self) -> &Arc<NatsConnection> {
        &self.conn
    }

    pub(super) fn subjects(&self) -> &Subjects {
        &self.conn.subjects
    }

    /// Core publish of a fan-out message, bounded by the write timeout.
    pub(super) async fn core_publish(
        &self,
        subject: String,
        headers: Option<HeaderMap>,
        body: Bytes,
    ) -> Result<(), BrokerError> {
        let client = self.conn.client()?;
        let fut = async {
            match headers {
                Some(h) => client.publish_with_headers(subject, h, body).await,
                None => client.publish(subject, body).await,
            }
        };
        match tokio::time::timeout(self.conn.config.write_timeout, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(failed("publish", e).into()),
            Err(_) => Err(timeout("publish").into()),
        }
    }

    /// Core publish of a publication without history.
    async fn publish_plain(
        &self,
        channel: &str,
        publication: &Publication,
    ) -> Result<(), BrokerError> {
        let mut headers = HeaderMap::new();
        headers.insert(KIND_HEADER, "pub");
        let body = Bytes::from(
            crate::broker::encode_publication(publication).map_err(|e| failed("publish", e))?,
        );
        self.core_publish(self.subjects().client(channel), Some(headers), body)
            .await
    }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn ready(&self, within: Duration) -> bool {
        self.wait_ready(within).await
    }

    fn run(&self, node_uid: &str, handler: Arc<dyn BrokerEventHandler>) {
        let _ = self.handler.set(handler.clone());
        let conn = self.conn.clone();
        let slot = self.ingest.clone();
        let node_subject = self.subjects().node(node_uid);
        // Node-wide subscriptions, once the first connection is up (async-nats
        // restores them after every reconnect).
        let control_handler = handler.clone();
        let ready = self.ready.clone();
        let setup = tokio::spawn(async move {
            while conn.client.get().is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let Some(client) = conn.client.get().cloned() else {
                return;
            };
            let subs = async {
                let control = client.subscribe(conn.subjects.control()).await?;
                let node = client.subscribe(node_subject).await?;
                let ingest = client
                    .queue_subscribe(conn.subjects.publish(), conn.subjects.publish_queue())
                    .await?;
                Ok::<_, async_nats::SubscribeError>((control, node, ingest))
            };
            let (control, node, ingest) = match subs.await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "NATS control subscriptions failed");
                    return;
                }
            };
            let ingest_task = tokio::spawn(serve_ingest(conn.clone(), slot, ingest));
            while let Err(e) = conn.barrier().await {
                tracing::warn!(error = %e, "NATS control subscriptions not confirmed yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            ready.send_replace(true);
            let mut both = futures_util::stream::select(control, node);
            while let Some(msg) = both.next().await {
                control_handler.handle_control(&msg.payload);
            }
            ingest_task.abort();
        });
        // Reconnects and dropped messages: forget stream memos and KV buckets (the
        // server may be a fresh one) and let the node check positions once
        // subscriptions are back.
        let conn = self.conn.clone();
        let mut doubt = self.conn.doubt.subscribe();
        let memo = self.memo.clone();
        let buckets = [self.idempotency.clone(), self.epochs.clone()];
        let watcher_handler = handler;
        let watcher = tokio::spawn(async move {
            while doubt.changed().await.is_ok() {
                memo.lock().clear();
                for bucket in &buckets {
                    bucket.forget();
                }
                if let Err(e) = conn.barrier().await {
                    tracing::warn!(error = %e, "NATS not ready after reconnect");
                }
                watcher_handler.handle_reconnect();
            }
        });
        let mut tasks = self.tasks.lock();
        tasks.push(setup.abort_handle());
        tasks.push(watcher.abort_handle());
    }

    async fn publish_control(
        &self,
        data: bytes::Bytes,
        to: Option<&str>,
    ) -> Result<(), BrokerError> {
        let subject = match to {
            None => self.subjects().control(),
            Some(uid) => self.subjects().node(uid),
        };
        self.core_publish(subject, None, data).await
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        opts: PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        publication.offset = 0;
        if opts.history_size == 0 {
            // Claim the key first (see `claim_key`), then settle the claim: `done`
            // after the publish, deleted when it failed so a retry is not swallowed.
            let claimed = match &opts.idempotency_key {
                Some(key) => match self.claim_key(channel, key).await? {
                    KeyClaim::Mine(revision) => Some((key, revision)),
                    KeyClaim::Taken => return Ok(StreamPosition::default()),
                },
                None => None,
            };
            let sent = self.publish_plain(channel, &publication).await;
            if let Some((key, revision)) = claimed {
                self.settle_key(channel, key, revision, sent.is_ok()).await;
            }
            sent?;
            return Ok(StreamPosition::default());
        }
        self.publish_history(channel, &publication, &opts).await
    }

    /// Ordered: a run of consecutive publishes to one channel with history (same
    /// settings, no idempotency key) is pipelined (`publish_run`);
    /// everything else is published one after another, each waiting for the one
    /// before it. Only runs of one channel are pipelined: the server stores and
    /// republishes each stream's messages on its own, so two streams' messages
    /// sent back to back could reach a subscriber of both channels swapped,
    /// whereas one acknowledged publish has been sent to the subscribers before
    /// the next is made. Unordered: all at once.
    async fn publish_batch(
        &self,
        items: Vec<BatchPublish>,
        ordered: bool,
    ) -> Vec<Result<StreamPosition, BrokerError>> {
        if !ordered {
            return futures_util::future::join_all(items.into_iter().map(|item| async move {
                self.publish(&item.channel, item.publication, item.opts)
                    .await
            }))
            .await;
        }
        self.publish_in_order(items).await
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        let mut headers = HeaderMap::new();
        headers.insert(KIND_HEADER, "join");
        let body = Bytes::from(serde_json::to_vec(&info).map_err(|e| failed("join", e))?);
        self.core_publish(self.subjects().client(channel), Some(headers), body)
            .await
    }
    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        let mut headers = HeaderMap::new();
        headers.insert(KIND_HEADER, "leave");
        let body = Bytes::from(serde_json::to_vec(&info).map_err(|e| failed("leave", e))?);
        self.core_publish(self.subjects().client(channel), Some(headers), body)
            .await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.subscribe_channel(channel).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        // Dropping the subscription (with its task) sends UNSUB.
        if let Some(s) = self.subs.lock().remove(channel) {
            s.task.abort();
        }
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, BrokerError> {
        self.read_history(channel, filter).await
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let js = self.conn.jetstream()?;
        let name = self.subjects().stream(channel);
        let found = tokio::time::timeout(self.conn.config.request_timeout, js.get_stream(&name))
            .await
            .map_err(|_| timeout("stream info"))?;
        let stream = match found {
            Ok(s) => s,
            Err(e) if is_stream_not_found(&e) => return Ok(()),
            Err(e) => return Err(failed("stream info", e).into()),
        };
        // Purging keeps the last sequence: the position stays.
        self.conn
            .timed("stream purge", async { stream.purge().await })
            .await?;
        Ok(())
    }
}
