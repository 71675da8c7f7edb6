//! The broker moves publications between nodes and keeps channel history.
//!
//! A [`Broker`] publishes to a channel and answers with the stream position; it hands
//! every publication (its own and other nodes') to the node's [`BrokerEventHandler`]
//! in stream order. Publish and history-append are one atomic step, so a position
//! returned to a publisher always names a publication that is in the history.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tidings_protocol::{ClientInfo, Publication, StreamPosition};

/// Per-publish history settings, taken from the channel's namespace.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Publications to keep; 0 keeps no history and leaves the offset at 0.
    pub history_size: usize,
    /// How long publications are kept.
    pub history_ttl: Duration,
    /// A retried publish with the same key (per channel, within
    /// [`IDEMPOTENCY_WINDOW`]) returns the first result instead of publishing again.
    pub idempotency_key: Option<String>,
}

/// How long a channel's stream (epoch and top offset) outlives its last
/// publication: `channel.history_meta_ttl`, or its namespace's `history_meta_ttl`.
/// A broker asks it per channel when it publishes or sweeps.
#[derive(Clone)]
pub struct MetaTtl(Arc<dyn Fn(&str) -> Duration + Send + Sync>);

impl MetaTtl {
    /// A TTL that `of` works out per channel.
    pub fn per_channel(of: impl Fn(&str) -> Duration + Send + Sync + 'static) -> Self {
        Self(Arc::new(of))
    }

    /// The TTL of `channel`'s stream.
    pub fn of(&self, channel: &str) -> Duration {
        (self.0)(channel)
    }
}

impl From<Duration> for MetaTtl {
    fn from(ttl: Duration) -> Self {
        Self::per_channel(move |_| ttl)
    }
}

impl std::fmt::Debug for MetaTtl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetaTtl")
    }
}

/// One publication of [`Broker::publish_batch`].
#[derive(Debug, Clone)]
pub struct BatchPublish {
    pub channel: String,
    pub publication: Publication,
    pub opts: PublishOptions,
}

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);

/// Which part of a channel's stream to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    /// Read publications after this position. A different epoch is an error.
    pub since: Option<StreamPosition>,
    /// Most publications to return; `Some(0)` returns only the position, `None` all.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
}

/// A slice of a channel's stream and its current top position.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub publications: Vec<Publication>,
    pub position: StreamPosition,
}

/// Why a broker call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The requested position is not in the stream (epoch changed or trimmed).
    #[error("unrecoverable position")]
    UnrecoverablePosition,
    /// The engine's server or the connection to it failed.
    #[error(transparent)]
    Backend(#[from] EngineError),
}

/// A failure of an engine's server or of the connection to it, as the broker and
/// the presence manager report it. The engine's own error (Redis, NATS) is kept as
/// the [`std::error::Error::source`]. `Clone`, so that one failure can answer every
/// publication of a batch.
#[derive(Debug, Clone)]
pub enum EngineError {
    /// The engine has no connection to its server now (it is connecting or
    /// reconnecting): the call was not sent.
    NotConnected { engine: &'static str },
    /// The server did not answer in time. The call may still have taken effect.
    Timeout {
        engine: &'static str,
        operation: &'static str,
    },
    /// The server refused the call, the connection broke during it, or its answer
    /// could not be read.
    Failed {
        engine: &'static str,
        operation: &'static str,
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::NotConnected { engine } => write!(f, "{engine} is not connected"),
            EngineError::Timeout { engine, operation } => {
                write!(f, "{engine} {operation} timed out")
            }
            EngineError::Failed {
                engine,
                operation,
                source,
            } => write!(f, "{engine} {operation}: {source}"),
        }
    }
}

