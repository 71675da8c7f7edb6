//! The `tidings` binary: a thin layer over the library. It parses arguments, loads the
//! configuration, starts logging, binds the listener and handles signals.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tidings::auth::{
    sign_connect_token, sign_subscribe_token, unix_now, ConnectClaims, SubscribeClaims,
};
use tidings::{Config, Node};

#[cfg(feature = "autobahn-echo")]
mod autobahn;
mod bench;
mod otel;
mod web;

/// How long `serve` waits for the engine's broker before it accepts clients.
const ENGINE_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "tidings",
    version,
    about = "A real-time messaging server that speaks the Centrifugo protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve(ServeArgs),
    /// Print an HS256 connection token (or, with --channel, a subscription token) for
    /// development.
    Token(TokenArgs),
    /// Load and validate a configuration, then print it as JSON. Unknown keys are
    /// listed on stderr. Exits with status 2, naming each, when settings are insecure:
    /// client.insecure, skipped token signature checks, an HMAC secret under 32
    /// bytes, JWKS over plain http to another host, http_api.insecure or
    /// admin.insecure on a non-loopback address, or an admin.secret under 32 bytes.
    CheckConfig {
        /// Config file (.json, .toml, .yaml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Config file, as a positional argument.
        #[arg(conflicts_with = "config")]
        file: Option<PathBuf>,
    },
    /// Development helper: write a self-signed certificate (cert.pem) and its key
    /// (key.pem) for local TLS, valid for localhost, 127.0.0.1 and ::1.
    #[command(hide = true)]
    DevCert(DevCertArgs),
    /// Measure a server: fan-out throughput, latency, idle connections, connect
    /// rate, SSE fan-out and cluster fan-out (see docs/benchmarks.md). Loopback only.
    Bench {
        // Boxed: the bench options are much larger than the other commands'.
        #[command(subcommand)]
        scenario: Box<bench::Scenario>,
    },
}

#[derive(clap::Args)]
struct DevCertArgs {
    /// Directory to write cert.pem and key.pem into (created if missing).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Extra host names or IP addresses the certificate is valid for.
    #[arg(long = "host")]
    hosts: Vec<String>,
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// Config file (.json, .toml, .yaml) with Centrifugo v6 key names. Without one,
    /// a development profile runs.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides http_server.address.
    #[arg(long)]
    address: Option<String>,
    /// Overrides http_server.port (0 picks a free port).
    #[arg(long, short)]
    port: Option<u16>,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// HMAC secret (client.token.hmac_secret_key); read from --config when omitted.
    #[arg(long)]
    secret: Option<String>,
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// User id (`sub` claim); empty for an anonymous token.
    #[arg(long, short)]
    user: String,
    /// Channels to subscribe the connection to on the server side (`channels`
    /// claim), comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "channel")]
    channels: Vec<String>,
    /// Sign a subscription token for this channel instead of a connection token.
    #[arg(long)]
    channel: Option<String>,
    /// Time until the token expires: seconds (`3600`) or a duration (`1h`, `90m`,
    /// `1h 30m`); `0` for no expiry.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: std::time::Duration,
    /// JSON for the `info` claim.
    #[arg(long)]
    info: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::DevCert(args) => dev_cert(args),
        Command::Bench { scenario } => bench::run(*scenario),
        Command::CheckConfig { config, file } => {
            let cfg = load_config(config.or(file).as_deref())?;
            for key in &cfg.unknown_keys {
                eprintln!("warning: unknown configuration key {key} is ignored");
            }
            let problems = cfg.insecure_settings();
            for problem in &problems {
                eprintln!("error: {problem}");
            }
            if !problems.is_empty() {
                eprintln!(
                    "refusing an insecure configuration ({} problem{} above)",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                );
                std::process::exit(2);
            }
            announce(&serde_json::to_string_pretty(&cfg)?);
            Ok(())
        }
    }
}

