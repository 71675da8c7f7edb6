//! Spawning the `tidings` binary on a free port and talking to its HTTP side.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use crate::client::WsClient;
use crate::proto_client::ProtoClient;
use crate::transport::Transport;

/// How long a server gets to print its listening line.
const START_DEADLINE: Duration = Duration::from_secs(15);

/// Output lines kept for the failure report; older lines are dropped.
const LOG_LINES_KEPT: usize = 2000;

/// The line the binary prints once it accepts connections (then `http://ADDR` or
/// `https://ADDR`).
const LISTENING_PREFIX: &str = "tidings listening on ";

/// The line the binary prints, before the listening line, when the server API,
/// health and metrics have a listener of their own.
const INTERNAL_PREFIX: &str = "tidings internal endpoints on ";

/// The line the development profile prints with its random API key.
const API_KEY_PREFIX: &str = "server API key: ";

/// Makes temp file names unique within one test process.
static NEXT_CONFIG: AtomicU64 = AtomicU64::new(0);

/// Captured stdout and stderr lines. A `std::sync::Mutex`, because nothing
/// awaits while it is held.
type Logs = Arc<Mutex<VecDeque<String>>>;

/// A running `tidings serve` child process on a free port.
///
/// Dropping it kills the child (the process this value spawned, by its
/// handle), and, when the test is failing, prints the server's last output
/// lines to help explain why.
pub struct TidingsServer {
    /// The spawned process; `kill_on_drop` is set as a second safety net.
    child: Child,
    /// Process id, kept for SIGTERM after the handle has been polled.
    pid: u32,
    /// Where the server said it listens.
    addr: SocketAddr,
    /// Whether that listener serves TLS.
    tls: bool,
    /// The separate listener of the API, health and metrics, if any.
    internal_addr: Option<SocketAddr>,
    /// Key for `/api/*`, when one is known.
    api_key: Option<String>,
    /// Everything the server printed, newest last, bounded.
    logs: Logs,
    /// One HTTP client so API calls reuse connections.
    http: reqwest::Client,
    /// The temp config file, removed on drop.
    config_path: Option<PathBuf>,
    /// Set once `wait_exit` has seen the process end.
    exit_status: Option<ExitStatus>,
}

/// Options for [`TidingsServer`]; see [`TidingsServer::builder`].
#[derive(Default)]
pub struct TidingsServerBuilder {
    /// File extension (`json`, `toml`, `yaml`) and contents of `--config`.
    config: Option<(String, String)>,
    /// The JSON config, when given as JSON, to read `http_api.key` from.
    config_json: Option<Value>,
    /// Extra environment for the child (on top of a `TIDINGS_`-free env).
    env: Vec<(String, String)>,
    /// Extra command-line arguments after `serve`.
    args: Vec<String>,
    /// API key to use for `/api/*` calls, overriding what is inferred.
    api_key: Option<String>,
}

impl TidingsServerBuilder {
    /// Runs with `--config FILE.json` holding `config`.
    pub fn config_json(mut self, config: Value) -> Self {
        self.config = Some(("json".to_owned(), config.to_string()));
        self.config_json = Some(config);
        self
    }

    /// Runs with `--config FILE.toml` holding `text`.
    pub fn config_toml(self, text: &str) -> Self {
        self.config_file("toml", text)
    }

    /// Runs with `--config FILE.yaml` holding `text`.
    pub fn config_yaml(self, text: &str) -> Self {
        self.config_file("yaml", text)
    }

    /// Runs with `--config FILE.<ext>` holding `text`.
    pub fn config_file(mut self, ext: &str, text: &str) -> Self {
        self.config = Some((ext.to_owned(), text.to_owned()));
        self.config_json = None;
        self
    }

    /// Sets an environment variable for the child, e.g.
    /// `TIDINGS_CLIENT_PING_INTERVAL=1s`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds a command-line argument after `serve`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// The key the testkit sends to `/api/*`, when it cannot be inferred
    /// (TOML and YAML configs).
    pub fn api_key(mut self, key: &str) -> Self {
        self.api_key = Some(key.to_owned());
        self
    }

