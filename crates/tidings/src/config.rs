//! Typed configuration, with Centrifugo v6 key names.
//!
//! Loading order: a base (Centrifugo's defaults when a file is given, the development
//! profile when not), then the file (TOML, YAML or JSON by extension), then environment
//! overrides, then one validation pass. The library never reads the process
//! environment itself: the caller passes the variables in, which keeps tests hermetic.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use figment::providers::{Format, Json, Serialized, Toml, Yaml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Prefix of environment overrides: `TIDINGS_HTTP_API_KEY` sets `http_api.key`.
pub const ENV_PREFIX: &str = "TIDINGS_";

/// Everything a node is configured with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub http_server: HttpServerConfig,
    pub client: ClientConfig,
    pub channel: ChannelConfig,
    pub http_api: HttpApiConfig,
    pub engine: EngineConfig,
    pub websocket: WebsocketConfig,
    /// Bidirectional emulation over Server-Sent Events (`/connection/sse`).
    pub sse: StreamTransportConfig,
    /// Bidirectional emulation over HTTP streaming (`/connection/http_stream`).
    pub http_stream: StreamTransportConfig,
    /// Where emulation clients POST their commands.
    pub emulation: EmulationConfig,
    /// Tidings' long-polling transport (`/connection/long_poll`).
    pub long_poll: LongPollConfig,
    /// Unidirectional WebSocket (`/connection/uni_websocket`).
    pub uni_websocket: UniWebsocketConfig,
    /// Unidirectional Server-Sent Events (`/connection/uni_sse`).
    pub uni_sse: StreamTransportConfig,
    /// Unidirectional HTTP streaming (`/connection/uni_http_stream`).
    pub uni_http_stream: StreamTransportConfig,
    pub health: HealthConfig,
    pub prometheus: PrometheusConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub node: NodeConfig,
    /// Socket.IO front door (`/socket.io/`): Engine.IO v4 and Socket.IO v5 clients on
    /// the same channels. A Tidings section; Centrifugo has no such key.
    pub socketio: SocketIoConfig,
    /// Keys in the file that Tidings does not know (typos, or Centrifugo features it
    /// lacks). Not a configuration key: filled by [`Config::load`] for a warning.
    #[serde(skip)]
    pub unknown_keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    /// Name of this node in `/api/info`. Default: `tidings-<pid>`.
    pub name: String,
    /// How often the node tells the others it is alive, with its figures for
    /// `/api/info`; a node not heard from for three intervals (plus a second) is
    /// left out. A Tidings key. Default `3s`.
    #[serde(with = "humantime_serde")]
    pub info_publish_interval: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            info_publish_interval: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpServerConfig {
    /// Interface to bind. Default `""`: every interface, as Centrifugo does.
    pub address: String,
    /// Default `8000`. `0` lets the OS pick a free port.
    pub port: u16,
    /// TLS for the listener(s): https:// and wss://. Default: off.
    pub tls: TlsConfig,
    /// Use `tls` only on the public listener, not on the internal one. Default `false`.
    pub tls_external: bool,
    /// Port of a separate listener for the server API, `/health` and `/metrics`, which
    /// are then no longer served on `port`. A string, as in Centrifugo (a number is
    /// accepted too). Default `""`: no separate listener.
    #[serde(deserialize_with = "port_string")]
    pub internal_port: String,
    /// Interface of the internal listener. Default `""`: the same as `address`.
    pub internal_address: String,
    /// TLS of the internal listener, when it needs other settings than `tls`.
    /// Default: off (the internal listener then follows `tls` and `tls_external`).
    pub internal_tls: TlsConfig,
    /// Tidings' own key: a connection that has not sent its complete request headers
    /// this long after it opened (or after its previous response) is closed, which
    /// also bounds the TLS handshake. Guards against slowloris. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        Self {
            address: String::new(),
            port: 8000,
            tls: TlsConfig::default(),
            tls_external: false,
            internal_port: String::new(),
            internal_address: String::new(),
            internal_tls: TlsConfig::default(),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

impl HttpServerConfig {
    /// The internal listener's port, when it is separate from the public one.
    ///
    /// `None` when `internal_port` is unset, or names the same address and port as
    /// the public listener (then everything is served there, as in Centrifugo).
    pub fn separate_internal_port(&self) -> Option<u16> {
        let port: u16 = self.internal_port.trim().parse().ok()?;
        let same_address =
            self.internal_address.is_empty() || self.internal_address == self.address;
        (!(same_address && port == self.port && port != 0)).then_some(port)
    }

    /// The internal listener's interface: `internal_address`, else `address`.
    pub fn internal_address(&self) -> &str {
        if self.internal_address.is_empty() {
            &self.address
        } else {
            &self.internal_address
        }
    }

    /// The TLS settings of the internal listener, if it uses TLS.
    pub fn internal_tls(&self) -> Option<&TlsConfig> {
        if self.internal_tls.enabled {
            Some(&self.internal_tls)
        } else if self.tls.enabled && !self.tls_external {
            Some(&self.tls)
        } else {
            None
        }
    }
}

/// Centrifugo's unified TLS object, server side. Each PEM field takes the PEM text
/// itself, the PEM text in base64, or the path of a PEM file, tried in that order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// Serve TLS. Default `false`.
    pub enabled: bool,
    /// The certificate chain, leaf first. Default: none (required when enabled).
    pub cert_pem: String,
    /// The private key (PKCS#8, PKCS#1 or SEC1). Default: none (required when enabled).
    pub key_pem: String,
    /// CA certificates that client certificates must chain to; when set, every
    /// client must present one (mutual TLS). Default: none.
    pub client_ca_pem: String,
}

