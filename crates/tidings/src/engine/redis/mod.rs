//! The Redis engine: nodes joined through one Redis (6.2+) or Valkey server.

pub mod broker;
pub mod presence;

pub use broker::RedisBroker;
pub use presence::RedisPresenceManager;