    /// Spawns the server and waits until it listens.
    ///
    /// # Errors
    ///
    /// Fails when the binary is missing, exits early, or does not print its
    /// listening line within the deadline. The error carries its output.
    pub async fn start(self) -> anyhow::Result<TidingsServer> {
        let bin = binary_path()?;
        let env_key = self
            .env
            .iter()
            .find(|(k, _)| k == "TIDINGS_HTTP_API_KEY")
            .map(|(_, v)| v.clone());
        let file_key = self
            .config_json
            .as_ref()
            .and_then(|c| c.pointer("/http_api/key"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let known_key = self.api_key.clone().or(env_key).or(file_key);
        // Only the development profile prints a random key; wait for it then.
        let expect_printed_key = known_key.is_none() && self.config.is_none();

        let config_path = match &self.config {
            Some((ext, text)) => Some(write_temp_config(ext, text)?),
            None => None,
        };

        let mut command = Command::new(&bin);
        command
            .arg("serve")
            .args(["--address", "127.0.0.1", "--port", "0"]);
        if let Some(path) = &config_path {
            command.arg("--config").arg(path);
        }
        command.args(&self.args);
        // The test's own environment must not leak settings into the server.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TIDINGS_") {
                command.env_remove(&key);
            }
        }
        // TIDINGS_TEST_REDIS_URL=redis://… runs every server of a suite on the Redis
        // engine, each with a key prefix of its own, unless the test chose an engine.
        if let Some(url) = std::env::var_os("TIDINGS_TEST_REDIS_URL") {
            let chosen = self
                .env
                .iter()
                .any(|(k, _)| k.starts_with("TIDINGS_ENGINE_"))
                || self
                    .config_json
                    .as_ref()
                    .is_some_and(|c| c.get("engine").is_some());
            if !chosen {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                command
                    .env("TIDINGS_ENGINE_TYPE", "redis")
                    .env("TIDINGS_ENGINE_REDIS_ADDRESS", url)
                    .env(
                        "TIDINGS_ENGINE_REDIS_PREFIX",
                        format!("test-{}-{n}", std::process::id()),
                    );
            }
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);

        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let pid = child.id().context("child has no pid")?;
        let logs: Logs = Arc::new(Mutex::new(VecDeque::new()));
        let (line_tx, mut line_rx) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().context("child stdout")?;
        let stderr = child.stderr.take().context("child stderr")?;
        tokio::spawn(drain(stdout, logs.clone(), Some(line_tx)));
        tokio::spawn(drain(stderr, logs.clone(), None));

        let mut server = TidingsServer {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: false,
            internal_addr: None,
            api_key: known_key,
            logs,
            http: reqwest::Client::new(),
            config_path,
            exit_status: None,
        };

        let deadline = Instant::now() + START_DEADLINE;
        let mut addr = None;
        let mut printed_key = None;
        while addr.is_none() || (expect_printed_key && printed_key.is_none()) {
            let line = match tokio::time::timeout_at(deadline, line_rx.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) => {
                    let status = timeout(Duration::from_secs(2), server.child.wait()).await;
                    bail!(
                        "tidings exited before it was ready ({status:?}); output:\n{}",
                        server.log_tail(60)
                    );
                }
                Err(_) => bail!(
                    "tidings did not get ready within {START_DEADLINE:?} (seen address: {addr:?}, \
                     seen API key: {}); output:\n{}",
                    printed_key.is_some(),
                    server.log_tail(60)
                ),
            };
            if let Some(rest) = line.trim().strip_prefix(LISTENING_PREFIX) {
                let (tls, parsed) = parse_url_addr(rest)
                    .with_context(|| format!("parsing listening line {line:?}"))?;
                server.tls = tls;
                addr = Some(parsed);
            } else if let Some(rest) = line.trim().strip_prefix(INTERNAL_PREFIX) {
                let (_, parsed) = parse_url_addr(rest)
                    .with_context(|| format!("parsing internal line {line:?}"))?;
                server.internal_addr = Some(parsed);
            } else if let Some(key) = line.trim().strip_prefix(API_KEY_PREFIX) {
                printed_key = Some(key.trim().to_owned());
            }
        }
        server.addr = addr.context("no address")?;
        if server.api_key.is_none() {
            server.api_key = printed_key;
        }
        Ok(server)
    }
}

impl TidingsServer {
    /// Starts a server with the development profile (no config file).
    ///
    /// # Errors
    ///
    /// See [`TidingsServerBuilder::start`].
    pub async fn start() -> anyhow::Result<Self> {
        Self::builder().start().await
    }

