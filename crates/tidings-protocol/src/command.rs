//! What a client sends: a [`Command`] with an `id` and exactly one request field.
//!
//! Unknown fields are ignored on purpose: newer SDKs send fields (for example a
//! subscribe `flag`) that an older server must tolerate.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::Payload;

/// A command sent from a client. An empty command (`{}`) is the client's pong.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Command {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribeRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<UnsubscribeRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_stats: Option<PresenceStatsRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<SendRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<RpcRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_refresh: Option<SubRefreshRequest>,
}

pub(crate) fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The method a command carries, in the order the server looks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Connect,
    Subscribe,
    Unsubscribe,
    Publish,
    Presence,
    PresenceStats,
    History,
    Ping,
    Send,
    Rpc,
    Refresh,
    SubRefresh,
}

impl Method {
    /// The method's wire name, also used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Connect => "connect",
            Method::Subscribe => "subscribe",
            Method::Unsubscribe => "unsubscribe",
            Method::Publish => "publish",
            Method::Presence => "presence",
            Method::PresenceStats => "presence_stats",
            Method::History => "history",
            Method::Ping => "ping",
            Method::Send => "send",
            Method::Rpc => "rpc",
            Method::Refresh => "refresh",
            Method::SubRefresh => "sub_refresh",
        }
    }
}

impl Command {
    /// The first request field that is set, if any.
    pub fn method(&self) -> Option<Method> {
        Some(if self.connect.is_some() {
            Method::Connect
        } else if self.subscribe.is_some() {
            Method::Subscribe
        } else if self.unsubscribe.is_some() {
            Method::Unsubscribe
        } else if self.publish.is_some() {
            Method::Publish
        } else if self.presence.is_some() {
            Method::Presence
        } else if self.presence_stats.is_some() {
            Method::PresenceStats
        } else if self.history.is_some() {
            Method::History
        } else if self.ping.is_some() {
            Method::Ping
        } else if self.send.is_some() {
            Method::Send
        } else if self.rpc.is_some() {
            Method::Rpc
        } else if self.refresh.is_some() {
            Method::Refresh
        } else if self.sub_refresh.is_some() {
            Method::SubRefresh
        } else {
            return None;
        })
    }

    /// True for the bare `{}` a client sends in answer to a server ping.
    pub fn is_pong(&self) -> bool {
        self.id == 0 && self.method().is_none()
    }
}

/// An empty request or result object (`{}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectRequest {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub subs: HashMap<String, SubscribeRequest>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub headers: HashMap<String, String>,
}

/// The position of a publication in a channel's stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubscribeRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recover: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub positioned: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recoverable: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub join_leave: bool,
    /// The delta encoding the client can apply (`"fossil"`), or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub delta: String,
    /// A filter on publication tags: only matching publications are delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tf: Option<FilterNode>,
    /// Bits of [`subscribe_flags`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub flag: i64,
    /// 0 for a stream subscription; Centrifugo's map and shared-poll subscriptions
    /// use other values.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub r#type: i32,
}

/// The bits of a subscribe request's `flag`.
pub mod subscribe_flags {
    /// The client would use a numeric channel id in pushes, where the server offers one.
    pub const CHANNEL_COMPACTION: i64 = 1;
    /// Refuse the subscribe with error 112 instead of answering `recovered: false`.
    pub const REJECT_UNRECOVERED: i64 = 2;
}

/// One node of a publication tags filter: a comparison (`op` empty) or `and`,
/// `or`, `not` over child nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterNode {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub op: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmp: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub val: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<FilterNode>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UnsubscribeRequest {
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PublishRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
    /// 0 for a stream publication; 1 is Centrifugo's map publication.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub r#type: i32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PresenceRequest {
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PresenceStatsRequest {
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryRequest {
    #[serde(default)]
    pub channel: String,
    /// 0 asks for the stream position only; a negative value asks for everything
    /// (bounded by the server's `client.history_max_publication_limit`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limit: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<StreamPosition>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reverse: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SendRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RpcRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RefreshRequest {
    #[serde(default)]
    pub token: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubRefreshRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_is_a_pong() {
        let cmd: Command = serde_json::from_str("{}").unwrap();
        assert!(cmd.is_pong());
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let cmd: Command = serde_json::from_str(
            r#"{"id":3,"subscribe":{"channel":"news","flag":4,"recover":true,"offset":7,"epoch":"e"}}"#,
        )
        .unwrap();
        assert_eq!(cmd.method(), Some(Method::Subscribe));
        let sub = cmd.subscribe.unwrap();
        assert!(sub.recover);
        assert_eq!(sub.offset, 7);
    }

    #[test]
    fn wrong_types_are_errors() {
        assert!(serde_json::from_str::<Command>(r#"{"id":"x"}"#).is_err());
        assert!(serde_json::from_str::<Command>(r#"{"id":1,"subscribe":{"channel":5}}"#).is_err());
    }

    #[test]
    fn data_stays_raw() {
        let cmd: Command =
            serde_json::from_str(r#"{"id":1,"publish":{"channel":"a","data":{"x": [1, 2]}}}"#)
                .unwrap();
        let data = cmd.publish.unwrap().data.unwrap();
        assert_eq!(data.as_str(), r#"{"x": [1, 2]}"#);
    }
}
