//! `engine.*`: which broker and presence backend the node uses, and the settings of
//! the Redis and NATS engines (checked by [`super::Config::validate`] only when
//! their engine is picked).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{pem, ConfigError};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// `memory` (one node), `redis` or `nats`. Default `memory`.
    #[serde(rename = "type")]
    pub kind: EngineKind,
    /// Settings of the Redis engine (`engine.type = "redis"`).
    pub redis: RedisEngineConfig,
    /// Settings of the NATS engine (`engine.type = "nats"`).
    pub nats: NatsEngineConfig,
}

/// `engine.type`: the broker and presence backend. Any other name is refused while
/// the configuration loads, so code that picks an engine matches every kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum EngineKind {
    /// In memory: one node on its own.
    #[default]
    Memory,
    /// Nodes joined through one Redis server (`engine.redis`).
    Redis,
    /// Nodes joined through NATS, with JetStream history (`engine.nats`).
    Nats,
}

impl EngineKind {
    /// The name written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Memory => "memory",
            EngineKind::Redis => "redis",
            EngineKind::Nats => "nats",
        }
    }
}

impl TryFrom<String> for EngineKind {
    type Error = String;

    /// Reads the exact lowercase names, as before the kind was typed.
    fn try_from(name: String) -> Result<Self, String> {
        [EngineKind::Memory, EngineKind::Redis, EngineKind::Nats]
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| {
                format!("engine.type {name:?} is not supported (\"memory\", \"redis\" or \"nats\")")
            })
    }
}

/// Most shards `engine.redis.address` may list: each costs every node two
/// connections (commands and pub/sub) and a task.
pub const MAX_REDIS_SHARDS: usize = 64;

/// Most sentinels one `engine.redis.sentinel_address` entry may list (each is
/// asked in turn when a connection is opened).
pub const MAX_SENTINELS: usize = 16;

/// `engine.redis.*`, with Centrifugo v6's key names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisEngineConfig {
    /// The Redis servers: `redis://[user:password@]host:port[/db]`, `rediss://`
    /// for TLS. A list, as in Centrifugo: each address is one shard, and channels
    /// spread over the shards by a consistent hash of their name (the first shard
    /// also carries control messages, occupancy and direct publish). A single
    /// string is accepted too (whitespace separates several). At most
    /// [`MAX_REDIS_SHARDS`]. Default `["redis://127.0.0.1:6379"]`.
    #[serde(deserialize_with = "string_or_list")]
    pub address: Vec<String>,
    /// Prefix of every key, stream and pub/sub channel. Must not contain `{` or `}`
    /// (they would break the per-channel hash tags). Default `tidings`.
    pub prefix: String,
    /// Database number, when the address names none. Default `0`.
    pub db: i64,
    /// ACL user name, when the address names none. Default: none.
    pub user: String,
    /// Password, when the address names none. Default: none.
    pub password: String,
    /// Give up connecting after this long. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Give up on a command (publish, history, presence) after this long; the call
    /// fails instead of waiting for Redis to come back. Default `4s`.
    #[serde(with = "humantime_serde")]
    pub io_timeout: Duration,
    /// How long a presence entry lives unless the node refreshes it. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// TLS to Redis (to the masters, for a Sentinel setup).
    pub tls: RedisTlsConfig,
    /// Redis Sentinel, as in Centrifugo: each entry is one shard, given as the
    /// comma-separated `host:port` addresses of its sentinels; the shard's
    /// server is the master they name `sentinel_master_name`, followed through
    /// failovers. When set, `address` is ignored. Default: none.
    #[serde(deserialize_with = "string_or_list")]
    pub sentinel_address: Vec<String>,
    /// The master name the sentinels watch (`sentinel monitor <name> …`).
    /// Required with `sentinel_address`. Default: none.
    pub sentinel_master_name: String,
    /// ACL user for the sentinels. Default: none.
    pub sentinel_user: String,
    /// Password for the sentinels. Default: none.
    pub sentinel_password: String,
    /// Redis Cluster, as in Centrifugo: each entry is one cluster (a shard),
    /// given as comma-separated seed addresses (`host:port` or `redis://`
    /// URLs). Channels use sharded pub/sub (Redis 7). When set, `address` and
    /// `sentinel_address` are ignored. Default: none.
    #[serde(deserialize_with = "string_or_list")]
    pub cluster_address: Vec<String>,
}