// Written out rather than derived: the source is the engine's error itself, not
// the `Arc` around it, so that callers can downcast it.
impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EngineError::Failed { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

impl EngineError {
    /// A [`EngineError::Failed`] of `engine` doing `operation`, caused by `source`
    /// (an error, or a message when the engine found the problem itself).
    pub fn failed(
        engine: &'static str,
        operation: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        EngineError::Failed {
            engine,
            operation,
            source: Arc::from(source.into()),
        }
    }
}

/// A publication as the networked engines store and carry it: its JSON form, with
/// a payload that is not JSON (bytes from a Protobuf client, or the API's
/// `b64data`) written as `"b64data"` (standard base64) in place of `"data"`, so it
/// comes back byte for byte.
///
/// # Errors
/// The serialiser's error (none for the types involved).
pub fn encode_publication(publication: &Publication) -> Result<Vec<u8>, serde_json::Error> {
    match &publication.data {
        Some(data) if !data.is_json() => {
            use base64::Engine as _;
            let without = Publication {
                data: None,
                ..publication.clone()
            };
            let mut value = serde_json::to_value(&without)?;
            if let serde_json::Value::Object(map) = &mut value {
                let b64 = base64::engine::general_purpose::STANDARD.encode(data.as_bytes());
                map.insert("b64data".into(), serde_json::Value::String(b64));
            }
            serde_json::to_vec(&value)
        }
        _ => serde_json::to_vec(publication),
    }
}

/// Reads what [`encode_publication`] wrote.
///
/// # Errors
/// The parser's error for bytes that are not such a publication.
pub fn decode_publication(bytes: &[u8]) -> Result<Publication, serde_json::Error> {
    let mut publication: Publication = serde_json::from_slice(bytes)?;
    if publication.data.is_none() && contains(bytes, b"\"b64data\"") {
        #[derive(serde::Deserialize)]
        struct Binary {
            b64data: Option<String>,
        }
        use base64::Engine as _;
        use serde::de::Error as _;
        let binary: Binary = serde_json::from_slice(bytes)?;
        if let Some(b64) = binary.b64data {
            let data = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(serde_json::Error::custom)?;
            publication.data = Some(tidings_protocol::Payload::from_bytes(data));
        }
    }
    Ok(publication)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Receives what the broker delivers to this node, in stream order per channel.
///
/// Implementations must not block: they run on the broker's delivery path.
pub trait BrokerEventHandler: Send + Sync + 'static {
    /// A publication whose stream epoch the broker does not pass along. The node
    /// then tells duplicates and gaps apart by offset only, and finds a new epoch by
    /// its periodic position check; prefer [`Self::handle_stream_publication`].
    fn handle_publication(&self, channel: &str, publication: &Publication);
    /// A publication of a channel with history, with the epoch of its stream. With
    /// the epoch the node drops duplicates (offset at or below the last one it
    /// delivered) and turns a jump or a new epoch into a resubscribe-and-recover for
    /// that channel's subscribers at once, instead of at the next position check.
    fn handle_stream_publication(&self, channel: &str, publication: &Publication, epoch: &str) {
        let _ = epoch;
        self.handle_publication(channel, publication);
    }
    fn handle_join(&self, channel: &str, info: &ClientInfo);
    fn handle_leave(&self, channel: &str, info: &ClientInfo);
    /// A node-to-node control message (see [`Broker::publish_control`]). The bytes
    /// are the node's own encoding; the broker never looks inside.
    fn handle_control(&self, data: &[u8]);
    /// The broker lost its connection and has it back, with every channel
    /// subscription restored. Publications sent in between may have been missed: the
    /// node checks stream positions and tells subscribers in doubt to recover.
    fn handle_reconnect(&self) {}
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Connects the broker to this node's handler. Called once, before any publish.
    /// `node_uid` names this node for targeted control messages. Must not block:
    /// a broker that needs a network connection starts it in the background and
    /// keeps reconnecting (calls fail with [`BrokerError::Backend`] meanwhile).
    fn run(&self, node_uid: &str, handler: std::sync::Arc<dyn BrokerEventHandler>);

    /// Waits, at most `within`, until the broker has its first connection and can
    /// serve calls; `false` when it has not. The binary waits for this before it
    /// accepts clients, so clients of a node that just started are not refused
    /// while its broker connects. In-process brokers are ready at once.
    async fn ready(&self, within: std::time::Duration) -> bool {
        let _ = within;
        true
    }

    /// Sends a control message to every node, this one included (`to = None`), or
    /// to the one node whose uid is `to`. At most once: a node that is not connected
    /// does not get it later.
    async fn publish_control(
        &self,
        data: bytes::Bytes,
        to: Option<&str>,
    ) -> Result<(), BrokerError>;

    /// Publishes, appends to history when `opts.history_size > 0`, and returns the
    /// new top position (offset 0 and the current epoch without history).
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: PublishOptions,
    ) -> Result<StreamPosition, BrokerError>;

    /// Publishes several publications, each as [`Self::publish`] would, and returns
    /// one result per item, in the order given. With `ordered` the publications
    /// are applied in the order given (a subscriber of two of them sees them in
    /// that order); without it they may be applied in any order.
    ///
    /// The default publishes one after another (`ordered`) or all at once. Brokers
    /// with a network round trip per publish override it to send the batch at
    /// once (the Redis broker: one pipeline, one script call per run of the same
    /// channel; the NATS broker: each run of one channel's publishes with history
    /// sent at once, the acknowledgements awaited in order).
    async fn publish_batch(
        &self,
        items: Vec<BatchPublish>,
        ordered: bool,
    ) -> Vec<Result<StreamPosition, BrokerError>> {
        if ordered {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(
                    self.publish(&item.channel, item.publication, item.opts)
                        .await,
                );
            }
            out
        } else {
            futures_util::future::join_all(items.into_iter().map(|item| async move {
                self.publish(&item.channel, item.publication, item.opts)
                    .await
            }))
            .await
        }
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError>;

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError>;

    /// This node has its first subscriber on `channel` (no-op for a single node).
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// This node has no more subscribers on `channel`.
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// Reads history.
    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, BrokerError>;

    /// Drops a channel's publications (the position stays, so recovery across the
    /// removal reports `recovered: false`).
    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError>;
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn an_engine_failure_says_where_and_keeps_its_source() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = BrokerError::from(EngineError::failed("redis", "publish", refused));
        assert_eq!(e.to_string(), "redis publish: refused");
        let source = e.source().expect("a source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("the io error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        let timeout = EngineError::Timeout {
            engine: "nats",
            operation: "stream info",
        };
        assert_eq!(timeout.to_string(), "nats stream info timed out");
        assert!(timeout.source().is_none());
    }
}
