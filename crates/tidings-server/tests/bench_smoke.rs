//! Smoke runs of `tidings bench`: each scenario at small N for about a second, to
//! keep the tool working. They check that the JSON report is complete and that
//! nothing was lost; they assert no speed (benchmarks are for docs/benchmarks.md).

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let bin = env!("CARGO_BIN_EXE_tidings");
    let out = Command::new(bin)
        .arg("bench")
        .args(args)
        .args(["--spawn", bin, "--json", "--quiet", "--max-time", "30"])
        .output()
        .expect("run tidings bench");
    assert!(
        out.status.success(),
        "tidings bench {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v:#}"))
}

/// Checks what every fan-out report must hold: N × M deliveries, none lost, and
/// the measured fields present.
fn check_fanout(v: &Value, scenario: &str, subscribers: u64, messages: u64) {
    assert_eq!(v["scenario"], scenario);
    assert_eq!(u(v, "connect_errors"), 0, "{v:#}");
    assert_eq!(u(v, "publications"), messages, "{v:#}");
    assert_eq!(u(v, "publish_errors"), 0, "{v:#}");
    assert_eq!(u(v, "expected"), subscribers * messages, "{v:#}");
    assert_eq!(u(v, "received"), subscribers * messages, "{v:#}");
    assert_eq!(u(v, "lost"), 0, "{v:#}");
    assert_eq!(u(&v["latency"], "count"), subscribers * messages, "{v:#}");
    let lat = &v["latency"];
    assert!(u(lat, "p50_us") <= u(lat, "p99_us") && u(lat, "p99_us") <= u(lat, "max_us"));
    assert!(
        v["deliveries_per_s"].as_f64().is_some_and(|d| d > 0.0),
        "{v:#}"
    );
    assert!(v["server_cpu_s"].as_f64().is_some(), "{v:#}");
    assert!(v["cpu_us_per_delivery"].as_f64().is_some(), "{v:#}");
    assert!(u(v, "server_rss_kib") > 0);
}

#[test]
fn fanout_through_the_api() {
    let v = bench(&["fanout", "-n", "10", "-m", "50"]);
    check_fanout(&v, "fanout", 10, 50);
}

#[test]
fn fanout_through_a_client() {
    let v = bench(&["fanout", "-n", "10", "-m", "50", "--publish-via", "client"]);
    check_fanout(&v, "fanout", 10, 50);
}

#[test]
fn fanout_to_protobuf_subscribers() {
    let v = bench(&[
        "fanout",
        "-n",
        "10",
        "-m",
        "50",
        "--protocol",
        "centrifugo-protobuf",
    ]);
    check_fanout(&v, "fanout", 10, 50);
    assert_eq!(v["server"], "tidings-protobuf");
}

#[test]
fn fanout_to_protobuf_subscribers_through_a_protobuf_client() {
    let v = bench(&[
        "fanout",
        "-n",
        "10",
        "-m",
        "50",
        "--protocol",
        "centrifugo-protobuf",
        "--publish-via",
        "client",
    ]);
    check_fanout(&v, "fanout", 10, 50);
}

#[test]
fn fanout_through_api_batches() {
    // 50 is not a multiple of 8: the last batch is shorter.
    let v = bench(&[
        "fanout",
        "-n",
        "10",
        "-m",
        "50",
        "--publish-via",
        "api-batch",
        "--batch",
        "8",
        "--window",
        "16",
    ]);
    check_fanout(&v, "fanout", 10, 50);
    assert!(
        v["publications_per_s"].as_f64().is_some_and(|p| p > 0.0),
        "{v:#}"
    );
}

#[test]
fn fanout_through_parallel_api_batches_at_a_rate() {
    let v = bench(&[
        "fanout",
        "-n",
        "10",
        "-m",
        "40",
        "--rate",
        "200",
        "--publish-via",
        "api-batch",
        "--batch",
        "5",
        "--batch-parallel",
    ]);
    check_fanout(&v, "fanout", 10, 40);
}

#[test]
fn a_batch_larger_than_the_window_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args([
            "bench",
            "fanout",
            "--url",
            "http://127.0.0.1:9",
            "--publish-via",
        ])
        .args(["api-batch", "--batch", "32", "--window", "16", "--quiet"])
        .output()
        .expect("run tidings bench");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--window"), "{err}");
}

