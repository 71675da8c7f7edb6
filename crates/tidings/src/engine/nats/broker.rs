//! The NATS broker: core NATS for fan-out and control, JetStream for history.
//!
//! # Names
//!
//! Every channel name becomes one *token* ([`encode_token`]) before it goes into a
//! subject, a stream name or a KV key, so that `.`, `*`, `>`, whitespace or any other
//! byte of a channel name can never act as a separator or a wildcard. With the
//! prefix `tidings` (`engine.nats.prefix`):
//!
//! | what | name |
//! | --- | --- |
//! | fan-out of a channel (publications, join, leave) | `tidings.client.<token>` |
//! | history of a channel (JetStream stream subject) | `tidings.history.<token>.<epoch>` |
//! | the stream itself | `tidings_history_<token>` (hashed when very long) |
//! | control message to every node | `tidings.control` |
//! | control message to one node | `tidings.node.<uid token>` |
//! | publish from a backend (queue group `tidings_publish`) | `tidings.publish` |
//! | presence (KV bucket; key `<token>.<client token>`) | `tidings_presence` |
//! | epoch claims while a stream is created (KV bucket; key: the stream name) | `tidings_epochs` |
//!
//! # Publishing with history: one atomic step
//!
//! A channel with history has its own stream, created on first use, whose only
//! subject carries the stream's epoch (`tidings.history.<token>.<epoch>`) and which
//! *republishes* (a JetStream stream option) every stored message to the channel's
//! fan-out subject with its stream sequence in the `Nats-Sequence` header. So storing
//! a publication and sending it to the nodes are one step done by the server, in
//! sequence order: there is no window in which a publication is in history but was
//! never sent, or sent with an offset other than its sequence. The sequence is the
//! channel's offset (from 1, contiguous), `max_msgs` is the history size, `max_age`
//! the history TTL, and an idempotency key is the `Nats-Msg-Id` header (a retry
//! within the duplicate window gets the first message's sequence back and publishes
//! nothing).
//!
//! A stream that is lost (server wiped, stream deleted) comes back with a new random
//! epoch. Publishing names the epoch in the subject, so a publish aimed at a stream
//! that no longer exists finds no stream, and the broker looks the stream up again
//! (or creates it) before it retries: a position returned to a publisher always
//! carries the epoch of the stream that holds the publication.
//!
//! Nodes that create a channel's stream at the same moment first agree on its
//! epoch through a KV create-if-absent (bucket `tidings_epochs`), so their create
//! requests name the same subject and the server keeps exactly one stream (see
//! [`NatsBroker::claim_epoch`] for the server behaviour this guards against).
//!
//! The server stores publications in sequence order, but it sends a stored
//! message to the fan-out subject after it has let go of the stream, so two
//! publishes arriving on two connections at once can go out in the other order
//! (seen with nats-server 2.9). Each channel subscription therefore puts stream
//! publications back in offset order before the node sees them, holding one that
//! comes a little early for a short while ([`Reorder`]); a hole that does not fill
//! in time reaches the node as a gap, and its subscribers recover from history.
//!
//! What can still be missed is a core NATS delivery (a node disconnected, or too
//! slow): the broker then tells the node through
//! [`BrokerEventHandler::handle_reconnect`], and the node's position check makes
//! subscribers recover or be told `recovered: false`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;
use parking_lot::Mutex;
use tidings_protocol::{ClientInfo, Publication, StreamPosition};
use tokio::sync::watch;

use crate::broker::{
    BatchPublish, Broker, BrokerError, BrokerEventHandler, HistoryFilter, HistoryPage,
    PublishOptions, IDEMPOTENCY_WINDOW,
};
use crate::config::NatsEngineConfig;

/// Header naming what a fan-out message is: `pub`, `join` or `leave`.
const KIND_HEADER: &str = "Tidings-Kind";
/// Header JetStream's republish adds: the stream sequence (our offset).
const SEQUENCE_HEADER: &str = "Nats-Sequence";
/// Header JetStream's republish adds: the subject the message was stored under.
const SUBJECT_HEADER: &str = "Nats-Subject";

/// Longest stream name used as is; longer ones are hashed (stream names become
/// directory names in the server's file store).
const MAX_STREAM_NAME: usize = 200;

/// Most publications one history call reads.
const MAX_HISTORY_READ: u64 = 100_000;

/// How often each node sweeps unneeded history streams ([`NatsBroker::sweep`]).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

/// A stream nobody published to is deleted this long after its creation, unless
/// the sweeping node has subscribers on its channel (as the memory broker does).
const EMPTY_STREAM_TTL: Duration = Duration::from_secs(300);

/// Most channels whose stream settings are remembered; past it the memo is cleared.
const MAX_STREAM_MEMO: usize = 100_000;

/// How long an epoch claim (see [`NatsBroker::claim_epoch`]) lives when the node
/// that made it does not take it back: far longer than creating a stream takes.
const EPOCH_CLAIM_TTL: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------
// Token encoding
// ---------------------------------------------------------------------------------

