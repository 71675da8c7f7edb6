//! The Lua scripts of the Redis broker. Each runs atomically in Redis, which is
//! what makes publish and history-append one step.
//!
//! On a Redis Cluster the scripts publish with `SPUBLISH` ([`for_keys`]) and
//! the server id argument is `@`: the script asks its node (`CLUSTER MYID`).
//!
//! The meta hash of a channel holds `e` (epoch), `s` (top offset) and, behind a
//! Sentinel shard, `r`: the run id of the master that wrote it. A master that
//! finds another server's run id there (a failover happened; the stream may lack
//! what the old master had not replicated yet) starts the channel on a new epoch,
//! so recovery across the failover reports the loss instead of hiding it.

/// Publish with history, atomically: idempotency check, epoch (created when the
/// meta hash is missing, which also drops a stream left from an older epoch),
/// offset increment, XADD with exact MAXLEN, expiries, PUBLISH of the envelope,
/// idempotency result.
///
/// KEYS: stream, meta, idempotency key. ARGV: pub/sub channel, publication JSON
/// (without offset), history size, history TTL (ms), meta TTL (s, 0 = none), a
/// fresh epoch, "1" when the idempotency key is used, its TTL (s), the server's
/// run id ("" for a fixed server; see the `sentinel` module).
/// Returns "offset:epoch" ("0:" without history).
pub(super) const PUBLISH_LUA: &str = r"
if ARGV[7] == '1' then
  local done = redis.call('GET', KEYS[3])
  if done then return done end
end
local size = tonumber(ARGV[3])
local result
if size > 0 then
  local sid = ARGV[9]
  if sid == '@' then sid = redis.call('CLUSTER', 'MYID') end
  local m = redis.call('HMGET', KEYS[2], 'e', 'r')
  local epoch = m[1]
  if epoch and sid ~= '' and m[2] ~= sid then epoch = false end
  if not epoch then
    epoch = ARGV[6]
    redis.call('DEL', KEYS[2], KEYS[1])
    redis.call('HSET', KEYS[2], 'e', epoch)
    if sid ~= '' then redis.call('HSET', KEYS[2], 'r', sid) end
  end
  local offset = redis.call('HINCRBY', KEYS[2], 's', 1)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local ttl = tonumber(ARGV[4])
  redis.call('XADD', KEYS[1], 'MAXLEN', size, offset .. '-0', 'd', ARGV[2], 'x', tostring(now + ttl))
  redis.call('PEXPIRE', KEYS[1], ttl)
  if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
  redis.call('PUBLISH', ARGV[1], 'P' .. offset .. ':' .. epoch .. ':' .. ARGV[2])
  result = offset .. ':' .. epoch
else
  redis.call('PUBLISH', ARGV[1], 'P0::' .. ARGV[2])
  result = '0:'
end
if ARGV[7] == '1' then redis.call('SET', KEYS[3], result, 'EX', ARGV[8]) end
return result
";

/// Publishes several publications of one channel with history, atomically and in
/// order: epoch (created when missing, as in [`PUBLISH_LUA`]), one offset increment
/// for all, an XADD and a PUBLISH per publication, one trim and the expiries.
/// Publications with an idempotency key go through [`PUBLISH_LUA`] instead.
///
/// KEYS: stream, meta. ARGV: pub/sub channel, history size, history TTL (ms), meta
/// TTL (s, 0 = none), a fresh epoch, the server's run id (as in [`PUBLISH_LUA`]),
/// then the publications' JSON (without offset).
/// Returns "first offset:epoch"; the others follow one by one.
pub(super) const PUBLISH_MANY_LUA: &str = r"
local n = #ARGV - 6
local sid = ARGV[6]
if sid == '@' then sid = redis.call('CLUSTER', 'MYID') end
local m = redis.call('HMGET', KEYS[2], 'e', 'r')
local epoch = m[1]
if epoch and sid ~= '' and m[2] ~= sid then epoch = false end
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2], KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch)
  if sid ~= '' then redis.call('HSET', KEYS[2], 'r', sid) end
end
local first = redis.call('HINCRBY', KEYS[2], 's', n) - n + 1
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local expires = tostring(now + ttl)
local head = ':' .. epoch .. ':'
for i = 1, n do
  local offset = first + i - 1
  redis.call('XADD', KEYS[1], offset .. '-0', 'd', ARGV[6 + i], 'x', expires)
  redis.call('PUBLISH', ARGV[1], 'P' .. offset .. head .. ARGV[6 + i])
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
return first .. ':' .. epoch
";

/// Reads history: epoch (created when missing), top offset, and one range of the
/// stream after dropping expired entries from its front.
///
/// KEYS: stream, meta. ARGV: a fresh epoch, meta TTL (s), mode ("none", "fwd",
/// "rev"), range start, range end, count (-1 = all), the server's run id (as in
/// [`PUBLISH_LUA`]).
/// Returns {epoch, top, entries}.
pub(super) const HISTORY_LUA: &str = r"
local sid = ARGV[7]
if sid == '@' then sid = redis.call('CLUSTER', 'MYID') end
local m = redis.call('HMGET', KEYS[2], 'e', 's', 'r')
local epoch = m[1]
local top = 0
if epoch and sid ~= '' and m[3] ~= sid then epoch = false end
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2], KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch)
  if sid ~= '' then redis.call('HSET', KEYS[2], 'r', sid) end
  if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
else
  top = tonumber(m[2] or '0')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
while true do
  local batch = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 100)
  if #batch == 0 then break end
  local keep = nil
  for _, entry in ipairs(batch) do
    local fields = entry[2]
    local expires = 0
    for i = 1, #fields, 2 do
      if fields[i] == 'x' then expires = tonumber(fields[i + 1]) end
    end
    if expires > now then keep = entry[1] break end
  end
  if keep then
    redis.call('XTRIM', KEYS[1], 'MINID', keep)
    break
  end
  if #batch < 100 then
    redis.call('DEL', KEYS[1])
    break
  end
  local last = batch[#batch][1]
  local n = tonumber(string.match(last, '^(%d+)'))
  redis.call('XTRIM', KEYS[1], 'MINID', (n + 1) .. '-0')
end
local entries = {}
local count = tonumber(ARGV[6])
if ARGV[3] == 'fwd' then
  if count < 0 then
    entries = redis.call('XRANGE', KEYS[1], ARGV[4], ARGV[5])
  else
    entries = redis.call('XRANGE', KEYS[1], ARGV[4], ARGV[5], 'COUNT', count)
  end
elseif ARGV[3] == 'rev' then
  if count < 0 then
    entries = redis.call('XREVRANGE', KEYS[1], ARGV[4], ARGV[5])
  else
    entries = redis.call('XREVRANGE', KEYS[1], ARGV[4], ARGV[5], 'COUNT', count)
  end
end
return {epoch, top, entries}
";

/// The text of `script` for the key names in use: on a Redis Cluster its
/// publications go out by sharded pub/sub.
pub(super) fn for_keys(script: &str, keys: &super::keys::Keys) -> String {
    script.replace(
        "redis.call('PUBLISH'",
        &format!("redis.call('{}'", keys.publish_command()),
    )
}
