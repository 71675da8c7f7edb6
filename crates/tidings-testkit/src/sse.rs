//! A Server-Sent Events parser that follows the WHATWG `EventSource`
//! processing model, so tests read a stream exactly as a browser would.
//!
//! The rules it applies:
//!
//! - A UTF-8 byte order mark at the very start of the stream is dropped.
//! - Lines end with CRLF, LF or a lone CR, and a CRLF split across two
//!   chunks still counts as one line end.
//! - A blank line dispatches the event being built; a line starting with `:`
//!   is a comment.
//! - `field:value` (one leading space of the value removed) or a bare
//!   `field` (empty value). `data` appends the value and a LF, `event` sets
//!   the type, `id` sets the last event id unless the value holds NUL,
//!   `retry` is honoured only when all digits; other names are ignored.
//! - On dispatch an empty data buffer means no event; otherwise the final LF
//!   is dropped. A half-built event at the end of the stream is discarded.
//!
//! Beyond what a browser exposes, it counts every field name it saw, so a
//! test can prove that a server never emitted `id:` or `event:` at all.

use std::collections::{BTreeMap, VecDeque};

/// The UTF-8 encoding of U+FEFF.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event, as `EventSource` would hand it to a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field, or `message` when none was given.
    pub event_type: String,
    /// The data lines joined with LF.
    pub data: String,
    /// The last event id in force when the event was dispatched.
    pub last_event_id: String,
    /// How many `data` lines made up this event.
    pub data_lines: usize,
    /// Names of every field line between the previous blank line and this
    /// event's, in order (comments are not fields).
    pub fields: Vec<String>,
}

