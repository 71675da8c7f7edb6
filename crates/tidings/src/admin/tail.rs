//! The live tail of a channel: `GET <prefix>/admin/tail?channel=<name>` answers
//! with a `text/event-stream` in which every publication to the channel, on any
//! node of the cluster, is one `data:` line holding the client protocol's JSON
//! push (`{"push": {"channel", "pub": {…}}}`).
//!
//! The tail joins the channel as a connection of its own (transport name
//! `admin_tail`), through [`Node::join`] as every front door does, so it hears
//! what a subscriber hears, through the broker on Redis and NATS; it keeps no
//! presence entry and sends no join or leave. While open it counts as one
//! subscriber in `channels`. The admin page reads it with `fetch`, which can send
//! the session token in a header (an `EventSource` cannot).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use tidings_protocol::ClientInfo;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::AdminError;
use crate::connection::Connection;
use crate::node::{JoinRequest, Member, Node, Shape, StreamAsk, JSON_PUSHES};
use crate::outbox::Drained;

/// Tails one node serves at once; more get 503. Each holds a connection's
/// outbox (`client.queue_max_size`) and a stream.
pub const MAX_TAILS: usize = 16;

/// A comment line this often keeps proxies from closing an idle tail.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The per-node count of open tails.
pub struct Tails(Arc<Semaphore>);

impl Default for Tails {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(MAX_TAILS)))
    }
}

/// Opens a tail of `channel`.
///
/// # Errors
/// 503 when [`MAX_TAILS`] are open; 400 when the channel is not one the node
/// serves (a bad name, an unknown namespace); 500 when the broker failed.
pub async fn open(node: &Node, channel: &str) -> Result<Response, AdminError> {
    let tails = node.front_door_state::<Tails>();
    let permit = tails
        .0
        .clone()
        .try_acquire_owned()
        .map_err(|_| AdminError::Busy("too many live tails are open on this node"))?;
    let (conn, _control) = Connection::new("admin_tail", node.config().client.queue_max_size);
    let joined = node
        .join(
            &conn,
            JoinRequest {
                channel: channel.to_owned(),
                info: ClientInfo {
                    client: conn.client_id.clone(),
                    ..Default::default()
                },
                presence: false,
                join_leave: false,
                push_join_leave: false,
                stream: StreamAsk::None,
                encoder: &JSON_PUSHES,
                // Every publication, whole: no tags filter, no deltas.
                shape: Shape::default(),
                reject_unrecovered: false,
            },
        )
        .await
        .map_err(|e| {
            let error = e.to_protocol();
            match error.code {
                // Bad channel, unknown namespace, limit: the request's fault.
                100..=199 if !error.temporary => {
                    AdminError::BadRequest(format!("cannot tail {channel:?}: {}", error.message))
                }
                _ => AdminError::Internal(format!("tail of {channel:?}: {}", error.message)),
            }
        })?;
    node.go_live(&joined.member, joined.pending, None).await;
    let tail = Tail {
        node: node.clone(),
        conn,
        member: Some(joined.member),
        shutdown: node.shutdown_token(),
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(tail, |mut tail| async move {
        let chunk = tail.next_chunk().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(chunk), tail))
    });
    let opening = Bytes::from_static(b": tail open\n\n");
    let body = futures_util::stream::iter([Ok(opening)]).chain(stream);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// One open tail; dropping it (the browser went away) leaves the channel.
struct Tail {
    node: Node,
    conn: Arc<Connection>,
    /// Taken on drop, to leave the channel.
    member: Option<Member>,
    shutdown: CancellationToken,
    /// Returned to [`Tails`] when the tail ends.
    _permit: OwnedSemaphorePermit,
}

impl Tail {
    /// The next piece of the stream, `None` when it ends.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        // Closed already: the stream ends.
        self.member.as_ref()?;
        let drained = tokio::select! {
            drained = self.conn.outbox.drain() => drained,
            _ = tokio::time::sleep(KEEPALIVE) => return Some(Bytes::from_static(b": keepalive\n\n")),
            _ = self.shutdown.cancelled() => {
                self.close();
                return Some(Bytes::from_static(b"event: end\ndata: {\"reason\":\"shutdown\"}\n\n"));
            }
        };
        let mut out = Vec::new();
        let items = match drained {
            Drained::Batch(items) => items,
            Drained::Close(items, disconnect) => {
                // The outbox overflowed (a tail that is not read fast enough) or
                // a push could not be encoded as JSON: end the tail, and say why.
                self.close();
                let mut out = events(&items);
                let reason =
                    serde_json::json!({ "code": disconnect.code, "reason": disconnect.reason });
                out.extend_from_slice(format!("event: end\ndata: {reason}\n\n").as_bytes());
                return Some(Bytes::from(out));
            }
        };
        out.extend_from_slice(&events(&items));
        Some(Bytes::from(out))
    }

    fn close(&mut self) {
        if let Some(member) = self.member.take() {
            let node = self.node.clone();
            tokio::spawn(async move { node.leave(member).await });
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.close();
    }
}

/// Each item as one event. A publisher's JSON may hold line breaks (only
/// between tokens: JSON strings cannot): each line becomes a `data:` line of the
/// same event, which the reader joins back with `\n`; a lone `\r`, also a line
/// end to the event format, becomes a space.
fn events(items: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        for line in item.split(|&b| b == b'\n') {
            out.extend_from_slice(b"data: ");
            out.extend(line.iter().map(|&b| if b == b'\r' { b' ' } else { b }));
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_in_a_payload_stay_inside_one_event() {
        let item = Bytes::from_static(b"{\"push\":\r\n{\"a\": 1}}");
        let text = String::from_utf8(events(&[item])).unwrap();
        assert_eq!(text, "data: {\"push\": \ndata: {\"a\": 1}}\n\n");
    }
}
