//! Idempotency keys of publishes without history, claimed in a KV bucket
//! (`<prefix>_idempotency`); with history, the stream's duplicate window does it.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;

use super::broker::NatsBroker;
use super::subjects::encode_token;
use super::{failed, timeout};
use crate::broker::BrokerError;
use crate::engine::epoch::new_epoch;

/// What [`NatsBroker::claim_key`] found.
pub(super) enum KeyClaim {
    /// This publish holds the key (the claim's KV revision).
    Mine(u64),
    /// Another publish with the key went out within the window.
    Taken,
}

/// Value prefix of an idempotency claim whose publish is under way.
const CLAIM_PENDING: &str = "pending:";
/// Value of an idempotency claim whose publication went out.
const CLAIM_DONE: &[u8] = b"done";
/// How often a publish waiting for another's pending claim looks again.
const CLAIM_POLL: Duration = Duration::from_millis(50);

impl NatsBroker {
    fn idempotency_key(channel: &str, key: &str) -> String {
        format!("{}.{}", encode_token(channel), encode_token(key))
    }

    /// Claims idempotency key `key` of `channel` for this publish. The claim's
    /// value says where the publish is: `pending:<token>` (a random token of this
    /// call) until it is settled, then `done` ([`NatsBroker::settle_key`]); a publish
    /// that failed deletes its claim. So:
    ///
    /// - a claim holding this call's own token is this call's: a create that timed
    ///   out but was stored is read back as ours by the retry below;
    /// - `done` means the publication went out: this publish is a duplicate;
    /// - another call's pending claim is waited for: it turns `done` (duplicate) or
    ///   is deleted (claim again). One that stays unchanged longer than its owner
    ///   could take ([`NatsBroker::stale_claim_after`]) was abandoned (its owner's
    ///   create timed out yet was stored, or the owner died) and is taken over
    ///   with a compare-and-set, so a retry of a failed publish is never swallowed.
    pub(super) async fn claim_key(
        &self,
        channel: &str,
        key: &str,
    ) -> Result<KeyClaim, BrokerError> {
        let k = Self::idempotency_key(channel, key);
        let token = format!("{CLAIM_PENDING}{}{}", new_epoch(), new_epoch());
        let stale_after = self.stale_claim_after();
        let give_up =
            tokio::time::Instant::now() + stale_after + self.conn.config.request_timeout * 2;
        let mut relooked = false;
        // Another call's pending claim: its revision and when it was first seen.
        let mut watched: Option<(u64, tokio::time::Instant)> = None;
        loop {
            if tokio::time::Instant::now() > give_up {
                return Err(failed("idempotency key", "claim still busy").into());
            }
            let store = self.idempotency.get(&self.conn).await?;
            let created = tokio::time::timeout(
                self.conn.config.request_timeout,
                store.create(&k, Bytes::from(token.clone())),
            )
            .await;
            match created {
                Ok(Ok(revision)) => return Ok(KeyClaim::Mine(revision)),
                Ok(Err(e)) if e.kind() == jetstream::kv::CreateErrorKind::AlreadyExists => {}
                // The bucket may be gone (fresh server; a write to a missing bucket
                // times out rather than failing): look it up again once. A create
                // that timed out but was stored is read back as ours next time.
                _ if !relooked => {
                    relooked = true;
                    self.idempotency.forget();
                    continue;
                }
                Ok(Err(e)) => return Err(failed("idempotency key", e).into()),
                Err(_) => return Err(timeout("idempotency key").into()),
            }
            let entry = self.conn.timed("idempotency key", store.entry(&k)).await?;
            let Some(entry) = entry.filter(|e| e.operation == jetstream::kv::Operation::Put) else {
                // Deleted or expired meanwhile: claim again.
                continue;
            };
            if entry.value.as_ref() == token.as_bytes() {
                return Ok(KeyClaim::Mine(entry.revision));
            }
            if !entry.value.starts_with(CLAIM_PENDING.as_bytes()) {
                return Ok(KeyClaim::Taken);
            }
            let now = tokio::time::Instant::now();
            match watched {
                Some((revision, since))
                    if revision == entry.revision && now.duration_since(since) >= stale_after =>
                {
                    let taken = self
                        .conn
                        .timed(
                            "idempotency key",
                            store.update(&k, Bytes::from(token.clone()), entry.revision),
                        )
                        .await;
                    match taken {
                        Ok(revision) => return Ok(KeyClaim::Mine(revision)),
                        // Someone else moved it first: look again.
                        Err(e) => tracing::debug!(error = %e, "idempotency claim takeover"),
                    }
                }
                Some((revision, _)) if revision == entry.revision => {}
                _ => watched = Some((entry.revision, now)),
            }
            tokio::time::sleep(CLAIM_POLL).await;
        }
    }

    /// How long another call's pending idempotency claim may stay unchanged before
    /// it counts as abandoned: longer than its owner can still need (the rest of
    /// its create, its publish, and settling the claim).
    fn stale_claim_after(&self) -> Duration {
        self.conn.config.write_timeout + self.conn.config.request_timeout * 2
    }

    /// Settles this call's claim (at `revision`) of an idempotency key: `done`
    /// when the publication went out, deleted when it did not (so a retry
    /// publishes). Failing is not fatal: a claim left pending is taken over by the
    /// next publish with the key once it is stale, and one left `done` expires
    /// with the window.
    pub(super) async fn settle_key(&self, channel: &str, key: &str, revision: u64, sent: bool) {
        let k = Self::idempotency_key(channel, key);
        let Ok(store) = self.idempotency.get(&self.conn).await else {
            return;
        };
        let settled = if sent {
            self.conn
                .timed(
                    "idempotency key",
                    store.update(&k, Bytes::from_static(CLAIM_DONE), revision),
                )
                .await
                .map(|_| ())
        } else {
            self.conn
                .timed(
                    "idempotency key",
                    store.delete_expect_revision(&k, Some(revision)),
                )
                .await
        };
        if let Err(e) = settled {
            tracing::debug!(error = %e, sent, "idempotency claim not settled");
        }
    }
}
