//! The command decoder: a client's frame (WebSocket message, emulation `data`,
//! long-poll body) split into lines, each decoded into a `Command` exactly as the
//! session does. Nothing may panic; a decoded command encodes again and decodes to
//! the same method and id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::session::decode_command;
use tidings_protocol::codec::split_frame;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = std::str::from_utf8(data) else {
        return;
    };
    for line in split_frame(frame) {
        assert!(!line.contains('\n'), "a line holds a line break");
        assert!(!line.trim().is_empty(), "a blank line was handed out");
        let Ok(command) = decode_command(line) else {
            continue;
        };
        let method = command.method();
        let _ = command.is_pong();
        let again = serde_json::to_string(&command).expect("a decoded command encodes");
        let back = decode_command(&again).expect("a re-encoded command decodes");
        assert_eq!(back.method(), method);
        assert_eq!(back.id, command.id);
    }
});