impl Default for RedisEngineConfig {
    fn default() -> Self {
        Self {
            address: vec!["redis://127.0.0.1:6379".into()],
            prefix: "tidings".into(),
            db: 0,
            user: String::new(),
            password: String::new(),
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(4),
            presence_ttl: Duration::from_secs(60),
            tls: RedisTlsConfig::default(),
            sentinel_address: Vec::new(),
            sentinel_master_name: String::new(),
            sentinel_user: String::new(),
            sentinel_password: String::new(),
            cluster_address: Vec::new(),
        }
    }
}

impl RedisEngineConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.cluster_address.is_empty() {
            self.validate_cluster()?;
        } else if !self.sentinel_address.is_empty() {
            self.validate_sentinel()?;
        } else {
            self.validate_address()?;
        }
        self.validate_common()
    }

    /// `cluster_address`: one Redis Cluster per entry, seeds separated by commas.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if self.cluster_address.len() > MAX_REDIS_SHARDS {
            return bad(format!(
                "engine.redis.cluster_address: {} shards, at most {MAX_REDIS_SHARDS}",
                self.cluster_address.len()
            ));
        }
        for (i, shard) in self.cluster_address.iter().enumerate() {
            for addr in shard.split(',').map(str::trim) {
                let url = if addr.contains("://") {
                    addr.to_string()
                } else {
                    format!("redis://{addr}")
                };
                let ok = (url.starts_with("redis://") || url.starts_with("rediss://"))
                    && url
                        .rsplit_once(':')
                        .is_some_and(|(_, port)| port.trim_end_matches('/').parse::<u16>().is_ok());
                if !ok {
                    return bad(format!(
                        "engine.redis.cluster_address {addr:?} must be host:port or a redis:// URL with a port (seeds of one cluster are separated by commas)"
                    ));
                }
            }
            if self.cluster_address[..i].contains(shard) {
                return bad(format!(
                    "engine.redis.cluster_address {shard:?} is listed twice (each entry is one cluster)"
                ));
            }
        }
        Ok(())
    }

    /// `sentinel_address` and `sentinel_master_name`.
    fn validate_sentinel(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if self.sentinel_master_name.is_empty() {
            return bad(
                "engine.redis.sentinel_master_name must be set with sentinel_address".into(),
            );
        }
        if self.sentinel_address.len() > MAX_REDIS_SHARDS {
            return bad(format!(
                "engine.redis.sentinel_address: {} shards, at most {MAX_REDIS_SHARDS}",
                self.sentinel_address.len()
            ));
        }
        for (i, shard) in self.sentinel_address.iter().enumerate() {
            let addrs: Vec<&str> = shard.split(',').map(str::trim).collect();
            if addrs.len() > MAX_SENTINELS {
                return bad(format!(
                    "engine.redis.sentinel_address {shard:?}: at most {MAX_SENTINELS} sentinels per shard"
                ));
            }
            for addr in addrs {
                let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()
                });
                if !ok {
                    return bad(format!(
                        "engine.redis.sentinel_address {addr:?} must be host:port (sentinels of one shard are separated by commas)"
                    ));
                }
            }
            if self.sentinel_address[..i].contains(shard) {
                return bad(format!(
                    "engine.redis.sentinel_address {shard:?} is listed twice (each entry is one shard)"
                ));
            }
        }
        Ok(())
    }

    /// `address`: one server, or several shards.
    fn validate_address(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if self.address.is_empty() {
            return bad("engine.redis.address is empty".into());
        }
        if self.address.len() > MAX_REDIS_SHARDS {
            return bad(format!(
                "engine.redis.address: {} shards, at most {MAX_REDIS_SHARDS}",
                self.address.len()
            ));
        }
        for (i, one) in self.address.iter().enumerate() {
            if !(one.starts_with("redis://") || one.starts_with("rediss://")) {
                return bad(format!(
                    "engine.redis.address {one:?} must start with redis:// or rediss://"
                ));
            }
            #[cfg(feature = "redis")]
            if let Err(e) = redis::IntoConnectionInfo::into_connection_info(one.as_str()) {
                return bad(format!("engine.redis.address {one:?}: {e}"));
            }
            if self.address[..i].contains(one) {
                return bad(format!(
                    "engine.redis.address {one:?} is listed twice (each address is one shard)"
                ));
            }
        }
        Ok(())
    }

    /// The keys every topology shares.
    fn validate_common(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return bad("engine.redis.prefix must be non-empty and contain no { or }".into());
        }
        if self.connect_timeout.is_zero() || self.io_timeout.is_zero() {
            return bad("engine.redis.connect_timeout and io_timeout must be positive".into());
        }
        if self.presence_ttl < Duration::from_secs(1) {
            return bad("engine.redis.presence_ttl must be at least 1s".into());
        }
        if self.tls.cert_pem.is_empty() != self.tls.key_pem.is_empty() {
            return bad("engine.redis.tls: cert_pem and key_pem go together".into());
        }
        for (field, value) in [
            ("engine.redis.tls.cert_pem", &self.tls.cert_pem),
            ("engine.redis.tls.key_pem", &self.tls.key_pem),
            ("engine.redis.tls.server_ca_pem", &self.tls.server_ca_pem),
        ] {
            if !value.is_empty() {
                if let Err(e) = pem::pem_bytes(field, value) {
                    return bad(e.to_string());
                }
            }
        }
        Ok(())
    }
}

