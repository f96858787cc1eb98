"""The server fair scheduler on Redis Cluster: a pick on the scheduler's slot, then the lease.

``FairQueue(..., scheduler="server")`` over ``redis://`` runs one script that picks the tenant
and leases its job (``_fair``). On a cluster that script would touch two slots: the scheduler
state (``uq:fair:{<template>}:...``, one hash tag) and the tenant's asynq queue
(``asynq:{<queue>}:...``). Here the two steps are separate calls, and the schedule is still
made on the server, shared by every consumer process:

1. ``PICK`` (scheduler slot) chooses the next tenants by Start-time Fair Queuing with a
   bounded lag credit, the single-server script's rule (see ``_fair``): the backlogged tenant
   with the smallest start tag is served and its tag advances by ``1 / weight`` per job,
   *reserved* at the pick; a tenant that becomes backlogged starts at ``max(V - burst, F)``.
   Credit holders (start tag below ``V``, in ``ahead``) go first, as there; but ordered by
   when they joined (the marking client's clock) and each served until its credit is used
   up, not re-sorted by the age of its oldest waiting job after every job: that age lives in
   the tenant's queue, another slot here. It returns ``(tenant, jobs reserved, mark
   sequence)``.
2. The consumer leases up to that many jobs with the tenant's own queue handle (the driver's
   dequeue, on the tenant's slot: levels, lost replies and heartbeats as for any dequeue).
3. What came back short is *reported* with the next ``PICK`` (or alone): unserved
   reservations are given back (the tag moves back), and a tenant found with nothing waiting
   leaves the backlog, parked until its earliest delayed/retry/lease time, **only if no mark
   arrived since the pick** (``marks``: the sequence number of the tenant's last mark).

Keys (one hash tag, so one slot): ``sfq``, ``tags`` (a tenant is backlogged iff it has a
field), ``lag``, ``parked``, ``weights`` as in ``_fair``, ``ahead`` (credit holders, by when
they joined), ``vtime`` (a string: ``V``), and:

* ``marks`` (hash): tenant -> the ``seq`` value of its last mark or re-join. A report whose
  tenant was marked after the pick leaves it backlogged: a job pushed while a consumer was
  finding the tenant empty is never dropped from the schedule (the race a single script
  excluded by being atomic).
* ``seq`` (string): the counter those values come from (global, so never reused).
* ``intents`` (zset): tenant -> a Redis server time until which some producer may have
  pushed a job without having marked it yet. A producer renews its intent *before* a push
  when its own is older than half its length (the mark after each push renews it too, so a
  steady producer pays no extra call); an intent that runs out re-joins the tenant. A
  producer killed between its push and its mark therefore strands nothing: the job is
  scheduled at most ``intent_seconds`` later. An intent that runs out without a crash costs
  one probe of the tenant.

Guarantees: every tenant with a waiting job is backlogged, or will be within
``intent_seconds`` of a producer crash; shares of backlogged tenants follow the weights
exactly as the picks go (a pick is atomic on the scheduler slot), up to the jobs reserved but
not yet leased; a consumer killed between pick and lease loses its reservation (a share of
at most ``max_jobs`` jobs), never a job. Needs Redis >= 6.2 (``ZADD GT``); intents use the
Redis server clock (``TIME``), parked times the clients' clocks as the rest of the driver does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import _scripts

__all__ = ["INTENT", "MARK", "PICK", "ClusterFairKeys"]

# KEYS of every script: 1 sfq, 2 tags, 3 lag, 4 vtime, 5 parked, 6 weights, 7 marks, 8 seq,
# 9 intents, 10 ahead, 11 wake.
_COMMON = r"""
if redis.replicate_commands then redis.replicate_commands() end  -- TIME then writes (Redis 6)
local sfq, tags, lag, vkey, parked, weights = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  KEYS[6]
local marks, seqk, intents, ahead, wake = KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local function uq_now()
  local t = redis.call("TIME")
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function uq_weight(t, dw)
  local w = tonumber(redis.call("HGET", weights, t)) or dw
  if w <= 0 then w = dw end
  return w
end
local function uq_fmt(x) return string.format("%.17g", x) end
local function uq_tag(t, S, dw)
  local st = redis.call("HGET", tags, t) or ""
  local b, n, w = string.match(st, "^(%S+) (%S+) (%S+)$")
  return tonumber(b) or S, tonumber(n) or 0, tonumber(w) or dw
end
-- A tenant becomes backlogged: start at max(V - burst, F) (F: its remembered lag), as _fair;
-- behind V it holds credit and waits in `ahead`, by ``age`` (when its job came: the client's
-- clock at the mark; the tenant's queue is another slot, so not its head's enqueue time).
local function uq_join(t, V, burst, dw, age)
  if redis.call("HEXISTS", tags, t) == 1 then return end
  local base = V - burst
  local f = tonumber(redis.call("ZSCORE", lag, t))
  if f then
    redis.call("ZREM", lag, t)
    if f > base then base = f end
  end
  local w = uq_weight(t, dw)
  redis.call("HSET", tags, t, uq_fmt(base) .. " 0 " .. uq_fmt(w))
  if base < V then
    redis.call("ZADD", ahead, uq_fmt(age), t)
  else
    redis.call("ZADD", sfq, uq_fmt(base), t)
  end
