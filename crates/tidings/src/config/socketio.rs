//! `socketio`: the Socket.IO front door. A Tidings section; Centrifugo has no such
//! key.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The Socket.IO front door. See docs/socketio.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SocketIoConfig {
    /// Serve Socket.IO clients. Default `false` (the development profile turns it on).
    pub enabled: bool,
    /// Path of the endpoint, as socket.io-client's `path` option names it. Default
    /// `/socket.io/`.
    pub path: String,
    /// How often the server pings (Engine.IO `pingInterval`). Default `25s`.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long the server waits for the pong (Engine.IO `pingTimeout`). Default `20s`.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// Largest HTTP request body or WebSocket message a client may send, in bytes
    /// (Engine.IO `maxPayload`). Default `1000000`.
    pub max_payload: usize,
    /// Most binary attachments one Socket.IO packet may announce. Default `10`.
    pub max_attachments: usize,
    /// Socket.IO namespace (`/`, `/chat`) to Tidings channel namespace (`""` for
    /// channels without namespace). Empty (the default): `/` maps to `""` and `/name`
    /// to the Tidings namespace `name` when it is configured.
    pub namespaces: BTreeMap<String, String>,
    /// Channels every socket joins when it connects to the Socket.IO namespace that
    /// maps onto the channel's Tidings namespace (server-side subscriptions).
    pub subscriptions: Vec<String>,
    /// Offer socket.io-client's `connectionStateRecovery`: a session id (`pid`) in the
    /// CONNECT reply and a position as the last argument of every room event.
    /// Default `false`, as in the reference server (it adds that argument).
    pub connection_state_recovery: bool,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            path: "/socket.io/".into(),
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            max_payload: 1_000_000,
            max_attachments: 10,
            namespaces: BTreeMap::new(),
            subscriptions: Vec::new(),
            connection_state_recovery: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{tests::env, Config};

    #[test]
    fn socketio_section_loads_without_unknown_keys_and_is_validated() {
        let dir = std::env::temp_dir().join(format!("tidings-sio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(
            &good,
            r#"{"socketio": {"enabled": true, "namespaces": {"/chat": "chat"}, "subscriptions": ["news"], "ping_interval": "5s"}}"#,
        )
        .unwrap();
        let cfg = Config::load(Some(&good), env(&[])).unwrap();
        assert!(cfg.unknown_keys.is_empty(), "{:?}", cfg.unknown_keys);
        assert_eq!(
            cfg.socketio.namespaces.get("/chat").map(String::as_str),
            Some("chat")
        );
        assert_eq!(cfg.socketio.ping_interval, Duration::from_secs(5));
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"socketio": {"namespaces": {"chat": "chat"}}}"#).unwrap();
        assert!(Config::load(Some(&bad), env(&[])).is_err());
        std::fs::write(&bad, r#"{"socketio": {"max_payload": 10}}"#).unwrap();
        assert!(Config::load(Some(&bad), env(&[])).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
