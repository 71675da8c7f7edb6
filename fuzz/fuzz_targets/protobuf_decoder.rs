//! The Protobuf frame decoder: any bytes as a client's command frame (binary
//! WebSocket message, emulation `data`), read one command at a time as a session
//! does and all at once; the same bytes as a reply frame and as an emulation body.
//! Nothing may panic; the limits hold; a decoded command encodes again and decodes
//! to the same id, method and payload bytes; a decoded reply that encodes as JSON
//! is JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_protocol::proto::{self, FrameLimits};
use tidings_protocol::{Command, Payload};

/// Small limits, so the fuzzer reaches them.
const LIMITS: FrameLimits = FrameLimits {
    max_messages: 16,
    max_message_len: 512,
};

fn data(payload: &Option<Payload>) -> Option<&[u8]> {
    payload.as_ref().map(|p| p.as_bytes().as_ref())
}

fn payload_bytes(command: &Command) -> Option<&[u8]> {
    if let Some(r) = &command.publish {
        return data(&r.data);
    }
    if let Some(r) = &command.rpc {
        return data(&r.data);
    }
    if let Some(r) = &command.send {
        return data(&r.data);
    }
    command.connect.as_ref().and_then(|r| data(&r.data))
}

fuzz_target!(|data: &[u8]| {
    let one_by_one: Vec<_> = proto::commands(data, LIMITS).collect();
    assert!(one_by_one.len() <= LIMITS.max_messages + 1);
    // Only the last item may be an error: the iterator stops after one.
    if let Some(pos) = one_by_one.iter().position(Result::is_err) {
        assert_eq!(pos, one_by_one.len() - 1, "items after an error");
    }
    match proto::decode_frame(data, LIMITS) {
        Ok(commands) => {
            assert!(one_by_one.iter().all(Result::is_ok));
            assert_eq!(commands.len(), one_by_one.len());
            assert!(commands.len() <= LIMITS.max_messages);
            let mut again = Vec::new();
            for command in &commands {
                proto::encode_command(command, &mut again);
            }
            let back = proto::decode_frame(&again, FrameLimits::default())
                .expect("a re-encoded frame decodes");
            assert_eq!(back.len(), commands.len());
            for (a, b) in commands.iter().zip(&back) {
                assert_eq!(a.id, b.id);
                assert_eq!(a.method(), b.method());
                assert_eq!(payload_bytes(a), payload_bytes(b));
            }
        }
        Err(err) => {
            assert!(one_by_one.last().is_some_and(Result::is_err));
            assert_eq!(err.disconnect().code, 3501);
        }
    }

    if let Ok(replies) = proto::decode_replies(data, LIMITS) {
        for reply in &replies {
            let frame = proto::reply_frame(reply);
            let back = proto::decode_replies(&frame, FrameLimits::default())
                .expect("a re-encoded reply decodes");
            assert_eq!(back.len(), 1);
            assert_eq!(back[0].id, reply.id);
            if let Ok(json) = reply.try_to_json() {
                serde_json::from_slice::<serde_json::Value>(&json)
                    .expect("a reply that encodes as JSON is JSON");
                assert!(!json.contains(&b'\n'), "a JSON reply holds a line break");
            }
        }
    }

    let _ = proto::decode_emulation_request(data, LIMITS);
});
