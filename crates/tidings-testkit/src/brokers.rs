//! Private `redis-server` and `nats-server -js` child processes on free loopback
//! ports, for the multi-node tests.
//!
//! Each value owns its process (killed on Drop) and a temporary directory. `kill9`
//! and `restart` exist so tests can prove what happens when the broker dies: the
//! restarted server listens on the same port, so nodes reconnect to the address
//! they were given. Both servers keep nothing on disk between restarts unless the
//! test asks for it, so a restart loses the data, as a crash of an unpersisted
//! server does.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};
use tokio::time::{sleep, Instant};

/// How long a broker gets to accept connections after it is spawned.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// Makes temp directory names unique within one test process.
static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

fn temp_dir(kind: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "tidings-{kind}-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A free port for a Redis Cluster node: at most 55535, with the cluster bus
/// port (10000 higher) free too; redis-server refuses higher ports.
pub fn free_cluster_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let port = free_port()?;
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port at most 55535 with a free bus port in 200 tries")
}

/// A free TCP port on 127.0.0.1 (bound, read back, released).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `addr`.
async fn wait_listening(addr: SocketAddr, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited before listening on {addr}: {status}");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within {READY_DEADLINE:?}");
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// A broker child process on a fixed loopback port with a temporary directory,
/// restartable on the same port; what [`RedisServer`] and [`NatsServer`] share.
struct Broker {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// What the process is, for errors.
    what: &'static str,
    /// Builds the command line for `port` and `dir`.
    command: CommandLine,
}

impl Broker {
    async fn start(
        what: &'static str,
        command: impl Fn(u16, &Path) -> Command + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        Self::start_on(what, free_port()?, command).await
    }

    async fn start_on(
        what: &'static str,
        port: u16,
        command: impl Fn(u16, &Path) -> Command + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let command: CommandLine = Box::new(command);
        let mut broker = Self {
            child: None,
            port,
            dir: temp_dir(what)?,
            what,
            command,
        };
        broker.spawn().await?;
        Ok(broker)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut child = (self.command)(self.port, &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {} (apt-get install {})", self.what, self.what))?;
        wait_listening(self.addr(), &mut child, self.what).await?;
        self.child = Some(child);
        Ok(())
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.start_kill().ok();
            c.wait().await.context("reaping a killed broker")?;
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            c.start_kill().ok();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Builds a broker's command line for its port and directory.
type CommandLine = Box<dyn Fn(u16, &Path) -> Command + Send + Sync>;

/// A `redis-server` child on a free port, without persistence.
pub struct RedisServer(Broker);

impl RedisServer {
    /// Starts `redis-server` on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        Ok(Self(Broker::start("redis-server", redis_command).await?))
    }

    /// Starts `redis-server` as a replica of the server on `master_port`
    /// (`--replicaof`), on a free port of 127.0.0.1.
    pub async fn start_replica_of(master_port: u16) -> anyhow::Result<Self> {
        let command = move |port: u16, dir: &Path| {
            let mut c = redis_command(port, dir);
            c.args(["--replicaof", "127.0.0.1", &master_port.to_string()]);
            c
        };
        Ok(Self(Broker::start("redis-server", command).await?))
    }

    /// Starts `redis-server --sentinel` on a free port of 127.0.0.1, watching the
    /// master on `master_port` as `name` with a quorum of 2, declaring it down
    /// after `down_after` without an answer.
    pub async fn start_sentinel(
        name: &str,
        master_port: u16,
        down_after: Duration,
    ) -> anyhow::Result<Self> {
        let name = name.to_string();
        let command = move |port: u16, dir: &Path| {
            // Sentinel rewrites its config file: it lives in the private folder,
            // written once (a restarted sentinel keeps what it learnt).
            let conf = dir.join("sentinel.conf");
            if !conf.exists() {
                let text = format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {name} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {name} {down}\n\
                     sentinel failover-timeout {name} 10000\n\
                     sentinel parallel-syncs {name} 1\n",
                    dir = dir.display(),
                    down = down_after.as_millis(),
                );
                let _ = std::fs::write(&conf, text);
            }
            let mut c = Command::new(redis_binary());
            c.arg(&conf).arg("--sentinel");
            c
        };
        Ok(Self(Broker::start("redis-sentinel", command).await?))
    }

    /// Starts `redis-server --cluster-enabled yes` on a free port of 127.0.0.1,
    /// its cluster state in its private folder (kept across a restart), with a
    /// node timeout of `node_timeout` (how soon a dead master's replica takes
    /// over).
    pub async fn start_cluster_node(node_timeout: Duration) -> anyhow::Result<Self> {
        let command = move |port: u16, dir: &Path| {
            let mut c = redis_command(port, dir);
            c.args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args([
                    "--cluster-node-timeout",
                    &node_timeout.as_millis().to_string(),
                ])
                .current_dir(dir);
            c
        };
        Ok(Self(
            Broker::start_on("redis-server", free_cluster_port()?, command).await?,
        ))
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// `redis://127.0.0.1:PORT`, the form `engine.redis.address` takes.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.0.port)
    }

    /// Process id of the running server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.0.pid()
    }

