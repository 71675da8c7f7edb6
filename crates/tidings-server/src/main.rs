//! The `tidings` binary: a thin layer over the library. It parses arguments, loads the
//! configuration, starts logging, binds the listener and handles signals.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use axum::response::Html;
use clap::{Parser, Subcommand};
use tidings::auth::{sign_connect_token, unix_now, ConnectClaims};
use tidings::{Config, Node};

#[cfg(feature = "autobahn-echo")]
mod autobahn;

/// The demo chat, served at `/`.
const DEMO_PAGE: &str = include_str!("../../../web/index.html");

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
    /// Print an HS256 connection token.
    Token(TokenArgs),
    /// Load and validate a configuration, then print it as JSON. Unknown keys are
    /// listed on stderr.
    CheckConfig {
        /// Config file (.json, .toml, .yaml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Config file, as a positional argument.
        #[arg(conflicts_with = "config")]
        file: Option<PathBuf>,
    },
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
    /// User id (`sub` claim).
    #[arg(long, short)]
    user: String,
    /// Seconds until the token expires; 0 for no expiry.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// JSON for the `info` claim.
    #[arg(long)]
    info: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::CheckConfig { config, file } => {
            let cfg = Config::load(config.or(file).as_deref(), std::env::vars())?;
            for key in &cfg.unknown_keys {
                eprintln!("warning: unknown configuration key {key} is ignored");
            }
            announce(&serde_json::to_string_pretty(&cfg)?);
            Ok(())
        }
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let secret = match args.secret {
        Some(s) => s,
        None => {
            Config::load(args.config.as_deref(), std::env::vars())?
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
    let claims = ConnectClaims {
        sub: args.user,
        exp: (args.ttl > 0).then(|| unix_now() + args.ttl),
        info,
        ..Default::default()
    };
    announce(&sign_connect_token(&secret, &claims)?);
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(a) = args.address {
        config.http_server.address = a;
    }
    if let Some(p) = args.port {
        config.http_server.port = p;
    }
    init_tracing(&config.log.level);
    for key in &config.unknown_keys {
        tracing::warn!(key, "unknown configuration key ignored");
    }
    let development = args.config.is_none();
    if config.http_api.key.is_empty() && !config.http_api.insecure && development {
        config.http_api.key = random_key();
        announce(&format!("server API key: {}", config.http_api.key));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(config, development))
}

async fn run(config: Config, development: bool) -> anyhow::Result<()> {
    let host = if config.http_server.address.is_empty() {
        "0.0.0.0".to_string()
    } else {
        config.http_server.address.clone()
    };
    let addr: SocketAddr = format!("{host}:{}", config.http_server.port)
        .parse()
        .or_else(|_| format!("[{host}]:{}", config.http_server.port).parse())
        .with_context(|| format!("bad listen address {host:?}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let node = Node::new(config);
    let app =
        tidings::server::router(&node).route("/", axum::routing::get(|| async { Html(DEMO_PAGE) }));
    #[cfg(feature = "autobahn-echo")]
    let app = {
        tracing::warn!(
            "built with autobahn-echo: /autobahn/echo is a raw WebSocket echo for tests"
        );
        app.route("/autobahn/echo", axum::routing::get(autobahn::echo))
    };
    if development {
        tracing::info!("no --config given: running the development profile (anonymous access, history and presence on channels without namespace)");
    }
    // Register the signal handlers before announcing readiness, so a SIGTERM that
    // follows the announcement at once still shuts down gracefully.
    let signals = shutdown_signal()?;
    announce(&format!("tidings listening on http://{local}"));
    tidings::server::run(listener, node, app, signals).await?;
    tracing::info!("shut down");
    Ok(())
}

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

fn init_tracing(level: &str) {
    let level = if level == "none" { "off" } else { level };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},tidings={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A closed stderr (the reader of a pipe went away) must not turn a log line
        // into a panic, least of all on the shutdown path.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
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
