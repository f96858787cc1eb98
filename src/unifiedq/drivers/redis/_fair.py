"""Server-side fair scheduling over asynq queues: one Lua script picks the tenant and leases.

``FairQueue(..., scheduler="server")`` over ``redis://`` keeps the scheduler state in Redis, so
every consumer process shares one schedule: Start-time Fair Queuing (SFQ; P. Goyal, H. M. Vin,
H. Cheng, "Start-time Fair Queuing: A Scheduling Algorithm for Integrated Services Packet
Switching Networks", SIGCOMM 1996) over the backlogged tenants, with a bounded lag credit for
tenants coming back from idle (the lag-keeping placement of EEVDF: I. Stoica, H. Abdel-Wahab,
"Earliest Eligible Virtual Deadline First", TR 95-22, 1995):

* Each backlogged tenant's next job has a start tag ``S``; the tenant with the smallest ``S``
  is served, and its next tag is ``S + 1/weight``; the system virtual time ``V`` is the
  largest tag served so far. Backlogged tenants therefore share the dequeues in proportion to
  their weights (SFQ's fairness bound: within one job per unit weight of each other).
* A tenant that becomes backlogged starts at ``max(V - burst, F)``, where ``F`` is the tag its
  next job would have had when it left (remembered while ``F > V - burst``). A tenant that
  used less than its share while idle keeps that unused share, up to ``burst`` (``burst *
  weight`` jobs ahead of the backlogged tenants); one that left with no lag gets none. Over
  any period that includes the idle time, no tenant gets more than its weighted share.
  ``burst=0`` is plain SFQ.
* Tenants whose start tag is below ``V`` (credit holders) are served before the others, the
  one whose oldest waiting job is oldest first; ``V`` stands still while any exists, so each
  holder is served until its tag reaches ``V`` (its credit is used up) or it runs empty. A
  sparse tenant below its share is thus served almost as if it had priority, in arrival order
  with the other sparse ones, and its short bursts are not spread over rounds: in ``SFQ`` order
  (and in DRR's) the light tenants' jobs alternated with the bursting tenant's and with each
  other's, which is what made them wait (issue 19's p99 target;
  ``benchmarks/fair_latency_replay.py`` replays the arrivals in simulated time).

Keys, all under one hash tag (``<template>`` is the sub-queue name template, ``jobs.{tenant}``
-> ``jobs.*``, so they share one Redis Cluster slot):

* ``uq:fair:{<template>}:sfq`` (zset): backlogged tenants at or past ``V``, scored by their
  next start tag.
* ``uq:fair:{<template>}:ahead`` (zset): backlogged credit holders, scored by the enqueue time
  (``pending_since``, s) of their oldest waiting job on the base priority level.
* ``uq:fair:{<template>}:tags`` (hash): per backlogged tenant ``"base n weight"``: its tag is
  ``base + n / weight`` computed afresh each time (so equal tags compare equal: no rounding
  drift between tenants of different weights); a weight change rebases it. A tenant is
  backlogged iff it has a field here (a mark is one HEXISTS when it is).
* ``uq:fair:{<template>}:lag`` (zset): tenants that left the backlog with lag still to keep,
  scored by ``F``; members at or below ``V - burst`` are trimmed (they would start there anyway).
* ``uq:fair:{<template>}:vtime`` (hash): ``v`` = ``V``.
* ``uq:fair:{<template>}:parked`` (zset): tenants with no waiting job but with delayed,
  retrying or leased ones, scored by when to look again (the earliest due/lease-expiry time),
  so a lease lost by a killed consumer is recovered, and a delayed job run, without anybody
  polling idle tenants.
* ``uq:fair:{<template>}:weights`` (hash): per-tenant weights shared by every process.
* ``uq:fair:{<template>}:wake`` (list): wake-up tokens, one per marked job (at most 64), that
  consumers with nothing to take block on (``BLPOP``), so an idle consumer in any process
  takes a new job at once instead of at its next poll.

(Before SFQ the schedule was a DRR ring: ``:ring`` list and ``:deficit`` hash. Those keys are
no longer read; ``purge`` deletes them if an older version left them.)

The script then leases from the chosen tenant's asynq queue, whose keys live under that
queue's own ``{<queue>}`` tag, built inside Lua as the driver's dequeue script does for
priority levels: the scheduling decision is one slot, the lease another, so the script as a
whole runs on a standalone Redis (or a Sentinel master), not across Cluster slots.

A producer marks its tenant after each enqueue (``MARK``: one HEXISTS, and the placement when
not backlogged); the script removes a tenant found with nothing waiting (parking it if something
is delayed or leased). Because a mark always follows its push and a removal is atomic with the
emptiness check, no backlogged tenant is ever left out: a dequeue costs O(log backlogged)
whatever the number of known tenants.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from . import _scripts

__all__ = ["FAIR_DEQUEUE", "MARK", "FairKeys"]


def _wrap_dequeue() -> str:
    """The driver's dequeue script as a Lua function of (queue name, levels key, stamp key)."""
    src = _scripts.DEQUEUE.legacy.source if _scripts.DEQUEUE.legacy else _scripts.DEQUEUE.source
    helpers = _scripts._HELPERS + _scripts._LEVELS
    assert src.startswith(helpers)
    body = src[len(helpers):]
    body = body.replace("KEYS[1]", "UQ_K1").replace("KEYS[2]", "UQ_K2")
    body = re.sub(r"ARGV\[1\](?!\d)", "UQ_NAME", body)
    body = re.sub(r"ARGV\[6\](?!\d)", "UQ_MAX", body)
    assert "KEYS[" not in body
    return (helpers + "local function uq_take_from(UQ_NAME, UQ_K1, UQ_K2, UQ_MAX)\n" + body
            + "\nend\n")


