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

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt, StreamExt};
use tidings_protocol::Disconnect;

use super::ws::{DeflateSettings, Limits, Message, ReadError, WebSocket, WsUpgrade, WsWriter};
use crate::connection::{Connection, WireFormat};
use crate::limit::ConnectionPermit;
use crate::node::Node;
use crate::outbox::Drained;
use crate::session::{ClientFrame, Inbound, InboundError, Session, SessionMode};

/// The WebSocket subprotocol of the Centrifugo Protobuf protocol.
pub const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

pub async fn handler(State(node): State<Node>, headers: HeaderMap, ws: WsUpgrade) -> Response {
    upgrade(node, headers, ws, false, None)
}

pub async fn uni_handler(
    State(node): State<Node>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    ws: WsUpgrade,
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
    upgrade(node, headers, ws, true, first)
}

/// The read limits and compression settings of a WebSocket endpoint: the
/// `websocket` section's, or `uni_websocket`'s when `uni`.
pub fn endpoint_settings(node: &Node, uni: bool) -> (Limits, Option<DeflateSettings>) {
    let cfg = node.config();
    let (ws, u) = (&cfg.websocket, &cfg.uni_websocket);
    // (message limit, inflated limit, compression on, level, minimum size)
    let (message, decompressed, on, level, min_size) = if uni {
        (
            u.message_size_limit,
            u.decompressed_limit(),
            u.compression,
            u.compression_level,
            u.compression_min_size,
        )
    } else {
        (
            ws.message_size_limit,
            ws.decompressed_limit(),
            ws.compression,
            ws.compression_level,
            ws.compression_min_size,
        )
    };
    let limits = Limits {
        message,
        decompressed,
        read_chunk: ws.read_buffer_size,
    };
    (limits, on.then_some(DeflateSettings { level, min_size }))
}

fn upgrade(
    node: Node,
    headers: HeaderMap,
    ws: WsUpgrade,
    uni: bool,
    first: Option<String>,
) -> Response {
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
    let (limits, deflate) = endpoint_settings(&node, uni);
    let mut ws = ws.limits(limits).deflate(deflate.as_ref());
    if !uni {
        ws = ws.protocols(&[PROTOBUF_SUBPROTOCOL]);
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
        Some(PROTOBUF_SUBPROTOCOL) => WireFormat::Protobuf,
        _ => WireFormat::Json,
    };
    let (conn, control) = Connection::with_format(transport, format, queue);
    if let Some(kept) = request_headers {
        conn.set_request_headers(kept);
    }
    let (reader, sink) = socket.split();

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
                    write_items(&sink, &items, uni, format),
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
                let code = u16::try_from(d.code).unwrap_or(3000);
                // Boxed, like the timer in `timed`: this task's future lives as
                // long as the connection, and what it holds inline every idle
                // connection pays for.
                Box::pin(async {
                    let close = sink.close(code, &d.reason);
                    let _ = tokio::time::timeout(write_timeout, close).await;
                })
                .await;
                break;
            }
        }
    });

    // The reader answers pings and the client's close frame itself, and ends
    // after a close frame or an error.
    let inbound = futures_util::stream::unfold(reader, |mut reader| async move {
        let msg = match reader.next().await? {
            Ok(Message::Text(text)) => Ok(ClientFrame::Text(text)),
            // The session judges a binary frame: Protobuf commands, or UTF-8 JSON
            // from a JSON client.
            Ok(Message::Binary(bytes)) => Ok(ClientFrame::Binary(bytes)),
            Err(e) => Err(read_error(e)),
        };
        Some((msg, reader))
    });
    let first: Option<Inbound> = first.map(|f| Ok(ClientFrame::Text(f)));
    let inbound = futures_util::stream::iter(first).chain(inbound);
    let mode = if uni {
        SessionMode::Unidirectional
    } else {
        SessionMode::Bidirectional
    };
    let session = Session::with_mode(node, conn, control, mode);
    // Combinators rather than an `async move` block: a block would keep its
    // captures (the session and the inbound stream, about 0.75 KiB) beside the
    // running session future that was built from them; `then` and `map` hold
    // only that future, then the writer's handle, and the permit.
    session
        .run(Box::pin(inbound))
        .then(move |()| writer)
        .map(move |_| drop(permit))
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

/// Writes a drained batch: one joined message (bidirectional: newline-joined JSON
/// text, or back-to-back delimited Protobuf in one binary message), or one message
/// per push in a single write (unidirectional).
async fn write_items(
    sink: &WsWriter,
    items: &[bytes::Bytes],
    uni: bool,
    format: WireFormat,
) -> std::io::Result<()> {
    if format == WireFormat::Protobuf {
        return sink.send_joined(false, items, None).await;
    }
    if uni {
        let unwrapped: Vec<bytes::Bytes> = items.iter().map(super::unwrap_push).collect();
        sink.send_each(true, &unwrapped).await
    } else {
        sink.send_joined(true, items, Some(b'\n')).await
    }
}

/// What a read error means for the session: the size limit (1009), broken UTF-8
/// (1007) and a broken framing rule (1002) each close with their code, so that a
/// misbehaving client is not told 3000 "connection closed" and invited to
/// reconnect and do it again. A client that just went away is a transport end.
fn read_error(e: ReadError) -> InboundError {
    match e {
        ReadError::TooLarge => InboundError::TooLarge,
        ReadError::InvalidText => InboundError::InvalidText,
        ReadError::Protocol => InboundError::ProtocolViolation,
        ReadError::Io => InboundError::Transport,
    }
}
