//! Presence in Redis, shared by every node of the engine.
//!
//! Per channel: a hash `client id → ClientInfo JSON` and a sorted set `client id →
//! expiry time (ms)`. Adding (or refreshing) an entry moves its expiry forward; a
//! read first removes the expired entries, in the same Lua script, so an entry
//! whose node died without removing it disappears within the presence TTL. Both
//! keys also expire as a whole one TTL after the last add, so an abandoned channel
//! leaves nothing behind. Keys: `<prefix>.presence.data.{<channel>}` and
//! `<prefix>.presence.expiry.{<channel>}` (same hash tag, same Cluster slot).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use tidings_protocol::ClientInfo;

use super::keys::Keys;
use super::shards::Shards;
use super::ENGINE;
use crate::broker::EngineError;
use crate::config::RedisEngineConfig;
use crate::presence::{PresenceError, PresenceManager, PresenceStats};

/// KEYS: data hash, expiry set. ARGV: client id, info JSON, TTL (ms).
const ADD_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
";

/// KEYS: data hash, expiry set. ARGV: client id.
const REMOVE_LUA: &str = r"
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
";

/// KEYS: data hash, expiry set. ARGV: "all" (HGETALL) or "values" (HVALS).
/// Removes expired entries first.
const READ_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
local i = 1
while i <= #expired do
  local chunk = {}
  for j = i, math.min(i + 999, #expired) do chunk[#chunk + 1] = expired[j] end
  redis.call('ZREM', KEYS[2], unpack(chunk))
  redis.call('HDEL', KEYS[1], unpack(chunk))
  i = i + 1000
end
if ARGV[1] == 'all' then
  return redis.call('HGETALL', KEYS[1])
end
return redis.call('HVALS', KEYS[1])
";

/// Presence of the Redis engine.
pub struct RedisPresenceManager {
    /// A channel's entries live on the channel's shard.
    conns: Shards,
    keys: Keys,
    ttl: Duration,
    add: redis::Script,
    remove: redis::Script,
    read: redis::Script,
}

impl RedisPresenceManager {
    /// A presence manager with its own connections.
    ///
    /// # Errors
    /// A message when the address or TLS settings cannot be used.
    pub fn new(cfg: &RedisEngineConfig) -> Result<Self, String> {
        Ok(Self::with_conns(cfg, Shards::connect(cfg, cfg.io_timeout)?))
    }

    /// A presence manager sharing the broker's command connections.
    pub(crate) fn with_conns(cfg: &RedisEngineConfig, conns: Shards) -> Self {
        Self {
            conns,
            keys: Keys::of(cfg),
            ttl: cfg.presence_ttl,
            add: redis::Script::new(ADD_LUA),
            remove: redis::Script::new(REMOVE_LUA),
            read: redis::Script::new(READ_LUA),
        }
    }

    async fn read(&self, channel: &str, mode: &'static str) -> Result<Vec<Vec<u8>>, PresenceError> {
        let keys = [
            self.keys.presence_data(channel),
            self.keys.presence_expiry(channel),
        ];
        let script = &self.read;
        let values = self
            .conns
            .of(channel)
            .call("presence read", |mut c| async move {
                script
                    .key(&keys[0])
                    .key(&keys[1])
                    .arg(mode)
                    .invoke_async::<Vec<Vec<u8>>>(&mut c)
                    .await
            })
            .await?;
        Ok(values)
    }
}

#[async_trait]
impl PresenceManager for RedisPresenceManager {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), PresenceError> {
        let json = serde_json::to_vec(&info)
            .map_err(|e| EngineError::failed(ENGINE, "presence add", e))?;
        let keys = [
            self.keys.presence_data(channel),
            self.keys.presence_expiry(channel),
        ];
        let ttl_ms = self.ttl.as_millis().max(1) as u64;
        let script = &self.add;
        let client = info.client;
        self.conns
            .of(channel)
            .call("presence add", |mut c| async move {
                script
                    .key(&keys[0])
                    .key(&keys[1])
                    .arg(client)
                    .arg(json)
                    .arg(ttl_ms)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), PresenceError> {
        let keys = [
            self.keys.presence_data(channel),
            self.keys.presence_expiry(channel),
        ];
        let script = &self.remove;
        self.conns
            .of(channel)
            .call("presence remove", |mut c| async move {
                script
                    .key(&keys[0])
                    .key(&keys[1])
                    .arg(client_id)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, PresenceError> {
        let flat = self.read(channel, "all").await?;
        let mut out = HashMap::with_capacity(flat.len() / 2);
        for kv in flat.chunks(2) {
            let [client, json] = kv else { continue };
            let client = String::from_utf8_lossy(client).into_owned();
            match serde_json::from_slice::<ClientInfo>(json) {
                Ok(info) => {
                    out.insert(client, info);
                }
                Err(e) => tracing::warn!(channel, error = %e, "redis presence: bad entry skipped"),
            }
        }
        Ok(out)
    }

    async fn stats(&self, channel: &str) -> Result<PresenceStats, PresenceError> {
        let values = self.read(channel, "values").await?;
        let mut users = HashSet::new();
        let mut clients = 0u32;
        for json in &values {
            if let Ok(info) = serde_json::from_slice::<ClientInfo>(json) {
                clients += 1;
                users.insert(info.user);
            }
        }
        Ok(PresenceStats {
            num_clients: clients,
            num_users: users.len() as u32,
        })
    }
}
