//! An axum application that serves its own routes and Tidings side by side.
//!
//! The app publishes into a channel from its own handler (`POST /notify`) through the
//! library API, while browsers subscribe over `/connection/websocket`.
//!
//! Run it with `cargo run -p axum-embed-example`, then open a WebSocket client on
//! `ws://127.0.0.1:3000/connection/websocket` and `curl -X POST 127.0.0.1:3000/notify`.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use tidings::protocol::RawJson;
use tidings::{Config, Node, PublishRequest};

/// The application: its own routes plus every Tidings endpoint.
pub fn app(node: &Node) -> Router {
    let own = Router::new()
        .route("/", get(|| async { "my app, with real-time built in" }))
        .route("/notify", post(notify))
        .with_state(node.clone());
    own.merge(tidings::server::router(node))
}

/// Publishes a notification to the `notifications` channel from application code.
async fn notify(State(node): State<Node>) -> Json<serde_json::Value> {
    let result = node
        .publish(PublishRequest::new(
            "notifications",
            RawJson::from_value(&serde_json::json!({"text": "something happened"})),
        ))
        .await;
    Json(match result {
        Ok(pos) => serde_json::json!({"offset": pos.offset, "epoch": pos.epoch}),
        Err(e) => serde_json::json!({"error": e.to_protocol()}),
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let node = Node::new(Config::development());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let app = app(&node);
    tidings::server::run(listener, node, app, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use std::time::Duration;
    use tokio_tungstenite::tungstenite::Message;

    async fn next_text(
        ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
    ) -> String {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("socket ended")
                .expect("socket error");
            if let Message::Text(t) = msg {
                return t.to_string();
            }
        }
    }

    #[tokio::test]
    async fn embedded_node_delivers_what_the_app_publishes() {
        let node = Node::new(Config::development());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(tidings::server::run(
            listener,
            node.clone(),
            app(&node),
            async {
                let _ = stop_rx.await;
            },
        ));

        let own = reqwest::get(format!("http://{addr}/")).await.unwrap();
        assert_eq!(own.text().await.unwrap(), "my app, with real-time built in");

        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/connection/websocket"))
                .await
                .unwrap();
        ws.send(Message::text(
            "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"notifications\"}}",
        ))
        .await
        .unwrap();
        let mut seen = String::new();
        while !seen.contains("\"id\":2") {
            seen.push_str(&next_text(&mut ws).await);
        }

        let client = reqwest::Client::new();
        let res: serde_json::Value = client
            .post(format!("http://{addr}/notify"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(res["offset"], 1);

        let mut pushed = String::new();
        while !pushed.contains("something happened") {
            pushed.push_str(&next_text(&mut ws).await);
        }
        assert!(pushed.contains("\"channel\":\"notifications\""));

        stop_tx.send(()).unwrap();
        // The client is told the node is going away before the server exits.
        let close = loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => break frame,
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(u16::from(close.expect("close frame").code), 3001);
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server did not stop")
            .unwrap()
            .unwrap();
    }
}
