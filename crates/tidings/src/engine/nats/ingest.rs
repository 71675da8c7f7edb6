//! Publishes from backends on `<prefix>.publish` (queue group `<prefix>_publish`):
//! each request is published through the node and answered with the result.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::json;
use tidings_protocol::codes;

use super::connection::NatsConnection;
use crate::engine::{Ingest, IngestError, IngestPublish};

/// Serves `<prefix>.publish`: each message is published through the node's
/// `ingest` (once the node has set it), and answered when it has a reply subject.
pub(super) async fn serve_ingest(
    conn: Arc<NatsConnection>,
    ingest: Arc<OnceLock<Ingest>>,
    mut sub: async_nats::Subscriber,
) {
    while let Some(msg) = sub.next().await {
        let reply = match serde_json::from_slice::<IngestPublish>(&msg.payload) {
            Err(e) => json!({"error": {"code": 107, "message": format!("bad request: {e}")}}),
            Ok(publish) => match ingest.get() {
                None => json!({"error": {"code": 100, "message": "node is starting"}}),
                Some(ingest) => match ingest(publish).await {
                    Ok(pos) => json!({"result": {"offset": pos.offset, "epoch": pos.epoch}}),
                    Err(IngestError::Rejected(e)) => {
                        json!({"error": {"code": e.code, "message": e.message}})
                    }
                    // The cause stays here, as the API keeps it from its clients.
                    Err(IngestError::Failed(_)) => {
                        let e = codes::ERROR_INTERNAL;
                        json!({"error": {"code": e.code, "message": e.message}})
                    }
                },
            },
        };
        if msg.reply.is_none() && reply.get("error").is_some() {
            tracing::warn!(reply = %reply, "publish from a backend on NATS failed");
        }
        if let (Some(to), Ok(client)) = (msg.reply, conn.client()) {
            let _ = client.publish(to, Bytes::from(reply.to_string())).await;
        }
    }
}
