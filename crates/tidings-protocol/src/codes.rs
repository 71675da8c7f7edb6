//! Error codes (replies to commands), unsubscribe codes and disconnect codes.
//!
//! The numbers and their meaning are the Centrifugo protocol's; clients act on them
//! (token refresh on 109, reconnect on 3000–3499 and 4000–4499, stay down on 3500–3999
//! and 4500–4999), so they must never change.

use serde::{Deserialize, Serialize};

/// An error in a reply to a command. The connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub code: u32,
    pub message: String,
    /// Set when retrying the same command later may succeed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub temporary: bool,
}

impl Error {
    const fn fixed(code: u32, message: &'static str, temporary: bool) -> ErrorCode {
        ErrorCode {
            code,
            message,
            temporary,
        }
    }
}

/// A compile-time error code with its standard message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub code: u32,
    pub message: &'static str,
    pub temporary: bool,
}

impl From<ErrorCode> for Error {
    fn from(c: ErrorCode) -> Self {
        Error {
            code: c.code,
            message: c.message.to_string(),
            temporary: c.temporary,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

/// Something went wrong on the server; the client is not at fault.
pub const ERROR_INTERNAL: ErrorCode = Error::fixed(100, "internal server error", true);
/// The request needs credentials it does not carry.
pub const ERROR_UNAUTHORIZED: ErrorCode = Error::fixed(101, "unauthorized", false);
/// The channel's namespace is not configured.
pub const ERROR_UNKNOWN_CHANNEL: ErrorCode = Error::fixed(102, "unknown channel", false);
/// The configuration does not allow this client to do this.
pub const ERROR_PERMISSION_DENIED: ErrorCode = Error::fixed(103, "permission denied", false);
/// The command names no method this server handles.
pub const ERROR_METHOD_NOT_FOUND: ErrorCode = Error::fixed(104, "method not found", false);
/// The client is already subscribed to the channel.
pub const ERROR_ALREADY_SUBSCRIBED: ErrorCode = Error::fixed(105, "already subscribed", false);
/// A configured limit was reached.
pub const ERROR_LIMIT_EXCEEDED: ErrorCode = Error::fixed(106, "limit exceeded", false);
/// The request is malformed; retrying it unchanged cannot help.
pub const ERROR_BAD_REQUEST: ErrorCode = Error::fixed(107, "bad request", false);
/// The feature is not enabled for this channel or server.
pub const ERROR_NOT_AVAILABLE: ErrorCode = Error::fixed(108, "not available", false);
/// The connection token expired; SDKs fetch a new one and retry.
pub const ERROR_TOKEN_EXPIRED: ErrorCode = Error::fixed(109, "token expired", false);
/// The connection expired (no token involved).
pub const ERROR_EXPIRED: ErrorCode = Error::fixed(110, "expired", false);
/// Rate limited.
pub const ERROR_TOO_MANY_REQUESTS: ErrorCode = Error::fixed(111, "too many requests", true);
/// The stream no longer holds the requested range.
pub const ERROR_UNRECOVERABLE_POSITION: ErrorCode =
    Error::fixed(112, "unrecoverable position", false);

/// Unsubscribe push codes (2000–2999).
pub mod unsubscribe {
    /// Unsubscribed by the server API; the client does not resubscribe.
    pub const SERVER: (u32, &str) = (2000, "server unsubscribe");
    /// The stream position was lost; the client resubscribes.
    pub const INSUFFICIENT: (u32, &str) = (2500, "insufficient state");
    /// The subscription token expired; the client resubscribes with a new one.
    pub const EXPIRED: (u32, &str) = (2501, "subscription expired");
}

/// Why the server ended a connection, and whether the client should come back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    pub code: u32,
    pub reason: String,
    #[serde(default)]
    pub reconnect: bool,
}

impl Disconnect {
    /// A disconnect whose reconnect advice follows the code range rule the SDKs apply.
    pub fn new(code: u32, reason: impl Into<String>) -> Self {
        let reconnect = !((3500..4000).contains(&code) || (4500..5000).contains(&code));
        Disconnect {
            code,
            reason: reason.into(),
            reconnect,
        }
    }

    /// Closed without advice from the server (the transport went away).
    pub fn connection_closed() -> Self {
        Self::new(3000, "connection closed")
    }
    /// The node is shutting down; reconnect (to another node).
    pub fn shutdown() -> Self {
        Self::new(3001, "shutdown")
    }
    /// Internal server error; reconnect.
    pub fn server_error() -> Self {
        Self::new(3004, "internal server error")
    }
    /// The connection's credentials expired; reconnect with a new token.
    pub fn expired() -> Self {
        Self::new(3005, "connection expired")
    }
    /// A subscription's credentials expired.
    pub fn sub_expired() -> Self {
        Self::new(3006, "subscription expired")
    }
    /// The client read too slowly and its queue overflowed.
    pub fn slow() -> Self {
        Self::new(3008, "slow")
    }
    /// Writing to the client failed.
    pub fn write_error() -> Self {
        Self::new(3009, "write error")
    }
    /// The server could not keep a subscription's stream gap-free.
    pub fn insufficient_state() -> Self {
        Self::new(3010, "insufficient state")
    }
    /// The server asks for a reconnect.
    pub fn force_reconnect() -> Self {
        Self::new(3011, "force reconnect")
    }
    /// The client did not answer a ping in time.
    pub fn no_pong() -> Self {
        Self::new(3012, "no pong")
    }
    /// The client sent too many requests.
    pub fn too_many_requests() -> Self {
        Self::new(3013, "too many requests")
    }
    /// The connection token is invalid; do not reconnect with it.
    pub fn invalid_token() -> Self {
        Self::new(3500, "invalid token")
    }
    /// The client sent something the server cannot accept.
    pub fn bad_request() -> Self {
        Self::new(3501, "bad request")
    }
    /// The client connected but never sent a connect command.
    pub fn stale() -> Self {
        Self::new(3502, "stale")
    }
    /// The server asks the client not to reconnect.
    pub fn force_no_reconnect() -> Self {
        Self::new(3503, "force disconnect")
    }
    /// Too many connections.
    pub fn connection_limit() -> Self {
        Self::new(3504, "connection limit")
    }
    /// Too many channels for this connection.
    pub fn channel_limit() -> Self {
        Self::new(3505, "channel limit")
    }
    /// The protocol spoken is not the one expected.
    pub fn inappropriate_protocol() -> Self {
        Self::new(3506, "inappropriate protocol")
    }
    /// Not allowed to connect.
    pub fn permission_denied() -> Self {
        Self::new(3507, "permission denied")
    }
    /// The requested resource is not available.
    pub fn not_available() -> Self {
        Self::new(3508, "not available")
    }
    /// Too many protocol errors.
    pub fn too_many_errors() -> Self {
        Self::new(3509, "too many errors")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_advice_follows_code_ranges() {
        assert!(Disconnect::shutdown().reconnect);
        assert!(Disconnect::slow().reconnect);
        assert!(!Disconnect::bad_request().reconnect);
        assert!(!Disconnect::invalid_token().reconnect);
        assert!(Disconnect::new(4000, "app").reconnect);
        assert!(!Disconnect::new(4500, "app").reconnect);
    }
}
