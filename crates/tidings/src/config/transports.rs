//! The transports' sections: `websocket`, `uni_websocket`, the streaming ones
//! (`sse`, `http_stream`, `uni_sse`, `uni_http_stream`, which share
//! [`StreamTransportConfig`]), `emulation` and `long_poll`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebsocketConfig {
    /// Largest incoming frame; larger ones close the connection with 1009.
    /// Default `65536`.
    pub message_size_limit: usize,
    /// Path of the WebSocket endpoint. Default `/connection/websocket`.
    pub handler_prefix: String,
    /// Give up on a write that takes longer. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// The most bytes one read system call takes (at most 16 KiB). No buffer is
    /// held between messages; a larger frame is read straight into a buffer of its
    /// size. Default `1024`.
    pub read_buffer_size: usize,
    /// Accepted for Centrifugo compatibility and unused: every batch of frames is
    /// written with one write from a buffer that lives only for that write.
    /// Default `4096`.
    pub write_buffer_size: usize,
    /// Offer permessage-deflate (RFC 7692) to clients that ask for it. Default
    /// `false`.
    pub compression: bool,
    /// zlib compression level, 0–9 (`-1`: zlib's default, 6). Default `1`.
    pub compression_level: i32,
    /// Messages shorter than this many bytes are sent uncompressed. Default `0`.
    pub compression_min_size: usize,
    /// Largest message a client may send after inflating it; larger ones close the
    /// connection with 1009. `0` means ten times `message_size_limit`. Default `0`.
    pub decompressed_message_size_limit: usize,
}

impl WebsocketConfig {
    /// The inflated-size limit in force.
    pub fn decompressed_limit(&self) -> usize {
        effective_decompressed(
            self.decompressed_message_size_limit,
            self.message_size_limit,
        )
    }
}

impl UniWebsocketConfig {
    /// The inflated-size limit in force.
    pub fn decompressed_limit(&self) -> usize {
        effective_decompressed(
            self.decompressed_message_size_limit,
            self.message_size_limit,
        )
    }
}

fn effective_decompressed(set: usize, message_limit: usize) -> usize {
    if set == 0 {
        message_limit.saturating_mul(10)
    } else {
        set
    }
}

impl Default for WebsocketConfig {
    fn default() -> Self {
        Self {
            message_size_limit: 65_536,
            handler_prefix: "/connection/websocket".into(),
            write_timeout: Duration::from_secs(1),
            read_buffer_size: 1024,
            write_buffer_size: 4096,
            compression: false,
            compression_level: 1,
            compression_min_size: 0,
            decompressed_message_size_limit: 0,
        }
    }
}

/// Options shared by the streaming transports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamTransportConfig {
    /// Serve the endpoint. Default `false` (the development profile turns it on).
    pub enabled: bool,
    /// Path of the endpoint; empty means the transport's standard path.
    pub handler_prefix: String,
    /// Largest connect request accepted in a POST body or in `cf_connect`.
    /// Default `65536`.
    pub max_request_body_size: usize,
}

impl Default for StreamTransportConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            handler_prefix: String::new(),
            max_request_body_size: 65_536,
        }
    }
}

impl StreamTransportConfig {
    /// The configured path, or `default` when none is set.
    pub fn path<'a>(&'a self, default: &'a str) -> &'a str {
        if self.handler_prefix.is_empty() {
            default
        } else {
            &self.handler_prefix
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UniWebsocketConfig {
    /// Serve the endpoint. Default `false` (the development profile turns it on).
    pub enabled: bool,
    /// Path of the endpoint. Default `/connection/uni_websocket`.
    pub handler_prefix: String,
    /// Largest incoming message (the connect request); larger ones close with 1009.
    /// Default `65536`.
    pub message_size_limit: usize,
    /// Offer permessage-deflate, as `websocket.compression`. Default `false`.
    pub compression: bool,
    /// As `websocket.compression_level`. Default `1`.
    pub compression_level: i32,
    /// As `websocket.compression_min_size`. Default `0`.
    pub compression_min_size: usize,
    /// As `websocket.decompressed_message_size_limit`. Default `0`.
    pub decompressed_message_size_limit: usize,
}

impl Default for UniWebsocketConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            handler_prefix: "/connection/uni_websocket".into(),
            message_size_limit: 65_536,
            compression: false,
            compression_level: 1,
            compression_min_size: 0,
            decompressed_message_size_limit: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EmulationConfig {
    /// Path that takes emulated commands. Default `/emulation`.
    pub handler_prefix: String,
    /// Largest command batch accepted. Default `65536`.
    pub max_request_body_size: usize,
}

impl Default for EmulationConfig {
    fn default() -> Self {
        Self {
            handler_prefix: "/emulation".into(),
            max_request_body_size: 65_536,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LongPollConfig {
    /// Serve the endpoint. Default `false` (the development profile turns it on).
    pub enabled: bool,
    /// Path of the endpoint. Default `/connection/long_poll`.
    pub handler_prefix: String,
    /// How long a poll waits for something to deliver. Default `25s`.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// A session with no poll in progress for this long is closed (presence
    /// removed, leave sent). Default `30s`.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Most bytes one poll response carries. Default `1048576`.
    pub max_response_size: usize,
}

impl Default for LongPollConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            handler_prefix: "/connection/long_poll".into(),
            hold: Duration::from_secs(25),
            session_timeout: Duration::from_secs(30),
            max_response_size: 1_048_576,
        }
    }
}
