//! `POST /emulation` bodies (`transport::emulation::parse_request`), then the frame
//! they carry through the command decoder, as the session would read it. Nothing
//! may panic; an accepted body is JSON, and an object `data` becomes one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::Value;
use tidings::session::decode_command;
use tidings::transport::emulation::parse_request;
use tidings_protocol::codec::split_frame;

fuzz_target!(|data: &[u8]| {
    let Ok((_session, frame)) = parse_request(data) else {
        return;
    };
    assert!(serde_json::from_slice::<&RawValue>(data).is_ok());
    if let Ok(body) = serde_json::from_slice::<Value>(data) {
        if body.get("data").is_some_and(Value::is_object) {
            assert!(!frame.contains('\n'), "an object data spans lines");
        }
    }
    for line in split_frame(&frame) {
        let _ = decode_command(line);
    }
});
