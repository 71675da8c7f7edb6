//! A unidirectional Server-Sent Events subscriber (`/connection/uni_sse`).
//!
//! The connect request travels in the `cf_connect` query parameter; channels named
//! in its `subs` are subscribed by the server. Events are `data: <json>` lines; this
//! client hands back the body's bytes cut at event boundaries, so a caller scanning
//! for payload fields never sees half an event.

use bytes::{Bytes, BytesMut};

use crate::{Error, Result};

/// One SSE connection.
pub struct SseClient {
    response: reqwest::Response,
    buf: BytesMut,
}

impl SseClient {
    /// Opens `base` (e.g. `http://127.0.0.1:8000/connection/uni_sse`) with a
    /// connect request subscribing to `channel`.
    pub async fn connect(http: &reqwest::Client, base: &str, channel: &str) -> Result<SseClient> {
        let connect = serde_json::json!({ "subs": { channel: {} } }).to_string();
        let response = http
            .get(base)
            .query(&[("cf_connect", connect)])
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(Error::Refused(format!("HTTP {}", response.status())));
        }
        Ok(SseClient {
            response,
            buf: BytesMut::new(),
        })
    }

    /// The next run of complete events (ending with a blank line), or `None` when
    /// the server ended the stream.
    pub async fn recv(&mut self) -> Result<Option<Bytes>> {
        loop {
            if let Some(end) = last_event_end(&self.buf) {
                return Ok(Some(self.buf.split_to(end).freeze()));
            }
            match self.response.chunk().await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }
}

/// The end of the last complete event in `buf` (just past its `\n\n`).
fn last_event_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).rposition(|w| w == b"\n\n").map(|p| p + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_at_blank_lines() {
        assert_eq!(last_event_end(b"data: {}\n\ndata: {\"a\""), Some(10));
        assert_eq!(last_event_end(b"data: {}\n"), None);
    }
}
