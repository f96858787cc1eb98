"""Lua scripts of the redis:// driver, written against asynq's key layout and semantics.

Every state change is one script, so a task is never half-moved. The scripts keep asynq's
invariants (a task hash ``asynq:{q}:t:<id>`` with ``msg``/``state``; an id in exactly one of
pending / active+lease / scheduled / retry / archived / completed) and add three things asynq
does not do:

* a wake-up list (``asynq:{q}:uq:wake``) that enqueues push to and idle consumers BLPOP on,
  so pickup takes one round trip instead of asynq's ~1 s poll;
* forwarding of due scheduled/retry tasks and recovery of expired leases *inside* the dequeue
  script, so nothing waits for a background loop (on every call that comes up short, and at
  most every 0.1 s otherwise: ``asynq:{q}:uq:maintained`` holds the last pass's time);
* recovery of ids in ``active`` that have no ``lease`` entry (asynq issue #1144).

Two private hash fields are added to task hashes: ``uq_token`` (which delivery holds the lease,
so a stale ack is detected) and ``uq_enqueued`` (enqueue time; asynq stores none). asynq ignores
fields it does not know.

Scripts that touch several priority levels build key names from ``asynq:{<queue>}:`` prefixes
inside Lua, as asynq's own dequeue script does for task keys.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "ACK", "ACK_MANY", "ALL", "DEQUEUE", "ENQUEUE", "EXTEND", "NACK", "PEEK", "PURGE", "SIZE",
    "STATS", "UNTAKE", "Script",
]


class Script:
    """A Lua script and its SHA1 (for EVALSHA).

    ``allow_oom``: the script gets Redis 7's ``#!lua flags=allow-oom`` shebang, so it runs when
    Redis is at ``maxmemory`` with ``noeviction``. Without it Redis refuses a script whose
    first write may grow memory (e.g. the dequeue's RPOPLPUSH, the heartbeat's ZADD): the
    consumer scripts carry it so a full Redis still drains; the enqueue script does not, so
    producers get an OOM error. ``legacy`` is the same script without the shebang, for
    servers older than Redis 7 (which cannot parse it).
    """

    __slots__ = ("legacy", "name", "sha", "source")

    def __init__(self, name: str, source: str, *, allow_oom: bool = False) -> None:
        self.name = name
        self.legacy: Script | None = None
        if allow_oom:
            self.legacy = Script(name, source)
            source = "#!lua flags=allow-oom\n" + source
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


# Counters follow asynq: processed/failed totals and per-day keys that expire after 90 days
# (ARGV-supplied date and expiry time).
_COUNT = r"""
local function uq_count(P, date, expire, failed)
  local function bump(total, daily)
    if redis.call("INCR", daily) == 1 then redis.call("EXPIREAT", daily, expire) end
    redis.call("INCR", total)
  end
  bump(P .. "processed", P .. "processed:" .. date)
  if failed then bump(P .. "failed", P .. "failed:" .. date) end
end
"""

# Shared Lua helpers. A script defines every helper it includes on each call, so ACK takes
# only _COUNT.
_HELPERS = r"""
local function uq_varint(s, i)
  local v, m = 0, 1
  while true do
    local b = string.byte(s, i)
    if b == nil then return nil, i end
    i = i + 1
    v = v + (b % 128) * m
    if b < 128 then return v, i end
    m = m * 128
  end
end

