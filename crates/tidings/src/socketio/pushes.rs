//! Publications as Socket.IO room events, encoded once per publication.
//!
//! The hub asks [`SOCKETIO_PUSHES`] for a publication's bytes once, however many
//! Socket.IO sockets are in the channel, and queues the same [`Bytes`] in each
//! session's outbox. What differs per socket (the namespaces that joined the room,
//! the recovery offset, skipping the socket's own publications, as
//! `socket.to(room)` does) is added when the session's writer renders the item,
//! by copying pieces, without parsing JSON again.
//!
//! The item is Tidings-internal (it never leaves the process): `P`, the offset
//! (u64), the channel and the publishing client id (u16 length + bytes each), the
//! binary attachments (u16 count, then u32 length + bytes each), then the event's
//! arguments as JSON without the surrounding brackets, attachments replaced by
//! their placeholders.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;
use tidings_protocol::{ClientInfo, Publication};

use super::engine::Frame;
use super::packet::{Packet, EVENT};
use crate::node::PushEncoder;

/// The first byte of an encoded publication in a Socket.IO outbox.
pub const TAG: u8 = b'P';

/// The hub's encoder for Socket.IO subscribers.
pub struct SocketIoPushes;

/// The one instance the Socket.IO sessions name.
pub static SOCKETIO_PUSHES: SocketIoPushes = SocketIoPushes;

impl PushEncoder for SocketIoPushes {
    fn publication(&self, channel: &str, publication: &Publication) -> Option<Bytes> {
        Some(encode(channel, publication))
    }

    // Socket.IO sockets do not receive join and leave messages (rooms have no
    // such events); the hub never asks, and empty items are never written.
    fn join(&self, _channel: &str, _info: &ClientInfo) -> Option<Bytes> {
        Some(Bytes::new())
    }

    fn leave(&self, _channel: &str, _info: &ClientInfo) -> Option<Bytes> {
        Some(Bytes::new())
    }
}

/// A publication's data as event arguments: `{event, args}` as that event, anything
/// else as the `message` event with the data as its one argument. Data that is not
/// JSON (binary from a Protobuf client or the API's `b64data`) is that one
/// argument as a binary attachment.
pub fn event_args(data: Option<&tidings_protocol::RawJson>) -> Vec<Value> {
    let value: Value = match data {
        None => Value::Null,
        Some(d) => serde_json::from_slice(d.as_bytes()).unwrap_or_else(|_| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(d.as_bytes());
            serde_json::json!({ super::packet::BINARY_KEY: b64 })
        }),
    };
    if let Value::Object(map) = &value {
        if let (Some(Value::String(event)), Some(Value::Array(args))) =
            (map.get("event"), map.get("args"))
        {
            let mut out = Vec::with_capacity(args.len() + 1);
            out.push(Value::String(event.clone()));
            out.extend(args.iter().cloned());
            return out;
        }
    }
    vec![Value::String("message".into()), value]
}

/// Encodes a publication once for every Socket.IO subscriber (see the module docs).
pub fn encode(channel: &str, publication: &Publication) -> Bytes {
    // The packet encoder takes binary arguments out as attachments; the namespace
    // and the offset are left for the writer.
    let args = Value::Array(event_args(publication.data.as_ref()));
    let (text, attachments) = Packet::new(EVENT, "/", Some(args)).encode();
    // `2[...]`, or `5N-[...]` with N attachments: keep what is inside the brackets.
    let json = text
        .find('[')
        .map_or("", |at| &text[at + 1..text.len().saturating_sub(1)]);
    let client = publication
        .info
        .as_ref()
        .map_or("", |info| info.client.as_str());
    let channel = truncate_u16(channel.as_bytes());
    let client = truncate_u16(client.as_bytes());
    let extra: usize = attachments.iter().map(|a| 4 + a.len()).sum();
    let mut out = BytesMut::with_capacity(
        1 + 8 + 2 + channel.len() + 2 + client.len() + 2 + extra + json.len(),
    );
    out.put_u8(TAG);
    out.put_u64(publication.offset);
    out.put_u16(channel.len() as u16);
    out.put_slice(channel);
    out.put_u16(client.len() as u16);
    out.put_slice(client);
    let attachments = &attachments[..attachments.len().min(usize::from(u16::MAX))];
    out.put_u16(attachments.len() as u16);
    for a in attachments {
        let a = &a[..a.len().min(u32::MAX as usize)];
        out.put_u32(a.len() as u32);
        out.put_slice(a);
    }
    out.put_slice(json.as_bytes());
    out.freeze()
}

fn truncate_u16(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.len().min(usize::from(u16::MAX))]
}

/// A decoded item: borrowed pieces of the shared bytes.
pub struct Encoded<'a> {
    pub offset: u64,
    pub channel: &'a str,
    pub client: &'a str,
    pub attachments: Vec<Bytes>,
    /// The event's arguments without the brackets.
    pub args: &'a str,
}