/// `engine.redis.tls.*`: the client side of TLS to Redis, with Centrifugo's key
/// names. Each PEM field holds the PEM text, the PEM text in base64, or a file
/// path (as `http_server.tls`); Centrifugo's `_file`/`_b64` variants and
/// `server_name` are not supported.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisTlsConfig {
    /// Connect with TLS (same as a `rediss://` address). Default `false`.
    pub enabled: bool,
    /// Client certificate (PEM) for mutual TLS, with `key_pem`. Default: none.
    pub cert_pem: String,
    /// Client private key (PEM). Default: none.
    pub key_pem: String,
    /// CA certificate(s) (PEM) the server's certificate must chain to, instead of
    /// the system's roots. Default: none.
    pub server_ca_pem: String,
    /// Accept any server certificate. For tests only. Default `false`.
    pub insecure_skip_verify: bool,
}

/// Reads a list of strings given as a list or as one string.
fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split_whitespace().map(str::to_string).collect(),
        OneOrMany::Many(v) => v,
    })
}

/// `engine.nats.*`: Centrifugo's NATS broker keys (`url`, `prefix`, `dial_timeout`,
/// `write_timeout`, `tls`) plus Tidings' own for JetStream history and KV presence.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsEngineConfig {
    /// NATS server URL; several comma-separated URLs of one cluster work too.
    /// Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// Prefix of every subject, stream and bucket, so unrelated setups can share one
    /// NATS. Letters, digits, `_` and `-` only. Default `tidings`.
    pub prefix: String,
    /// Give up on one connection attempt after this long (the client keeps
    /// retrying). Default `1s`.
    #[serde(with = "humantime_serde")]
    pub dial_timeout: Duration,
    /// Give up on a core NATS write (fan-out, control) after this long. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Give up on a JetStream or KV round trip (history publish and read, presence)
    /// after this long. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long a presence entry lives after its client's last refresh. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// TLS to the NATS server.
    pub tls: NatsTlsConfig,
}

impl Default for NatsEngineConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "tidings".into(),
            dial_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            presence_ttl: Duration::from_secs(60),
            tls: NatsTlsConfig::default(),
        }
    }
}

