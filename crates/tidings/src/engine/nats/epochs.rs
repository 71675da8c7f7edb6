//! Epoch claims: nodes that create a channel's stream at the same moment agree on
//! its epoch first, through a KV create-if-absent (bucket `<prefix>_epochs`).

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;

use super::broker::NatsBroker;
use super::{failed, timeout};
use crate::broker::BrokerError;
use crate::engine::epoch::{is_epoch, new_epoch};

/// How long an epoch claim (see [`NatsBroker::claim_epoch`]) lives when the node
/// that made it does not take it back: far longer than creating a stream takes.
pub(super) const EPOCH_CLAIM_TTL: Duration = Duration::from_secs(60);

/// An epoch claimed for a stream about to be created, and the claim's KV revision.
pub(super) struct EpochClaim {
    pub(super) epoch: String,
    pub(super) revision: u64,
}

impl NatsBroker {
    /// The epoch to create the stream `name` with: the one another node has
    /// claimed, or a new one this node claims (a KV create, which only one node can
    /// win). Nodes that create a stream at the same moment thus send the same
    /// subject, and the server lets only one stream hold a subject. With different
    /// subjects, nats-server before 2.9.16 can create two streams of one name when
    /// two requests arrive at once (it checks the name, then adds the stream,
    /// without holding its lock in between), so the nodes would go on with two
    /// epochs, one of them in a stream no lookup finds.
    ///
    /// The claim lives [`EPOCH_CLAIM_TTL`], or until the node whose create succeeds
    /// deletes it ([`NatsBroker::release_epoch`]), so a stream made after this one
    /// is lost gets a new epoch.
    pub(super) async fn claim_epoch(&self, name: &str) -> Result<EpochClaim, BrokerError> {
        for attempt in 0..3 {
            let store = self.epochs.get(&self.conn).await?;
            let proposal = new_epoch();
            let created = tokio::time::timeout(
                self.conn.config.request_timeout,
                store.create(name, Bytes::from(proposal.clone())),
            )
            .await;
            match created {
                Ok(Ok(revision)) => {
                    return Ok(EpochClaim {
                        epoch: proposal,
                        revision,
                    })
                }
                Ok(Err(e)) if e.kind() == jetstream::kv::CreateErrorKind::AlreadyExists => {
                    let entry = self.conn.timed("epoch claim", store.entry(name)).await?;
                    match entry {
                        Some(entry) if entry.operation == jetstream::kv::Operation::Put => {
                            let epoch = std::str::from_utf8(&entry.value)
                                .ok()
                                .filter(|e| is_epoch(e))
                                .ok_or_else(|| failed("epoch claim", "not an epoch"))?;
                            return Ok(EpochClaim {
                                epoch: epoch.to_string(),
                                revision: entry.revision,
                            });
                        }
                        // Taken back or expired meanwhile: claim again.
                        _ => {}
                    }
                }
                // The bucket may be gone (fresh server; a write to a missing bucket
                // times out rather than failing): look it up again once. Should
                // the timed-out create have been stored after all, the next one
                // finds it and reads this node's own proposal back.
                _ if attempt == 0 => self.epochs.forget(),
                Ok(Err(e)) => return Err(failed("epoch claim", e).into()),
                Err(_) => return Err(timeout("epoch claim").into()),
            }
        }
        Err(failed("epoch claim", "no stable claim").into())
    }

    /// Deletes the epoch claim of stream `name` if it is still the one at
    /// `revision`. Failing is harmless: the claim expires by itself.
    pub(super) async fn release_epoch(&self, name: &str, revision: u64) {
        let Ok(store) = self.epochs.get(&self.conn).await else {
            return;
        };
        let deleted = tokio::time::timeout(
            self.conn.config.request_timeout,
            store.delete_expect_revision(name, Some(revision)),
        )
        .await;
        if !matches!(deleted, Ok(Ok(()))) {
            tracing::debug!(
                stream = name,
                "epoch claim not deleted; it expires by itself"
            );
        }
    }
}
