//! Wire types of the Centrifugo client protocol (v2) as spoken by Tidings, with its two
//! encodings: JSON and Protobuf.
//!
//! - [`command`] holds what a client sends: a [`Command`] with one request field set.
//! - [`reply`] holds what the server sends: a [`Reply`] to a command, or a [`Push`].
//! - [`codes`] holds the error codes and disconnect codes with their documented meanings.
//! - [`payload`] holds [`Payload`], the type for `bytes` fields (`data`, `conn_info`…),
//!   which are raw JSON in one encoding and any bytes in the other.
//! - [`codec`] splits and joins newline-delimited JSON frames.
//! - [`proto`] is the Protobuf encoding: the messages of `client.proto`, their
//!   conversion to and from the types above, and length-delimited framing.
//!
//! The types above are the one model of the protocol: a server decodes either
//! encoding into them and keeps one state machine. The crate has no async runtime in
//! it, so the server, the Rust client and the fuzzers share one definition of the wire.

pub mod codec;
pub mod codes;
pub mod command;
pub mod filter;
pub mod payload;
pub mod proto;
pub mod reply;

pub use codes::{Disconnect, Error};
pub use command::*;
pub use payload::{NotJson, Payload, RawJson};
pub use reply::*;
