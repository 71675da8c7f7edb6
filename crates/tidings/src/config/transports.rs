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
    /// Bytes of each connection's read buffer: allocated once, zero-filled on the
    /// first read, and the most one read takes; a larger message grows it. Default
    /// `1024` (tungstenite's own default is 128 KiB, which an idle connection would
    /// hold for nothing; see docs/benchmarks.md for the measured cost).
    pub read_buffer_size: usize,
    /// Bytes written frames may gather before a write; every batch is flushed
    /// at once anyway. Default `4096`.
    pub write_buffer_size: usize,
}

impl Default for WebsocketConfig {
    fn default() -> Self {
        Self {
            message_size_limit: 65_536,
            handler_prefix: "/connection/websocket".into(),
            write_timeout: Duration::from_secs(1),
            read_buffer_size: 1024,
            write_buffer_size: 4096,
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
}

impl Default for UniWebsocketConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            handler_prefix: "/connection/uni_websocket".into(),
            message_size_limit: 65_536,
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
