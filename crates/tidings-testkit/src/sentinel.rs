//! A private Redis Sentinel setup: one master, one replica and three sentinels,
//! all `redis-server` children on free loopback ports (sentinels run as
//! `redis-server --sentinel`, which is what Debian's `redis-sentinel` is).
//!
//! [`RedisSentinelSet::kill9_master`] kills whichever server is the master now, so
//! the sentinels promote the replica: what a failover test needs.

use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::time::{sleep, Instant};

use crate::brokers::RedisServer;
use crate::cluster::redis_command;

/// The master name the sentinels watch.
pub const SENTINEL_MASTER_NAME: &str = "tidings";

/// How long the sentinels wait for an answer before they call the master down.
const DOWN_AFTER: Duration = Duration::from_millis(1000);

/// How long the set gets to settle (replica in sync, sentinels aware of it and
/// of each other).
const SETTLE: Duration = Duration::from_secs(20);

/// One master, one replica, three sentinels.
pub struct RedisSentinelSet {
    /// The data servers: started as master (0) and replica (1); roles change
    /// with failovers.
    servers: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl RedisSentinelSet {
    /// Starts the servers and the sentinels, and waits until the sentinels know
    /// the replica and each other, so a failover can happen.
    ///
    /// # Errors
    ///
    /// Fails when a process does not start or the set does not settle within
    /// 20 s.
    pub async fn start() -> anyhow::Result<Self> {
        let master = RedisServer::start().await?;
        let replica = RedisServer::start_replica_of(master.port()).await?;
        let deadline = Instant::now() + SETTLE;
        loop {
            let info = redis_command(replica.addr(), &["INFO", "replication"]).await?;
            if info.contains("master_link_status:up") {
                break;
            }
            if Instant::now() > deadline {
                bail!("the replica did not sync with the master: {info}");
            }
            sleep(Duration::from_millis(50)).await;
        }
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(
                RedisServer::start_sentinel(SENTINEL_MASTER_NAME, master.port(), DOWN_AFTER)
                    .await?,
            );
        }
        let set = Self {
            servers: vec![master, replica],
            sentinels,
        };
        set.wait_settled(SETTLE).await?;
        Ok(set)
    }

    /// Waits until every sentinel knows one replica and the two other sentinels.
    async fn wait_settled(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let mut settled = true;
            for s in &self.sentinels {
                let replicas =
                    redis_command(s.addr(), &["SENTINEL", "replicas", SENTINEL_MASTER_NAME])
                        .await?;
                let others =
                    redis_command(s.addr(), &["SENTINEL", "sentinels", SENTINEL_MASTER_NAME])
                        .await?;
                settled &= replicas.starts_with("*1\r\n") && others.starts_with("*2\r\n");
            }
            if settled {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the sentinels did not find the replica and each other within {limit:?}");
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// The sentinels' addresses as one `engine.redis.sentinel_address` entry:
    /// `127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn sentinel_address(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The data server `i` (0: started as master, 1: started as replica).
    pub fn server(&self, i: usize) -> &RedisServer {
        &self.servers[i]
    }

    /// Which data server the first sentinel that answers names as the master.
    ///
    /// # Errors
    ///
    /// Fails when no sentinel answers with a known server.
    pub async fn master(&self) -> anyhow::Result<usize> {
        for s in &self.sentinels {
            let Ok(reply) = redis_command(
                s.addr(),
                &["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER_NAME],
            )
            .await
            else {
                continue;
            };
            // *2 $9 127.0.0.1 $<n> <port>: the port is the last line.
            let port: Option<u16> = reply.lines().last().and_then(|l| l.trim().parse().ok());
            if let Some(i) = self.servers.iter().position(|r| Some(r.port()) == port) {
                return Ok(i);
            }
        }
        bail!("no sentinel names a master")
    }

    /// SIGKILL for the server that is the master now; returns its index. The
    /// sentinels promote the other one after about a second.
    ///
    /// # Errors
    ///
    /// Fails when the master is unknown or cannot be killed.
    pub async fn kill9_master(&mut self) -> anyhow::Result<usize> {
        let i = self.master().await?;
        self.servers[i].kill9().await?;
        Ok(i)
    }

    /// Waits until the sentinels name another master than `old`; returns it.
    ///
    /// # Errors
    ///
    /// Fails when they do not within `limit`.
    pub async fn wait_for_failover(&self, old: usize, limit: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(i) = self.master().await {
                if i != old {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                bail!("no failover away from server {old} within {limit:?}");
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL for both data servers: the whole shard is down, no failover can
    /// help.
    ///
    /// # Errors
    ///
    /// Fails when a process cannot be killed.
    pub async fn kill9_servers(&mut self) -> anyhow::Result<()> {
        for s in &mut self.servers {
            s.kill9().await?;
        }
        Ok(())
    }

    /// Starts the killed data servers again on their ports, empty (the
    /// sentinels turn a returning old master into a replica).
    ///
    /// # Errors
    ///
    /// Fails when one does not start.
    pub async fn restart_servers(&mut self) -> anyhow::Result<()> {
        for s in &mut self.servers {
            if s.pid().is_none() {
                s.restart().await?;
            }
        }
        Ok(())
    }

    /// `FLUSHALL` on the master (the replica follows).
    ///
    /// # Errors
    ///
    /// Fails when the master does not confirm.
    pub async fn flushall(&self) -> anyhow::Result<()> {
        let i = self.master().await?;
        redis_command(self.servers[i].addr(), &["FLUSHALL"])
            .await
            .context("FLUSHALL on the master")
            .map(drop)
    }
}
