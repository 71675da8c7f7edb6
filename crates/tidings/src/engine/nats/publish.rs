//! Publishing with history: a JetStream publish to the subject of the stream's
//! epoch (one at a time, or a run of one channel pipelined), retried once on the
//! stream of a new epoch when the old one is gone.

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use tidings_protocol::{Publication, StreamPosition};

use super::broker::{NatsBroker, KIND_HEADER};
use super::{failed, timeout};
use crate::broker::{BatchPublish, Broker as _, BrokerError, PublishOptions};

impl NatsBroker {
    /// An ordered batch (see [`crate::broker::Broker::publish_batch`] of
    /// [`NatsBroker`]): runs of one channel through [`Self::publish_run`], the rest
    /// one after another.
    pub(super) async fn publish_in_order(
        &self,
        items: Vec<BatchPublish>,
    ) -> Vec<Result<StreamPosition, BrokerError>> {
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
        let fail_all =
            |e: BrokerError, n: usize| (0..n).map(|_| Err(e.clone())).collect::<Vec<_>>();
        let js = match self.conn.jetstream() {
            Ok(js) => js.clone(),
            Err(e) => return fail_all(e.into(), run.len()),
        };
        let epoch = match self.stream_epoch(channel, &run[0].1).await {
            Ok(epoch) => epoch,
            Err(e) => return fail_all(e, run.len()),
        };
        let subject = self.subjects().history(channel, &epoch);
        let ack_timeout = self.conn.config.request_timeout;
        // Send everything; keep each acknowledgement to await.
        let mut pending = Vec::with_capacity(run.len());
        for (publication, _) in &run {
            let body = match crate::broker::encode_publication(publication) {
                Ok(body) => Bytes::from(body),
                Err(e) => {
                    pending.push(Err(failed("publish", e).into()));
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
                Ok(Err(e)) => Err(failed("JetStream publish", e).into()),
                Err(_) => Err(timeout("JetStream publish").into()),
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
            match tokio::time::timeout(ack_timeout, ack).await {
                Ok(Ok(ack)) => out.push(Ok(StreamPosition {
                    offset: ack.sequence,
                    epoch: epoch.clone(),
                })),
                Ok(Err(e)) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                    // The stream of that epoch is gone: published again below.
                    retry.push(i);
                    out.push(Err(failed(
                        "JetStream publish",
                        "no stream for the channel",
                    )
                    .into()));
                }
                Ok(Err(e)) => out.push(Err(failed("JetStream publish", e).into())),
                Err(_) => out.push(Err(timeout("JetStream publish").into())),
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

    pub(super) async fn publish_history(
        &self,
        channel: &str,
        publication: &Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        let js = self.conn.jetstream()?.clone();
        let body = Bytes::from(
            crate::broker::encode_publication(publication).map_err(|e| failed("publish", e))?,
        );
        for attempt in 0..2 {
            let epoch = self.stream_epoch(channel, opts).await?;
            let mut headers = HeaderMap::new();
            headers.insert(KIND_HEADER, "pub");
            if let Some(key) = &opts.idempotency_key {
                headers.insert(async_nats::header::NATS_MESSAGE_ID, key.as_str());
            }
            let subject = self.subjects().history(channel, &epoch);
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
                Ok(Err(e)) => return Err(failed("JetStream publish", e).into()),
                Err(_) => return Err(timeout("JetStream publish").into()),
            }
        }
        Err(failed("JetStream publish", "no stream for the channel").into())
    }
}
