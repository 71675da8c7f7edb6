//! The names of everything the Redis engine keeps or publishes under one prefix:
//! stream, meta and idempotency keys, presence keys, pub/sub channels, the
//! direct-publish stream. docs/engines.md lists them.

/// Key and channel names of one prefix. `{<channel>}` is the hash tag: every key of
/// a channel lands in the same Redis Cluster slot.
#[derive(Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }
    pub(crate) fn stream(&self, channel: &str) -> String {
        format!("{}.stream.{{{channel}}}", self.prefix)
    }
    pub(crate) fn meta(&self, channel: &str) -> String {
        format!("{}.meta.{{{channel}}}", self.prefix)
    }
    pub(crate) fn idempotency(&self, channel: &str, key: &str) -> String {
        format!("{}.idempotency.{{{channel}}}.{key}", self.prefix)
    }
    pub(crate) fn presence_data(&self, channel: &str) -> String {
        format!("{}.presence.data.{{{channel}}}", self.prefix)
    }
    pub(crate) fn presence_expiry(&self, channel: &str) -> String {
        format!("{}.presence.expiry.{{{channel}}}", self.prefix)
    }
    /// The holders of an occupancy key: a sorted set, node uid → expiry (ms).
    pub(crate) fn occupancy(&self, key: &str) -> String {
        format!("{}{{{key}}}", self.occupancy_prefix())
    }
    /// What [`Keys::occupancy`] puts before the hash tag (the reap script builds
    /// the key names it finds in the index).
    pub(crate) fn occupancy_prefix(&self) -> String {
        format!("{}.occupancy.", self.prefix)
    }
    /// Every occupancy entry: a sorted set, `<node uid>|<key>` → expiry (ms).
    pub(crate) fn occupancy_index(&self) -> String {
        format!("{}.occupancy_index", self.prefix)
    }
    pub(crate) fn client_channel_prefix(&self) -> String {
        format!("{}.client.", self.prefix)
    }
    pub(crate) fn client_channel(&self, channel: &str) -> String {
        format!("{}.client.{channel}", self.prefix)
    }
    pub(crate) fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }
    pub(crate) fn node(&self, uid: &str) -> String {
        format!("{}.node.{uid}", self.prefix)
    }
    /// The direct-publish stream.
    pub(crate) fn ingest(&self) -> String {
        format!("{}.publish", self.prefix)
    }
}
