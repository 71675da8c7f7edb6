//! Test harness for Tidings: starts the real `tidings` binary on a free port
//! and talks to it over real sockets.
//!
//! A tour of the modules:
//!
//! - [`server`]: [`TidingsServer`] spawns `tidings serve --port 0`, waits for
//!   the `tidings listening on …` line, keeps draining the child's output so it
//!   never blocks on a full pipe, calls the HTTP server API, and kills the
//!   child on `Drop`.
//! - [`client`]: [`WsClient`], a raw Centrifugo protocol client over
//!   tokio-tungstenite. It speaks JSON commands and splits newline-batched
//!   frames back into single replies, so tests can see exactly what the
//!   server sent.
//! - [`token`]: HS256 connection tokens signed like a backend would sign them.
//! - [`profile`]: config documents for `--config` that tests start from.
//! - [`metrics`]: reads values out of Prometheus text.
//!
//! Every wait has a deadline. Nothing here sleeps to let something happen.
//!
//! The crate does not depend on the Tidings crates: it drives the binary the
//! way a user would, through its command line, its sockets and its output.

pub mod client;
pub mod metrics;
pub mod profile;
pub mod raw_ws;
pub mod server;
pub mod token;

pub use client::{handshake_status, Outcome, WsClient, DEFAULT_WAIT};
pub use server::{TidingsServer, TidingsServerBuilder};
pub use token::{hs256_token, hs256_token_with_claims, unix_now};
