//! The scenarios: connecting many clients, publishing, counting deliveries.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use tidings_client::sse::SseClient;
use tidings_client::{Client, ConnectOptions, Protocol};
use tokio::sync::Notify;

use super::procstat::{rss_kib, CpuWindow};
use super::report::{Latency, Report};
use super::target::{default_config, Spawned};
use super::{EngineArg, LoadArgs, ProtocolArg, PublishVia, Scenario};

/// The payload field that carries the send time (microseconds since the run's
/// epoch). Chosen so that it cannot occur anywhere else in a frame.
const STAMP_KEY: &[u8] = b"\"bt\":";
/// Connections per source address before the next 127.0.0.x is used: below the
/// default ephemeral port range (28,232 ports) with room to spare.
const PER_SOURCE_ADDR: usize = 20_000;
/// HTTP requests to the server API in flight at once.
const API_CONCURRENCY: usize = 32;
/// Bound on one API request (a request that takes longer counts as failed).
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// Most publications per /api/batch request (the server takes up to 1,000).
const MAX_BATCH: u64 = 1000;
/// Shards of the latency histograms (receivers record into shard i % SHARDS).
const SHARDS: usize = 64;
/// Longest latency the histograms hold (60 s, in µs); longer ones are clamped.
const MAX_LATENCY_US: u64 = 60_000_000;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Payload of `size` bytes (at least what the stamp needs) carrying `stamp_us`.
pub(super) fn payload(stamp_us: u64, size: usize) -> String {
    let head = format!("{{\"bt\":{stamp_us},\"p\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + pad + 2);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// Latency histograms sharded so that receivers rarely meet on a lock.
struct Recorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Recorder {
    fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(
                        Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                            .expect("valid histogram bounds"),
                    )
                })
                .collect(),
        })
    }

    fn merged(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds");
        for s in &self.shards {
            let _ = all.add(&*s.lock());
        }
        all
    }
}

/// Counters shared by the receivers and the publisher.
struct Shared {
    delivered: AtomicU64,
    disconnects: AtomicU64,
    /// Time of the latest delivery (µs since the epoch).
    last_delivery_us: AtomicU64,
    /// The publisher waits until `delivered` reaches this (u64::MAX: not waiting).
    want: AtomicU64,
    notify: Notify,
    /// Cancelled when a reading subscriber's connection ends: the deliveries the
    /// window waits for may then never come, so publishing stops.
    reader_lost: tokio_util::sync::CancellationToken,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            delivered: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            want: AtomicU64::new(u64::MAX),
            notify: Notify::new(),
            reader_lost: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Counts the stamps in one received frame and records their latencies.
    fn on_frame(&self, frame: &[u8], hist: &Mutex<Histogram<u64>>) {
        let now = now_us();
        let mut n = 0;
        let mut h = hist.lock();
        tidings_client::for_each_stamp(frame, STAMP_KEY, |sent| {
            n += 1;
            h.saturating_record(now.saturating_sub(sent).clamp(1, MAX_LATENCY_US));
        });
        drop(h);
        if n > 0 {
            self.last_delivery_us.fetch_max(now, Ordering::Relaxed);
            let total = self.delivered.fetch_add(n, Ordering::Relaxed) + n;
            if total >= self.want.load(Ordering::Relaxed) {
                self.notify.notify_one();
            }
        }
    }

    /// Waits until `delivered >= target`.
    async fn wait_delivered(&self, target: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.want.store(target, Ordering::Relaxed);
            if self.delivered.load(Ordering::Relaxed) >= target {
                self.want.store(u64::MAX, Ordering::Relaxed);
                return;
            }
            notified.await;
        }
    }
}

/// One server (node) under test.
struct Node {
    /// `http://host:port`.
    base: String,
    pid: Option<u32>,
}

