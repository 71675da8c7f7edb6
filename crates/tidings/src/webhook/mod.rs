//! Webhooks: what happened on the node (channels occupied and vacated, members
//! added and removed, client publications) POSTed to the application's backend
//! in Pusher's signed envelope (see docs/webhooks.md).
//!
//! A core service, fed only by the node (`node/webhooks.rs`), so every front door
//! and transport produces the same events. Each configured webhook has its own
//! bounded queue and one sender task: [`Webhooks::emit`] never waits (a full
//! queue drops its oldest event, counted and logged), and a slow or dead receiver
//! delays only its own queue. The sender takes up to `max_batch_size` events per
//! POST, retries a failed POST with exponential backoff for up to
//! `retry_max_duration`, and stamps and signs the body anew on each try (Pusher's
//! libraries refuse a `time_ms` older than five minutes). The events of a batch
//! and their ids stay the same across tries.
//!
//! - [`event`]: the event, the envelope and the signature.
//! - this file: [`Webhooks`] (every webhook of a node) and the sender.

pub mod event;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng as _;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::event::{signature, WebhookEvent};
use crate::config::WebhookConfig;
use crate::metrics::Metrics;

/// Every webhook of a node.
pub struct Webhooks {
    sinks: Vec<Arc<Sink>>,
    /// Event ids are `<node uid>-<n>`: unique across the cluster, stable across
    /// retries.
    node_uid: String,
    next_id: AtomicU64,
    /// Stops the senders (after a last try, see [`Webhooks::close`]).
    stop: CancellationToken,
    /// A plain mutex: taken at start and close only.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// One webhook: its settings, its queue and what its sender needs.
struct Sink {
    config: WebhookConfig,
    url: reqwest::Url,
    /// Shared by every webhook of the node: one pool of keep-alive connections.
    client: reqwest::Client,
    /// Encoded events waiting, oldest first, at most `queue_size`. A plain
    /// mutex: a push or a take, nothing awaits inside.
    queue: Mutex<VecDeque<Arc<str>>>,
    wake: Notify,
    metrics: Arc<Metrics>,
    /// Events dropped from a full queue so far (for the log).
    dropped: AtomicU64,
}

impl Webhooks {
    /// The webhooks of the configuration; `None` when there are none. Their
    /// senders start with [`Webhooks::start`].
    pub fn from_config(
        hooks: &[WebhookConfig],
        node_uid: &str,
        metrics: Arc<Metrics>,
    ) -> Option<Arc<Self>> {
        if hooks.is_empty() {
            return None;
        }
        let client = reqwest::Client::builder()
            // Pusher's header spelling (X-Pusher-Signature) on the wire.
            .http1_title_case_headers()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        let sinks = hooks
            .iter()
            .filter_map(|config| match reqwest::Url::parse(&config.endpoint) {
                Ok(url) => Some(Arc::new(Sink {
                    config: config.clone(),
                    url,
                    client: client.clone(),
                    queue: Mutex::new(VecDeque::new()),
                    wake: Notify::new(),
                    metrics: metrics.clone(),
                    dropped: AtomicU64::new(0),
                })),
                Err(e) => {
                    // Config::validate refuses this; a hand-built config logs it.
                    tracing::error!(webhook = config.name, error = %e, "webhook endpoint unusable");
                    None
                }
            })
            .collect();
        Some(Arc::new(Self {
            sinks,
            node_uid: node_uid.to_owned(),
            next_id: AtomicU64::new(1),
            stop: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        }))
    }

    /// Starts one sender task per webhook.
    pub fn start(&self) {
        let mut tasks = self.tasks.lock();
        for sink in &self.sinks {
            let (sink, stop) = (sink.clone(), self.stop.clone());
            tasks.push(tokio::spawn(async move { sink.run(stop).await }));
        }
    }

    /// Whether some webhook gets `event`: the node skips the work otherwise.
    pub fn wants(&self, event: &str) -> bool {
        self.sinks.iter().any(|s| s.config.wants(event))
    }

