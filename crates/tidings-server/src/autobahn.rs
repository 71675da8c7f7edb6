//! `/autobahn/echo`: a raw WebSocket echo for the Autobahn|Testsuite conformance run
//! (scripts/autobahn.sh). It exists only in binaries built with the `autobahn-echo`
//! feature and never in a release build.
//!
//! It speaks no Centrifugo protocol: it echoes text and binary messages back, so the
//! suite judges the WebSocket layer every Tidings endpoint runs on
//! ([`tidings::transport::ws`]: framing, the closing handshake, permessage-deflate
//! at the level and minimum size Tidings defaults to). Only the size limits differ:
//! the suite's 9.* cases send messages of up to 16 MiB, past the 64 KiB
//! `websocket.message_size_limit` default, so this route allows [`LIMIT`].

use axum::response::Response;
use tidings::transport::ws::{DeflateSettings, Limits, Message, WebSocket, WsUpgrade};

/// Message size limit of the echo route (on the wire and inflated): the suite's
/// largest message (16 MiB in case 9.1.6) with room to spare.
pub const LIMIT: usize = 32 << 20;

pub async fn echo(ws: WsUpgrade) -> Response {
    ws.limits(Limits {
        message: LIMIT,
        decompressed: LIMIT,
        read_chunk: 4096,
    })
    .deflate(Some(&DeflateSettings {
        level: 1,
        min_size: 0,
    }))
    .on_upgrade(run)
}

async fn run(socket: WebSocket) {
    let (mut reader, writer) = socket.split();
    loop {
        let sent = match reader.next().await {
            Some(Ok(Message::Text(text))) => {
                writer
                    .send_joined(true, &[bytes::Bytes::from(text)], None)
                    .await
            }
            Some(Ok(Message::Binary(bytes))) => writer.send_joined(false, &[bytes], None).await,
            Some(Err(e)) => {
                if let Some(code) = e.close_code() {
                    let _ = writer.close(code, "").await;
                }
                break;
            }
            // The reader has answered the client's close frame.
            None => break,
        };
        if sent.is_err() {
            break;
        }
    }
}
