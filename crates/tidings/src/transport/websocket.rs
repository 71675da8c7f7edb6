//! The WebSocket transports: bidirectional at `/connection/websocket`,
//! unidirectional at `/connection/uni_websocket`.
//!
//! Bidirectional: text frames carry newline-delimited JSON commands, and the writer
//! joins everything queued into one text frame per write. A client that offers the
//! `centrifuge-protobuf` subprotocol speaks Protobuf instead: binary frames of
//! length-delimited commands, and one binary frame of replies per write. Unidirectional: the first
//! message (or the `cf_connect` query parameter) is the connect request, and every
//! push goes out as its own text message, unwrapped, since plain WebSocket clients
//! parse one JSON value per message. Disconnects travel as the close frame's code
//! and reason, which is where centrifuge-js reads them (unidirectional clients also
//! get a disconnect push first).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tidings_protocol::Disconnect;

use crate::connection::{Connection, WireFormat};
use crate::limit::ConnectionPermit;
use crate::node::Node;
use crate::outbox::{join_batch, Drained};
use crate::session::{ClientFrame, Inbound, InboundError, Session, SessionMode};

/// The WebSocket subprotocol of the Centrifugo Protobuf protocol.
pub const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// Small per-connection buffers: an idle connection should cost kilobytes, not the
/// 128 KiB tungstenite defaults. `websocket.read_buffer_size` and
/// `websocket.write_buffer_size` set them; these are for the Autobahn route.
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 4 * 1024;

pub async fn handler(
    State(node): State<Node>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let limit = node.config().websocket.message_size_limit;
    upgrade(node, headers, ws, limit, false, None)
}

pub async fn uni_handler(
    State(node): State<Node>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let limit = node.config().uni_websocket.message_size_limit;
    let first = query.get("cf_connect").cloned();
    if first.as_ref().is_some_and(|c| c.len() > limit) {
        return (StatusCode::PAYLOAD_TOO_LARGE, "connect request too large").into_response();
    }
    if first
        .as_deref()
        .is_some_and(|c| !super::opening_frame_is_json(c, true))
    {
        return (StatusCode::BAD_REQUEST, "cf_connect must be a JSON object").into_response();
    }
    upgrade(node, headers, ws, limit, true, first)
}