/// An incremental parser: feed it chunks as they arrive, pop events.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the line being read, without its terminator.
    line: Vec<u8>,
    /// The previous chunk ended in CR, so a LF that starts the next chunk
    /// belongs to the same line end.
    after_cr: bool,
    /// Whether the first bytes of the stream were checked for a BOM.
    bom_checked: bool,
    /// Bytes held back at the start while fewer than a BOM's length arrived.
    head: Vec<u8>,
    /// The data buffer of the event being built.
    data: String,
    /// Number of `data` lines in that buffer.
    data_lines: usize,
    /// The event type buffer.
    event_type: String,
    /// The last event id buffer; it survives dispatches, as the spec says.
    last_event_id: String,
    /// Field names since the last blank line.
    fields: Vec<String>,
    /// The reconnection time from the last valid `retry` field.
    retry: Option<u64>,
    /// How often each field name occurred over the whole stream.
    field_counts: BTreeMap<String, usize>,
    /// Comment lines seen.
    comments: usize,
    /// Dispatched events not popped yet.
    events: VecDeque<SseEvent>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.bom_checked {
            self.head.extend_from_slice(chunk);
            if self.head.len() < BOM.len() && BOM.starts_with(&self.head) {
                return;
            }
            self.bom_checked = true;
            let head = std::mem::take(&mut self.head);
            let body = head.strip_prefix(BOM).unwrap_or(&head);
            self.feed_lines(body);
            return;
        }
        self.feed_lines(chunk);
    }

    fn feed_lines(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        if self.after_cr {
            self.after_cr = false;
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
        }
        while let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            self.line.extend_from_slice(&rest[..end]);
            let line = std::mem::take(&mut self.line);
            self.process_line(&line);
            if rest[end] == b'\r' {
                match rest.get(end + 1) {
                    Some(b'\n') => rest = &rest[end + 2..],
                    Some(_) => rest = &rest[end + 1..],
                    None => {
                        self.after_cr = true;
                        rest = &[];
                    }
                }
            } else {
                rest = &rest[end + 1..];
            }
        }
        self.line.extend_from_slice(rest);
    }

    fn process_line(&mut self, line: &[u8]) {
        // Line ends are ASCII, so a complete line holds whole UTF-8 sequences
        // when the stream is valid; invalid bytes become U+FFFD like a
        // browser's decoder makes them.
        let line = String::from_utf8_lossy(line);
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line.starts_with(':') {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        *self.field_counts.entry(field.to_owned()).or_default() += 1;
        self.fields.push(field.to_owned());
        match field {
            "event" => self.event_type = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.data_lines += 1;
            }
            "id" if !value.contains('\0') => self.last_event_id = value.to_owned(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        let fields = std::mem::take(&mut self.fields);
        let data_lines = std::mem::take(&mut self.data_lines);
        let event_type = std::mem::take(&mut self.event_type);
        let mut data = std::mem::take(&mut self.data);
        if data.is_empty() {
            return;
        }
        data.pop();
        self.events.push_back(SseEvent {
            event_type: if event_type.is_empty() {
                "message".to_owned()
            } else {
                event_type
            },
            data,
            last_event_id: self.last_event_id.clone(),
            data_lines,
            fields,
        });
    }

    /// The next dispatched event, if any.
    pub fn pop(&mut self) -> Option<SseEvent> {
        self.events.pop_front()
    }

    /// Dispatched events waiting to be popped.
    pub fn pending(&self) -> usize {
        self.events.len()
    }

    /// How often each field name occurred so far (`data`, `id`, …).
    pub fn field_counts(&self) -> &BTreeMap<String, usize> {
        &self.field_counts
    }

    /// Comment lines seen so far.
    pub fn comments(&self) -> usize {
        self.comments
    }

    /// The reconnection time the stream asked for, if any.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Whether part of a line or an undispatched event is buffered (at the
    /// end of a stream, that part is discarded).
    pub fn has_partial_event(&self) -> bool {
        !self.line.is_empty() || !self.data.is_empty() || !self.fields.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> (Vec<SseEvent>, SseParser) {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in chunks {
            parser.feed(chunk);
            while let Some(event) = parser.pop() {
                events.push(event);
            }
        }
        (events, parser)
    }

    fn datas(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn every_line_ending_counts() {
        let (events, _) = parse_chunks(&[b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d\n"]);
        assert_eq!(datas(&events), ["a", "b", "c"]);
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        let (events, parser) = parse_chunks(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(datas(&events), ["a\nb"]);
        assert_eq!(events[0].data_lines, 2);
        assert!(!parser.has_partial_event());
    }

    #[test]
    fn one_leading_space_is_removed_and_colons_stay() {
        let (events, _) = parse_chunks(&[b"data:x\ndata:  y\ndata: a: b\ndata\n\n"]);
        assert_eq!(datas(&events), ["x\n y\na: b\n"]);
    }

    #[test]
    fn comments_event_id_and_retry() {
        let (events, parser) = parse_chunks(&[
            b": hello\nevent: custom\nid: 7\nretry: 10x\nretry: 15\ndata: 1\n\ndata: 2\n\n",
        ]);
        assert_eq!(events[0].event_type, "custom");
        assert_eq!(events[0].last_event_id, "7");
        assert_eq!(events[1].event_type, "message");
        assert_eq!(events[1].last_event_id, "7", "the id buffer persists");
        assert_eq!(parser.retry(), Some(15));
        assert_eq!(parser.comments(), 1);
        assert_eq!(parser.field_counts()["retry"], 2);
        assert_eq!(events[0].fields, ["event", "id", "retry", "retry", "data"]);
    }

    #[test]
    fn an_id_with_nul_is_ignored() {
        let (events, _) = parse_chunks(&[b"id: 1\n\nid: a\0b\ndata: x\n\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].last_event_id, "1");
    }

    #[test]
    fn empty_data_dispatches_nothing_and_the_tail_is_discarded() {
        let (events, parser) = parse_chunks(&[b"event: e\n\ndata: kept\n\ndata: lost"]);
        assert_eq!(datas(&events), ["kept"]);
        assert_eq!(events[0].event_type, "message");
        assert!(parser.has_partial_event());
    }

    #[test]
    fn bom_is_dropped_once_even_when_split() {
        let (events, parser) =
            parse_chunks(&[b"\xEF", b"\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n"]);
        // A second BOM is part of the field name, which is then unknown.
        assert_eq!(datas(&events), ["a"]);
        assert_eq!(parser.field_counts().get("\u{feff}data"), Some(&1));
    }

    #[test]
    fn utf8_split_between_chunks_survives() {
        let text = "data: é✓\n\n".as_bytes();
        let (events, _) = parse_chunks(&[&text[..7], &text[7..]]);
        assert_eq!(datas(&events), ["é✓"]);
    }
}
