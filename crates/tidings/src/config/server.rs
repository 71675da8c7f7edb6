//! The server's own sections: `http_server` (listeners, with Centrifugo's TLS object
//! [`TlsConfig`]), `health`, `prometheus`, `shutdown`, `log` and `node`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// Tidings' own key: a request whose body has not fully arrived this long after
    /// its headers is answered 408 and its connection closed, so a client that
    /// trickles a body cannot hold a socket and its buffers for long. Default `20s`:
    /// the largest client body (Socket.IO's 1 MB `max_payload`) at 500 kbit/s, a
    /// weak mobile uplink, with a few seconds to spare (docs/limits.md).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
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
            body_read_timeout: Duration::from_secs(20),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{tests::env, Config};

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

        let mut cfg = Config::default();
        assert_eq!(cfg.http_server.body_read_timeout, Duration::from_secs(20));
        cfg.http_server.body_read_timeout = Duration::ZERO;
        assert!(cfg.validate().is_err());
        let cfg = Config::load(
            None,
            env(&[("TIDINGS_HTTP_SERVER_BODY_READ_TIMEOUT", "1500ms")]),
        )
        .unwrap();
        assert_eq!(
            cfg.http_server.body_read_timeout,
            Duration::from_millis(1500)
        );
    }
}