/// Reads an item [`encode`] made; `None` for anything else.
pub fn decode(item: &Bytes) -> Option<Encoded<'_>> {
    let mut at = 1;
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let piece = item.get(*at..*at + n)?;
        *at += n;
        Some(piece)
    };
    if item.first() != Some(&TAG) {
        return None;
    }
    let offset = u64::from_be_bytes(take(&mut at, 8)?.try_into().ok()?);
    let len = usize::from(u16::from_be_bytes(take(&mut at, 2)?.try_into().ok()?));
    let channel = std::str::from_utf8(take(&mut at, len)?).ok()?;
    let len = usize::from(u16::from_be_bytes(take(&mut at, 2)?.try_into().ok()?));
    let client = std::str::from_utf8(take(&mut at, len)?).ok()?;
    let count = u16::from_be_bytes(take(&mut at, 2)?.try_into().ok()?);
    let mut attachments = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = u32::from_be_bytes(take(&mut at, 4)?.try_into().ok()?) as usize;
        let start = at;
        take(&mut at, len)?;
        attachments.push(item.slice(start..at));
    }
    let args = std::str::from_utf8(item.get(at..)?).ok()?;
    Some(Encoded {
        offset,
        channel,
        client,
        attachments,
        args,
    })
}

/// The frames of one event for namespace `nsp`: the packet text, with the
/// recovery offset as the last argument when there is one, then the attachments.
pub fn render_event(encoded: &Encoded<'_>, nsp: &str, offset: Option<&str>, out: &mut Vec<Frame>) {
    let mut text = String::with_capacity(encoded.args.len() + nsp.len() + 64);
    text.push('4');
    if encoded.attachments.is_empty() {
        text.push('2');
    } else {
        text.push('5');
        text.push_str(&encoded.attachments.len().to_string());
        text.push('-');
    }
    if nsp != "/" {
        text.push_str(nsp);
        text.push(',');
    }
    text.push('[');
    text.push_str(encoded.args);
    if let Some(offset) = offset {
        if !encoded.args.is_empty() {
            text.push(',');
        }
        // An offset is base64url: it needs no escaping as a JSON string.
        text.push('"');
        text.push_str(offset);
        text.push('"');
    }
    text.push(']');
    out.push(Frame::Text(text));
    out.extend(encoded.attachments.iter().cloned().map(Frame::Binary));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_protocol::RawJson;

    fn publication(data: &str, client: &str, offset: u64) -> Publication {
        Publication {
            data: Some(RawJson::parse(data.to_string()).unwrap()),
            info: Some(ClientInfo {
                client: client.into(),
                ..Default::default()
            }),
            offset,
            ..Default::default()
        }
    }

    /// What the packet encoder makes of the same event, for comparison.
    fn reference(data: &str, nsp: &str, offset: Option<&str>) -> Vec<Frame> {
        let mut args = event_args(Some(&RawJson::parse(data.to_string()).unwrap()));
        if let Some(o) = offset {
            args.push(Value::String(o.into()));
        }
        let (text, attachments) = Packet::new(EVENT, nsp, Some(Value::Array(args))).encode();
        let mut out = vec![Frame::Text(format!("4{text}"))];
        out.extend(attachments.into_iter().map(Frame::Binary));
        out
    }

    fn rendered(data: &str, nsp: &str, offset: Option<&str>) -> Vec<Frame> {
        let item = encode("chat:room", &publication(data, "c1", 7));
        let encoded = decode(&item).expect("decodes");
        assert_eq!(
            (encoded.offset, encoded.channel, encoded.client),
            (7, "chat:room", "c1")
        );
        let mut out = Vec::new();
        render_event(&encoded, nsp, offset, &mut out);
        out
    }

    #[test]
    fn events_render_as_the_packet_encoder_writes_them() {
        for data in [
            r#"{"event":"chat","args":[1,"x",{"a":[true,null]}]}"#,
            r#"{"text":"hi \"there\""}"#,
            r#"{"event":"bin","args":[{"$binary":"AAEC"},"y",{"$binary":"/w=="}]}"#,
            r#"{"event":"none","args":[]}"#,
            "42",
        ] {
            for nsp in ["/", "/chat"] {
                for offset in [None, Some("W1siYSIsImUiLDRdXQ")] {
                    assert_eq!(
                        rendered(data, nsp, offset),
                        reference(data, nsp, offset),
                        "{data} {nsp} {offset:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn other_items_are_not_publications() {
        assert!(decode(&Bytes::from_static(b"T42[]")).is_none());
        assert!(decode(&Bytes::from_static(b"P\x00\x01")).is_none());
        assert!(decode(&Bytes::new()).is_none());
    }
}
