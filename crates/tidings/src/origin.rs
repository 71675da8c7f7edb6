//! Origin checks for browser-facing endpoints.
//!
//! Browsers send `Origin` with every WebSocket upgrade and cross-origin request, and a
//! WebSocket has no CORS protection of its own, so the server decides. Requests
//! without `Origin` (servers, CLI tools) and same-origin requests pass; others must
//! match `client.allowed_origins` (`*`, or patterns such as `https://*.example.com`).

use axum::http::{header, HeaderMap};

use crate::config::Config;

/// Whether the request's origin may use a client endpoint.
pub fn allowed(config: &Config, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let origin = origin.to_ascii_lowercase();
    if let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
        let host = host.to_ascii_lowercase();
        let origin_host = origin.split_once("://").map_or(origin.as_str(), |(_, h)| h);
        if origin_host == host {
            return true;
        }
    }
    matches_allowed(config, &origin)
}

/// Whether an origin matches `client.allowed_origins` (used for CORS too).
pub fn matches_allowed(config: &Config, origin: &str) -> bool {
    let origin = origin.to_ascii_lowercase();
    config.client.allowed_origins.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        pattern == "*" || crate::channel::glob_match(&pattern, &origin)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_origin_and_no_origin_pass() {
        let cfg = Config::default();
        assert!(allowed(&cfg, &headers(None, "a.test")));
        assert!(allowed(
            &cfg,
            &headers(Some("http://a.test:8000"), "a.test:8000")
        ));
        assert!(!allowed(
            &cfg,
            &headers(Some("http://evil.test"), "a.test:8000")
        ));
    }

    #[test]
    fn wildcard_patterns() {
        let mut cfg = Config::default();
        cfg.client.allowed_origins = vec!["https://*.example.com".into()];
        assert!(allowed(
            &cfg,
            &headers(Some("https://app.example.com"), "x")
        ));
        assert!(!allowed(&cfg, &headers(Some("https://example.org"), "x")));
    }
}
