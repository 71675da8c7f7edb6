//! Socket.IO v5 packets: `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`,
//! and the binary attachments that follow a BINARY_EVENT or BINARY_ACK.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;

pub const CONNECT: u8 = 0;
pub const DISCONNECT: u8 = 1;
pub const EVENT: u8 = 2;
pub const ACK: u8 = 3;
pub const CONNECT_ERROR: u8 = 4;
pub const BINARY_EVENT: u8 = 5;
pub const BINARY_ACK: u8 = 6;

/// Ack ids past this are refused, so that they stay exact as JavaScript numbers.
const MAX_ACK_ID: u64 = (1 << 53) - 1;

/// How Tidings stores a binary argument in a publication, so that Centrifugo clients
/// get JSON and Socket.IO clients get a binary attachment back: `{"$binary": base64}`.
pub const BINARY_KEY: &str = "$binary";

/// One decoded packet. For binary packets, `data` still holds the placeholders until
/// [`Packet::fill`] puts the attachments in.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub kind: u8,
    pub nsp: String,
    pub id: Option<u64>,
    pub data: Option<Value>,
    /// Binary attachments announced (binary packets only).
    pub attachments: usize,
}

/// A packet that is not Socket.IO v5.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Socket.IO packet: {0}")]
pub struct Malformed(pub &'static str);

impl Packet {
    pub fn new(kind: u8, nsp: &str, data: Option<Value>) -> Self {
        Self {
            kind,
            nsp: nsp.to_string(),
            id: None,
            data,
            attachments: 0,
        }
    }

    /// Decodes a packet from its text form. `max_attachments` bounds what a binary
    /// packet may announce.
    ///
    /// # Errors
    /// [`Malformed`] when the text is not a valid packet of a type a client may send,
    /// or its payload does not fit the type.
    pub fn decode(text: &str, max_attachments: usize) -> Result<Packet, Malformed> {
        let bytes = text.as_bytes();
        let kind = match bytes.first() {
            Some(b @ b'0'..=b'6') => b - b'0',
            _ => return Err(Malformed("unknown packet type")),
        };
        let mut rest = &text[1..];
        let mut attachments = 0;
        if kind == BINARY_EVENT || kind == BINARY_ACK {
            let dash = rest
                .find('-')
                .ok_or(Malformed("missing attachment count"))?;
            let count = &rest[..dash];
            if count.is_empty() || count.len() > 6 || !count.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Malformed("bad attachment count"));
            }
            attachments = count
                .parse()
                .map_err(|_| Malformed("bad attachment count"))?;
            if attachments > max_attachments {
                return Err(Malformed("too many attachments"));
            }
            rest = &rest[dash + 1..];
        }
        let mut nsp = "/".to_string();
        if rest.starts_with('/') {
            match rest.find(',') {
                Some(comma) => {
                    nsp = rest[..comma].to_string();
                    rest = &rest[comma + 1..];
                }
                None => {
                    nsp = rest.to_string();
                    rest = "";
                }
            }
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let id = if digits > 0 {
            let id: u64 = rest[..digits]
                .parse()
                .map_err(|_| Malformed("bad ack id"))?;
            if id > MAX_ACK_ID {
                return Err(Malformed("bad ack id"));
            }
            rest = &rest[digits..];
            Some(id)
        } else {
            None
        };
        let data = if rest.is_empty() {
            None
        } else {
            Some(serde_json::from_str::<Value>(rest).map_err(|_| Malformed("bad JSON"))?)
        };
        let packet = Packet {
            kind,
            nsp,
            id,
            data,
            attachments,
        };
        packet.check()?;
        Ok(packet)
    }

    /// The payload rules per type, for packets a client sends.
    fn check(&self) -> Result<(), Malformed> {
        let ok = match self.kind {
            CONNECT => matches!(self.data, None | Some(Value::Object(_))),
            DISCONNECT => self.data.is_none(),
            EVENT | BINARY_EVENT => matches!(
                &self.data,
                Some(Value::Array(args)) if matches!(args.first(), Some(Value::String(_)))
            ),
            ACK | BINARY_ACK => self.id.is_some() && matches!(self.data, Some(Value::Array(_))),
            // Only servers send CONNECT_ERROR.
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(Malformed("payload does not fit the packet type"))
        }
    }

    /// Replaces the `{"_placeholder":true,"num":n}` objects with the attachments, as
    /// `{"$binary": base64}` values.
    ///
    /// # Errors
    /// [`Malformed`] when a placeholder names an attachment that is not there.
    pub fn fill(&mut self, attachments: &[Bytes]) -> Result<(), Malformed> {
        if let Some(data) = self.data.as_mut() {
            fill_value(data, attachments)?;
        }
        Ok(())
    }

    /// Encodes the packet; binary values (`{"$binary": base64}`) become attachments,
    /// returned after the text.
    pub fn encode(mut self) -> (String, Vec<Bytes>) {
        let mut attachments = Vec::new();
        if let Some(data) = self.data.as_mut() {
            extract_binary(data, &mut attachments);
        }
        if !attachments.is_empty() {
            self.kind = match self.kind {
                EVENT => BINARY_EVENT,
                ACK => BINARY_ACK,
                k => k,
            };
        }
        let mut out = String::new();
        out.push(char::from(b'0' + self.kind));
        if self.kind == BINARY_EVENT || self.kind == BINARY_ACK {
            out.push_str(&attachments.len().to_string());
            out.push('-');
        }
        if self.nsp != "/" {
            out.push_str(&self.nsp);
            out.push(',');
        }
        if let Some(id) = self.id {
            out.push_str(&id.to_string());
        }
        if let Some(data) = &self.data {
            out.push_str(&data.to_string());
        }
        (out, attachments)
    }
}

