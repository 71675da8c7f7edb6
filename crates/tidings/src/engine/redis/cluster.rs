//! Redis Cluster: a shard given as seed addresses (`engine.redis.cluster_address`)
//! is a whole Redis Cluster. redis-rs's cluster client routes each command by the
//! slot of its key, follows `MOVED` and `ASK`, and refreshes the slot map after
//! topology changes and failovers.
//!
//! - Every key of a channel carries the hash tag `{C}`, so one script sees the
//!   channel's stream, meta hash, idempotency and presence keys in one slot.
//! - Publications travel by sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7):
//!   the channel's pub/sub name `P.client.{C}` is in the channel's slot, so the
//!   publish script may `SPUBLISH` it and only the shard that owns the slot
//!   carries it.
//! - After a failover the promoted replica may lack the last writes; the scripts
//!   compare the node id that wrote a channel's meta hash (`CLUSTER MYID`) with
//!   their own and start the channel on a new epoch when they differ, as behind
//!   Sentinel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{PushInfo, RedisResult};

use crate::config::RedisEngineConfig;

/// The seeds of one cluster and the settings its nodes are connected with.
pub(super) struct ClusterTarget {
    seeds: Vec<redis::ConnectionInfo>,
    cfg: RedisEngineConfig,
    /// `engine.redis.tls`'s private CA and client certificate, if any.
    certs: Option<redis::TlsCertificates>,
}

/// What the server-id argument of the scripts is in a cluster: the script asks
/// the node it runs on for its id (`CLUSTER MYID`).
pub(super) const CLUSTER_NODE_ID: &str = "@";

impl ClusterTarget {
    /// The cluster whose seed nodes are `addresses` (comma-separated `host:port`
    /// or `redis://` / `rediss://` URLs).
    ///
    /// # Errors
    /// A message when an address cannot be used.
    pub(super) fn new(cfg: &RedisEngineConfig, addresses: &str) -> Result<Self, String> {
        let mut seeds = Vec::new();
        for addr in addresses.split(',').map(str::trim) {
            let url = if addr.contains("://") {
                addr.to_string()
            } else if cfg.tls.enabled {
                format!("rediss://{addr}")
            } else {
                format!("redis://{addr}")
            };
            let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                .map_err(|e| format!("engine.redis.cluster_address {addr:?}: {e}"))?;
            seeds.push(info);
        }
        Ok(Self {
            seeds,
            cfg: cfg.clone(),
            certs: super::conn::tls_certificates(cfg)?,
        })
    }

    fn builder(&self, response_timeout: Duration) -> ClusterClientBuilder {
        let mut b = ClusterClientBuilder::new(self.seeds.clone())
            .connection_timeout(self.cfg.connect_timeout)
            .response_timeout(response_timeout)
            // A node that is down fails the call after a few quick retries; the
            // caller's own timeout bounds the whole call anyway.
            .retries(3)
            .min_retry_wait(20)
            .max_retry_wait(500);
        if !self.cfg.user.is_empty() {
            b = b.username(&self.cfg.user);
        }
        if !self.cfg.password.is_empty() {
            b = b.password(&self.cfg.password);
        }
        let tls = self.cfg.tls.enabled
            || self
                .seeds
                .iter()
                .any(|s| matches!(s.addr(), redis::ConnectionAddr::TcpTls { .. }));
        if tls && self.cfg.tls.insecure_skip_verify {
            b = b.tls(redis::TlsMode::Insecure);
        } else if tls {
            b = b.tls(redis::TlsMode::Secure);
        }
        if let (true, Some(certs)) = (tls, &self.certs) {
            b = b.certs(certs.clone());
        }
        b
    }

    /// A client for commands.
    pub(super) fn command_client(&self, response_timeout: Duration) -> RedisResult<ClusterClient> {
        self.builder(response_timeout).build()
    }

    /// A client for sharded pub/sub (RESP3): what arrives goes to `pushes`.
    pub(super) fn pubsub_client(
        &self,
        response_timeout: Duration,
        pushes: PushQueue,
    ) -> RedisResult<ClusterClient> {
        self.builder(response_timeout)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(pushes)
            .build()
    }
}

/// Most pub/sub messages waiting for the subscription task of a cluster shard.
/// Past it, messages are dropped and the task is told: it then makes the node
/// check its channels' positions (a reported gap instead of a silent one).
pub(super) const PUSH_QUEUE: usize = 65_536;

/// The bounded queue redis-rs hands a cluster's pushes (messages, subscription
/// confirmations, disconnections) to.
#[derive(Clone)]
pub(super) struct PushQueue {
    pub(super) tx: tokio::sync::mpsc::Sender<PushInfo>,
    /// Set when a push did not fit.
    pub(super) overflowed: Arc<AtomicBool>,
}

impl redis::aio::AsyncPushSender for PushQueue {
    fn send(&self, info: PushInfo) -> Result<(), redis::aio::SendError> {
        match self.tx.try_send(info) {
            Ok(()) => Ok(()),
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                self.overflowed.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(redis::aio::SendError),
        }
    }
}
