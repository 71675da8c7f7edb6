//! One webhook event and the envelope a batch travels in: Pusher's
//! `{"time_ms": …, "events": [...]}`, signed with HMAC-SHA256 of the exact body
//! (`X-Pusher-Signature`, lower-case hex), so that the webhook helpers of
//! Pusher's server libraries verify it unchanged.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// What happened. Field names are Pusher's; `id` is Tidings': the same event
/// keeps its id in every retry, so a receiver can drop the repeats.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WebhookEvent {
    /// `channel_occupied`, `channel_vacated`, `member_added`, `member_removed`,
    /// `client_event` (later `user_online`, `user_offline`, which have no channel).
    pub name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The user (member events; a client event's publisher when it has a user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// A client event's name: the Socket.IO event, or `publication` for a
    /// Centrifugo client's publish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// A client event's data, as JSON text (Pusher sends a string).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// A client event's data when it is not JSON (a Protobuf client's bytes), in
    /// base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64data: Option<String>,
    /// A client event's connection (the client id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<String>,
}

impl WebhookEvent {
    /// A channel or member event.
    pub fn channel(name: &'static str, channel: &str, user: Option<&str>) -> Self {
        Self {
            name,
            channel: Some(channel.to_owned()),
            user_id: user.map(str::to_owned),
            ..Default::default()
        }
    }
}

/// The event with its id, as the JSON text it has in every body; encoded once
/// and shared by every webhook that gets it.
#[derive(Serialize)]
struct Identified<'a> {
    id: &'a str,
    #[serde(flatten)]
    event: &'a WebhookEvent,
}

/// Encodes `event` with `id`.
pub(crate) fn encode(id: &str, event: &WebhookEvent) -> Arc<str> {
    serde_json::to_string(&Identified { id, event })
        .unwrap_or_else(|_| format!("{{\"id\":{id:?},\"name\":{:?}}}", event.name))
        .into()
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The body of one POST: the envelope with `time_ms` and the events' JSON.
pub(crate) fn body(time_ms: u64, events: &[Arc<str>]) -> Vec<u8> {
    let len: usize = events.iter().map(|e| e.len() + 1).sum();
    let mut out = Vec::with_capacity(len + 40);
    out.extend_from_slice(format!("{{\"time_ms\":{time_ms},\"events\":[").as_bytes());
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e.as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}

/// `X-Pusher-Signature`: lower-case hex of HMAC-SHA256(secret, body).
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let mut hex = String::with_capacity(64);
    for b in tag.as_ref() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_lower_case_hex_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_body_is_pushers_envelope_with_an_id_per_event() {
        let a = encode(
            "n-1",
            &WebhookEvent::channel("channel_occupied", "news", None),
        );
        let b = encode(
            "n-2",
            &WebhookEvent::channel("member_added", "chat", Some("42")),
        );
        let body: serde_json::Value =
            serde_json::from_slice(&body(1_700_000_000_000, &[a, b])).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "time_ms": 1_700_000_000_000u64,
                "events": [
                    {"id": "n-1", "name": "channel_occupied", "channel": "news"},
                    {"id": "n-2", "name": "member_added", "channel": "chat", "user_id": "42"},
                ]
            })
        );
    }
}
