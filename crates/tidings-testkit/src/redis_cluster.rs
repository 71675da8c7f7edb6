//! A private Redis Cluster: `redis-server --cluster-enabled yes` children on free
//! loopback ports, joined with `redis-cli --cluster create`.
//!
//! [`RedisClusterSet::start`] makes three masters (what the engine suites run
//! on); [`RedisClusterSet::start_with_replicas`] gives each a replica, so
//! [`RedisClusterSet::kill9_master_of`] makes the cluster fail over.

use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::Command;
use tokio::time::{sleep, Instant};

use crate::brokers::RedisServer;
use crate::cluster::redis_command;

/// How long a master may be silent before its replica takes over.
const NODE_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long the cluster gets to agree on its slots.
const SETTLE: Duration = Duration::from_secs(30);

/// The nodes of one Redis Cluster.
pub struct RedisClusterSet {
    nodes: Vec<RedisServer>,
}

impl RedisClusterSet {
    /// Three masters, no replicas.
    ///
    /// # Errors
    ///
    /// Fails when a node does not start or the cluster does not form.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_nodes(3, 0).await
    }

    /// Three masters with a replica each.
    ///
    /// # Errors
    ///
    /// Fails when a node does not start or the cluster does not form.
    pub async fn start_with_replicas() -> anyhow::Result<Self> {
        Self::start_nodes(6, 1).await
    }

    async fn start_nodes(n: usize, replicas: usize) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..n {
            nodes.push(RedisServer::start_cluster_node(NODE_TIMEOUT).await?);
        }
        let mut cli = Command::new(redis_cli());
        cli.arg("--cluster").arg("create");
        for node in &nodes {
            cli.arg(format!("127.0.0.1:{}", node.port()));
        }
        cli.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let out = tokio::time::timeout(SETTLE, cli.output())
            .await
            .context("redis-cli --cluster create timed out")?
            .context("running redis-cli (apt-get install redis-tools)")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let set = Self { nodes };
        set.wait_ok(SETTLE).await?;
        set.wait_replicas_synced(replicas * 3, SETTLE).await?;
        Ok(set)
    }

    /// Waits until `n` nodes are replicas in sync with their master (a replica
    /// that never synced does not take over).
    async fn wait_replicas_synced(&self, n: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let mut synced = 0;
            for node in &self.nodes {
                let info = redis_command(node.addr(), &["INFO", "replication"])
                    .await
                    .unwrap_or_default();
                if info.contains("role:slave") && info.contains("master_link_status:up") {
                    synced += 1;
                }
            }
            if synced >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{synced} of {n} replicas in sync after {limit:?}");
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running node reports `cluster_state:ok`.
    ///
    /// # Errors
    ///
    /// Fails when they do not within `limit`.
    pub async fn wait_ok(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let mut ok = true;
            for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
                let info = redis_command(node.addr(), &["CLUSTER", "INFO"])
                    .await
                    .unwrap_or_default();
                ok &= info.contains("cluster_state:ok");
            }
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the cluster is not ok after {limit:?}");
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// The seed addresses as one `engine.redis.cluster_address` entry.
    pub fn cluster_address(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ports of the nodes that are masters now.
    ///
    /// # Errors
    ///
    /// Fails when no node answers.
    pub async fn masters(&self) -> anyhow::Result<Vec<u16>> {
        let mut masters = Vec::new();
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            let Ok(role) = redis_command(node.addr(), &["ROLE"]).await else {
                continue;
            };
            if role.contains("master") {
                masters.push(node.port());
            }
        }
        if masters.is_empty() {
            bail!("no cluster node answers");
        }
        Ok(masters)
    }

    /// SIGKILL for the master that owns `key`'s slot; returns its port. With
    /// replicas, the cluster promotes that master's replica after about the node
    /// timeout.
    ///
    /// # Errors
    ///
    /// Fails when the owner cannot be found or killed.
    pub async fn kill9_master_of(&mut self, key: &str) -> anyhow::Result<u16> {
        for node in &mut self.nodes {
            if node.pid().is_none() {
                continue;
            }
            // Only the master that owns the key's slot answers a key command;
            // the others (replicas included) answer MOVED, an error.
            if redis_command(node.addr(), &["EXISTS", key]).await.is_ok() {
                let port = node.port();
                node.kill9().await?;
                return Ok(port);
            }
        }
        bail!("no node owns the slot of {key:?}")
    }

    /// SIGKILL for every node.
    ///
    /// # Errors
    ///
    /// Fails when one cannot be killed.
    pub async fn kill9_all(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            n.kill9().await?;
        }
        Ok(())
    }

    /// Starts every killed node again on its port, empty but with its cluster
    /// state, and waits until the cluster is ok.
    ///
    /// # Errors
    ///
    /// Fails when one does not start or the cluster does not recover.
    pub async fn restart_killed(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            if n.pid().is_none() {
                n.restart().await?;
            }
        }
        self.wait_ok(SETTLE).await
    }

    /// `FLUSHALL` on every master.
    ///
    /// # Errors
    ///
    /// Fails when a master does not confirm.
    pub async fn flushall(&self) -> anyhow::Result<()> {
        for port in self.masters().await? {
            redis_command(
                std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                &["FLUSHALL"],
            )
            .await?;
        }
        Ok(())
    }
}

/// `redis-cli` from PATH, or Debian's location.
fn redis_cli() -> std::path::PathBuf {
    let fallback = std::path::PathBuf::from("/usr/bin/redis-cli");
    if fallback.exists() {
        fallback
    } else {
        "redis-cli".into()
    }
}
