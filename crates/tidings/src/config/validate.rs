//! [`Config::validate`]: the one pass over values that are each fine but must make
//! sense together. It parses what it must (ports, Redis URLs, PEM files) and builds
//! nothing: token keys are checked by `crate::auth::Auth::check`.

use std::collections::HashSet;
use std::time::Duration;

use super::{Config, ConfigError, EngineKind};

impl Config {
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
        if http.body_read_timeout.is_zero() {
            return bad("http_server.body_read_timeout must be positive".into());
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
        match self.engine.kind {
            EngineKind::Memory => {}
            EngineKind::Nats => self.engine.nats.validate()?,
            EngineKind::Redis => self.engine.redis.validate()?,
        }
        if self.channel.namespace_boundary.is_empty() {
            return bad("channel.namespace_boundary must not be empty".into());
        }
        if let Err(e) = self.validate_proxies() {
            return bad(e);
        }
        if let Err(e) = super::webhooks::validate_webhooks(&self.webhooks) {
            return bad(e);
        }
        if let Err(e) = super::online_status::validate_online_status(self) {
            return bad(e);
        }
        let admin = &self.admin;
        if admin.enabled
            && !admin.insecure
            && (admin.password.is_empty() || admin.secret.is_empty())
        {
            return bad(
                "admin.enabled needs admin.password and admin.secret (or admin.insecure)".into(),
            );
        }
        let prefix = admin.prefix();
        if !prefix.is_empty()
            && (!prefix.starts_with('/') || prefix.contains(['{', '}', '*', '?', '#', '%', ' ']))
        {
            return bad(format!(
                "admin.handler_prefix {:?} must be empty or a path starting with /",
                admin.handler_prefix
            ));
        }
        if admin.enabled && !prefix.is_empty() {
            // The UI's bare prefix redirects to `<prefix>/`; it must not be a path
            // another endpoint already answers.
            let taken = [
                self.websocket.handler_prefix.as_str(),
                self.uni_websocket.handler_prefix.as_str(),
                self.long_poll.handler_prefix.as_str(),
                self.emulation.handler_prefix.as_str(),
                self.sse.path("/connection/sse"),
                self.http_stream.path("/connection/http_stream"),
                self.uni_sse.path("/connection/uni_sse"),
                self.uni_http_stream.path("/connection/uni_http_stream"),
                self.http_api.handler_prefix.trim_end_matches('/'),
                self.socketio.path.trim_end_matches('/'),
                "/health",
                "/metrics",
            ];
            if taken.contains(&prefix) {
                return bad(format!(
                    "admin.handler_prefix {prefix:?} is the path of another endpoint"
                ));
            }
        }
        if self.client.queue_max_size < 1024 {
            return bad("client.queue_max_size must be at least 1024 bytes".into());
        }
        if self.websocket.message_size_limit < 1024 {
            return bad("websocket.message_size_limit must be at least 1024 bytes".into());
        }
        for (key, level) in [
            (
                "websocket.compression_level",
                self.websocket.compression_level,
            ),
            (
                "uni_websocket.compression_level",
                self.uni_websocket.compression_level,
            ),
        ] {
            if !(-1..=9).contains(&level) {
                return bad(format!(
                    "{key} must be between -1 (zlib's default) and 9, not {level}"
                ));
            }
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
            if !opts.channel_regex.is_empty() {
                if let Err(e) = regex::Regex::new(&opts.channel_regex) {
                    return bad(format!("{key}: invalid channel_regex: {e}"));
                }
            }
            if !matches!(opts.force_recovery_mode.as_str(), "" | "stream" | "cache") {
                return bad(format!(
                    "{key}: force_recovery_mode must be \"stream\" or \"cache\", not {:?}",
                    opts.force_recovery_mode
                ));
            }
            if opts.auto_cache_recover
                && !(opts.force_recovery && opts.force_recovery_mode == "cache")
            {
                return bad(format!(
                    "{key}: auto_cache_recover needs force_recovery and force_recovery_mode \"cache\""
                ));
            }
            if let Some(t) = opts.allowed_delta_types.iter().find(|t| *t != "fossil") {
                return bad(format!(
                    "{key}: allowed_delta_types: unknown delta type {t:?} (only \"fossil\")"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChannelOptions;

    #[test]
    fn history_without_ttl_is_rejected() {
        let mut cfg = Config::default();
        cfg.channel.without_namespace.history_size = 10;
        assert!(cfg.validate().is_err());
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
    fn recovery_mode_regex_and_delta_types_are_checked() {
        let with = |f: &dyn Fn(&mut ChannelOptions)| {
            let mut cfg = Config::default();
            let o = &mut cfg.channel.without_namespace;
            o.history_size = 1;
            o.history_ttl = std::time::Duration::from_secs(60);
            f(o);
            cfg.validate()
        };
        assert!(with(&|o| o.force_recovery_mode = "cache".into()).is_ok());
        assert!(with(&|o| o.force_recovery_mode = "newest".into()).is_err());
        assert!(with(&|o| o.auto_cache_recover = true).is_err());
        assert!(with(&|o| {
            o.force_recovery = true;
            o.force_recovery_mode = "cache".into();
            o.auto_cache_recover = true;
        })
        .is_ok());
        assert!(with(&|o| o.channel_regex = "^[0-9]+$".into()).is_ok());
        assert!(with(&|o| o.channel_regex = "([".into()).is_err());
        assert!(with(&|o| o.allowed_delta_types = vec!["fossil".into()]).is_ok());
        assert!(with(&|o| o.allowed_delta_types = vec!["xdelta".into()]).is_err());
    }

    #[test]
    fn a_namespace_history_meta_ttl_overrides_the_channel_one() {
        let mut cfg = Config::default();
        cfg.channel.namespaces.push(crate::config::Namespace {
            name: "brief".into(),
            options: ChannelOptions {
                history_meta_ttl: std::time::Duration::from_secs(60),
                ..Default::default()
            },
        });
        assert_eq!(cfg.history_meta_ttl_of("brief:x").as_secs(), 60);
        assert_eq!(cfg.history_meta_ttl_of("$brief:x").as_secs(), 60);
        assert_eq!(cfg.history_meta_ttl_of("other").as_secs(), 720 * 3600);
    }
}
