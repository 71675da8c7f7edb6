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
//! - [`transport`]: the [`Transport`] enum and the adapters that carry frames
//!   over WebSocket, SSE, HTTP streaming and long polling.
//! - [`proto_client`]: [`ProtoClient`], the same raw protocol client as
//!   [`WsClient`] over any [`Transport`], so a scenario is written once and
//!   run over all four.
//! - [`uni_client`]: [`UniClient`] for the unidirectional endpoints.
//! - [`raw_http`]: HTTP/1.1 written by hand over TCP, to abandon a request
//!   once it is on the wire.
//! - [`sse`]: a spec-compliant Server-Sent Events parser.
//! - [`token`]: HS256 connection tokens signed like a backend would sign them.
//! - [`keys`]: RSA, ECDSA and Ed25519 key pairs made in the test, with PEM and JWK
//!   public keys, signing tokens like an identity provider.
//! - [`stub`]: a one-route HTTP server serving JSON (a JWKS endpoint) and counting
//!   requests.
//! - [`cluster`]: [`Cluster`], a Redis or NATS child plus three nodes on that
//!   engine, with SIGKILL and restart for the broker and each node.
//! - [`follower`]: [`Follower`], a subscriber that resubscribes and reconnects
//!   like an SDK and checks that it never misses a publication silently.
//! - [`sentinel`]: [`sentinel::RedisSentinelSet`], a Redis master, its replica
//!   and three sentinels, with a kill of the master for failover tests.
//! - [`redis_cluster`]: [`redis_cluster::RedisClusterSet`], a Redis Cluster of
//!   three masters (with replicas for failover tests).
//! - [`profile`]: config documents for `--config` that tests start from.
//! - [`metrics`]: reads values out of Prometheus text.
//!
//! Every wait has a deadline. Nothing here sleeps to let something happen.
//!
//! The crate does not depend on the Tidings crates: it drives the binary the
//! way a user would, through its command line, its sockets and its output.

pub mod brokers;
pub mod client;
pub mod cluster;
pub mod follower;
pub mod keys;
pub mod metrics;
pub mod profile;
pub mod proto_client;
pub mod raw_http;
pub mod raw_ws;
pub mod redis_cluster;
pub mod sentinel;
pub mod server;
pub mod sse;
pub mod stub;
pub mod token;
pub mod transport;
pub mod uni_client;

pub use brokers::{NatsServer, RedisServer};
pub use client::{handshake_status, Outcome, WsClient, DEFAULT_WAIT};
pub use cluster::{Cluster, Engine};
pub use follower::Follower;
pub use proto_client::ProtoClient;
pub use server::{binary_path, TidingsServer, TidingsServerBuilder};
pub use sse::{SseEvent, SseParser};
pub use token::{hs256_token, hs256_token_with_claims, unix_now};
pub use transport::Transport;
pub use uni_client::{UniClient, UniTransport};
