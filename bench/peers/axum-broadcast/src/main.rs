//! The seed's axum example: one tokio broadcast channel with room for 100 messages;
//! every text frame a client sends is broadcast to every connected client. A client
//! that falls 100 messages behind is dropped (its receiver reports `Lagged`).
//!
//! Usage: axum-broadcast [PORT]   (default 3000, 0 picks a free port); prints
//! `listening on ADDR` once it accepts connections.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast;

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse().expect("PORT must be a number"))
        .unwrap_or(3000);
    let (tx, _) = broadcast::channel::<String>(100);
    let app = Router::new().route("/ws", get(upgrade)).with_state(tx);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    println!("listening on {}", listener.local_addr().expect("address"));
    axum::serve(listener, app).await.expect("serve");
}

async fn upgrade(ws: WebSocketUpgrade, State(tx): State<broadcast::Sender<String>>) -> Response {
    ws.on_upgrade(move |socket| client(socket, tx))
}

async fn client(socket: WebSocket, tx: broadcast::Sender<String>) {
    let (mut sink, mut stream) = socket.split();
    let mut rx = tx.subscribe();
    let mut send = tokio::spawn(async move {
        while let Ok(text) = rx.recv().await {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
    });
    let mut recv = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Text(text) = msg {
                let _ = tx.send(text.to_string());
            }
        }
    });
    tokio::select! {
        _ = &mut send => recv.abort(),
        _ = &mut recv => send.abort(),
    }
}