    /// Options for starting a server.
    pub fn builder() -> TidingsServerBuilder {
        TidingsServerBuilder::default()
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the public listener serves TLS (`https://`, `wss://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The separate listener of the server API, health and metrics
    /// (`http_server.internal_port`), if the server has one.
    pub fn internal_addr(&self) -> Option<SocketAddr> {
        self.internal_addr
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The API key the testkit sends, if known.
    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// `ws://ADDR/connection/websocket`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    /// `http://ADDR`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where `/api/*` is served: the internal listener when there is one, else
    /// [`Self::http_url`].
    pub fn api_url(&self) -> String {
        match self.internal_addr {
            Some(addr) => format!("http://{addr}"),
            None => self.http_url(),
        }
    }

    /// Opens a WebSocket without sending `connect`.
    ///
    /// # Errors
    ///
    /// Fails when the handshake fails.
    pub async fn client(&self) -> anyhow::Result<WsClient> {
        WsClient::open(&self.ws_url()).await
    }

    /// Opens a WebSocket and connects anonymously.
    ///
    /// # Errors
    ///
    /// Fails when the handshake or the connect command fails.
    pub async fn connected_client(&self) -> anyhow::Result<WsClient> {
        let mut client = self.client().await?;
        client.connect(serde_json::json!({})).await?;
        Ok(client)
    }

    /// Opens a WebSocket and connects with `token`.
    ///
    /// # Errors
    ///
    /// Fails when the handshake or the connect command fails.
    pub async fn connected_client_with_token(&self, token: &str) -> anyhow::Result<WsClient> {
        let mut client = self.client().await?;
        client
            .connect(serde_json::json!({ "token": token }))
            .await?;
        Ok(client)
    }

    /// Connects anonymously over `transport`.
    ///
    /// # Errors
    ///
    /// Fails when the connection or the connect command fails.
    pub async fn connect_over(&self, transport: Transport) -> anyhow::Result<ProtoClient> {
        ProtoClient::connect(&self.http_url(), transport, serde_json::json!({})).await
    }

    /// Connects over `transport` with the given connect request fields
    /// (`token`, `data`, …).
    ///
    /// # Errors
    ///
    /// Fails when the connection or the connect command fails.
    pub async fn connect_over_with(
        &self,
        transport: Transport,
        params: Value,
    ) -> anyhow::Result<ProtoClient> {
        ProtoClient::connect(&self.http_url(), transport, params).await
    }

    /// The `tidings_connections` gauge from `/metrics`.
    ///
    /// # Errors
    ///
    /// Fails when `/metrics` cannot be read or lacks the gauge.
    pub async fn connections_gauge(&self) -> anyhow::Result<f64> {
        let (status, text) = self.http_get("/metrics").await?;
        if status != 200 {
            bail!("GET /metrics -> HTTP {status}");
        }
        crate::metrics::sample(&text, "tidings_connections", &[])
            .context("no tidings_connections sample in /metrics")
    }

    /// POSTs `body` to `/api/<method>` with the known key in `X-API-Key`.
    /// Returns the HTTP status and the JSON body (`Null` if it is not JSON).
    ///
    /// # Errors
    ///
    /// Fails when no key is known or the request cannot be made.
    pub async fn api(&self, method: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let key = self
            .api_key
            .clone()
            .ok_or_else(|| anyhow!("no API key known for this server"))?;
        let (status, text) = self
            .api_raw(method, &body.to_string(), &[("X-API-Key", &key)])
            .await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Calls `/api/<method>` and returns its `result`, failing on a non-200
    /// status or an `error` in the body.
    ///
    /// # Errors
    ///
    /// As described.
    pub async fn api_ok(&self, method: &str, body: Value) -> anyhow::Result<Value> {
        let (status, reply) = self.api(method, body.clone()).await?;
        if status != 200 || reply.get("error").is_some() {
            bail!("/api/{method} {body} -> HTTP {status}: {reply}");
        }
        Ok(reply.get("result").cloned().unwrap_or(Value::Null))
    }

    /// Publishes `data` into `channel` through the server API and returns
    /// the result (`offset`, `epoch` when history is on).
    ///
    /// # Errors
    ///
    /// As [`Self::api_ok`].
    pub async fn publish(&self, channel: &str, data: Value) -> anyhow::Result<Value> {
        self.api_ok(
            "publish",
            serde_json::json!({ "channel": channel, "data": data }),
        )
        .await
    }

    /// POSTs a raw body to `/api/<method>` with exactly the given headers.
    /// Returns the status and the body text.
    ///
    /// # Errors
    ///
    /// Fails when the request cannot be made or times out.
    pub async fn api_raw(
        &self,
        method: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, String)> {
        let mut request = self
            .http
            .post(format!("{}/api/{method}", self.api_url()))
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .timeout(crate::DEFAULT_WAIT);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("POST /api/{method}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.context("reading API response")?;
        Ok((status, text))
    }

    /// GETs `path` and returns the status and body text.
    ///
    /// # Errors
    ///
    /// Fails when the request cannot be made or times out.
    pub async fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let response = self
            .http
            .get(format!("{}{path}", self.http_url()))
            .timeout(crate::DEFAULT_WAIT)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.context("reading body")?;
        Ok((status, text))
    }

    /// Sends SIGTERM to the child.
    ///
    /// # Errors
    ///
    /// Fails when `kill` cannot be run or reports an error.
    pub fn sigterm(&self) -> anyhow::Result<()> {
        self.signal("TERM")
    }

    /// Sends SIGINT to the child, as Ctrl-C would.
    ///
    /// # Errors
    ///
    /// Fails when `kill` cannot be run or reports an error.
    pub fn sigint(&self) -> anyhow::Result<()> {
        self.signal("INT")
    }

    /// SIGKILL, as a crash would, and waits until the process is gone. Its
    /// sockets close without any goodbye.
    ///
    /// # Errors
    ///
    /// Fails when the process cannot be killed or reaped.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if self.exit_status.is_some() {
            return Ok(());
        }
        self.child.start_kill().context("killing tidings")?;
        let status = self.child.wait().await.context("reaping tidings")?;
        self.exit_status = Some(status);
        Ok(())
    }

    /// Whether the process has been seen to exit.
    pub fn has_exited(&self) -> bool {
        self.exit_status.is_some()
    }

    /// Sends the named signal (`TERM`, `INT`, …) to the child.
    fn signal(&self, name: &str) -> anyhow::Result<()> {
        // The `kill` utility keeps this crate free of unsafe signal calls.
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .with_context(|| format!("running kill -{name}"))?;
        if !status.success() {
            bail!("kill -{name} {} failed: {status}", self.pid);
        }
        Ok(())
    }

    /// Waits for the child to exit.
    ///
    /// # Errors
    ///
    /// Fails when it is still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exit_status {
            return Ok(status);
        }
        let status = timeout(limit, self.child.wait())
            .await
            .map_err(|_| anyhow!("tidings still running after {limit:?}"))?
            .context("waiting for tidings")?;
        self.exit_status = Some(status);
        Ok(status)
    }

    /// Everything the server printed so far (stdout and stderr interleaved).
    pub fn logs(&self) -> Vec<String> {
        self.logs
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The last `n` output lines, joined for an error message.
    pub fn log_tail(&self, n: usize) -> String {
        let lines = self.logs();
        let start = lines.len().saturating_sub(n);
        lines[start..].join("\n")
    }
}

