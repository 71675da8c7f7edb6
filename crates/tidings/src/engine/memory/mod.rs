//! The memory engine: one node, everything in this process.
//!
//! - [`broker`]: per-channel streams (epoch, offsets, bounded history) and delivery
//!   as a function call.
//! - [`presence`]: exact presence, since one node sees every subscribe itself.
//! - [`occupancy`]: the holders of each key, without expiry (one node).

pub mod broker;
pub mod occupancy;
pub mod presence;

pub use broker::MemoryBroker;
pub use occupancy::MemoryOccupancy;
pub use presence::MemoryPresenceManager;