    /// Queues `event` for every webhook that gets it. Never waits.
    pub fn emit(&self, event: WebhookEvent) {
        let mut sinks = self.sinks.iter().filter(|s| s.config.wants(event.name));
        let Some(first) = sinks.next() else {
            return;
        };
        let id = format!(
            "{}-{}",
            self.node_uid,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let encoded = event::encode(&id, &event);
        tracing::debug!(event = event.name, id, "webhook event");
        first.push(encoded.clone());
        for sink in sinks {
            sink.push(encoded.clone());
        }
    }

    /// Stops the senders: each makes one more try with what it holds, all within
    /// `within`; what is left after that is lost (and logged).
    pub async fn close(&self, within: Duration) {
        self.stop.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!("webhooks: undelivered events left at shutdown");
        }
    }
}

impl Sink {
    fn push(&self, event: Arc<str>) {
        let name = self.config.name.as_str();
        let full = {
            let mut queue = self.queue.lock();
            let full = queue.len() >= self.config.queue_size;
            if full {
                queue.pop_front();
            }
            queue.push_back(event);
            full
        };
        self.metrics.webhook_events(name, "queued", 1);
        if full {
            self.metrics.webhook_events(name, "dropped_queue_full", 1);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Logged at the first drop and then at every power of two.
            if n.is_power_of_two() {
                tracing::warn!(
                    webhook = name,
                    dropped = n,
                    queue_size = self.config.queue_size,
                    "webhook queue full: the oldest event was dropped"
                );
            }
        }
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<Arc<str>> {
        let mut queue = self.queue.lock();
        let n = queue.len().min(self.config.max_batch_size);
        queue.drain(..n).collect()
    }

    /// The sender: batches, POSTs, retries; see the module docs.
    async fn run(&self, stop: CancellationToken) {
        loop {
            let batch = self.take();
            if batch.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => continue,
                    _ = stop.cancelled() => return,
                }
            }
            if stop.is_cancelled() {
                self.last_try(batch).await;
                return;
            }
            if !self.deliver(&batch, &stop).await {
                // Stopped while retrying.
                self.last_try(batch).await;
                return;
            }
        }
    }

    /// Sends `batch` until it is accepted (`true`), given up on (`true`, counted
    /// as dropped) or the sender is stopped (`false`).
    async fn deliver(&self, batch: &[Arc<str>], stop: &CancellationToken) -> bool {
        let name = self.config.name.as_str();
        let started = Instant::now();
        let mut backoff = self.config.retry_backoff_min;
        loop {
            match self.post(batch).await {
                Ok(()) => {
                    self.metrics
                        .webhook_events(name, "delivered", batch.len() as u64);
                    return true;
                }
                Err(why) => {
                    self.metrics.webhook_request_failed(name);
                    if started.elapsed() >= self.config.retry_max_duration {
                        self.metrics
                            .webhook_events(name, "dropped_retries", batch.len() as u64);
                        tracing::warn!(
                            webhook = name,
                            events = batch.len(),
                            error = why,
                            "webhook batch dropped: still failing after retry_max_duration"
                        );
                        return true;
                    }
                    tracing::debug!(webhook = name, error = why, retry_in = ?backoff, "webhook POST failed");
                    // ±20 % so that the nodes of a cluster do not retry in step.
                    let wait = backoff.mul_f64(rand::rng().random_range(0.8..1.2));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => return false,
                    }
                    backoff = (backoff * 2).min(self.config.retry_backoff_max);
                }
            }
        }
    }

    /// At shutdown: one try for what is in hand and what is queued.
    async fn last_try(&self, mut batch: Vec<Arc<str>>) {
        loop {
            if batch.is_empty() {
                return;
            }
            if let Err(why) = self.post(&batch).await {
                let left = batch.len() + self.queue.lock().len();
                tracing::warn!(
                    webhook = self.config.name,
                    events = left,
                    error = why,
                    "webhook events lost at shutdown"
                );
                return;
            }
            batch = self.take();
        }
    }

    /// One POST of `batch`: `Err` with the reason unless the receiver answered 2xx
    /// within `timeout`.
    async fn post(&self, batch: &[Arc<str>]) -> Result<(), String> {
        let body = event::body(event::now_ms(), batch);
        let signature = signature(&self.config.secret, &body);
        let request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("X-Pusher-Key", self.config.key.as_str())
            .header("X-Pusher-Signature", signature)
            .body(body)
            .send();
        let response = tokio::time::timeout(self.config.timeout, request)
            .await
            .map_err(|_| format!("no answer within {:?}", self.config.timeout))?
            .map_err(|e| format!("request failed: {e}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", response.status().as_u16()))
        }
    }
}
