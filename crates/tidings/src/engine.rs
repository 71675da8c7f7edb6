//! Picks the [`Broker`] and [`PresenceManager`] that `engine.type` names.
//!
//! `memory` keeps everything in this process (one node). `redis` and `nats` join
//! nodes through a shared server; their modules live under `broker/` and
//! `presence/`.

use std::sync::Arc;

use crate::broker::{Broker, MemoryBroker};
use crate::config::Config;
use crate::presence::{MemoryPresenceManager, PresenceManager};

/// A node's broker and presence manager.
pub struct Engine {
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn PresenceManager>,
    /// The memory broker, when that is the engine, for the node's periodic sweep of
    /// idle streams (the networked engines expire their data on the server).
    pub memory: Option<Arc<MemoryBroker>>,
}

/// Builds the engine the configuration names. `Config::validate` has already
/// refused unknown engine types.
///
/// # Errors
/// A message when the engine's settings cannot be used (bad address, TLS files).
pub fn build(config: &Config) -> Result<Engine, String> {
    match config.engine.kind.as_str() {
        "memory" => {
            let memory = Arc::new(MemoryBroker::new(config.channel.history_meta_ttl));
            Ok(Engine {
                broker: memory.clone(),
                presence: Arc::new(MemoryPresenceManager::new()),
                memory: Some(memory),
            })
        }
        other => Err(format!("engine.type {other:?} is not available")),
    }
}
