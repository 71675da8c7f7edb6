//! The application's bytes in a `bytes` field of the protocol: a publication's `data`,
//! an RPC's `data`, `conn_info`, …
//!
//! The two encodings carry those fields differently. Protobuf carries any bytes. JSON
//! carries the field as a raw JSON value inside the frame, so it can only carry bytes
//! that are JSON. [`Payload`] holds the bytes once, as shared [`Bytes`], and lets each
//! encoding take them as it needs:
//!
//! - From a JSON frame (deserialising), [`Payload::parse`] or [`Payload::from_value`]
//!   the bytes are known JSON, kept on one line, and serialise verbatim without a copy.
//! - From a Protobuf frame (or the server API's `b64data`), [`Payload::from_bytes`]
//!   keeps them exactly as sent. Protobuf clients get them back byte for byte.
//!
//! # A payload that is not JSON, seen by a JSON client
//!
//! Centrifugo does not translate: its FAQ says binary and JSON clients cannot share a
//! channel unless every payload is JSON, and its JSON encoder refuses a reply or push
//! whose payload is not valid JSON. The connection that should have received it is
//! closed with 3506 "inappropriate protocol" (centrifuge's hub does this to each JSON
//! subscriber of such a publication, its client to the receiver of such a reply).
//! There is no base64 fallback: Centrifugo declined one as a silent change of type.
//!
//! Tidings does the same. Serialising a payload whose bytes are not one JSON value
//! fails, [`Reply::try_to_json`](crate::Reply::try_to_json) returns [`NotJson`], and
//! [`NotJson::disconnect`] is the 3506 to close with. Bytes from a Protobuf client that
//! happen to be JSON (the common case: SDKs send JSON text as UTF-8) reach JSON clients
//! as that JSON, with line breaks between tokens turned into spaces as the JSON framing
//! requires (Centrifugo strips them; either way the value reads back the same).

use std::borrow::Cow;

use bytes::Bytes;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::Disconnect;

/// The bytes of a `bytes` field, JSON or not.
///
/// Cloning is cheap (a reference count). Two payloads are equal when their bytes are.
#[derive(Clone)]
pub struct Payload {
    bytes: Bytes,
    /// What is known of the bytes. Checked JSON is the JSON path's case and costs
    /// nothing more; unchecked bytes are validated when (and only if) they are
    /// serialised for a JSON client, as Centrifugo's encoder does.
    form: Form,
}

/// The name of [`Payload`] from when `bytes` fields could only hold JSON.
///
/// Callers in the server still use it; it goes once they say `Payload`.
pub type RawJson = Payload;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// Exactly one JSON value with no raw CR or LF.
    Json,
    /// Bytes as a Protobuf client sent them: maybe JSON, maybe not.
    Unchecked,
}

/// A payload whose bytes are not JSON, on its way to a JSON connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("payload is not JSON: only a Protobuf connection can receive it")]
pub struct NotJson;

impl NotJson {
    /// What Centrifugo closes the connection with: 3506 "inappropriate protocol".
    pub fn disconnect(self) -> Disconnect {
        Disconnect::inappropriate_protocol()
    }
}

impl Payload {
    /// Wraps bytes after checking that they hold exactly one JSON value.
    ///
    /// # Errors
    /// Returns the parser's error when the bytes are not one valid JSON value.
    pub fn parse(bytes: impl Into<Bytes>) -> Result<Self, serde_json::Error> {
        let bytes = bytes.into();
        serde_json::from_slice::<&RawValue>(&bytes)?;
        Ok(Self::json(one_line(bytes)))
    }

    /// Encodes any serialisable value as JSON.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Self {
        // Serialising a plain value into a Vec cannot fail for the types we use
        // (no maps with non-string keys); fall back to `null` rather than panic.
        Self::json(Bytes::from(
            serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()),
        ))
    }

    /// Keeps arbitrary bytes exactly as given (a Protobuf client's `data`, decoded
    /// `b64data`). They need not be JSON; see the module docs for what a JSON client
    /// then gets.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        Self {
            bytes: bytes.into(),
            form: Form::Unchecked,
        }
    }

    fn json(bytes: Bytes) -> Self {
        Self {
            bytes,
            form: Form::Json,
        }
    }

    /// The bytes: what a Protobuf connection sends. For a JSON payload, its text.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The bytes as text, for a payload known to be JSON (`null` when they are not
    /// UTF-8). Prefer [`Payload::to_json_text`] for bytes a Protobuf client sent.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes).unwrap_or("null")
    }

    /// The JSON text a JSON connection would carry: the bytes themselves when they are
    /// one JSON value on one line, a one-line copy when they hold line breaks.
    ///
    /// # Errors
    /// [`NotJson`] when the bytes are not one valid JSON value.
    pub fn to_json_text(&self) -> Result<Cow<'_, str>, NotJson> {
        let raw: &RawValue = serde_json::from_slice(&self.bytes).map_err(|_| NotJson)?;
        let text = raw.get();
        if self.form == Form::Json || !has_line_break(text.as_bytes()) {
            Ok(Cow::Borrowed(text))
        } else {
            Ok(Cow::Owned(text.replace(['\n', '\r'], " ")))
        }
    }

    /// True when a JSON connection can carry the payload. Known JSON answers at once;
    /// bytes from a Protobuf client are parsed to tell.
    pub fn is_json(&self) -> bool {
        self.form == Form::Json || serde_json::from_slice::<&RawValue>(&self.bytes).is_ok()
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True for no bytes (never produced by the JSON path).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Decodes the bytes as JSON into a typed value.
    ///
    /// # Errors
    /// Returns the parser's error when the bytes are not JSON or do not fit `T`.
    pub fn decode<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.bytes)
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Payload {}