impl Drop for TidingsServer {
    fn drop(&mut self) {
        if self.exit_status.is_none() {
            // Kills exactly the child this value spawned.
            let _ = self.child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- tidings output (pid {}, last lines) ----\n{}\n---- end of tidings output ----",
                self.pid,
                self.log_tail(80)
            );
        }
        if let Some(path) = &self.config_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Reads `stream` line by line until EOF, keeping the lines in `logs` and
/// forwarding them to `lines` while someone listens.
async fn drain<R: AsyncRead + Unpin>(
    stream: R,
    logs: Logs,
    mut lines: Option<mpsc::UnboundedSender<String>>,
) {
    let mut reader = BufReader::new(stream).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        if let Ok(mut logs) = logs.lock() {
            if logs.len() == LOG_LINES_KEPT {
                logs.pop_front();
            }
            logs.push_back(line.clone());
        }
        if let Some(tx) = &lines {
            if tx.send(line).is_err() {
                lines = None;
            }
        }
    }
}

/// Splits `http://ADDR` or `https://ADDR` into (is TLS, address).
fn parse_url_addr(url: &str) -> anyhow::Result<(bool, SocketAddr)> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        bail!("no http:// or https:// in {url:?}");
    };
    Ok((tls, rest.trim_end_matches('/').parse()?))
}

/// Where the `tidings` binary is: `TIDINGS_BIN`, or
/// `<workspace>/target/debug/tidings` (honouring `CARGO_TARGET_DIR`).
///
/// # Errors
///
/// Fails when the binary has not been built.
pub fn binary_path() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TIDINGS_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace.join(dir)
            }
        }
        None => workspace.join("target"),
    };
    let bin = target.join("debug").join("tidings");
    if !bin.exists() {
        bail!(
            "{} does not exist: run `cargo build -p tidings-server` first, or set TIDINGS_BIN",
            bin.display()
        );
    }
    warn_if_stale(&bin, &workspace.join("crates"));
    Ok(bin)
}

/// Tests run against the binary as built; say so once when a server source
/// file is newer than it, since `cargo test` does not rebuild it.
fn warn_if_stale(bin: &Path, crates: &Path) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
            return;
        };
        let newer = ["tidings", "tidings-protocol", "tidings-server"]
            .iter()
            .filter_map(|name| newest_file_time(&crates.join(name).join("src")))
            .any(|changed| changed > built);
        if newer {
            eprintln!(
                "warning: {} is older than the server sources; run `cargo build -p tidings-server`",
                bin.display()
            );
        }
    });
}

/// The latest modification time of any file under `dir`.
fn newest_file_time(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                newest = newest.max(Some(modified));
            }
        }
    }
    newest
}

/// Writes a config file into the temp dir under a name unique to this
/// process and call.
fn write_temp_config(ext: &str, text: &str) -> anyhow::Result<PathBuf> {
    let n = NEXT_CONFIG.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = std::env::temp_dir().join(format!(
        "tidings-testkit-{}-{n}-{nanos}.{ext}",
        std::process::id()
    ));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
