//! The backend proxies, with Centrifugo v6's keys: `client.proxy.connect`,
//! `client.proxy.refresh`, `channel.proxy.{subscribe,publish,sub_refresh}`,
//! `rpc.proxy`, and the top-level `proxies` list of named ones that namespaces pick
//! with `*_proxy_name`. One [`ProxyConfig`] shape serves them all, as in Centrifugo.
//! Only HTTP endpoints are supported (`http://`, `https://`); a `grpc://` endpoint is
//! refused at load with a clear error.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The name that `*_proxy_name` options use for the unnamed proxy of each kind
/// (`channel.proxy.subscribe`, `rpc.proxy`, …); reserved, as in Centrifugo.
pub const DEFAULT_PROXY_NAME: &str = "default";

/// One proxy endpoint and how to call it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyConfig {
    /// `http://` or `https://` URL the events are POSTed to. Default: none.
    pub endpoint: String,
    /// Longest wait for the backend's answer, the wait for a free request slot
    /// included. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Headers of the client's connection request (the WebSocket upgrade, the
    /// first HTTP request of the other transports) copied into each proxy request:
    /// `Cookie`, `Authorization`, `X-Forwarded-For`, … Matched without regard to
    /// case. Default: none.
    pub http_headers: Vec<String>,
    /// Headers the client sent in the `headers` map of its connect command
    /// (centrifuge-js `headers` option) copied into each proxy request. The client
    /// controls them: list only what the backend checks itself. Default: none.
    pub emulated_headers: Vec<String>,
    /// Add the connection's `meta` (set by the connect proxy's result) to every
    /// request but connect's. Default `false`.
    pub include_connection_meta: bool,
    /// HTTP-specific options.
    pub http: ProxyHttpConfig,
    /// Most requests in flight to this endpoint at once; a caller past it waits for
    /// a slot, within `timeout`. A Tidings key. Default `128`.
    pub max_concurrent_requests: usize,
    /// Largest answer read from the backend, in bytes; a longer one is cut and the
    /// call fails. A Tidings key. Default `1048576`.
    pub max_response_size: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            timeout: Duration::from_secs(1),
            http_headers: Vec::new(),
            emulated_headers: Vec::new(),
            include_connection_meta: false,
            http: ProxyHttpConfig::default(),
            max_concurrent_requests: 128,
            max_response_size: 1024 * 1024,
        }
    }
}

/// `http`: options of HTTP proxy requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyHttpConfig {
    /// Headers added to every request; a forwarded header of the same name wins.
    /// Default: none.
    pub static_headers: BTreeMap<String, String>,
    /// What a non-200 answer becomes for the client, by HTTP status. Without a
    /// match, any failure is error 100 (temporary). Default: none.
    pub status_to_code_transforms: Vec<StatusToCodeTransform>,
}

/// One `status_to_code_transforms` entry: an HTTP status and the error or
/// disconnect the client gets instead of error 100.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusToCodeTransform {
    pub status_code: u16,
    /// Used when its `code` is set.
    pub to_error: TransformError,
    /// Used when its `code` is set and `to_error`'s is not.
    pub to_disconnect: TransformDisconnect,
}

/// An error a transform or the backend hands the client.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TransformError {
    pub code: u32,
    pub message: String,
    pub temporary: bool,
}

/// A disconnect a transform hands the client.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TransformDisconnect {
    pub code: u32,
    pub reason: String,
}

/// `client.proxy.connect` and `client.proxy.refresh`: a proxy that is on only when
/// `enabled`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SwitchedProxyConfig {
    /// Use this proxy. Default `false`.
    pub enabled: bool,
    #[serde(flatten)]
    pub proxy: ProxyConfig,
}

/// `client.proxy`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientProxyConfig {
    /// Called for a connect without a token: the backend names the user (by its
    /// cookie, say) or refuses.
    pub connect: SwitchedProxyConfig,
    /// Called when a connection expires: the backend extends it or lets it end.
    /// Clients then never refresh on their own.
    pub refresh: SwitchedProxyConfig,
}

/// `channel.proxy`: the unnamed channel proxies, used by namespaces that enable a
/// proxy without naming one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelProxyConfig {
    pub subscribe: ProxyConfig,
    pub publish: ProxyConfig,
    pub sub_refresh: ProxyConfig,
}

