//! The names of everything the Redis engine keeps or publishes under one prefix:
//! stream, meta and idempotency keys, presence keys, pub/sub channels, the
//! direct-publish stream. docs/engines.md lists them.

/// Key and channel names of one prefix. `{<channel>}` is the hash tag: every key of
/// a channel lands in the same Redis Cluster slot.
#[derive(Clone)]
pub(crate) struct Keys {
    prefix: String,
    /// Names for a Redis Cluster: the channel's pub/sub name carries its hash
    /// tag too (sharded pub/sub from the publish script), and every occupancy
    /// key shares one tag (the reap script reads them together).
    cluster: bool,
}

impl Keys {
    #[cfg(test)]
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            cluster: false,
        }
    }

    /// The names for the engine settings (Redis Cluster or not).
    pub(crate) fn of(cfg: &crate::config::RedisEngineConfig) -> Self {
        Self {
            prefix: cfg.prefix.clone(),
            cluster: !cfg.cluster_address.is_empty(),
        }
    }

    /// The command that publishes to a pub/sub channel: `SPUBLISH` (sharded) on
    /// a Redis Cluster, `PUBLISH` otherwise.
    pub(crate) fn publish_command(&self) -> &'static str {
        if self.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
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
        let (before, after) = self.occupancy_affixes();
        format!("{before}{key}{after}")
    }
    /// What [`Keys::occupancy`] puts before and after the key (the reap script
    /// builds the key names it finds in the index).
    pub(crate) fn occupancy_affixes(&self) -> (String, &'static str) {
        if self.cluster {
            (format!("{{{}.occupancy}}.", self.prefix), "")
        } else {
            (format!("{}.occupancy.{{", self.prefix), "}")
        }
    }
    /// Every occupancy entry: a sorted set, `<node uid>|<key>` → expiry (ms).
    pub(crate) fn occupancy_index(&self) -> String {
        if self.cluster {
            format!("{{{}.occupancy}}.index", self.prefix)
        } else {
            format!("{}.occupancy_index", self.prefix)
        }
    }
    pub(crate) fn client_channel(&self, channel: &str) -> String {
        if self.cluster {
            format!("{}.client.{{{channel}}}", self.prefix)
        } else {
            format!("{}.client.{channel}", self.prefix)
        }
    }
    /// The channel whose pub/sub name is `name`, if it is one.
    pub(crate) fn channel_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        let rest = name
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".client.")?;
        if self.cluster {
            rest.strip_prefix('{')?.strip_suffix('}')
        } else {
            Some(rest)
        }
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
