//! `tidings bench swarm`: many connections through a cluster of Tidings nodes, with
//! the load generator spread over several processes (`tidings bench swarm-worker`,
//! spawned and driven by this one).
//!
//! One process holds at most about 19,500 sockets on a machine whose open-file cap
//! is 20,000, so a 100,000-connection run needs several nodes and several
//! generator processes. The coordinator spawns the nodes (joined by Redis or NATS,
//! which the caller runs) and the workers, then measures in phases:
//!
//! 1. connect: every client connects, subscribes to the shared channel (history,
//!    forced recovery) and to a personal one (no history), the first
//!    `--presence-members` also to a presence channel; RSS per connection across
//!    the nodes;
//! 2. broadcast: one publication to the shared channel, until the last delivery;
//! 3. presence: `presence_stats` and `presence` of the presence channel;
//! 4. sweep: publications on the shared channel at rising rates, with the CPU of
//!    every process, until deliveries fall behind;
//! 5. kill: `kill -9` of one node while publishing; its clients reconnect to the
//!    others and recover (history, `recover: true`), and every client's position
//!    is checked against the channel's last offset.
//!
//! Workers talk to the coordinator with one line per request on stdin (`status`,
//! `reset`, `quit`) and one JSON line per answer on stdout. A worker exits when its
//! stdin closes, so it never outlives the coordinator. Everything is bounded: counts
//! come from the command line and every phase has a deadline.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::Args;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};
use tidings_client::{Client, ConnectOptions, Protocol};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::load::payload;
use super::procstat::{cpu_time, rss_kib};
use super::target::{default_config, Spawned};
use super::EngineArg;

/// Longest latency the histograms hold (60 s, in µs).
const MAX_LATENCY_US: u64 = 60_000_000;
/// Namespace of the shared channel: history and forced recovery.
const NS: &str = "hk";
/// Namespace of the personal channels: no history. (With the NATS engine a
/// channel with history is a JetStream stream of its own, and subscribing reads
/// its position, so 100,000 personal channels with history would be 100,000
/// streams; the first run here failed near 10,000 of them.)
const PERSONAL_NS: &str = "hku";
/// Namespace of the presence channel.
const PRESENCE_NS: &str = "hkp";
/// Most API requests in flight while publishing at a rate.
const API_INFLIGHT: usize = 64;
/// Bound on one API request.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of the coordinator.
#[derive(Args, Clone, Debug)]
pub struct SwarmArgs {
    /// The Tidings binary the nodes run (e.g. target/release/tidings).
    #[arg(long, value_name = "BINARY")]
    pub spawn: PathBuf,
    /// Tidings nodes. After `kill -9` of one, the others must hold every client:
    /// with 100,000 clients and about 19,500 sockets per process that takes 7.
    #[arg(long, default_value_t = 7)]
    pub nodes: usize,
    /// Engine joining the nodes (redis or nats).
    #[arg(long, value_enum, default_value = "redis")]
    pub engine: EngineArg,
    /// Address of the engine's server (redis://127.0.0.1:PORT or nats://127.0.0.1:PORT).
    #[arg(long)]
    pub engine_url: String,
    /// Process id of the engine's server, to read its CPU time and RSS.
    #[arg(long)]
    pub engine_pid: Option<u32>,
    /// Client connections in all.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    pub connections: usize,
    /// Load generator processes (each with its own source address 127.0.0.x).
    #[arg(long, default_value_t = 7)]
    pub workers: usize,
    /// Connections each worker opens at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Clients (the first ones) that also join the presence channel.
    #[arg(long, default_value_t = 10_000)]
    pub presence_members: usize,
    /// `presence_stats` and `presence` calls to time.
    #[arg(long, default_value_t = 20)]
    pub presence_calls: usize,
    /// Publication rates of the sweep, per second, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75,1,1.5,2,3")]
    pub rates: Vec<f64>,
    /// Seconds each rate of the sweep lasts.
    #[arg(long, default_value_t = 5.0)]
    pub step_secs: f64,
    /// Publications per second on the shared channel during the kill phase.
    #[arg(long, default_value_t = 0.5)]
    pub kill_rate: f64,
    /// `client.connection_rate_limit` of every node (new connections per second).
    #[arg(long, default_value_t = 1000)]
    pub connection_rate_limit: u64,
    /// Seconds allowed for all clients to connect and subscribe.
    #[arg(long, default_value_t = 240.0)]
    pub connect_timeout: f64,
    /// Seconds a client's connect and subscribes may take before it gives up
    /// and tries again (as the SDKs do).
    #[arg(long, default_value_t = 5.0)]
    pub open_timeout: f64,
    /// Seconds allowed for the killed node's clients to come back.
    #[arg(long, default_value_t = 120.0)]
    pub recover_timeout: f64,
    /// Size of each publication's JSON payload in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload_size: usize,
    /// First source address of the workers: worker w binds 127.0.0.(FIRST + w).
    #[arg(long, default_value_t = 10)]
    pub first_source_addr: u8,
    /// Fail (exit status 1) when a correctness check fails: a client that did not
    /// connect or come back, a lost delivery, a silent gap, a wrong presence count.
    /// No performance figure is checked.
    #[arg(long)]
    pub check: bool,
    /// Print the report as JSON after the summary.
    #[arg(long)]
    pub json: bool,
}

/// Options of a worker (spawned by the coordinator).
#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    /// Base URLs of the nodes (http://127.0.0.1:PORT), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub urls: Vec<String>,
    /// Global index of this worker's first client.
    #[arg(long)]
    pub first: usize,
    /// Clients of this worker.
    #[arg(long)]
    pub count: usize,
    /// Source address to bind (loopback).
    #[arg(long)]
    pub source_addr: IpAddr,
    /// Clients with a global index below this also join the presence channel.
    #[arg(long, default_value_t = 0)]
    pub presence_members: usize,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds a connect and its subscribes may take before the attempt is
    /// given up and retried.
    #[arg(long, default_value_t = 5.0)]
    pub open_timeout: f64,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn shared_channel() -> String {
    format!("{NS}:shared")
}

