//! Who is subscribed to a channel, across the nodes that share a presence backend.

use std::collections::HashMap;

use async_trait::async_trait;
use tidings_protocol::ClientInfo;

use crate::broker::EngineError;

/// Why a presence call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PresenceError {
    /// The engine's server or the connection to it failed.
    #[error(transparent)]
    Backend(#[from] EngineError),
}

/// Counts returned by `presence_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceStats {
    pub num_clients: u32,
    pub num_users: u32,
}

#[async_trait]
pub trait PresenceManager: Send + Sync + 'static {
    /// Adds or refreshes a client's entry in a channel.
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), PresenceError>;
    /// Removes a client's entry from a channel.
    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), PresenceError>;
    /// Every entry of a channel, by client id.
    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, PresenceError>;
    /// Client and distinct-user counts of a channel.
    async fn stats(&self, channel: &str) -> Result<PresenceStats, PresenceError>;
}