fn fill_value(value: &mut Value, attachments: &[Bytes]) -> Result<(), Malformed> {
    match value {
        Value::Object(map) => {
            if map.get("_placeholder") == Some(&Value::Bool(true)) {
                let num = map
                    .get("num")
                    .and_then(Value::as_u64)
                    .ok_or(Malformed("bad placeholder"))?;
                let bytes = usize::try_from(num)
                    .ok()
                    .and_then(|n| attachments.get(n))
                    .ok_or(Malformed("placeholder without attachment"))?;
                let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                *value = serde_json::json!({ BINARY_KEY: encoded });
                return Ok(());
            }
            for v in map.values_mut() {
                fill_value(v, attachments)?;
            }
        }
        Value::Array(items) => {
            for v in items {
                fill_value(v, attachments)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Turns `{"$binary": base64}` values into placeholders, collecting the bytes.
fn extract_binary(value: &mut Value, out: &mut Vec<Bytes>) {
    match value {
        Value::Object(map) => {
            if map.len() == 1 {
                if let Some(Value::String(b64)) = map.get(BINARY_KEY) {
                    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) {
                        let num = out.len();
                        out.push(Bytes::from(bytes));
                        *value = serde_json::json!({"_placeholder": true, "num": num});
                        return;
                    }
                }
            }
            for v in map.values_mut() {
                extract_binary(v, out);
            }
        }
        Value::Array(items) => {
            for v in items {
                extract_binary(v, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_namespace_ack_id_and_data() {
        let p = Packet::decode(r#"2/chat,12["hello",1]"#, 10).unwrap();
        assert_eq!(p.kind, EVENT);
        assert_eq!(p.nsp, "/chat");
        assert_eq!(p.id, Some(12));
        assert_eq!(p.data, Some(json!(["hello", 1])));
        let p = Packet::decode(r#"0{"token":"x"}"#, 10).unwrap();
        assert_eq!((p.kind, p.nsp.as_str()), (CONNECT, "/"));
        let p = Packet::decode("1/admin,", 10).unwrap();
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.data),
            (DISCONNECT, "/admin", None)
        );
    }

    #[test]
    fn binary_events_carry_their_attachments_as_base64_values() {
        let mut p = Packet::decode(r#"51-["up",{"_placeholder":true,"num":0}]"#, 10).unwrap();
        assert_eq!(p.attachments, 1);
        p.fill(&[Bytes::from_static(&[1, 2, 3])]).unwrap();
        assert_eq!(p.data, Some(json!(["up", {"$binary": "AQID"}])));
        // And back: the server sends them as attachments again.
        let (text, bins) = p.encode();
        assert_eq!(text, r#"51-["up",{"_placeholder":true,"num":0}]"#);
        assert_eq!(bins, vec![Bytes::from_static(&[1, 2, 3])]);
    }

    #[test]
    fn refuses_what_a_client_may_not_send() {
        for bad in [
            "",
            "9",
            "4{}",
            r#"2{"not":"array"}"#,
            "2[]",
            "2[1]",
            r#"3["no id"]"#,
            r#"0["array"]"#,
            "1{}",
            "2[\"x\"",
            r#"511-["x"]"#,
            r#"5x-["x"]"#,
            r#"29007199254740993["x"]"#,
        ] {
            assert!(Packet::decode(bad, 10).is_err(), "{bad:?} was accepted");
        }
        let mut p = Packet::decode(r#"51-["x",{"_placeholder":true,"num":3}]"#, 10).unwrap();
        assert!(p.fill(&[Bytes::new()]).is_err());
    }

    #[test]
    fn encodes_the_namespace_only_when_not_the_main_one() {
        let (text, _) = Packet::new(CONNECT, "/", Some(json!({"sid": "a"}))).encode();
        assert_eq!(text, r#"0{"sid":"a"}"#);
        let mut ack = Packet::new(ACK, "/chat", Some(json!([{"ok": true}])));
        ack.id = Some(7);
        assert_eq!(ack.encode().0, r#"3/chat,7[{"ok":true}]"#);
    }
}
