//! The Lua scripts that make each multi-key change atomic. Every script takes the Redis
//! clock (`TIME`) where it needs one, so node clocks never matter.

use std::sync::LazyLock;

use redis::Script;

/// Append to a channel's history and publish, as one step.
///
/// KEYS: meta hash, entries sorted set.
/// ARGV: body, size, ttl ms, dedupe window ms (0: none), payload hash, epoch for a new
/// stream, pub/sub channel (empty: append only, another broker carries the publication).
/// Returns `{sent (0|1), offset, epoch}`; when not sent (a duplicate within the window), the
/// offset is the previous publication's.
pub(crate) static PUBLISH_WITH_HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = redis.call('HGET', KEYS[1], 'e')
local top = 0
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[2])
else
  top = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
  local window = tonumber(ARGV[4])
  if window > 0 and top > 0 then
    local last_hash = redis.call('HGET', KEYS[1], 'h')
    local last_time = tonumber(redis.call('HGET', KEYS[1], 'lt') or '0')
    if last_hash == ARGV[5] and now - last_time <= window then
      return {0, top, epoch}
    end
  end
end
top = top + 1
redis.call('HSET', KEYS[1], 'e', epoch, 't', top, 'h', ARGV[5], 'lt', now)
local size = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
if size > 0 then
  redis.call('ZADD', KEYS[2], top, top .. ',' .. now .. ',' .. ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(size + 1))
  for i = 1, 64 do
    local head = redis.call('ZRANGE', KEYS[2], 0, 0)
    if #head == 0 then break end
    local ts = tonumber(string.match(head[1], '^%d+,(%d+),'))
    if ts and now - ts > ttl then
      redis.call('ZREMRANGEBYRANK', KEYS[2], 0, 0)
    else
      break
    end
  end
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('PEXPIRE', KEYS[1], ttl)
if ARGV[7] ~= '' then
  redis.call('PUBLISH', ARGV[7], 'P' .. top .. ',' .. epoch .. ',' .. ARGV[1])
end
return {1, top, epoch}
"#,
    )
});

/// Withdraw one publication from a channel's history, as one step: its entry, and the
/// dedupe hash when it is still this publication's (nothing was appended after it), so a
/// retry of the same payload is not taken for a duplicate. The top offset stays: offsets
/// are never reused, so the stream has a gap there.
///
/// KEYS: meta hash, entries sorted set.
/// ARGV: offset, epoch (nothing is done when the stream has another epoch: it was lost or
/// cleared meanwhile, and that offset is someone else's).
/// Returns the number of entries removed (0 or 1).
pub(crate) static WITHDRAW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'e') ~= ARGV[2] then return 0 end
local removed = redis.call('ZREMRANGEBYSCORE', KEYS[2], ARGV[1], ARGV[1])
if tonumber(redis.call('HGET', KEYS[1], 't') or '0') == tonumber(ARGV[1]) then
  redis.call('HDEL', KEYS[1], 'h', 'lt')
end
return removed
"#,
    )
});

/// Read part of a channel's history.
///
/// KEYS: meta hash, entries sorted set.
/// ARGV: create (0|1), epoch for a new stream, ttl ms, min score (exclusive, as `(n`),
/// max score, count (0: none, -1: all).
/// Returns `{epoch ('' when there is no stream), top, first offset, entries}`.
pub(crate) static READ_HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
local top = 0
if not epoch then
  if ARGV[1] == '1' then
    epoch = ARGV[2]
    redis.call('HSET', KEYS[1], 'e', epoch, 't', 0)
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  else
    return {'', 0, 1, {}}
  end
else
  top = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
end
local first = top + 1
local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #head > 0 then first = tonumber(head[2]) end
local entries = {}
local count = tonumber(ARGV[6])
if count ~= 0 then
  entries = redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[4], ARGV[5], 'LIMIT', 0, count)
end
return {epoch, top, first, entries}
"#,
    )
});

/// A presence join.
///
/// KEYS: users (user → connections), info (user → info), order (user by join sequence),
/// conns (socket → user), seq, node index.
/// ARGV: socket, user, info, max members, node index entry.
/// Returns 1 first connection, 2 another connection, 3 full.
pub(crate) static PRESENCE_JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 then return 2 end
local present = redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1
if not present and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return 3 end
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[6], ARGV[5])
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
if present then return 2 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[5]), ARGV[2])
return 1
"#,
    )
});

/// A presence leave. KEYS as for the join; ARGV: socket, user, node index entry.
/// Returns 1 when that was the user's last connection.
pub(crate) static PRESENCE_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('SREM', KEYS[6], ARGV[3])
if redis.call('HDEL', KEYS[4], ARGV[1]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[1], ARGV[2], -1)
if n > 0 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[5]) end
return 1
"#,
    )
});

/// The members of a presence channel, in join order. KEYS: info, order.
/// Returns `{user, info, user, info, …}`.
pub(crate) static PRESENCE_MEMBERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local users = redis.call('ZRANGE', KEYS[2], 0, -1)
local out = {}
for _, u in ipairs(users) do
  out[#out + 1] = u
  out[#out + 1] = redis.call('HGET', KEYS[1], u) or 'null'
end
return out
"#,
    )
});

/// A node now has subscribers on a channel.
/// KEYS: occupancy hash, app channel set, node channel index.
/// ARGV: node, count, node index entry, channel name.
/// Returns 1 when no other node had subscribers (the cluster transition).
pub(crate) static OCCUPY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local created = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
if created == 1 and redis.call('HLEN', KEYS[1]) == 1 then return 1 end
return 0
"#,
    )
});

/// A node no longer has subscribers on a channel. KEYS as for occupy;
/// ARGV: node, node index entry, channel name. Returns 1 when no node has any now.
pub(crate) static VACATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[2])
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[3])
  if removed == 1 then return 1 end
end
return 0
"#,
    )
});

/// Update this node's subscriber counts on channels it still occupies.
/// KEYS: occupancy hashes; ARGV: node, then one count per key.
pub(crate) static SET_COUNTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for i, key in ipairs(KEYS) do
  if redis.call('HEXISTS', key, ARGV[1]) == 1 then
    redis.call('HSET', key, ARGV[1], ARGV[i + 1])
  end
end
return 0
"#,
    )
});

/// A heartbeat. KEYS: nodes; ARGV: node, ttl ms.
/// Returns `{1 if the node was not registered (new, or removed as dead), dead nodes}`.
pub(crate) static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', KEYS[1], now, ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return {added, dead}
"#,
    )
});

/// Forget a dead node, unless it came back. KEYS: nodes; ARGV: node, ttl ms.
pub(crate) static FORGET_NODE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
if seen and now - tonumber(seen) >= tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"#,
    )
});
