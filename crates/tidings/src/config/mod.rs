//! Typed configuration, with Centrifugo v6 key names.
//!
//! Loading order: a base (Centrifugo's defaults when a file is given, the development
//! profile when not), then the file (TOML, YAML or JSON by extension), then environment
//! overrides, then one validation pass. The library never reads the process
//! environment itself: the caller passes the variables in, which keeps tests hermetic.
//!
//! Configuration is data: this folder uses no other part of Tidings. What only
//! another layer can judge is checked there: the token keys by
//! [`crate::auth::Auth::check`], which the binary calls after [`Config::load`]; the
//! TLS certificates by [`crate::tls`] when the listeners start.
//!
//! One file per concern. Every type is re-exported here, so its path is
//! `crate::config::Name` whichever file holds it:
//!
//! - `mod.rs`: [`Config`], [`ConfigError`] and [`Config::load`].
//! - `server.rs`: `http_server` (with [`TlsConfig`]), `health`, `prometheus`,
//!   `shutdown`, `log`, `node`.
//! - `client.rs`: `client.*`: origins, tokens, timeouts, limits, the command budget.
//! - `channel.rs`: `channel.*`: names, namespaces, [`ChannelOptions`].
//! - `api.rs`: `http_api`.
//! - `admin.rs`: `admin`, the admin web UI.
//! - `proxy.rs`: the backend proxies' shape ([`ProxyConfig`]), `client.proxy`,
//!   `channel.proxy`, the `proxies` list, the personal channel.
//! - `rpc.rs`: `rpc.*`: RPC namespaces and their proxy.
//! - `engine.rs`: `engine.*`: the engine type ([`EngineKind`]), Redis and NATS.
//! - `transports.rs`: `websocket`, `uni_*`, `sse`, `http_stream`, `emulation`,
//!   `long_poll`.
//! - `socketio.rs`: `socketio`.
//! - `webhooks.rs`: the `webhooks` list ([`WebhookConfig`]).
//! - `online_status.rs`: the `online_status` section ([`OnlineStatusConfig`]).
//! - `opentelemetry.rs`: the `opentelemetry` section ([`OpenTelemetryConfig`]).
//! - `dev.rs`: [`Config::development`], the profile used without a file.
//! - `env.rs`: `TIDINGS_*` overrides ([`ENV_PREFIX`]) and the unknown-key report.
//! - `validate.rs`: [`Config::validate`].
//! - `insecure.rs`: [`Config::insecure_settings`].
//! - [`pem`]: reading a PEM field (text, base64 or file), for validation,
//!   [`crate::tls`] and the engines.

use std::path::Path;

use figment::providers::{Format, Json, Serialized, Toml, Yaml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod admin;
mod api;
mod channel;
mod client;
mod dev;
// docs/configuration.md checked against these types.
#[cfg(test)]
mod doc_keys;
mod engine;
mod env;
mod insecure;
mod online_status;
mod opentelemetry;
pub mod pem;
mod proxy;
mod rpc;
mod server;
mod socketio;
mod transports;
mod validate;
mod webhooks;

pub use admin::AdminConfig;
pub use api::HttpApiConfig;
pub use channel::{ChannelConfig, ChannelOptions, Namespace};
pub use client::{ClientConfig, CommandRateLimitConfig, SubscriptionTokenConfig, TokenConfig};
pub use engine::{
    EngineConfig, EngineKind, NatsEngineConfig, NatsTlsConfig, RedisEngineConfig, RedisTlsConfig,
};
pub use env::ENV_PREFIX;
use env::{env_overrides, unknown_keys};
pub use insecure::{is_loopback, MIN_HMAC_SECRET_LEN};
pub use online_status::OnlineStatusConfig;
pub use opentelemetry::{OpenTelemetryConfig, OTEL_TARGET};
pub use proxy::{
    ChannelProxyConfig, ClientProxyConfig, CodeToDisconnect, ConnectCodeToDisconnect, NamedProxy,
    PersonalChannelConfig, ProxyConfig, ProxyHttpConfig, StatusToCodeTransform,
    SwitchedProxyConfig, TransformDisconnect, TransformError, DEFAULT_PROXY_NAME,
};
pub use rpc::{RpcConfig, RpcNamespace, RpcOptions};
pub use server::{
    HealthConfig, HttpServerConfig, LogConfig, NodeConfig, PrometheusConfig, ShutdownConfig,
    TlsConfig,
};
pub use socketio::SocketIoConfig;
pub use transports::{
    EmulationConfig, LongPollConfig, StreamTransportConfig, UniWebsocketConfig, WebsocketConfig,
};
pub use webhooks::{WebhookConfig, WEBHOOK_EVENTS};

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
    /// Client RPC calls: which go to a backend proxy.
    pub rpc: RpcConfig,
    /// Named backend proxies that namespaces pick with `*_proxy_name`.
    pub proxies: Vec<NamedProxy>,
    /// Where to POST what happened (channels occupied and vacated, members added
    /// and removed, client publications), in Pusher's signed envelope. A Tidings
    /// key.
    pub webhooks: Vec<WebhookConfig>,
    /// Users' online status across the cluster and when they were last seen. A
    /// Tidings section.
    pub online_status: OnlineStatusConfig,
    /// OTLP traces of server API and proxy calls.
    pub opentelemetry: OpenTelemetryConfig,
    /// The admin web UI: nodes, channels, presence, history, a live tail, publish
    /// and disconnect, behind a password login.
    pub admin: AdminConfig,
    /// Keys in the file that Tidings does not know (typos, or Centrifugo features it
    /// lacks). Not a configuration key: filled by [`Config::load`] for a warning.
    #[serde(skip)]
    pub unknown_keys: Vec<String>,
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
    /// Loads the configuration.
    ///
    /// `file` is the `--config` path, if any; `env` the process environment (only
    /// variables starting with [`ENV_PREFIX`] are looked at).
    ///
    /// Token keys are not parsed here: call [`crate::auth::Auth::check`] on the
    /// result, as the binary does, to refuse a key that does not parse at once.
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
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
}
