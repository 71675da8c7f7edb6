//! Delivery to this node: a subscription per channel on its fan-out subject, each
//! message decoded ([`ChannelMessage`]) and handed to the node, stream
//! publications in offset order through a [`Reorder`].

use std::sync::Arc;

use futures_util::StreamExt as _;
use tidings_protocol::{ClientInfo, Publication};

use super::broker::{ChannelSub, NatsBroker, KIND_HEADER};
use super::reorder::Reorder;
use super::{failed, timeout};
use crate::broker::{BrokerError, BrokerEventHandler};

/// Header JetStream's republish adds: the stream sequence (our offset).
const SEQUENCE_HEADER: &str = "Nats-Sequence";
/// Header JetStream's republish adds: the subject the message was stored under.
const SUBJECT_HEADER: &str = "Nats-Subject";

/// One message of a channel's fan-out subject, decoded.
enum ChannelMessage {
    Join(ClientInfo),
    Leave(ClientInfo),
    /// Republished from the channel's stream: the offset is set, and the epoch.
    Stream(Publication, String),
    /// Without history (offset 0).
    Plain(Publication),
}

/// Decodes one fan-out message; `None` (logged) when it cannot be read.
fn decode(channel: &str, msg: &async_nats::Message) -> Option<ChannelMessage> {
    let header = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    let kind = header(KIND_HEADER);
    if let Some(kind @ ("join" | "leave")) = kind.as_deref() {
        let Ok(info) = serde_json::from_slice::<ClientInfo>(&msg.payload) else {
            tracing::warn!(channel, "undecodable join/leave from NATS");
            return None;
        };
        return Some(if kind == "join" {
            ChannelMessage::Join(info)
        } else {
            ChannelMessage::Leave(info)
        });
    }
    let Ok(mut publication) = crate::broker::decode_publication(&msg.payload) else {
        tracing::warn!(channel, "undecodable publication from NATS");
        return None;
    };
    // Republished from the channel's stream: the sequence is the offset, and the
    // stored subject ends with the stream's epoch.
    let stored = header(SUBJECT_HEADER);
    publication.offset = header(SEQUENCE_HEADER)
        .filter(|_| stored.is_some())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let epoch = stored
        .as_deref()
        .and_then(|subject| subject.rsplit('.').next())
        .filter(|e| !e.is_empty());
    Some(match epoch {
        Some(epoch) if publication.offset > 0 => {
            ChannelMessage::Stream(publication, epoch.to_string())
        }
        _ => ChannelMessage::Plain(publication),
    })
}

/// Hands one fan-out message that needs no ordering to the node.
fn deliver(handler: &dyn BrokerEventHandler, channel: &str, message: &ChannelMessage) {
    match message {
        ChannelMessage::Join(info) => handler.handle_join(channel, info),
        ChannelMessage::Leave(info) => handler.handle_leave(channel, info),
        ChannelMessage::Stream(publication, epoch) => {
            handler.handle_stream_publication(channel, publication, epoch)
        }
        ChannelMessage::Plain(publication) => handler.handle_publication(channel, publication),
    }
}

/// Reads one channel's fan-out subscription until it ends, handing messages to
/// the node, stream publications through a [`Reorder`].
async fn serve_channel(
    handler: Arc<dyn BrokerEventHandler>,
    channel: String,
    mut sub: async_nats::Subscriber,
) {
    let mut order = Reorder::default();
    let mut emit = |publication: &Publication, epoch: &str| {
        handler.handle_stream_publication(&channel, publication, epoch);
    };
    loop {
        let next = match order.until {
            None => sub.next().await,
            // A message that is already here goes before the deadline: after a
            // stall (a busy machine) both are ready, and flushing first would
            // turn a late-but-present publication into a gap.
            Some(at) => tokio::select! {
                biased;
                next = sub.next() => next,
                () = tokio::time::sleep_until(at) => {
                    order.flush(&mut emit);
                    continue;
                }
            },
        };
        let Some(msg) = next else { break };
        match decode(&channel, &msg) {
            Some(ChannelMessage::Stream(publication, epoch)) => {
                order.accept(publication, &epoch, &mut emit);
            }
            Some(other) => deliver(handler.as_ref(), &channel, &other),
            None => {}
        }
    }
}

impl NatsBroker {
    /// Subscribes this node to `channel`'s fan-out subject (once, however often it
    /// is called) and returns when the server has the subscription.
    pub(super) async fn subscribe_channel(&self, channel: &str) -> Result<(), BrokerError> {
        let client = self.conn.client()?.clone();
        let handler = self
            .handler
            .get()
            .cloned()
            .ok_or_else(|| failed("subscribe", "broker is not running"))?;
        let id = self
            .next_sub
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        {
            let mut subs = self.subs.lock();
            if subs.contains_key(channel) {
                return Ok(());
            }
            let subject = self.subjects().client(channel);
            let ch = channel.to_string();
            let task = tokio::spawn(async move {
                let sub = match client.subscribe(subject).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                serve_channel(handler, ch, sub).await;
            });
            subs.insert(
                channel.to_string(),
                ChannelSub {
                    id,
                    task: task.abort_handle(),
                },
            );
        }
        let ready = match tokio::time::timeout(self.conn.config.write_timeout, ready_rx).await {
            Ok(Ok(Ok(()))) => self.conn.barrier().await,
            Ok(Ok(Err(e))) => Err(failed("subscribe", e)),
            Ok(Err(_)) => Err(failed("subscribe", "task ended")),
            Err(_) => Err(timeout("subscribe")),
        };
        if let Err(e) = ready {
            let mut subs = self.subs.lock();
            if subs.get(channel).is_some_and(|s| s.id == id) {
                if let Some(s) = subs.remove(channel) {
                    s.task.abort();
                }
            }
            return Err(e.into());
        }
        Ok(())
    }
}
