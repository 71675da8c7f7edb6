//! `webhooks`: where Tidings tells the application's backend what happened, in
//! Pusher's signed envelope (see docs/webhooks.md). A Tidings section: Centrifugo
//! has no webhooks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::proxy::valid_proxy_name;

/// The events a webhook may ask for (Pusher's names).
pub const WEBHOOK_EVENTS: [&str; 7] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "user_online",
    "user_offline",
];

/// One entry of the top-level `webhooks` list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookConfig {
    /// Names the webhook in logs and metrics; `^[-a-zA-Z0-9_.]{2,}$`, unique.
    /// Default: none (required).
    pub name: String,
    /// `http://` or `https://` URL the batches are POSTed to. Default: none
    /// (required).
    pub endpoint: String,
    /// Sent as `X-Pusher-Key`: the receiver picks the secret by it (Pusher's app
    /// key). Default: none (required).
    pub key: String,
    /// Signs each body: `X-Pusher-Signature` is the hex HMAC-SHA256 of the body
    /// with it. Default: none (required).
    pub secret: String,
    /// Which events this webhook gets: `channel_occupied`, `channel_vacated`,
    /// `member_added`, `member_removed`, `client_event`, and with
    /// `online_status.enabled`, `user_online` and `user_offline`. Default: none
    /// (required).
    pub events: Vec<String>,
    /// Longest wait for the receiver's answer to one POST. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Most events waiting for delivery; when full, the oldest is dropped (and
    /// counted). A Tidings key. Default `10000`.
    pub queue_size: usize,
    /// Most events in one POST. A Tidings key. Default `100`.
    pub max_batch_size: usize,
    /// First wait before a failed POST is sent again; doubles each time. A
    /// Tidings key. Default `500ms`.
    #[serde(with = "humantime_serde")]
    pub retry_backoff_min: Duration,
    /// Longest wait between two tries. A Tidings key. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// How long a batch is retried before it is dropped (and counted). A Tidings
    /// key. Default `5m` (as Pusher).
    #[serde(with = "humantime_serde")]
    pub retry_max_duration: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            endpoint: String::new(),
            key: String::new(),
            secret: String::new(),
            events: Vec::new(),
            timeout: Duration::from_secs(5),
            queue_size: 10_000,
            max_batch_size: 100,
            retry_backoff_min: Duration::from_millis(500),
            retry_backoff_max: Duration::from_secs(30),
            retry_max_duration: Duration::from_secs(300),
        }
    }
}

impl WebhookConfig {
    /// Whether this webhook gets `event`.
    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }

    fn check(&self, key: &str) -> Result<(), String> {
        if self.endpoint.is_empty() {
            return Err(format!("{key}.endpoint is not set"));
        }
        let url = reqwest::Url::parse(&self.endpoint)
            .map_err(|e| format!("{key}.endpoint {:?} is not a URL: {e}", self.endpoint))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "{key}.endpoint {:?} must be an http:// or https:// URL with a host",
                self.endpoint
            ));
        }
        if self.key.is_empty() || reqwest::header::HeaderValue::from_str(&self.key).is_err() {
            return Err(format!(
                "{key}.key must be set (it is sent as X-Pusher-Key)"
            ));
        }
        if self.secret.is_empty() {
            return Err(format!("{key}.secret must be set (it signs every body)"));
        }
        if self.events.is_empty() {
            return Err(format!(
                "{key}.events is empty: name at least one of {}",
                WEBHOOK_EVENTS.join(", ")
            ));
        }
        if let Some(e) = self
            .events
            .iter()
            .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
        {
            return Err(format!(
                "{key}.events: unknown event {e:?} (known: {})",
                WEBHOOK_EVENTS.join(", ")
            ));
        }
        for (what, d) in [
            ("timeout", self.timeout),
            ("retry_backoff_min", self.retry_backoff_min),
            ("retry_backoff_max", self.retry_backoff_max),
        ] {
            if d.is_zero() {
                return Err(format!("{key}.{what} must be positive"));
            }
        }
        if self.retry_backoff_min > self.retry_backoff_max {
            return Err(format!(
                "{key}.retry_backoff_min must not be longer than retry_backoff_max"
            ));
        }
        if self.queue_size == 0 || self.max_batch_size == 0 {
            return Err(format!(
                "{key}.queue_size and max_batch_size must be positive"
            ));
        }
        Ok(())
    }
}

/// Checks the `webhooks` list: every entry complete and valid, names unique.
pub(super) fn validate_webhooks(hooks: &[WebhookConfig]) -> Result<(), String> {
    let mut names: Vec<&str> = Vec::new();
    for (i, hook) in hooks.iter().enumerate() {
        if !valid_proxy_name(&hook.name) {
            return Err(format!(
                "webhooks[{i}].name {:?} must match ^[-a-zA-Z0-9_.]{{2,}}$",
                hook.name
            ));
        }
        if names.contains(&hook.name.as_str()) {
            return Err(format!("webhooks: duplicate name {:?}", hook.name));
        }
        hook.check(&format!("webhooks[{i}]"))?;
        names.push(&hook.name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook() -> WebhookConfig {
        WebhookConfig {
            name: "app".into(),
            endpoint: "http://127.0.0.1:3001/pusher".into(),
            key: "k".into(),
            secret: "s".into(),
            events: vec!["channel_occupied".into()],
            ..Default::default()
        }
    }

    /// Breaks one setting of a complete webhook.
    type Edit = fn(&mut WebhookConfig);

    #[test]
    fn a_complete_webhook_passes_and_each_gap_is_named() {
        assert_eq!(validate_webhooks(&[hook()]), Ok(()));
        let cases: [(Edit, &str); 7] = [
            (|h| h.endpoint = "ftp://x".into(), "webhooks[0].endpoint"),
            (|h| h.key.clear(), "webhooks[0].key"),
            (|h| h.secret.clear(), "webhooks[0].secret"),
            (|h| h.events.clear(), "webhooks[0].events is empty"),
            (|h| h.events = vec!["pusher:x".into()], "unknown event"),
            (|h| h.timeout = Duration::ZERO, "webhooks[0].timeout"),
            (|h| h.name = "x".into(), "webhooks[0].name"),
        ];
        for (edit, expected) in cases {
            let mut h = hook();
            edit(&mut h);
            let err = validate_webhooks(&[h]).unwrap_err();
            assert!(err.contains(expected), "{err} lacks {expected}");
        }
        let err = validate_webhooks(&[hook(), hook()]).unwrap_err();
        assert!(err.contains("duplicate"), "{err}");
    }
}