end
-- Where t waits now that its start tag is S: `ahead` while below V (keeping its place there),
-- else `sfq` by S.
local function uq_place(t, S, V, age)
  if S < V then
    redis.call("ZREM", sfq, t)
    redis.call("ZADD", ahead, "NX", uq_fmt(age), t)
  else
    redis.call("ZREM", ahead, t)
    redis.call("ZADD", sfq, uq_fmt(S), t)
  end
end
-- Every mark or re-join gets a new sequence number: a report from an earlier pick is void.
local function uq_bump(t) redis.call("HSET", marks, t, redis.call("INCR", seqk)) end
"""

MARK = _scripts.Script("fair_cluster_mark", _COMMON + r"""
-- ARGV: 1 default weight, 2 burst, 3 intent seconds, 4 now (client clock, s),
--       5 jobs pushed (wake-up tokens), 6.. tenants with a job just pushed.
local V = tonumber(redis.call("GET", vkey)) or 0
local dw, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local until_ = uq_fmt(uq_now() + tonumber(ARGV[3]))
for i = 6, #ARGV do
  local t = ARGV[i]
  uq_bump(t)
  uq_join(t, V, burst, dw, now)
  redis.call("ZADD", intents, "GT", until_, t)  -- covers this producer's next push too
end
-- One token per job for consumers blocked on the wake list (BLPOP), capped as in _fair.
local n = math.min(tonumber(ARGV[5]), 64)
if n > 0 then
  local ones = {}
  for j = 1, n do ones[j] = "1" end
  redis.call("LPUSH", wake, unpack(ones))
  redis.call("LTRIM", wake, 0, 63)
end
return 1
""")

INTENT = _scripts.Script("fair_cluster_intent", _COMMON + r"""
-- ARGV: 1 intent seconds, 2.. tenants a job is about to be pushed for.
local until_ = uq_fmt(uq_now() + tonumber(ARGV[1]))
for i = 2, #ARGV do redis.call("ZADD", intents, "GT", until_, ARGV[i]) end
return 1
""")

PICK = _scripts.Script("fair_cluster_pick", allow_oom=True, source=_COMMON + r"""
-- ARGV: 1 now (client clock: parked times), 2 jobs wanted, 3 default weight, 4 burst,
--       5 reports, then per report: tenant, seq at its pick, jobs reserved but not
--       leased, "1" if nothing was waiting, next delayed/retry/lease time or "".
-- Returns {earliest parked time | false, then per picked tenant: tenant, jobs, seq}.
local now, want, dw, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local V = tonumber(redis.call("GET", vkey)) or 0
local V0 = V
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  local t, seq, unserved, empty, due = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]),
    ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  local S = nil
  if redis.call("HEXISTS", tags, t) == 1 then
    local base, cnt, wt = uq_tag(t, V, dw)
    if unserved > 0 then  -- give back what was reserved and not served
      cnt = math.max(0, cnt - unserved)
      redis.call("HSET", tags, t, uq_fmt(base) .. " " .. cnt .. " " .. uq_fmt(wt))
    end
    S = base + cnt / wt
    if unserved > 0 then uq_place(t, S, V, now) end
  end
  if empty == "1" and (redis.call("HGET", marks, t) or "0") == seq then
    if S then
      redis.call("ZREM", sfq, t)
      redis.call("ZREM", ahead, t)
      redis.call("HDEL", tags, t)
      if S > V - burst then redis.call("ZADD", lag, uq_fmt(S), t) end
    end
    if due ~= "" then redis.call("ZADD", parked, due, t) end
  end
end
-- Parked tenants whose time came, and tenants whose producer intent ran out, re-join.
for _, t in ipairs(redis.call("ZRANGEBYSCORE", parked, "-inf", now, "LIMIT", 0, 100)) do
  redis.call("ZREM", parked, t)
  uq_bump(t)
  uq_join(t, V, burst, dw, now)
end
for _, t in ipairs(redis.call("ZRANGEBYSCORE", intents, "-inf", uq_fmt(uq_now()),
                              "LIMIT", 0, 100)) do
  redis.call("ZREM", intents, t)
  uq_bump(t)
  uq_join(t, V, burst, dw, now)
