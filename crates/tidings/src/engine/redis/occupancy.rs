//! Occupancy in Redis: per key a sorted set `node uid → expiry (ms, Redis time)`,
//! `<prefix>.occupancy.{<key>}`, and one index of every entry,
//! `<prefix>.occupancy_index` (`<node uid>|<key>` → expiry), which tells the reaper
//! where expired entries are without scanning. Each operation is one Lua script,
//! so dropping the expired entries, the change and the answer (first? last?
//! emptied by expiry?) are atomic: two nodes can never both be told they were the
//! first, or both the last.
//!
//! The reap script builds key names from the index, so it needs every key on one
//! server: with several shards, occupancy lives on the first one; on a Redis
//! Cluster every occupancy key shares the hash tag `{<prefix>.occupancy}`, one
//! slot (see docs/engines.md).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::conn::RedisConn;
use super::keys::Keys;
use crate::config::RedisEngineConfig;
use crate::occupancy::{Change, OccupancyError, OccupancyTracker};

/// Drops the expired entries of KEYS[1] (and their index entries in KEYS[2]);
/// ARGV[1] is the occupancy key. Leaves `now`, `expired` (how many went) defined.
const PURGE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, n in ipairs(gone) do
  redis.call('ZREM', KEYS[1], n)
  redis.call('ZREM', KEYS[2], n .. '|' .. ARGV[1])
end
local expired = #gone
";

/// KEYS: holders, index. ARGV: key, node, TTL (ms). Returns {emptied by expiry, first}.
const ENTER_LUA: &str = r"
local held = redis.call('ZCARD', KEYS[1])
local vacated = 0
if expired > 0 and held == 0 then vacated = 1 end
local first = 0
if held == 0 then first = 1 end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[2] .. '|' .. ARGV[1])
return {vacated, first}
";

/// KEYS: holders, index. ARGV: key, node. Returns {emptied by expiry, last}.
const LEAVE_LUA: &str = r"
local held = redis.call('ZCARD', KEYS[1])
local vacated = 0
if expired > 0 and held == 0 then vacated = 1 end
local removed = redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2] .. '|' .. ARGV[1])
local last = 0
if removed == 1 and redis.call('ZCARD', KEYS[1]) == 0 then last = 1 end
return {vacated, last}
";

/// KEYS: index. ARGV: what comes before the key in a holder key's name, limit,
/// what comes after it. Returns the keys that expiry emptied, each once: the
/// script removes what it reports.
const REAP_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, entry in ipairs(due) do
  local sep = string.find(entry, '|', 1, true)
  if not sep then
    redis.call('ZREM', KEYS[1], entry)
  else
    local key = string.sub(entry, sep + 1)
    local holders = ARGV[1] .. key .. ARGV[3]
    local gone = redis.call('ZRANGEBYSCORE', holders, '-inf', now)
    for _, n in ipairs(gone) do
      redis.call('ZREM', holders, n)
      redis.call('ZREM', KEYS[1], n .. '|' .. key)
    end
    -- An index entry whose holder entry is gone or was refreshed.
    local score = redis.call('ZSCORE', holders, string.sub(entry, 1, sep - 1))
    if score then
      redis.call('ZADD', KEYS[1], score, entry)
    else
      redis.call('ZREM', KEYS[1], entry)
    end
    if #gone > 0 and redis.call('ZCARD', holders) == 0 then
      out[#out + 1] = key
    end
  end
end
return out
";

/// Occupancy of the Redis engine; see the module docs.
pub struct RedisOccupancy {
    conn: Arc<RedisConn>,
    keys: Keys,
    ttl: Duration,
    enter: redis::Script,
    leave: redis::Script,
    reap: redis::Script,
}

impl RedisOccupancy {
    /// Occupancy sharing the broker's command connection (of the first shard);
    /// entries live `engine.redis.presence_ttl` unless refreshed.
    pub(crate) fn with_conn(cfg: &RedisEngineConfig, conn: Arc<RedisConn>) -> Self {
        Self {
            conn,
            keys: Keys::of(cfg),
            ttl: cfg.presence_ttl,
            enter: redis::Script::new(&format!("{PURGE_LUA}{ENTER_LUA}")),
            leave: redis::Script::new(&format!("{PURGE_LUA}{LEAVE_LUA}")),
            reap: redis::Script::new(REAP_LUA),
        }
    }

    async fn change(
        &self,
        operation: &'static str,
        script: &redis::Script,
        key: &str,
        node: &str,
        ttl_ms: Option<u64>,
    ) -> Result<Change, OccupancyError> {
        let holders = self.keys.occupancy(key);
        let index = self.keys.occupancy_index();
        let (a, b): (i64, i64) = self
            .conn
            .call(operation, |mut c| async move {
                let mut call = script.key(&holders);
                call.key(&index).arg(key).arg(node);
                if let Some(ttl) = ttl_ms {
                    call.arg(ttl);
                }
                call.invoke_async(&mut c).await
            })
            .await?;
        Ok(Change {
            expired: a == 1,
            edge: b == 1,
        })
    }
}

#[async_trait]
impl OccupancyTracker for RedisOccupancy {
    async fn enter(&self, key: &str, node: &str) -> Result<Change, OccupancyError> {
        let ttl = self.ttl.as_millis().max(1) as u64;
        self.change("occupancy enter", &self.enter, key, node, Some(ttl))
            .await
    }

    async fn leave(&self, key: &str, node: &str) -> Result<Change, OccupancyError> {
        self.change("occupancy leave", &self.leave, key, node, None)
            .await
    }

    async fn reap(&self, limit: usize) -> Result<Vec<String>, OccupancyError> {
        let index = self.keys.occupancy_index();
        let (before, after) = self.keys.occupancy_affixes();
        let script = &self.reap;
        let keys: Vec<String> = self
            .conn
            .call("occupancy reap", |mut c| async move {
                script
                    .key(&index)
                    .arg(before)
                    .arg(limit.max(1))
                    .arg(after)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(keys)
    }
}