fn upgrade(
    node: Node,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
    limit: usize,
    uni: bool,
    first: Option<String>,
) -> Response {
    if !valid_key(&headers) {
        return (
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key must be the base64 encoding of 16 bytes",
        )
            .into_response();
    }
    if node.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    if !crate::origin::allowed(node.config(), &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    // An upgrade that never completes drops the callback, and the permit with it.
    let permit = match node.try_admit() {
        Ok(permit) => permit,
        Err(refused) => return refused.into_response(),
    };
    let cfg = &node.config().websocket;
    let (read_buffer, write_buffer) = (cfg.read_buffer_size, cfg.write_buffer_size);
    let mut ws = configure_buffers(ws, limit, read_buffer, write_buffer);
    if !uni {
        ws = ws.protocols([PROTOBUF_SUBPROTOCOL]);
    }
    // What a backend proxy forwards of the upgrade request (usually nothing).
    let kept = node.proxy_request_headers(&headers);
    ws.on_upgrade(move |socket| {
        let task_node = node.clone();
        async move {
            task_node.spawn_connection(serve(node, socket, uni, first, permit, kept));
        }
    })
    .into_response()
}

/// The WebSocket settings of every Tidings endpoint: small buffers, and `limit` as
/// both the message and the frame size limit. Public so that the binary's
/// `autobahn-echo` test route runs the conformance suite against the same stack.
pub fn configure(ws: WebSocketUpgrade, limit: usize) -> WebSocketUpgrade {
    configure_buffers(ws, limit, READ_BUFFER, WRITE_BUFFER)
}

fn configure_buffers(
    ws: WebSocketUpgrade,
    limit: usize,
    read_buffer: usize,
    write_buffer: usize,
) -> WebSocketUpgrade {
    ws.max_message_size(limit)
        .max_frame_size(limit)
        // tungstenite needs room for at least a frame header.
        .read_buffer_size(read_buffer.max(16))
        .write_buffer_size(write_buffer)
}

/// Whether `Sec-WebSocket-Key` is what RFC 6455 (4.1, 4.2.1) requires: base64 of
/// 16 bytes, so 22 base64 characters and `==`. axum only checks that the header is
/// there and hashes any value, so a malformed key would otherwise be upgraded;
/// the RFC asks for 400 instead. Unused trailing bits are not checked.
fn valid_key(headers: &HeaderMap) -> bool {
    let Some(key) = headers.get(axum::http::header::SEC_WEBSOCKET_KEY) else {
        // axum's extractor has already refused a request without one.
        return false;
    };
    let key = key.as_bytes();
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Serves one upgraded socket until either side ends it; the connection counts
/// against the node's limits until then.
///
/// Not an `async fn`: an async fn keeps its arguments (here the whole WebSocket,
/// about 2 KiB with the state around it) in its future for as long as the future
/// lives, and this one lives as long as the connection. Setting up here, on the
/// caller's stack, leaves the returned future with only the session and a handle
/// to the writer task. Must be called within the runtime (it spawns the writer).
pub fn serve(
    node: Node,
    socket: WebSocket,
    uni: bool,
    first: Option<String>,
    permit: ConnectionPermit,
    request_headers: Option<crate::proxy::RequestHeaders>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let queue = node.config().client.queue_max_size;
    let write_timeout = node.config().websocket.write_timeout;
    let transport = if uni { "uni_websocket" } else { "websocket" };
    let format = match socket.protocol() {
        Some(p) if p.as_bytes() == PROTOBUF_SUBPROTOCOL.as_bytes() => WireFormat::Protobuf,
        _ => WireFormat::Json,
    };
    let (conn, control) = Connection::with_format(transport, format, queue);
    if let Some(kept) = request_headers {
        conn.set_request_headers(kept);
    }
    let (mut sink, stream) = socket.split();

    let writer_conn: Arc<Connection> = conn.clone();
    let writer = tokio::spawn(async move {
        loop {
            // Write coalescing: once there is something to send, let the other
            // ready tasks run first (tokio runs a yielded task after the next poll
            // of the network). During a fan-out those are the rest of the fan-out
            // and the next publications, whose pushes then leave in this same
            // write: the kernel's cost is per write, not per byte. When the server
            // is idle this costs one pass through the run queue.
            writer_conn.outbox.ready().await;
            tokio::task::yield_now().await;
            let (mut items, close) = match writer_conn.outbox.drain().await {
                Drained::Batch(items) => (items, None),
                Drained::Close(items, d) => (items, Some(d)),
            };
            if uni {
                if let Some(d) = &close {
                    items.push(super::disconnect_push(d, format));
                }
            }
            if !items.is_empty() {
                // A write that cannot finish within write_timeout means the client is
                // not reading: give up on it (no close frame could get through either)
                // and end the session.
                // Boxed: inline, the write's future would sit in this task's
                // future for the connection's life (about 0.25 KiB per idle
                // connection); one allocation per write is small beside the
                // write's system call.
                let sent = Box::pin(timed(
                    write_timeout,
                    write_items(&mut sink, &items, uni, format),
                ))
                .await;
                if !matches!(sent, Some(Ok(()))) {
                    writer_conn
                        .outbox
                        .close_dropping_queued(Disconnect::write_error());
                    break;
                }
            }
            if let Some(d) = close {
                let frame = CloseFrame {
                    code: u16::try_from(d.code).unwrap_or(3000),
                    reason: d.reason.into(),
                };
                // Boxed, like the timer in `timed`: this task's future lives as
                // long as the connection, and what it holds inline every idle
                // connection pays for.
                Box::pin(async {
                    let close = sink.send(Message::Close(Some(frame)));
                    let _ = tokio::time::timeout(write_timeout, close).await;
                    let _ = tokio::time::timeout(write_timeout, sink.close()).await;
                })
                .await;
                break;
            }
        }
    });

    let inbound = stream.filter_map(|msg| async move {
        match msg {
            Ok(Message::Text(text)) => Some(Ok(ClientFrame::Text(text.as_str().to_owned()))),
            // The session judges a binary frame: Protobuf commands, or UTF-8 JSON
            // from a JSON client.
            Ok(Message::Binary(bytes)) => Some(Ok(ClientFrame::Binary(bytes))),
            Ok(Message::Ping(_) | Message::Pong(_)) => None,
            Ok(Message::Close(_)) => Some(Err(InboundError::Transport)),
            Err(e) => Some(Err(read_error(&e))),
        }
    });
    // After a close frame or an error nothing more is read.
    let inbound = inbound.take_while(|m| {
        let keep = !matches!(m, Err(InboundError::Transport));
        async move { keep }
    });
    let first: Option<Inbound> = first.map(|f| Ok(ClientFrame::Text(f)));
    let inbound = futures_util::stream::iter(first).chain(inbound);
    let mode = if uni {
        SessionMode::Unidirectional
    } else {
        SessionMode::Bidirectional
    };
    let session = Session::with_mode(node, conn, control, mode);
    async move {
        let _permit = permit;
        session.run(Box::pin(inbound)).await;
        let _ = writer.await;
    }
}

/// Runs `fut` for at most `limit`. A write to a socket with room in its kernel
/// buffer finishes on its first poll; only one that has to wait arms a timer (an
/// entry in the runtime's shared timer wheel, which costs a lock to add and
/// remove), so the common case pays nothing for the bound.
async fn timed<F: std::future::Future>(limit: std::time::Duration, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => Box::pin(tokio::time::timeout(limit, fut)).await.ok(),
    }
}

/// Writes a drained batch: one joined frame (bidirectional: newline-joined JSON
/// text, or back-to-back delimited Protobuf in one binary message), or one message
/// per push with a single flush (unidirectional).
async fn write_items<S>(
    sink: &mut S,
    items: &[bytes::Bytes],
    uni: bool,
    format: WireFormat,
) -> Result<(), axum::Error>
where
    S: futures_util::Sink<Message, Error = axum::Error> + Unpin,
{
    if format == WireFormat::Protobuf {
        let frame = if items.len() == 1 {
            items[0].clone()
        } else {
            let mut out = bytes::BytesMut::with_capacity(items.iter().map(|i| i.len()).sum());
            for item in items {
                out.extend_from_slice(item);
            }
            out.freeze()
        };
        return sink.send(Message::Binary(frame)).await;
    }
    if uni {
        for item in items {
            let text = Utf8Bytes::try_from(super::unwrap_push(item)).map_err(axum::Error::new)?;
            sink.feed(Message::Text(text)).await?;
        }
        sink.flush().await
    } else {
        let text = Utf8Bytes::try_from(join_batch(items)).map_err(axum::Error::new)?;
        sink.send(Message::Text(text)).await
    }
}

/// What a read error means for the session. axum wraps tungstenite's errors: the
/// capacity error is the size limit (1009), broken UTF-8 in a text message is 1007
/// and a broken framing rule is 1002. Without these a misbehaving client would be
/// told 3000 "connection closed", which invites it to reconnect and do it again.
/// A client that just went away (reset, EOF) is a transport end.
fn read_error(e: &axum::Error) -> InboundError {
    use tungstenite::error::ProtocolError;
    let Some(t) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<tungstenite::Error>())
    else {
        return InboundError::Transport;
    };
    match t {
        tungstenite::Error::Capacity(_) => InboundError::TooLarge,
        tungstenite::Error::Utf8(_) => InboundError::InvalidText,
        tungstenite::Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake
            | ProtocolError::ReceivedAfterClosing
            | ProtocolError::SendAfterClosing,
        ) => InboundError::Transport,
        tungstenite::Error::Protocol(_) => InboundError::ProtocolViolation,
        _ => InboundError::Transport,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key(key: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::SEC_WEBSOCKET_KEY,
            key.parse().expect("header value"),
        );
        headers
    }

    #[test]
    fn websocket_keys_must_be_16_bytes_of_base64() {
        assert!(valid_key(&with_key("dGhlIHNhbXBsZSBub25jZQ==")));
        assert!(valid_key(&with_key("AAAAAAAAAAAAAAAAAAAAAA==")));
        for bad in [
            "",
            "!!!",
            "c2hvcnQ=",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ=!",
            "dGhlIHNhbXBsZSBub25jZ*==",
            "dGhlIHNhbXBsZSBub25jZQ==dGhl",
        ] {
            assert!(!valid_key(&with_key(bad)), "{bad:?} was accepted");
        }
        assert!(!valid_key(&HeaderMap::new()));
    }
}
