//! Prometheus metrics of one node.
//!
//! The node owns its recorder instead of installing a process-global one, so several
//! nodes (tests, an app embedding Tidings next to its own metrics) never collide.
//! Handles are registered once and kept, so recording is one atomic operation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
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
pub const API_METHODS: [&str; 14] = [
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
    "user_status",
];

/// Upper bounds (seconds) of the buckets of every latency histogram: 50 µs to
/// 10 s, about three per decade.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// The engine calls timed by `tidings_engine_call_duration_seconds`.
pub const ENGINE_OPS: [&str; 6] = [
    "publish",
    "publish_batch",
    "history",
    "remove_history",
    "presence",
    "presence_stats",
];

/// The proxy calls timed by `tidings_proxy_call_duration_seconds`.
pub const PROXY_EVENTS: [&str; 6] = [
    "connect",
    "refresh",
    "subscribe",
    "publish",
    "sub_refresh",
    "rpc",
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
    /// `tidings_api_request_duration_seconds{method}`.
    api_durations: HashMap<&'static str, Histogram>,
    /// `tidings_engine_call_duration_seconds{op}`.
    engine_durations: HashMap<&'static str, Histogram>,
    /// `tidings_proxy_call_duration_seconds{event}`.
    proxy_durations: HashMap<&'static str, Histogram>,
    /// `tidings_fanout_duration_seconds`: from a publication reaching the hub to
    /// its push queued for every local subscriber.
    pub fanout_duration: Histogram,
    /// `tidings_outbox_wait_seconds`: from a push landing in a connection's empty
    /// queue to its writer taking the queue to write it.
    pub outbox_wait: Histogram,
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
        // Every histogram here measures seconds, so one bucket list serves them all
        // (without buckets the exporter would render summaries).
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
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
        let histogram = |name: &'static str, labels: Vec<Label>| {
            recorder.register_histogram(&Key::from_parts(name, labels), &m)
        };
        let by_label = |name: &'static str, label: &'static str, values: &[&'static str]| {
            values
                .iter()
                .map(|v| (*v, histogram(name, vec![Label::new(label, *v)])))
                .collect::<HashMap<_, _>>()
        };
        let api_durations = by_label(
            "tidings_api_request_duration_seconds",
            "method",
            &API_METHODS,
        );
        let engine_durations = by_label("tidings_engine_call_duration_seconds", "op", &ENGINE_OPS);
        let proxy_durations = by_label(
            "tidings_proxy_call_duration_seconds",
            "event",
            &PROXY_EVENTS,
        );
        let fanout_duration = histogram("tidings_fanout_duration_seconds", vec![]);
        let outbox_wait = histogram("tidings_outbox_wait_seconds", vec![]);
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
            api_durations,
            engine_durations,
            proxy_durations,
            fanout_duration,
            outbox_wait,
        }
    }

    /// A server API call of `method` took `took`.
    pub fn api_duration(&self, method: &str, took: Duration) {
        if let Some(h) = self.api_durations.get(method) {
            h.record(took.as_secs_f64());
        }
    }

    /// An engine call (one of [`ENGINE_OPS`]) took `took`.
    pub fn engine_duration(&self, op: &'static str, took: Duration) {
        if let Some(h) = self.engine_durations.get(op) {
            h.record(took.as_secs_f64());
        }
    }

    /// A backend proxy call (one of [`PROXY_EVENTS`]) took `took`.
    pub fn proxy_duration(&self, event: &'static str, took: Duration) {
        if let Some(h) = self.proxy_durations.get(event) {
            h.record(took.as_secs_f64());
        }
    }

    /// Folds the histograms' recent samples into their buckets, so they do not
    /// grow between scrapes; the node calls it on a timer.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
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

    /// Sets the process-wide permessage-deflate counts (the compressed-segment
    /// cache is shared by every node of the process): segments compressed, and
    /// segments taken from the cache instead of compressed again.
    pub fn set_deflate_segments(&self, compressed: u64, shared: u64) {
        let m = meta();
        for (source, value) in [("compressed", compressed), ("shared", shared)] {
            let key = Key::from_parts(
                "tidings_websocket_deflate_segments_total",
                vec![Label::new("source", source)],
            );
            self.recorder.register_counter(&key, &m).absolute(value);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}
