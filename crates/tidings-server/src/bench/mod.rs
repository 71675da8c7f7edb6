//! `tidings bench`: the load generator that measures Tidings and the servers it is
//! compared with (see docs/benchmarks.md).
//!
//! Everything is bounded: connection counts come from the command line, every phase
//! has a deadline, and only loopback addresses are used.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

mod load;
mod procstat;
mod report;
mod swarm;
mod target;

/// Scenarios of `tidings bench`.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum Scenario {
    /// N subscribers on one channel; publications go through the server API (or a
    /// client with --publish-via client, or --batch at a time through /api/batch
    /// with --publish-via api-batch) as fast as possible while at most --window
    /// publications are undelivered, or at --rate per second. Reports deliveries/s,
    /// publications/s, loss, latency percentiles and server CPU per delivery.
    Fanout(LoadArgs),
    /// Paced, open-loop publishing (default 1,000 subscribers × 50/s for 10 s): each
    /// publication leaves at its scheduled time and carries that time, whether or not
    /// the previous ones have arrived, so slow deliveries show in the tail. With
    /// --slow-readers P, P % of the subscribers stop reading.
    Latency(LoadArgs),
    /// N connections, each connected and subscribed to a channel of its own
    /// (personal:<i>), held for --hold seconds. Reports server RSS per connection
    /// (VmRSS of /proc/<pid>/status, after minus before) and connections lost while
    /// held. Connections are spread over --source-addrs addresses 127.0.0.x so the
    /// run can exceed one address's ephemeral port range.
    Idle(LoadArgs),
    /// N connections opened --concurrency at a time; each connects, subscribes and
    /// stays open. Reports connects+subscribes per second and the handshake latency
    /// percentiles (TCP connect to subscribe reply).
    Connect(LoadArgs),
    /// The fanout scenario with unidirectional SSE subscribers
    /// (/connection/uni_sse) instead of WebSocket ones; publications via the API.
    SseFanout(LoadArgs),
    /// The fanout scenario through --nodes Tidings nodes joined by the engine given
    /// with --engine (redis or nats): subscribers are spread over the nodes,
    /// publications go to the first node's API (one per request, or pipelined with
    /// --publish-via api-batch --batch N). Latency is reported separately for
    /// subscribers on the publishing node and on the others. Needs --spawn.
    Cluster(LoadArgs),
    /// Many connections through --nodes Tidings nodes on one Redis or NATS, the
    /// load generator spread over --workers processes (each on its own source
    /// address): connect and subscribe all (RSS per connection), one broadcast to
    /// all, presence of a --presence-members channel, a publication-rate sweep
    /// with every process's CPU, and kill -9 of one node with reconnect and
    /// recovery. bench/hundred-k.sh runs it with 100,000 connections.
    Swarm(swarm::SwarmArgs),
    /// One load generator process of `swarm` (spawned by it).
    #[command(hide = true)]
    SwarmWorker(swarm::WorkerArgs),
}

/// How publications are sent.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishVia {
    /// POST /api/publish, one request per publication (Tidings only).
    Api,
    /// POST /api/batch with --batch publish commands per request (Tidings only);
    /// with --batch-parallel the batch asks the server to run them concurrently.
    ApiBatch,
    /// A client connection that is not subscribed (for raw and engineio servers
    /// it receives its own broadcasts, which are not counted).
    Client,
}

/// Protocol of the WebSocket connections.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolArg {
    /// The Centrifugo JSON protocol (Tidings); path /connection/websocket.
    Centrifugo,
    /// The Centrifugo Protobuf protocol (Tidings; WebSocket subprotocol
    /// centrifuge-protobuf, binary frames); path /connection/websocket. Publications
    /// through the API carry the same JSON payload, which Protobuf subscribers
    /// receive as bytes.
    CentrifugoProtobuf,
    /// Raw text frames broadcast to all (the axum and Node ws peers); path /ws.
    Raw,
    /// Engine.IO v4 / Socket.IO v5; path /socket.io/. Against a peer, a client's
    /// "msg" event is broadcast to all; against Tidings (--spawn, or
    /// --publish-via api), subscribers join the channel's room with tidings:join
    /// and the server API publishes.
    Engineio,
}

/// Cluster engine.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineArg {
    Redis,
    /// A Redis Cluster: --engine-url is its comma-separated seed addresses.
    RedisCluster,
    Nats,
}