fn presence_channel() -> String {
    format!("{PRESENCE_NS}:room")
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// A small deterministic generator for reconnect jitter (no shared RNG state).
fn jitter(seed: u64, max: Duration) -> Duration {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(x % ms)
}

// --------------------------------------------------------------------------------
// Worker
// --------------------------------------------------------------------------------

/// Counters of one worker, read by `status`.
struct WState {
    /// Clients connected and subscribed right now.
    subscribed: AtomicU64,
    /// Clients that were subscribed at least once.
    ever: AtomicU64,
    /// Publications of the shared channel delivered (live or recovered) since reset.
    delivered: AtomicU64,
    /// Of those, delivered inside a recovery.
    recovered_pubs: AtomicU64,
    /// Publications seen twice.
    dups: AtomicU64,
    /// Offsets skipped without the server saying so: silent loss.
    silent_lost: AtomicU64,
    /// Offsets missed in a recovery answered `recovered: false` (reported loss).
    reported_lost: AtomicU64,
    recovered_ok: AtomicU64,
    recovered_false: AtomicU64,
    /// Connections that ended, by the node they were on.
    disconnects: Vec<AtomicU64>,
    /// Connection attempts refused with HTTP 503 (connection rate limit).
    refused_503: AtomicU64,
    /// Attempts given up after `--open-timeout`.
    timeouts: AtomicU64,
    /// Resubscribes after the server unsubscribed a client from the shared
    /// channel (insufficient state).
    resubscribes: AtomicU64,
    /// Other failed connection attempts.
    connect_errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Latest live delivery (µs since the Unix epoch).
    last_delivery_us: AtomicU64,
    /// Longest time from losing a connection to being subscribed again (µs).
    max_back_us: AtomicU64,
    /// Each client's last offset on the shared channel (`u64::MAX`: none yet).
    offsets: Vec<AtomicU64>,
    /// Latency of live deliveries (send time in the payload to receipt).
    hist: Mutex<Histogram<u64>>,
}

struct WCfg {
    urls: Vec<String>,
    addrs: Vec<SocketAddr>,
    bind: IpAddr,
    shared: String,
    shared_bytes: Vec<u8>,
    presence: String,
    presence_members: usize,
    open_timeout: Duration,
}

/// A client's position in a channel.
#[derive(Clone, Default)]
struct Pos {
    offset: u64,
    epoch: String,
}

/// Runs a worker until its stdin closes or says `quit`.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.urls.is_empty(), "give --urls");
    anyhow::ensure!(
        args.source_addr.is_loopback(),
        "only loopback source addresses"
    );
    let mut addrs = Vec::new();
    for u in &args.urls {
        let a = tidings_client::resolve(u).await?;
        anyhow::ensure!(a.ip().is_loopback(), "only loopback nodes ({a})");
        addrs.push(a);
    }
    let nodes = args.urls.len();
    let cfg = Arc::new(WCfg {
        urls: args
            .urls
            .iter()
            .map(|u| {
                format!(
                    "{}/connection/websocket",
                    u.trim_end_matches('/').replacen("http://", "ws://", 1)
                )
            })
            .collect(),
        addrs,
        bind: args.source_addr,
        shared: shared_channel(),
        shared_bytes: format!("\"channel\":\"{}\"", shared_channel()).into_bytes(),
        presence: presence_channel(),
        presence_members: args.presence_members,
        open_timeout: Duration::from_secs_f64(args.open_timeout),
    });
    let st = Arc::new(WState {
        subscribed: AtomicU64::new(0),
        ever: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        recovered_pubs: AtomicU64::new(0),
        dups: AtomicU64::new(0),
        silent_lost: AtomicU64::new(0),
        reported_lost: AtomicU64::new(0),
        recovered_ok: AtomicU64::new(0),
        recovered_false: AtomicU64::new(0),
        disconnects: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
        refused_503: AtomicU64::new(0),
        timeouts: AtomicU64::new(0),
        resubscribes: AtomicU64::new(0),
        connect_errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        last_delivery_us: AtomicU64::new(0),
        max_back_us: AtomicU64::new(0),
        offsets: (0..args.count).map(|_| AtomicU64::new(u64::MAX)).collect(),
        hist: Mutex::new(new_hist()),
    });
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let stop = CancellationToken::new();
    for k in 0..args.count {
        let (cfg, st, gate, stop) = (cfg.clone(), st.clone(), gate.clone(), stop.clone());
        let i = args.first + k;
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = client_task(i, k, cfg, st, gate) => {}
            }
        });
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let answer = match line.trim() {
            "status" => status(&st),
            "reset" => {
                st.delivered.store(0, Ordering::Relaxed);
                st.recovered_pubs.store(0, Ordering::Relaxed);
                st.last_delivery_us.store(0, Ordering::Relaxed);
                st.max_back_us.store(0, Ordering::Relaxed);
                st.hist.lock().reset();
                json!({"ok": true})
            }
            "quit" => break,
            other => json!({"error": format!("unknown request {other:?}")}),
        };
        out.write_all(format!("{answer}\n").as_bytes()).await?;
        out.flush().await?;
    }
    stop.cancel();
    Ok(())
}

fn status(st: &WState) -> Value {
    let (mut min, mut max) = (u64::MAX, 0u64);
    for o in &st.offsets {
        let o = o.load(Ordering::Relaxed);
        if o != u64::MAX {
            min = min.min(o);
            max = max.max(o);
        }
    }
    let hist: Vec<(u64, u64)> = st
        .hist
        .lock()
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    json!({
        "subscribed": l(&st.subscribed),
        "ever": l(&st.ever),
        "delivered": l(&st.delivered),
        "recovered_pubs": l(&st.recovered_pubs),
        "dups": l(&st.dups),
        "silent_lost": l(&st.silent_lost),
        "reported_lost": l(&st.reported_lost),
        "recovered_ok": l(&st.recovered_ok),
        "recovered_false": l(&st.recovered_false),
        "disconnects": st.disconnects.iter().map(l).collect::<Vec<_>>(),
        "refused_503": l(&st.refused_503),
        "timeouts": l(&st.timeouts),
        "resubscribes": l(&st.resubscribes),
        "connect_errors": l(&st.connect_errors),
        "first_error": st.first_error.lock().clone(),
        "last_delivery_us": l(&st.last_delivery_us),
        "max_back_us": l(&st.max_back_us),
        "min_offset": if min == u64::MAX { Value::Null } else { min.into() },
        "max_offset": max,
        "rss_kib": rss_kib(std::process::id()),
        "hist": hist,
    })
}

/// One client: connects, subscribes, reads; after a lost connection, reconnects to
/// another node (after a jittered delay, as the SDKs do) and recovers.
async fn client_task(i: usize, k: usize, cfg: Arc<WCfg>, st: Arc<WState>, gate: Arc<Semaphore>) {
    let nodes = cfg.urls.len();
    let mut node = i % nodes;
    let mut shared: Option<Pos> = None;
    let mut lost_at: Option<Instant> = None;
    let mut failures: u32 = 0;
    let mut seed = i as u64;
    loop {
        let opened = {
            let Ok(_permit) = gate.acquire().await else {
                return;
            };
            // As the SDKs do (centrifuge-js: `timeout`, 5 s), an attempt that
            // takes too long is given up and retried.
            match tokio::time::timeout(cfg.open_timeout, open(i, k, node, &cfg, &st, &mut shared))
                .await
            {
                Ok(r) => r,
                Err(_) => {
                    st.timeouts.fetch_add(1, Ordering::Relaxed);
                    Err(anyhow::anyhow!("timed out"))
                }
            }
        };
        let mut client = match opened {
            Ok(c) => c,
            Err(e) => {
                let text = e.to_string();
                if text.contains("503") {
                    st.refused_503.fetch_add(1, Ordering::Relaxed);
                } else if text != "timed out" {
                    st.connect_errors.fetch_add(1, Ordering::Relaxed);
                    st.first_error.lock().get_or_insert(text);
                }
                // Refused by the rate limit: back off (jittered, doubling up to
                // 4 s). Another error (the node is gone): try the next node.
                failures += 1;
                if !e.to_string().contains("503") {
                    node = (node + 1) % nodes;
                }
                let cap = Duration::from_millis(100u64 << failures.min(6));
                seed += 7919;
                tokio::time::sleep(jitter(seed, cap)).await;
                continue;
            }
        };
        failures = 0;
        st.subscribed.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = lost_at.take() {
            let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
            st.max_back_us.fetch_max(us, Ordering::Relaxed);
        } else {
            st.ever.fetch_add(1, Ordering::Relaxed);
        }
        'read: while let Ok(Some(frame)) = client.recv().await {
            let mut resubscribe = false;
            for line in frame.split(|b| *b == b'\n') {
                resubscribe |= on_push(line, k, &cfg, &st, &mut shared);
            }
            // The server unsubscribed the client from the shared channel (2500,
            // insufficient state: it cannot vouch for the stream): resubscribe
            // with recovery, as the SDKs do.
            if resubscribe {
                st.resubscribes.fetch_add(1, Ordering::Relaxed);
                let again = tokio::time::timeout(
                    cfg.open_timeout,
                    join_shared(&mut client, k, &cfg, &st, &mut shared),
                )
                .await;
                if !matches!(again, Ok(Ok(()))) {
                    break 'read;
                }
            }
        }
        st.subscribed.fetch_sub(1, Ordering::Relaxed);
        st.disconnects[node].fetch_add(1, Ordering::Relaxed);
        lost_at = Some(Instant::now());
        // Spread the clients of a lost node over the others (a load balancer's
        // job), then wait up to 500 ms, as centrifuge-js does before its first
        // reconnect.
        node = (node + 1 + (i / nodes) % (nodes - 1).max(1)) % nodes;
        seed += 104_729;
        tokio::time::sleep(jitter(seed, Duration::from_millis(500))).await;
    }
}