/// An entry of the top-level `proxies` list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NamedProxy {
    /// What `*_proxy_name` options refer to; unique, `^[-a-zA-Z0-9_.]{2,}$`, and not
    /// `default`.
    pub name: String,
    #[serde(flatten)]
    pub proxy: ProxyConfig,
}

/// `client.connect_code_to_unidirectional_disconnect`: the disconnect a
/// unidirectional client gets for a connect error code (it cannot receive an error
/// reply). Without a match it gets 3004.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectCodeToDisconnect {
    /// Apply the transforms. Default `false`.
    pub enabled: bool,
    pub transforms: Vec<CodeToDisconnect>,
}

/// One entry of `connect_code_to_unidirectional_disconnect.transforms`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CodeToDisconnect {
    pub code: u32,
    pub to: TransformDisconnect,
}

/// `client.subscribe_to_user_personal_channel`: every authenticated user is
/// subscribed server-side to `#<user>` (or `<namespace>:#<user>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PersonalChannelConfig {
    /// Subscribe each non-anonymous connection to its user's channel. Default
    /// `false`.
    pub enabled: bool,
    /// Namespace of the personal channels; empty for channels without namespace.
    /// Default: empty.
    pub personal_channel_namespace: String,
    /// Keep one connection per user: a new connection disconnects the user's
    /// others (3504), as found in the personal channel's presence (which must be
    /// on). Default `false`.
    pub single_connection: bool,
}

/// Whether a proxy name is one Centrifugo accepts (`^[-a-zA-Z0-9_.]{2,}$`).
pub(super) fn valid_proxy_name(name: &str) -> bool {
    name.len() >= 2
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl ProxyConfig {
    /// Checks one proxy that will be used.
    pub(super) fn check(&self, key: &str) -> Result<(), String> {
        if self.endpoint.is_empty() {
            return Err(format!("{key}.endpoint is not set"));
        }
        if self.endpoint.starts_with("grpc://") {
            return Err(format!(
                "{key}.endpoint {:?}: gRPC proxies are not supported; use an http:// or https:// endpoint",
                self.endpoint
            ));
        }
        let url = reqwest::Url::parse(&self.endpoint)
            .map_err(|e| format!("{key}.endpoint {:?} is not a URL: {e}", self.endpoint))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "{key}.endpoint {:?} must be an http:// or https:// URL with a host",
                self.endpoint
            ));
        }
        if self.timeout.is_zero() {
            return Err(format!("{key}.timeout must be positive"));
        }
        if self.max_concurrent_requests == 0 {
            return Err(format!("{key}.max_concurrent_requests must be positive"));
        }
        if self.max_response_size == 0 {
            return Err(format!("{key}.max_response_size must be positive"));
        }
        for (name, value) in &self.http.static_headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(value).is_err()
            {
                return Err(format!(
                    "{key}.http.static_headers: {name:?} is not a valid header"
                ));
            }
        }
        for t in &self.http.status_to_code_transforms {
            if !(100..=599).contains(&t.status_code) || t.status_code == 200 {
                return Err(format!(
                    "{key}.http.status_to_code_transforms: status_code {} must be an HTTP status other than 200",
                    t.status_code
                ));
            }
            if t.to_error.code == 0 && t.to_disconnect.code == 0 {
                return Err(format!(
                    "{key}.http.status_to_code_transforms: status {} needs to_error.code or to_disconnect.code",
                    t.status_code
                ));
            }
        }
        Ok(())
    }
}