/// Loads the configuration from `file` and the process environment, then checks the
/// token settings, which only the token code can judge (`Config::load` validates
/// the rest). A key that does not parse is refused here, with its name, as any other
/// invalid value is, rather than at the first token.
fn load_config(file: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let config = Config::load(file, std::env::vars())?;
    tidings::auth::Auth::check(&config.client)
        .map_err(|e| tidings::config::ConfigError::Invalid(e.to_string()))?;
    Ok(config)
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let secret = match args.secret {
        Some(s) => s,
        None => {
            load_config(args.config.as_deref())?
                .client
                .token
                .hmac_secret_key
        }
    };
    anyhow::ensure!(
        !secret.is_empty(),
        "no HMAC secret: pass --secret or a config with client.token.hmac_secret_key"
    );
    let info = args
        .info
        .map(|s| tidings::protocol::RawJson::parse(s.into_bytes()))
        .transpose()
        .context("--info must be JSON")?;
    let now = unix_now();
    let ttl = args.ttl.as_secs();
    let exp = (ttl > 0).then(|| now.saturating_add(ttl));
    let token = match args.channel {
        Some(channel) => sign_subscribe_token(
            &secret,
            &SubscribeClaims {
                sub: args.user,
                channel,
                exp,
                iat: Some(now),
                info,
                ..Default::default()
            },
        )?,
        None => sign_connect_token(
            &secret,
            &ConnectClaims {
                sub: args.user,
                exp,
                iat: Some(now),
                info,
                channels: args
                    .channels
                    .into_iter()
                    .filter(|c| !c.is_empty())
                    .collect(),
                ..Default::default()
            },
        )?,
    };
    announce(&token);
    Ok(())
}

fn dev_cert(args: DevCertArgs) -> anyhow::Result<()> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    names.extend(args.hosts);
    let certified =
        rcgen::generate_simple_self_signed(names).context("cannot generate a certificate")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let cert = args.out.join("cert.pem");
    let key = args.out.join("key.pem");
    std::fs::write(&cert, certified.cert.pem())
        .with_context(|| format!("cannot write {}", cert.display()))?;
    write_private(&key, &certified.key_pair.serialize_pem())?;
    announce(&format!(
        "wrote {} and {} (self-signed, for development only)",
        cert.display(),
        key.display()
    ));
    Ok(())
}

/// Writes a file that only its owner may read, where the platform allows.
fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `--ttl`: plain seconds, or a humantime duration such as `1h` or `15m`.
fn parse_ttl(value: &str) -> Result<std::time::Duration, String> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse()
            .map(std::time::Duration::from_secs)
            .map_err(|e| format!("{value:?}: {e}"));
    }
    humantime::parse_duration(value)
        .map_err(|e| format!("{value:?} is neither seconds nor a duration like 1h: {e}"))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = load_config(args.config.as_deref())?;
    if let Some(a) = args.address {
        config.http_server.address = a;
    }
    if let Some(p) = args.port {
        config.http_server.port = p;
    }
    let traces = init_tracing(&config.log.level, &config.opentelemetry)?;
    if traces.is_some() && !config.opentelemetry.api && !config.opentelemetry.proxy {
        tracing::warn!("opentelemetry.enabled without opentelemetry.api or opentelemetry.proxy: nothing is traced");
    }
    for key in &config.unknown_keys {
        tracing::warn!(key, "unknown configuration key ignored");
    }
    for problem in config.insecure_settings() {
        tracing::warn!("insecure setting: {problem}");
    }
    let development = args.config.is_none();
    if config.http_api.key.is_empty() && !config.http_api.insecure && development {
        config.http_api.key = random_key();
        announce(&format!("server API key: {}", config.http_api.key));
    }
    let served = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(config, development));
    if let Some(provider) = traces {
        // The last batch of spans goes out before the process ends.
        if let Err(e) = provider.shutdown() {
            tracing::warn!(error = %e, "opentelemetry: spans not flushed at exit");
        }
    }
    served
}

