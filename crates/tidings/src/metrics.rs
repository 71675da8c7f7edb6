//! Prometheus metrics of one node.
//!
//! The node owns its recorder instead of installing a process-global one, so several
//! nodes (tests, an app embedding Tidings next to its own metrics) never collide.
//! Handles are registered once and kept, so recording is one atomic operation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use parking_lot::Mutex;
use tidings_protocol::command::Method;

const METHODS: [Method; 12] = [
    Method::Connect,
    Method::Subscribe,
    Method::Unsubscribe,
    Method::Publish,
    Method::Presence,
    Method::PresenceStats,
    Method::History,
    Method::Ping,
    Method::Send,
    Method::Rpc,
    Method::Refresh,
    Method::SubRefresh,
];

/// The API methods, as metric labels.
pub const API_METHODS: [&str; 13] = [
    "publish",
    "refresh",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "batch",
];

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub connections: Gauge,
    pub subscriptions: Gauge,
    pub channels: Gauge,
    pub messages_sent: Counter,
    pub messages_received: Counter,
    /// Subscribers told to resubscribe and recover (unsubscribe push 2500) because
    /// this node lost their place in a channel's stream.
    pub recoveries_requested: Counter,
    /// Emulation, long-poll and channel requests sent to another node.
    pub forwarded_requests: Counter,
    /// Those that got no answer (broker down, node gone, timeout, too many).
    pub forwarded_failures: Counter,
    /// New connections refused with 503, by reason.
    refused_connection_limit: Counter,
    refused_connection_rate: Counter,
    commands: HashMap<Method, Counter>,
    api_commands: HashMap<&'static str, Counter>,
    /// Codes are open-ended (apps may use 4000–4999), so their counters are made on
    /// first use; the set is bounded by the code range a u16-like value allows.
    disconnects: Mutex<HashMap<u32, Counter>>,
    /// Mirror of the subscriptions gauge, readable for `/api/info`.
    subs: AtomicI64,
}

