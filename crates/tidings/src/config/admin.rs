//! `admin`: the admin web UI, with Centrifugo v6's keys.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// Serve the admin web UI and its endpoints (on the internal port when there
    /// is one). Default `false`.
    pub enabled: bool,
    /// What an operator types to log in. Required unless `insecure`. Default: none.
    pub password: String,
    /// Signs the session token a login returns (HMAC-SHA256). Required unless
    /// `insecure`. Default: none.
    pub secret: String,
    /// No login: every request to the admin endpoints is allowed (development, or
    /// behind a firewall). Default `false`.
    pub insecure: bool,
    /// Path the UI is served under; `""` is the root (`/`). Default `""`.
    pub handler_prefix: String,
}

impl AdminConfig {
    /// The prefix without a trailing `/` (so `""` for the root).
    pub fn prefix(&self) -> &str {
        self.handler_prefix.trim_end_matches('/')
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn enabled() -> Config {
        let mut cfg = Config::default();
        cfg.client.token.hmac_secret_key = "c".repeat(32);
        cfg.http_api.key = "k".into();
        cfg.admin.enabled = true;
        cfg.admin.password = "password".into();
        cfg.admin.secret = "s".repeat(32);
        cfg
    }

    #[test]
    fn the_admin_needs_a_password_and_a_secret_unless_insecure() {
        let mut cfg = enabled();
        cfg.validate().unwrap();
        assert!(cfg.insecure_settings().is_empty());
        cfg.admin.password.clear();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("admin.password"), "{err}");
        cfg.admin.insecure = true;
        cfg.validate().unwrap();
        cfg.admin.insecure = false;
        cfg.admin.password = "password".into();
        cfg.admin.secret.clear();
        assert!(cfg.validate().is_err());
        // Off, nothing is asked of it.
        cfg.admin.enabled = false;
        cfg.validate().unwrap();
    }

    #[test]
    fn the_prefix_is_empty_or_a_path() {
        let mut cfg = enabled();
        for good in ["", "/", "/admin", "/ops/admin/"] {
            cfg.admin.handler_prefix = good.into();
            cfg.validate().unwrap();
        }
        assert_eq!(cfg.admin.prefix(), "/ops/admin");
        for bad in [
            "admin",
            "/ad{min}",
            "/a*",
            "/metrics",
            "/connection/websocket",
            "/api",
        ] {
            cfg.admin.handler_prefix = bad.into();
            assert!(cfg.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn insecure_or_a_short_secret_is_listed() {
        let mut cfg = enabled();
        cfg.admin.secret = "short".into();
        assert_eq!(cfg.insecure_settings().len(), 1);
        cfg.admin.secret = "s".repeat(32);
        cfg.admin.insecure = true;
        cfg.http_server.address = "127.0.0.1".into();
        assert!(cfg.insecure_settings().is_empty());
        cfg.http_server.address = String::new();
        let found = cfg.insecure_settings();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("admin.insecure"), "{found:?}");
        // With an internal port, its address is what counts.
        cfg.http_server.internal_port = "9001".into();
        cfg.http_server.internal_address = "127.0.0.1".into();
        assert!(cfg.insecure_settings().is_empty());
    }
}