/// Options shared by every scenario. Each scenario uses the ones that apply.
#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    /// Spawn Tidings from this binary (e.g. target/release/tidings) on 127.0.0.1 and
    /// a free port, and stop it at the end. Without --spawn, --url names a running
    /// server.
    #[arg(long, value_name = "BINARY")]
    pub spawn: Option<PathBuf>,
    /// Config file (JSON) for the spawned server. Default: a built-in benchmark
    /// config (anonymous clients, history 100 on channels without namespace, a
    /// `personal` namespace, uni_sse on, command rate limit off, log level error).
    #[arg(long, value_name = "FILE", requires = "spawn")]
    pub config: Option<PathBuf>,
    /// Base URL of a running server, e.g. http://127.0.0.1:8000 (loopback only).
    #[arg(long, conflicts_with = "spawn")]
    pub url: Option<String>,
    /// Key of the server API of a running server.
    #[arg(long, env = "TIDINGS_BENCH_API_KEY")]
    pub api_key: Option<String>,
    /// Process id of the running server, to read its CPU time and RSS from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Name of the server in the report (default: tidings, or the protocol).
    #[arg(long)]
    pub label: Option<String>,
    /// WebSocket protocol of the server.
    #[arg(long, value_enum, default_value = "centrifugo")]
    pub protocol: ProtocolArg,
    /// WebSocket path (default from --protocol).
    #[arg(long)]
    pub ws_path: Option<String>,
    /// Number of subscribers (fanout, latency, sse-fanout, cluster) or connections
    /// (idle, connect). Default 1,000.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: usize,
    /// Publications to send (fanout, sse-fanout, cluster). Default 2,000; the
    /// latency scenario sends rate × duration.
    #[arg(short = 'm', long)]
    pub messages: Option<u64>,
    /// Publications per second; 0 = as fast as the window allows. The latency
    /// scenario defaults to 50.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Publishing time in seconds of the latency scenario (default 10).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Most publications in flight (sent but not yet delivered to every subscriber)
    /// when publishing as fast as possible.
    #[arg(long, default_value_t = 16)]
    pub window: u64,
    /// How publications are sent (default: api for centrifugo, client otherwise).
    #[arg(long, value_enum)]
    pub publish_via: Option<PublishVia>,
    /// Publications per /api/batch request with --publish-via api-batch. A batch
    /// leaves when the window has room for all of it (so --window must be at least
    /// --batch); at a fixed --rate it leaves when its last publication is due, and
    /// each publication carries its own scheduled time.
    #[arg(long, default_value_t = 16)]
    pub batch: u64,
    /// Send the batches with `"parallel": true`: the server may run their commands
    /// concurrently, in no particular order. Without it a batch's publications are
    /// applied in the order given.
    #[arg(long)]
    pub batch_parallel: bool,
    /// Size of each publication's JSON payload in bytes (it carries the send time).
    #[arg(long, default_value_t = 100)]
    pub payload_size: usize,
    /// Channel of the fan-out scenarios.
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Connections opened at once while connecting.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Source addresses 127.0.0.2, 127.0.0.3, ... to spread connections over (0 =
    /// one per 20,000 connections beyond the first 20,000 from 127.0.0.1).
    #[arg(long, default_value_t = 0)]
    pub source_addrs: usize,
    /// Seconds to hold the connections (idle).
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Percent of subscribers that never read (latency, fanout): slow readers.
    #[arg(long, default_value_t = 0.0)]
    pub slow_readers: f64,
    /// Seconds to wait for the last deliveries after publishing ends.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Upper bound on the whole publishing phase, in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub max_time: f64,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Nodes of the cluster scenario (2 or 3).
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Engine of the cluster scenario.
    #[arg(long, value_enum, default_value = "redis")]
    pub engine: EngineArg,
    /// Address of the engine's server for the cluster scenario (default
    /// redis://127.0.0.1:6379, 127.0.0.1:7000 for redis-cluster (seeds,
    /// comma-separated), or nats://127.0.0.1:4222).
    #[arg(long)]
    pub engine_url: Option<String>,
    /// Process id of the engine's server (redis-server or nats-server) of the
    /// cluster scenario, to report its CPU time per publication.
    #[arg(long)]
    pub engine_pid: Option<u32>,
    /// Print the report as JSON instead of the one-line summary.
    #[arg(long)]
    pub json: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs a scenario on its own runtime and prints its report.
pub fn run(scenario: Scenario) -> anyhow::Result<()> {
    let args = match &scenario {
        Scenario::Swarm(a) => return run_swarm(a.clone()),
        Scenario::SwarmWorker(a) => {
            // One thread: the workers share the machine with the nodes.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let r = runtime.block_on(swarm::worker(a.clone()));
            runtime.shutdown_background();
            return r;
        }
        Scenario::Fanout(a)
        | Scenario::Latency(a)
        | Scenario::Idle(a)
        | Scenario::Connect(a)
        | Scenario::SseFanout(a)
        | Scenario::Cluster(a) => a.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let report = runtime.block_on(load::run(scenario))?;
    // Connections still open are dropped with the runtime; do not wait for them.
    runtime.shutdown_background();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.summary());
    }
    Ok(())
}

/// Runs the swarm coordinator and prints its report; fails when --check is given
/// and a correctness check failed.
fn run_swarm(args: swarm::SwarmArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let json = args.json;
    let check = args.check;
    let report = runtime.block_on(swarm::swarm(args))?;
    runtime.shutdown_background();
    print!("{}", report.summary());
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if check && !report.failures().is_empty() {
        anyhow::bail!("{} check(s) failed", report.failures().len());
    }
    Ok(())
}
