//! The NATS engine: core NATS for fan-out and control, JetStream for history, a
//! JetStream KV bucket for presence.
//!
//! # Names
//!
//! Every channel name becomes one *token* ([`encode_token`]) before it goes into a
//! subject, a stream name or a KV key, so that `.`, `*`, `>`, whitespace or any other
//! byte of a channel name can never act as a separator or a wildcard. With the
//! prefix `tidings` (`engine.nats.prefix`):
//!
//! | what | name |
//! | --- | --- |
//! | fan-out of a channel (publications, join, leave) | `tidings.client.<token>` |
//! | history of a channel (JetStream stream subject) | `tidings.history.<token>.<epoch>` |
//! | the stream itself | `tidings_history_<token>` (hashed when very long) |
//! | control message to every node | `tidings.control` |
//! | control message to one node | `tidings.node.<uid token>` |
//! | publish from a backend (queue group `tidings_publish`) | `tidings.publish` |
//! | presence (KV bucket; key `<token>.<client token>`) | `tidings_presence` |
//! | epoch claims while a stream is created (KV bucket; key: the stream name) | `tidings_epochs` |
//!
//! # Publishing with history: one atomic step
//!
//! A channel with history has its own stream, created on first use, whose only
//! subject carries the stream's epoch (`tidings.history.<token>.<epoch>`) and which
//! *republishes* (a JetStream stream option) every stored message to the channel's
//! fan-out subject with its stream sequence in the `Nats-Sequence` header. So storing
//! a publication and sending it to the nodes are one step done by the server, in
//! sequence order: there is no window in which a publication is in history but was
//! never sent, or sent with an offset other than its sequence. The sequence is the
//! channel's offset (from 1, contiguous), `max_msgs` is the history size, `max_age`
//! the history TTL, and an idempotency key is the `Nats-Msg-Id` header (a retry
//! within the duplicate window gets the first message's sequence back and publishes
//! nothing).
//!
//! A stream that is lost (server wiped, stream deleted) comes back with a new random
//! epoch. Publishing names the epoch in the subject, so a publish aimed at a stream
//! that no longer exists finds no stream, and the broker looks the stream up again
//! (or creates it) before it retries: a position returned to a publisher always
//! carries the epoch of the stream that holds the publication.
//!
//! Nodes that create a channel's stream at the same moment first agree on its
//! epoch through a KV create-if-absent (bucket `tidings_epochs`), so their create
//! requests name the same subject and the server keeps exactly one stream (see
//! `NatsBroker::claim_epoch` for the server behaviour this guards against).
//!
//! The server stores publications in sequence order, but it sends a stored
//! message to the fan-out subject after it has let go of the stream, so two
//! publishes arriving on two connections at once can go out in the other order
//! (seen with nats-server 2.9). Each channel subscription therefore puts stream
//! publications back in offset order before the node sees them, holding one that
//! comes a little early for a short while (`reorder::Reorder`); a hole that does not fill
//! in time reaches the node as a gap, and its subscribers recover from history.
//!
//! What can still be missed is a core NATS delivery (a node disconnected, or too
//! slow): the broker then tells the node through
//! [`crate::broker::BrokerEventHandler::handle_reconnect`], and the node's position check makes
//! subscribers recover or be told `recovered: false`.
//!
//! # Files
//!
//! - [`subjects`]: the token encoding and every subject, stream and bucket name.
//! - [`connection`]: the connection the broker and presence share.
//! - [`broker`]: [`NatsBroker`], its node-wide subscriptions and the trait's entry
//!   points; `streams`, `epochs`, `publish`, `idempotency`, `history`,
//!   `delivery` and `reorder` hold the rest of it, one concern each.
//! - `ingest`: publishes from backends on `<prefix>.publish`.
//! - [`presence`]: the presence manager, [`NatsPresenceManager`].
//! - [`occupancy`]: cluster-wide holders of keys, [`NatsOccupancy`].

pub mod broker;
pub mod connection;
mod delivery;
mod epochs;
mod history;
mod idempotency;
mod ingest;
pub mod occupancy;
pub mod presence;
mod publish;
mod reorder;
mod streams;
pub mod subjects;

use crate::broker::EngineError;

pub use broker::NatsBroker;
pub use connection::NatsConnection;
pub use occupancy::NatsOccupancy;
pub use presence::NatsPresenceManager;
pub use streams::SWEEP_INTERVAL;

/// The engine's name in its errors.
const ENGINE: &str = "nats";

/// The failure of `operation` (see [`EngineError::Failed`]).
fn failed(
    operation: &'static str,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> EngineError {
    EngineError::failed(ENGINE, operation, source)
}

/// `operation` got no answer in time.
fn timeout(operation: &'static str) -> EngineError {
    EngineError::Timeout {
        engine: ENGINE,
        operation,
    }
}
