//! Subjects, stream names and KV names of the NATS engine, and the token encoding
//! that makes any channel name safe inside them (see the table in [`super`]).

/// Longest stream name used as is; longer ones are hashed (stream names become
/// directory names in the server's file store).
const MAX_STREAM_NAME: usize = 200;

/// Encodes a name as one NATS token: ASCII letters, digits, `_` and `-` stay; every
/// other byte of the UTF-8 text becomes `=` and two upper-case hex digits (`.` →
/// `=2E`, `*` → `=2A`, `>` → `=3E`, space → `=20`, `=` → `=3D`). The empty name is
/// `=` alone. The result is a valid subject token, stream name part and KV key part,
/// and different names always give different tokens.
pub fn encode_token(name: &str) -> String {
    if name.is_empty() {
        return "=".into();
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push('=');
            out.push(char::from(HEX[(b >> 4) as usize]));
            out.push(char::from(HEX[(b & 0xF) as usize]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The name a token stands for, or `None` when it is not [`encode_token`]'s output.
pub fn decode_token(token: &str) -> Option<String> {
    if token == "=" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'=' {
            let hex = |c: u8| HEX.iter().position(|&h| h == c);
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            let v = (hi << 4 | lo) as u8;
            // A byte that would have been kept is never escaped.
            if v.is_ascii_alphanumeric() || v == b'_' || v == b'-' {
                return None;
            }
            out.push(v);
            i += 3;
        } else if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    if out.is_empty() {
        return None;
    }
    String::from_utf8(out).ok()
}

/// Subject and stream names of one engine prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// Fan-out subject of a channel.
    pub fn client(&self, channel: &str) -> String {
        format!("{}.client.{}", self.prefix, encode_token(channel))
    }

    /// The subject a channel's stream stores, for one epoch.
    pub fn history(&self, channel: &str, epoch: &str) -> String {
        format!("{}.history.{}.{epoch}", self.prefix, encode_token(channel))
    }

    /// Stream name of a channel's history.
    pub fn stream(&self, channel: &str) -> String {
        let plain = format!("{}_history_{}", self.prefix, encode_token(channel));
        if plain.len() <= MAX_STREAM_NAME {
            return plain;
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, channel.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{}_historyx_{hex}", self.prefix)
    }

    pub fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }

    pub fn node(&self, uid: &str) -> String {
        format!("{}.node.{}", self.prefix, encode_token(uid))
    }

    /// Where backends publish (see docs/engines.md).
    pub fn publish(&self) -> String {
        format!("{}.publish", self.prefix)
    }

    pub fn publish_queue(&self) -> String {
        format!("{}_publish", self.prefix)
    }

    /// A subject nobody listens on: a request to it comes back "no responders"
    /// after the server has handled everything sent before it.
    pub(crate) fn barrier(&self) -> String {
        format!("{}.barrier", self.prefix)
    }

    /// KV bucket of idempotency keys of channels without history.
    pub fn idempotency_bucket(&self) -> String {
        format!("{}_idempotency", self.prefix)
    }

    /// KV bucket of occupancy (key: the occupancy key's token).
    pub fn occupancy_bucket(&self) -> String {
        format!("{}_occupancy", self.prefix)
    }

    /// KV bucket of presence.
    pub fn presence_bucket(&self) -> String {
        format!("{}_presence", self.prefix)
    }

    /// KV bucket of epoch claims (key: the channel's stream name), which make the
    /// nodes that create a channel's stream at the same moment agree on its epoch.
    pub fn epoch_bucket(&self) -> String {
        format!("{}_epochs", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_safe_bytes_and_escape_the_rest() {
        assert_eq!(encode_token("news"), "news");
        assert_eq!(encode_token("a_b-C9"), "a_b-C9");
        assert_eq!(encode_token("a.b"), "a=2Eb");
        assert_eq!(encode_token("*"), "=2A");
        assert_eq!(encode_token(">"), "=3E");
        assert_eq!(encode_token("a b"), "a=20b");
        assert_eq!(encode_token("news:1"), "news=3A1");
        assert_eq!(encode_token("="), "=3D");
        assert_eq!(encode_token("é"), "=C3=A9");
        assert_eq!(encode_token(""), "=");
        assert_eq!(encode_token("\t\n"), "=09=0A");
    }

    #[test]
    fn tokens_decode_back_and_reject_foreign_text() {
        for name in [
            "news",
            "a.b",
            "*",
            ">",
            "a b",
            "news:1",
            "é☃",
            "",
            "=",
            "=3D",
            "a.*.>",
            "$JS.API",
            "x/y\\z",
            "~",
            "tab\there",
        ] {
            let token = encode_token(name);
            assert_eq!(decode_token(&token).as_deref(), Some(name), "{name:?}");
        }
        for bad in ["a.b", "*", ">", "a b", "=4", "=zz", "=41", "=C3", ""] {
            assert_eq!(decode_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tokens_are_single_subject_tokens_and_valid_names() {
        for name in [
            "a.b", "*", ">", "a b", "news:1", "é", "", "a.>", " ", "\u{0}",
        ] {
            let token = encode_token(name);
            assert!(!token.is_empty());
            assert!(token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'='));
        }
        // Distinct names, distinct tokens (the encoding is injective).
        let names = ["a.b", "a=2Eb", "a_2Eb", "a.b ", "a.b."];
        let tokens: std::collections::HashSet<_> = names.iter().map(|n| encode_token(n)).collect();
        assert_eq!(tokens.len(), names.len());
    }

    #[test]
    fn subjects_and_stream_names() {
        let n = Subjects::new("tidings");
        assert_eq!(n.client("chat:room.1"), "tidings.client.chat=3Aroom=2E1");
        assert_eq!(n.history("a.b", "EP"), "tidings.history.a=2Eb.EP");
        assert_eq!(n.stream("a.b"), "tidings_history_a=2Eb");
        assert_eq!(n.control(), "tidings.control");
        assert_eq!(n.publish(), "tidings.publish");
        let long = "x.".repeat(200);
        let s = n.stream(&long);
        assert!(s.len() <= MAX_STREAM_NAME && s.starts_with("tidings_historyx_"));
        assert_ne!(s, n.stream(&"y.".repeat(200)));
    }
}
