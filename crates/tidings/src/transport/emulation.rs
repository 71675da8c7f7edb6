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

pub async fn handler(State(node): State<Node>, headers: HeaderMap, body: Bytes) -> Response {
    if !crate::origin::allowed(node.config(), &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if body.len() > node.config().emulation.max_request_body_size {
        return (StatusCode::PAYLOAD_TOO_LARGE, "emulation request too large").into_response();
    }
    let req: EmulationRequest<'_> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                "expected {\"session\": ..., \"data\": ...}",
            )
                .into_response()
        }
    };
    let Some(data) = req.data else {
        return (StatusCode::BAD_REQUEST, "data is required").into_response();
    };
    // A string is the command frame itself; an object is one command, re-encoded
    // on one line so the frame splits correctly.
    let frame = match serde_json::from_str::<String>(data.get()) {
        Ok(text) => text,
        Err(_) => match serde_json::from_str::<serde_json::Value>(data.get()) {
            Ok(value) if value.is_object() => value.to_string(),
            _ => {
                return (
                    StatusCode::BAD_REQUEST,
                    "data must be a string or an object",
                )
                    .into_response()
            }
        },
    };
    match node.route(&req.session, frame) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(RouteError::NotFound) => (StatusCode::NOT_FOUND, "session not found").into_response(),
        Err(RouteError::Busy) => {
            (StatusCode::TOO_MANY_REQUESTS, "session is busy, retry").into_response()
        }
    }
}
