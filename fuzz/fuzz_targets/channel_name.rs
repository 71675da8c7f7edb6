//! The channel-name parser (`channel::resolve`), with a namespace and user-limited
//! channels configured. A name is accepted exactly when it is 1..=max_length bytes
//! of printable ASCII without `*`, `&` or `>`, and its namespace exists.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tidings::channel::{resolve, RESERVED};
use tidings::config::{ChannelOptions, Namespace};
use tidings::Config;
use tidings_protocol::codes;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let mut cfg = Config::development();
        cfg.channel.max_length = 64;
        cfg.channel.namespaces.push(Namespace {
            name: "dialog".into(),
            options: ChannelOptions {
                allow_user_limited_channels: true,
                allow_subscribe_for_client: true,
                ..ChannelOptions::default()
            },
        });
        cfg
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = config();
    let well_formed = !name.is_empty()
        && name.len() <= cfg.channel.max_length
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !RESERVED.contains(&b));
    match resolve(cfg, name) {
        Ok(channel) => {
            assert!(well_formed, "accepted {name:?}");
            assert_eq!(channel.name, name);
            let _ = channel.is_private();
            let _ = channel.history_enabled();
            if let Some(users) = channel.limited_users(cfg) {
                for user in users {
                    assert!(!user.is_empty());
                }
            }
        }
        Err(code) if code == codes::ERROR_BAD_REQUEST => {
            assert!(!well_formed, "refused {name:?} with 107");
        }
        Err(code) => {
            assert_eq!(code, codes::ERROR_UNKNOWN_CHANNEL, "{name:?}");
            assert!(well_formed);
        }
    }
});
