//! The servers a run measures: Tidings nodes this run spawned, or a server that is
//! already running (a peer, or a Tidings started by hand).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The line the binary prints once it accepts connections.
const LISTENING_PREFIX: &str = "tidings listening on ";
/// How long a spawned server gets to print it.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// The configuration a spawned Tidings runs with when no `--config` is given:
/// anonymous clients, history on the benchmark channel (as the targets ask),
/// a `personal` namespace without history for the idle and connect scenarios, the
/// unidirectional SSE endpoint, the Socket.IO endpoint (for `--protocol
/// engineio`), and no per-connection command rate limit (the publisher client
/// sends thousands of commands per second).
pub fn default_config(api_key: &str) -> serde_json::Value {
    serde_json::json!({
        "log": { "level": "error" },
        "http_api": { "key": api_key },
        "client": {
            "allow_anonymous_connect_without_token": true,
            "command_rate_limit": { "enabled": false },
            "channel_limit": 0
        },
        "uni_sse": { "enabled": true },
        "socketio": { "enabled": true },
        "channel": {
            "without_namespace": {
                "history_size": 100,
                "history_ttl": "300s",
                "allow_subscribe_for_anonymous": true,
                "allow_subscribe_for_client": true,
                "allow_publish_for_anonymous": true,
                "allow_publish_for_client": true
            },
            "namespaces": [{
                "name": "personal",
                "allow_subscribe_for_anonymous": true,
                "allow_subscribe_for_client": true
            }]
        }
    })
}

/// A spawned Tidings node.
pub struct Spawned {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    /// The temporary config file, removed on drop.
    config: Option<PathBuf>,
}

impl Spawned {
    /// Starts `binary serve --config <config>` on 127.0.0.1 and a free port, and
    /// waits for its listening line. `config` is the JSON to run with.
    pub async fn start(binary: &Path, config: &serde_json::Value) -> anyhow::Result<Spawned> {
        let path = std::env::temp_dir().join(format!(
            "tidings-bench-{}-{}.json",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, serde_json::to_vec_pretty(config)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let mut child = Command::new(binary)
            .args(["serve", "--address", "127.0.0.1", "--port", "0", "--config"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("spawned server has no pid")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(START_DEADLINE, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(LISTENING_PREFIX) {
                    let addr = rest
                        .trim_start_matches("http://")
                        .trim_start_matches("https://");
                    return Ok::<_, anyhow::Error>(Some(addr.parse::<SocketAddr>()?));
                }
            }
            Ok(None)
        })
        .await
        .context("the server did not start in time")??;
        let Some(addr) = addr else {
            let status = child.wait().await?;
            bail!("the server exited before listening ({status}); its config: {config}");
        };
        // Keep reading stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Spawned {
            child,
            pid,
            addr,
            config: Some(path),
        })
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends SIGKILL to the server (`kill -9`) without waiting.
    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// Stops the server (the process this value spawned) and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(path) = self.config.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}
