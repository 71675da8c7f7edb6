//! The long-poll transport's parsers and its hand-built answer, chosen by the first
//! byte:
//!
//! 0. the poll and close query, read into `PollParams` as axum's `Query` reads it;
//! 1. the opening frame check shared with the streams (`opening_frame_is_json`),
//!    against the frame splitter: what it lets through is JSON objects, line by line;
//! 2. the poll answer (`poll_body`) built from fuzz messages, a cursor and a size
//!    budget: it must be valid JSON whose `first`, `cursor`, `messages` and `close`
//!    agree with what was waiting.
#![no_main]

use std::collections::VecDeque;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tidings::transport::long_poll::{poll_body, PollParams};
use tidings::transport::opening_frame_is_json;
use tidings_protocol::codec::split_frame;
use tidings_protocol::{Disconnect, RawJson};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(query) = std::str::from_utf8(rest) {
                let _ = serde_urlencoded::from_str::<PollParams>(query);
            }
        }
        1 => {
            let Ok(frame) = std::str::from_utf8(rest) else {
                return;
            };
            if opening_frame_is_json(frame, false) {
                for line in split_frame(frame) {
                    assert!(line.trim_start().starts_with('{'));
                    assert!(serde_json::from_str::<&serde_json::value::RawValue>(line).is_ok());
                }
            }
            if opening_frame_is_json(frame, true) && !frame.trim().is_empty() {
                assert!(frame.trim_start().starts_with('{'));
            }
        }
        _ => poll_answer(rest),
    }
});

fn poll_answer(bytes: &[u8]) {
    if bytes.len() < 5 {
        return;
    }
    let cursor = u64::from(u16::from_le_bytes([bytes[0], bytes[1]]));
    let max_bytes = usize::from(u16::from_le_bytes([bytes[2], bytes[3]]));
    let close = (bytes[4] & 1 == 1).then(|| Disconnect::new(3000 + u32::from(bytes[4]), "x\"\n"));
    let mut items = VecDeque::new();
    let mut values = Vec::new();
    let mut seq = cursor;
    for chunk in bytes[5..].split(|b| *b == 0xff) {
        // Waiting messages are server-encoded JSON, one value each.
        let Ok(raw) = RawJson::parse(Bytes::copy_from_slice(chunk)) else {
            continue;
        };
        let Ok(value) = serde_json::from_slice::<Value>(raw.as_bytes()) else {
            continue;
        };
        seq += 1;
        items.push_back((seq, raw.as_bytes().clone()));
        values.push(value);
    }
    // The close is numbered right after the last waiting message.
    let close_seq = seq + 1;
    let body = poll_body(&items, cursor, max_bytes, close.as_ref().map(|d| (d, close_seq)));
    let answer: Value = serde_json::from_slice(&body).expect("a poll answer is JSON");
    let messages = answer["messages"].as_array().expect("messages is a list");
    if items.is_empty() {
        assert!(messages.is_empty());
        // With nothing waiting, the cursor names the close if there is one.
        let expected_cursor = if close.is_some() { close_seq } else { cursor };
        assert_eq!(answer["cursor"], expected_cursor);
        assert!(answer.get("first").is_none());
    } else {
        assert!(!messages.is_empty(), "a waiting message is always sent");
        assert!(messages.len() <= items.len());
        assert_eq!(messages[..], values[..messages.len()]);
        assert_eq!(answer["first"], items[0].0);
        let last_sent = items[messages.len() - 1].0;
        let with_close = messages.len() == items.len() && close.is_some();
        let expected_cursor = if with_close { close_seq } else { last_sent };
        assert_eq!(answer["cursor"], expected_cursor);
        if messages.len() > 1 {
            let sent: usize = items
                .iter()
                .take(messages.len())
                .map(|(_, i)| i.len())
                .sum();
            assert!(
                sent <= max_bytes,
                "{sent} bytes sent with a budget of {max_bytes}"
            );
        }
    }
    let all_sent = messages.len() == items.len();
    let close_sent = all_sent && close.is_some();
    assert_eq!(answer.get("close").is_some(), close_sent);
    if let Some(d) = &close {
        if close_sent {
            assert_eq!(answer["close"]["code"], d.code);
            assert_eq!(answer["close"]["reason"], d.reason.as_str());
        }
    }
}
