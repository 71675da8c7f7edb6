//! `/autobahn/echo`: a raw WebSocket echo for the Autobahn|Testsuite conformance run
//! (scripts/autobahn.sh). It exists only in binaries built with the `autobahn-echo`
//! feature and never in a release build.
//!
//! It speaks no Centrifugo protocol: it echoes text and binary messages back, so the
//! suite judges the WebSocket stack Tidings runs on (axum, tungstenite) with the
//! settings Tidings uses ([`tidings::transport::websocket::configure`]: buffer sizes,
//! frame and message limits). Only the size limit differs: the suite's 9.* cases
//! send messages of up to 16 MiB, past the 64 KiB `websocket.message_size_limit`
//! default, so this route allows [`LIMIT`].

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;

/// Message and frame size limit of the echo route: the suite's largest message
/// (16 MiB in case 9.1.6) with room to spare.
pub const LIMIT: usize = 32 << 20;

pub async fn echo(ws: WebSocketUpgrade) -> Response {
    tidings::transport::websocket::configure(ws, LIMIT).on_upgrade(run)
}

async fn run(mut socket: WebSocket) {
    while let Some(message) = socket.recv().await {
        let reply = match message {
            Ok(Message::Text(text)) => Message::Text(text),
            Ok(Message::Binary(bytes)) => Message::Binary(bytes),
            // Pings are answered by tungstenite. After a close frame keep reading:
            // tungstenite sends its close reply on the next read, then ends the
            // stream.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_)) => continue,
            Err(_) => break,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}
