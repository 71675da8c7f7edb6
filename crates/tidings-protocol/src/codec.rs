//! Newline-delimited framing of the JSON encoding.
//!
//! One transport frame carries one or more commands (client to server) or replies
//! (server to client), separated by `\n`. Empty lines are ignored, so a trailing newline
//! is harmless.

/// Iterates the non-empty lines of a frame.
pub fn split_frame(frame: &str) -> impl Iterator<Item = &str> {
    frame
        .split('\n')
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.trim().is_empty())
}

/// Appends `item` to `batch`, with a newline separator when the batch is not empty.
pub fn push_line(batch: &mut Vec<u8>, item: &[u8]) {
    if !batch.is_empty() {
        batch.push(b'\n');
    }
    batch.extend_from_slice(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_batched_commands_and_skips_blank_lines() {
        let lines: Vec<_> = split_frame("{\"id\":1}\n\n{\"id\":2}\r\n").collect();
        assert_eq!(lines, vec!["{\"id\":1}", "{\"id\":2}"]);
    }

    #[test]
    fn joins_with_newlines() {
        let mut batch = Vec::new();
        push_line(&mut batch, b"a");
        push_line(&mut batch, b"b");
        assert_eq!(batch, b"a\nb");
    }
}
