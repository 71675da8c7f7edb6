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
use std::path::PathBuf;
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

/// Kills a child by its handle (SIGKILL) and reaps it.
async fn kill_child(child: &mut Option<Child>) -> anyhow::Result<()> {
    if let Some(mut c) = child.take() {
        c.start_kill().ok();
        c.wait().await.context("reaping a killed broker")?;
    }
    Ok(())
}

/// A `redis-server` child on a free port, without persistence.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts `redis-server` on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        let mut server = Self {
            child: None,
            port: free_port()?,
            dir: temp_dir("redis")?,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(redis_binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawning redis-server (apt-get install redis-server)")?;
        wait_listening(self.addr(), &mut child, "redis-server").await?;
        self.child = Some(child);
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`, the form `engine.redis.address` takes.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Process id of the running server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL, as a crash would: the data goes with it.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        kill_child(&mut self.child).await
    }

    /// Starts the server again on the same port (after [`RedisServer::kill9`]).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        kill_child(&mut self.child).await?;
        self.spawn().await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            c.start_kill().ok();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `nats-server -js` child on a free port, with JetStream storage in a
/// temporary directory.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        let mut server = Self {
            child: None,
            port: free_port()?,
            dir: temp_dir("nats")?,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(nats_binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js"])
            .arg("-sd")
            .arg(&self.dir)
            // No HTTP monitoring, no cluster, no gateways: nothing leaves loopback.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawning nats-server (apt-get install nats-server)")?;
        wait_listening(self.addr(), &mut child, "nats-server").await?;
        self.child = Some(child);
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `nats://127.0.0.1:PORT`, the form `engine.nats.url` takes.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL, as a crash would.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        kill_child(&mut self.child).await
    }

    /// Starts the server again on the same port. JetStream data written before the
    /// kill is kept unless `wipe` is true (then the restart is a fresh server).
    pub async fn restart(&mut self, wipe: bool) -> anyhow::Result<()> {
        kill_child(&mut self.child).await?;
        if wipe {
            let _ = std::fs::remove_dir_all(&self.dir);
            std::fs::create_dir_all(&self.dir)?;
        }
        self.spawn().await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            c.start_kill().ok();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