impl NatsEngineConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if self.url.trim().is_empty() {
            return bad("engine.nats.url must not be empty".into());
        }
        let prefix_ok = !self.prefix.is_empty()
            && self.prefix.len() <= 32
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !prefix_ok {
            return bad(format!(
                "engine.nats.prefix {:?}: 1 to 32 letters, digits, '_' or '-'",
                self.prefix
            ));
        }
        for (key, d) in [
            ("dial_timeout", self.dial_timeout),
            ("write_timeout", self.write_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if d.is_zero() {
                return bad(format!("engine.nats.{key} must be positive"));
            }
        }
        if self.presence_ttl < Duration::from_secs(1) {
            return bad("engine.nats.presence_ttl must be at least 1s".into());
        }
        if self.tls.enabled && (self.tls.cert_pem.is_empty() != self.tls.key_pem.is_empty()) {
            return bad("engine.nats.tls: cert_pem and key_pem go together".into());
        }
        Ok(())
    }
}

/// `engine.nats.tls`: TLS from Tidings to the NATS server. Each PEM field takes the
/// PEM text, the PEM text in base64, or a file path.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsTlsConfig {
    /// Connect with TLS. Default `false` (a `tls://` URL also turns it on).
    pub enabled: bool,
    /// Client certificate chain, for servers that verify clients. Default: none.
    pub cert_pem: String,
    /// The client certificate's private key. Default: none.
    pub key_pem: String,
    /// CA certificates the server's certificate must chain to. Default: the
    /// system's roots (webpki roots when there are none).
    pub server_ca_pem: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{tests::env, Config};

    #[test]
    fn redis_engine_settings_are_read_and_checked() {
        let cfg = Config::load(
            None,
            env(&[
                ("TIDINGS_ENGINE_TYPE", "redis"),
                ("TIDINGS_ENGINE_REDIS_ADDRESS", "redis://127.0.0.1:6390/2"),
                ("TIDINGS_ENGINE_REDIS_PRESENCE_TTL", "5s"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.engine.kind, EngineKind::Redis);
        assert_eq!(cfg.engine.redis.address, vec!["redis://127.0.0.1:6390/2"]);
        assert_eq!(cfg.engine.redis.presence_ttl, Duration::from_secs(5));
        assert_eq!(cfg.engine.redis.io_timeout, Duration::from_secs(4));
        let refused = |pairs: &[(&str, &str)]| {
            let mut all = vec![("TIDINGS_ENGINE_TYPE", "redis")];
            all.extend_from_slice(pairs);
            Config::load(None, env(&all)).unwrap_err().to_string()
        };
        assert!(refused(&[("TIDINGS_ENGINE_REDIS_ADDRESS", "http://x")]).contains("redis://"));
        let two = env(&[
            ("TIDINGS_ENGINE_TYPE", "redis"),
            ("TIDINGS_ENGINE_REDIS_ADDRESS", "redis://a:1 redis://b:2"),
        ]);
        assert_eq!(
            Config::load(None, two).unwrap().engine.redis.address,
            vec!["redis://a:1", "redis://b:2"]
        );
        assert!(
            refused(&[("TIDINGS_ENGINE_REDIS_ADDRESS", "redis://a:1 redis://a:1")])
                .contains("listed twice")
        );
        assert!(
            refused(&[("TIDINGS_ENGINE_REDIS_ADDRESS", "redis://h:notaport")])
                .contains("engine.redis.address")
        );
        assert!(refused(&[("TIDINGS_ENGINE_REDIS_PREFIX", "a{b")]).contains("prefix"));
        // Sentinel: one shard of two sentinels, with its master name.
        let sentinel = env(&[
            ("TIDINGS_ENGINE_TYPE", "redis"),
            ("TIDINGS_ENGINE_REDIS_SENTINEL_ADDRESS", "127.0.0.1:1,h:2"),
            ("TIDINGS_ENGINE_REDIS_SENTINEL_MASTER_NAME", "m"),
        ]);
        let loaded = Config::load(None, sentinel).unwrap();
        assert_eq!(
            loaded.engine.redis.sentinel_address,
            vec!["127.0.0.1:1,h:2"]
        );
        assert!(
            refused(&[("TIDINGS_ENGINE_REDIS_SENTINEL_ADDRESS", "127.0.0.1:1")])
                .contains("sentinel_master_name")
        );
        assert!(refused(&[
            ("TIDINGS_ENGINE_REDIS_SENTINEL_ADDRESS", "redis://h:1"),
            ("TIDINGS_ENGINE_REDIS_SENTINEL_MASTER_NAME", "m"),
        ])
        .contains("host:port"));
        assert!(refused(&[
            ("TIDINGS_ENGINE_REDIS_SENTINEL_ADDRESS", "h:1,h:2 h:1,h:2"),
            ("TIDINGS_ENGINE_REDIS_SENTINEL_MASTER_NAME", "m"),
        ])
        .contains("listed twice"));
        let cluster = env(&[
            ("TIDINGS_ENGINE_TYPE", "redis"),
            (
                "TIDINGS_ENGINE_REDIS_CLUSTER_ADDRESS",
                "127.0.0.1:7000,h:7001",
            ),
        ]);
        let loaded = Config::load(None, cluster).unwrap();
        assert_eq!(
            loaded.engine.redis.cluster_address,
            vec!["127.0.0.1:7000,h:7001"]
        );
        assert!(
            refused(&[("TIDINGS_ENGINE_REDIS_CLUSTER_ADDRESS", "127.0.0.1")]).contains("host:port")
        );
        assert!(refused(&[("TIDINGS_ENGINE_REDIS_PRESENCE_TTL", "10ms")]).contains("presence_ttl"));
        assert!(
            refused(&[("TIDINGS_ENGINE_REDIS_TLS_SERVER_CA_PEM", "/no/such/file")])
                .contains("server_ca_pem")
        );
        assert!(Config::load(None, env(&[("TIDINGS_ENGINE_TYPE", "redis")])).is_ok());
        for unknown in ["mongo", "Redis", ""] {
            let err = Config::load(None, env(&[("TIDINGS_ENGINE_TYPE", unknown)]));
            if unknown.is_empty() {
                // An empty variable is no override, as for every other key.
                assert_eq!(err.unwrap().engine.kind, EngineKind::Memory);
                continue;
            }
            let err = err.unwrap_err().to_string();
            assert!(
                err.contains(&format!("engine.type {unknown:?} is not supported")),
                "{err}"
            );
        }
    }

    #[test]
    fn the_nats_engine_is_accepted_and_its_keys_checked() {
        let mut cfg = Config::default();
        cfg.engine.kind = EngineKind::Nats;
        assert!(cfg.validate().is_ok());
        for prefix in ["", "a.b", "a*", "x y", &"p".repeat(33)] {
            cfg.engine.nats.prefix = prefix.to_string();
            assert!(cfg.validate().is_err(), "prefix {prefix:?}");
        }
        cfg.engine.nats.prefix = "app_1-x".into();
        cfg.engine.nats.presence_ttl = Duration::from_millis(500);
        assert!(cfg.validate().is_err());
        cfg.engine.nats.presence_ttl = Duration::from_secs(2);
        cfg.engine.nats.request_timeout = Duration::ZERO;
        assert!(cfg.validate().is_err());
        cfg.engine.nats.request_timeout = Duration::from_secs(1);
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn engine_type_reads_and_writes_its_lowercase_name() {
        for kind in [EngineKind::Memory, EngineKind::Redis, EngineKind::Nats] {
            let name = serde_json::to_value(kind).unwrap();
            assert_eq!(name, serde_json::json!(kind.as_str()));
            assert_eq!(serde_json::from_value::<EngineKind>(name).unwrap(), kind);
        }
        let dir = std::env::temp_dir().join(format!("tidings-engine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[engine]\ntype = \"nats\"\n").unwrap();
        let cfg = Config::load(Some(&file), env(&[])).unwrap();
        assert_eq!(cfg.engine.kind, EngineKind::Nats);
        std::fs::write(&file, "[engine]\ntype = \"zookeeper\"\n").unwrap();
        let err = Config::load(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(
            err.contains("engine.type \"zookeeper\" is not supported"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