/// The servers of a run and how to reach them.
struct Env {
    nodes: Vec<Node>,
    spawned: Vec<Spawned>,
    label: String,
    protocol: Protocol,
    ws_path: String,
    api_key: String,
    http: reqwest::Client,
    /// Socket.IO subscribers join a Tidings room (`tidings:join`) and the API
    /// publishes, instead of a client broadcasting to everyone: set when the
    /// engineio protocol is measured against Tidings (spawned, or publishing
    /// through its API).
    rooms: bool,
}

impl Env {
    async fn new(args: &LoadArgs, nodes: usize, engine: Option<EngineArg>) -> anyhow::Result<Env> {
        let protocol = match args.protocol {
            ProtocolArg::Centrifugo => Protocol::Centrifugo,
            ProtocolArg::CentrifugoProtobuf => Protocol::CentrifugoProtobuf,
            ProtocolArg::Raw => Protocol::Raw,
            ProtocolArg::Engineio => Protocol::EngineIo,
        };
        let ws_path = args.ws_path.clone().unwrap_or_else(|| {
            match protocol {
                Protocol::Centrifugo | Protocol::CentrifugoProtobuf => "/connection/websocket",
                Protocol::Raw => "/ws",
                Protocol::EngineIo => "/socket.io/?EIO=4&transport=websocket",
            }
            .to_string()
        });
        let rooms = protocol == Protocol::EngineIo
            && (args.spawn.is_some()
                || matches!(
                    args.publish_via,
                    Some(PublishVia::Api | PublishVia::ApiBatch)
                ));
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(API_CONCURRENCY)
            .tcp_nodelay(true)
            .build()?;
        let label = args.label.clone().unwrap_or_else(|| {
            match (args.spawn.is_some(), protocol) {
                (_, Protocol::CentrifugoProtobuf) => "tidings-protobuf",
                (true, _) | (_, Protocol::Centrifugo) => "tidings",
                (_, Protocol::Raw) => "raw",
                (_, Protocol::EngineIo) => "engineio",
            }
            .to_string()
        });
        if let Some(binary) = &args.spawn {
            let api_key = args
                .api_key
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
            let mut config = match &args.config {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let mut v: serde_json::Value = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not JSON", path.display()))?;
                    v["http_api"]["key"] = api_key.clone().into();
                    v
                }
                None => default_config(&api_key),
            };
            if let Some(engine) = engine {
                config["engine"] = engine_config(engine, args.engine_url.as_deref());
            }
            let mut spawned = Vec::new();
            for i in 0..nodes {
                config["node"]["name"] = format!("bench-{i}").into();
                spawned.push(Spawned::start(binary, &config).await?);
            }
            let nodes = spawned
                .iter()
                .map(|s| Node {
                    base: s.url(),
                    pid: Some(s.pid),
                })
                .collect();
            return Ok(Env {
                nodes,
                spawned,
                label,
                protocol,
                ws_path,
                api_key,
                http,
                rooms,
            });
        }
        let Some(url) = &args.url else {
            bail!("give --spawn BINARY or --url URL");
        };
        if nodes > 1 {
            bail!("the cluster scenario spawns its nodes: give --spawn");
        }
        let base = url.trim_end_matches('/').to_string();
        let addr = tidings_client::resolve(&base).await?;
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "only loopback servers may be benchmarked ({addr} is not)"
        );
        Ok(Env {
            nodes: vec![Node {
                base,
                pid: args.server_pid,
            }],
            spawned: Vec::new(),
            label,
            protocol,
            ws_path,
            api_key: args.api_key.clone().unwrap_or_default(),
            http,
            rooms,
        })
    }

    fn ws_url(&self, node: usize) -> String {
        let base = &self.nodes[node].base;
        let ws = base
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        format!("{ws}{}", self.ws_path)
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.pid).collect()
    }

    fn rss_kib(&self) -> Option<u64> {
        let pids = self.pids();
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|p| rss_kib(*p)).sum()
    }

    async fn stop(self) {
        for s in self.spawned {
            s.stop().await;
        }
    }
}

