//! Response bodies of the streaming transports: Server-Sent Events and HTTP
//! streaming, in bidirectional and unidirectional form. HTTP streaming also
//! carries the Protobuf protocol: a connect request with
//! `Content-Type: application/octet-stream` opens a Protobuf session whose body is
//! the length-delimited replies, back to back.
//!
//! The body is driven by the connection's outbox: each drain becomes one chunk. A
//! disconnect becomes a disconnect push (these transports have no close code), after
//! which the body ends. When the client goes away the body is dropped, which closes
//! the connection and ends its session.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes as AxumBytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use tidings_protocol::Disconnect;

use crate::connection::{Connection, WireFormat};
use crate::node::Node;
use crate::outbox::Drained;
use crate::session::{ClientFrame, SessionMode};

use super::{disconnect_push, start_session, unwrap_push};

/// How items are framed in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON object per line (`application/json`, newline-delimited).
    Lines,
    /// One `data:` event per JSON object (`text/event-stream`). Items never contain
    /// CR or LF (payloads are kept on one line), so one `data:` line always carries
    /// exactly one object and a client cannot inject fields or events.
    Sse,
    /// Length-delimited Protobuf messages back to back (`application/octet-stream`).
    Delimited,
}

/// Closes the connection when the body is dropped (the client went away).
struct CloseOnDrop(Arc<Connection>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0
            .outbox
            .close_dropping_queued(Disconnect::connection_closed());
    }
}

fn frame_into(out: &mut BytesMut, item: &Bytes, framing: Framing, uni: bool) {
    let item = if uni { unwrap_push(item) } else { item.clone() };
    match framing {
        Framing::Lines => {
            out.put_slice(&item);
            out.put_u8(b'\n');
        }
        Framing::Sse => {
            out.put_slice(b"data: ");
            out.put_slice(&item);
            out.put_slice(b"\n\n");
        }
        Framing::Delimited => out.put_slice(&item),
    }
}

/// One encoded reply or push as it goes on the wire of a streaming transport: a
/// line, or a `data:` event; `uni` drops the push wrapper. Public for the fuzzers.
pub fn frame_item(item: &Bytes, framing: Framing, uni: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(item.len() + 8);
    frame_into(&mut out, item, framing, uni);
    out.freeze()
}

/// The streaming body of a connection.
pub fn body(conn: Arc<Connection>, framing: Framing, uni: bool) -> Body {
    let guard = CloseOnDrop(conn);
    let stream = futures_util::stream::unfold(Some(guard), move |state| async move {
        let guard = state?;
        let (items, close) = match guard.0.outbox.drain().await {
            Drained::Batch(items) => (items, None),
            Drained::Close(items, d) => (items, Some(d)),
        };
        let mut out = BytesMut::with_capacity(items.iter().map(|i| i.len() + 8).sum());
        for item in &items {
            frame_into(&mut out, item, framing, uni);
        }
        let next = match close {
            Some(d) => {
                let push = disconnect_push(&d, guard.0.format);
                frame_into(&mut out, &push, framing, uni);
                None
            }
            None => Some(guard),
        };
        Some((Ok::<_, std::convert::Infallible>(out.freeze()), next))
    });
    Body::from_stream(stream)
}

fn streaming_response(conn: Arc<Connection>, framing: Framing, uni: bool) -> Response {
    let content_type = match framing {
        Framing::Lines => "application/json",
        Framing::Sse => "text/event-stream",
        Framing::Delimited => "application/octet-stream",
    };
    let mut res = Response::new(body(conn, framing, uni));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    // Tell nginx not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

/// Which endpoint a request came in on.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    Sse,
    HttpStream,
    UniSse,
    UniHttpStream,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Sse => "sse",
            Endpoint::HttpStream => "http_stream",
            Endpoint::UniSse => "uni_sse",
            Endpoint::UniHttpStream => "uni_http_stream",
        }
    }
}