impl std::hash::Hash for Payload {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.form, std::str::from_utf8(&self.bytes)) {
            (Form::Json, Ok(text)) => f.write_str(text),
            _ => write!(f, "{:?}", self.bytes),
        }
    }
}

impl Serialize for Payload {
    /// Writes the JSON value verbatim.
    ///
    /// # Errors
    /// Fails with [`NotJson`]'s message when the bytes are not one JSON value.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Borrowing parse: validates without allocating, then the serializer copies
        // the text verbatim. Only unchecked bytes with line breaks take a copy.
        let raw: &RawValue =
            serde_json::from_slice(&self.bytes).map_err(|_| S::Error::custom(NotJson))?;
        if self.form == Form::Json || !has_line_break(raw.get().as_bytes()) {
            return raw.serialize(serializer);
        }
        RawValue::from_string(raw.get().replace(['\n', '\r'], " "))
            .map_err(S::Error::custom)?
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw: Box<RawValue> = Deserialize::deserialize(deserializer)?;
        let text: Box<str> = raw.into();
        if text.is_empty() {
            return Err(D::Error::custom("empty JSON value"));
        }
        Ok(Self::json(one_line(Bytes::from(text.into_boxed_bytes()))))
    }
}

fn has_line_break(bytes: &[u8]) -> bool {
    bytes.iter().any(|b| *b == b'\n' || *b == b'\r')
}

/// Keeps a JSON value on one line.
///
/// Frames are newline-delimited and SSE events end at a line break, so a payload
/// must never carry a raw CR or LF. In valid JSON those bytes can only be whitespace
/// between tokens (inside strings they must be escaped), so turning them into spaces
/// changes nothing a JSON parser reads back. NUL cannot appear in valid JSON at all.
fn one_line(bytes: Bytes) -> Bytes {
    if !has_line_break(&bytes) {
        return bytes;
    }
    let mut owned = bytes.to_vec();
    for b in &mut owned {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    Bytes::from(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_between_tokens_become_spaces() {
        let raw = Payload::parse(&b"{\"a\":\r\n [1,\n2], \"s\": \"x\\ny\"}"[..]).unwrap();
        assert!(!raw.as_str().contains('\n') && !raw.as_str().contains('\r'));
        let v: serde_json::Value = raw.decode().unwrap();
        assert_eq!(v, serde_json::json!({"a": [1, 2], "s": "x\ny"}));
    }

    #[test]
    fn binary_bytes_are_kept_exactly_and_refuse_json() {
        let bytes = Bytes::from_static(&[0, 159, 146, 150, b'\n']);
        let payload = Payload::from_bytes(bytes.clone());
        assert_eq!(payload.as_bytes(), &bytes);
        assert!(!payload.is_json());
        assert_eq!(payload.to_json_text(), Err(NotJson));
        let err = serde_json::to_vec(&payload).unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");
        assert_eq!(NotJson.disconnect().code, 3506);
    }

    #[test]
    fn protobuf_bytes_that_are_json_serialise_on_one_line_but_keep_their_bytes() {
        let sent = &b"{\n  \"a\": 1\n}\n"[..];
        let payload = Payload::from_bytes(sent);
        assert!(payload.is_json());
        assert_eq!(payload.as_bytes().as_ref(), sent);
        assert_eq!(serde_json::to_string(&payload).unwrap(), "{   \"a\": 1 }");
        let plain = Payload::from_bytes(&b"[1,2]"[..]);
        assert_eq!(plain.to_json_text().unwrap(), Cow::Borrowed("[1,2]"));
    }

    #[test]
    fn equal_bytes_are_equal_payloads_whatever_their_origin() {
        assert_eq!(
            Payload::from_bytes(&b"{\"a\":1}"[..]),
            Payload::parse(&b"{\"a\":1}"[..]).unwrap()
        );
    }
}