fn engine_config(engine: EngineArg, url: Option<&str>) -> serde_json::Value {
    // Short enough for every engine (NATS prefixes are at most 32 characters).
    let prefix = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    match engine {
        EngineArg::Redis => serde_json::json!({
            "type": "redis",
            "redis": { "address": [url.unwrap_or("redis://127.0.0.1:6379")], "prefix": prefix }
        }),
        EngineArg::RedisCluster => serde_json::json!({
            "type": "redis",
            "redis": {
                "cluster_address": [url.unwrap_or("127.0.0.1:7000")],
                "prefix": prefix,
            }
        }),
        EngineArg::Nats => serde_json::json!({
            "type": "nats",
            "nats": { "url": url.unwrap_or("nats://127.0.0.1:4222"), "prefix": prefix }
        }),
    }
}

/// The source address of connection `i`.
fn source_addr(i: usize, source_addrs: usize) -> Option<IpAddr> {
    let k = if source_addrs > 0 {
        i % source_addrs + 1
    } else {
        i / PER_SOURCE_ADDR
    };
    if k == 0 {
        return None;
    }
    let host = 1 + k as u32;
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + host);
    Some(IpAddr::V4(ip))
}

/// Raises the open-file limit so `n` connections (and the spawned servers, which
/// inherit it) fit.
fn raise_fd_limit(n: usize) {
    let want = (n as u64) * 2 + 4096;
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() {
        if soft >= want {
            return;
        }
        let cap = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(hard);
        let new = want.min(cap);
        // Raising the hard limit needs privileges; fall back to the hard limit.
        if rlimit::Resource::NOFILE.set(new, new.max(hard)).is_err() {
            let _ = rlimit::Resource::NOFILE.set(hard.min(new).max(soft), hard);
        }
    }
}