/// Opens a streaming connection. The connect payload comes from the `cf_connect`
/// query parameter (GET) or the body (POST).
pub async fn open(
    node: Node,
    endpoint: Endpoint,
    method: Method,
    headers: HeaderMap,
    query: HashMap<String, String>,
    body: AxumBytes,
) -> Response {
    if node.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    if !crate::origin::allowed(node.config(), &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let cfg = node.config();
    let limit = match endpoint {
        Endpoint::Sse => cfg.sse.max_request_body_size,
        Endpoint::HttpStream => cfg.http_stream.max_request_body_size,
        Endpoint::UniSse => cfg.uni_sse.max_request_body_size,
        Endpoint::UniHttpStream => cfg.uni_http_stream.max_request_body_size,
    };
    let protobuf = method == Method::POST
        && headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"));
    if protobuf {
        // Only bidirectional HTTP streaming carries Protobuf, as in Centrifugo.
        if !matches!(endpoint, Endpoint::HttpStream) {
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "this endpoint speaks JSON only; Protobuf is for /connection/websocket and \
                 /connection/http_stream",
            )
                .into_response();
        }
        if body.len() > limit {
            return (StatusCode::PAYLOAD_TOO_LARGE, "connect request too large").into_response();
        }
        if body.is_empty() {
            return (
                StatusCode::BAD_REQUEST,
                "send the connect command as the body",
            )
                .into_response();
        }
        let permit = match node.try_admit() {
            Ok(permit) => permit,
            Err(refused) => return refused.into_response(),
        };
        let first = ClientFrame::Binary(Bytes::copy_from_slice(&body));
        let (conn, _inbox) = start_session(
            &node,
            endpoint.name(),
            (SessionMode::Emulated, WireFormat::Protobuf),
            Some(first),
            permit,
            &headers,
        );
        return streaming_response(conn, Framing::Delimited, false);
    }
    let connect = if method == Method::GET {
        query.get("cf_connect").cloned().unwrap_or_default()
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(s) => s,
            Err(_) => {
                return (StatusCode::BAD_REQUEST, "the body must be UTF-8 JSON").into_response()
            }
        }
    };
    if connect.len() > limit {
        return (StatusCode::PAYLOAD_TOO_LARGE, "connect request too large").into_response();
    }
    let (framing, uni) = match endpoint {
        Endpoint::Sse => (Framing::Sse, false),
        Endpoint::HttpStream => (Framing::Lines, false),
        Endpoint::UniSse => (Framing::Sse, true),
        Endpoint::UniHttpStream => (Framing::Lines, true),
    };
    if !uni && connect.trim().is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "send the connect command (cf_connect parameter or request body)",
        )
            .into_response();
    }
    if !super::opening_frame_is_json(&connect, uni) {
        return (
            StatusCode::BAD_REQUEST,
            "the connect request must be JSON: one object (or one per line for a command frame)",
        )
            .into_response();
    }
    let mode = if uni {
        SessionMode::Unidirectional
    } else {
        SessionMode::Emulated
    };
    // A unidirectional client may connect with no payload at all.
    let first = if uni && connect.trim().is_empty() {
        "{}".to_string()
    } else {
        connect
    };
    let permit = match node.try_admit() {
        Ok(permit) => permit,
        Err(refused) => return refused.into_response(),
    };
    let (conn, _inbox) = start_session(
        &node,
        endpoint.name(),
        (mode, WireFormat::Json),
        Some(first.into()),
        permit,
        &headers,
    );
    streaming_response(conn, framing, uni)
}

macro_rules! stream_handler {
    ($name:ident, $endpoint:expr) => {
        pub async fn $name(
            State(node): State<Node>,
            method: Method,
            headers: HeaderMap,
            Query(query): Query<HashMap<String, String>>,
            body: AxumBytes,
        ) -> Response {
            open(node, $endpoint, method, headers, query, body).await
        }
    };
}

stream_handler!(sse, Endpoint::Sse);
stream_handler!(http_stream, Endpoint::HttpStream);
stream_handler!(uni_sse, Endpoint::UniSse);
stream_handler!(uni_http_stream, Endpoint::UniHttpStream);
