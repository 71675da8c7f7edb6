//! SSE and HTTP-stream framing of publication data. A client's payload is read with
//! `RawJson::parse` (as every `data` field is), wrapped in a publication push and
//! framed as the streaming transports frame it. However hostile the payload, it must
//! come out as exactly one `data:` line (one line for HTTP streaming) with no CR or
//! LF inside, so it cannot end the event early or inject fields, and it must read
//! back as the same JSON.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tidings::transport::stream::{frame_item, Framing};
use tidings_protocol::{Publication, Push, RawJson, Reply};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = RawJson::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    assert!(!raw.as_bytes().iter().any(|b| *b == b'\n' || *b == b'\r'));
    let reply = Reply::push(Push {
        channel: "c".into(),
        publication: Some(Publication {
            data: Some(raw),
            offset: 1,
            ..Publication::default()
        }),
        ..Push::default()
    });
    let item = Bytes::from(reply.to_json());
    let original: Option<Value> = serde_json::from_slice(data).ok();
    for uni in [false, true] {
        let event = frame_item(&item, Framing::Sse, uni);
        assert!(event.starts_with(b"data: ") && event.ends_with(b"\n\n"));
        let body = &event[b"data: ".len()..event.len() - 2];
        assert!(
            !body.iter().any(|b| *b == b'\n' || *b == b'\r'),
            "a line break inside an SSE event"
        );
        let line = frame_item(&item, Framing::Lines, uni);
        assert!(line.ends_with(b"\n"));
        assert!(!line[..line.len() - 1]
            .iter()
            .any(|b| *b == b'\n' || *b == b'\r'));
        if let (Some(original), Ok(back)) = (&original, serde_json::from_slice::<Value>(body)) {
            let read = if uni {
                &back["pub"]["data"]
            } else {
                &back["push"]["pub"]["data"]
            };
            assert_eq!(read, original, "the payload changed on the way");
        }
    }
});
