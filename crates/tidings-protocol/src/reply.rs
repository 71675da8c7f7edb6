//! What the server sends: a [`Reply`] to a command (same `id`), or an asynchronous
//! [`Push`] (`id` 0). A reply with nothing set (`{}`) is the server's ping.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::command::{is_zero, Empty};
use crate::{Disconnect, Error, NotJson, Payload};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<Push>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribeResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_stats: Option<PresenceStatsResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<RpcResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_refresh: Option<SubRefreshResult>,
}

impl Reply {
    /// An error reply to command `id`.
    pub fn error(id: u32, error: impl Into<Error>) -> Self {
        Reply {
            id,
            error: Some(error.into()),
            ..Default::default()
        }
    }

    /// A push (`id` 0).
    pub fn push(push: Push) -> Self {
        Reply {
            push: Some(push),
            ..Default::default()
        }
    }

    /// Encodes as one JSON line (no trailing newline).
    ///
    /// For a reply whose payloads are all known JSON (built by the server, or decoded
    /// from a JSON client). A payload that is not JSON makes this return `{}`, a ping:
    /// use [`Reply::try_to_json`] wherever a payload may come from a Protobuf client.
    pub fn to_json(&self) -> Vec<u8> {
        self.try_to_json().unwrap_or_else(|_| PING_FRAME.to_vec())
    }

    /// Encodes as one JSON line (no trailing newline).
    ///
    /// # Errors
    /// [`NotJson`] when a payload holds bytes that are not JSON (binary from a
    /// Protobuf client); Centrifugo then closes the JSON connection with
    /// [`NotJson::disconnect`].
    pub fn try_to_json(&self) -> Result<Vec<u8>, NotJson> {
        // Everything else is plain data with string map keys, so a payload is the only
        // thing that can fail to serialise.
        serde_json::to_vec(self).map_err(|_| NotJson)
    }
}

/// The bytes of the server's ping: an empty reply.
pub const PING_FRAME: &[u8] = b"{}";

/// An asynchronous message from the server about a channel or the connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Push {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
    #[serde(default, rename = "pub", skip_serializing_if = "Option::is_none")]
    pub publication: Option<Publication>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinLeave>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave: Option<JoinLeave>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<UnsubscribePush>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessagePush>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribePush>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<Disconnect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshResult>,
}

/// Who a connection is: sent in presence, join/leave and with client publications.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub client: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_info: Option<Payload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chan_info: Option<Payload>,
}

/// A message in a channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
    /// The publisher, when a client published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<ClientInfo>,
    /// Position in the channel's stream; 0 when the channel keeps no history.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// Unix time in milliseconds; 0 when not sent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub time: i64,
    /// Sent to a delta subscriber: `data` is a fossil delta against the previous
    /// publication it received. Between nodes and in history: the publisher asked
    /// for delta delivery of this publication.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delta: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JoinLeave {
    pub info: ClientInfo,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UnsubscribePush {
    pub code: u32,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MessagePush {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
}

/// A server-side subscription announced to the client.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubscribePush {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recoverable: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub positioned: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectResult {
    #[serde(default)]
    pub client: String,
    #[serde(default)]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub subs: HashMap<String, SubscribeResult>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expires: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ttl: u32,
    /// Seconds between server pings; 0 when the server does not ping.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ping: u32,
    /// Whether the client must answer pings with `{}`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pong: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub time: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubscribeResult {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expires: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ttl: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recoverable: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Publication>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recovered: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub positioned: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub was_recovering: bool,
    /// Delta delivery was agreed: publications of this subscription may carry
    /// fossil deltas.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delta: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PresenceResult {
    #[serde(default)]
    pub presence: HashMap<String, ClientInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PresenceStatsResult {
    #[serde(default)]
    pub num_clients: u32,
    #[serde(default)]
    pub num_users: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Publication>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RpcResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RefreshResult {
    #[serde(default)]
    pub client: String,
    #[serde(default)]
    pub version: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expires: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ttl: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubRefreshResult {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expires: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ttl: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publication_push_encodes_raw_data_and_pub_key() {
        let reply = Reply::push(Push {
            channel: "news".into(),
            publication: Some(Publication {
                data: Some(Payload::parse(&b"{\"a\":1}"[..]).unwrap()),
                offset: 3,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            String::from_utf8(reply.to_json()).unwrap(),
            r#"{"push":{"channel":"news","pub":{"data":{"a":1},"offset":3}}}"#
        );
    }

    #[test]
    fn a_binary_payload_cannot_be_encoded_as_json() {
        let reply = Reply::push(Push {
            channel: "news".into(),
            publication: Some(Publication {
                data: Some(Payload::from_bytes(vec![0xff, 0x00])),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(reply.try_to_json(), Err(NotJson));
    }

    #[test]
    fn ping_is_empty_object() {
        assert_eq!(Reply::default().to_json(), PING_FRAME);
    }
}