/// Reads a port given as a string (Centrifugo's type) or as a number.
fn port_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        Text(String),
        Number(u16),
    }
    Ok(match Port::deserialize(d)? {
        Port::Text(s) => s,
        Port::Number(n) => n.to_string(),
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientConfig {
    /// Origins allowed to open browser connections; `*` and `*.example.com`-style
    /// wildcards work. Same-origin requests and requests without `Origin` are allowed.
    /// Default: none.
    pub allowed_origins: Vec<String>,
    /// How connection tokens are verified (and subscription tokens, unless
    /// `subscription_token.enabled`).
    pub token: TokenConfig,
    /// Separate keys for subscription tokens; used only when `enabled`.
    pub subscription_token: SubscriptionTokenConfig,
    /// Connect without a token as an anonymous user (user id `""`). Default `false`.
    pub allow_anonymous_connect_without_token: bool,
    /// Reject tokens whose `sub` is empty. Default `false`.
    pub disallow_anonymous_connection_tokens: bool,
    /// Development only: no token check and every channel permission granted.
    /// Default `false`.
    pub insecure: bool,
    /// Development only: token claims are read but signatures are not checked, for
    /// connection and subscription tokens alike. Default `false`.
    pub insecure_skip_token_signature_verify: bool,
    /// Grace after a connection's expiry for the client's `refresh` to arrive; past
    /// it the connection is closed with 3005. Default `25s`.
    #[serde(with = "humantime_serde")]
    pub expired_close_delay: Duration,
    /// Grace after a subscription's expiry for the client's `sub_refresh`; past it
    /// the client is unsubscribed with 2501. Default `25s`.
    #[serde(with = "humantime_serde")]
    pub expired_sub_close_delay: Duration,
    /// Interval between server pings. Default `25s`.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long to wait for a pong after a ping. Default `8s`.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Bytes a connection may have queued for writing before it is disconnected
    /// with 3008 "slow". Default `1048576`.
    pub queue_max_size: usize,
    /// Most publications a history call returns. Default `300`.
    pub history_max_publication_limit: usize,
    /// Most publications a recovery returns; past it the answer is `recovered: false`.
    /// Default `300`.
    pub recovery_max_publication_limit: usize,
    /// Most channels one connection may subscribe to. Default `128`; `0` = no limit.
    pub channel_limit: usize,
    /// How long a connection may stay open without sending `connect`. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub stale_close_delay: Duration,
    /// Most connections one user (non-empty user id) may hold on this node; the next
    /// `connect` is closed with 3504. Default `0` (no limit).
    pub user_connection_limit: usize,
    /// Most client connections this node holds at once; past it new ones get HTTP 503.
    /// Default `0` (no limit).
    pub connection_limit: usize,
    /// Most new client connections this node accepts per second (bursts of as many);
    /// past it new ones get HTTP 503. Default `0` (no limit).
    pub connection_rate_limit: u32,
    /// The per-connection command budget (a Tidings key; Centrifugo has no free
    /// equivalent).
    pub command_rate_limit: CommandRateLimitConfig,
    /// How often the node re-adds the presence entries of its live clients, so that
    /// the entries of a node that died expire by the engine's presence TTL (keep it
    /// well under that TTL). Default `27s`.
    #[serde(with = "humantime_serde")]
    pub presence_update_interval: Duration,
    /// How often the node compares each of its channels' last delivered position
    /// with the broker's stream top; subscribers of a channel that fell behind are
    /// told to resubscribe and recover (unsubscribe push 2500). Default `40s`.
    #[serde(with = "humantime_serde")]
    pub channel_position_check_delay: Duration,
}

/// A token bucket per connection: every command takes a token, tokens come back at
/// `rate` per second up to `burst`. A command without a token is answered with 111;
/// a connection that keeps going is closed with 3013.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CommandRateLimitConfig {
    /// Apply the budget. Default `true`.
    pub enabled: bool,
    /// Tokens added per second. Default `100`.
    pub rate: u32,
    /// Size of the bucket: the longest burst a connection may send. Default `200`.
    pub burst: u32,
    /// Refused commands, counted since the bucket was last full, that close the
    /// connection with 3013. Default `50`; `0` never closes.
    pub disconnect_after: u32,
}

impl Default for CommandRateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: 100,
            burst: 200,
            disconnect_after: 50,
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            token: TokenConfig::default(),
            subscription_token: SubscriptionTokenConfig::default(),
            allow_anonymous_connect_without_token: false,
            disallow_anonymous_connection_tokens: false,
            insecure: false,
            insecure_skip_token_signature_verify: false,
            expired_close_delay: Duration::from_secs(25),
            expired_sub_close_delay: Duration::from_secs(25),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            queue_max_size: 1_048_576,
            history_max_publication_limit: 300,
            recovery_max_publication_limit: 300,
            channel_limit: 128,
            stale_close_delay: Duration::from_secs(10),
            user_connection_limit: 0,
            connection_limit: 0,
            connection_rate_limit: 0,
            command_rate_limit: CommandRateLimitConfig::default(),
            presence_update_interval: Duration::from_secs(27),
            channel_position_check_delay: Duration::from_secs(40),
        }
    }
}

/// Where token signing keys come from and which claims must match.
///
/// Each key enables only its own algorithms: the HMAC secret HS256/HS384/HS512, the
/// RSA key RS256/RS384/RS512, the ECDSA key ES256 or ES384 (after its curve), the
/// Ed25519 key EdDSA. With `jwks_public_endpoint` set, keys come from that endpoint
/// only and the static keys are not used. See docs/authentication.md.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenConfig {
    /// Secret for HS256/HS384/HS512 tokens. Default: none.
    pub hmac_secret_key: String,
    /// PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`) for RS256/RS384/RS512
    /// tokens. Default: none.
    pub rsa_public_key: String,
    /// PEM public key on P-256 (ES256) or P-384 (ES384). Default: none.
    pub ecdsa_public_key: String,
    /// PEM Ed25519 public key for EdDSA tokens. A Tidings addition: Centrifugo takes
    /// Ed25519 keys from JWKS only. Default: none.
    pub ed25519_public_key: String,
    /// URL of a JSON Web Key Set (RSA, EC P-256/P-384 and OKP Ed25519 keys), looked
    /// up by the token's `kid`. Default: none.
    pub jwks_public_endpoint: String,
    /// Expected `aud` claim, when set. Default: not checked.
    pub audience: String,
    /// Regular expression the `aud` claim must match, when set. Default: not checked.
    pub audience_regex: String,
    /// Expected `iss` claim, when set. Default: not checked.
    pub issuer: String,
    /// Regular expression the `iss` claim must match, when set. Default: not checked.
    pub issuer_regex: String,
    /// Claim holding the user id instead of `sub`. Default: `sub`.
    pub user_id_claim: String,
}

