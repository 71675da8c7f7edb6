//! The NATS engine: core NATS for fan-out, JetStream for history and presence.

pub mod broker;
pub mod presence;

pub use broker::{NatsBroker, NatsConnection};
pub use presence::NatsPresenceManager;