# Shared by both scripts: placing a tenant that becomes backlogged, and its head's age.
# vtime is a hash: v = V.
_JOIN = r"""
local function uq_weight(weights, t, dw)
  local w = tonumber(redis.call("HGET", weights, t)) or dw
  if w <= 0 then w = dw end
  return w
end
local function uq_fmt(x) return string.format("%.17g", x) end
-- When the tenant's oldest waiting job was enqueued (s): the base level's pending head; the
-- time now if none there (a job of another priority level): it orders credit holders only.
local function uq_head_age(pre, t, suf, now)
  local P = "asynq:{" .. pre .. t .. suf .. "}:"
  local id = redis.call("LINDEX", P .. "pending", -1)
  if id then
    local since = tonumber(redis.call("HGET", P .. "t:" .. id, "pending_since"))
    if since then return since / 1e9 end
  end
  return now
end
-- Place t (if not backlogged yet) at start tag max(V - burst, F): behind V it holds credit
-- and waits in `ahead` by its head's age; otherwise in `sfq` by its tag.
local function uq_join(sfq, ahead, tags, lag, weights, t, V, burst, dw, pre, suf, now)
  if redis.call("HEXISTS", tags, t) == 1 then return end
  local base = V - burst
  local f = tonumber(redis.call("ZSCORE", lag, t))
  if f then
    redis.call("ZREM", lag, t)
    if f > base then base = f end
  end
  local w = uq_weight(weights, t, dw)
  redis.call("HSET", tags, t, uq_fmt(base) .. " 0 " .. uq_fmt(w))
  if base < V then
    redis.call("ZADD", ahead, uq_fmt(uq_head_age(pre, t, suf, now)), t)
  else
    redis.call("ZADD", sfq, uq_fmt(base), t)
  end
end
"""

MARK = _scripts.Script("fair_mark", _JOIN + r"""
-- KEYS: 1 sfq, 2 ahead, 3 tags, 4 lag, 5 vtime, 6 weights, 7 wake.
-- ARGV: 1 default weight, 2 burst, 3 queue-name prefix, 4 suffix, 5 now (s),
--       6 jobs pushed (wake-up tokens), 7.. tenants to mark backlogged.
-- A tenant already backlogged keeps its place; one that was not starts at max(V - burst, F).
local V = tonumber(redis.call("HGET", KEYS[5], "v")) or 0
local dw, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5])
for i = 7, #ARGV do
  uq_join(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6], ARGV[i], V, burst, dw, ARGV[3],
          ARGV[4], now)
end
-- One token per job for consumers blocked on the wake list (BLPOP), capped: with nobody
-- waiting, tokens pile up to the cap and cost a later waiter a few early wake-ups only.
local n = math.min(tonumber(ARGV[6]) or 1, 64 - redis.call("LLEN", KEYS[7]))
for _ = 1, n do redis.call("LPUSH", KEYS[7], "1") end
return 1
""")

