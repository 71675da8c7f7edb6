//! The Redis engine: nodes joined through Redis (6.2+) or Valkey: one server, or
//! several shards.
//!
//! - `conn`: the shared command connection (reconnects, timeouts) and the client
//!   built from the settings.
//! - `shards`: one connection per shard, and which shard keeps a channel.
//! - `sentinel`: finding a shard's master through Redis Sentinel, and what a
//!   failover costs.
//! - `cluster`: a shard that is a Redis Cluster (hash tags, sharded pub/sub).
//! - `cluster_pubsub`: the sharded pub/sub connection of a Redis Cluster shard.
//! - `keys`: the name of every key and pub/sub channel under the prefix.
//! - `scripts`: the Lua scripts that publish and read history atomically.
//! - [`broker`]: [`RedisBroker`], publish, history, join/leave, control.
//! - `batch`: a batch of publications as one pipeline.
//! - `pubsub`: the pub/sub connection that delivers to this node.
//! - `ingest`: the consumer of the direct-publish stream.
//! - [`presence`]: the presence manager, [`RedisPresenceManager`].
//! - [`occupancy`]: cluster-wide holders of keys, [`RedisOccupancy`].
//!
//! The key layout and the envelopes are documented in docs/engines.md.

mod batch;
pub mod broker;
mod cluster;
mod cluster_pubsub;
pub(crate) mod conn;
mod ingest;
pub(crate) mod keys;
pub mod occupancy;
pub mod presence;
mod pubsub;
mod scripts;
mod sentinel;
pub(crate) mod shards;

pub use broker::RedisBroker;
pub use ingest::INGEST_GROUP;
pub use occupancy::RedisOccupancy;
pub use presence::RedisPresenceManager;

/// The engine's name in its errors.
const ENGINE: &str = "redis";
