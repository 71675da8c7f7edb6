//! A channel's JetStream stream: looked up, created (with an agreed epoch) or
//! updated to the publish's history settings, remembered per channel, and swept
//! when nobody needs it any more.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::broker::NatsBroker;
use super::subjects::decode_token;
use super::{failed, timeout};
use crate::broker::{BrokerError, MetaTtl, PublishOptions, IDEMPOTENCY_WINDOW};

/// How often each node sweeps unneeded history streams ([`NatsBroker::sweep`]).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

/// A stream nobody published to is deleted this long after its creation, unless
/// the sweeping node has subscribers on its channel (as the memory broker does).
const EMPTY_STREAM_TTL: Duration = Duration::from_secs(300);

/// Most channels whose stream settings are remembered; past it the memo is cleared.
const MAX_STREAM_MEMO: usize = 100_000;

/// Stream settings a channel's stream was last seen with, so that most publishes go
/// straight to the stream.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct StreamMemo {
    pub(super) epoch: String,
    pub(super) size: usize,
    pub(super) ttl: Duration,
}

impl NatsBroker {
    /// Runs [`NatsBroker::sweep`] every [`SWEEP_INTERVAL`] until `stop` is
    /// cancelled or the broker dropped.
    pub fn start_sweeper(self: &Arc<Self>, stop: CancellationToken) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Some(broker) = weak.upgrade() else { break };
                match broker
                    .sweep(EMPTY_STREAM_TTL, broker.meta_ttl.clone())
                    .await
                {
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
        meta_ttl: impl Into<MetaTtl>,
    ) -> Result<usize, BrokerError> {
        let meta_ttl = meta_ttl.into();
        let js = self.conn.jetstream()?.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let older = |t: i64, d: Duration| now.saturating_sub(t) >= d.as_secs() as i64;
        let history_prefix = format!("{}.history.", self.conn.config.prefix);
        let mut doomed = Vec::new();
        let mut streams = js.streams();
        let listing = async {
            while let Some(info) = streams.next().await {
                let info = info.map_err(|e| failed("stream listing", e))?;
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
                    && older(state.last_timestamp.unix_timestamp(), meta_ttl.of(&channel));
                if unused || stale {
                    doomed.push((channel, info.config.name.clone()));
                }
            }
            Ok::<_, BrokerError>(())
        };
        tokio::time::timeout(self.conn.config.request_timeout * 6, listing)
            .await
            .map_err(|_| timeout("stream listing"))??;
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
    /// The channel's stream, created when missing (with the publish's settings, or
    /// placeholder ones for a read), updated when `settings` differ. Returns the
    /// stream's info.
    pub(super) async fn ensure_stream(
        &self,
        channel: &str,
        settings: Option<(usize, Duration)>,
    ) -> Result<stream::Info, BrokerError> {
        let js = self.conn.jetstream()?;
        let name = self.subjects().stream(channel);
        for _ in 0..3 {
            let found =
                tokio::time::timeout(self.conn.config.request_timeout, js.get_stream(&name))
                    .await
                    .map_err(|_| timeout("stream info"))?;
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
                        .map_err(BrokerError::from);
                }
                Err(e) if is_stream_not_found(&e) => {}
                Err(e) => return Err(failed("stream info", e).into()),
            }
            // Every node that creates the stream now uses the same epoch, hence
            // the same subject (see `claim_epoch` for why that matters).
            let claim = self.claim_epoch(&name).await?;
            let (size, ttl) = settings.unwrap_or((1, Duration::ZERO));
            let subject = self.subjects().history(channel, &claim.epoch);
            let limits = stream_limits(size, ttl);
            let config = stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                republish: Some(stream::Republish {
                    source: subject,
                    destination: self.subjects().client(channel),
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
                    .map_err(|_| timeout("stream create"))?;
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
                Err(e) => return Err(failed("stream create", e).into()),
            }
        }
        Err(failed("stream create", "stream could not be created").into())
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
    pub(super) async fn stream_epoch(
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
        let epoch = epoch_of(&info).ok_or_else(|| failed("stream info", "stream has no epoch"))?;
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

pub(super) fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(ref j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// The epoch a stream carries in its subject.
pub(super) fn epoch_of(info: &stream::Info) -> Option<String> {
    let subject = info.config.subjects.first()?;
    subject.rsplit('.').next().map(str::to_string)
}