/// `client.subscription_token`: when `enabled`, subscription tokens are verified with
/// these settings and never with `client.token`'s.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscriptionTokenConfig {
    /// Use the settings below for subscription tokens. Default `false`: subscription
    /// tokens are verified like connection tokens.
    pub enabled: bool,
    #[serde(flatten)]
    pub token: TokenConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelConfig {
    /// Longest accepted channel name, in bytes. Default `255`.
    pub max_length: usize,
    /// Separates a namespace from the rest of a channel name. Default `:`.
    pub namespace_boundary: String,
    /// Starts the user list of a user-limited channel. Default `#`.
    pub user_boundary: String,
    /// Separates users in a user-limited channel. Default `,`.
    pub user_separator: String,
    /// Options of channels whose name has no namespace.
    pub without_namespace: ChannelOptions,
    /// Named namespaces and their options.
    pub namespaces: Vec<Namespace>,
    /// How long a channel's stream position (epoch, offset) outlives its last
    /// publication. Default `720h` (30 days).
    #[serde(with = "humantime_serde")]
    pub history_meta_ttl: Duration,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            max_length: 255,
            namespace_boundary: ":".into(),
            user_boundary: "#".into(),
            user_separator: ",".into(),
            without_namespace: ChannelOptions::default(),
            namespaces: Vec::new(),
            history_meta_ttl: Duration::from_secs(720 * 3600),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    #[serde(flatten)]
    pub options: ChannelOptions,
}

/// Per-namespace channel behaviour. Every option defaults to off / zero, as in Centrifugo.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelOptions {
    /// Keep presence (who is subscribed) for channels here.
    pub presence: bool,
    /// Publish join/leave messages; subscribers that ask for them (and may read
    /// presence) receive them.
    pub join_leave: bool,
    /// Send join/leave pushes to every subscriber, asked or not.
    pub force_push_join_leave: bool,
    /// Publications kept per channel; 0 keeps none.
    pub history_size: usize,
    /// How long publications are kept; needed with `history_size`.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Every subscription is positioned (stream position tracked).
    pub force_positioning: bool,
    /// Clients may ask for positioning.
    pub allow_positioning: bool,
    /// Every subscription is recoverable.
    pub force_recovery: bool,
    /// Clients may ask for recovery.
    pub allow_recovery: bool,
    /// Authenticated (non-anonymous) clients may subscribe without a subscription token.
    pub allow_subscribe_for_client: bool,
    /// Anonymous clients may subscribe without a subscription token.
    pub allow_subscribe_for_anonymous: bool,
    /// Subscribers may publish.
    pub allow_publish_for_subscriber: bool,
    /// Authenticated clients may publish, subscribed or not.
    pub allow_publish_for_client: bool,
    /// Anonymous clients may publish.
    pub allow_publish_for_anonymous: bool,
    /// Subscribers may query presence.
    pub allow_presence_for_subscriber: bool,
    /// Authenticated clients may query presence.
    pub allow_presence_for_client: bool,
    /// Anonymous clients may query presence.
    pub allow_presence_for_anonymous: bool,
    /// Subscribers may query history.
    pub allow_history_for_subscriber: bool,
    /// Authenticated clients may query history.
    pub allow_history_for_client: bool,
    /// Anonymous clients may query history.
    pub allow_history_for_anonymous: bool,
    /// Channels with `#` admit only the users listed after it.
    pub allow_user_limited_channels: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpApiConfig {
    /// Key required in `X-API-Key` or `Authorization: apikey`. Default: none.
    pub key: String,
    /// Serve the API without a key (development only). Default `false`.
    pub insecure: bool,
    /// Path prefix of the API. Default `/api`.
    pub handler_prefix: String,
    /// Largest request body; larger ones get HTTP 413. Default `2097152` (2 MiB).
    pub max_request_body_size: usize,
}

impl Default for HttpApiConfig {
    fn default() -> Self {
        Self {
            key: String::new(),
            insecure: false,
            handler_prefix: "/api".into(),
            max_request_body_size: 2 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// `memory` (one node), `redis` or `nats`. Default `memory`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Settings of the Redis engine (`engine.type = "redis"`).
    pub redis: RedisEngineConfig,
    /// Settings of the NATS engine (`engine.type = "nats"`).
    pub nats: NatsEngineConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            kind: "memory".into(),
            redis: RedisEngineConfig::default(),
            nats: NatsEngineConfig::default(),
        }
    }
}

/// `engine.redis.*`, with Centrifugo v6's key names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisEngineConfig {
    /// The Redis server: `redis://[user:password@]host:port[/db]`, `rediss://` for
    /// TLS. A list, as in Centrifugo, of exactly one address (sharding over several
    /// servers is not supported); a single string is accepted too. Default
    /// `["redis://127.0.0.1:6379"]`.
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
    /// TLS to Redis.
    pub tls: RedisTlsConfig,
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
        }
    }
}

impl RedisEngineConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        match self.address.as_slice() {
            [one] if one.starts_with("redis://") || one.starts_with("rediss://") => {
                #[cfg(feature = "redis")]
                if let Err(e) = redis::IntoConnectionInfo::into_connection_info(one.as_str()) {
                    return bad(format!("engine.redis.address {one:?}: {e}"));
                }
            }
            [one] => {
                return bad(format!(
                    "engine.redis.address {one:?} must start with redis:// or rediss://"
                ))
            }
            [] => return bad("engine.redis.address is empty".into()),
            _ => {
                return bad(
                    "engine.redis.address: only one Redis server is supported (no sharding)".into(),
                )
            }
        }
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
                if let Err(e) = crate::tls::pem_bytes(field, value) {
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
    fn validate(&self) -> Result<(), ConfigError> {
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebsocketConfig {
    /// Largest incoming frame; larger ones close the connection with 1009.
    /// Default `65536`.
    pub message_size_limit: usize,
    /// Path of the WebSocket endpoint. Default `/connection/websocket`.
    pub handler_prefix: String,
    /// Give up on a write that takes longer. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Bytes of each connection's read buffer: allocated once, zero-filled on the
    /// first read, and the most one read takes; a larger message grows it. Default
    /// `1024` (tungstenite's own default is 128 KiB, which an idle connection would
    /// hold for nothing; see docs/benchmarks.md for the measured cost).
    pub read_buffer_size: usize,
    /// Bytes written frames may gather before a write; every batch is flushed
    /// at once anyway. Default `4096`.
    pub write_buffer_size: usize,
}

/// Options shared by the streaming transports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamTransportConfig {
    /// Serve the endpoint. Default `false` (the development profile turns it on).
    pub enabled: bool,
    /// Path of the endpoint; empty means the transport's standard path.
    pub handler_prefix: String,
    /// Largest connect request accepted in a POST body or in `cf_connect`.
    /// Default `65536`.
    pub max_request_body_size: usize,
}

impl Default for StreamTransportConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            handler_prefix: String::new(),
            max_request_body_size: 65_536,
        }
    }
}

