//! The Socket.IO front door: Engine.IO v4 (long polling and WebSocket, with the
//! upgrade) and Socket.IO v5 at `socketio.path` (default `/socket.io/`), onto the same
//! node, hub, broker, history and presence as the Centrifugo protocol.
//!
//! Socket.IO is a second protocol, so it is a second session kind ([`session`]), not
//! a transport of the Centrifugo session: a Socket.IO namespace maps onto a Tidings
//! channel namespace and a room onto a channel. See docs/socketio.md for the mapping
//! and the events a client uses to join, leave, publish and ask for presence.
//!
//! # Why our own codec and not socketioxide/engineioxide
//!
//! socketioxide is a good server, but it owns the sessions: a polling request must
//! reach the process that holds its sid, and its CONNECT reply cannot carry the `pid`
//! that socket.io-client's connection state recovery needs, while its own recovery
//! would keep state in that one process. Tidings needs (1) sids that name their node
//! so that a polling request landing elsewhere can be routed, (2) recovery backed by
//! the broker's history so it works on any node, and (3) the node's own limits,
//! outboxes and metrics. The two wire formats are small (a type digit, a namespace,
//! an ack id and JSON; a record separator for polling), so the codec here is a few
//! hundred lines with its own tests, and the rest is Tidings' own machinery.
//!
//! Layers: [`engine`] (Engine.IO framing and errors), [`packet`] (Socket.IO packets
//! and attachments), [`pushes`] (publications as room events, encoded once),
//! [`transport`] (the HTTP and WebSocket endpoints, the session registry, routing
//! of polls) and [`session`] (one task per Engine.IO session: heartbeat,
//! namespaces, rooms, events, recovery). Joining and leaving rooms goes through the
//! node's membership ([`crate::node::membership`]), the same code the Centrifugo
//! session uses, so presence, recovery and join/leave messages behave alike.
//!
//! # The outbox
//!
//! A Socket.IO session owns an ordinary [`Connection`](crate::connection::Connection),
//! so the hub, `Node::disconnect`, server-side subscribe and shutdown reach it like
//! any other client. Its outbox holds our own Engine.IO packets (tagged `T` for
//! text, `B` for binary) and the hub's publications, which the hub encodes once per
//! publication for every Socket.IO subscriber ([`pushes`], tagged `P`). The writer
//! of the active transport adds what differs per socket (namespaces, the recovery
//! offset) when it writes them ([`transport::render`]), without parsing JSON.

pub mod engine;
pub mod packet;
pub mod pushes;
pub mod session;
pub mod transport;

pub use transport::{
    registry, router, serve_forwarded, ForwardedPoll, ForwardedReply, PollForwarder, Registry,
};

/// The Tidings namespace a Socket.IO namespace maps onto, if any.
pub fn tidings_namespace(config: &crate::Config, nsp: &str) -> Option<String> {
    let map = &config.socketio.namespaces;
    if !map.is_empty() {
        return map.get(nsp).cloned();
    }
    if nsp == "/" {
        return Some(String::new());
    }
    let name = nsp.strip_prefix('/')?;
    config
        .channel
        .namespaces
        .iter()
        .any(|ns| ns.name == name)
        .then(|| name.to_string())
}

/// The channel of a room in a Tidings namespace.
pub fn channel_of(config: &crate::Config, tidings_ns: &str, room: &str) -> String {
    if tidings_ns.is_empty() {
        room.to_string()
    } else {
        format!("{tidings_ns}{}{room}", config.channel.namespace_boundary)
    }
}

/// The room a channel is in a Tidings namespace, if the channel belongs to it.
pub fn room_of<'a>(config: &crate::Config, tidings_ns: &str, channel: &'a str) -> Option<&'a str> {
    let resolved = crate::channel::resolve(config, channel).ok()?;
    if resolved.namespace != tidings_ns {
        return None;
    }
    if tidings_ns.is_empty() {
        return Some(channel);
    }
    let prefix_len = tidings_ns.len() + config.channel.namespace_boundary.len();
    channel.get(prefix_len..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Namespace;

    #[test]
    fn namespaces_map_by_name_unless_configured() {
        let mut cfg = crate::Config::development();
        cfg.channel.namespaces.push(Namespace {
            name: "chat".into(),
            options: Default::default(),
        });
        assert_eq!(tidings_namespace(&cfg, "/").as_deref(), Some(""));
        assert_eq!(tidings_namespace(&cfg, "/chat").as_deref(), Some("chat"));
        assert_eq!(tidings_namespace(&cfg, "/other"), None);
        cfg.socketio
            .namespaces
            .insert("/live".into(), "chat".into());
        assert_eq!(tidings_namespace(&cfg, "/live").as_deref(), Some("chat"));
        assert_eq!(tidings_namespace(&cfg, "/"), None);
        assert_eq!(channel_of(&cfg, "chat", "general"), "chat:general");
        assert_eq!(room_of(&cfg, "chat", "chat:general"), Some("general"));
        assert_eq!(room_of(&cfg, "", "chat:general"), None);
        assert_eq!(room_of(&cfg, "", "news"), Some("news"));
    }
}