fn progress(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

/// A subscriber of any kind.
enum Sub {
    Ws(Client),
    Sse(SseClient),
}

/// Opens `n` connections, `concurrency` at a time. `open(i)` opens connection i.
/// Returns the connections (None where it failed) and their handshake times.
async fn open_all<F, Fut>(
    n: usize,
    concurrency: usize,
    bar: &ProgressBar,
    open: F,
) -> (Vec<Option<Sub>>, Histogram<u64>, u64)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Sub>>,
{
    let mut subs: Vec<Option<Sub>> = (0..n).map(|_| None).collect();
    let mut hist = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds");
    let mut errors = 0;
    let mut first_error = None;
    let mut pending = futures_util::stream::iter(0..n)
        .map(|i| {
            let fut = open(i);
            async move {
                let t = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(30), fut).await;
                (i, t.elapsed(), r)
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some((i, took, r)) = pending.next().await {
        bar.inc(1);
        match r {
            Ok(Ok(sub)) => {
                subs[i] = Some(sub);
                hist.saturating_record(
                    u64::try_from(took.as_micros())
                        .unwrap_or(u64::MAX)
                        .clamp(1, MAX_LATENCY_US),
                );
            }
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(_) => {
                errors += 1;
                first_error.get_or_insert_with(|| "timed out".to_string());
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("{errors} connections failed; first error: {e}");
    }
    (subs, hist, errors)
}

pub async fn run(scenario: Scenario) -> anyhow::Result<Report> {
    let _ = epoch();
    match scenario {
        Scenario::Fanout(a) => fanout("fanout", a, false, 1, None).await,
        Scenario::Latency(mut a) => {
            let rate = a.rate.unwrap_or(50.0);
            anyhow::ensure!(rate > 0.0, "the latency scenario needs a --rate above 0");
            a.rate = Some(rate);
            let secs = a.duration.unwrap_or(10.0);
            a.messages = Some(a.messages.unwrap_or((rate * secs).ceil() as u64));
            fanout("latency", a, false, 1, None).await
        }
        Scenario::SseFanout(a) => fanout("sse-fanout", a, true, 1, None).await,
        Scenario::Cluster(a) => {
            anyhow::ensure!(
                (2..=3).contains(&a.nodes),
                "the cluster scenario runs 2 or 3 nodes"
            );
            let nodes = a.nodes;
            let engine = a.engine;
            fanout("cluster", a, false, nodes, Some(engine)).await
        }
        Scenario::Idle(a) => idle(a).await,
        Scenario::Connect(a) => connect(a).await,
        Scenario::Swarm(_) | Scenario::SwarmWorker(_) => {
            bail!("the swarm scenario has its own runner")
        }
    }
}

async fn open_ws(
    env: &Env,
    addrs: &[SocketAddr],
    node: usize,
    i: usize,
    source_addrs: usize,
    channel: &str,
) -> anyhow::Result<Sub> {
    let opts = ConnectOptions {
        bind: source_addr(i, source_addrs),
        ..ConnectOptions::default()
    };
    let mut c = Client::connect(&env.ws_url(node), addrs[node], env.protocol, &opts).await?;
    if env.rooms {
        c.join_room(channel).await?;
    } else {
        c.subscribe(channel).await?;
    }
    Ok(Sub::Ws(c))
}

async fn addrs(env: &Env) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for n in &env.nodes {
        out.push(tidings_client::resolve(&n.base).await?);
    }
    Ok(out)
}

/// Fan-out: subscribers on one channel, publications via the API or a client.
async fn fanout(
    name: &str,
    args: LoadArgs,
    sse: bool,
    nodes: usize,
    engine: Option<EngineArg>,
) -> anyhow::Result<Report> {
    raise_fd_limit(args.connections);
    let env = Env::new(&args, nodes, engine).await?;
    let result = fanout_on(name, &args, sse, &env).await;
    env.stop().await;
    result
}

async fn fanout_on(name: &str, args: &LoadArgs, sse: bool, env: &Env) -> anyhow::Result<Report> {
    let via = args.publish_via.unwrap_or(match env.protocol {
        Protocol::Centrifugo | Protocol::CentrifugoProtobuf => PublishVia::Api,
        _ if env.rooms => PublishVia::Api,
        _ => PublishVia::Client,
    });
    anyhow::ensure!(
        !sse || env.protocol.is_centrifugo(),
        "sse-fanout needs a Tidings server"
    );
    anyhow::ensure!(
        via == PublishVia::Client || env.protocol.is_centrifugo() || env.rooms,
        "--publish-via api and api-batch need a Tidings server"
    );
    // Publications per request (1 unless batching).
    let batch = if via == PublishVia::ApiBatch {
        anyhow::ensure!(
            (1..=MAX_BATCH).contains(&args.batch),
            "--batch must be between 1 and {MAX_BATCH}"
        );
        anyhow::ensure!(
            args.rate.is_some_and(|r| r > 0.0) || args.window >= args.batch,
            "--window ({}) must be at least --batch ({}): a batch leaves when the window has room for all of it",
            args.window,
            args.batch
        );
        args.batch
    } else {
        1
    };
    let n = args.connections;
    let addrs = addrs(env).await?;
    let nodes = env.nodes.len();
    let bar = progress(n as u64, "connecting", args.quiet);
    let channel = args.channel.as_str();
    let (subs, _, connect_errors) = open_all(n, args.concurrency, &bar, |i| {
        let addrs = &addrs;
        async move {
            let node = i % nodes;
            if sse {
                let base = format!("{}/connection/uni_sse", env.nodes[node].base);
                Ok(Sub::Sse(
                    SseClient::connect(&env.http, &base, channel).await?,
                ))
            } else {
                open_ws(env, addrs, node, i, args.source_addrs, channel).await
            }
        }
    })
    .await;
    bar.finish_and_clear();

    // Slow readers: every k-th subscriber never reads.
    let slow_every = if args.slow_readers > 0.0 {
        ((100.0 / args.slow_readers).round() as usize).max(1)
    } else {
        usize::MAX
    };
    let shared = Shared::new();
    let local = Recorder::new();
    let remote = Recorder::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut readers = 0u64;
    let mut held = Vec::new();
    for (i, sub) in subs.into_iter().enumerate() {
        let Some(sub) = sub else { continue };
        if slow_every != usize::MAX && i % slow_every == 0 {
            held.push(sub);
            continue;
        }
        readers += 1;
        let shared = shared.clone();
        let rec = if i % nodes == 0 {
            local.clone()
        } else {
            remote.clone()
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            let hist = &rec.shards[i % SHARDS];
            let mut sub = sub;
            loop {
                let frame = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = recv(&mut sub) => r,
                };
                match frame {
                    Some(bytes) => shared.on_frame(&bytes, hist),
                    None => {
                        shared.disconnects.fetch_add(1, Ordering::Relaxed);
                        shared.reader_lost.cancel();
                        return;
                    }
                }
            }
        });
    }
    anyhow::ensure!(readers > 0, "no subscriber could connect");

    let mut publisher = match via {
        PublishVia::Api | PublishVia::ApiBatch => None,
        PublishVia::Client => {
            let opts = ConnectOptions::default();
            Some(Client::connect(&env.ws_url(0), addrs[0], env.protocol, &opts).await?)
        }
    };

    let messages = args.messages.unwrap_or(2000);
    let rate = args.rate.filter(|r| *r > 0.0);
    let window = args.window.max(1);
    let max_time = Duration::from_secs_f64(args.max_time);
    let api_url = if via == PublishVia::ApiBatch {
        format!("{}/api/batch", env.nodes[0].base)
    } else {
        format!("{}/api/publish", env.nodes[0].base)
    };
    let channel_json = serde_json::to_string(channel)?;
    let bar = progress(messages * readers, name, args.quiet);
    let ticker = {
        let bar = bar.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(shared.delivered.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let server_cpu: Vec<CpuWindow> = env.pids().into_iter().map(CpuWindow::start).collect();
    let engine_cpu = args.engine_pid.map(CpuWindow::start);
    let own_cpu = CpuWindow::start(std::process::id());
    let start = Instant::now();
    let start_us = now_us();
    let mut sent = 0u64;
    let mut publish_errors = 0u64;
    let mut api_inflight = FuturesUnordered::new();
    let deadline = tokio::time::Instant::now() + max_time;
    while sent < messages {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        let can_send = api_inflight.len() < API_CONCURRENCY;
        // Publications in the next request: a batch, the last one maybe shorter.
        let k = batch.min(messages - sent);
        // When the next request may leave: the scheduled time of its last
        // publication, or when the window has room for all of it.
        let (ready, stamp) = match rate {
            Some(r) => {
                let at = start + Duration::from_secs_f64((sent + k - 1) as f64 / r);
                let stamp = start_us + u64::try_from((at - start).as_micros()).unwrap_or(0);
                (Either::Sleep(tokio::time::sleep_until(at.into())), stamp)
            }
            None => {
                let done_needed = ((sent + k - 1).saturating_sub(window)) * readers;
                (Either::Wait(done_needed), 0)
            }
        };
        let ready = async {
            match ready {
                Either::Sleep(s) => s.await,
                Either::Wait(t) => shared.wait_delivered(t).await,
            }
        };
        tokio::select! {
            biased;
            () = shared.reader_lost.cancelled() => {
                eprintln!("a subscriber's connection closed; publishing stops");
                break;
            }
            () = tokio::time::sleep_until(deadline) => break,
            r = api_inflight.next(), if !api_inflight.is_empty() => {
                publish_errors += r.unwrap_or(0);
            }
            r = recv_publisher(&mut publisher) => {
                match r {
                    Some(errors) => publish_errors += errors,
                    None => bail!("the publisher's connection was closed"),
                }
            }
            () = ready, if can_send => {
                let stamp = if rate.is_some() { stamp } else { now_us() };
                match &mut publisher {
                    Some(p) => p.publish(channel, &payload(stamp, args.payload_size)).await?,
                    None => {
                        let body = if via == PublishVia::ApiBatch {
                            // Each publication carries its own scheduled time when
                            // paced, the send time otherwise.
                            let stamp_of = |j: u64| match rate {
                                Some(r) => {
                                    start_us + (((sent + j) as f64 / r) * 1e6) as u64
                                }
                                None => stamp,
                            };
                            batch_body(&channel_json, k, args.batch_parallel, |j| {
                                payload(stamp_of(j), args.payload_size)
                            })
                        } else {
                            let data = payload(stamp, args.payload_size);
                            format!("{{\"channel\":{channel_json},\"data\":{data}}}")
                        };
                        let req = env
                            .http
                            .post(&api_url)
                            .header("X-API-Key", &env.api_key)
                            .header("Content-Type", "application/json")
                            .timeout(API_TIMEOUT)
                            .body(body)
                            .send();
                        api_inflight.push(async move {
                            match req.await {
                                Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                                    Ok(b) => reply_errors(&b, k),
                                    Err(_) => k,
                                },
                                _ => k,
                            }
                        });
                    }
                }
                sent += k;
            }
        }
    }
    // Finish the API requests still in flight.
    while let Some(errors) = api_inflight.next().await {
        publish_errors += errors;
    }
    let accepted = sent.saturating_sub(publish_errors);
    let expected = accepted * readers;
    // Wait for the last deliveries, reading the publisher's connection meanwhile.
    let drain = tokio::time::sleep(Duration::from_secs_f64(args.drain_timeout));
    tokio::pin!(drain);
    loop {
        tokio::select! {
            () = shared.wait_delivered(expected) => break,
            () = &mut drain => break,
            r = recv_publisher(&mut publisher) => {
                if let Some(errors) = r {
                    publish_errors += errors;
                }
            }
        }
    }
    let received = shared.delivered.load(Ordering::Relaxed);
    let last = shared.last_delivery_us.load(Ordering::Relaxed);
    let window_s = if received > 0 && last > start_us {
        (last - start_us) as f64 / 1e6
    } else {
        start.elapsed().as_secs_f64()
    };
    let cpu: Option<f64> = if server_cpu.is_empty() {
        None
    } else {
        server_cpu.iter().map(CpuWindow::seconds).sum()
    };
    let engine_cpu = engine_cpu.as_ref().and_then(CpuWindow::seconds);
    let own = own_cpu.seconds().unwrap_or(0.0);
    let wall = start.elapsed().as_secs_f64();
    stop.cancel();
    ticker.abort();
    bar.finish_and_clear();
    let rss = env.rss_kib();
    drop(held);
    if let Some(p) = publisher {
        p.close().await;
    }

    let all = {
        let mut h = local.merged();
        let _ = h.add(remote.merged());
        h
    };
    let gen_pct = own / wall * 100.0;
    Ok(Report {
        scenario: name.to_string(),
        server: env.label.clone(),
        connections: args.connections,
        connect_errors,
        disconnects: shared.disconnects.load(Ordering::Relaxed),
        publications: sent,
        publish_errors,
        expected,
        received,
        lost: expected.saturating_sub(received),
        duration_s: window_s,
        deliveries_per_s: received as f64 / window_s.max(1e-9),
        publications_per_s: Some(accepted as f64 / window_s.max(1e-9)),
        engine_cpu_s: engine_cpu,
        engine_cpu_us_per_publication: engine_cpu
            .filter(|_| accepted > 0)
            .map(|c| c * 1e6 / accepted as f64),
        latency: Some(Latency::from_histogram(&all)),
        latency_local: (env.nodes.len() > 1).then(|| Latency::from_histogram(&local.merged())),
        latency_remote: (env.nodes.len() > 1).then(|| Latency::from_histogram(&remote.merged())),
        server_cpu_s: cpu,
        cpu_us_per_delivery: cpu
            .filter(|_| received > 0)
            .map(|c| c * 1e6 / received as f64),
        server_rss_kib: rss,
        generator_cpu_pct: gen_pct,
        generator_threads: args.threads,
        generator_bound: gen_pct >= 90.0 * args.threads as f64,
        ..Report::default()
    })
}

enum Either {
    Sleep(tokio::time::Sleep),
    Wait(u64),
}

async fn recv(sub: &mut Sub) -> Option<bytes::Bytes> {
    match sub {
        Sub::Ws(c) => c.recv().await.ok().flatten(),
        Sub::Sse(s) => s.recv().await.ok().flatten(),
    }
}

/// The error replies in the next frame of the publisher's connection (`None` when
/// it closed); pending forever without a publisher.
async fn recv_publisher(publisher: &mut Option<Client>) -> Option<u64> {
    match publisher {
        Some(p) => match p.recv().await {
            Ok(Some(frame)) => Some(p.errors_in(&frame)),
            _ => None,
        },
        None => std::future::pending().await,
    }
}

/// The body of one /api/batch request of `k` publishes to the channel
/// (`channel_json` is its JSON string); `data(j)` is the j-th payload.
fn batch_body(channel_json: &str, k: u64, parallel: bool, data: impl Fn(u64) -> String) -> String {
    let mut body = String::from("{\"commands\":[");
    for j in 0..k {
        if j > 0 {
            body.push(',');
        }
        body.push_str("{\"publish\":{\"channel\":");
        body.push_str(channel_json);
        body.push_str(",\"data\":");
        body.push_str(&data(j));
        body.push_str("}}");
    }
    body.push(']');
    if parallel {
        body.push_str(",\"parallel\":true");
    }
    body.push('}');
    body
}

/// Publications refused in the reply to an API request of `k` publications: the
/// error objects in it, or all `k` when it is not the reply expected.
fn reply_errors(body: &[u8], k: u64) -> u64 {
    let errors = count_errors(body);
    if k == 1 {
        return errors.min(1);
    }
    // A batch reply holds one reply per command.
    let ok = body.windows(10).filter(|w| w == b"\"publish\":").count() as u64;
    if ok + errors == k {
        errors
    } else {
        k
    }
}

/// Error replies in a frame of the publisher's connection.
fn count_errors(frame: &[u8]) -> u64 {
    frame.windows(8).filter(|w| w == b"\"error\":").count() as u64
}

/// Idle: many connections, each on a channel of its own, held for a while.
async fn idle(args: LoadArgs) -> anyhow::Result<Report> {
    raise_fd_limit(args.connections);
    let env = Env::new(&args, 1, None).await?;
    let result = idle_on(&args, &env).await;
    env.stop().await;
    result
}

async fn idle_on(args: &LoadArgs, env: &Env) -> anyhow::Result<Report> {
    let n = args.connections;
    let addrs = addrs(env).await?;
    let before = env.rss_kib();
    let own_cpu = CpuWindow::start(std::process::id());
    let start = Instant::now();
    let bar = progress(n as u64, "connecting", args.quiet);
    let (subs, _, connect_errors) = open_all(n, args.concurrency, &bar, |i| {
        let addrs = &addrs;
        async move {
            let channel = format!("personal:{i}");
            open_ws(env, addrs, 0, i, args.source_addrs, &channel).await
        }
    })
    .await;
    bar.finish_and_clear();
    let shared = Shared::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut open = 0u64;
    for sub in subs.into_iter().flatten() {
        open += 1;
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sub = sub;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = recv(&mut sub) => if r.is_none() {
                        shared.disconnects.fetch_add(1, Ordering::Relaxed);
                        return;
                    },
                }
            }
        });
    }
    let hold = Duration::from_secs_f64(args.hold);
    // Server CPU while the connections only sit there: pings, timers, keep-alive.
    let held_cpu: Vec<CpuWindow> = env.pids().into_iter().map(CpuWindow::start).collect();
    let bar = progress((hold.as_secs_f64() * 10.0) as u64, "holding", args.quiet);
    let held_from = Instant::now();
    while held_from.elapsed() < hold {
        tokio::time::sleep(Duration::from_millis(100).min(hold)).await;
        bar.set_position((held_from.elapsed().as_secs_f64() * 10.0) as u64);
    }
    bar.finish_and_clear();
    let held_s = held_from.elapsed().as_secs_f64();
    let held_cpu: Option<f64> = if held_cpu.is_empty() {
        None
    } else {
        held_cpu.iter().map(CpuWindow::seconds).sum()
    };
    let after = env.rss_kib();
    let own = own_cpu.seconds().unwrap_or(0.0);
    let wall = start.elapsed().as_secs_f64();
    stop.cancel();
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if open > 0 => Some(a.saturating_sub(b) as f64 / open as f64),
        _ => None,
    };
    Ok(Report {
        scenario: "idle".into(),
        server: env.label.clone(),
        connections: n,
        connect_errors,
        disconnects: shared.disconnects.load(Ordering::Relaxed),
        duration_s: wall,
        server_rss_kib: after,
        server_rss_before_kib: before,
        rss_per_connection_kib: per_conn,
        server_cpu_s: held_cpu,
        idle_cpu_pct: held_cpu.map(|c| c / held_s * 100.0),
        generator_cpu_pct: own / wall * 100.0,
        generator_threads: args.threads,
        generator_bound: false,
        ..Report::default()
    })
}