FAIR_DEQUEUE = _scripts.Script("fair_dequeue", allow_oom=True,
                               source=_wrap_dequeue() + _JOIN + r"""
-- KEYS: 1 sfq, 2 ahead, 3 tags, 4 lag, 5 vtime, 6 parked, 7 weights
-- ARGV: 1..12 as the dequeue script's (1 unused, 6 = jobs wanted), 13 queue-name prefix,
--       14 queue-name suffix, 15 default weight, 16 most tenants visited without a job,
--       17 burst
-- Returns {n, next_due | false, then per job: tenant, level, id, msg, enqueued, since}.
local sfq, ahead, tags, lag, vkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local parked, weights = KEYS[6], KEYS[7]
local pre, suf, dw = ARGV[13], ARGV[14], tonumber(ARGV[15])
local want, budget, now = tonumber(ARGV[6]), tonumber(ARGV[16]), tonumber(ARGV[2])
local burst = tonumber(ARGV[17])
local V = tonumber(redis.call("HGET", vkey, "v")) or 0
local V0 = V
-- Parked tenants whose delayed job fell due or whose lease ran out are backlogged again.
for _, t in ipairs(redis.call("ZRANGEBYSCORE", parked, "-inf", now, "LIMIT", 0, 100)) do
  redis.call("ZREM", parked, t)
  uq_join(sfq, ahead, tags, lag, weights, t, V, burst, dw, pre, suf, now)
end
local result = {0, false}
local got, misses = 0, 0
while got < want and misses < budget do
  -- Credit holders (start tag below V) first, oldest waiting job first; V stands still
  -- while any exists, so they are exactly the tenants behind their share. Then SFQ.
  local from = ahead
  local z = redis.call("ZRANGE", ahead, 0, 0)
  if not z[1] then
    from = sfq
    z = redis.call("ZRANGE", sfq, 0, 0)
    if not z[1] then break end
  end
  local t = z[1]
  local st = redis.call("HGET", tags, t) or ""
  local b, n, w = string.match(st, "^(%S+) (%S+) (%S+)$")
  local base, cnt, wt = tonumber(b) or V, tonumber(n) or 0, tonumber(w) or dw
  local S = base + cnt / wt
  local name = pre .. t .. suf
  local P = "asynq:{" .. name .. "}:"
  local out = uq_take_from(name, P .. "uq:levels", P .. "uq:maintained", 1)
  if out[1] > 0 then
    got = got + 1
    result[#result + 1] = t
    for i = 3, 7 do result[#result + 1] = out[i] end
    if S > V then V = S end
    local nw = uq_weight(weights, t, dw)
    if nw ~= wt then base, cnt, wt = base + cnt / wt, 0, nw end  -- rebase on a new weight
    cnt = cnt + 1
    redis.call("HSET", tags, t, uq_fmt(base) .. " " .. cnt .. " " .. uq_fmt(wt))
    local nS = base + cnt / wt
    if nS < V then
      redis.call("ZADD", ahead, uq_fmt(uq_head_age(pre, t, suf, now)), t)
    else
      if from == ahead then redis.call("ZREM", ahead, t) end
      redis.call("ZADD", sfq, uq_fmt(nS), t)
    end
  else
    -- Nothing waiting: out of the backlog; its next tag S is remembered while it still
    -- carries lag (S > V - burst), parked until its earliest delayed/retry/lease time if any.
    redis.call("ZREM", from, t)
    redis.call("HDEL", tags, t)
    if S > V - burst then redis.call("ZADD", lag, uq_fmt(S), t) end
    if out[2] then redis.call("ZADD", parked, out[2], t) end
    misses = misses + 1
  end
end
if V ~= V0 then
  redis.call("HSET", vkey, "v", uq_fmt(V))
  redis.call("ZREMRANGEBYSCORE", lag, "-inf", uq_fmt(V - burst))
end
result[1] = got
if got == 0 then
  local z = redis.call("ZRANGE", parked, 0, 0, "WITHSCORES")
  if z[2] then result[2] = z[2] end
end
return result
""")


