//! `bytes` fields of the protocol (a publication's `data`, `conn_info`, …) travel as raw
//! JSON inside the frame in the JSON encoding. [`RawJson`] keeps them as shared bytes so a
//! payload is copied out of the incoming frame once and never re-parsed.

use bytes::Bytes;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A JSON value kept as its encoded text.
///
/// Cloning is cheap (a reference count). The bytes are always valid JSON when the value
/// was built by deserialising, by [`RawJson::from_value`] or by [`RawJson::parse`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RawJson(Bytes);

impl RawJson {
    /// Wraps bytes after checking that they hold exactly one JSON value.
    ///
    /// # Errors
    /// Returns the parser's error when the bytes are not one valid JSON value.
    pub fn parse(bytes: impl Into<Bytes>) -> Result<Self, serde_json::Error> {
        let bytes = bytes.into();
        serde_json::from_slice::<&RawValue>(&bytes)?;
        Ok(Self(one_line(bytes)))
    }

    /// Encodes any serialisable value.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Self {
        // Serialising a plain value into a Vec cannot fail for the types we use
        // (no maps with non-string keys); fall back to `null` rather than panic.
        Self(Bytes::from(
            serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()),
        ))
    }

    /// The encoded JSON text.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The encoded JSON text as a string slice.
    pub fn as_str(&self) -> &str {
        // Built only from valid JSON, which is UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("null")
    }

    /// Number of bytes of the encoded value.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty encoding (never produced by this crate).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Decodes into a typed value.
    ///
    /// # Errors
    /// Returns the parser's error when the JSON does not fit `T`.
    pub fn decode<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.0)
    }
}

impl std::fmt::Debug for RawJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Borrowing parse: validates without allocating, then the serializer copies the
        // text verbatim.
        let raw: &RawValue = serde_json::from_slice(&self.0).map_err(S::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw: Box<RawValue> = Deserialize::deserialize(deserializer)?;
        let text: Box<str> = raw.into();
        if text.is_empty() {
            return Err(D::Error::custom("empty JSON value"));
        }
        Ok(Self(one_line(Bytes::from(text.into_boxed_bytes()))))
    }
}

/// Keeps a JSON value on one line.
///
/// Frames are newline-delimited and SSE events end at a line break, so a payload
/// must never carry a raw CR or LF. In valid JSON those bytes can only be whitespace
/// between tokens (inside strings they must be escaped), so turning them into spaces
/// changes nothing a JSON parser reads back. NUL cannot appear in valid JSON at all.
fn one_line(bytes: Bytes) -> Bytes {
    if !bytes.iter().any(|b| *b == b'\n' || *b == b'\r') {
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
        let raw = RawJson::parse(&b"{\"a\":\r\n [1,\n2], \"s\": \"x\\ny\"}"[..]).unwrap();
        assert!(!raw.as_str().contains('\n') && !raw.as_str().contains('\r'));
        let v: serde_json::Value = raw.decode().unwrap();
        assert_eq!(v, serde_json::json!({"a": [1, 2], "s": "x\ny"}));
    }
}