    /// SIGKILL, as a crash would: the data goes with it.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.0.kill9().await
    }

    /// Starts the server again on the same port (after [`RedisServer::kill9`]).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.0.kill9().await?;
        self.0.spawn().await
    }
}

fn redis_command(port: u16, dir: &Path) -> Command {
    let mut c = Command::new(redis_binary());
    c.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir);
    c
}

/// A `nats-server -js` child on a free port, with JetStream storage in a
/// temporary directory.
pub struct NatsServer(Broker);

impl NatsServer {
    /// Starts `nats-server -js` on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        Ok(Self(Broker::start("nats-server", nats_command).await?))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// `nats://127.0.0.1:PORT`, the form `engine.nats.url` takes.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.0.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.0.pid()
    }

    /// SIGKILL, as a crash would.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.0.kill9().await
    }

    /// Starts the server again on the same port. JetStream data written before the
    /// kill is kept unless `wipe` is true (then the restart is a fresh server).
    pub async fn restart(&mut self, wipe: bool) -> anyhow::Result<()> {
        self.0.kill9().await?;
        if wipe {
            let _ = std::fs::remove_dir_all(&self.0.dir);
            std::fs::create_dir_all(&self.0.dir)?;
        }
        self.0.spawn().await
    }
}

/// No HTTP monitoring, no cluster, no gateways: nothing leaves loopback.
fn nats_command(port: u16, dir: &Path) -> Command {
    let mut c = Command::new(nats_binary());
    c.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js"])
        .arg("-sd")
        .arg(dir);
    c
}

/// `redis-server` from PATH, or Debian's location.
fn redis_binary() -> PathBuf {
    find_binary("redis-server", &["/usr/bin/redis-server"])
}

/// `nats-server` from PATH, or Debian's location (/usr/sbin is not on every PATH).
fn nats_binary() -> PathBuf {
    find_binary(
        "nats-server",
        &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
    )
}

fn find_binary(name: &str, fallbacks: &[&str]) -> PathBuf {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    fallbacks
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn redis_starts_dies_and_returns_on_the_same_port() {
        let mut r = RedisServer::start().await.unwrap();
        let addr = r.addr();
        assert!(TcpStream::connect(addr).is_ok());
        r.kill9().await.unwrap();
        assert!(TcpStream::connect(addr).is_err());
        r.restart().await.unwrap();
        assert!(TcpStream::connect(addr).is_ok());
    }

    #[tokio::test]
    async fn nats_starts_dies_and_returns_on_the_same_port() {
        let mut n = NatsServer::start().await.unwrap();
        let addr = n.addr();
        assert!(TcpStream::connect(addr).is_ok());
        n.kill9().await.unwrap();
        assert!(TcpStream::connect(addr).is_err());
        n.restart(true).await.unwrap();
        assert!(TcpStream::connect(addr).is_ok());
    }
}
