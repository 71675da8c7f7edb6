//! The development profile: the base when no config file is given.

use std::time::Duration;

use super::{ChannelOptions, Config, Namespace};

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
        // Online status (`status:<user>`): the latest status of each user with a
        // connection token, kept a day; anyone may follow anyone.
        cfg.online_status.enabled = true;
        cfg.channel.namespaces.push(Namespace {
            name: cfg.online_status.namespace.clone(),
            options: ChannelOptions {
                history_size: 1,
                history_ttl: Duration::from_secs(24 * 3600),
                allow_subscribe_for_client: true,
                allow_subscribe_for_anonymous: true,
                allow_history_for_subscriber: true,
                allow_history_for_anonymous: true,
                ..ChannelOptions::default()
            },
        });
        cfg
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{tests::env, Config};

    #[test]
    fn development_profile_without_file() {
        let cfg = Config::load(None, env(&[])).unwrap();
        assert!(cfg.client.allow_anonymous_connect_without_token);
        assert_eq!(cfg.channel.without_namespace.history_size, 100);
        assert_eq!(cfg.http_server.address, "127.0.0.1");
    }
}
