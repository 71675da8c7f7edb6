//! `POST /emulation`: commands of SSE, HTTP-streaming and long-poll sessions.
//!
//! The body is `{"session": ID, "node": UID, "data": COMMANDS}` as centrifuge-js
//! sends it; `data` is the newline-delimited command frame, as a JSON string (or,
//! for convenience, a JSON object holding one command). A Protobuf session's
//! client sends the same three fields as a Protobuf `EmulationRequest` with
//! `Content-Type: application/octet-stream`, `data` being its binary command frame.
//! The frame goes to the session's inbox and is answered on the session's stream.
//!
//! The session may live on another node of the cluster (a load balancer without
//! sticky sessions sends the POST anywhere). Then `node` names it, and the frame
//! travels there through the broker; that node's answer (204, 404, 429) is this
//! node's answer.

use axum::body::Bytes;
use axum::extract::State;
use base64::Engine as _;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{EmulatedSessions, RouteError};
use crate::node::{ForwardError, Node};
use crate::session::ClientFrame;

/// The kind of the node-to-node request that hands a frame to a session another
/// node holds.
const FORWARDED_FRAME: &str = "emulation.frame";

/// A frame for a session of the asked node: text, or a Protobuf frame in base64.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ForwardedFrame {
    session: String,
    #[serde(default)]
    frame: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    binary: Option<String>,
}

impl ForwardedFrame {
    fn new(session: String, frame: ClientFrame) -> Self {
        match frame {
            ClientFrame::Text(frame) => Self {
                session,
                frame,
                binary: None,
            },
            ClientFrame::Binary(bytes) => Self {
                session,
                frame: String::new(),
                binary: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            },
        }
    }

    fn into_frame(self) -> Option<(String, ClientFrame)> {
        let frame = match self.binary {
            Some(b64) => ClientFrame::Binary(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .ok()?
                    .into(),
            ),
            None => ClientFrame::Text(self.frame),
        };
        Some((self.session, frame))
    }
}

/// An HTTP answer made on the node that holds a session, passed on as it is by
/// the node that got the request.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ForwardedHttp {
    pub status: u16,
    pub body: String,
}

/// Lets this node answer frames that other nodes forward to its sessions.
pub(super) fn serve_forwarded_requests(node: &Node) {
    node.serve_requests(
        FORWARDED_FRAME,
        std::sync::Arc::new(|node, body| {
            Box::pin(async move {
                let ask = serde_json::from_value::<ForwardedFrame>(body)
                    .ok()
                    .and_then(ForwardedFrame::into_frame);
                let (status, body) = match ask {
                    Some((session, frame)) => route_local(&node, &session, frame),
                    None => (StatusCode::BAD_REQUEST, "bad forwarded frame"),
                };
                let answer = ForwardedHttp {
                    status: status.as_u16(),
                    body: body.to_string(),
                };
                serde_json::to_value(answer).unwrap_or_default()
            })
        }),
    );
}

#[derive(Deserialize)]
struct EmulationRequest<'a> {
    #[serde(default)]
    session: String,
    /// Uid of the node that holds the session (the connect reply's `node`).
    #[serde(default)]
    node: String,
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
    parse_routed_request(body).map(|r| match r.frame {
        ClientFrame::Text(text) => (r.session, text),
        ClientFrame::Binary(_) => (r.session, String::new()),
    })
}

/// An emulation request: which session, on which node, and the command frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedRequest {
    pub session: String,
    /// Empty when the client did not say.
    pub node: String,
    pub frame: ClientFrame,
}

/// Reads an emulation request body, the node field included.
///
/// # Errors
/// [`RequestError`] for a body that is not such a request.
pub fn parse_routed_request(body: &[u8]) -> Result<RoutedRequest, RequestError> {
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
    Ok(RoutedRequest {
        session: req.session,
        node: req.node,
        frame: ClientFrame::Text(frame),
    })
}