class FairKeys:
    """Key names and call arguments of one fair template (no I/O).

    Args:
        qname_template: The sub-queue name with ``{tenant}``.
        default_weight: Weight of tenants with none in the weights hash.
        burst: Lag credit of a tenant that becomes backlogged, in rounds (virtual time): it
            may take up to ``burst * weight`` jobs ahead of the backlogged tenants if it
            left that much of its share unused (see the module docstring).
    """

    def __init__(self, qname_template: str, default_weight: float, burst: float = 4.0) -> None:
        pre, _, suf = qname_template.partition("{tenant}")
        self.prefix, self.suffix = pre, suf
        tag = qname_template.replace("{tenant}", "*")
        base = f"uq:fair:{{{tag}}}:"
        self.sfq, self.tags, self.lag = base + "sfq", base + "tags", base + "lag"
        self.ahead, self.wake = base + "ahead", base + "wake"
        self.vtime = base + "vtime"
        self.parked, self.weights = base + "parked", base + "weights"
        self.legacy = [base + "ring", base + "deficit"]  # the DRR ring's, before SFQ
        self.default_weight = default_weight
        self.burst = burst

    @property
    def keys(self) -> list[str]:
        """Every key of the scheduler state (for purge)."""
        return [*self.schedule, self.weights]

    @property
    def schedule(self) -> list[str]:
        """The keys of the schedule (not the weights): what a reset deletes."""
        return [self.sfq, self.ahead, self.tags, self.lag, self.vtime, self.parked, self.wake,
                *self.legacy]

    def mark_call(self, tenants: Sequence[str],
                  jobs: int = 1) -> tuple[Any, list[str], list[str]]:
        """The MARK call: ``tenants`` have ``jobs`` new jobs waiting.

        KEYS sfq, ahead, tags, lag, vtime, weights, wake; ARGV default weight, burst,
        queue-name prefix, suffix, now (s), jobs (wake-up tokens), tenants...
        """
        return (MARK, [self.sfq, self.ahead, self.tags, self.lag, self.vtime, self.weights,
                       self.wake],
                [repr(self.default_weight), repr(float(self.burst)), self.prefix, self.suffix,
                 repr(time.time()), str(jobs), *tenants])

    def dequeue_call(self, dequeue_args: list[Any], max_jobs: int,
                     budget: int = 1000) -> tuple[Any, list[str], list[Any]]:
        """The fair script call around a tenant handle's dequeue arguments."""
        args = list(dequeue_args)
        args[5] = max_jobs
        return (FAIR_DEQUEUE,
                [self.sfq, self.ahead, self.tags, self.lag, self.vtime, self.parked,
                 self.weights],
                [*args, self.prefix, self.suffix, repr(self.default_weight), budget,
                 repr(float(self.burst))])

    @staticmethod
    def split(reply: Sequence[Any]) -> tuple[dict[str, list[Any]], float | None]:
        """Group the taken jobs by tenant as dequeue-script replies; and the next due time."""
        n = int(reply[0])
        by: dict[str, list[Any]] = {}
        for i in range(n):
            t, *fields = reply[2 + 6 * i: 8 + 6 * i]
            tenant = t.decode() if isinstance(t, bytes) else str(t)
            sub = by.setdefault(tenant, [0, False])
            sub[0] += 1
            sub.extend(fields)
        return by, (float(reply[1]) if reply[1] else None)

    def weight_calls(self, weights: Mapping[str, float]) -> list[tuple[str, ...]]:
        if not weights:
            return []
        flat = [x for k, v in weights.items() for x in (k, repr(float(v)))]
        return [("HSET", self.weights, *flat)]
