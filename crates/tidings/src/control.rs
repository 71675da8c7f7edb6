//! Node-to-node control messages, carried by the broker as opaque bytes.
//!
//! Every node receives the broadcast ones (its own included) and the ones addressed
//! to its uid. The set of messages and their handling live here, so the brokers
//! stay transport only.

use crate::node::Node;

/// Handles a control message that arrived through the broker.
pub(crate) fn handle(node: &Node, data: &[u8]) {
    tracing::debug!(
        node = node.uid(),
        len = data.len(),
        "control message ignored"
    );
}
