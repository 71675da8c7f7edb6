//! Engine.IO v4 framing: packet types, the polling payload (packets joined by the
//! record separator, binary as `b` + base64), the handshake and the error bodies.

use base64::Engine as _;
use bytes::Bytes;

/// Separates packets in an HTTP long-polling payload.
pub const RECORD_SEPARATOR: char = '\x1e';

/// A packet a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPacket {
    /// `1`: the client closes the session.
    Close,
    /// `2` with its data: only `2probe` during an upgrade is expected.
    Ping(String),
    /// `3` with its data: the answer to our ping (or `3probe`).
    Pong(String),
    /// `4`: a text message (a Socket.IO packet).
    Message(String),
    /// A binary message (a Socket.IO attachment).
    Binary(Bytes),
    /// `5`: the client completes the upgrade to WebSocket.
    Upgrade,
    /// `6`: nothing.
    Noop,
}

/// A packet that is not Engine.IO v4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed Engine.IO packet")]
pub struct Malformed;

/// Decodes one text packet (a WebSocket text message, or one record of a payload).
///
/// # Errors
/// [`Malformed`] for an empty packet or an unknown type.
pub fn decode_text(packet: &str) -> Result<ClientPacket, Malformed> {
    let mut chars = packet.chars();
    let kind = chars.next().ok_or(Malformed)?;
    let rest = chars.as_str();
    Ok(match kind {
        '1' if rest.is_empty() => ClientPacket::Close,
        '2' => ClientPacket::Ping(rest.to_string()),
        '3' => ClientPacket::Pong(rest.to_string()),
        '4' => ClientPacket::Message(rest.to_string()),
        '5' if rest.is_empty() => ClientPacket::Upgrade,
        '6' if rest.is_empty() => ClientPacket::Noop,
        _ => return Err(Malformed),
    })
}

/// Decodes an HTTP long-polling payload into its packets.
///
/// # Errors
/// [`Malformed`] when any record is malformed (bad type, bad base64).
pub fn decode_payload(body: &str) -> Result<Vec<ClientPacket>, Malformed> {
    body.split(RECORD_SEPARATOR)
        .map(|record| match record.strip_prefix('b') {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(|bytes| ClientPacket::Binary(Bytes::from(bytes)))
                .map_err(|_| Malformed),
            None => decode_text(record),
        })
        .collect()
}

/// What the server writes: a text packet (type digit included) or a binary message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Bytes),
}

/// Joins frames into one long-polling response body.
pub fn encode_payload(frames: &[Frame]) -> String {
    let mut out = String::new();
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            out.push(RECORD_SEPARATOR);
        }
        match frame {
            Frame::Text(text) => out.push_str(text),
            Frame::Binary(bytes) => {
                out.push('b');
                base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut out);
            }
        }
    }
    out
}

/// The open packet's JSON.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake<'a> {
    pub sid: &'a str,
    pub upgrades: &'a [&'a str],
    pub ping_interval: u64,
    pub ping_timeout: u64,
    pub max_payload: usize,
}

impl Handshake<'_> {
    /// The open packet: `0` and the JSON.
    pub fn packet(&self) -> String {
        format!(
            "0{}",
            serde_json::to_string(self).expect("the handshake always serialises")
        )
    }
}

/// The standard Engine.IO request errors, with the code and message of the JSON body
/// every Engine.IO server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    UnknownTransport,
    UnknownSid,
    BadHandshakeMethod,
    BadRequest,
    Forbidden,
    UnsupportedProtocolVersion,
}

impl RequestError {
    pub fn code(self) -> u8 {
        match self {
            RequestError::UnknownTransport => 0,
            RequestError::UnknownSid => 1,
            RequestError::BadHandshakeMethod => 2,
            RequestError::BadRequest => 3,
            RequestError::Forbidden => 4,
            RequestError::UnsupportedProtocolVersion => 5,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            RequestError::UnknownTransport => "Transport unknown",
            RequestError::UnknownSid => "Session ID unknown",
            RequestError::BadHandshakeMethod => "Bad handshake method",
            RequestError::BadRequest => "Bad request",
            RequestError::Forbidden => "Forbidden",
            RequestError::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    /// 403 for a forbidden request, 400 for everything else.
    pub fn status(self) -> axum::http::StatusCode {
        match self {
            RequestError::Forbidden => axum::http::StatusCode::FORBIDDEN,
            _ => axum::http::StatusCode::BAD_REQUEST,
        }
    }

    pub fn body(self) -> String {
        serde_json::json!({"code": self.code(), "message": self.message()}).to_string()
    }
}

impl axum::response::IntoResponse for RequestError {
    fn into_response(self) -> axum::response::Response {
        (
            self.status(),
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.body(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_records_split_on_the_separator_and_decode_base64() {
        let packets = decode_payload("4hello\x1ebAQIDBA==\x1e3\x1e1").unwrap();
        assert_eq!(
            packets,
            vec![
                ClientPacket::Message("hello".into()),
                ClientPacket::Binary(Bytes::from_static(&[1, 2, 3, 4])),
                ClientPacket::Pong(String::new()),
                ClientPacket::Close,
            ]
        );
    }

    #[test]
    fn unknown_types_and_bad_base64_are_malformed() {
        assert_eq!(decode_payload("abc"), Err(Malformed));
        assert_eq!(decode_payload(""), Err(Malformed));
        assert_eq!(decode_payload("4ok\x1eb!!!"), Err(Malformed));
        assert_eq!(decode_text("1x"), Err(Malformed));
        assert_eq!(decode_text("7"), Err(Malformed));
    }

    #[test]
    fn frames_join_into_one_body() {
        let body = encode_payload(&[
            Frame::Text("4hello".into()),
            Frame::Binary(Bytes::from_static(&[1, 2, 3, 4])),
        ]);
        assert_eq!(body, "4hello\x1ebAQIDBA==");
    }

    #[test]
    fn error_bodies_are_the_standard_ones() {
        assert_eq!(
            RequestError::UnknownSid.body(),
            r#"{"code":1,"message":"Session ID unknown"}"#
        );
        assert_eq!(
            RequestError::Forbidden.status(),
            axum::http::StatusCode::FORBIDDEN
        );
    }
}