/// Connects to `node` and subscribes (recovering where a position is known).
async fn open(
    i: usize,
    k: usize,
    node: usize,
    cfg: &WCfg,
    st: &WState,
    shared: &mut Option<Pos>,
) -> anyhow::Result<Client> {
    let opts = ConnectOptions {
        bind: Some(cfg.bind),
        ..ConnectOptions::default()
    };
    let mut c = Client::connect(
        &cfg.urls[node],
        cfg.addrs[node],
        Protocol::Centrifugo,
        &opts,
    )
    .await?;
    // Shared channel.
    join_shared(&mut c, k, cfg, st, shared).await?;
    // Personal channel.
    let channel = format!("{PERSONAL_NS}:u{i}");
    let (_, rest) = subscribe(&mut c, 11, &channel, None, k, cfg, st, shared).await?;
    for line in &rest {
        on_push(line, k, cfg, st, shared);
    }
    if i < cfg.presence_members {
        let (_, rest) = subscribe(&mut c, 12, &cfg.presence, None, k, cfg, st, shared).await?;
        for line in &rest {
            on_push(line, k, cfg, st, shared);
        }
    }
    Ok(c)
}

/// Subscribes to the shared channel, recovering from `shared` when a position is
/// known, and applies the answer: recovered publications, `recovered: false`
/// (reported loss), or offsets missing from a recovery that said it recovered
/// (silent loss).
async fn join_shared(
    c: &mut Client,
    k: usize,
    cfg: &WCfg,
    st: &WState,
    shared: &mut Option<Pos>,
) -> anyhow::Result<()> {
    let from = shared.clone();
    let (reply, rest) = subscribe(c, 10, &cfg.shared, from.as_ref(), k, cfg, st, shared).await?;
    let top = Pos {
        offset: reply["offset"].as_u64().unwrap_or(0),
        epoch: reply["epoch"].as_str().unwrap_or_default().to_string(),
    };
    match shared.as_mut() {
        None => {
            st.offsets[k].store(top.offset, Ordering::Relaxed);
            *shared = Some(top);
        }
        Some(pos) => {
            if let Some(pubs) = reply["publications"].as_array() {
                for p in pubs {
                    if let Some(o) = p["offset"].as_u64() {
                        if advance(pos, o, st) {
                            st.recovered_pubs.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            if reply["recovered"].as_bool() == Some(true) && top.epoch == pos.epoch {
                st.recovered_ok.fetch_add(1, Ordering::Relaxed);
                if top.offset > pos.offset {
                    // "Recovered", yet publications are missing: silent loss.
                    st.silent_lost
                        .fetch_add(top.offset - pos.offset, Ordering::Relaxed);
                }
            } else {
                st.recovered_false.fetch_add(1, Ordering::Relaxed);
                st.reported_lost
                    .fetch_add(top.offset.saturating_sub(pos.offset), Ordering::Relaxed);
            }
            pos.offset = pos.offset.max(top.offset);
            pos.epoch = top.epoch;
            st.offsets[k].store(pos.offset, Ordering::Relaxed);
        }
    }
    for line in &rest {
        on_push(line, k, cfg, st, shared);
    }
    Ok(())
}

/// Sends a subscribe command (with `recover` from `from`) and returns its result
/// and the lines that came after the reply in the same frame (pushes the caller
/// counts once it has applied the reply). Pushes that arrive before the reply are
/// counted as usual.
#[allow(clippy::too_many_arguments)]
async fn subscribe(
    c: &mut Client,
    id: u64,
    channel: &str,
    from: Option<&Pos>,
    k: usize,
    cfg: &WCfg,
    st: &WState,
    shared: &mut Option<Pos>,
) -> anyhow::Result<(Value, Vec<Vec<u8>>)> {
    let mut sub = json!({ "channel": channel });
    if let Some(p) = from {
        sub["recover"] = true.into();
        sub["offset"] = p.offset.into();
        sub["epoch"] = p.epoch.clone().into();
    }
    c.send_text(&json!({ "id": id, "subscribe": sub }).to_string())
        .await?;
    let id_prefix = format!("{{\"id\":{id},");
    loop {
        let Some(frame) = c.recv().await? else {
            bail!("connection closed while subscribing");
        };
        let mut lines = frame.split(|b| *b == b'\n');
        while let Some(line) = lines.next() {
            if line.starts_with(id_prefix.as_bytes()) {
                let v: Value = serde_json::from_slice(line)?;
                if let Some(e) = v.get("error") {
                    bail!("subscribe {channel} refused: {e}");
                }
                let rest = lines.map(<[u8]>::to_vec).collect();
                // Protocol v2: the result is under the method's name.
                return Ok((v["subscribe"].clone(), rest));
            }
            on_push(line, k, cfg, st, shared);
        }
    }
}

/// Counts a live publication of the shared channel in one line of a frame.
/// Returns whether the line is an unsubscribe push for the shared channel.
fn on_push(line: &[u8], k: usize, cfg: &WCfg, st: &WState, shared: &mut Option<Pos>) -> bool {
    if find(line, &cfg.shared_bytes).is_none() {
        return false;
    }
    if find(line, b"\"pub\":").is_none() {
        return line.starts_with(b"{\"push\":") && find(line, b"\"unsubscribe\":").is_some();
    }
    let Some(offset) = number_after(line, b"\"offset\":") else {
        return false;
    };
    let Some(pos) = shared.as_mut() else {
        return false;
    };
    if advance(pos, offset, st) {
        if let Some(sent) = number_after(line, b"\"bt\":") {
            let now = unix_us();
            st.hist
                .lock()
                .saturating_record(now.saturating_sub(sent).clamp(1, MAX_LATENCY_US));
            st.last_delivery_us.fetch_max(now, Ordering::Relaxed);
        }
        st.offsets[k].store(pos.offset, Ordering::Relaxed);
    }
    false
}

/// Moves a position to `offset`: counts a delivery, a duplicate (false) or a
/// silent gap. Returns whether it was new.
fn advance(pos: &mut Pos, offset: u64, st: &WState) -> bool {
    if offset <= pos.offset {
        st.dups.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    if offset > pos.offset + 1 {
        st.silent_lost
            .fetch_add(offset - pos.offset - 1, Ordering::Relaxed);
    }
    pos.offset = offset;
    st.delivered.fetch_add(1, Ordering::Relaxed);
    true
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The decimal number right after the last `key` in `line`.
fn number_after(line: &[u8], key: &[u8]) -> Option<u64> {
    let pos = hay_rfind(line, key)? + key.len();
    let digits = line[pos..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&line[pos..pos + digits])
        .ok()?
        .parse()
        .ok()
}

fn hay_rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

// --------------------------------------------------------------------------------
// Coordinator
// --------------------------------------------------------------------------------

struct WorkerProc {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl WorkerProc {
    async fn ask(&mut self, what: &str) -> anyhow::Result<Value> {
        self.stdin.write_all(format!("{what}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .context("a worker did not answer in 30 s")??
            .context("a worker exited")?;
        Ok(serde_json::from_str(&line)?)
    }
}

/// The sums of the workers' statuses.
#[derive(Default, Debug, Clone, Serialize)]
struct Totals {
    subscribed: u64,
    ever: u64,
    delivered: u64,
    recovered_pubs: u64,
    dups: u64,
    silent_lost: u64,
    reported_lost: u64,
    recovered_ok: u64,
    recovered_false: u64,
    disconnects: Vec<u64>,
    refused_503: u64,
    timeouts: u64,
    resubscribes: u64,
    connect_errors: u64,
    first_error: Option<String>,
    last_delivery_us: u64,
    max_back_ms: f64,
    min_offset: Option<u64>,
    max_offset: u64,
    workers_rss_kib: u64,
    #[serde(skip)]
    hist: Option<Histogram<u64>>,
}

/// Latency percentiles in milliseconds.
#[derive(Default, Debug, Clone, Serialize)]
struct Pct {
    count: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Pct {
    fn of(h: &Histogram<u64>) -> Pct {
        Pct {
            count: h.len(),
            p50_ms: h.value_at_quantile(0.5) as f64 / 1e3,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1e3,
            max_ms: h.max() as f64 / 1e3,
        }
    }
}

/// CPU use of one process over a window.
#[derive(Debug, Clone, Serialize)]
struct ProcCpu {
    name: String,
    pid: u32,
    cpu_pct: f64,
}

#[derive(Default, Debug, Clone, Serialize)]
struct SweepStep {
    offered_rate: f64,
    publications: u64,
    publish_errors: u64,
    expected: u64,
    delivered: u64,
    lost: u64,
    deliveries_per_s: f64,
    /// From the first publication to the last delivery.
    seconds: f64,
    /// Last delivery after the last publication left.
    tail_ms: f64,
    latency: Pct,
    cpu: Vec<ProcCpu>,
    total_cpu_pct: f64,
    /// CPU time of all the nodes per delivery (µs), over the step and its drain.
    node_cpu_us_per_delivery: f64,
    /// CPU time of the generator processes per delivery (µs).
    generator_cpu_us_per_delivery: f64,
    /// CPU time of the broker per publication (µs).
    broker_cpu_us_per_publication: f64,
    saturated: bool,
}

#[derive(Default, Debug, Clone, Serialize)]
struct KillReport {
    killed_node: usize,
    /// Clients subscribed when the phase began.
    subscribed_before: u64,
    clients_on_it: u64,
    publications: u64,
    publish_errors: u64,
    /// From the kill until every client was subscribed again.
    all_back_s: Option<f64>,
    /// From the kill until 90 % (99 %) of the dropped clients were back.
    back_90_s: Option<f64>,
    back_99_s: Option<f64>,
    /// Clients subscribed 5 s after the kill.
    back_at_5s: Option<u64>,
    /// The first connection error of a worker, if any.
    first_error: Option<String>,
    /// The longest single client's time from losing its connection to subscribed.
    slowest_client_back_ms: f64,
    recovered_ok: u64,
    recovered_false: u64,
    reported_lost: u64,
    silent_lost: u64,
    dups: u64,
    /// Clients whose last offset is not the channel's last after the drain.
    behind: bool,
    final_offset: u64,
    min_client_offset: Option<u64>,
    refused_503: u64,
    /// Attempts given up after the open timeout (5 s) and retried.
    timeouts: u64,
    other_connect_errors: u64,
    /// Connections that ended on the nodes that were not killed (must be 0).
    disconnects_on_other_nodes: u64,
    expected_deliveries: u64,
    delivered: u64,
}

#[derive(Default, Debug, Clone, Serialize)]
struct PresenceReport {
    members: usize,
    stats_num_clients: u64,
    presence_entries: u64,
    presence_bytes: usize,
    stats: Pct,
    presence: Pct,
}

#[derive(Default, Debug, Clone, Serialize)]
pub struct SwarmReport {
    engine: String,
    nodes: usize,
    workers: usize,
    connections: usize,
    connected: u64,
    connect_seconds: f64,
    connects_per_s: f64,
    refused_503_at_connect: u64,
    timeouts_at_connect: u64,
    node_rss_before_kib: Vec<u64>,
    node_rss_after_kib: Vec<u64>,
    rss_per_connection_kib: f64,
    workers_rss_kib: u64,
    engine_rss_kib: Option<u64>,
    connect_cpu: Vec<ProcCpu>,
    broadcast_delivered: u64,
    broadcast_lost: u64,
    broadcast_last_delivery_ms: f64,
    broadcast_latency: Pct,
    presence: PresenceReport,
    sweep: Vec<SweepStep>,
    saturation: String,
    kill: KillReport,
    /// Resubscribes to the shared channel the server asked for (unsubscribe
    /// 2500, insufficient state), over the whole run.
    resubscribes: u64,
    failures: Vec<String>,
}

/// Every process whose CPU the coordinator reads.
struct Procs {
    list: Vec<(String, u32)>,
}

impl Procs {
    fn snapshot(&self) -> Vec<Option<Duration>> {
        self.list.iter().map(|(_, p)| cpu_time(*p)).collect()
    }

    fn since(&self, start: &[Option<Duration>], wall: f64) -> Vec<ProcCpu> {
        self.list
            .iter()
            .zip(start)
            .map(|((name, pid), s)| {
                let used = match (s, cpu_time(*pid)) {
                    (Some(s), Some(e)) => e.saturating_sub(*s).as_secs_f64(),
                    _ => 0.0,
                };
                ProcCpu {
                    name: name.clone(),
                    pid: *pid,
                    cpu_pct: used / wall.max(1e-9) * 100.0,
                }
            })
            .collect()
    }
}

struct Coord {
    args: SwarmArgs,
    nodes: Vec<Option<Spawned>>,
    urls: Vec<String>,
    pids: Vec<u32>,
    workers: Vec<WorkerProc>,
    http: reqwest::Client,
    api_key: String,
    procs: Procs,
}

fn node_config(args: &SwarmArgs, api_key: &str) -> Value {
    let mut c = default_config(api_key);
    c["client"]["connection_rate_limit"] = args.connection_rate_limit.into();
    c["channel"]["namespaces"] = json!([
        {
            "name": NS,
            "history_size": 1000,
            "history_ttl": "600s",
            "force_recovery": true,
            "allow_subscribe_for_anonymous": true,
            "allow_subscribe_for_client": true
        },
        {
            "name": PERSONAL_NS,
            "allow_subscribe_for_anonymous": true,
            "allow_subscribe_for_client": true
        },
        {
            "name": PRESENCE_NS,
            "presence": true,
            "allow_subscribe_for_anonymous": true,
            "allow_subscribe_for_client": true
        }
    ]);
    // A random prefix, so runs never see each other's streams.
    let prefix = format!("hk{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    c["engine"] = match args.engine {
        EngineArg::Nats => json!({
            "type": "nats",
            "nats": { "url": args.engine_url, "prefix": prefix }
        }),
        EngineArg::Redis => json!({
            "type": "redis",
            "redis": { "address": [args.engine_url], "prefix": prefix }
        }),
        EngineArg::RedisCluster => json!({
            "type": "redis",
            "redis": { "cluster_address": [args.engine_url], "prefix": prefix }
        }),
    };
    c
}

/// Runs the coordinator; the nodes and workers are stopped on every exit path
/// (including SIGINT and SIGTERM).
pub async fn swarm(args: SwarmArgs) -> anyhow::Result<SwarmReport> {
    anyhow::ensure!(args.nodes >= 2, "--nodes must be at least 2");
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    anyhow::ensure!(
        args.connections.div_ceil(args.workers) <= 19_000,
        "at most 19,000 connections per worker: give more --workers"
    );
    anyhow::ensure!(
        args.presence_members <= args.connections,
        "--presence-members is larger than --connections"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut coord = Coord::start(args).await?;
    let result = tokio::select! {
        r = coord.run() => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };
    coord.stop().await;
    result
}

impl Coord {
    async fn start(args: SwarmArgs) -> anyhow::Result<Coord> {
        // Children inherit the limit: raise the soft limit to the hard one.
        if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() {
            if soft < hard {
                let _ = rlimit::Resource::NOFILE.set(hard, hard);
            }
        }
        let api_key = uuid::Uuid::new_v4().simple().to_string();
        let mut config = node_config(&args, &api_key);
        let mut nodes = Vec::new();
        let mut procs = Vec::new();
        for i in 0..args.nodes {
            config["node"]["name"] = format!("hk-{i}").into();
            let node = Spawned::start(&args.spawn, &config).await?;
            procs.push((format!("node{i}"), node.pid));
            nodes.push(Some(node));
        }
        if let Some(p) = args.engine_pid {
            procs.push(("broker".into(), p));
        }
        procs.push(("coordinator".into(), std::process::id()));
        let urls: Vec<String> = nodes.iter().flatten().map(Spawned::url).collect();
        let pids = nodes.iter().flatten().map(|n| n.pid).collect();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(API_INFLIGHT)
            .tcp_nodelay(true)
            .build()?;
        Ok(Coord {
            args,
            nodes,
            urls,
            pids,
            workers: Vec::new(),
            http,
            api_key,
            procs: Procs { list: procs },
        })
    }

    async fn stop(&mut self) {
        for w in &mut self.workers {
            let _ = w.stdin.write_all(b"quit\n").await;
            let _ = w.child.start_kill();
        }
        for w in &mut self.workers {
            let _ = tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await;
        }
        for n in self.nodes.iter_mut().filter_map(Option::take) {
            n.stop().await;
        }
    }

    fn spawn_workers(&mut self) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?;
        let n = self.args.connections;
        let w = self.args.workers;
        let per = n.div_ceil(w);
        for k in 0..w {
            let first = k * per;
            let count = per.min(n.saturating_sub(first));
            if count == 0 {
                break;
            }
            let last = u32::from(self.args.first_source_addr) + k as u32;
            anyhow::ensure!(last < 255, "too many workers for 127.0.0.x");
            let source = format!("127.0.0.{last}");
            let mut child = Command::new(&exe)
                .args(["bench", "swarm-worker", "--urls"])
                .arg(self.urls.join(","))
                .args(["--first", &first.to_string()])
                .args(["--count", &count.to_string()])
                .args(["--source-addr", &source])
                .args([
                    "--presence-members",
                    &self.args.presence_members.to_string(),
                ])
                .args(["--concurrency", &self.args.concurrency.to_string()])
                .args(["--open-timeout", &self.args.open_timeout.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a worker")?;
            let pid = child.id().context("worker has no pid")?;
            let stdin = child.stdin.take().context("no stdin")?;
            let stdout = child.stdout.take().context("no stdout")?;
            self.procs.list.push((format!("worker{k}"), pid));
            self.workers.push(WorkerProc {
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
            });
        }
        Ok(())
    }

    async fn totals(&mut self) -> anyhow::Result<Totals> {
        let mut t = Totals {
            disconnects: vec![0; self.args.nodes],
            ..Totals::default()
        };
        let mut hist = new_hist();
        for w in &mut self.workers {
            let s = w.ask("status").await?;
            let g = |k: &str| s[k].as_u64().unwrap_or(0);
            t.subscribed += g("subscribed");
            t.ever += g("ever");
            t.delivered += g("delivered");
            t.recovered_pubs += g("recovered_pubs");
            t.dups += g("dups");
            t.silent_lost += g("silent_lost");
            t.reported_lost += g("reported_lost");
            t.recovered_ok += g("recovered_ok");
            t.recovered_false += g("recovered_false");
            for (i, d) in s["disconnects"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Some(slot) = t.disconnects.get_mut(i) {
                    *slot += d.as_u64().unwrap_or(0);
                }
            }
            t.refused_503 += g("refused_503");
            t.timeouts += g("timeouts");
            t.resubscribes += g("resubscribes");
            t.connect_errors += g("connect_errors");
            if t.first_error.is_none() {
                t.first_error = s["first_error"].as_str().map(str::to_string);
            }
            t.last_delivery_us = t.last_delivery_us.max(g("last_delivery_us"));
            t.max_back_ms = t.max_back_ms.max(g("max_back_us") as f64 / 1e3);
            if let Some(m) = s["min_offset"].as_u64() {
                t.min_offset = Some(t.min_offset.map_or(m, |x| x.min(m)));
            }
            t.max_offset = t.max_offset.max(g("max_offset"));
            t.workers_rss_kib += g("rss_kib");
            for pair in s["hist"].as_array().into_iter().flatten() {
                let (Some(v), Some(c)) = (pair[0].as_u64(), pair[1].as_u64()) else {
                    continue;
                };
                let _ = hist.record_n(v.clamp(1, MAX_LATENCY_US), c);
            }
        }
        t.hist = Some(hist);
        Ok(t)
    }

    async fn reset(&mut self) -> anyhow::Result<()> {
        for w in &mut self.workers {
            w.ask("reset").await?;
        }
        Ok(())
    }

    /// Publishes one publication to the shared channel through `node`'s API;
    /// returns the offset it got.
    async fn publish(
        http: &reqwest::Client,
        url: &str,
        key: &str,
        size: usize,
    ) -> anyhow::Result<u64> {
        let data = payload(unix_us(), size);
        let body = format!("{{\"channel\":\"{}\",\"data\":{data}}}", shared_channel());
        let resp = http
            .post(format!("{url}/api/publish"))
            .header("X-API-Key", key)
            .header("Content-Type", "application/json")
            .timeout(API_TIMEOUT)
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "publish: {}", resp.status());
        let v: Value = resp.json().await?;
        if let Some(e) = v.get("error") {
            bail!("publish refused: {e}");
        }
        Ok(v["result"]["offset"].as_u64().unwrap_or(0))
    }

    /// Publishes at `rate` per second for `secs` through the nodes in `via`
    /// (round robin), or until `stop`. Returns (sent, errors, highest offset,
    /// time the last one left).
    #[allow(clippy::too_many_arguments)]
    async fn publish_at(
        http: reqwest::Client,
        urls: Vec<String>,
        key: String,
        size: usize,
        rate: f64,
        secs: f64,
        stop: CancellationToken,
    ) -> (u64, u64, u64, Instant) {
        let start = Instant::now();
        let total = (rate * secs).round().max(1.0) as u64;
        let mut inflight = FuturesUnordered::new();
        let (mut sent, mut errors, mut top) = (0u64, 0u64, 0u64);
        let mut last_sent = start;
        while sent < total && !stop.is_cancelled() {
            let at = start + Duration::from_secs_f64(sent as f64 / rate);
            tokio::select! {
                () = tokio::time::sleep_until(at.into()), if inflight.len() < API_INFLIGHT => {
                    let (http, url, key) = (http.clone(), urls[sent as usize % urls.len()].clone(), key.clone());
                    inflight.push(async move { Coord::publish(&http, &url, &key, size).await });
                    sent += 1;
                    last_sent = Instant::now();
                }
                Some(r) = inflight.next(), if !inflight.is_empty() => match r {
                    Ok(o) => top = top.max(o),
                    Err(_) => errors += 1,
                },
                () = stop.cancelled() => break,
            }
        }
        while let Some(r) = inflight.next().await {
            match r {
                Ok(o) => top = top.max(o),
                Err(_) => errors += 1,
            }
        }
        (sent, errors, top, last_sent)
    }

    async fn run(&mut self) -> anyhow::Result<SwarmReport> {
        let a = self.args.clone();
        let n = a.connections as u64;
        let mut report = SwarmReport {
            engine: format!("{:?}", a.engine).to_lowercase(),
            nodes: a.nodes,
            workers: a.workers,
            connections: a.connections,
            ..SwarmReport::default()
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        report.node_rss_before_kib = self.pids.iter().map(|p| rss_kib(*p).unwrap_or(0)).collect();

        // 1. Connect.
        eprintln!(
            "swarm: {} nodes ({}), {} workers, connecting {} clients",
            a.nodes, report.engine, a.workers, n
        );
        let cpu0 = self.procs.snapshot();
        let t0 = Instant::now();
        self.spawn_workers()?;
        let cpu0 = {
            // The workers did not exist at the first snapshot.
            let mut s = cpu0;
            s.resize(self.procs.list.len(), Some(Duration::ZERO));
            s
        };
        let mut last_print = Instant::now();
        let t = loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let t = self.totals().await?;
            if t.subscribed >= n || t0.elapsed().as_secs_f64() > a.connect_timeout {
                break t;
            }
            if last_print.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "  {:.0} s: {} subscribed, {} refused (503), {} errors",
                    t0.elapsed().as_secs_f64(),
                    t.subscribed,
                    t.refused_503,
                    t.connect_errors
                );
                last_print = Instant::now();
            }
        };
        let wall = t0.elapsed().as_secs_f64();
        report.connect_cpu = self.procs.since(&cpu0, wall);
        report.connected = t.subscribed;
        report.connect_seconds = wall;
        report.connects_per_s = t.subscribed as f64 / wall;
        report.refused_503_at_connect = t.refused_503;
        report.timeouts_at_connect = t.timeouts;
        if t.subscribed < n {
            report.failures.push(format!(
                "only {} of {} clients connected and subscribed in {:.0} s ({} errors; first: {:?})",
                t.subscribed, n, wall, t.connect_errors, t.first_error
            ));
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        report.node_rss_after_kib = self.pids.iter().map(|p| rss_kib(*p).unwrap_or(0)).collect();
        let grown: u64 = report
            .node_rss_after_kib
            .iter()
            .zip(&report.node_rss_before_kib)
            .map(|(a, b)| a.saturating_sub(*b))
            .sum();
        report.rss_per_connection_kib = grown as f64 / n as f64;
        report.engine_rss_kib = a.engine_pid.and_then(rss_kib);
        let t = self.totals().await?;
        report.workers_rss_kib = t.workers_rss_kib;
        eprintln!(
            "  all {} subscribed in {:.1} s ({:.0}/s); {:.2} KiB per connection on the nodes",
            n, wall, report.connects_per_s, report.rss_per_connection_kib
        );

        // 2. One broadcast.
        self.reset().await?;
        let sent_us = unix_us();
        Coord::publish(&self.http, &self.urls[0], &self.api_key, a.payload_size).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let t = loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let t = self.totals().await?;
            if t.delivered >= n || Instant::now() > deadline {
                break t;
            }
        };
        report.broadcast_delivered = t.delivered;
        report.broadcast_lost = n.saturating_sub(t.delivered);
        report.broadcast_last_delivery_ms = t.last_delivery_us.saturating_sub(sent_us) as f64 / 1e3;
        report.broadcast_latency = Pct::of(t.hist.as_ref().expect("histogram"));
        eprintln!(
            "  broadcast: {} of {} delivered, last after {:.0} ms (p50 {:.0} ms, p99 {:.0} ms)",
            t.delivered,
            n,
            report.broadcast_last_delivery_ms,
            report.broadcast_latency.p50_ms,
            report.broadcast_latency.p99_ms
        );
        if report.broadcast_lost > 0 {
            report
                .failures
                .push(format!("broadcast: {} lost", report.broadcast_lost));
        }

        // 3. Presence.
        report.presence = self.presence().await?;
        if report.presence.stats_num_clients != a.presence_members as u64
            || report.presence.presence_entries != a.presence_members as u64
        {
            report.failures.push(format!(
                "presence: {} members, presence_stats says {}, presence lists {}",
                a.presence_members,
                report.presence.stats_num_clients,
                report.presence.presence_entries
            ));
        }

        // 4. Rate sweep.
        for &rate in &a.rates {
            let step = self
                .sweep_step(rate, report.broadcast_last_delivery_ms)
                .await?;
            eprintln!(
                "  sweep {:>5}/s: {} of {} delivered ({:.0}/s), p99 {:.0} ms, tail {:.0} ms, CPU {:.0}%{}",
                rate,
                step.delivered,
                step.expected,
                step.deliveries_per_s,
                step.latency.p99_ms,
                step.tail_ms,
                step.total_cpu_pct,
                if step.saturated { " — saturated" } else { "" }
            );
            let saturated = step.saturated;
            report.sweep.push(step);
            if saturated {
                break;
            }
        }
        report.saturation = saturation(&report.sweep);

        // 5. kill -9 of one node under load.
        report.kill = self.kill_phase().await?;
        report.resubscribes = self.totals().await?.resubscribes;
        let k = &report.kill;
        if k.all_back_s.is_none() {
            report
                .failures
                .push("kill: not every client came back".into());
        }
        if k.silent_lost > 0 || k.behind {
            report.failures.push(format!(
                "kill: {} publications silently lost; clients behind the last offset: {}",
                k.silent_lost, k.behind
            ));
        }
        if k.disconnects_on_other_nodes > 0 {
            report.failures.push(format!(
                "kill: {} clients of the other nodes were disconnected",
                k.disconnects_on_other_nodes
            ));
        }
        if k.publish_errors > 0 {
            report
                .failures
                .push(format!("kill: {} publications refused", k.publish_errors));
        }
        Ok(report)
    }

    async fn presence(&mut self) -> anyhow::Result<PresenceReport> {
        let a = &self.args;
        let mut out = PresenceReport {
            members: a.presence_members,
            ..PresenceReport::default()
        };
        let body = format!("{{\"channel\":\"{}\"}}", presence_channel());
        let (mut hs, mut hp) = (new_hist(), new_hist());
        for method in ["presence_stats", "presence"] {
            for _ in 0..a.presence_calls.max(1) {
                let t = Instant::now();
                let resp = self
                    .http
                    .post(format!("{}/api/{method}", self.urls[0]))
                    .header("X-API-Key", &self.api_key)
                    .header("Content-Type", "application/json")
                    .timeout(API_TIMEOUT)
                    .body(body.clone())
                    .send()
                    .await?;
                let bytes = resp.bytes().await?;
                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                let v: Value = serde_json::from_slice(&bytes)?;
                if method == "presence_stats" {
                    hs.saturating_record(us.clamp(1, MAX_LATENCY_US));
                    out.stats_num_clients = v["result"]["num_clients"].as_u64().unwrap_or(0);
                } else {
                    hp.saturating_record(us.clamp(1, MAX_LATENCY_US));
                    out.presence_entries = v["result"]["presence"]
                        .as_object()
                        .map_or(0, |m| m.len() as u64);
                    out.presence_bytes = bytes.len();
                }
            }
        }
        out.stats = Pct::of(&hs);
        out.presence = Pct::of(&hp);
        eprintln!(
            "  presence of {} members: presence_stats p50 {:.2} ms, presence p50 {:.1} ms ({} entries, {} bytes)",
            out.members, out.stats.p50_ms, out.presence.p50_ms, out.presence_entries, out.presence_bytes
        );
        Ok(out)
    }

    /// One rate of the sweep. It is saturated when deliveries do not keep up:
    /// something lost or refused, or the last delivery (or the p99) later than
    /// twice what one broadcast alone takes (`one_ms`) plus a margin, i.e. a
    /// backlog that grows while publishing.
    async fn sweep_step(&mut self, rate: f64, one_ms: f64) -> anyhow::Result<SweepStep> {
        let a = self.args.clone();
        let n = a.connections as u64;
        self.reset().await?;
        let cpu0 = self.procs.snapshot();
        let t0 = Instant::now();
        let start_us = unix_us();
        let (sent, errors, _, last_sent) = Coord::publish_at(
            self.http.clone(),
            self.urls.clone(),
            self.api_key.clone(),
            a.payload_size,
            rate,
            a.step_secs,
            CancellationToken::new(),
        )
        .await;
        let expected = sent.saturating_sub(errors) * n;
        // Drain: wait for the deliveries, at most 10 s after the last publication.
        let drain_until = Instant::now() + Duration::from_secs(10);
        let mut t = loop {
            let t = self.totals().await?;
            if t.delivered >= expected || Instant::now() > drain_until {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let last_us = t.last_delivery_us.max(start_us);
        let seconds = (last_us - start_us) as f64 / 1e6;
        let wall = t0.elapsed().as_secs_f64();
        let cpu = self.procs.since(&cpu0, wall);
        let since_last_sent = last_sent.elapsed().as_secs_f64();
        let tail_ms =
            ((last_us as f64 / 1e6 - (unix_us() as f64 / 1e6 - since_last_sent)) * 1e3).max(0.0);
        let latency = Pct::of(t.hist.take().as_ref().expect("histogram"));
        let lost = expected.saturating_sub(t.delivered);
        let total_cpu_pct = cpu.iter().map(|c| c.cpu_pct).sum();
        let cpu_s = |prefix: &str| -> f64 {
            cpu.iter()
                .filter(|c| c.name.starts_with(prefix))
                .map(|c| c.cpu_pct / 100.0 * wall)
                .sum()
        };
        let per = |secs: f64, count: u64| {
            if count == 0 {
                0.0
            } else {
                secs * 1e6 / count as f64
            }
        };
        let node_cpu_us_per_delivery = per(cpu_s("node"), t.delivered);
        let generator_cpu_us_per_delivery = per(cpu_s("worker"), t.delivered);
        let broker_cpu_us_per_publication = per(cpu_s("broker"), sent);
        Ok(SweepStep {
            offered_rate: rate,
            publications: sent,
            publish_errors: errors,
            expected,
            delivered: t.delivered,
            lost,
            deliveries_per_s: t.delivered as f64 / seconds.max(1e-9),
            seconds,
            tail_ms,
            saturated: lost > 0
                || errors > 0
                || tail_ms > 2.0 * one_ms + 500.0
                || latency.p99_ms > 2.0 * one_ms + 1000.0,
            latency,
            cpu,
            total_cpu_pct,
            node_cpu_us_per_delivery,
            generator_cpu_us_per_delivery,
            broker_cpu_us_per_publication,
        })
    }

    async fn kill_phase(&mut self) -> anyhow::Result<KillReport> {
        let a = self.args.clone();
        let n = a.connections as u64;
        let victim = a.nodes - 1;
        let mut out = KillReport {
            killed_node: victim,
            ..KillReport::default()
        };
        // Clients the sweep's overload disconnected (slow readers) come back first.
        let settle_until = Instant::now() + Duration::from_secs(60);
        while self.totals().await?.subscribed < n && Instant::now() < settle_until {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.reset().await?;
        let before = self.totals().await?;
        out.subscribed_before = before.subscribed;
        let stop = CancellationToken::new();
        let publisher = tokio::spawn(Coord::publish_at(
            self.http.clone(),
            self.urls[..victim].to_vec(),
            self.api_key.clone(),
            a.payload_size,
            a.kill_rate,
            a.recover_timeout + 30.0,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The clients on the victim: a node holds the clients whose index modulo
        // the node count is its own, less those that moved (none before a kill).
        eprintln!("  kill -9 node{victim}");
        let killed_at = Instant::now();
        if let Some(node) = self.nodes[victim].as_mut() {
            node.kill();
        }
        let deadline = killed_at + Duration::from_secs_f64(a.recover_timeout);
        let mut saw_drop = false;
        let mut lowest = n;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let t = self.totals().await?;
            if t.subscribed < n {
                saw_drop = true;
            }
            lowest = lowest.min(t.subscribed);
            // Milestones: 90 % and 99 % of the clients that were dropped are back.
            let missing = n.saturating_sub(t.subscribed);
            let dropped = n - lowest;
            if saw_drop && out.back_90_s.is_none() && missing * 10 <= dropped {
                out.back_90_s = Some(killed_at.elapsed().as_secs_f64());
            }
            if saw_drop && out.back_99_s.is_none() && missing * 100 <= dropped {
                out.back_99_s = Some(killed_at.elapsed().as_secs_f64());
            }
            if killed_at.elapsed() > Duration::from_secs(5) && out.back_at_5s.is_none() {
                out.back_at_5s = Some(n - missing);
            }
            if saw_drop && t.subscribed >= n {
                out.all_back_s = Some(killed_at.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() > deadline {
                break;
            }
        }
        eprintln!(
            "  all back after {} (90 % after {:?} s, 99 % after {:?} s)",
            out.all_back_s
                .map_or("(not all came back)".to_string(), |s| format!("{s:.2} s")),
            out.back_90_s,
            out.back_99_s
        );
        // Keep publishing a little after everyone is back, then stop.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.cancel();
        let (sent, errors, top, _) = publisher.await?;
        out.publications = sent;
        out.publish_errors = errors;
        out.final_offset = top;
        // Drain: every client must reach the last offset.
        let drain_until = Instant::now() + Duration::from_secs(15);
        let t = loop {
            let t = self.totals().await?;
            if t.min_offset.is_some_and(|m| m >= top) || Instant::now() > drain_until {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        out.slowest_client_back_ms = t.max_back_ms;
        out.recovered_ok = t.recovered_ok - before.recovered_ok;
        out.recovered_false = t.recovered_false - before.recovered_false;
        out.reported_lost = t.reported_lost - before.reported_lost;
        out.silent_lost = t.silent_lost - before.silent_lost;
        out.dups = t.dups - before.dups;
        out.min_client_offset = t.min_offset;
        out.behind = t.min_offset.is_none_or(|m| m < top);
        out.refused_503 = t.refused_503 - before.refused_503;
        out.timeouts = t.timeouts - before.timeouts;
        out.first_error = t.first_error.clone();
        out.other_connect_errors = t.connect_errors - before.connect_errors;
        out.disconnects_on_other_nodes = t
            .disconnects
            .iter()
            .zip(&before.disconnects)
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .map(|(_, (a, b))| a - b)
            .sum();
        out.clients_on_it = t.disconnects[victim] - before.disconnects[victim];
        out.expected_deliveries = sent.saturating_sub(errors) * n;
        out.delivered = t.delivered;
        eprintln!(
            "  recovery: {} recovered, {} not ({} reported lost), {} silently lost, {} refused by the rate limit, {} dups",
            out.recovered_ok, out.recovered_false, out.reported_lost, out.silent_lost, out.refused_503, out.dups
        );
        Ok(out)
    }
}

/// Names what limited the sweep: the busiest process at the first saturated
/// step, and whether the machine's cores were all busy.
fn saturation(steps: &[SweepStep]) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let Some(step) = steps.iter().find(|s| s.saturated).or_else(|| steps.last()) else {
        return "no sweep".into();
    };
    let mut cpu = step.cpu.clone();
    cpu.sort_by(|a, b| b.cpu_pct.total_cmp(&a.cpu_pct));
    let top: Vec<String> = cpu
        .iter()
        .take(4)
        .map(|c| format!("{} {:.0}%", c.name, c.cpu_pct))
        .collect();
    let workers: f64 = step
        .cpu
        .iter()
        .filter(|c| c.name.starts_with("worker"))
        .map(|c| c.cpu_pct)
        .sum();
    let nodes: f64 = step
        .cpu
        .iter()
        .filter(|c| c.name.starts_with("node"))
        .map(|c| c.cpu_pct)
        .sum();
    let broker: f64 = step
        .cpu
        .iter()
        .filter(|c| c.name == "broker")
        .map(|c| c.cpu_pct)
        .sum();
    format!(
        "{} at {}/s: machine CPU {:.0}% of {:.0}% ({} cores); nodes {:.0}%, load generator {:.0}%, broker {:.0}%; busiest: {}",
        if step.saturated { "saturated" } else { "not saturated; highest rate" },
        step.offered_rate,
        step.total_cpu_pct,
        cores * 100.0,
        cores,
        nodes,
        workers,
        broker,
        top.join(", ")
    )
}

impl SwarmReport {
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// A readable summary of the run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        use std::fmt::Write as _;
        let _ = writeln!(
            s,
            "engine {}, {} nodes, {} worker processes, {} connections",
            self.engine, self.nodes, self.workers, self.connections
        );
        let _ = writeln!(
            s,
            "connect: {} connected and subscribed in {:.1} s ({:.0}/s; {} refused by the rate limit, {} timed out, all retried)",
            self.connected, self.connect_seconds, self.connects_per_s, self.refused_503_at_connect, self.timeouts_at_connect
        );
        let _ = writeln!(
            s,
            "memory: {:.2} KiB RSS per connection across the nodes (nodes {} KiB before, {} KiB after); generator {} KiB; broker {:?} KiB",
            self.rss_per_connection_kib,
            self.node_rss_before_kib.iter().sum::<u64>(),
            self.node_rss_after_kib.iter().sum::<u64>(),
            self.workers_rss_kib,
            self.engine_rss_kib
        );
        let _ = writeln!(
            s,
            "broadcast: {} delivered, {} lost; last delivery {:.0} ms after the publish; p50 {:.0} ms, p99 {:.0} ms",
            self.broadcast_delivered,
            self.broadcast_lost,
            self.broadcast_last_delivery_ms,
            self.broadcast_latency.p50_ms,
            self.broadcast_latency.p99_ms
        );
        let p = &self.presence;
        let _ = writeln!(
            s,
            "presence ({} members): presence_stats p50 {:.2} ms max {:.2} ms (num_clients {}); presence p50 {:.1} ms max {:.1} ms ({} entries, {} bytes)",
            p.members, p.stats.p50_ms, p.stats.max_ms, p.stats_num_clients, p.presence.p50_ms,
            p.presence.max_ms, p.presence_entries, p.presence_bytes
        );
        for st in &self.sweep {
            let _ = writeln!(
                s,
                "sweep {:>5}/s: {} pubs, {}/{} delivered ({:.0} deliveries/s), p50 {:.0} ms p99 {:.0} ms, tail {:.0} ms; CPU per delivery: nodes {:.2} µs, generator {:.2} µs; broker {:.0} µs per publication; CPU {:.0}% [{}]{}",
                st.offered_rate,
                st.publications,
                st.delivered,
                st.expected,
                st.deliveries_per_s,
                st.latency.p50_ms,
                st.latency.p99_ms,
                st.tail_ms,
                st.node_cpu_us_per_delivery,
                st.generator_cpu_us_per_delivery,
                st.broker_cpu_us_per_publication,
                st.total_cpu_pct,
                st.cpu
                    .iter()
                    .map(|c| format!("{} {:.0}", c.name, c.cpu_pct))
                    .collect::<Vec<_>>()
                    .join(", "),
                if st.saturated { " SATURATED" } else { "" }
            );
        }
        let _ = writeln!(s, "saturation: {}", self.saturation);
        let _ = writeln!(
            s,
            "resubscribes asked by the server (insufficient state): {}",
            self.resubscribes
        );
        let k = &self.kill;
        let _ = writeln!(
            s,
            "kill -9 node{} ({} clients): all back after {} (90 % after {}, 99 % after {}); slowest client {:.0} ms; {} recovered, {} not ({} reported lost); {} silently lost; {} dups; {} refused (503) and retried; {} attempts timed out and retried; {} other connect errors; {} disconnects on other nodes; {} publications ({} refused), final offset {}, lowest client offset {:?}",
            k.killed_node,
            k.clients_on_it,
            k.all_back_s.map_or("NEVER".into(), |s| format!("{s:.2} s")),
            k.back_90_s.map_or("-".into(), |s| format!("{s:.2} s")),
            k.back_99_s.map_or("-".into(), |s| format!("{s:.2} s")),
            k.slowest_client_back_ms,
            k.recovered_ok,
            k.recovered_false,
            k.reported_lost,
            k.silent_lost,
            k.dups,
            k.refused_503,
            k.timeouts,
            k.other_connect_errors,
            k.disconnects_on_other_nodes,
            k.publications,
            k.publish_errors,
            k.final_offset,
            k.min_client_offset
        );
        if self.failures.is_empty() {
            let _ = writeln!(s, "checks: all passed");
        } else {
            for f in &self.failures {
                let _ = writeln!(s, "FAILED: {f}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_lines_are_scanned_for_offset_and_stamp() {
        let line =
            br#"{"push":{"channel":"hk:shared","pub":{"data":{"bt":1234,"p":"xx"},"offset":42}}}"#;
        assert_eq!(number_after(line, b"\"offset\":"), Some(42));
        assert_eq!(number_after(line, b"\"bt\":"), Some(1234));
        assert!(find(line, b"\"channel\":\"hk:shared\"").is_some());
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        for seed in 0..1000 {
            assert!(jitter(seed, Duration::from_millis(500)) < Duration::from_millis(500));
        }
    }
}