/// Connect: how fast connections are opened and subscribed.
async fn connect(args: LoadArgs) -> anyhow::Result<Report> {
    raise_fd_limit(args.connections);
    let env = Env::new(&args, 1, None).await?;
    let result = connect_on(&args, &env).await;
    env.stop().await;
    result
}

async fn connect_on(args: &LoadArgs, env: &Env) -> anyhow::Result<Report> {
    let n = args.connections;
    let addrs = addrs(env).await?;
    let server_cpu: Vec<CpuWindow> = env.pids().into_iter().map(CpuWindow::start).collect();
    let own_cpu = CpuWindow::start(std::process::id());
    let start = Instant::now();
    let bar = progress(n as u64, "connecting", args.quiet);
    let (subs, hist, connect_errors) = open_all(n, args.concurrency, &bar, |i| {
        let addrs = &addrs;
        async move {
            let channel = format!("personal:{i}");
            open_ws(env, addrs, 0, i, args.source_addrs, &channel).await
        }
    })
    .await;
    let wall = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let cpu: Option<f64> = if server_cpu.is_empty() {
        None
    } else {
        server_cpu.iter().map(CpuWindow::seconds).sum()
    };
    let own = own_cpu.seconds().unwrap_or(0.0);
    let rss = env.rss_kib();
    let ok = subs.iter().filter(|s| s.is_some()).count();
    drop(subs);
    let gen_pct = own / wall * 100.0;
    Ok(Report {
        scenario: "connect".into(),
        server: env.label.clone(),
        connections: n,
        connect_errors,
        duration_s: wall,
        connects_per_s: Some(ok as f64 / wall.max(1e-9)),
        cpu_us_per_connect: cpu.filter(|_| ok > 0).map(|c| c * 1e6 / ok as f64),
        handshake: Some(Latency::from_histogram(&hist)),
        server_cpu_s: cpu,
        server_rss_kib: rss,
        generator_cpu_pct: gen_pct,
        generator_threads: args.threads,
        generator_bound: gen_pct >= 90.0 * args.threads as f64,
        ..Report::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_asked_size_and_the_stamp() {
        let p = payload(123_456, 100);
        assert_eq!(p.len(), 100);
        let v: serde_json::Value = serde_json::from_str(&p).expect("JSON");
        assert_eq!(v["bt"], 123_456);
        let mut seen = Vec::new();
        tidings_client::for_each_stamp(p.as_bytes(), STAMP_KEY, |s| seen.push(s));
        assert_eq!(seen, vec![123_456]);
    }

    #[test]
    fn source_addresses_spread_past_one_port_range() {
        assert_eq!(source_addr(0, 0), None);
        assert_eq!(source_addr(PER_SOURCE_ADDR - 1, 0), None);
        assert_eq!(
            source_addr(PER_SOURCE_ADDR, 0),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        );
        assert_eq!(
            source_addr(3, 2),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)))
        );
        assert_eq!(
            source_addr(300 * PER_SOURCE_ADDR, 0),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 45)))
        );
    }
}
