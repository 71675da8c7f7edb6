//! `online_status`: whether each user is online anywhere in the cluster, and when
//! they were last seen (see docs/online-status.md). A Tidings section: Centrifugo
//! has no such key (its paid edition tracks activity instead).

use serde::{Deserialize, Serialize};

use super::Config;

/// The `online_status` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct OnlineStatusConfig {
    /// Track users' online status. Default `false`.
    pub enabled: bool,
    /// The namespace of the status channels: the status of user `alice` is
    /// published to `<namespace>:alice`, and its history keeps the last one (the
    /// namespace's `history_ttl` is how long "last seen" is kept). It must exist,
    /// with `history_size` at least 1. Default `"status"`.
    pub namespace: String,
    /// Most users one `user_status` server API call may ask about. Default `1000`.
    pub max_users_per_request: usize,
}

impl Default for OnlineStatusConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            namespace: "status".into(),
            max_users_per_request: 1000,
        }
    }
}

impl OnlineStatusConfig {
    /// The status channel of `user`.
    pub fn channel(&self, boundary: &str, user: &str) -> String {
        format!("{}{boundary}{user}", self.namespace)
    }
}

/// Checks the section against the namespaces it names.
pub(super) fn validate_online_status(config: &Config) -> Result<(), String> {
    let status = &config.online_status;
    if !status.enabled {
        let wants = config
            .webhooks
            .iter()
            .find(|w| w.wants("user_online") || w.wants("user_offline"));
        if let Some(hook) = wants {
            return Err(format!(
                "webhook {:?} asks for user_online/user_offline, which need \
                 online_status.enabled = true",
                hook.name
            ));
        }
        return Ok(());
    }
    if status.namespace.is_empty() {
        return Err("online_status.namespace must name a channel namespace".into());
    }
    let Some(ns) = config
        .channel
        .namespaces
        .iter()
        .find(|ns| ns.name == status.namespace)
    else {
        return Err(format!(
            "online_status.namespace {:?} is not in channel.namespaces: add it, with \
             history_size = 1 and history_ttl as long as \"last seen\" should be kept",
            status.namespace
        ));
    };
    if ns.options.history_size == 0 || ns.options.history_ttl.is_zero() {
        return Err(format!(
            "online_status: namespace {:?} needs history_size of at least 1 and a \
             history_ttl (the last status is kept in its history)",
            status.namespace
        ));
    }
    if status.max_users_per_request == 0 {
        return Err("online_status.max_users_per_request must be at least 1".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Namespace;

    fn config(history_size: usize) -> Config {
        let mut config = Config::default();
        config.online_status.enabled = true;
        let mut ns = Namespace {
            name: "status".into(),
            ..Default::default()
        };
        ns.options.history_size = history_size;
        ns.options.history_ttl = Duration::from_secs(3600);
        config.channel.namespaces.push(ns);
        config
    }

    #[test]
    fn the_status_namespace_must_exist_and_keep_history() {
        assert_eq!(validate_online_status(&config(1)), Ok(()));
        let err = validate_online_status(&config(0)).unwrap_err();
        assert!(err.contains("history_size"), "{err}");
        let mut missing = config(1);
        missing.channel.namespaces.clear();
        let err = validate_online_status(&missing).unwrap_err();
        assert!(err.contains("not in channel.namespaces"), "{err}");
        let mut off = missing;
        off.online_status.enabled = false;
        assert_eq!(validate_online_status(&off), Ok(()));
    }

    #[test]
    fn user_webhooks_need_online_status() {
        let mut config = config(1);
        config.online_status.enabled = false;
        config.webhooks.push(crate::config::WebhookConfig {
            name: "app".into(),
            events: vec!["user_online".into()],
            ..Default::default()
        });
        let err = validate_online_status(&config).unwrap_err();
        assert!(err.contains("online_status.enabled"), "{err}");
        config.online_status.enabled = true;
        assert_eq!(validate_online_status(&config), Ok(()));
    }
}