impl StreamTransportConfig {
    /// The configured path, or `default` when none is set.
    pub fn path<'a>(&'a self, default: &'a str) -> &'a str {
        if self.handler_prefix.is_empty() {
            default
        } else {
            &self.handler_prefix
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UniWebsocketConfig {
    /// Serve the endpoint. Default `false` (the development profile turns it on).
    pub enabled: bool,
    /// Path of the endpoint. Default `/connection/uni_websocket`.
    pub handler_prefix: String,
    /// Largest incoming message (the connect request); larger ones close with 1009.
    /// Default `65536`.
    pub message_size_limit: usize,
}

impl Default for UniWebsocketConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            handler_prefix: "/connection/uni_websocket".into(),
            message_size_limit: 65_536,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EmulationConfig {
    /// Path that takes emulated commands. Default `/emulation`.
    pub handler_prefix: String,
    /// Largest command batch accepted. Default `65536`.
    pub max_request_body_size: usize,
}

impl Default for EmulationConfig {
    fn default() -> Self {
        Self {
            handler_prefix: "/emulation".into(),
            max_request_body_size: 65_536,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LongPollConfig {
    /// Serve the endpoint. Default `false` (the development profile turns it on).
    pub enabled: bool,
    /// Path of the endpoint. Default `/connection/long_poll`.
    pub handler_prefix: String,
    /// How long a poll waits for something to deliver. Default `25s`.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// A session with no poll in progress for this long is closed (presence
    /// removed, leave sent). Default `30s`.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Most bytes one poll response carries. Default `1048576`.
    pub max_response_size: usize,
}

impl Default for LongPollConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            handler_prefix: "/connection/long_poll".into(),
            hold: Duration::from_secs(25),
            session_timeout: Duration::from_secs(30),
            max_response_size: 1_048_576,
        }
    }
}

impl Default for WebsocketConfig {
    fn default() -> Self {
        Self {
            message_size_limit: 65_536,
            handler_prefix: "/connection/websocket".into(),
            write_timeout: Duration::from_secs(1),
            read_buffer_size: 1024,
            write_buffer_size: 4096,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthConfig {
    /// Serve `/health`. Default `true` (Centrifugo defaults to `false`).
    pub enabled: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PrometheusConfig {
    /// Serve `/metrics`. Default `true` (Centrifugo defaults to `false`).
    pub enabled: bool,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ShutdownConfig {
    /// How long to wait for connections to drain on shutdown. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `trace`, `debug`, `info`, `warn`, `error` or `none`. Default `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// The Socket.IO front door. See docs/socketio.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SocketIoConfig {
    /// Serve Socket.IO clients. Default `false` (the development profile turns it on).
    pub enabled: bool,
    /// Path of the endpoint, as socket.io-client's `path` option names it. Default
    /// `/socket.io/`.
    pub path: String,
    /// How often the server pings (Engine.IO `pingInterval`). Default `25s`.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long the server waits for the pong (Engine.IO `pingTimeout`). Default `20s`.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// Largest HTTP request body or WebSocket message a client may send, in bytes
    /// (Engine.IO `maxPayload`). Default `1000000`.
    pub max_payload: usize,
    /// Most binary attachments one Socket.IO packet may announce. Default `10`.
    pub max_attachments: usize,
    /// Socket.IO namespace (`/`, `/chat`) to Tidings channel namespace (`""` for
    /// channels without namespace). Empty (the default): `/` maps to `""` and `/name`
    /// to the Tidings namespace `name` when it is configured.
    pub namespaces: BTreeMap<String, String>,
    /// Channels every socket joins when it connects to the Socket.IO namespace that
    /// maps onto the channel's Tidings namespace (server-side subscriptions).
    pub subscriptions: Vec<String>,
    /// Offer socket.io-client's `connectionStateRecovery`: a session id (`pid`) in the
    /// CONNECT reply and a position as the last argument of every room event.
    /// Default `false`, as in the reference server (it adds that argument).
    pub connection_state_recovery: bool,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            path: "/socket.io/".into(),
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            max_payload: 1_000_000,
            max_attachments: 10,
            namespaces: BTreeMap::new(),
            subscriptions: Vec::new(),
            connection_state_recovery: false,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named on the command line does not exist or cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file's extension names no supported format.
    #[error("config file {0}: unknown format (use .json, .toml, .yaml or .yml)")]
    Format(String),
    /// A value has the wrong type or an unknown variant.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// Values are individually fine but do not make sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// The profile used when no config file is given: local, open, with history and
    /// presence, so that the demo and the SDKs work with zero setup.
    pub fn development() -> Self {
        let mut cfg = Config::default();
        cfg.http_server.address = "127.0.0.1".into();
        cfg.client.allow_anonymous_connect_without_token = true;
        cfg.client.allowed_origins = vec!["*".into()];
        for t in [
            &mut cfg.sse,
            &mut cfg.http_stream,
            &mut cfg.uni_sse,
            &mut cfg.uni_http_stream,
        ] {
            t.enabled = true;
        }
        cfg.uni_websocket.enabled = true;
        cfg.long_poll.enabled = true;
        cfg.socketio.enabled = true;
        cfg.channel.without_namespace = ChannelOptions {
            presence: true,
            join_leave: true,
            force_push_join_leave: true,
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            force_recovery: true,
            allow_recovery: true,
            allow_positioning: true,
            allow_subscribe_for_client: true,
            allow_subscribe_for_anonymous: true,
            allow_publish_for_subscriber: true,
            allow_publish_for_client: true,
            allow_publish_for_anonymous: true,
            allow_presence_for_subscriber: true,
            allow_presence_for_anonymous: true,
            allow_history_for_subscriber: true,
            allow_history_for_anonymous: true,
            ..ChannelOptions::default()
        };
        // Ephemeral signals such as typing indicators (`live:<room>`): no history,
        // no presence, so they are never stored or replayed.
        cfg.channel.namespaces = vec![Namespace {
            name: "live".into(),
            options: ChannelOptions {
                allow_subscribe_for_client: true,
                allow_subscribe_for_anonymous: true,
                allow_publish_for_subscriber: true,
                allow_publish_for_client: true,
                allow_publish_for_anonymous: true,
                ..ChannelOptions::default()
            },
        }];
        cfg
    }

    /// Loads the configuration.
    ///
    /// `file` is the `--config` path, if any; `env` the process environment (only
    /// variables starting with [`ENV_PREFIX`] are looked at).
    ///
    /// # Errors
    /// [`ConfigError`] when the file is unreadable or the result is invalid.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let base = if file.is_some() {
            Config::default()
        } else {
            Config::development()
        };
        let mut figment = Figment::from(Serialized::defaults(&base));
        if let Some(path) = file {
            let shown = path.display().to_string();
            // figment skips missing files silently; a typo in --config must not.
            std::fs::metadata(path).map_err(|source| ConfigError::Read {
                path: shown.clone(),
                source,
            })?;
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or_default()
                .to_ascii_lowercase();
            figment = match ext.as_str() {
                "json" => figment.merge(Json::file(path)),
                "toml" => figment.merge(Toml::file(path)),
                "yaml" | "yml" => figment.merge(Yaml::file(path)),
                _ => return Err(ConfigError::Format(shown)),
            };
        }
        let overrides = env_overrides(&base, env)?;
        figment = figment.merge(Serialized::defaults(overrides));
        let mut cfg: Config = figment
            .extract()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        let loaded: serde_json::Value = figment.extract().unwrap_or_default();
        let known = serde_json::to_value(&cfg).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut unknown = Vec::new();
        unknown_keys(&loaded, &known, "", &mut unknown);
        cfg.unknown_keys = unknown;
        Ok(cfg)
    }

    /// Checks values that only make sense together.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        let http = &self.http_server;
        if !http.internal_port.trim().is_empty()
            && http.internal_port.trim().parse::<u16>().is_err()
        {
            return bad(format!(
                "http_server.internal_port {:?} is not a port number",
                http.internal_port
            ));
        }
        for (key, tls) in [
            ("http_server.tls", &http.tls),
            ("http_server.internal_tls", &http.internal_tls),
        ] {
            if tls.enabled && (tls.cert_pem.is_empty() || tls.key_pem.is_empty()) {
                return bad(format!("{key}: cert_pem and key_pem are required"));
            }
        }
        if http.header_read_timeout.is_zero() {
            return bad("http_server.header_read_timeout must be positive".into());
        }
        for (key, interval) in [
            (
                "node.info_publish_interval",
                self.node.info_publish_interval,
            ),
            (
                "client.presence_update_interval",
                self.client.presence_update_interval,
            ),
            (
                "client.channel_position_check_delay",
                self.client.channel_position_check_delay,
            ),
        ] {
            if interval < Duration::from_millis(100) {
                return bad(format!("{key} must be at least 100ms"));
            }
        }
        match self.engine.kind.as_str() {
            "memory" => {}
            "nats" => self.engine.nats.validate()?,
            "redis" => self.engine.redis.validate()?,
            other => {
                return bad(format!(
                    "engine.type {other:?} is not supported (\"memory\", \"redis\" or \"nats\")"
                ))
            }
        }
        if self.channel.namespace_boundary.is_empty() {
            return bad("channel.namespace_boundary must not be empty".into());
        }
        if self.client.queue_max_size < 1024 {
            return bad("client.queue_max_size must be at least 1024 bytes".into());
        }
        if self.websocket.message_size_limit < 1024 {
            return bad("websocket.message_size_limit must be at least 1024 bytes".into());
        }
        if self.client.ping_interval.is_zero() || self.client.pong_timeout.is_zero() {
            return bad("client.ping_interval and client.pong_timeout must be positive".into());
        }
        if self.long_poll.hold.is_zero() || self.long_poll.hold >= self.long_poll.session_timeout {
            return bad(
                "long_poll.hold must be positive and shorter than long_poll.session_timeout".into(),
            );
        }
        if self.client.pong_timeout >= self.client.ping_interval {
            return bad("client.pong_timeout must be shorter than client.ping_interval".into());
        }
        let sio = &self.socketio;
        if sio.ping_interval.is_zero() || sio.ping_timeout.is_zero() {
            return bad("socketio.ping_interval and socketio.ping_timeout must be positive".into());
        }
        if sio.max_payload < 1024 || !sio.path.starts_with('/') {
            return bad(
                "socketio.max_payload must be at least 1024 and socketio.path must start with /"
                    .into(),
            );
        }
        if let Some(bad_nsp) = sio.namespaces.keys().find(|n| !n.starts_with('/')) {
            return bad(format!(
                "socketio.namespaces: {bad_nsp:?} must start with / (a Socket.IO namespace)"
            ));
        }
        let budget = &self.client.command_rate_limit;
        if budget.enabled && (budget.rate == 0 || budget.burst == 0) {
            return bad(
                "client.command_rate_limit.rate and .burst must be positive while it is enabled"
                    .into(),
            );
        }
        crate::auth::Auth::new(&self.client).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut seen = HashSet::new();
        let all = std::iter::once((
            "channel.without_namespace".to_string(),
            &self.channel.without_namespace,
        ))
        .chain(
            self.channel
                .namespaces
                .iter()
                .map(|ns| (format!("channel.namespaces[{}]", ns.name), &ns.options)),
        );
        for ns in &self.channel.namespaces {
            let valid_name = ns.name.len() >= 2
                && ns
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid_name {
                return bad(format!(
                    "namespace name {:?} must be 2+ characters of [-a-zA-Z0-9_.]",
                    ns.name
                ));
            }
            if !seen.insert(ns.name.as_str()) {
                return bad(format!("namespace {:?} is defined twice", ns.name));
            }
        }
        for (key, opts) in all {
            if opts.history_size > 0 && opts.history_ttl.is_zero() {
                return bad(format!("{key}: history_size needs history_ttl"));
            }
            if (opts.force_recovery || opts.allow_recovery) && opts.history_size == 0 {
                return bad(format!(
                    "{key}: recovery needs history_size and history_ttl"
                ));
            }
        }
        Ok(())
    }

    /// Settings that are valid but unsafe outside development, one sentence each.
    /// `tidings check-config` refuses a configuration that has any; `serve` logs them.
    pub fn insecure_settings(&self) -> Vec<String> {
        let mut found = Vec::new();
        if self.client.insecure {
            found.push(
                "client.insecure is on: connections need no token and every channel permission is granted"
                    .to_string(),
            );
        }
        if self.client.insecure_skip_token_signature_verify {
            found.push(
                "client.insecure_skip_token_signature_verify is on: token signatures are not checked, anyone can forge a token"
                    .to_string(),
            );
        }
        let mut sections = vec![("client.token", &self.client.token)];
        if self.client.subscription_token.enabled {
            sections.push((
                "client.subscription_token",
                &self.client.subscription_token.token,
            ));
        }
        for (name, token) in sections {
            let len = token.hmac_secret_key.len();
            if len > 0 && len < MIN_HMAC_SECRET_LEN {
                found.push(format!(
                    "{name}.hmac_secret_key is {len} bytes long; use at least {MIN_HMAC_SECRET_LEN} random bytes"
                ));
            }
            let url = token.jwks_public_endpoint.as_str();
            if let Some(rest) = url.strip_prefix("http://") {
                let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
                let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
                let host = match host.strip_prefix('[') {
                    Some(v6) => v6.split(']').next().unwrap_or_default(),
                    None => host.split(':').next().unwrap_or_default(),
                };
                if !is_loopback(host) {
                    found.push(format!(
                        "{name}.jwks_public_endpoint fetches keys over plain http from {host}; anyone on the path can swap them (use https)"
                    ));
                }
            }
        }
        // The API lives on the internal listener when there is one.
        let (api_address, key) = match self.http_server.separate_internal_port() {
            Some(_) => (
                self.http_server.internal_address(),
                "http_server.internal_address",
            ),
            None => (self.http_server.address.as_str(), "http_server.address"),
        };
        if self.http_api.insecure && !is_loopback(api_address) {
            let shown = if api_address.is_empty() {
                "every interface".to_string()
            } else {
                api_address.to_string()
            };
            found.push(format!(
                "http_api.insecure serves the server API without a key on {shown}; bind {key} to a loopback address or set http_api.key"
            ));
        }
        found
    }

    /// The options of a namespace, or `None` when it is not configured.
    pub fn namespace(&self, name: &str) -> Option<&ChannelOptions> {
        if name.is_empty() {
            return Some(&self.channel.without_namespace);
        }
        self.channel
            .namespaces
            .iter()
            .find(|ns| ns.name == name)
            .map(|ns| &ns.options)
    }
}

/// Shortest HMAC secret `check-config` accepts: 32 bytes, the output size of HS256.
pub const MIN_HMAC_SECRET_LEN: usize = 32;

/// Whether a listen address or host name only reaches this machine. The empty
/// address means every interface, which is not loopback.
pub fn is_loopback(address: &str) -> bool {
    let trimmed = address.trim_start_matches('[').trim_end_matches(']');
    if trimmed.eq_ignore_ascii_case("localhost") {
        return true;
    }
    trimmed
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Turns `TIDINGS_*` variables into a nested map of overrides.
///
/// figment's own `Env` provider splits names at every `_`, which cannot tell
/// `http_api.key` from `http.api.key`. Instead we list every key path the config has
/// (from the serialised base), derive each one's variable name, and look those up.
/// Values are typed after the base value: booleans, numbers, strings; arrays take a
/// JSON array or space-separated words; objects and arrays of objects take JSON.
fn env_overrides(
    base: &Config,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<serde_json::Value, ConfigError> {
    let vars: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, v)| k.starts_with(ENV_PREFIX) && !v.is_empty())
        .collect();
    let mut out = serde_json::Map::new();
    if vars.is_empty() {
        return Ok(serde_json::Value::Object(out));
    }
    let tree = serde_json::to_value(base).map_err(|e| ConfigError::Parse(e.to_string()))?;
    let mut leaves = Vec::new();
    collect_leaves(&tree, &mut Vec::new(), &mut leaves);
    for (path, default) in leaves {
        let name = format!("{ENV_PREFIX}{}", path.join("_").to_ascii_uppercase());
        let Some(raw) = vars.get(&name) else { continue };
        let value = typed_env_value(&name, raw, default)?;
        insert_path(&mut out, &path, value);
    }
    Ok(serde_json::Value::Object(out))
}

/// Lists the keys of `loaded` that `known` lacks. Namespaces are checked against the
/// channel options.
fn unknown_keys(
    loaded: &serde_json::Value,
    known: &serde_json::Value,
    prefix: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (loaded, known) {
        (Value::Object(l), Value::Object(k)) => {
            for (key, value) in l {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match k.get(key) {
                    Some(known_value) => unknown_keys(value, known_value, &path, out),
                    None => out.push(path),
                }
            }
        }
        (Value::Array(l), Value::Array(k)) => {
            // Arrays of objects (namespaces): every item is checked against the first
            // known item, or against a namespace template when the list is empty.
            let template = k
                .first()
                .cloned()
                .unwrap_or_else(|| serde_json::to_value(Namespace::default()).unwrap_or_default());
            if template.is_object() {
                for (i, item) in l.iter().enumerate() {
                    unknown_keys(item, &template, &format!("{prefix}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn collect_leaves<'a>(
    value: &'a serde_json::Value,
    path: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, &'a serde_json::Value)>,
) {
    match value {
        serde_json::Value::Object(map) if !path.is_empty() || !map.is_empty() => {
            for (k, v) in map {
                path.push(k.clone());
                // The namespace options are an object whose keys are config keys too,
                // but the namespace list itself is set as one JSON value.
                if v.is_object() {
                    out.push((path.clone(), v));
                }
                collect_leaves(v, path, out);
                path.pop();
            }
        }
        serde_json::Value::Object(_) => {}
        _ => out.push((path.clone(), value)),
    }
}

fn typed_env_value(
    name: &str,
    raw: &str,
    default: &serde_json::Value,
) -> Result<serde_json::Value, ConfigError> {
    use serde_json::Value;
    let bad = |what: &str| ConfigError::Parse(format!("{name}={raw:?}: expected {what}"));
    Ok(match default {
        Value::Bool(_) => match raw.to_ascii_lowercase().as_str() {
            "1" | "t" | "true" | "yes" | "on" => Value::Bool(true),
            "0" | "f" | "false" | "no" | "off" => Value::Bool(false),
            _ => return Err(bad("a boolean")),
        },
        Value::Number(_) => Value::Number(raw.trim().parse().map_err(|_| bad("a number"))?),
        Value::String(_) => Value::String(raw.to_string()),
        Value::Array(_) if raw.trim_start().starts_with('[') => {
            serde_json::from_str(raw).map_err(|_| bad("a JSON array"))?
        }
        Value::Array(_) => Value::Array(
            raw.split_whitespace()
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        Value::Object(_) | Value::Null => {
            serde_json::from_str(raw).map_err(|_| bad("a JSON value"))?
        }
    })
}

fn insert_path(
    root: &mut serde_json::Map<String, serde_json::Value>,
    path: &[String],
    value: serde_json::Value,
) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = root;
    for key in parents {
        let entry = node
            .entry(key.clone())
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        if !entry.is_object() {
            *entry = serde_json::Value::Object(Default::default());
        }
        let serde_json::Value::Object(map) = entry else {
            return;
        };
        node = map;
    }
    node.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn socketio_section_loads_without_unknown_keys_and_is_validated() {
        let dir = std::env::temp_dir().join(format!("tidings-sio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(
            &good,
            r#"{"socketio": {"enabled": true, "namespaces": {"/chat": "chat"}, "subscriptions": ["news"], "ping_interval": "5s"}}"#,
        )
        .unwrap();
        let cfg = Config::load(Some(&good), env(&[])).unwrap();
        assert!(cfg.unknown_keys.is_empty(), "{:?}", cfg.unknown_keys);
        assert_eq!(
            cfg.socketio.namespaces.get("/chat").map(String::as_str),
            Some("chat")
        );
        assert_eq!(cfg.socketio.ping_interval, Duration::from_secs(5));
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"socketio": {"namespaces": {"chat": "chat"}}}"#).unwrap();
        assert!(Config::load(Some(&bad), env(&[])).is_err());
        std::fs::write(&bad, r#"{"socketio": {"max_payload": 10}}"#).unwrap();
        assert!(Config::load(Some(&bad), env(&[])).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

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
        assert_eq!(cfg.engine.kind, "redis");
        assert_eq!(cfg.engine.redis.address, vec!["redis://127.0.0.1:6390/2"]);
        assert_eq!(cfg.engine.redis.presence_ttl, Duration::from_secs(5));
        assert_eq!(cfg.engine.redis.io_timeout, Duration::from_secs(4));
        let refused = |pairs: &[(&str, &str)]| {
            let mut all = vec![("TIDINGS_ENGINE_TYPE", "redis")];
            all.extend_from_slice(pairs);
            Config::load(None, env(&all)).unwrap_err().to_string()
        };
        assert!(refused(&[("TIDINGS_ENGINE_REDIS_ADDRESS", "http://x")]).contains("redis://"));
        assert!(
            refused(&[("TIDINGS_ENGINE_REDIS_ADDRESS", "redis://a:1 redis://b:2")])
                .contains("only one")
        );
        assert!(
            refused(&[("TIDINGS_ENGINE_REDIS_ADDRESS", "redis://h:notaport")])
                .contains("engine.redis.address")
        );
        assert!(refused(&[("TIDINGS_ENGINE_REDIS_PREFIX", "a{b")]).contains("prefix"));
        assert!(refused(&[("TIDINGS_ENGINE_REDIS_PRESENCE_TTL", "10ms")]).contains("presence_ttl"));
        assert!(
            refused(&[("TIDINGS_ENGINE_REDIS_TLS_SERVER_CA_PEM", "/no/such/file")])
                .contains("server_ca_pem")
        );
        assert!(Config::load(None, env(&[("TIDINGS_ENGINE_TYPE", "redis")])).is_ok());
        assert!(Config::load(None, env(&[("TIDINGS_ENGINE_TYPE", "mongo")]))
            .unwrap_err()
            .to_string()
            .contains("mongo"));
    }

    #[test]
    fn development_profile_without_file() {
        let cfg = Config::load(None, env(&[])).unwrap();
        assert!(cfg.client.allow_anonymous_connect_without_token);
        assert_eq!(cfg.channel.without_namespace.history_size, 100);
        assert_eq!(cfg.http_server.address, "127.0.0.1");
    }

    #[test]
    fn env_overrides_keys_with_underscores() {
        let cfg = Config::load(
            None,
            env(&[
                ("TIDINGS_HTTP_API_KEY", "k1"),
                ("TIDINGS_CLIENT_QUEUE_MAX_SIZE", "65536"),
                ("TIDINGS_CLIENT_PING_INTERVAL", "2s"),
                ("TIDINGS_CLIENT_PONG_TIMEOUT", "1s"),
                (
                    "TIDINGS_CLIENT_ALLOWED_ORIGINS",
                    "https://a.test https://b.test",
                ),
                ("TIDINGS_CHANNEL_WITHOUT_NAMESPACE_PRESENCE", "false"),
                ("OTHER_VAR", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.http_api.key, "k1");
        assert_eq!(cfg.client.queue_max_size, 65536);
        assert_eq!(cfg.client.ping_interval, Duration::from_secs(2));
        assert_eq!(cfg.client.allowed_origins.len(), 2);
        assert!(!cfg.channel.without_namespace.presence);
    }

    #[test]
    fn bad_env_value_is_a_clear_error() {
        let err = Config::load(None, env(&[("TIDINGS_CLIENT_INSECURE", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("TIDINGS_CLIENT_INSECURE"), "{err}");
    }

    #[test]
    fn file_formats_load_with_centrifugo_names() {
        let dir = std::env::temp_dir().join(format!("tidings-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml = dir.join("c.toml");
        std::fs::write(
            &toml,
            "[http_api]\nkey = \"t\"\n[channel.without_namespace]\npresence = true\n[[channel.namespaces]]\nname = \"chat\"\nhistory_size = 10\nhistory_ttl = \"60s\"\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&toml), env(&[])).unwrap();
        assert_eq!(cfg.http_api.key, "t");
        assert!(!cfg.client.allow_anonymous_connect_without_token);
        assert_eq!(cfg.namespace("chat").unwrap().history_size, 10);
        let yaml = dir.join("c.yaml");
        std::fs::write(
            &yaml,
            "http_api:\n  key: y\nclient:\n  ping_interval: 10s\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&yaml), env(&[])).unwrap();
        assert_eq!(cfg.http_api.key, "y");
        assert_eq!(cfg.client.ping_interval, Duration::from_secs(10));
        let json = dir.join("c.json");
        std::fs::write(&json, r#"{"http_api":{"key":"j"}}"#).unwrap();
        assert_eq!(
            Config::load(Some(&json), env(&[])).unwrap().http_api.key,
            "j"
        );
        let missing = dir.join("nope.json");
        assert!(Config::load(Some(&missing), env(&[])).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unknown_keys_are_reported() {
        let dir = std::env::temp_dir().join(format!("tidings-unknown-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.json");
        std::fs::write(
            &file,
            r#"{"http_api":{"key":"k","kee":1},"channel":{"namespaces":[{"name":"ab","presense":true}]},"grpc_api":{}}"#,
        )
        .unwrap();
        let cfg = Config::load(Some(&file), env(&[])).unwrap();
        assert_eq!(
            cfg.unknown_keys,
            vec!["channel.namespaces[0].presense", "grpc_api", "http_api.kee"]
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn http_server_keys_default_and_validate() {
        let cfg = Config::default();
        assert_eq!(cfg.http_server.header_read_timeout, Duration::from_secs(10));
        assert!(!cfg.http_server.tls.enabled);
        assert_eq!(cfg.http_server.separate_internal_port(), None);

        let dir = std::env::temp_dir().join(format!("tidings-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.json");
        // Centrifugo writes internal_port as a string; a number is accepted too.
        for port in [r#""9001""#, "9001"] {
            std::fs::write(
                &file,
                format!(
                    r#"{{"http_server":{{"internal_port":{port},"header_read_timeout":"3s"}}}}"#
                ),
            )
            .unwrap();
            let cfg = Config::load(Some(&file), env(&[])).unwrap();
            assert_eq!(cfg.http_server.separate_internal_port(), Some(9001));
            assert_eq!(cfg.http_server.header_read_timeout, Duration::from_secs(3));
            assert!(cfg.unknown_keys.is_empty(), "{:?}", cfg.unknown_keys);
        }
        std::fs::remove_dir_all(&dir).ok();

        let cfg =
            Config::load(None, env(&[("TIDINGS_HTTP_SERVER_INTERNAL_PORT", "9002")])).unwrap();
        assert_eq!(cfg.http_server.separate_internal_port(), Some(9002));
        assert_eq!(cfg.http_server.internal_address(), "127.0.0.1");

        let mut cfg = Config::default();
        cfg.http_server.internal_port = "8000".into();
        assert_eq!(
            cfg.http_server.separate_internal_port(),
            None,
            "same as port"
        );
        cfg.http_server.internal_port = "http".into();
        assert!(cfg.validate().is_err());

        let mut cfg = Config::default();
        cfg.http_server.tls.enabled = true;
        assert!(cfg.validate().is_err(), "TLS without a certificate");
        cfg.http_server.tls.cert_pem = "cert.pem".into();
        cfg.http_server.tls.key_pem = "key.pem".into();
        assert!(cfg.validate().is_ok());
        assert!(cfg.http_server.internal_tls().is_some());
        cfg.http_server.tls_external = true;
        assert!(cfg.http_server.internal_tls().is_none());

        let mut cfg = Config::default();
        cfg.http_server.header_read_timeout = Duration::ZERO;
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn subscription_token_section_loads_from_file_and_env() {
        let dir = std::env::temp_dir().join(format!("tidings-subtoken-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.yaml");
        std::fs::write(
            &file,
            "client:\n  subscription_token:\n    enabled: true\n    hmac_secret_key: from-file\n    audience: subs\n",
        )
        .unwrap();
        let cfg = Config::load(
            Some(&file),
            env(&[("TIDINGS_CLIENT_SUBSCRIPTION_TOKEN_ISSUER", "from-env")]),
        )
        .unwrap();
        let sub = &cfg.client.subscription_token;
        assert!(sub.enabled);
        assert_eq!(sub.token.hmac_secret_key, "from-file");
        assert_eq!(sub.token.audience, "subs");
        assert_eq!(sub.token.issuer, "from-env");
        assert!(cfg.unknown_keys.is_empty(), "{:?}", cfg.unknown_keys);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unusable_token_settings_fail_validation_with_the_key_name() {
        let mut cfg = Config::default();
        cfg.client.token.ecdsa_public_key = "garbage".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("client.token.ecdsa_public_key"), "{err}");
        let mut cfg = Config::default();
        cfg.client.token.issuer = "a".into();
        cfg.client.token.issuer_regex = "a".into();
        assert!(cfg.validate().is_err());
        let mut cfg = Config::default();
        cfg.client.token.jwks_public_endpoint = "https://idp/{{realm}}/certs".into();
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn insecure_settings_are_listed() {
        let mut cfg = Config::default();
        cfg.client.token.hmac_secret_key = "x".repeat(MIN_HMAC_SECRET_LEN);
        cfg.http_api.key = "k".into();
        assert!(cfg.insecure_settings().is_empty());
        cfg.http_api.insecure = true;
        cfg.http_server.address = "127.0.0.1".into();
        assert!(cfg.insecure_settings().is_empty());
        cfg.http_server.address = String::new();
        assert_eq!(cfg.insecure_settings().len(), 1);
        // With an internal port, the API's own address is what counts.
        cfg.http_server.internal_port = "9001".into();
        cfg.http_server.internal_address = "127.0.0.1".into();
        assert!(cfg.insecure_settings().is_empty());
        cfg.http_server.internal_port = String::new();
        cfg.http_server.internal_address = String::new();
        cfg.client.insecure = true;
        cfg.client.insecure_skip_token_signature_verify = true;
        cfg.client.token.hmac_secret_key = "short".into();
        assert_eq!(cfg.insecure_settings().len(), 4);
        cfg.client.token.hmac_secret_key.clear();
        cfg.client.token.jwks_public_endpoint = "http://user@[::1]:80/keys".into();
        assert_eq!(cfg.insecure_settings().len(), 3);
        cfg.client.token.jwks_public_endpoint = "http://keys.internal:80/keys".into();
        assert_eq!(cfg.insecure_settings().len(), 4);
    }

    #[test]
    fn loopback_addresses() {
        for a in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "localhost",
            "LOCALHOST",
        ] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "",
            "0.0.0.0",
            "::",
            "10.0.0.1",
            "example.com",
            "localhost.evil.com",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
    }

    #[test]
    fn history_without_ttl_is_rejected() {
        let mut cfg = Config::default();
        cfg.channel.without_namespace.history_size = 10;
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn limits_load_from_the_environment() {
        let cfg = Config::load(
            None,
            env(&[
                ("TIDINGS_CLIENT_USER_CONNECTION_LIMIT", "2"),
                ("TIDINGS_CLIENT_CONNECTION_LIMIT", "1000"),
                ("TIDINGS_CLIENT_CONNECTION_RATE_LIMIT", "50"),
                ("TIDINGS_CLIENT_COMMAND_RATE_LIMIT_BURST", "20"),
                ("TIDINGS_CLIENT_COMMAND_RATE_LIMIT_DISCONNECT_AFTER", "0"),
                ("TIDINGS_HTTP_API_MAX_REQUEST_BODY_SIZE", "4096"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.client.user_connection_limit, 2);
        assert_eq!(cfg.client.connection_limit, 1000);
        assert_eq!(cfg.client.connection_rate_limit, 50);
        assert_eq!(cfg.client.command_rate_limit.burst, 20);
        assert_eq!(cfg.client.command_rate_limit.rate, 100);
        assert_eq!(cfg.client.command_rate_limit.disconnect_after, 0);
        assert_eq!(cfg.http_api.max_request_body_size, 4096);
    }

    #[test]
    fn enabled_command_budget_needs_a_rate_and_a_burst() {
        let mut cfg = Config::default();
        cfg.client.command_rate_limit.rate = 0;
        assert!(cfg.validate().is_err());
        cfg.client.command_rate_limit.enabled = false;
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn the_nats_engine_is_accepted_and_its_keys_checked() {
        let mut cfg = Config::default();
        cfg.engine.kind = "nats".into();
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
        cfg.engine.kind = "zookeeper".into();
        assert!(cfg.validate().is_err());
    }
}
