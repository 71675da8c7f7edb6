//! Cluster-wide occupancy: which nodes hold a key (a channel with subscribers, a
//! user with connections in a presence channel), so that the first node to take a
//! key and the last to let it go learn that they were first and last across the
//! whole cluster, each exactly once.
//!
//! Every node keeps one entry per key it holds, with an expiry (the engine's
//! presence TTL) that the node's timer moves forward while it lives. Each call
//! first drops the key's expired entries, atomically with the change it makes, so
//! an entry whose node died never keeps a key held. When expiry alone empties a
//! key (the last holder was killed), the next call on that key, or [`reap`] on any
//! live node, reports it, and only that one call does: the engine claims the
//! change atomically (a Lua script on Redis, a compare-and-set on the key's
//! revision on NATS).
//!
//! Keys are opaque strings to the engine; the node chooses and reads them.
//!
//! [`reap`]: OccupancyTracker::reap

use async_trait::async_trait;

use crate::broker::EngineError;

/// Why an occupancy call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OccupancyError {
    /// The engine's server or the connection to it failed. The change may still
    /// have been made (a timeout); the caller tries again later, and a repeated
    /// call reports no second transition.
    #[error(transparent)]
    Backend(#[from] EngineError),
}

/// What a [`OccupancyTracker::enter`] or [`OccupancyTracker::leave`] changed,
/// cluster-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    /// The key's entries had all expired (their nodes stopped refreshing them) and
    /// this call removed the last of them: the key was let go silently, before
    /// this call's own change.
    pub expired: bool,
    /// `enter`: no live node held the key before, this node is the first.
    /// `leave`: this node held it and no live node holds it now.
    pub edge: bool,
}

/// The cluster-wide holders of keys; see the module docs.
#[async_trait]
pub trait OccupancyTracker: Send + Sync + 'static {
    /// `node` holds `key`, or still does: adds its entry or moves its expiry on.
    async fn enter(&self, key: &str, node: &str) -> Result<Change, OccupancyError>;
    /// `node` no longer holds `key`.
    async fn leave(&self, key: &str, node: &str) -> Result<Change, OccupancyError>;
    /// Up to `limit` keys that expiry alone emptied, each reported to exactly one
    /// caller across the cluster (the caller then tells whoever needs to know).
    async fn reap(&self, limit: usize) -> Result<Vec<String>, OccupancyError>;
}
