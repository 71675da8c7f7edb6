//! Redis Sentinel: a shard given as sentinel addresses and a master name is
//! whichever server the sentinels name as that master now. Every new connection
//! (commands or pub/sub) asks them again, so after a failover the next connection
//! goes to the promoted replica.
//!
//! What a failover may cost: replication is asynchronous, so the promoted replica
//! may lack the last publications the old master accepted (and delivered). The
//! publish and history scripts therefore record in each channel's meta hash the
//! run id of the server that wrote it (`r`); a server that finds another server's
//! run id there cannot vouch for the stream and starts the channel on a new
//! epoch. Clients that were on the old epoch are then told they cannot recover
//! (`recovered: false`) instead of missing those publications silently.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::ENGINE;
use crate::broker::EngineError;
use crate::config::RedisEngineConfig;

/// The sentinels of one shard and the master they watch.
pub(super) struct SentinelTarget {
    /// One client per sentinel address (with `sentinel_user`/`sentinel_password`).
    sentinels: Vec<(String, redis::Client)>,
    /// `engine.redis.sentinel_master_name`.
    master_name: String,
    /// The settings the master is connected with (db, user, password, TLS).
    cfg: RedisEngineConfig,
    connect_timeout: Duration,
    /// The sentinel that answered last: asked first next time.
    preferred: AtomicUsize,
}

/// The master the sentinels named, with a client for it.
pub(super) struct Master {
    /// `host:port`.
    pub(super) addr: String,
    pub(super) client: redis::Client,
}

impl SentinelTarget {
    /// The sentinels of `addresses` (`host:port`, comma-separated), watching
    /// `cfg.sentinel_master_name`.
    ///
    /// # Errors
    /// A message when an address is not `host:port`.
    pub(super) fn new(cfg: &RedisEngineConfig, addresses: &str) -> Result<Self, String> {
        let mut sentinels = Vec::new();
        for addr in addresses.split(',').map(str::trim) {
            let (host, port) = split_host_port(addr).ok_or_else(|| {
                format!("engine.redis.sentinel_address {addr:?} is not host:port")
            })?;
            let mut settings = redis::RedisConnectionInfo::default();
            if !cfg.sentinel_user.is_empty() {
                settings = settings.set_username(&cfg.sentinel_user);
            }
            if !cfg.sentinel_password.is_empty() {
                settings = settings.set_password(&cfg.sentinel_password);
            }
            let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
                host.to_string(),
                port,
            ))
            .map_err(|e| format!("engine.redis.sentinel_address {addr:?}: {e}"))?
            .set_redis_settings(settings);
            let client = redis::Client::open(info)
                .map_err(|e| format!("engine.redis.sentinel_address {addr:?}: {e}"))?;
            sentinels.push((addr.to_string(), client));
        }
        Ok(Self {
            sentinels,
            master_name: cfg.sentinel_master_name.clone(),
            cfg: cfg.clone(),
            connect_timeout: cfg.connect_timeout,
            preferred: AtomicUsize::new(0),
        })
    }

    /// Asks the sentinels, one after the other starting with the one that
    /// answered last, where the master is now.
    ///
    /// # Errors
    /// When no sentinel answers or none knows the master.
    pub(super) async fn master(&self) -> Result<Master, EngineError> {
        let n = self.sentinels.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut last_error = None;
        for k in 0..n {
            let i = (first + k) % n;
            let (addr, client) = &self.sentinels[i];
            match self.ask(client).await {
                Ok(Some((host, port))) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    let master_addr = format!("{host}:{port}");
                    let scheme = if self.cfg.tls.enabled {
                        "rediss"
                    } else {
                        "redis"
                    };
                    let client =
                        super::conn::client(&self.cfg, &format!("{scheme}://{master_addr}"))
                            .map_err(|e| EngineError::failed(ENGINE, "sentinel", e))?;
                    return Ok(Master {
                        addr: master_addr,
                        client,
                    });
                }
                Ok(None) => {
                    last_error = Some(format!(
                        "sentinel {addr} knows no master {:?}",
                        self.master_name
                    ));
                }
                Err(e) => last_error = Some(format!("sentinel {addr}: {e}")),
            }
        }
        Err(EngineError::failed(
            ENGINE,
            "sentinel",
            last_error.unwrap_or_else(|| "no sentinel".into()),
        ))
    }

    /// `SENTINEL get-master-addr-by-name` on one sentinel, bounded by the
    /// connect timeout.
    async fn ask(&self, client: &redis::Client) -> Result<Option<(String, u16)>, String> {
        let name = self.master_name.clone();
        let ask = async move {
            let mut c: MultiplexedConnection = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(name)
                .query_async::<Option<(String, u16)>>(&mut c)
                .await
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(self.connect_timeout * 2, ask)
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
    }
}

/// `host:port` (`[v6]:port` too) → host and port.
pub(crate) fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

/// The role and run id of the server `conn` is connected to: only a master may
/// take writes, and the run id tells one server from another (a promoted replica
/// has its own).
pub(super) async fn master_run_id(conn: &mut MultiplexedConnection) -> Result<String, EngineError> {
    let role: Vec<redis::Value> = redis::cmd("ROLE")
        .query_async(conn)
        .await
        .map_err(|e| EngineError::failed(ENGINE, "sentinel role", e))?;
    let is_master = matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master")
        || matches!(role.first(), Some(redis::Value::SimpleString(s)) if s == "master");
    if !is_master {
        return Err(EngineError::failed(
            ENGINE,
            "sentinel",
            "the server the sentinels named is not a master (failover under way)",
        ));
    }
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .map_err(|e| EngineError::failed(ENGINE, "sentinel info", e))?;
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_string())
        .ok_or_else(|| EngineError::failed(ENGINE, "sentinel info", "no run_id in INFO server"))
}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn host_port_pairs_are_split() {
        assert_eq!(
            split_host_port("127.0.0.1:26379"),
            Some(("127.0.0.1", 26379))
        );
        assert_eq!(split_host_port("[::1]:26379"), Some(("::1", 26379)));
        assert_eq!(
            split_host_port("sentinel-1:5000"),
            Some(("sentinel-1", 5000))
        );
        assert_eq!(split_host_port("nohost"), None);
        assert_eq!(split_host_port(":26379"), None);
        assert_eq!(split_host_port("h:port"), None);
    }
}
