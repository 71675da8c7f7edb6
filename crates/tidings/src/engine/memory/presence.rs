//! Presence kept in this process: exact, since a single node sees every subscribe and
//! unsubscribe itself, so entries need no expiry.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use async_trait::async_trait;
use parking_lot::Mutex;
use tidings_protocol::ClientInfo;

use crate::presence::{PresenceError, PresenceManager, PresenceStats};

const SHARDS: usize = 32;

type Shard = Mutex<HashMap<String, HashMap<String, ClientInfo>>>;

#[derive(Default)]
pub struct MemoryPresenceManager {
    // Plain mutexes: every operation is a short map update, nothing awaits inside.
    shards: Vec<Shard>,
    hasher: BuildHasherDefault<DefaultHasher>,
}

impl MemoryPresenceManager {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: BuildHasherDefault::default(),
        }
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }
}

#[async_trait]
impl PresenceManager for MemoryPresenceManager {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), PresenceError> {
        self.shard(channel)
            .lock()
            .entry(channel.to_string())
            .or_default()
            .insert(info.client.clone(), info);
        Ok(())
    }

    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), PresenceError> {
        let mut shard = self.shard(channel).lock();
        if let Some(entries) = shard.get_mut(channel) {
            entries.remove(client_id);
            if entries.is_empty() {
                shard.remove(channel);
            }
        }
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, PresenceError> {
        Ok(self
            .shard(channel)
            .lock()
            .get(channel)
            .cloned()
            .unwrap_or_default())
    }

    async fn stats(&self, channel: &str) -> Result<PresenceStats, PresenceError> {
        let shard = self.shard(channel).lock();
        let Some(entries) = shard.get(channel) else {
            return Ok(PresenceStats::default());
        };
        let users: HashSet<&str> = entries.values().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats {
            num_clients: entries.len() as u32,
            num_users: users.len() as u32,
        })
    }
}
