//! [`Config::insecure_settings`]: settings that are valid but unsafe outside
//! development. `tidings check-config` refuses them; `serve` logs them.

use super::Config;

impl Config {
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
        let admin = &self.admin;
        if admin.enabled && admin.insecure && !is_loopback(api_address) {
            let shown = if api_address.is_empty() {
                "every interface".to_string()
            } else {
                api_address.to_string()
            };
            found.push(format!(
                "admin.insecure serves the admin UI without a login on {shown}; bind {key} to a loopback address or set admin.password and admin.secret"
            ));
        }
        let len = admin.secret.len();
        if admin.enabled && !admin.insecure && len < MIN_HMAC_SECRET_LEN {
            found.push(format!(
                "admin.secret is {len} bytes long; use at least {MIN_HMAC_SECRET_LEN} random bytes"
            ));
        }
        found
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
