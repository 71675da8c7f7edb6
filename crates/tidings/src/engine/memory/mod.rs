//! The memory engine: one node, everything in this process.
//!
//! - [`broker`]: per-channel streams (epoch, offsets, bounded history) and delivery
//!   as a function call.
//! - [`presence`]: exact presence, since one node sees every subscribe itself.

pub mod broker;
pub mod presence;

pub use broker::MemoryBroker;
pub use presence::MemoryPresenceManager;