#[test]
fn latency_paced() {
    let v = bench(&["latency", "-n", "10", "--rate", "50", "--duration", "1"]);
    check_fanout(&v, "latency", 10, 50);
}

#[test]
fn sse_fanout() {
    let v = bench(&["sse-fanout", "-n", "10", "-m", "50"]);
    check_fanout(&v, "sse-fanout", 10, 50);
}

#[test]
fn idle_connections_are_held() {
    let v = bench(&["idle", "-n", "10", "--hold", "1"]);
    assert_eq!(v["scenario"], "idle");
    assert_eq!(u(&v, "connect_errors"), 0, "{v:#}");
    assert_eq!(u(&v, "disconnects"), 0, "{v:#}");
    assert!(u(&v, "server_rss_kib") > 0);
    assert!(u(&v, "server_rss_before_kib") > 0);
    assert!(v["rss_per_connection_kib"].as_f64().is_some(), "{v:#}");
}

#[test]
fn idle_connections_from_several_source_addresses() {
    let v = bench(&["idle", "-n", "12", "--hold", "0.2", "--source-addrs", "3"]);
    assert_eq!(u(&v, "connect_errors"), 0, "{v:#}");
    assert_eq!(u(&v, "disconnects"), 0, "{v:#}");
}

#[test]
fn connect_rate() {
    let v = bench(&["connect", "-n", "20", "--concurrency", "4"]);
    assert_eq!(v["scenario"], "connect");
    assert_eq!(u(&v, "connect_errors"), 0, "{v:#}");
    assert_eq!(u(&v["handshake"], "count"), 20, "{v:#}");
    assert!(
        v["connects_per_s"].as_f64().is_some_and(|c| c > 0.0),
        "{v:#}"
    );
}

#[test]
fn slow_readers_are_not_counted_as_loss() {
    let v = bench(&[
        "latency",
        "-n",
        "10",
        "--rate",
        "50",
        "--duration",
        "0.5",
        "--slow-readers",
        "10",
    ]);
    // One in ten never reads: nine readers, 25 publications.
    check_fanout(&v, "latency", 9, 25);
}

#[test]
fn help_documents_every_scenario() {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["bench", "--help"])
        .output()
        .expect("run tidings bench --help");
    let help = String::from_utf8_lossy(&out.stdout);
    for scenario in [
        "fanout",
        "latency",
        "idle",
        "connect",
        "sse-fanout",
        "cluster",
    ] {
        assert!(help.contains(scenario), "{scenario} missing from:\n{help}");
    }
}

/// The cluster scenario on two spawned nodes joined by `engine` at `url`, with
/// `extra` options; returns the report.
async fn cluster_through(engine: &'static str, url: String, extra: &[&str]) -> Value {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let v = tokio::task::spawn_blocking(move || {
        let mut args = vec![
            "cluster",
            "-n",
            "10",
            "-m",
            "50",
            "--nodes",
            "2",
            "--engine",
            engine,
            "--engine-url",
            &url,
        ];
        args.extend(extra.iter().map(String::as_str));
        bench(&args)
    })
    .await
    .expect("bench thread");
    check_fanout(&v, "cluster", 10, 50);
    assert!(v["latency_remote"].is_object(), "{v:#}");
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_through_redis() {
    let redis = tidings_testkit::RedisServer::start()
        .await
        .expect("start redis-server");
    cluster_through("redis", redis.url(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_through_redis_with_api_batches() {
    let redis = tidings_testkit::RedisServer::start()
        .await
        .expect("start redis-server");
    let pid = redis.pid().expect("redis-server pid").to_string();
    let v = cluster_through(
        "redis",
        redis.url(),
        &[
            "--publish-via",
            "api-batch",
            "--batch",
            "16",
            "--window",
            "32",
            "--engine-pid",
            &pid,
        ],
    )
    .await;
    assert!(v["engine_cpu_s"].as_f64().is_some(), "{v:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_through_nats() {
    let nats = tidings_testkit::NatsServer::start()
        .await
        .expect("start nats-server");
    cluster_through("nats", nats.url(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_through_nats_with_parallel_api_batches() {
    let nats = tidings_testkit::NatsServer::start()
        .await
        .expect("start nats-server");
    cluster_through(
        "nats",
        nats.url(),
        &[
            "--publish-via",
            "api-batch",
            "--batch",
            "16",
            "--window",
            "32",
            "--batch-parallel",
        ],
    )
    .await;
}