impl super::Config {
    /// Checks the proxies that something uses, the names namespaces refer to, and
    /// the personal channel's namespace.
    pub(super) fn validate_proxies(&self) -> Result<(), String> {
        let mut names: Vec<&str> = Vec::new();
        for (i, p) in self.proxies.iter().enumerate() {
            if !valid_proxy_name(&p.name) {
                return Err(format!(
                    "proxies[{i}].name {:?} must match ^[-a-zA-Z0-9_.]{{2,}}$",
                    p.name
                ));
            }
            if p.name == DEFAULT_PROXY_NAME {
                return Err(format!(
                    "proxies[{i}].name {DEFAULT_PROXY_NAME:?} is reserved"
                ));
            }
            if names.contains(&p.name.as_str()) {
                return Err(format!("proxies: duplicate name {:?}", p.name));
            }
            p.proxy.check(&format!("proxies[{i}]"))?;
            names.push(&p.name);
        }
        let client = &self.client.proxy;
        if client.connect.enabled {
            client.connect.proxy.check("client.proxy.connect")?;
        }
        if client.refresh.enabled {
            client.refresh.proxy.check("client.proxy.refresh")?;
        }
        // A namespace that enables a proxy needs that proxy to exist.
        let named = |name: &str, default: &ProxyConfig, key: &str, what: &str| {
            if name.is_empty() || name == DEFAULT_PROXY_NAME {
                default.check(key)
            } else if names.contains(&name) {
                Ok(())
            } else {
                Err(format!("{what}: proxy {name:?} is not in proxies"))
            }
        };
        let mut namespaces = vec![(
            "channel.without_namespace".to_string(),
            &self.channel.without_namespace,
        )];
        for ns in &self.channel.namespaces {
            namespaces.push((format!("channel.namespaces {:?}", ns.name), &ns.options));
        }
        let chp = &self.channel.proxy;
        for (what, o) in namespaces {
            if o.subscribe_proxy_enabled {
                named(
                    &o.subscribe_proxy_name,
                    &chp.subscribe,
                    "channel.proxy.subscribe",
                    &what,
                )?;
            }
            if o.publish_proxy_enabled {
                named(
                    &o.publish_proxy_name,
                    &chp.publish,
                    "channel.proxy.publish",
                    &what,
                )?;
            }
            if o.sub_refresh_proxy_enabled {
                named(
                    &o.sub_refresh_proxy_name,
                    &chp.sub_refresh,
                    "channel.proxy.sub_refresh",
                    &what,
                )?;
            }
        }
        let rpc = &self.rpc;
        let mut rpc_namespaces =
            vec![("rpc.without_namespace".to_string(), &rpc.without_namespace)];
        let mut seen: Vec<&str> = Vec::new();
        for ns in &rpc.namespaces {
            if !valid_proxy_name(&ns.name) {
                return Err(format!(
                    "rpc.namespaces: name {:?} must match ^[-a-zA-Z0-9_.]{{2,}}$",
                    ns.name
                ));
            }
            if seen.contains(&ns.name.as_str()) {
                return Err(format!("rpc.namespaces: duplicate name {:?}", ns.name));
            }
            seen.push(&ns.name);
            rpc_namespaces.push((format!("rpc.namespaces {:?}", ns.name), &ns.options));
        }
        for (what, o) in rpc_namespaces {
            if o.proxy_enabled {
                named(&o.proxy_name, &rpc.proxy, "rpc.proxy", &what)?;
            }
        }
        let personal = &self.client.subscribe_to_user_personal_channel;
        if personal.enabled {
            let ns = &personal.personal_channel_namespace;
            let Some(opts) = self.namespace(ns) else {
                return Err(format!(
                    "client.subscribe_to_user_personal_channel: namespace {ns:?} is not in channel.namespaces"
                ));
            };
            if personal.single_connection && !opts.presence {
                return Err(
                    "client.subscribe_to_user_personal_channel.single_connection needs presence on the personal channels' namespace"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{tests::env, Config, ConfigError};

    fn load(json: &str) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "tidings-proxy-cfg-{}-{}",
            std::process::id(),
            json.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.json");
        std::fs::write(&file, json).unwrap();
        let loaded = Config::load(Some(&file), env(&[]));
        std::fs::remove_dir_all(&dir).ok();
        loaded
    }

    fn invalid(json: &str) -> String {
        match load(json) {
            Err(ConfigError::Invalid(msg)) => msg,
            other => panic!("expected an invalid configuration, got {other:?}"),
        }
    }

    #[test]
    fn centrifugo_proxy_keys_load_without_unknown_keys() {
        let cfg = load(
            r#"{
              "client": {"proxy": {
                "connect": {"enabled": true, "endpoint": "http://127.0.0.1:3001/connect",
                            "timeout": "2s", "http_headers": ["Cookie"],
                            "http": {"static_headers": {"X-App": "1"},
                                     "status_to_code_transforms": [
                                       {"status_code": 404, "to_error": {"code": 404, "message": "nf"}}]}},
                "refresh": {"enabled": true, "endpoint": "https://backend.example/refresh"}},
                "subscribe_to_user_personal_channel": {"enabled": true, "personal_channel_namespace": "me",
                                                       "single_connection": true}},
              "channel": {"proxy": {"subscribe": {"endpoint": "http://127.0.0.1:3001/sub"}},
                          "namespaces": [{"name": "me", "presence": true},
                                         {"name": "chat", "subscribe_proxy_enabled": true,
                                          "publish_proxy_enabled": true, "publish_proxy_name": "pub1"}]},
              "proxies": [{"name": "pub1", "endpoint": "http://127.0.0.1:3002/pub"}],
              "rpc": {"proxy": {"endpoint": "http://127.0.0.1:3001/rpc"},
                      "without_namespace": {"proxy_enabled": true},
                      "namespaces": [{"name": "ns1", "proxy_enabled": true, "proxy_name": "pub1"}]}
            }"#,
        )
        .unwrap();
        assert!(cfg.unknown_keys.is_empty(), "{:?}", cfg.unknown_keys);
        assert_eq!(cfg.client.proxy.connect.proxy.http_headers, ["Cookie"]);
        assert_eq!(cfg.client.proxy.connect.proxy.timeout.as_secs(), 2);
        assert_eq!(cfg.client.proxy.refresh.proxy.timeout.as_secs(), 1);
        assert_eq!(cfg.proxies[0].name, "pub1");
        assert!(cfg.rpc.options_for("ns1:x").unwrap().proxy_enabled);
        assert!(cfg.rpc.options_for("ghost:x").is_none());
        assert!(cfg.rpc.options_for("plain").unwrap().proxy_enabled);
    }

    #[test]
    fn unusable_proxies_are_refused_with_the_key_named() {
        let connect = |endpoint: &str| {
            format!(
                r#"{{"client": {{"proxy": {{"connect": {{"enabled": true, "endpoint": "{endpoint}"}}}}}}}}"#
            )
        };
        assert!(invalid(&connect("")).contains("client.proxy.connect.endpoint is not set"));
        assert!(
            invalid(&connect("grpc://127.0.0.1:9000")).contains("gRPC proxies are not supported")
        );
        assert!(invalid(&connect("not a url")).contains("is not a URL"));
        assert!(invalid(&connect("ftp://host/x")).contains("http:// or https://"));
        // A disabled proxy is not checked.
        assert!(load(r#"{"client": {"proxy": {"connect": {"endpoint": ""}}}}"#).is_ok());
        let msg = invalid(
            r#"{"channel": {"namespaces": [{"name": "chat", "subscribe_proxy_enabled": true,
                 "subscribe_proxy_name": "nope"}]}}"#,
        );
        assert!(msg.contains("\"nope\" is not in proxies"), "{msg}");
        let msg = invalid(r#"{"channel": {"without_namespace": {"publish_proxy_enabled": true}}}"#);
        assert!(
            msg.contains("channel.proxy.publish.endpoint is not set"),
            "{msg}"
        );
        let msg = invalid(r#"{"proxies": [{"name": "default", "endpoint": "http://h/x"}]}"#);
        assert!(msg.contains("reserved"), "{msg}");
        let msg = invalid(
            r#"{"proxies": [{"name": "a1", "endpoint": "http://h/x",
                 "http": {"status_to_code_transforms": [{"status_code": 500}]}}]}"#,
        );
        assert!(msg.contains("to_error.code or to_disconnect.code"), "{msg}");
        let msg = invalid(
            r#"{"client": {"subscribe_to_user_personal_channel": {"enabled": true,
                 "personal_channel_namespace": "missing"}}}"#,
        );
        assert!(
            msg.contains("\"missing\" is not in channel.namespaces"),
            "{msg}"
        );
        let msg = invalid(
            r#"{"client": {"subscribe_to_user_personal_channel": {"enabled": true,
                 "single_connection": true}}}"#,
        );
        assert!(msg.contains("needs presence"), "{msg}");
    }

    #[test]
    fn proxy_endpoints_come_from_the_environment() {
        let cfg = Config::load(
            None,
            env(&[
                ("TIDINGS_CLIENT_PROXY_CONNECT_ENABLED", "true"),
                (
                    "TIDINGS_CLIENT_PROXY_CONNECT_ENDPOINT",
                    "http://127.0.0.1:1/c",
                ),
            ]),
        )
        .unwrap();
        assert!(cfg.client.proxy.connect.enabled);
        assert_eq!(
            cfg.client.proxy.connect.proxy.endpoint,
            "http://127.0.0.1:1/c"
        );
    }
}
