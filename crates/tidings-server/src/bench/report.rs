//! What a run reports: JSON with `--json`, otherwise one line.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {} p90 {} p99 {} p99.9 {} max {}",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us)
        )
    }
}

fn ms(us: u64) -> String {
    if us >= 1000 {
        format!("{:.2}ms", us as f64 / 1000.0)
    } else {
        format!("{us}µs")
    }
}

/// The result of one scenario run.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Report {
    pub scenario: String,
    pub server: String,
    pub connections: usize,
    /// Connections that could not be opened (or subscribed).
    pub connect_errors: u64,
    /// Connections the server closed during the run.
    pub disconnects: u64,
    /// Publications sent.
    pub publications: u64,
    /// Publications the server refused (API or publish errors).
    pub publish_errors: u64,
    /// Deliveries expected: publications × reading subscribers.
    pub expected: u64,
    /// Deliveries received by reading subscribers.
    pub received: u64,
    /// expected - received (never negative).
    pub lost: u64,
    /// Seconds from the first publication to the last delivery (or the drain deadline).
    pub duration_s: f64,
    pub deliveries_per_s: f64,
    /// Fan-out scenarios: publications accepted per second over the same window.
    pub publications_per_s: Option<f64>,
    /// Latency from the send time carried in each payload to its arrival.
    pub latency: Option<Latency>,
    /// Cluster: latency of subscribers on the publishing node.
    pub latency_local: Option<Latency>,
    /// Cluster: latency of subscribers on the other nodes.
    pub latency_remote: Option<Latency>,
    /// Server user+system CPU seconds during the publish window (all nodes).
    pub server_cpu_s: Option<f64>,
    /// server_cpu_s / received, in microseconds.
    pub cpu_us_per_delivery: Option<f64>,
    /// Cluster with --engine-pid: the engine server's user+system CPU seconds
    /// during the publish window.
    pub engine_cpu_s: Option<f64>,
    /// engine_cpu_s / publications accepted, in microseconds.
    pub engine_cpu_us_per_publication: Option<f64>,
    /// Server RSS at the end of the run, KiB (all nodes).
    pub server_rss_kib: Option<u64>,
    /// Idle: server RSS before the connections were opened, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// Idle: (RSS after - RSS before) / connections, KiB.
    pub rss_per_connection_kib: Option<f64>,
    /// Idle: server CPU while the connections were held, % of one core.
    pub idle_cpu_pct: Option<f64>,
    /// Connect: connections (connect + subscribe) completed per second.
    pub connects_per_s: Option<f64>,
    /// Connect: server CPU per connection opened and subscribed, microseconds.
    pub cpu_us_per_connect: Option<f64>,
    /// Connect: handshake latency (TCP connect to subscribe reply).
    pub handshake: Option<Latency>,
    /// The load generator's own CPU use during the window, in percent of one core.
    pub generator_cpu_pct: f64,
    /// Worker threads of the generator.
    pub generator_threads: usize,
    /// Whether the generator used at least 90% of its threads' time: then the
    /// figures measure the generator at least as much as the server.
    pub generator_bound: bool,
}

impl Report {
    /// The one-line summary.
    pub fn summary(&self) -> String {
        let mut parts = vec![format!(
            "{} {}: {} conns",
            self.scenario, self.server, self.connections
        )];
        if self.expected > 0 {
            parts.push(format!(
                "{} pubs, {:.0} deliveries/s, lost {}/{}",
                self.publications, self.deliveries_per_s, self.lost, self.expected
            ));
        }
        if let Some(p) = self.publications_per_s {
            parts.push(format!("{p:.0} publications/s"));
        }
        if let Some(l) = &self.latency {
            parts.push(l.line());
        }
        if let Some(l) = &self.latency_local {
            parts.push(format!("local {}", l.line()));
        }
        if let Some(l) = &self.latency_remote {
            parts.push(format!("remote {}", l.line()));
        }
        if let Some(c) = self.connects_per_s {
            parts.push(format!("{c:.0} connects/s"));
        }
        if let Some(h) = &self.handshake {
            parts.push(format!("handshake {}", h.line()));
        }
        if let Some(c) = self.cpu_us_per_connect {
            parts.push(format!("server CPU {c:.0} µs/connect"));
        }
        if let Some(c) = self.cpu_us_per_delivery {
            parts.push(format!("server CPU {c:.3} µs/delivery"));
        }
        if let Some(c) = self.engine_cpu_us_per_publication {
            parts.push(format!("engine CPU {c:.2} µs/publication"));
        }
        if let Some(r) = self.rss_per_connection_kib {
            parts.push(format!("{r:.2} KiB RSS/conn"));
        }
        if let Some(c) = self.idle_cpu_pct {
            parts.push(format!("server CPU {c:.1}% while held"));
        }
        if let Some(r) = self.server_rss_kib {
            parts.push(format!("RSS {:.1} MiB", r as f64 / 1024.0));
        }
        parts.push(format!(
            "errors {} connect, {} disconnects, {} publish",
            self.connect_errors, self.disconnects, self.publish_errors
        ));
        parts.push(format!(
            "generator {:.0}%{}",
            self.generator_cpu_pct,
            if self.generator_bound { " (bound)" } else { "" }
        ));
        parts.join(" | ")
    }
}
