//! What the broker delivers to this node: publications, join and leave messages,
//! control messages and reconnects, handed to the hub and the cluster.

use std::sync::{Arc, OnceLock, Weak};

use tidings_protocol::{ClientInfo, Publication};

use super::{Node, NodeInner};
use crate::broker::BrokerEventHandler;
use crate::hub::{Delivery, Hub};
use crate::metrics::Metrics;

/// The node's [`BrokerEventHandler`]: the hub encodes each push once per wire
/// format and hands the bytes to every subscriber.
pub(super) struct BrokerEvents {
    pub(super) hub: Arc<Hub>,
    pub(super) metrics: Arc<Metrics>,
    /// The node, for control messages; weak so the broker does not keep it alive.
    pub(super) node: OnceLock<Weak<NodeInner>>,
}

impl BrokerEvents {
    fn deliver(&self, channel: &str, publication: &Publication, epoch: Option<&str>) {
        let started = std::time::Instant::now();
        let delivery = self.hub.publish(channel, epoch, publication);
        self.metrics
            .fanout_duration
            .record(started.elapsed().as_secs_f64());
        let lost = self.hub.take_lost_places();
        if lost > 0 {
            self.metrics.recoveries_requested.increment(lost);
        }
        match delivery {
            Delivery::Delivered(n) => self.metrics.messages_sent.increment(n as u64),
            Delivery::Duplicate => {
                tracing::debug!(channel, offset = publication.offset, "duplicate dropped");
            }
            Delivery::Gap(n) => {
                self.metrics.recoveries_requested.increment(n as u64);
                tracing::warn!(
                    channel,
                    offset = publication.offset,
                    subscribers = n,
                    "publications missed on the way to this node: subscribers recover"
                );
            }
        }
    }

    fn node(&self) -> Option<Node> {
        self.node
            .get()
            .and_then(Weak::upgrade)
            .map(|inner| Node { inner })
    }
}

impl BrokerEventHandler for BrokerEvents {
    fn handle_publication(&self, channel: &str, publication: &Publication) {
        self.deliver(channel, publication, None);
    }

    fn handle_stream_publication(&self, channel: &str, publication: &Publication, epoch: &str) {
        self.deliver(channel, publication, Some(epoch));
    }

    fn handle_reconnect(&self) {
        // Publications sent while this node was cut off never arrive. Until each
        // channel's position is confirmed, a publication without an epoch makes its
        // subscribers recover; the check runs off the delivery path.
        self.hub.distrust_all();
        if let Some(node) = self.node() {
            let tracker = node.inner.tracker.clone();
            tracker.spawn(async move { node.check_positions().await });
        }
    }

    fn handle_join(&self, channel: &str, info: &ClientInfo) {
        let n = self.hub.join_leave(channel, info, true);
        self.metrics.messages_sent.increment(n as u64);
    }

    fn handle_leave(&self, channel: &str, info: &ClientInfo) {
        let n = self.hub.join_leave(channel, info, false);
        self.metrics.messages_sent.increment(n as u64);
    }

    fn handle_control(&self, data: &[u8]) {
        if let Some(node) = self.node() {
            super::cluster::handle(&node, data);
        }
    }
}
