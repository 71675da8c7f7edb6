//! Wire types of the Centrifugo client protocol (v2, JSON encoding) as spoken by Tidings.
//!
//! - [`command`] holds what a client sends: a [`Command`] with one request field set.
//! - [`reply`] holds what the server sends: a [`Reply`] to a command, or a [`Push`].
//! - [`codes`] holds the error codes and disconnect codes with their documented meanings.
//! - [`raw`] holds [`RawJson`], the type for `data` fields, which travel as raw JSON.
//! - [`codec`] splits and joins newline-delimited frames.
//!
//! The crate has no async runtime in it, so the server, the Rust client and the
//! fuzzers share one definition of the wire.

pub mod codec;
pub mod codes;
pub mod command;
pub mod raw;
pub mod reply;

pub use codes::{Disconnect, Error};
pub use command::*;
pub use raw::RawJson;
pub use reply::*;
