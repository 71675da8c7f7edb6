//! `POST /emulation`: commands of SSE, HTTP-streaming and long-poll sessions.
//!
//! The body is `{"session": ID, "node": UID, "data": COMMANDS}` as centrifuge-js
//! sends it; `data` is the newline-delimited command frame, as a JSON string (or,
//! for convenience, a JSON object holding one command). The frame goes to the
//! session's inbox and is answered on the session's stream.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::node::{Node, RouteError};

#[derive(Deserialize)]
struct EmulationRequest<'a> {
    #[serde(default)]
    session: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Why an emulation request body was refused (HTTP 400, with this message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The body is not a JSON object with the fields' types.
    #[error("expected {{\"session\": ..., \"data\": ...}}")]
    NotARequest,
    /// There is no `data`.
    #[error("data is required")]
    NoData,
    /// `data` is neither a string nor an object.
    #[error("data must be a string or an object")]
    BadData,
}

/// Reads an emulation request body: the session id and the command frame.
///
/// # Errors
/// [`RequestError`] for a body that is not such a request.
pub fn parse_request(body: &[u8]) -> Result<(String, String), RequestError> {
    // JSON is UTF-8. serde_json checks that only for the values it keeps, not for
    // the strings of fields it skips, so the whole body is checked first (found by
    // the emulation_request fuzz target).
    let body = std::str::from_utf8(body).map_err(|_| RequestError::NotARequest)?;
    let req: EmulationRequest<'_> =
        serde_json::from_str(body).map_err(|_| RequestError::NotARequest)?;
    let data = req.data.ok_or(RequestError::NoData)?;
    // A string is the command frame itself; an object is one command, re-encoded
    // on one line so the frame splits correctly.
    let frame = match serde_json::from_str::<String>(data.get()) {
        Ok(text) => text,
        Err(_) => match serde_json::from_str::<serde_json::Value>(data.get()) {
            Ok(value) if value.is_object() => value.to_string(),
            _ => return Err(RequestError::BadData),
        },
    };
    Ok((req.session, frame))
}

pub async fn handler(State(node): State<Node>, headers: HeaderMap, body: Bytes) -> Response {
    if !crate::origin::allowed(node.config(), &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if body.len() > node.config().emulation.max_request_body_size {
        return (StatusCode::PAYLOAD_TOO_LARGE, "emulation request too large").into_response();
    }
    let (session, frame) = match parse_request(&body) {
        Ok(parsed) => parsed,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match node.route(&session, frame) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(RouteError::NotFound) => (StatusCode::NOT_FOUND, "session not found").into_response(),
        Err(RouteError::Busy) => {
            (StatusCode::TOO_MANY_REQUESTS, "session is busy, retry").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_objects_are_frames() {
        let (session, frame) = parse_request(br#"{"session":"s","data":"{}\n{}"}"#).unwrap();
        assert_eq!((session.as_str(), frame.as_str()), ("s", "{}\n{}"));
        let (_, frame) = parse_request(br#"{"session":"s","data":{"id":1,"x":"a\nb"}}"#).unwrap();
        assert!(!frame.contains('\n'));
        assert_eq!(parse_request(b"{}"), Err(RequestError::NoData));
        assert_eq!(
            parse_request(br#"{"session":"s","data":1}"#),
            Err(RequestError::BadData)
        );
    }

    /// Regression: fuzz/artifacts crash-8d41294156892f8354457b1b963549630f138bed, a body
    /// with bytes that are not UTF-8 inside a skipped field, was accepted.
    #[test]
    fn a_body_that_is_not_utf8_is_refused_even_in_skipped_fields() {
        let body = b"{\"sessimn\":\"s\",\"node\":\"\xef\xef\xef\xef\xef+\xef\xef\xef\xef\xef\xef\xef\xefn\",\"data\":\"{\\\"-d\\nel\\\">\\\"x\\\"}}\\n{}\"}";
        assert_eq!(parse_request(body), Err(RequestError::NotARequest));
        let fixed = String::from_utf8_lossy(body).into_owned();
        assert!(parse_request(fixed.as_bytes()).is_ok());
    }
}
