//! The bidirectional WebSocket transport at `/connection/websocket`.
//!
//! Text frames carry newline-delimited JSON commands; the writer joins everything
//! queued into one text frame per write. Disconnects travel as the close frame's
//! code and reason, which is where centrifuge-js reads them.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};

use tidings_protocol::Disconnect;

use crate::connection::Connection;
use crate::node::Node;
use crate::outbox::{join_batch, Drained};
use crate::session::{InboundError, Session};

/// Small per-connection buffers: an idle connection should cost kilobytes, not the
/// 128 KiB tungstenite defaults.
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 4 * 1024;

pub async fn handler(
    State(node): State<Node>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if node.is_shutting_down() {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    if !crate::origin::allowed(node.config(), &headers) {
        return (axum::http::StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let limit = node.config().websocket.message_size_limit;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| {
            let task_node = node.clone();
            async move {
                task_node.spawn_connection(serve(node, socket));
            }
        })
        .into_response()
}

/// Serves one upgraded socket until either side ends it.
pub async fn serve(node: Node, socket: WebSocket) {
    let queue = node.config().client.queue_max_size;
    let write_timeout = node.config().websocket.write_timeout;
    let (conn, control) = Connection::new("websocket", queue);
    let (mut sink, stream) = socket.split();

    let writer_conn: Arc<Connection> = conn.clone();
    let writer = tokio::spawn(async move {
        loop {
            let (items, close) = match writer_conn.outbox.drain().await {
                Drained::Batch(items) => (items, None),
                Drained::Close(items, d) => (items, Some(d)),
            };
            if !items.is_empty() {
                let frame = join_batch(&items);
                let text = match Utf8Bytes::try_from(frame) {
                    Ok(t) => t,
                    Err(_) => {
                        writer_conn.outbox.close(Disconnect::server_error(), false);
                        break;
                    }
                };
                // A write that cannot finish within write_timeout means the client is
                // not reading: give up on it (no close frame could get through either)
                // and end the session.
                let sent =
                    tokio::time::timeout(write_timeout, sink.send(Message::Text(text))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    writer_conn.outbox.close(Disconnect::write_error(), false);
                    break;
                }
            }
            if let Some(d) = close {
                let frame = CloseFrame {
                    code: u16::try_from(d.code).unwrap_or(3000),
                    reason: d.reason.into(),
                };
                let _ = tokio::time::timeout(write_timeout, sink.send(Message::Close(Some(frame))))
                    .await;
                let _ = tokio::time::timeout(write_timeout, sink.close()).await;
                break;
            }
        }
    });

    let inbound = stream.filter_map(|msg| async move {
        match msg {
            Ok(Message::Text(text)) => Some(Ok(text.as_str().to_owned())),
            // The JSON protocol is text; a binary frame holding UTF-8 JSON is accepted
            // as well, anything else is a bad request.
            Ok(Message::Binary(bytes)) => match String::from_utf8(bytes.to_vec()) {
                Ok(text) => Some(Ok(text)),
                Err(_) => Some(Err(InboundError::Malformed)),
            },
            Ok(Message::Ping(_) | Message::Pong(_)) => None,
            Ok(Message::Close(_)) => Some(Err(InboundError::Transport)),
            Err(e) => {
                if is_too_large(&e) {
                    Some(Err(InboundError::TooLarge))
                } else {
                    Some(Err(InboundError::Transport))
                }
            }
        }
    });
    // After a close frame or an error nothing more is read.
    let inbound = inbound.take_while(|m| {
        let keep = !matches!(m, Err(InboundError::Transport));
        async move { keep }
    });
    Session::new(node, conn, control)
        .run(Box::pin(inbound))
        .await;
    let _ = writer.await;
}

/// axum wraps tungstenite's errors; the capacity error is the size limit.
fn is_too_large(e: &axum::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
        .is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)))
}