/// Encodes a name as one NATS token: ASCII letters, digits, `_` and `-` stay; every
/// other byte of the UTF-8 text becomes `=` and two upper-case hex digits (`.` →
/// `=2E`, `*` → `=2A`, `>` → `=3E`, space → `=20`, `=` → `=3D`). The empty name is
/// `=` alone. The result is a valid subject token, stream name part and KV key part,
/// and different names always give different tokens.
pub fn encode_token(name: &str) -> String {
    if name.is_empty() {
        return "=".into();
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push('=');
            out.push(char::from(HEX[(b >> 4) as usize]));
            out.push(char::from(HEX[(b & 0xF) as usize]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The name a token stands for, or `None` when it is not [`encode_token`]'s output.
pub fn decode_token(token: &str) -> Option<String> {
    if token == "=" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'=' {
            let hex = |c: u8| HEX.iter().position(|&h| h == c);
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            let v = (hi << 4 | lo) as u8;
            // A byte that would have been kept is never escaped.
            if v.is_ascii_alphanumeric() || v == b'_' || v == b'-' {
                return None;
            }
            out.push(v);
            i += 3;
        } else if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    if out.is_empty() {
        return None;
    }
    String::from_utf8(out).ok()
}

/// Subject and stream names of one engine prefix.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// Fan-out subject of a channel.
    pub fn client(&self, channel: &str) -> String {
        format!("{}.client.{}", self.prefix, encode_token(channel))
    }

    /// The subject a channel's stream stores, for one epoch.
    pub fn history(&self, channel: &str, epoch: &str) -> String {
        format!("{}.history.{}.{epoch}", self.prefix, encode_token(channel))
    }

    /// Stream name of a channel's history.
    pub fn stream(&self, channel: &str) -> String {
        let plain = format!("{}_history_{}", self.prefix, encode_token(channel));
        if plain.len() <= MAX_STREAM_NAME {
            return plain;
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, channel.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{}_historyx_{hex}", self.prefix)
    }

    pub fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }

    pub fn node(&self, uid: &str) -> String {
        format!("{}.node.{}", self.prefix, encode_token(uid))
    }

    /// Where backends publish (see docs/engines.md).
    pub fn publish(&self) -> String {
        format!("{}.publish", self.prefix)
    }

    pub fn publish_queue(&self) -> String {
        format!("{}_publish", self.prefix)
    }

    /// A subject nobody listens on: a request to it comes back "no responders"
    /// after the server has handled everything sent before it.
    fn barrier(&self) -> String {
        format!("{}.barrier", self.prefix)
    }

    /// KV bucket of idempotency keys of channels without history.
    pub fn idempotency_bucket(&self) -> String {
        format!("{}_idempotency", self.prefix)
    }

    /// KV bucket of presence.
    pub fn presence_bucket(&self) -> String {
        format!("{}_presence", self.prefix)
    }

    /// KV bucket of epoch claims (key: the channel's stream name), which make the
    /// nodes that create a channel's stream at the same moment agree on its epoch.
    pub fn epoch_bucket(&self) -> String {
        format!("{}_epochs", self.prefix)
    }
}

// ---------------------------------------------------------------------------------
// Connection shared by the broker and the presence manager
// ---------------------------------------------------------------------------------

/// One NATS connection (kept up by async-nats, which reconnects and resubscribes by
/// itself) shared by [`NatsBroker`] and the NATS presence manager.
pub struct NatsConnection {
    pub(crate) config: NatsEngineConfig,
    pub(crate) names: Names,
    client: OnceLock<async_nats::Client>,
    js: OnceLock<jetstream::Context>,
    /// Bumped when publications may have been missed: a reconnect (not the first
    /// connect) or a slow-consumer drop.
    doubt: watch::Sender<u64>,
}

impl NatsConnection {
    /// Starts connecting in the background and returns at once; calls fail with a
    /// backend error until the connection is up. Must run inside a Tokio runtime.
    ///
    /// # Errors
    /// A message when the TLS settings cannot be used or there is no runtime.
    pub fn start(config: &NatsEngineConfig) -> Result<Arc<Self>, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the NATS engine needs a Tokio runtime".to_string())?;
        let conn = Arc::new(Self {
            config: config.clone(),
            names: Names::new(&config.prefix),
            client: OnceLock::new(),
            js: OnceLock::new(),
            doubt: watch::channel(0).0,
        });
        let mut options = async_nats::ConnectOptions::new()
            .name("tidings")
            .connection_timeout(config.dial_timeout)
            .request_timeout(Some(config.request_timeout))
            .retry_on_initial_connect()
            .max_reconnects(None)
            // Quick retries: nodes must be back within seconds of the server.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(1000))
            });
        if config.tls.enabled || config.url.starts_with("tls://") {
            options = options.require_tls(true);
            if !config.tls.server_ca_pem.is_empty() || !config.tls.cert_pem.is_empty() {
                options = options.tls_client_config(tls_client_config(config)?);
            }
        }
        let weak = Arc::downgrade(&conn);
        let seen_connect = Arc::new(std::sync::atomic::AtomicBool::new(false));
        options = options.event_callback(move |event| {
            let weak = weak.clone();
            let seen_connect = seen_connect.clone();
            async move {
                let Some(conn) = weak.upgrade() else { return };
                match event {
                    async_nats::Event::Connected => {
                        if seen_connect.swap(true, std::sync::atomic::Ordering::SeqCst) {
                            tracing::info!("NATS connection is back");
                            conn.doubt.send_modify(|n| *n += 1);
                        }
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS connection lost; reconnecting");
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        tracing::warn!(sid, "NATS dropped messages for a slow subscription");
                        conn.doubt.send_modify(|n| *n += 1);
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        });
        let url = config.url.clone();
        let target = conn.clone();
        runtime.spawn(async move {
            match options.connect(url.as_str()).await {
                Ok(client) => {
                    let mut js = jetstream::new(client.clone());
                    js.set_timeout(target.config.request_timeout);
                    let _ = target.js.set(js);
                    let _ = target.client.set(client);
                }
                Err(e) => tracing::error!(error = %e, url, "NATS engine cannot connect"),
            }
        });
        Ok(conn)
    }

    /// The client, when connected right now.
    pub(crate) fn client(&self) -> Result<&async_nats::Client, String> {
        let client = self.client.get().ok_or("NATS is not connected yet")?;
        if client.connection_state() != async_nats::connection::State::Connected {
            return Err("NATS is not connected".into());
        }
        Ok(client)
    }

    pub(crate) fn jetstream(&self) -> Result<&jetstream::Context, String> {
        self.client()?;
        self.js
            .get()
            .ok_or_else(|| "NATS is not connected yet".into())
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client().is_ok()
    }

    /// Waits for the first connection (for tests and startup checks).
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.client().is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Runs `fut` with the request timeout.
    pub(crate) async fn timed<T, E: std::fmt::Display>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.config.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: timed out")),
        }
    }

    /// A KV bucket whose entries live `ttl`, created when missing.
    pub(crate) async fn key_value(
        &self,
        bucket: &str,
        ttl: Duration,
    ) -> Result<jetstream::kv::Store, String> {
        let js = self.jetstream()?;
        if let Ok(store) = self.timed("KV lookup", js.get_key_value(bucket)).await {
            return Ok(store);
        }
        // The bucket's stream is made here rather than with `create_key_value`,
        // whose request the 2.9 servers of Debian and Ubuntu answer in a form
        // async-nats cannot read. Same layout as a KV bucket of history 1.
        let config = stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: ttl,
            duplicate_window: ttl.min(Duration::from_secs(120)),
            storage: stream::StorageType::Memory,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: 1,
            ..Default::default()
        };
        if let Err(e) = self.timed("KV create", js.create_stream(config)).await {
            // Another node may have created it meanwhile.
            tracing::debug!(error = %e, bucket, "KV bucket create");
        }
        self.timed("KV lookup", js.get_key_value(bucket)).await
    }

    /// Returns once the server has handled everything this connection sent before
    /// (subscriptions included): a request nobody answers comes back "no
    /// responders" only after that.
    async fn barrier(&self) -> Result<(), String> {
        let client = self.client()?;
        let req = client.request(self.names.barrier(), Bytes::new());
        match tokio::time::timeout(
            self.config.write_timeout.max(self.config.request_timeout),
            req,
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Ok(Err(e)) => Err(format!("NATS round trip: {e}")),
            Err(_) => Err("NATS round trip: timed out".into()),
        }
    }
}

fn tls_client_config(config: &NatsEngineConfig) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("engine.nats.tls: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    if config.tls.server_ca_pem.is_empty() {
        return Err("engine.nats.tls: server_ca_pem is required with a client certificate".into());
    }
    for cert in crate::tls::certificates("server_ca_pem", &config.tls.server_ca_pem)
        .map_err(|e| format!("engine.nats.tls: {e}"))?
    {
        roots
            .add(cert)
            .map_err(|e| format!("engine.nats.tls: {e}"))?;
    }
    let builder = builder.with_root_certificates(roots);
    if config.tls.cert_pem.is_empty() {
        return Ok(builder.with_no_client_auth());
    }
    let certs = crate::tls::certificates("cert_pem", &config.tls.cert_pem)
        .map_err(|e| format!("engine.nats.tls: {e}"))?;
    let key = crate::tls::private_key("key_pem", &config.tls.key_pem)
        .map_err(|e| format!("engine.nats.tls: {e}"))?;
    builder
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("engine.nats.tls: {e}"))
}

// ---------------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------------

/// Stream settings a channel's stream was last seen with, so that most publishes go
/// straight to the stream.
#[derive(Clone, PartialEq, Eq)]
struct StreamMemo {
    epoch: String,
    size: usize,
    ttl: Duration,
}

/// An epoch claimed for a stream about to be created, and the claim's KV revision.
struct EpochClaim {
    epoch: String,
    revision: u64,
}

/// What [`NatsBroker::claim_key`] found.
enum KeyClaim {
    /// This publish holds the key (the claim's KV revision).
    Mine(u64),
    /// Another publish with the key went out within the window.
    Taken,
}

/// Value prefix of an idempotency claim whose publish is under way.
const CLAIM_PENDING: &str = "pending:";
/// Value of an idempotency claim whose publication went out.
const CLAIM_DONE: &[u8] = b"done";
/// How often a publish waiting for another's pending claim looks again.
const CLAIM_POLL: Duration = Duration::from_millis(50);

/// A channel subscription: its task (which owns the NATS subscription) and an id
/// that tells a newer subscription of the same channel from an older one.
struct ChannelSub {
    id: u64,
    task: tokio::task::AbortHandle,
}

/// Broker over NATS; see the module docs.
pub struct NatsBroker {
    conn: Arc<NatsConnection>,
    handler: OnceLock<Arc<dyn BrokerEventHandler>>,
    ingest: crate::engine::IngestSlot,
    memo: Arc<Mutex<HashMap<String, StreamMemo>>>,
    subs: Mutex<HashMap<String, ChannelSub>>,
    next_sub: std::sync::atomic::AtomicU64,
    /// Background tasks (control subscriptions, reconnect watcher); aborted on drop.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Streams whose last publication is older than this are deleted by the sweep
    /// (`channel.history_meta_ttl`).
    meta_ttl: Duration,
    /// Idempotency keys of publishes without history (with history, the stream's
    /// duplicate detection does it).
    idempotency: Arc<Mutex<Option<jetstream::kv::Store>>>,
    /// The bucket of epoch claims, once looked up.
    epochs: Arc<Mutex<Option<jetstream::kv::Store>>>,
    /// True once the node-wide subscriptions (control, publish) are in place.
    ready: watch::Sender<bool>,
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        for (_, s) in self.subs.lock().drain() {
            s.task.abort();
        }
    }
}

fn backend(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Backend(e.to_string())
}

