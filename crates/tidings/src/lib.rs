//! Tidings: a real-time messaging server you can run on its own or mount in an axum app.
//!
//! A short tour, in the order a message travels:
//!
//! - [`transport`] adapts sockets: the WebSocket endpoint reads frames into a session
//!   and writes what the connection's outbox holds.
//! - [`session`] is the Centrifugo client protocol, once for every transport and in
//!   both encodings (JSON and Protobuf): connect, subscribe with recovery, publish,
//!   presence, history, pings.
//! - [`node`] owns everything shared: the [`hub`] (local fan-out, each publication
//!   encoded once per wire format), the [`broker`] (publish, history, delivery
//!   between nodes), [`presence`], [`config`], [`metrics`]. Its methods are the only
//!   way into the core: [`node::membership`] is where every front door joins and
//!   leaves channels, and the cluster carries requests whose handlers the front
//!   doors and transports register. The layers are in docs/architecture.md and
//!   checked by `scripts/check-layers.py`.
//! - [`engine`] builds the broker and presence manager that `engine.type` names:
//!   memory, Redis or NATS (the last two behind the `redis` and `nats` features).
//! - [`proxy`] calls the application's backend (connect, refresh, subscribe,
//!   publish, sub_refresh, RPC) with Centrifugo's proxy bodies, for every front door.
//! - [`webhook`] tells the application's backend what happened (channels occupied
//!   and vacated, members added and removed, client publications) in Pusher's
//!   signed envelope; [`occupancy`] is the engine trait that makes the first/last
//!   events cluster-wide.
//! - [`outbox`] bounds what a connection may have queued and batches its writes.
//! - [`limit`] counts connections and holds the token buckets that bound how fast
//!   connections arrive and how fast each one may send commands.
//! - [`socketio`] is a second front door (the `socketio` feature): Engine.IO v4 /
//!   Socket.IO v5 clients on the same channels, as a session kind of its own.
//! - [`config`] is data: the typed configuration with Centrifugo's key names, one
//!   file per section, loaded from TOML, YAML or JSON and `TIDINGS_*` variables. It
//!   uses no other module; [`auth`] checks its token keys and [`tls`] its certificates.
//! - [`api`] is the Centrifugo-compatible server HTTP API; [`admin`] the admin web
//!   UI on top of it (login, live tail, masked configuration), whose pages go out
//!   with the headers of [`web`].
//! - [`server`] puts the routes together and runs them with graceful shutdown, a
//!   header read timeout and, with [`tls`], https:// and wss://; [`request_body`]
//!   gives every request body a deadline.
//!
//! # Examples
//!
//! Mount Tidings into an existing axum application:
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let node = tidings::Node::new(tidings::Config::development());
//! let app = axum::Router::new()
//!     .route("/hello", axum::routing::get(|| async { "hi" }))
//!     .merge(tidings::server::router(&node));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! // Serves until Ctrl-C, then drains the node; slow clients are timed out.
//! tidings::server::run(listener, node, app, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```

pub mod admin;
pub mod api;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod config;
pub mod connection;
pub mod engine;
pub mod hub;
pub mod limit;
pub mod metrics;
pub mod node;
pub mod occupancy;
pub mod origin;
pub mod outbox;
pub mod presence;
pub mod proxy;
pub mod request_body;
pub mod server;
pub mod session;
#[cfg(feature = "socketio")]
pub mod socketio;
pub mod tls;
pub mod transport;
pub mod web;
pub mod webhook;

pub use config::Config;
pub use node::{Node, NodeError, PublishRequest};
pub use tidings_protocol as protocol;
