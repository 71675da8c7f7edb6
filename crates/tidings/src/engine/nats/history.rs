//! History reads: the range a filter asks for, read from the channel's stream with
//! a short-lived pull consumer.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt as _;
use tidings_protocol::{Publication, StreamPosition};

use super::broker::NatsBroker;
use super::streams::epoch_of;
use super::{failed, timeout};
use crate::broker::{BrokerError, HistoryFilter, HistoryPage};

/// Most publications one history call reads.
const MAX_HISTORY_READ: u64 = 100_000;

impl NatsBroker {
    pub(super) async fn read_history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, BrokerError> {
        // Reading creates the stream, so a subscriber learns the epoch that later
        // publications will carry.
        let info = self.ensure_stream(channel, None).await?;
        let epoch = epoch_of(&info).ok_or_else(|| failed("stream info", "stream has no epoch"))?;
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
        let js = self.conn.jetstream()?;
        let conn = &self.conn;
        let work = async {
            let stream = js
                .get_stream_no_info(stream_name)
                .await
                .map_err(|e| failed("history read", e))?;
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
                .map_err(|e| failed("history read", e))?;
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
                let mut p: Publication = crate::broker::decode_publication(&payload)
                    .map_err(|e| failed("history read", e))?;
                p.offset = seq;
                out.push(p);
            }
            Ok::<_, BrokerError>(out)
        };
        // A long read gets more time, within reason.
        let budget = conn.config.request_timeout * 2;
        tokio::time::timeout(budget, work)
            .await
            .map_err(|_| timeout("history read"))?
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
            .map_err(|e| failed("history read", e))?;
        let before = out.len();
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(|e| failed("history read", e))?;
            let seq = msg
                .info()
                .map_err(|e| failed("history read", e))?
                .stream_sequence;
            out.push((seq, msg.message.payload.clone()));
        }
        if out.len() == before {
            // Trimmed meanwhile (age or size): what is left is all there is.
            break;
        }
    }
    Ok(out)
}