/// Reads a Protobuf emulation request body (`EmulationRequest`): the session, the
/// node and the binary command frame.
///
/// # Errors
/// [`RequestError::NotARequest`] for a body that does not decode, or
/// [`RequestError::NoData`] for one without commands.
pub fn parse_protobuf_request(body: &[u8]) -> Result<RoutedRequest, RequestError> {
    let limits = tidings_protocol::proto::FrameLimits {
        max_message_len: body.len(),
        ..Default::default()
    };
    let req = tidings_protocol::proto::decode_emulation_request(body, limits)
        .map_err(|_| RequestError::NotARequest)?;
    if req.data.is_empty() {
        return Err(RequestError::NoData);
    }
    Ok(RoutedRequest {
        session: req.session,
        node: req.node,
        frame: ClientFrame::Binary(req.data),
    })
}

/// Hands a frame to a session of this node; the HTTP status and message to answer.
pub(crate) fn route_local(
    node: &Node,
    session: &str,
    frame: ClientFrame,
) -> (StatusCode, &'static str) {
    match EmulatedSessions::of(node).route(session, frame) {
        Ok(()) => (StatusCode::NO_CONTENT, ""),
        Err(RouteError::NotFound) => (StatusCode::NOT_FOUND, "session not found"),
        Err(RouteError::Busy) => (StatusCode::TOO_MANY_REQUESTS, "session is busy, retry"),
    }
}

/// How long a node waits for the node holding a session to take a frame.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Delivers a frame to its session: here when this node holds it, otherwise
/// through the broker to the node the request names (its reply is the answer).
pub(crate) async fn route(node: &Node, req: RoutedRequest) -> Response {
    let local = EmulatedSessions::of(node).route(&req.session, req.frame.clone());
    let elsewhere = !req.node.is_empty() && req.node != node.uid();
    match local {
        Err(RouteError::NotFound) if elsewhere => {}
        Ok(()) => return StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            let (status, msg) = match e {
                RouteError::NotFound => (StatusCode::NOT_FOUND, "session not found"),
                RouteError::Busy => (StatusCode::TOO_MANY_REQUESTS, "session is busy, retry"),
            };
            return (status, msg).into_response();
        }
    }
    if !node.is_live_node(&req.node) && node.knows_the_cluster() {
        // No such node is running: the session is gone with it.
        return (StatusCode::NOT_FOUND, "session not found").into_response();
    }
    let ask = ForwardedFrame::new(req.session, req.frame);
    forwarded(
        node.ask_node(&req.node, FORWARDED_FRAME, &ask, FORWARD_TIMEOUT)
            .await,
        false,
    )
}

/// The answer of another node, or why there is none, as this node's response.
pub(crate) fn forwarded(reply: Result<ForwardedHttp, ForwardError>, json: bool) -> Response {
    match reply {
        Ok(ForwardedHttp { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            if json && status == StatusCode::OK {
                super::long_poll::json_response(status, body.into())
            } else if body.is_empty() {
                status.into_response()
            } else {
                (status, body).into_response()
            }
        }
        Err(ForwardError::Unanswerable) => {
            (StatusCode::BAD_GATEWAY, "unexpected answer from the node").into_response()
        }
        Err(ForwardError::Timeout) => (
            StatusCode::GATEWAY_TIMEOUT,
            "the node holding the session did not answer",
        )
            .into_response(),
        Err(ForwardError::Busy) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many forwarded requests",
        )
            .into_response(),
        Err(ForwardError::Broker) => {
            (StatusCode::SERVICE_UNAVAILABLE, "the broker is unavailable").into_response()
        }
        Err(ForwardError::TooLarge) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request too large to forward",
        )
            .into_response(),
    }
}

pub async fn handler(State(node): State<Node>, headers: HeaderMap, body: Bytes) -> Response {
    if !crate::origin::allowed(node.config(), &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if body.len() > node.config().emulation.max_request_body_size {
        return (StatusCode::PAYLOAD_TOO_LARGE, "emulation request too large").into_response();
    }
    let protobuf = headers
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"));
    let parsed = if protobuf {
        parse_protobuf_request(&body)
    } else {
        parse_routed_request(&body)
    };
    match parsed {
        Ok(req) => route(&node, req).await,
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
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