impl NatsBroker {
    /// A broker on `conn`. `ingest` is where the node puts its publish path for
    /// messages backends send to `<prefix>.publish`.
    pub fn new(conn: Arc<NatsConnection>, ingest: crate::engine::IngestSlot) -> Self {
        Self {
            conn,
            handler: OnceLock::new(),
            ingest,
            memo: Arc::new(Mutex::new(HashMap::new())),
            subs: Mutex::new(HashMap::new()),
            next_sub: std::sync::atomic::AtomicU64::new(1),
            tasks: Mutex::new(Vec::new()),
            ready: watch::channel(false).0,
            idempotency: Arc::new(Mutex::new(None)),
            epochs: Arc::new(Mutex::new(None)),
            meta_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }

    /// Sets how long a channel's stream outlives its last publication
    /// (`channel.history_meta_ttl`; default 30 days).
    pub fn with_meta_ttl(mut self, meta_ttl: Duration) -> Self {
        self.meta_ttl = meta_ttl;
        self
    }

    /// Runs [`NatsBroker::sweep`] every [`SWEEP_INTERVAL`] until the broker is
    /// dropped.
    pub fn start_sweeper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(broker) = weak.upgrade() else { break };
                match broker.sweep(EMPTY_STREAM_TTL, broker.meta_ttl).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(deleted = n, "unneeded history streams deleted"),
                    Err(e) => tracing::debug!(error = %e, "history stream sweep failed"),
                }
            }
        });
    }

    /// Deletes this prefix's history streams that nobody needs: streams nobody ever
    /// published to, created more than `empty_after` ago, of channels this node has
    /// no subscription to; and streams whose last publication is older than
    /// `meta_ttl`. Returns how many were deleted. Every node runs it every
    /// [`SWEEP_INTERVAL`], so that history reads of made-up channel names cannot
    /// grow the server's streams for long.
    ///
    /// # Errors
    /// A backend error when the streams cannot be listed.
    pub async fn sweep(
        &self,
        empty_after: Duration,
        meta_ttl: Duration,
    ) -> Result<usize, BrokerError> {
        let js = self.conn.jetstream().map_err(backend)?.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let older = |t: i64, d: Duration| now.saturating_sub(t) >= d.as_secs() as i64;
        let history_prefix = format!("{}.history.", self.conn.config.prefix);
        let mut doomed = Vec::new();
        let mut streams = js.streams();
        let listing = async {
            while let Some(info) = streams.next().await {
                let info = info.map_err(backend)?;
                let Some(subject) = info.config.subjects.first() else {
                    continue;
                };
                let Some(rest) = subject.strip_prefix(&history_prefix) else {
                    continue;
                };
                let Some(channel) = rest.split('.').next().and_then(decode_token) else {
                    continue;
                };
                let state = &info.state;
                let unused = state.last_sequence == 0
                    && older(info.created.unix_timestamp(), empty_after)
                    && !self.subs.lock().contains_key(&channel);
                let stale = state.last_sequence > 0
                    && older(state.last_timestamp.unix_timestamp(), meta_ttl);
                if unused || stale {
                    doomed.push((channel, info.config.name.clone()));
                }
            }
            Ok::<_, BrokerError>(())
        };
        tokio::time::timeout(self.conn.config.request_timeout * 6, listing)
            .await
            .map_err(|_| backend("stream listing: timed out"))??;
        let mut deleted = 0;
        for (channel, name) in doomed {
            self.memo.lock().remove(&channel);
            if let Ok(Ok(_)) =
                tokio::time::timeout(self.conn.config.request_timeout, js.delete_stream(&name))
                    .await
            {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Waits until the broker is connected and its node-wide subscriptions
    /// (control messages, backend publishes) are in place at the server.
    pub async fn wait_ready(&self, within: Duration) -> bool {
        let mut rx = self.ready.subscribe();
        tokio::time::timeout(within, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn connection(&self) -> &Arc<NatsConnection> {
        &self.conn
    }

    fn names(&self) -> &Names {
        &self.conn.names
    }

    /// Core publish of a fan-out message, bounded by the write timeout.
    async fn core_publish(
        &self,
        subject: String,
        headers: Option<HeaderMap>,
        body: Bytes,
    ) -> Result<(), BrokerError> {
        let client = self.conn.client().map_err(backend)?;
        let fut = async {
            match headers {
                Some(h) => client.publish_with_headers(subject, h, body).await,
                None => client.publish(subject, body).await,
            }
        };
        match tokio::time::timeout(self.conn.config.write_timeout, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(backend(format!("NATS publish: {e}"))),
            Err(_) => Err(backend("NATS publish: timed out")),
        }
    }

    /// The channel's stream, created when missing (with the publish's settings, or
    /// placeholder ones for a read), updated when `settings` differ. Returns the
    /// stream's info.
    async fn ensure_stream(
        &self,
        channel: &str,
        settings: Option<(usize, Duration)>,
    ) -> Result<stream::Info, BrokerError> {
        let js = self.conn.jetstream().map_err(backend)?;
        let name = self.names().stream(channel);
        for _ in 0..3 {
            let found =
                tokio::time::timeout(self.conn.config.request_timeout, js.get_stream(&name))
                    .await
                    .map_err(|_| backend("stream info: timed out"))?;
            match found {
                Ok(stream) => {
                    let info = stream.cached_info().clone();
                    let Some((size, ttl)) = settings else {
                        return Ok(info);
                    };
                    let want = stream_limits(size, ttl);
                    if info.config.max_messages == want.max_messages
                        && info.config.max_age == want.max_age
                        && info.config.duplicate_window == want.duplicate_window
                    {
                        return Ok(info);
                    }
                    let mut config = info.config.clone();
                    config.max_messages = want.max_messages;
                    config.max_age = want.max_age;
                    config.duplicate_window = want.duplicate_window;
                    return self
                        .conn
                        .timed("stream update", js.update_stream(config))
                        .await
                        .map_err(backend);
                }
                Err(e) if is_stream_not_found(&e) => {}
                Err(e) => return Err(backend(format!("stream info: {e}"))),
            }
            // Every node that creates the stream now uses the same epoch, hence
            // the same subject (see `claim_epoch` for why that matters).
            let claim = self.claim_epoch(&name).await?;
            let (size, ttl) = settings.unwrap_or((1, Duration::ZERO));
            let subject = self.names().history(channel, &claim.epoch);
            let limits = stream_limits(size, ttl);
            let config = stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                republish: Some(stream::Republish {
                    source: subject,
                    destination: self.names().client(channel),
                    headers_only: false,
                }),
                storage: stream::StorageType::File,
                discard: stream::DiscardPolicy::Old,
                num_replicas: 1,
                ..limits
            };
            let created =
                tokio::time::timeout(self.conn.config.request_timeout, js.create_stream(config))
                    .await
                    .map_err(|_| backend("stream create: timed out"))?;
            match created {
                Ok(stream) => {
                    // The stream holds the epoch now; a stream made after this one
                    // is lost must get a new one.
                    self.release_epoch(&name, claim.revision).await;
                    return Ok(stream.cached_info().clone());
                }
                // Another node created it first (with other settings, or it won the
                // subject): read it again.
                Err(e)
                    if matches!(
                        e.kind(),
                        jetstream::context::CreateStreamErrorKind::JetStream(ref j)
                            if j.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST
                                || j.error_code() == jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(backend(format!("stream create: {e}"))),
            }
        }
        Err(backend("stream could not be created"))
    }

    async fn epoch_store(&self) -> Result<jetstream::kv::Store, BrokerError> {
        if let Some(s) = self.epochs.lock().clone() {
            return Ok(s);
        }
        let store = self
            .conn
            .key_value(&self.names().epoch_bucket(), EPOCH_CLAIM_TTL)
            .await
            .map_err(backend)?;
        *self.epochs.lock() = Some(store.clone());
        Ok(store)
    }

    /// The epoch to create the stream `name` with: the one another node has
    /// claimed, or a new one this node claims (a KV create, which only one node can
    /// win). Nodes that create a stream at the same moment thus send the same
    /// subject, and the server lets only one stream hold a subject. With different
    /// subjects, nats-server before 2.9.16 can create two streams of one name when
    /// two requests arrive at once (it checks the name, then adds the stream,
    /// without holding its lock in between), so the nodes would go on with two
    /// epochs, one of them in a stream no lookup finds.
    ///
    /// The claim lives [`EPOCH_CLAIM_TTL`], or until the node whose create succeeds
    /// deletes it ([`NatsBroker::release_epoch`]), so a stream made after this one
    /// is lost gets a new epoch.
    async fn claim_epoch(&self, name: &str) -> Result<EpochClaim, BrokerError> {
        for attempt in 0..3 {
            let store = self.epoch_store().await?;
            let proposal = new_epoch();
            let created = tokio::time::timeout(
                self.conn.config.request_timeout,
                store.create(name, Bytes::from(proposal.clone())),
            )
            .await;
            match created {
                Ok(Ok(revision)) => {
                    return Ok(EpochClaim {
                        epoch: proposal,
                        revision,
                    })
                }
                Ok(Err(e)) if e.kind() == jetstream::kv::CreateErrorKind::AlreadyExists => {
                    let entry = self
                        .conn
                        .timed("epoch claim", store.entry(name))
                        .await
                        .map_err(backend)?;
                    match entry {
                        Some(entry) if entry.operation == jetstream::kv::Operation::Put => {
                            let epoch = std::str::from_utf8(&entry.value)
                                .ok()
                                .filter(|e| is_epoch(e))
                                .ok_or_else(|| backend("epoch claim: not an epoch"))?;
                            return Ok(EpochClaim {
                                epoch: epoch.to_string(),
                                revision: entry.revision,
                            });
                        }
                        // Taken back or expired meanwhile: claim again.
                        _ => {}
                    }
                }
                // The bucket may be gone (fresh server; a write to a missing bucket
                // times out rather than failing): look it up again once. Should
                // the timed-out create have been stored after all, the next one
                // finds it and reads this node's own proposal back.
                _ if attempt == 0 => *self.epochs.lock() = None,
                Ok(Err(e)) => return Err(backend(format!("epoch claim: {e}"))),
                Err(_) => return Err(backend("epoch claim: timed out")),
            }
        }
        Err(backend("epoch claim: no stable claim"))
    }

    /// Deletes the epoch claim of stream `name` if it is still the one at
    /// `revision`. Failing is harmless: the claim expires by itself.
    async fn release_epoch(&self, name: &str, revision: u64) {
        let Ok(store) = self.epoch_store().await else {
            return;
        };
        let deleted = tokio::time::timeout(
            self.conn.config.request_timeout,
            store.delete_expect_revision(name, Some(revision)),
        )
        .await;
        if !matches!(deleted, Ok(Ok(()))) {
            tracing::debug!(
                stream = name,
                "epoch claim not deleted; it expires by itself"
            );
        }
    }

    fn remember(&self, channel: &str, memo: StreamMemo) {
        let mut m = self.memo.lock();
        if m.len() >= MAX_STREAM_MEMO {
            m.clear();
        }
        m.insert(channel.to_string(), memo);
    }

    /// The epoch of the channel's stream with `opts`' history settings: the
    /// remembered one, or the stream is looked up (created or updated) first.
    async fn stream_epoch(
        &self,
        channel: &str,
        opts: &PublishOptions,
    ) -> Result<String, BrokerError> {
        let wanted = |m: &StreamMemo| m.size == opts.history_size && m.ttl == opts.history_ttl;
        let known = self.memo.lock().get(channel).cloned();
        if let Some(m) = known.filter(wanted) {
            return Ok(m.epoch);
        }
        let info = self
            .ensure_stream(channel, Some((opts.history_size, opts.history_ttl)))
            .await?;
        let epoch = epoch_of(&info).ok_or_else(|| backend("stream has no epoch"))?;
        self.remember(
            channel,
            StreamMemo {
                epoch: epoch.clone(),
                size: opts.history_size,
                ttl: opts.history_ttl,
            },
        );
        Ok(epoch)
    }

    /// Publishes a run of publications to one channel with history (the same
    /// settings, no idempotency key): every JetStream publish is sent first, on
    /// the one connection, then the acknowledgements are awaited in order. One
    /// connection keeps the messages' order, and one stream stores them in the
    /// order they arrive, so the offsets follow the run's order, as one publish
    /// after another would give them, without a round trip each. Items whose
    /// stream turned out to be gone are published again one by one (in order,
    /// after the others: none of them was stored).
    async fn publish_run(
        &self,
        channel: &str,
        run: Vec<(Publication, PublishOptions)>,
    ) -> Vec<Result<StreamPosition, BrokerError>> {
        let fail_all = |e: BrokerError, n: usize| {
            (0..n)
                .map(|_| Err(BrokerError::Backend(e.to_string())))
                .collect::<Vec<_>>()
        };
        let js = match self.conn.jetstream() {
            Ok(js) => js.clone(),
            Err(e) => return fail_all(backend(e), run.len()),
        };
        let epoch = match self.stream_epoch(channel, &run[0].1).await {
            Ok(epoch) => epoch,
            Err(e) => return fail_all(e, run.len()),
        };
        let subject = self.names().history(channel, &epoch);
        let timeout = self.conn.config.request_timeout;
        // Send everything; keep each acknowledgement to await.
        let mut pending = Vec::with_capacity(run.len());
        for (publication, _) in &run {
            let body = match serde_json::to_vec(publication) {
                Ok(body) => Bytes::from(body),
                Err(e) => {
                    pending.push(Err(backend(e)));
                    continue;
                }
            };
            let mut headers = HeaderMap::new();
            headers.insert(KIND_HEADER, "pub");
            let sent = tokio::time::timeout(
                self.conn.config.write_timeout,
                js.publish_with_headers(subject.clone(), headers, body),
            )
            .await;
            pending.push(match sent {
                Ok(Ok(ack)) => Ok(ack),
                Ok(Err(e)) => Err(backend(format!("JetStream publish: {e}"))),
                Err(_) => Err(backend("JetStream publish: timed out")),
            });
        }
        // Then the acknowledgements, in order.
        let mut out = Vec::with_capacity(run.len());
        let mut retry = Vec::new();
        for (i, ack) in pending.into_iter().enumerate() {
            let ack = match ack {
                Ok(ack) => ack,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            match tokio::time::timeout(timeout, ack).await {
                Ok(Ok(ack)) => out.push(Ok(StreamPosition {
                    offset: ack.sequence,
                    epoch: epoch.clone(),
                })),
                Ok(Err(e)) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                    // The stream of that epoch is gone: published again below.
                    retry.push(i);
                    out.push(Err(backend("JetStream publish: no stream for the channel")));
                }
                Ok(Err(e)) => out.push(Err(backend(format!("JetStream publish: {e}")))),
                Err(_) => out.push(Err(backend("JetStream publish: timed out"))),
            }
        }
        if !retry.is_empty() {
            self.memo.lock().remove(channel);
            for i in retry {
                let (publication, opts) = &run[i];
                out[i] = self.publish_history(channel, publication, opts).await;
            }
        }
        out
    }

    async fn publish_history(
        &self,
        channel: &str,
        publication: &Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        let js = self.conn.jetstream().map_err(backend)?.clone();
        let body = Bytes::from(serde_json::to_vec(publication).map_err(backend)?);
        for attempt in 0..2 {
            let epoch = self.stream_epoch(channel, opts).await?;
            let mut headers = HeaderMap::new();
            headers.insert(KIND_HEADER, "pub");
            if let Some(key) = &opts.idempotency_key {
                headers.insert(async_nats::header::NATS_MESSAGE_ID, key.as_str());
            }
            let subject = self.names().history(channel, &epoch);
            let sent = async {
                js.publish_with_headers(subject, headers, body.clone())
                    .await?
                    .await
            };
            match tokio::time::timeout(self.conn.config.request_timeout, sent).await {
                Ok(Ok(ack)) => {
                    return Ok(StreamPosition {
                        offset: ack.sequence,
                        epoch,
                    })
                }
                Ok(Err(e))
                    if attempt == 0
                        && e.kind() == jetstream::context::PublishErrorKind::StreamNotFound =>
                {
                    // The stream of that epoch is gone (or was never there): look
                    // it up again.
                    self.memo.lock().remove(channel);
                }
                Ok(Err(e)) => return Err(backend(format!("JetStream publish: {e}"))),
                Err(_) => return Err(backend("JetStream publish: timed out")),
            }
        }
        Err(backend("JetStream publish: no stream for the channel"))
    }

    /// Core publish of a publication without history.
    async fn publish_plain(
        &self,
        channel: &str,
        publication: &Publication,
    ) -> Result<(), BrokerError> {
        let mut headers = HeaderMap::new();
        headers.insert(KIND_HEADER, "pub");
        let body = Bytes::from(serde_json::to_vec(publication).map_err(backend)?);
        self.core_publish(self.names().client(channel), Some(headers), body)
            .await
    }

    fn idempotency_key(channel: &str, key: &str) -> String {
        format!("{}.{}", encode_token(channel), encode_token(key))
    }

    async fn idempotency_store(&self) -> Result<jetstream::kv::Store, BrokerError> {
        if let Some(s) = self.idempotency.lock().clone() {
            return Ok(s);
        }
        let store = self
            .conn
            .key_value(&self.names().idempotency_bucket(), IDEMPOTENCY_WINDOW)
            .await
            .map_err(backend)?;
        *self.idempotency.lock() = Some(store.clone());
        Ok(store)
    }

    /// Claims idempotency key `key` of `channel` for this publish. The claim's
    /// value says where the publish is: `pending:<token>` (a random token of this
    /// call) until it is settled, then `done` ([`NatsBroker::settle_key`]); a publish
    /// that failed deletes its claim. So:
    ///
    /// - a claim holding this call's own token is this call's: a create that timed
    ///   out but was stored is read back as ours by the retry below;
    /// - `done` means the publication went out: this publish is a duplicate;
    /// - another call's pending claim is waited for: it turns `done` (duplicate) or
    ///   is deleted (claim again). One that stays unchanged longer than its owner
    ///   could take ([`NatsBroker::stale_claim_after`]) was abandoned (its owner's
    ///   create timed out yet was stored, or the owner died) and is taken over
    ///   with a compare-and-set, so a retry of a failed publish is never swallowed.
    async fn claim_key(&self, channel: &str, key: &str) -> Result<KeyClaim, BrokerError> {
        let k = Self::idempotency_key(channel, key);
        let token = format!("{CLAIM_PENDING}{}{}", new_epoch(), new_epoch());
        let stale_after = self.stale_claim_after();
        let give_up =
            tokio::time::Instant::now() + stale_after + self.conn.config.request_timeout * 2;
        let mut relooked = false;
        // Another call's pending claim: its revision and when it was first seen.
        let mut watched: Option<(u64, tokio::time::Instant)> = None;
        loop {
            if tokio::time::Instant::now() > give_up {
                return Err(backend("idempotency key: claim still busy"));
            }
            let store = self.idempotency_store().await?;
            let created = tokio::time::timeout(
                self.conn.config.request_timeout,
                store.create(&k, Bytes::from(token.clone())),
            )
            .await;
            match created {
                Ok(Ok(revision)) => return Ok(KeyClaim::Mine(revision)),
                Ok(Err(e)) if e.kind() == jetstream::kv::CreateErrorKind::AlreadyExists => {}
                // The bucket may be gone (fresh server; a write to a missing bucket
                // times out rather than failing): look it up again once. A create
                // that timed out but was stored is read back as ours next time.
                _ if !relooked => {
                    relooked = true;
                    *self.idempotency.lock() = None;
                    continue;
                }
                Ok(Err(e)) => return Err(backend(format!("idempotency key: {e}"))),
                Err(_) => return Err(backend("idempotency key: timed out")),
            }
            let entry = self
                .conn
                .timed("idempotency key", store.entry(&k))
                .await
                .map_err(backend)?;
            let Some(entry) = entry.filter(|e| e.operation == jetstream::kv::Operation::Put) else {
                // Deleted or expired meanwhile: claim again.
                continue;
            };
            if entry.value.as_ref() == token.as_bytes() {
                return Ok(KeyClaim::Mine(entry.revision));
            }
            if !entry.value.starts_with(CLAIM_PENDING.as_bytes()) {
                return Ok(KeyClaim::Taken);
            }
            let now = tokio::time::Instant::now();
            match watched {
                Some((revision, since))
                    if revision == entry.revision && now.duration_since(since) >= stale_after =>
                {
                    let taken = self
                        .conn
                        .timed(
                            "idempotency key",
                            store.update(&k, Bytes::from(token.clone()), entry.revision),
                        )
                        .await;
                    match taken {
                        Ok(revision) => return Ok(KeyClaim::Mine(revision)),
                        // Someone else moved it first: look again.
                        Err(e) => tracing::debug!(error = %e, "idempotency claim takeover"),
                    }
                }
                Some((revision, _)) if revision == entry.revision => {}
                _ => watched = Some((entry.revision, now)),
            }
            tokio::time::sleep(CLAIM_POLL).await;
        }
    }

    /// How long another call's pending idempotency claim may stay unchanged before
    /// it counts as abandoned: longer than its owner can still need (the rest of
    /// its create, its publish, and settling the claim).
    fn stale_claim_after(&self) -> Duration {
        self.conn.config.write_timeout + self.conn.config.request_timeout * 2
    }

    /// Settles this call's claim (at `revision`) of an idempotency key: `done`
    /// when the publication went out, deleted when it did not (so a retry
    /// publishes). Failing is not fatal: a claim left pending is taken over by the
    /// next publish with the key once it is stale, and one left `done` expires
    /// with the window.
    async fn settle_key(&self, channel: &str, key: &str, revision: u64, sent: bool) {
        let k = Self::idempotency_key(channel, key);
        let Ok(store) = self.idempotency_store().await else {
            return;
        };
        let settled = if sent {
            self.conn
                .timed(
                    "idempotency key",
                    store.update(&k, Bytes::from_static(CLAIM_DONE), revision),
                )
                .await
                .map(|_| ())
        } else {
            self.conn
                .timed(
                    "idempotency key",
                    store.delete_expect_revision(&k, Some(revision)),
                )
                .await
        };
        if let Err(e) = settled {
            tracing::debug!(error = %e, sent, "idempotency claim not settled");
        }
    }

    async fn read_history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, BrokerError> {
        // Reading creates the stream, so a subscriber learns the epoch that later
        // publications will carry.
        let info = self.ensure_stream(channel, None).await?;
        let epoch = epoch_of(&info).ok_or_else(|| backend("stream has no epoch"))?;
        let top = info.state.last_sequence;
        let first = if info.state.messages == 0 {
            top + 1
        } else {
            info.state.first_sequence
        };
        let position = StreamPosition {
            offset: top,
            epoch: epoch.clone(),
        };
        let limit = filter.limit.map_or(u64::MAX, |l| l as u64);
        let epoch_ok = |since: &StreamPosition| {
            since.epoch == epoch || (since.offset == 0 && since.epoch.is_empty())
        };
        if let Some(since) = &filter.since {
            if !epoch_ok(since) {
                return Err(BrokerError::UnrecoverablePosition);
            }
            if !filter.reverse && limit != 0 {
                if since.offset > top {
                    return Err(BrokerError::UnrecoverablePosition);
                }
                if since.offset < top && first > since.offset + 1 {
                    return Err(BrokerError::UnrecoverablePosition);
                }
            }
        }
        if limit == 0 || first > top {
            return Ok(HistoryPage {
                publications: Vec::new(),
                position,
            });
        }
        // Stored sequences are contiguous from `first` to `top` (only age and size
        // trim them, from the front), so the range to read is known.
        let (from, to) = match (&filter.since, filter.reverse) {
            (Some(since), false) => (
                since.offset + 1,
                top.min(since.offset.saturating_add(limit)),
            ),
            (Some(since), true) => {
                let to = since.offset.saturating_sub(1).min(top);
                (first.max(to.saturating_sub(limit - 1).max(1)), to)
            }
            (None, false) => (first, top.min(first.saturating_add(limit - 1))),
            (None, true) => (first.max(top.saturating_sub(limit - 1).max(1)), top),
        };
        let from = from.max(first);
        if from > to {
            return Ok(HistoryPage {
                publications: Vec::new(),
                position,
            });
        }
        let count = (to - from + 1).min(MAX_HISTORY_READ);
        let mut publications = self.read_range(&info.config.name, from, count).await?;
        publications.retain(|p| p.offset <= to);
        if filter.reverse {
            publications.reverse();
        }
        Ok(HistoryPage {
            publications,
            position,
        })
    }

    /// Reads up to `count` stored publications from sequence `from` on, with a
    /// short-lived consumer.
    async fn read_range(
        &self,
        stream_name: &str,
        from: u64,
        count: u64,
    ) -> Result<Vec<Publication>, BrokerError> {
        let js = self.conn.jetstream().map_err(backend)?;
        let conn = &self.conn;
        let work = async {
            let stream = js.get_stream_no_info(stream_name).await.map_err(backend)?;
            let consumer = stream
                .create_consumer(jetstream::consumer::pull::Config {
                    deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: from,
                    },
                    ack_policy: jetstream::consumer::AckPolicy::None,
                    inactive_threshold: Duration::from_secs(30),
                    memory_storage: true,
                    ..Default::default()
                })
                .await
                .map_err(backend)?;
            let name = consumer.cached_info().name.clone();
            let result = read_consumer(&consumer, count).await;
            // The consumer would vanish by itself after its inactive threshold;
            // deleting it now keeps the server tidy without delaying the answer.
            let stream = stream.clone();
            tokio::spawn(async move {
                let _ = stream.delete_consumer(&name).await;
            });
            let msgs = result?;
            let mut out = Vec::with_capacity(msgs.len());
            for (seq, payload) in msgs {
                let mut p: Publication = serde_json::from_slice(&payload).map_err(backend)?;
                p.offset = seq;
                out.push(p);
            }
            Ok::<_, BrokerError>(out)
        };
        // A long read gets more time, within reason.
        let budget = conn.config.request_timeout * 2;
        tokio::time::timeout(budget, work)
            .await
            .map_err(|_| backend("history read: timed out"))?
    }
}

/// Reads `count` messages (sequence, payload) from a pull consumer.
async fn read_consumer(
    consumer: &jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
    count: u64,
) -> Result<Vec<(u64, Bytes)>, BrokerError> {
    let pending = consumer.cached_info().num_pending.min(count);
    let mut out = Vec::with_capacity(pending as usize);
    while (out.len() as u64) < pending {
        let want = (pending - out.len() as u64).min(1000) as usize;
        let mut batch = consumer
            .fetch()
            .max_messages(want)
            .messages()
            .await
            .map_err(backend)?;
        let before = out.len();
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(backend)?;
            let seq = msg.info().map_err(backend)?.stream_sequence;
            out.push((seq, msg.message.payload.clone()));
        }
        if out.len() == before {
            // Trimmed meanwhile (age or size): what is left is all there is.
            break;
        }
    }
    Ok(out)
}

/// Stream limits for a history of `size` publications kept `ttl` (zero: no age
/// limit). The duplicate window may not exceed the age limit.
fn stream_limits(size: usize, ttl: Duration) -> stream::Config {
    let window = if ttl.is_zero() {
        IDEMPOTENCY_WINDOW
    } else {
        IDEMPOTENCY_WINDOW.min(ttl)
    };
    stream::Config {
        max_messages: i64::try_from(size.max(1)).unwrap_or(i64::MAX),
        max_age: ttl,
        duplicate_window: window,
        ..Default::default()
    }
}

fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(ref j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// The epoch a stream carries in its subject.
fn epoch_of(info: &stream::Info) -> Option<String> {
    let subject = info.config.subjects.first()?;
    subject.rsplit('.').next().map(str::to_string)
}

/// Whether `s` could be an epoch [`new_epoch`] made (a claim read back from KV is
/// checked before it goes into a subject).
fn is_epoch(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn new_epoch() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// One fan-out message, decoded.
enum Fanout {
    Join(ClientInfo),
    Leave(ClientInfo),
    /// Republished from the channel's stream: the offset is set, and the epoch.
    Stream(Publication, String),
    /// Without history (offset 0).
    Plain(Publication),
}

/// Decodes one fan-out message; `None` (logged) when it cannot be read.
fn decode(channel: &str, msg: &async_nats::Message) -> Option<Fanout> {
    let header = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    let kind = header(KIND_HEADER);
    if let Some(kind @ ("join" | "leave")) = kind.as_deref() {
        let Ok(info) = serde_json::from_slice::<ClientInfo>(&msg.payload) else {
            tracing::warn!(channel, "undecodable join/leave from NATS");
            return None;
        };
        return Some(if kind == "join" {
            Fanout::Join(info)
        } else {
            Fanout::Leave(info)
        });
    }
    let Ok(mut publication) = serde_json::from_slice::<Publication>(&msg.payload) else {
        tracing::warn!(channel, "undecodable publication from NATS");
        return None;
    };
    // Republished from the channel's stream: the sequence is the offset, and the
    // stored subject ends with the stream's epoch.
    let stored = header(SUBJECT_HEADER);
    publication.offset = header(SEQUENCE_HEADER)
        .filter(|_| stored.is_some())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let epoch = stored
        .as_deref()
        .and_then(|subject| subject.rsplit('.').next())
        .filter(|e| !e.is_empty());
    Some(match epoch {
        Some(epoch) if publication.offset > 0 => Fanout::Stream(publication, epoch.to_string()),
        _ => Fanout::Plain(publication),
    })
}

/// Hands one fan-out message that needs no ordering to the node.
fn deliver(handler: &dyn BrokerEventHandler, channel: &str, fanout: &Fanout) {
    match fanout {
        Fanout::Join(info) => handler.handle_join(channel, info),
        Fanout::Leave(info) => handler.handle_leave(channel, info),
        Fanout::Stream(publication, epoch) => {
            handler.handle_stream_publication(channel, publication, epoch)
        }
        Fanout::Plain(publication) => handler.handle_publication(channel, publication),
    }
}

/// How far ahead of the last offset handed on a publication may be and still be
/// held for the ones before it; also the most publications held per channel.
const REORDER_WINDOW: u64 = 64;

/// How long held publications wait for the missing ones (counted from the first
/// one held, and again after each one that arrives and lets some go).
const REORDER_WAIT: Duration = Duration::from_millis(50);

/// Puts one channel's stream publications back in offset order.
///
/// nats-server stores publications in sequence order but republishes a stored
/// message after letting go of the stream, so publishes arriving on two
/// connections at once can reach the nodes swapped (25, 27, 26). Handed on as they
/// come, 27 would look like a gap to the node (its subscribers recover) and 26 a
/// duplicate. So a publication up to [`REORDER_WINDOW`] ahead of the last one
/// handed on is held, for at most [`REORDER_WAIT`], until the missing ones arrive;
/// then all go out in order. When the wait runs out, or a publication comes from
/// further ahead, everything held goes out as it is and the node's gap handling
/// takes over (a true loss still leads to recovery, [`REORDER_WAIT`] later). A
/// publication in order, with nothing held, goes straight through.
///
/// Hand-written: it is a few lines over a `BTreeMap`, and no crate does this for
/// one subscription's messages.
#[derive(Default)]
struct Reorder {
    /// Epoch and offset of the last publication handed on.
    last: Option<(String, u64)>,
    /// Publications ahead of `last` (same epoch) waiting for the ones before them.
    held: std::collections::BTreeMap<u64, Publication>,
    /// When the held publications go out anyway; `None` when nothing is held.
    until: Option<tokio::time::Instant>,
}

impl Reorder {
    /// Takes one stream publication and hands on (through `emit`) what is now in
    /// order.
    fn accept(
        &mut self,
        publication: Publication,
        epoch: &str,
        emit: &mut impl FnMut(&Publication, &str),
    ) {
        let offset = publication.offset;
        let last = match &self.last {
            Some((e, last)) if e == epoch => *last,
            // The first publication, or a new epoch: nothing to wait for. What was
            // held (old epoch) goes out first; the node sorts it out.
            _ => {
                self.flush(emit);
                emit(&publication, epoch);
                self.last = Some((epoch.to_string(), offset));
                return;
            }
        };
        if offset == last + 1 {
            emit(&publication, epoch);
            self.set_last(offset);
            if !self.held.is_empty() {
                self.release_ready(emit);
            }
        } else if offset <= last {
            // Already handed on (or given up on): the node drops it as a duplicate.
            emit(&publication, epoch);
        } else if offset - last <= REORDER_WINDOW {
            self.held.entry(offset).or_insert(publication);
            self.until
                .get_or_insert_with(|| tokio::time::Instant::now() + REORDER_WAIT);
        } else {
            self.held.insert(offset, publication);
            self.flush(emit);
        }
    }

    fn set_last(&mut self, offset: u64) {
        if let Some((_, last)) = &mut self.last {
            *last = offset;
        }
    }

    /// Hands on the held publications that follow `last` without a hole.
    fn release_ready(&mut self, emit: &mut impl FnMut(&Publication, &str)) {
        let Some((epoch, mut last)) = self.last.clone() else {
            return;
        };
        let mut moved = false;
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != last + 1 {
                break;
            }
            last += 1;
            emit(&entry.remove(), &epoch);
            moved = true;
        }
        self.set_last(last);
        self.until = if self.held.is_empty() {
            None
        } else if moved {
            Some(tokio::time::Instant::now() + REORDER_WAIT)
        } else {
            self.until
        };
    }

    /// The wait is over: hands on everything held, in offset order, holes and all.
    fn flush(&mut self, emit: &mut impl FnMut(&Publication, &str)) {
        self.until = None;
        let Some((epoch, _)) = self.last.clone() else {
            self.held.clear();
            return;
        };
        for (offset, publication) in std::mem::take(&mut self.held) {
            emit(&publication, &epoch);
            self.set_last(offset);
        }
    }
}

/// Reads one channel's fan-out subscription until it ends, handing messages to
/// the node, stream publications through a [`Reorder`].
async fn serve_channel(
    handler: Arc<dyn BrokerEventHandler>,
    channel: String,
    mut sub: async_nats::Subscriber,
) {
    let mut order = Reorder::default();
    let mut emit = |publication: &Publication, epoch: &str| {
        handler.handle_stream_publication(&channel, publication, epoch);
    };
    loop {
        let next = match order.until {
            None => sub.next().await,
            Some(at) => tokio::select! {
                next = sub.next() => next,
                () = tokio::time::sleep_until(at) => {
                    order.flush(&mut emit);
                    continue;
                }
            },
        };
        let Some(msg) = next else { break };
        match decode(&channel, &msg) {
            Some(Fanout::Stream(publication, epoch)) => {
                order.accept(publication, &epoch, &mut emit);
            }
            Some(other) => deliver(handler.as_ref(), &channel, &other),
            None => {}
        }
    }
}

/// The body a backend sends to `<prefix>.publish`.
#[derive(serde::Deserialize)]
struct IngestBody {
    channel: String,
    data: tidings_protocol::RawJson,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    tags: Option<std::collections::BTreeMap<String, String>>,
}

/// Serves `<prefix>.publish`: each message is published through the node, and
/// answered when it has a reply subject.
async fn serve_ingest(
    conn: Arc<NatsConnection>,
    slot: crate::engine::IngestSlot,
    mut sub: async_nats::Subscriber,
) {
    while let Some(msg) = sub.next().await {
        let reply = match serde_json::from_slice::<IngestBody>(&msg.payload) {
            Err(e) => {
                serde_json::json!({"error": {"code": 107, "message": format!("bad request: {e}")}})
            }
            Ok(body) => match slot.get() {
                None => serde_json::json!({"error": {"code": 100, "message": "node is starting"}}),
                Some(ingest) => {
                    let mut req = crate::node::PublishRequest::new(body.channel, body.data);
                    req.idempotency_key = body.idempotency_key;
                    req.tags = body.tags;
                    match ingest(req).await {
                        Ok(pos) => {
                            serde_json::json!({"result": {"offset": pos.offset, "epoch": pos.epoch}})
                        }
                        Err(e) => {
                            serde_json::json!({"error": {"code": e.code, "message": e.message}})
                        }
                    }
                }
            },
        };
        if msg.reply.is_none() && reply.get("error").is_some() {
            tracing::warn!(reply = %reply, "publish from a backend on NATS failed");
        }
        if let (Some(to), Ok(client)) = (msg.reply, conn.client()) {
            let _ = client.publish(to, Bytes::from(reply.to_string())).await;
        }
    }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn ready(&self, within: Duration) -> bool {
        self.wait_ready(within).await
    }

    fn run(&self, node_uid: &str, handler: Arc<dyn BrokerEventHandler>) {
        let _ = self.handler.set(handler.clone());
        let conn = self.conn.clone();
        let slot = self.ingest.clone();
        let node_subject = self.names().node(node_uid);
        // Node-wide subscriptions, once the first connection is up (async-nats
        // restores them after every reconnect).
        let control_handler = handler.clone();
        let ready = self.ready.clone();
        let setup = tokio::spawn(async move {
            while conn.client.get().is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let Some(client) = conn.client.get().cloned() else {
                return;
            };
            let subs = async {
                let control = client.subscribe(conn.names.control()).await?;
                let node = client.subscribe(node_subject).await?;
                let ingest = client
                    .queue_subscribe(conn.names.publish(), conn.names.publish_queue())
                    .await?;
                Ok::<_, async_nats::SubscribeError>((control, node, ingest))
            };
            let (control, node, ingest) = match subs.await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "NATS control subscriptions failed");
                    return;
                }
            };
            let ingest_task = tokio::spawn(serve_ingest(conn.clone(), slot, ingest));
            while let Err(e) = conn.barrier().await {
                tracing::warn!(error = %e, "NATS control subscriptions not confirmed yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            ready.send_replace(true);
            let mut both = futures_util::stream::select(control, node);
            while let Some(msg) = both.next().await {
                control_handler.handle_control(&msg.payload);
            }
            ingest_task.abort();
        });
        // Reconnects and dropped messages: forget stream memos and KV buckets (the
        // server may be a fresh one) and let the node check positions once
        // subscriptions are back.
        let conn = self.conn.clone();
        let mut doubt = self.conn.doubt.subscribe();
        let memo = self.memo.clone();
        let buckets = [self.idempotency.clone(), self.epochs.clone()];
        let watcher_handler = handler;
        let watcher = tokio::spawn(async move {
            while doubt.changed().await.is_ok() {
                memo.lock().clear();
                for bucket in &buckets {
                    *bucket.lock() = None;
                }
                if let Err(e) = conn.barrier().await {
                    tracing::warn!(error = %e, "NATS not ready after reconnect");
                }
                watcher_handler.handle_reconnect();
            }
        });
        let mut tasks = self.tasks.lock();
        tasks.push(setup.abort_handle());
        tasks.push(watcher.abort_handle());
    }

    async fn publish_control(
        &self,
        data: bytes::Bytes,
        to: Option<&str>,
    ) -> Result<(), BrokerError> {
        let subject = match to {
            None => self.names().control(),
            Some(uid) => self.names().node(uid),
        };
        self.core_publish(subject, None, data).await
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        opts: PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        publication.offset = 0;
        if opts.history_size == 0 {
            // Claim the key first (see `claim_key`), then settle the claim: `done`
            // after the publish, deleted when it failed so a retry is not swallowed.
            let claimed = match &opts.idempotency_key {
                Some(key) => match self.claim_key(channel, key).await? {
                    KeyClaim::Mine(revision) => Some((key, revision)),
                    KeyClaim::Taken => return Ok(StreamPosition::default()),
                },
                None => None,
            };
            let sent = self.publish_plain(channel, &publication).await;
            if let Some((key, revision)) = claimed {
                self.settle_key(channel, key, revision, sent.is_ok()).await;
            }
            sent?;
            return Ok(StreamPosition::default());
        }
        self.publish_history(channel, &publication, &opts).await
    }

    /// Ordered: a run of consecutive publishes to one channel with history (same
    /// settings, no idempotency key) is pipelined (`publish_run`);
    /// everything else is published one after another, each waiting for the one
    /// before it. Only runs of one channel are pipelined: the server stores and
    /// republishes each stream's messages on its own, so two streams' messages
    /// sent back to back could reach a subscriber of both channels swapped,
    /// whereas one acknowledged publish has been sent to the subscribers before
    /// the next is made. Unordered: all at once.
    async fn publish_batch(
        &self,
        items: Vec<BatchPublish>,
        ordered: bool,
    ) -> Vec<Result<StreamPosition, BrokerError>> {
        if !ordered {
            return futures_util::future::join_all(items.into_iter().map(|item| async move {
                self.publish(&item.channel, item.publication, item.opts)
                    .await
            }))
            .await;
        }
        let pipelined = |o: &PublishOptions| o.history_size > 0 && o.idempotency_key.is_none();
        let mut out = Vec::with_capacity(items.len());
        let mut items = items.into_iter().peekable();
        while let Some(item) = items.next() {
            if !pipelined(&item.opts) {
                out.push(
                    self.publish(&item.channel, item.publication, item.opts)
                        .await,
                );
                continue;
            }
            let channel = item.channel;
            let mut run = vec![(item.publication, item.opts)];
            while let Some(next) = items.next_if(|n| {
                pipelined(&n.opts)
                    && n.channel == channel
                    && n.opts.history_size == run[0].1.history_size
                    && n.opts.history_ttl == run[0].1.history_ttl
            }) {
                run.push((next.publication, next.opts));
            }
            for (publication, _) in &mut run {
                publication.offset = 0;
            }
            if run.len() == 1 {
                let (publication, opts) = run.pop().expect("one item");
                out.push(self.publish(&channel, publication, opts).await);
            } else {
                out.extend(self.publish_run(&channel, run).await);
            }
        }
        out
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        let mut headers = HeaderMap::new();
        headers.insert(KIND_HEADER, "join");
        let body = Bytes::from(serde_json::to_vec(&info).map_err(backend)?);
        self.core_publish(self.names().client(channel), Some(headers), body)
            .await
    }
    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        let mut headers = HeaderMap::new();
        headers.insert(KIND_HEADER, "leave");
        let body = Bytes::from(serde_json::to_vec(&info).map_err(backend)?);
        self.core_publish(self.names().client(channel), Some(headers), body)
            .await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let client = self.conn.client().map_err(backend)?.clone();
        let handler = self
            .handler
            .get()
            .cloned()
            .ok_or_else(|| backend("broker is not running"))?;
        let id = self
            .next_sub
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        {
            let mut subs = self.subs.lock();
            if subs.contains_key(channel) {
                return Ok(());
            }
            let subject = self.names().client(channel);
            let ch = channel.to_string();
            let task = tokio::spawn(async move {
                let sub = match client.subscribe(subject).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                serve_channel(handler, ch, sub).await;
            });
            subs.insert(
                channel.to_string(),
                ChannelSub {
                    id,
                    task: task.abort_handle(),
                },
            );
        }
        let ready = match tokio::time::timeout(self.conn.config.write_timeout, ready_rx).await {
            Ok(Ok(Ok(()))) => self.conn.barrier().await,
            Ok(Ok(Err(e))) => Err(format!("NATS subscribe: {e}")),
            Ok(Err(_)) => Err("NATS subscribe: task ended".into()),
            Err(_) => Err("NATS subscribe: timed out".into()),
        };
        if let Err(e) = ready {
            let mut subs = self.subs.lock();
            if subs.get(channel).is_some_and(|s| s.id == id) {
                if let Some(s) = subs.remove(channel) {
                    s.task.abort();
                }
            }
            return Err(backend(e));
        }
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        // Dropping the subscription (with its task) sends UNSUB.
        if let Some(s) = self.subs.lock().remove(channel) {
            s.task.abort();
        }
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, BrokerError> {
        self.read_history(channel, filter).await
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let js = self.conn.jetstream().map_err(backend)?;
        let name = self.names().stream(channel);
        let found = tokio::time::timeout(self.conn.config.request_timeout, js.get_stream(&name))
            .await
            .map_err(|_| backend("stream info: timed out"))?;
        let stream = match found {
            Ok(s) => s,
            Err(e) if is_stream_not_found(&e) => return Ok(()),
            Err(e) => return Err(backend(format!("stream info: {e}"))),
        };
        // Purging keeps the last sequence: the position stays.
        self.conn
            .timed("stream purge", async { stream.purge().await })
            .await
            .map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_safe_bytes_and_escape_the_rest() {
        assert_eq!(encode_token("news"), "news");
        assert_eq!(encode_token("a_b-C9"), "a_b-C9");
        assert_eq!(encode_token("a.b"), "a=2Eb");
        assert_eq!(encode_token("*"), "=2A");
        assert_eq!(encode_token(">"), "=3E");
        assert_eq!(encode_token("a b"), "a=20b");
        assert_eq!(encode_token("news:1"), "news=3A1");
        assert_eq!(encode_token("="), "=3D");
        assert_eq!(encode_token("é"), "=C3=A9");
        assert_eq!(encode_token(""), "=");
        assert_eq!(encode_token("\t\n"), "=09=0A");
    }

    #[test]
    fn tokens_decode_back_and_reject_foreign_text() {
        for name in [
            "news",
            "a.b",
            "*",
            ">",
            "a b",
            "news:1",
            "é☃",
            "",
            "=",
            "=3D",
            "a.*.>",
            "$JS.API",
            "x/y\\z",
            "~",
            "tab\there",
        ] {
            let token = encode_token(name);
            assert_eq!(decode_token(&token).as_deref(), Some(name), "{name:?}");
        }
        for bad in ["a.b", "*", ">", "a b", "=4", "=zz", "=41", "=C3", ""] {
            assert_eq!(decode_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tokens_are_single_subject_tokens_and_valid_names() {
        for name in [
            "a.b", "*", ">", "a b", "news:1", "é", "", "a.>", " ", "\u{0}",
        ] {
            let token = encode_token(name);
            assert!(!token.is_empty());
            assert!(token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'='));
        }
        // Distinct names, distinct tokens (the encoding is injective).
        let names = ["a.b", "a=2Eb", "a_2Eb", "a.b ", "a.b."];
        let tokens: std::collections::HashSet<_> = names.iter().map(|n| encode_token(n)).collect();
        assert_eq!(tokens.len(), names.len());
    }

    fn at(offset: u64) -> Publication {
        Publication {
            offset,
            ..Default::default()
        }
    }

    /// Feeds `(offset, epoch)` in order; returns what went out, with the epochs.
    fn feed(order: &mut Reorder, input: &[(u64, &str)]) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for (offset, epoch) in input {
            order.accept(at(*offset), epoch, &mut |p, e| {
                out.push((p.offset, e.to_string()))
            });
        }
        out
    }

    fn offsets_of(out: &[(u64, String)]) -> Vec<u64> {
        out.iter().map(|(o, _)| *o).collect()
    }

    #[test]
    fn reorder_passes_in_order_publications_straight_through() {
        let mut order = Reorder::default();
        let out = feed(&mut order, &[(7, "e"), (8, "e"), (9, "e")]);
        assert_eq!(offsets_of(&out), vec![7, 8, 9]);
        assert!(order.held.is_empty() && order.until.is_none());
    }

    #[test]
    fn reorder_holds_an_early_publication_until_the_missing_one_comes() {
        let mut order = Reorder::default();
        assert_eq!(
            offsets_of(&feed(&mut order, &[(25, "e"), (27, "e")])),
            vec![25]
        );
        assert!(order.until.is_some());
        let out = feed(&mut order, &[(26, "e")]);
        assert_eq!(offsets_of(&out), vec![26, 27]);
        assert!(order.held.is_empty() && order.until.is_none());
        // Several out of place at once.
        let out = feed(&mut order, &[(30, "e"), (29, "e"), (31, "e"), (28, "e")]);
        assert_eq!(offsets_of(&out), vec![28, 29, 30, 31]);
        assert!(order.until.is_none());
    }

    #[test]
    fn reorder_gives_up_on_a_true_gap_and_lets_the_node_see_it() {
        let mut order = Reorder::default();
        feed(&mut order, &[(1, "e"), (3, "e"), (4, "e")]);
        // The wait ran out: what was held goes out, hole and all.
        let mut out = Vec::new();
        order.flush(&mut |p, _| out.push(p.offset));
        assert_eq!(out, vec![3, 4]);
        assert!(order.until.is_none());
        // The missing one, late, goes on as it is (the node drops it).
        assert_eq!(
            offsets_of(&feed(&mut order, &[(2, "e"), (5, "e")])),
            vec![2, 5]
        );
    }

    #[test]
    fn reorder_does_not_wait_for_what_is_too_far_behind() {
        let mut order = Reorder::default();
        feed(&mut order, &[(1, "e"), (3, "e")]);
        let far = 2 + REORDER_WINDOW;
        let out = feed(&mut order, &[(far, "e")]);
        assert_eq!(offsets_of(&out), vec![3, far]);
        assert!(order.held.is_empty() && order.until.is_none());
        // Held publications never outnumber the window.
        let mut order = Reorder::default();
        feed(&mut order, &[(1, "e")]);
        let input: Vec<(u64, &str)> = (3..3 + 2 * REORDER_WINDOW).map(|o| (o, "e")).collect();
        feed(&mut order, &input);
        assert!(order.held.len() as u64 <= REORDER_WINDOW);
    }

    #[test]
    fn reorder_starts_over_in_a_new_epoch() {
        let mut order = Reorder::default();
        feed(&mut order, &[(5, "old"), (7, "old")]);
        let out = feed(&mut order, &[(1, "new"), (2, "new")]);
        assert_eq!(
            out,
            vec![
                (7, "old".to_string()),
                (1, "new".to_string()),
                (2, "new".to_string())
            ]
        );
        assert!(order.held.is_empty() && order.until.is_none());
    }

    #[test]
    fn subjects_and_stream_names() {
        let n = Names::new("tidings");
        assert_eq!(n.client("chat:room.1"), "tidings.client.chat=3Aroom=2E1");
        assert_eq!(n.history("a.b", "EP"), "tidings.history.a=2Eb.EP");
        assert_eq!(n.stream("a.b"), "tidings_history_a=2Eb");
        assert_eq!(n.control(), "tidings.control");
        assert_eq!(n.publish(), "tidings.publish");
        let long = "x.".repeat(200);
        let s = n.stream(&long);
        assert!(s.len() <= MAX_STREAM_NAME && s.starts_with("tidings_historyx_"));
        assert_ne!(s, n.stream(&"y.".repeat(200)));
    }
}
