//! The node's coarse timers: the heartbeat to other nodes, the refresh of every
//! held presence entry, and the check of each channel's stream position against
//! the broker's. One task each for the whole node, not one per connection.

use std::sync::Arc;
use std::time::Duration;

use tidings_protocol::StreamPosition;

use super::Node;
use crate::broker::HistoryFilter;
use crate::channel;
use crate::connection::Connection;

/// How often the metrics' histograms are folded (see `Metrics::run_upkeep`).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

impl Node {
    /// Starts the node's coarse timers: the heartbeat to other nodes, the presence
    /// refresh, the metrics upkeep and the channel position check. One task each for the whole node,
    /// not one per connection; each stops at shutdown.
    pub(super) fn start_timers(&self) {
        let cfg = &self.inner.config;
        let every =
            |period: Duration,
             node: Node,
             job: fn(Node) -> futures_util::future::BoxFuture<'static, ()>| {
                let token = node.inner.shutdown.clone();
                let tracker = node.inner.tracker.clone();
                tracker.spawn(async move {
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = token.cancelled() => break,
                            _ = tick.tick() => job(node.clone()).await,
                        }
                    }
                });
            };
        every(cfg.node.info_publish_interval, self.clone(), |node| {
            Box::pin(async move { super::cluster::publish_info(&node).await })
        });
        every(cfg.client.presence_update_interval, self.clone(), |node| {
            Box::pin(async move { node.refresh_presence().await })
        });
        // The latency histograms keep their samples until they are folded into
        // buckets; a node nobody scrapes must not keep them all.
        every(METRICS_UPKEEP, self.clone(), |node| {
            Box::pin(async move { node.inner.metrics.run_upkeep() })
        });
        every(
            cfg.client.channel_position_check_delay,
            self.clone(),
            |node| Box::pin(async move { node.check_positions().await }),
        );
    }

    /// A snapshot of every live connection, taken without holding the registry
    /// lock afterwards.
    pub(super) fn all_connections(&self) -> Vec<Arc<Connection>> {
        self.inner
            .clients
            .lock()
            .clients
            .values()
            .cloned()
            .collect()
    }

    /// Re-adds the presence entry of every live client in every channel it is in,
    /// so the entries outlive the engine's presence TTL only while their node runs.
    async fn refresh_presence(&self) {
        use futures_util::StreamExt;
        let conns = self.all_connections();
        let entries = conns.into_iter().flat_map(|conn| {
            conn.presence_entries()
                .into_iter()
                .map(move |(channel, info)| (conn.clone(), channel, info))
        });
        let presence = self.inner.presence.clone();
        futures_util::stream::iter(entries)
            .for_each_concurrent(16, |(conn, channel, info)| {
                let presence = presence.clone();
                async move {
                    if let Err(e) = presence.add(&channel, info).await {
                        tracing::debug!(channel, error = %e, "presence refresh failed");
                        return;
                    }
                    // The client may have left while the entry was re-added.
                    if !conn.holds_presence(&channel) {
                        let _ = presence.remove(&channel, &conn.client_id).await;
                    }
                }
            })
            .await;
    }

    /// Compares the last position this node delivered on each channel with the
    /// broker's stream top. A channel that is behind (or in another epoch) is
    /// checked once more after a short pause, so a publication still on its way is
    /// not mistaken for a lost one; if it is still behind, its subscribers are told
    /// to resubscribe and recover.
    pub async fn check_positions(&self) {
        let suspects = self.behind(self.inner.hub.positions()).await;
        if suspects.is_empty() {
            return;
        }
        let pause = (self.inner.config.client.channel_position_check_delay / 4)
            .min(Duration::from_millis(500));
        tokio::select! {
            _ = self.inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let again: Vec<(String, StreamPosition)> = suspects
            .into_iter()
            .filter_map(|(channel, _)| {
                let last = self.inner.hub.position(&channel)?;
                Some((channel, last))
            })
            .collect();
        for (channel, top) in self.behind(again).await {
            let n = self.inner.hub.lost_place(&channel, &top);
            self.inner.metrics.recoveries_requested.increment(n as u64);
            tracing::warn!(
                channel,
                offset = top.offset,
                epoch = top.epoch,
                subscribers = n,
                "channel behind the broker's stream: subscribers recover"
            );
        }
    }

    /// The channels among `positions` whose broker stream is ahead of, or in
    /// another epoch than, the given position, with the broker's top. Those that
    /// match are confirmed in the hub.
    async fn behind(
        &self,
        positions: Vec<(String, StreamPosition)>,
    ) -> Vec<(String, StreamPosition)> {
        use futures_util::StreamExt;
        let config = self.inner.config.clone();
        futures_util::stream::iter(positions)
            .filter(|(channel, _)| {
                let keeps_history =
                    channel::resolve(&config, channel).is_ok_and(|ch| ch.history_enabled());
                std::future::ready(keeps_history)
            })
            .map(|(channel, last)| async move {
                let filter = HistoryFilter {
                    limit: Some(0),
                    ..Default::default()
                };
                let top = self
                    .inner
                    .broker
                    .history(&channel, filter)
                    .await
                    .ok()?
                    .position;
                let behind =
                    (top.epoch != last.epoch && !last.epoch.is_empty()) || top.offset > last.offset;
                if !behind {
                    self.inner.hub.confirm(&channel, &top);
                }
                behind.then_some((channel, top))
            })
            .buffer_unordered(16)
            .filter_map(std::future::ready)
            .collect()
            .await
    }
}