end
local picks, order = {}, {}
for _ = 1, want do
  -- Credit holders (start tag below V) first, in the order they joined; V stands still
  -- while any exists, so each is served until its credit is used up. Then SFQ.
  local z = redis.call("ZRANGE", ahead, 0, 0)
  if not z[1] then
    z = redis.call("ZRANGE", sfq, 0, 0)
    if not z[1] then break end
  end
  local t = z[1]
  local base, cnt, wt = uq_tag(t, V, dw)
  local S = base + cnt / wt
  if S > V then V = S end
  local nw = uq_weight(t, dw)
  if nw ~= wt then base, cnt, wt = base + cnt / wt, 0, nw end  -- rebase on a new weight
  cnt = cnt + 1
  redis.call("HSET", tags, t, uq_fmt(base) .. " " .. cnt .. " " .. uq_fmt(wt))
  uq_place(t, base + cnt / wt, V, now)
  if not picks[t] then
    picks[t] = 0
    order[#order + 1] = t
  end
  picks[t] = picks[t] + 1
end
if V ~= V0 then
  redis.call("SET", vkey, uq_fmt(V))
  redis.call("ZREMRANGEBYSCORE", lag, "-inf", uq_fmt(V - burst))
end
local out = {false}
if #order == 0 then
  local z = redis.call("ZRANGE", parked, 0, 0, "WITHSCORES")
  if z[2] then out[1] = z[2] end
end
for _, t in ipairs(order) do
  out[#out + 1] = t
  out[#out + 1] = picks[t]
  out[#out + 1] = redis.call("HGET", marks, t) or "0"
end
return out
""")

#: One report of a short lease: tenant, seq at the pick, unserved, found empty, next due.
Report = tuple[str, str, int, bool, float | None]


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class ClusterFairKeys:
    """Key names and call arguments of one fair template on a cluster (no I/O).

    Args:
        qname_template: The sub-queue name with ``{tenant}``.
        default_weight: Weight of tenants with none in the weights hash.
        burst: Lag credit of a tenant that becomes backlogged, in virtual time (``_fair``).
        intent_seconds: How long a producer's intent covers its pushes (Redis server time).
    """

    def __init__(self, qname_template: str, default_weight: float, burst: float = 4.0,
                 intent_seconds: float = 22.0) -> None:
        tag = qname_template.replace("{tenant}", "*")
        base = f"uq:fair:{{{tag}}}:"
        names = ("sfq", "tags", "lag", "vtime", "parked", "weights", "marks", "seq", "intents",
                 "ahead", "wake")
        self.all = [base + n for n in names]
        self.weights, self.wake = base + "weights", base + "wake"
        self.default_weight = default_weight
        self.burst = burst
        self.intent_seconds = intent_seconds

    @property
    def schedule(self) -> list[str]:
        """The keys of the schedule (not the weights): what a reset deletes."""
        return [k for k in self.all if k != self.weights]

    def mark_call(self, tenants: Sequence[str], now: float,
                  jobs: int = 1) -> tuple[Any, list[str], list[str]]:
        """``tenants`` have a job just pushed (at ``now``, client clock).

        They become backlogged (if not yet), get a new mark sequence, and their intents are
        renewed; ``jobs`` wake-up tokens go to the wake list blocked consumers wait on.
        """
        return (MARK, self.all, [repr(self.default_weight), repr(float(self.burst)),
                                 repr(self.intent_seconds), repr(now), str(jobs), *tenants])

    def intent_call(self, tenants: Sequence[str]) -> tuple[Any, list[str], list[str]]:
        """A producer is about to push for ``tenants``."""
        return INTENT, self.all, [repr(self.intent_seconds), *tenants]

    def pick_call(self, want: int, reports: Sequence[Report],
                  now: float) -> tuple[Any, list[str], list[Any]]:
        """Reserve up to ``want`` jobs in fair order, after applying ``reports``."""
        args: list[Any] = [repr(now), want, repr(self.default_weight),
                           repr(float(self.burst)), len(reports)]
        for t, seq, unserved, empty, due in reports:
            args += [t, seq, unserved, "1" if empty else "0", "" if due is None else repr(due)]
        return PICK, self.all, args

    @staticmethod
    def parse_pick(reply: Sequence[Any]) -> tuple[float | None, list[tuple[str, int, str]]]:
        """The earliest parked time (when nothing was picked) and ``(tenant, jobs, seq)``s."""
        due = float(reply[0]) if reply[0] else None
        picks = [(_text(reply[i]), int(reply[i + 1]), _text(reply[i + 2]))
                 for i in range(1, len(reply) - 2, 3)]
        return due, picks

    def weight_calls(self, weights: Mapping[str, float]) -> list[tuple[str, ...]]:
        """HSET of weights into the shared weights hash."""
        if not weights:
            return []
        flat = [x for k, v in weights.items() for x in (k, repr(float(v)))]
        return [("HSET", self.weights, *flat)]


def __getattr__(name: str) -> Any:
    # The two faces of the scheduler's I/O, for ``FairQueue``'s source and its generated twin.
    if name == "AsyncClusterFairSched":
        from ._async.fair_cluster import AsyncClusterFairSched
        return AsyncClusterFairSched
    if name == "SyncClusterFairSched":
        from ._sync.fair_cluster import SyncClusterFairSched
        return SyncClusterFairSched
    raise AttributeError(name)