local function uq_enc(v)
  local t = {}
  while v >= 128 do
    local b = v % 128
    t[#t + 1] = string.char(b + 128)
    v = (v - b) / 128
  end
  t[#t + 1] = string.char(v)
  return table.concat(t)
end

-- Rewrite a TaskMessage: retried += delta, error_msg = err, last_failed_at = at.
-- Returns new_msg, retry, old_retried; or nil when the message cannot be parsed.
local function uq_rewrite(msg, delta, err, at)
  local parts, retry, retried = {}, 0, 0
  local i, n = 1, #msg
  while i <= n do
    local start = i
    local key
    key, i = uq_varint(msg, i)
    if key == nil then return nil end
    local field, wire = math.floor(key / 8), key % 8
    local val = nil
    if wire == 0 then
      val, i = uq_varint(msg, i)
      if val == nil then return nil end
    elseif wire == 2 then
      local len
      len, i = uq_varint(msg, i)
      if len == nil then return nil end
      i = i + len
    elseif wire == 1 then
      i = i + 8
    elseif wire == 5 then
      i = i + 4
    else
      return nil
    end
    if i > n + 1 then return nil end
    if field == 5 then retry = val end
    if field == 6 then retried = val end
    if field ~= 6 and field ~= 7 and field ~= 11 then
      parts[#parts + 1] = string.sub(msg, start, i - 1)
    end
  end
  local now_retried = retried + delta
  if now_retried > 0 then parts[#parts + 1] = "\48" .. uq_enc(now_retried) end
  if err ~= "" then parts[#parts + 1] = "\58" .. uq_enc(#err) .. err end
  if at > 0 then parts[#parts + 1] = "\88" .. uq_enc(at) end
  return table.concat(parts), retry, retried
end
""" + _COUNT + r"""

-- Scores of the scheduled, retry, archived and completed sets are whole Unix seconds, as
-- asynq writes them: asynqmon and asynq <= v0.25's Inspector fail on fractional ones (a task
-- due at a fractional time is rounded up, so it never runs early).
local function uq_archive(P, id, msg, now, cutoff)
  local ak = P .. "archived"
  redis.call("ZADD", ak, math.floor(tonumber(now)), id)
  redis.call("ZREMRANGEBYSCORE", ak, "-inf", cutoff)
  redis.call("ZREMRANGEBYRANK", ak, 0, -10000)
  redis.call("HSET", P .. "t:" .. id, "msg", msg, "state", "archived")
end

local function uq_wake(key, cap)
  if redis.call("LLEN", key) < cap then redis.call("LPUSH", key, "1") end
end
"""

ENQUEUE = Script("enqueue", r"""
-- KEYS: 1 task hash, 2 pending, 3 scheduled, 4 wake list, [5 unique lock]
-- ARGV: 1 msg, 2 id, 3 now (ns; also kept as uq_enqueued), 4 process-at (0 = now),
--       5 unique ttl (0 = none), 6 wake cap
-- Returns 1 = enqueued, 0 = id exists, -1 = unique lock held by another task.
if redis.call("EXISTS", KEYS[1]) == 1 then return 0 end
if ARGV[5] ~= "0" then
  if not redis.call("SET", KEYS[5], ARGV[2], "NX", "EX", ARGV[5]) then return -1 end
end
if ARGV[4] ~= "0" then
  redis.call("HSET", KEYS[1], "msg", ARGV[1], "state", "scheduled", "uq_enqueued", ARGV[3])
  -- Whole seconds, rounded up (asynq's score format; never early).
  redis.call("ZADD", KEYS[3], math.ceil(tonumber(ARGV[4])), ARGV[2])
else
  redis.call("HSET", KEYS[1], "msg", ARGV[1], "state", "pending", "pending_since", ARGV[3],
             "uq_enqueued", ARGV[3])
  redis.call("LPUSH", KEYS[2], ARGV[2])
end
if ARGV[5] ~= "0" then redis.call("HSET", KEYS[1], "unique_key", KEYS[5]) end
-- Wake a waiting consumer. A full list means nobody waited lately: one read, no writes.
if redis.call("LLEN", KEYS[4]) < tonumber(ARGV[6]) then redis.call("LPUSH", KEYS[4], "1") end
return 1
""")

_LEVELS = r"""
-- The queue's priority levels, highest first: asynq queues "<name>:p<N>" then "<name>".
local function uq_levels(levels_key, name)
  local nums = {}
  for _, l in ipairs(redis.call("SMEMBERS", levels_key)) do nums[#nums + 1] = tonumber(l) end
  table.sort(nums, function(a, b) return a > b end)
  local out = {}
  for _, n in ipairs(nums) do out[#out + 1] = {"asynq:{" .. name .. ":p" .. n .. "}:", n} end
  out[#out + 1] = {"asynq:{" .. name .. "}:", 0}
  return out
end
"""

DEQUEUE = Script("dequeue", allow_oom=True, source=_HELPERS + _LEVELS + r"""
-- KEYS: 1 levels set, 2 maintenance stamp (client time of the last maintenance pass)
-- ARGV: 1 queue name, 2 now (s, float), 3 now (ns), 4 lease until, 5 token, 6 max jobs,
--       7 lease-expiry cutoff, 8 UTC date, 9 stats expiry, 10 archive cutoff,
--       11 "1" when this is a resend after a lost reply (hand out again what the first
--       attempt took: same token, same lease score), 12 maintenance interval (s)
-- Returns {n, next_due | false, then per job: level, id, msg, enqueued_at, pending_since}.
local name, now, now_ns = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local lease_until, token, max_n = ARGV[4], ARGV[5], tonumber(ARGV[6])
local cutoff, date, expire, acut = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local now_s = math.floor(now)
local levels = uq_levels(KEYS[1], name)

local function recover(P, id, err)
  local tk = P .. "t:" .. id
  local msg = redis.call("HGET", tk, "msg")
  if not msg then return end
  redis.call("HDEL", tk, "uq_token")
  local new, retry, retried = uq_rewrite(msg, 1, err, now_s)
  uq_count(P, date, expire, true)
  if new == nil or retried >= retry then
    local archived = uq_rewrite(msg, 0, err, now_s)
    uq_archive(P, id, archived or msg, now, acut)
  else
    redis.call("RPUSH", P .. "pending", id)
    redis.call("HSET", tk, "msg", new, "state", "pending", "pending_since", now_ns)
  end
end

local function forward(P, src)
  local ids = redis.call("ZRANGEBYSCORE", P .. src, "-inf", now, "LIMIT", 0, 100)
  for _, id in ipairs(ids) do
    local tk = P .. "t:" .. id
    local group = redis.call("HGET", tk, "group")
    redis.call("ZREM", P .. src, id)
    if group and group ~= "" then
      redis.call("ZADD", P .. "g:" .. group, now_s, id)
      redis.call("HSET", tk, "state", "aggregating")
    else
      redis.call("LPUSH", P .. "pending", id)
      redis.call("HSET", tk, "state", "pending", "pending_since", now_ns)
    end
  end
end

-- Forward due scheduled/retry tasks and recover expired leases: five commands per level, so
-- while every call finds ready jobs it runs at most once per interval (a due task would
-- queue behind those jobs anyway); a call that comes up short always runs it.
local function maintain()
  for _, lv in ipairs(levels) do
    local P = lv[1]
    local lk, ak = P .. "lease", P .. "active"
    forward(P, "scheduled")
    forward(P, "retry")
    for _, id in ipairs(redis.call("ZRANGEBYSCORE", lk, "-inf", cutoff, "LIMIT", 0, 100)) do
      redis.call("ZREM", lk, id)
      if redis.call("LREM", ak, 0, id) > 0 then recover(P, id, "asynq: task lease expired") end
    end
    -- Every id in active has a lease entry unless something went wrong (asynq #1144); the
    -- O(1) length check keeps the scan off the hot path.
    if redis.call("LLEN", ak) > redis.call("ZCARD", lk) then
      for _, id in ipairs(redis.call("LRANGE", ak, 0, -1)) do
        if not redis.call("ZSCORE", lk, id) then
          redis.call("LREM", ak, 0, id)
          recover(P, id, "unifiedq: active task had no lease")
        end
      end
    end
  end
  redis.call("SET", KEYS[2], ARGV[2], "EX", 3600)
end

local out = {0, false}
local n = 0
-- One taken job in the reply: level, id, msg, uq_enqueued, pending_since.
local function emit(level, id, v)
  n = n + 1
  out[#out + 1] = tostring(level)
  out[#out + 1] = id
  out[#out + 1] = v[1]
  out[#out + 1] = v[2]
  out[#out + 1] = v[3]
end

-- Lease one popped id (already in active); false for a dangling id (its hash was deleted).
local function lease(lv, P, id)
  local tk = P .. "t:" .. id
  local v = redis.call("HMGET", tk, "msg", "uq_enqueued", "pending_since")
  if not v[1] then
    redis.call("LREM", P .. "active", 0, id)
    return false
  end
  redis.call("HSET", tk, "state", "active", "uq_token", token)
  redis.call("HDEL", tk, "pending_since")
  emit(lv[2], id, v)
  return true
end

-- asynq's pause of the base queue (`asynq queue pause <name>`, or pause(), which pauses every
-- level) pauses the whole queue; a level paused on its own by asynq's tools is skipped.
local base_paused = redis.call("EXISTS", levels[#levels][1] .. "paused") == 1

local function take()
  if base_paused then return end
  for _, lv in ipairs(levels) do
    if n >= max_n then break end
    local P = lv[1]
    local pk, ak, lk = P .. "pending", P .. "active", P .. "lease"
    if lv[2] == 0 or redis.call("EXISTS", P .. "paused") == 0 then
      if max_n - n == 1 or not redis.REDIS_VERSION_NUM then
        while n < max_n do  -- asynq's own steps, one id at a time
          local id = redis.call("RPOPLPUSH", pk, ak)
          if not id then break end
          if lease(lv, P, id) then redis.call("ZADD", lk, lease_until, id) end
        end
      else
        -- Redis >= 7 (REDIS_VERSION_NUM is new in 7.0): a batch pops its ids with one RPOP,
        -- pushes them onto active with one LPUSH (the order RPOPLPUSH leaves) and leases them
        -- with one ZADD: three commands per chunk instead of three per job.
        while n < max_n do
          local want = math.min(max_n - n, 1000)  -- unpack() has a stack limit
          local ids = redis.call("RPOP", pk, want)
          if not ids then break end
          redis.call("LPUSH", ak, unpack(ids))
          local z = {}
          for _, id in ipairs(ids) do
            if lease(lv, P, id) then z[#z + 1] = lease_until; z[#z + 1] = id end
          end
          if #z > 0 then redis.call("ZADD", lk, unpack(z)) end
          if #ids < want then break end
        end
      end
    end
  end
end

-- math.abs: a stamp from a client whose clock runs ahead must not hold maintenance off.
local stamp = tonumber(redis.call("GET", KEYS[2]))
local fresh = stamp ~= nil and math.abs(now - stamp) < tonumber(ARGV[12])
if not fresh then maintain() end
if ARGV[11] == "1" then
  for _, lv in ipairs(levels) do
    local P = lv[1]
    for _, id in ipairs(redis.call("ZRANGEBYSCORE", P .. "lease", lease_until, lease_until)) do
      local tk = P .. "t:" .. id
      if redis.call("HGET", tk, "uq_token") == token then
        local v = redis.call("HMGET", tk, "msg", "uq_enqueued", "pending_since")
        emit(lv[2], id, v)
      end
    end
  end
end
take()
if n < max_n and fresh then
  maintain()
  take()
end
out[1] = n
if n == 0 then
  -- When should an idle consumer look again? The earliest scheduled/retry/lease score.
  local best, best_s = nil, false
  for _, lv in ipairs(levels) do
    for _, src in ipairs({"scheduled", "retry", "lease"}) do
      local z = redis.call("ZRANGE", lv[1] .. src, 0, 0, "WITHSCORES")
      if z[2] and (best == nil or tonumber(z[2]) < best) then
        best, best_s = tonumber(z[2]), z[2]
      end
    end
  end
  out[2] = best_s
end
return out
""")

ACK = Script("ack", allow_oom=True, source=_COUNT + r"""
-- KEYS: 1 task hash
-- ARGV: 1 queue prefix, 2 id, 3 token, 4 UTC date, 5 stats expiry, 6 retention (0 = none),
--       7 completed-set score, 8 completed msg, 9 unique lock key ("" = none)
local P, id, tk = ARGV[1], ARGV[2], KEYS[1]
if redis.call("HGET", tk, "uq_token") ~= ARGV[3] then return redis.error_reply("NOT LEASED") end
-- LREM from the tail (count -1): the oldest deliveries sit there, so the scan stops early
-- (an id is never in active twice).
if redis.call("LREM", P .. "active", -1, id) == 0 then return redis.error_reply("NOT LEASED") end
redis.call("ZREM", P .. "lease", id)
if ARGV[6] ~= "0" then
  redis.call("ZADD", P .. "completed", math.floor(tonumber(ARGV[7])), id)  -- whole seconds
  redis.call("HSET", tk, "msg", ARGV[8], "state", "completed")
  redis.call("HDEL", tk, "uq_token")
else
  redis.call("DEL", tk)
end
uq_count(P, ARGV[4], ARGV[5], false)
if ARGV[9] ~= "" and redis.call("GET", ARGV[9]) == id then redis.call("DEL", ARGV[9]) end
return 1
""")

ACK_MANY = Script("ack_many", allow_oom=True, source=r"""
-- ack_many(): ACK's steps for several jobs of ONE asynq queue (its keys share the hash tag),
-- so a batch costs one script call and one round trip instead of one per job.
-- KEYS: the jobs' task hashes
-- ARGV: 1 queue prefix, 2 UTC date, 3 stats expiry, then 6 per job: id, token, retention
--       (0 = none), completed-set score, completed msg, unique lock key ("" = none)
-- Returns the ids no longer leased by that delivery (the others are acked).
local P = ARGV[1]
local ak, lk = P .. "active", P .. "lease"
local lost, done, gone, dead = {}, 0, {}, {}
-- One ZREM / DEL for many members or keys (in chunks: unpack() has a stack limit).
local function flush(cmd, key, items)
  for i = 1, #items, 1000 do
    if key then
      redis.call(cmd, key, unpack(items, i, math.min(i + 999, #items)))
    else
      redis.call(cmd, unpack(items, i, math.min(i + 999, #items)))
    end
  end
end
for i, tk in ipairs(KEYS) do
  local a = 4 + (i - 1) * 6
  local id = ARGV[a]
  -- LREM from the tail (count -1): the oldest deliveries sit there, so it stops early.
  if redis.call("HGET", tk, "uq_token") ~= ARGV[a + 1]
      or redis.call("LREM", ak, -1, id) == 0 then
    lost[#lost + 1] = id
  else
    gone[#gone + 1] = id
    if ARGV[a + 2] ~= "0" then
      redis.call("ZADD", P .. "completed", math.floor(tonumber(ARGV[a + 3])), id)
      redis.call("HSET", tk, "msg", ARGV[a + 4], "state", "completed")
      redis.call("HDEL", tk, "uq_token")
    else
      dead[#dead + 1] = tk
    end
    local uk = ARGV[a + 5]
    if uk ~= "" and redis.call("GET", uk) == id then redis.call("DEL", uk) end
    done = done + 1
  end
end
flush("ZREM", lk, gone)
flush("DEL", nil, dead)
if done > 0 then
  -- asynq's counters (see uq_count), bumped once by the batch's size.
  local daily = P .. "processed:" .. ARGV[2]
  if redis.call("INCRBY", daily, done) == done then redis.call("EXPIREAT", daily, ARGV[3]) end
  redis.call("INCRBY", P .. "processed", done)
end
return lost
""")

NACK = Script("nack", allow_oom=True, source=_HELPERS + r"""
-- KEYS: 1 task hash, 2 wake list
-- ARGV: 1 queue prefix, 2 id, 3 token, 4 mode (pending|retry|archive|requeue), 5 new msg,
--       6 retry-at score, 7 now (s), 8 now (ns), 9 UTC date, 10 stats expiry,
--       11 archive cutoff, 12 wake cap
local P, id, tk, mode = ARGV[1], ARGV[2], KEYS[1], ARGV[4]
if redis.call("HGET", tk, "uq_token") ~= ARGV[3] then return redis.error_reply("NOT LEASED") end
if redis.call("LREM", P .. "active", 0, id) == 0 then return redis.error_reply("NOT LEASED") end
redis.call("ZREM", P .. "lease", id)
redis.call("HDEL", tk, "uq_token")
if mode == "archive" then
  uq_archive(P, id, ARGV[5], ARGV[7], ARGV[11])
elseif mode == "retry" then
  redis.call("ZADD", P .. "retry", math.ceil(tonumber(ARGV[6])), id)  -- whole seconds
  redis.call("HSET", tk, "msg", ARGV[5], "state", "retry")
else
  redis.call("RPUSH", P .. "pending", id)
  redis.call("HSET", tk, "state", "pending", "pending_since", ARGV[8])
  if mode == "pending" then redis.call("HSET", tk, "msg", ARGV[5]) end
end
if mode ~= "requeue" then uq_count(P, ARGV[9], ARGV[10], true) end
if mode ~= "archive" then uq_wake(KEYS[2], tonumber(ARGV[12])) end
return 1
""")

EXTEND = Script("extend", allow_oom=True, source=r"""
-- KEYS: 1 lease set
-- ARGV: 1 queue prefix, 2 new lease score, 3 "GT" (heartbeat: never shorten) or "", then
--       id, token pairs. Returns the ids whose lease is no longer ours.
local P, lk, lost = ARGV[1], KEYS[1], {}
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  if redis.call("HGET", P .. "t:" .. id, "uq_token") ~= token
      or not redis.call("ZSCORE", lk, id) then
    lost[#lost + 1] = id
  elseif ARGV[3] == "GT" then
    redis.call("ZADD", lk, "XX", "GT", ARGV[2], id)
  else
    redis.call("ZADD", lk, "XX", ARGV[2], id)
  end
end
return lost
""")

SIZE = Script("size", _LEVELS + r"""
-- KEYS: 1 levels set; ARGV: 1 queue name. Waiting = pending + scheduled + retry.
local total = 0
for _, lv in ipairs(uq_levels(KEYS[1], ARGV[1])) do
  local P = lv[1]
  total = total + redis.call("LLEN", P .. "pending") + redis.call("ZCARD", P .. "scheduled")
        + redis.call("ZCARD", P .. "retry")
end
return total
""")

PURGE = Script("purge", allow_oom=True, source=_LEVELS + r"""
-- KEYS: 1 levels set; ARGV: 1 queue name. Deletes waiting tasks, releasing their unique locks.
local total = 0
local function drop(P, id)
  local tk = P .. "t:" .. id
  local uk = redis.call("HGET", tk, "unique_key")
  if uk and uk ~= "" and redis.call("GET", uk) == id then redis.call("DEL", uk) end
  redis.call("DEL", tk)
  total = total + 1
end
for _, lv in ipairs(uq_levels(KEYS[1], ARGV[1])) do
  local P = lv[1]
  for _, id in ipairs(redis.call("LRANGE", P .. "pending", 0, -1)) do drop(P, id) end
  for _, src in ipairs({"scheduled", "retry"}) do
    for _, id in ipairs(redis.call("ZRANGE", P .. src, 0, -1)) do drop(P, id) end
  end
  redis.call("DEL", P .. "pending", P .. "scheduled", P .. "retry")
end
return total
""")

PEEK = Script("peek", _LEVELS + r"""
-- KEYS: 1 levels set; ARGV: 1 queue name, 2 now (s). Read-only.
-- Returns {level, id, msg, enqueued_at, pending_since} of the task dequeue would take next.
for _, lv in ipairs(uq_levels(KEYS[1], ARGV[1])) do
  local P = lv[1]
  local id = redis.call("LINDEX", P .. "pending", -1)
  if not id then
    for _, src in ipairs({"scheduled", "retry"}) do
      local due = redis.call("ZRANGEBYSCORE", P .. src, "-inf", ARGV[2], "LIMIT", 0, 1)
      if due[1] then id = due[1]; break end
    end
  end
  if id then
    local v = redis.call("HMGET", P .. "t:" .. id, "msg", "uq_enqueued", "pending_since")
    if v[1] then return {tostring(lv[2]), id, v[1], v[2], v[3]} end
  end
end
return false
""")

STATS = Script("stats", _LEVELS + r"""
-- KEYS: 1 levels set; ARGV: 1 queue name. Read-only; what asynq's inspector (currentStats)
-- reads, summed over the priority levels.
-- Returns {pending, active, scheduled, retry, archived, completed, paused levels,
--          oldest pending_since (ns, as stored) | false}.
local c = {0, 0, 0, 0, 0, 0, 0, false}
local best = nil
for _, lv in ipairs(uq_levels(KEYS[1], ARGV[1])) do
  local P = lv[1]
  c[1] = c[1] + redis.call("LLEN", P .. "pending")
  c[2] = c[2] + redis.call("LLEN", P .. "active")
  c[3] = c[3] + redis.call("ZCARD", P .. "scheduled")
  c[4] = c[4] + redis.call("ZCARD", P .. "retry")
  c[5] = c[5] + redis.call("ZCARD", P .. "archived")
  c[6] = c[6] + redis.call("ZCARD", P .. "completed")
  c[7] = c[7] + redis.call("EXISTS", P .. "paused")
  -- asynq's latency: pending_since of the task dequeue takes next (the list's tail).
  local id = redis.call("LINDEX", P .. "pending", -1)
  if id then
    local v = redis.call("HMGET", P .. "t:" .. id, "pending_since", "uq_enqueued")
    local s = v[1] or v[2]
    local n = s and tonumber(s)
    if n and (best == nil or n < best) then best, c[8] = n, s end
  end
end
return c
""")

UNTAKE = Script("untake", allow_oom=True, source=_LEVELS + r"""
-- KEYS: 1 levels set, 2 wake list
-- ARGV: 1 queue name, 2 lease score of a dequeue whose reply was lost, 3 its token,
--       4 now (ns), 5 wake cap
-- Gives back what that dequeue took, as asynq's shutdown requeue does (no retry counted), so
-- a reply cut by the network does not leave jobs in active until their lease lapses.
local n = 0
for _, lv in ipairs(uq_levels(KEYS[1], ARGV[1])) do
  local P = lv[1]
  for _, id in ipairs(redis.call("ZRANGEBYSCORE", P .. "lease", ARGV[2], ARGV[2])) do
    local tk = P .. "t:" .. id
    if redis.call("HGET", tk, "uq_token") == ARGV[3] then
      redis.call("ZREM", P .. "lease", id)
      redis.call("LREM", P .. "active", 0, id)
      redis.call("HDEL", tk, "uq_token")
      redis.call("RPUSH", P .. "pending", id)
      redis.call("HSET", tk, "state", "pending", "pending_since", ARGV[4])
      n = n + 1
    end
  end
end
if n > 0 then
  if redis.call("LLEN", KEYS[2]) < tonumber(ARGV[5]) then redis.call("LPUSH", KEYS[2], "1") end
end
return n
""")

ALL = (ENQUEUE, DEQUEUE, ACK, ACK_MANY, NACK, EXTEND, SIZE, PURGE, PEEK, STATS, UNTAKE)