async fn run(config: Config, development: bool) -> anyhow::Result<()> {
    let http = &config.http_server;
    let public_tls = http
        .tls
        .enabled
        .then(|| tidings::tls::server_config(&http.tls))
        .transpose()
        .context("http_server.tls")?;
    let listener = bind(&http.address, http.port)?;
    let local = listener.local_addr()?;
    let internal = match http.separate_internal_port() {
        Some(port) => {
            let tls = http
                .internal_tls()
                .map(tidings::tls::server_config)
                .transpose()
                .context("TLS of the internal port")?;
            Some((bind(http.internal_address(), port)?, tls))
        }
        None => None,
    };
    let node = Node::new(config);
    // A broker that is still connecting would refuse the first clients with
    // temporary errors; give it a moment, then serve anyway (it keeps retrying).
    if !node.wait_engine_ready(ENGINE_READY_WAIT).await {
        tracing::error!(
            "the engine's broker is not reachable yet; clients get temporary errors until it is"
        );
    }
    match node.auth().connection().jwks() {
        Some(jwks) => tracing::info!(url = jwks.url(), "connection tokens: keys from JWKS"),
        None => {
            let algorithms = node.auth().connection().static_algorithms();
            tracing::info!(
                ?algorithms,
                "connection tokens: algorithms of the configured keys"
            );
        }
    }
    let mut endpoints = Vec::new();
    let public_app = match &internal {
        Some(_) => tidings::server::client_router(&node),
        None => tidings::server::router(&node),
    };
    // The admin UI at the root of the public listener takes `/` from the demo.
    let admin_at_root = node.config().admin.enabled
        && node.config().admin.prefix().is_empty()
        && internal.is_none();
    let public_app = if admin_at_root {
        public_app
    } else {
        public_app.merge(web::demo_routes())
    };
    #[cfg(feature = "autobahn-echo")]
    let public_app = {
        tracing::warn!(
            "built with autobahn-echo: /autobahn/echo is a raw WebSocket echo for tests"
        );
        public_app.route("/autobahn/echo", axum::routing::get(autobahn::echo))
    };
    let mut public = tidings::server::Endpoint::new(listener, public_app);
    let public_scheme = scheme(public_tls.is_some());
    if let Some(tls) = public_tls {
        public = public.with_tls(tls);
    }
    endpoints.push(public);
    let mut internal_line = None;
    if let Some((listener, tls)) = internal {
        internal_line = Some(format!(
            "tidings internal endpoints on {}://{}",
            scheme(tls.is_some()),
            listener.local_addr()?
        ));
        let mut endpoint =
            tidings::server::Endpoint::new(listener, tidings::server::internal_router(&node));
        if let Some(tls) = tls {
            endpoint = endpoint.with_tls(tls);
        }
        endpoints.push(endpoint);
    }
    if development {
        tracing::info!("no --config given: running the development profile (anonymous access, history and presence on channels without namespace)");
    }
    // Register the signal handlers before announcing readiness, so a SIGTERM that
    // follows the announcement at once still shuts down gracefully.
    let signals = shutdown_signal()?;
    // The internal line comes first: readers may stop at the listening line.
    if let Some(line) = internal_line {
        announce(&line);
    }
    announce(&format!("tidings listening on {public_scheme}://{local}"));
    tidings::server::serve(node, endpoints, signals).await?;
    tracing::info!("shut down");
    Ok(())
}

fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// Binds `host:port`; an empty host means every interface.
fn bind(host: &str, port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .or_else(|_| format!("[{host}]:{port}").parse())
        .with_context(|| format!("bad listen address {host:?}"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .with_context(|| format!("cannot open a socket for {addr}"))?;
    // As `TcpListener::bind` does: a restarted server can bind at once.
    #[cfg(unix)]
    socket
        .set_reuseaddr(true)
        .with_context(|| format!("cannot set SO_REUSEADDR on {addr}"))?;
    socket
        .bind(addr)
        .with_context(|| format!("cannot listen on {addr}"))?;
    // The longest accept queue the kernel allows (it caps the backlog at
    // net.core.somaxconn, 4096 by default on Linux since 5.4), as Go servers
    // such as Centrifugo get; `TcpListener::bind` asks for 128. A reconnect
    // storm after a node dies overflows a short queue, and each dropped SYN
    // costs that client a TCP retransmission backoff of 1, 2, 4... seconds.
    socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("cannot listen on {addr}"))
}

/// The accept queue asked for; the kernel lowers it to its own maximum.
const LISTEN_BACKLOG: u32 = 65_535;

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called,
/// not when the future is first polled.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("signal received, shutting down");
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("signal received, shutting down");
    })
}

/// Logs to stderr; with `opentelemetry.enabled`, also the spans for OTLP. Returns
/// the trace exporter, to be flushed at exit.
fn init_tracing(
    level: &str,
    opentelemetry: &tidings::config::OpenTelemetryConfig,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let level = if level == "none" { "off" } else { level };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},tidings={level}")));
    let logs = tracing_subscriber::fmt::layer()
        // A closed stderr (the reader of a pipe went away) must not turn a log line
        // into a panic, least of all on the shutdown path.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_filter(filter)
        .boxed();
    let mut layers = vec![logs];
    let mut provider = None;
    if opentelemetry.enabled {
        let traces = otel::traces()?;
        layers.push(traces.layer);
        provider = Some(traces.provider);
    }
    tracing_subscriber::registry().with(layers).init();
    Ok(provider)
}

/// Prints a line on stdout for people and scripts. A closed stdout is ignored rather
/// than allowed to panic, as `println!` would.
fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn random_key() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