fn meta() -> Metadata<'static> {
    Metadata::new("tidings", Level::INFO, Some(module_path!()))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let m = meta();
        let counter = |name: &'static str, labels: Vec<Label>| {
            recorder.register_counter(&Key::from_parts(name, labels), &m)
        };
        let gauge = |name: &'static str| recorder.register_gauge(&Key::from_name(name), &m);
        let connections = gauge("tidings_connections");
        let subscriptions = gauge("tidings_subscriptions");
        let channels = gauge("tidings_channels");
        let messages_sent = counter("tidings_messages_sent_total", vec![]);
        let messages_received = counter("tidings_messages_received_total", vec![]);
        let recoveries_requested = counter("tidings_recoveries_requested_total", vec![]);
        let forwarded_requests = counter("tidings_forwarded_requests_total", vec![]);
        let forwarded_failures = counter("tidings_forwarded_request_failures_total", vec![]);
        let refused = |reason: &'static str| {
            counter(
                "tidings_connections_refused_total",
                vec![Label::new("reason", reason)],
            )
        };
        let refused_connection_limit = refused("connection_limit");
        let refused_connection_rate = refused("connection_rate_limit");
        let commands = METHODS
            .iter()
            .map(|method| {
                (
                    *method,
                    counter(
                        "tidings_commands_total",
                        vec![Label::new("method", method.as_str())],
                    ),
                )
            })
            .collect();
        let api_commands = API_METHODS
            .iter()
            .map(|method| {
                (
                    *method,
                    counter(
                        "tidings_api_commands_total",
                        vec![Label::new("method", *method)],
                    ),
                )
            })
            .collect();
        Self {
            recorder,
            handle,
            connections,
            subscriptions,
            channels,
            messages_sent,
            messages_received,
            recoveries_requested,
            forwarded_requests,
            forwarded_failures,
            refused_connection_limit,
            refused_connection_rate,
            commands,
            api_commands,
            disconnects: Mutex::new(HashMap::new()),
            subs: AtomicI64::new(0),
        }
    }

    pub fn subscription_added(&self) {
        self.subs.fetch_add(1, Ordering::Relaxed);
        self.subscriptions.increment(1.0);
    }

    pub fn subscription_removed(&self) {
        self.subs.fetch_sub(1, Ordering::Relaxed);
        self.subscriptions.decrement(1.0);
    }

    /// Current number of client subscriptions on this node.
    pub fn subscriptions_value(&self) -> u32 {
        self.subs.load(Ordering::Relaxed).max(0) as u32
    }

    pub fn command(&self, method: Method) {
        if let Some(c) = self.commands.get(&method) {
            c.increment(1);
        }
    }

    /// A new connection was refused before it started.
    pub fn connection_refused(&self, why: crate::limit::AdmitError) {
        match why {
            crate::limit::AdmitError::ConnectionLimit => {
                self.refused_connection_limit.increment(1);
            }
            crate::limit::AdmitError::RateLimit => self.refused_connection_rate.increment(1),
        }
    }

    pub fn api_command(&self, method: &str) {
        if let Some(c) = self.api_commands.get(method) {
            c.increment(1);
        }
    }

    pub fn disconnect(&self, code: u32) {
        let mut map = self.disconnects.lock();
        let counter = map.entry(code).or_insert_with(|| {
            self.recorder.register_counter(
                &Key::from_parts(
                    "tidings_disconnects_total",
                    vec![Label::new("code", code.to_string())],
                ),
                &meta(),
            )
        });
        counter.increment(1);
    }

    /// Counts one Socket.IO event by kind (`join`, `leave`, `publish`, `presence`,
    /// `unknown`, `refused`). The recorder finds the labelled counter itself, so
    /// nothing is kept here.
    /// One backend proxy call, by event (`connect`, `refresh`, `subscribe`,
    /// `publish`, `sub_refresh`, `rpc`) and outcome: `ok`, `rejected` (the backend
    /// answered an error or a disconnect) or `failed` (timeout, HTTP status,
    /// invalid or oversized answer, …).
    pub fn proxy_call(&self, event: &'static str, outcome: &'static str) {
        self.recorder
            .register_counter(
                &Key::from_parts(
                    "tidings_proxy_calls_total",
                    vec![Label::new("event", event), Label::new("outcome", outcome)],
                ),
                &meta(),
            )
            .increment(1);
    }

    /// `tidings_webhook_events_total{webhook, outcome}`: events `queued`,
    /// `delivered`, `dropped_queue_full` (the oldest of a full queue) or
    /// `dropped_retries` (still failing after `retry_max_duration`).
    pub fn webhook_events(&self, webhook: &str, outcome: &'static str, n: u64) {
        self.recorder
            .register_counter(
                &Key::from_parts(
                    "tidings_webhook_events_total",
                    vec![
                        Label::new("webhook", webhook.to_owned()),
                        Label::new("outcome", outcome),
                    ],
                ),
                &meta(),
            )
            .increment(n);
    }

    /// `tidings_webhook_failed_requests_total{webhook}`: POSTs that got no 2xx
    /// answer in time (each is retried).
    pub fn webhook_request_failed(&self, webhook: &str) {
        self.recorder
            .register_counter(
                &Key::from_parts(
                    "tidings_webhook_failed_requests_total",
                    vec![Label::new("webhook", webhook.to_owned())],
                ),
                &meta(),
            )
            .increment(1);
    }

    pub fn socketio_event(&self, event: &'static str) {
        self.recorder
            .register_counter(
                &Key::from_parts(
                    "tidings_socketio_events_total",
                    vec![Label::new("event", event)],
                ),
                &meta(),
            )
            .increment(1);
    }

    /// Engine.IO sessions open now (they also count in `tidings_connections`).
    pub fn socketio_sessions(&self) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_name("tidings_socketio_sessions"), &meta())
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}
