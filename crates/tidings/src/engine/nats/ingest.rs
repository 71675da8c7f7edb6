//! Publishes from backends on `<prefix>.publish` (queue group `<prefix>_publish`):
//! each request is published through the node and answered with the result.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;

use super::connection::NatsConnection;

/// The body a backend sends to `<prefix>.publish`.
#[derive(serde::Deserialize)]
struct IngestBody {
    channel: String,
    data: tidings_protocol::RawJson,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    tags: Option<std::collections::BTreeMap<String, String>>,
}

/// Serves `<prefix>.publish`: each message is published through the node, and
/// answered when it has a reply subject.
pub(super) async fn serve_ingest(
    conn: Arc<NatsConnection>,
    slot: crate::engine::IngestSlot,
    mut sub: async_nats::Subscriber,
) {
    while let Some(msg) = sub.next().await {
        let reply = match serde_json::from_slice::<IngestBody>(&msg.payload) {
            Err(e) => {
                serde_json::json!({"error": {"code": 107, "message": format!("bad request: {e}")}})
            }
            Ok(body) => match slot.get() {
                None => serde_json::json!({"error": {"code": 100, "message": "node is starting"}}),
                Some(ingest) => {
                    let mut req = crate::node::PublishRequest::new(body.channel, body.data);
                    req.idempotency_key = body.idempotency_key;
                    req.tags = body.tags;
                    match ingest(req).await {
                        Ok(pos) => {
                            serde_json::json!({"result": {"offset": pos.offset, "epoch": pos.epoch}})
                        }
                        Err(e) => {
                            serde_json::json!({"error": {"code": e.code, "message": e.message}})
                        }
                    }
                }
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
