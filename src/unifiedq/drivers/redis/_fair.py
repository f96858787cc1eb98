"""Server-side fair scheduling over asynq queues: one Lua script picks the tenant and leases.

``FairQueue(..., scheduler="server")`` over ``redis://`` keeps the scheduler state in Redis, so
every consumer process shares one weighted deficit round robin (DRR):

* ``uq:fair:{<template>}:ring`` (list): the tenants believed backlogged, in DRR order; the
  head has the turn.
* ``uq:fair:{<template>}:deficit`` (hash): each ringed tenant's credit; a field exists iff the
  tenant is in the ring (so a mark is one HSETNX, and the ring holds no duplicates).
* ``uq:fair:{<template>}:parked`` (zset): tenants with no waiting job but with delayed,
  retrying or leased ones, scored by when to look again (the earliest due/lease-expiry time),
  so a lease lost by a killed consumer is recovered, and a delayed job run, without anybody
  polling idle tenants.
* ``uq:fair:{<template>}:weights`` (hash): per-tenant weights shared by every process.

``<template>`` is the sub-queue name template (``jobs.{tenant}`` -> ``jobs.*``), so the four keys
share one hash tag, i.e. one Redis Cluster slot. The script then leases from the chosen
tenant's asynq queue, whose keys live under that queue's own ``{<queue>}`` tag, built inside
Lua as the driver's dequeue script does for priority levels: the scheduling decision is one
slot, the lease another, so the script as a whole runs on a standalone Redis (or a Sentinel
master), not yet across Cluster slots (issue 19 item 1; a cluster version would split it into
a pick on the scheduler slot and a lease on the tenant's slot).

A producer marks its tenant after each enqueue (``MARK``: HSETNX + RPUSH, no-op when ringed);
the script removes a tenant found with nothing waiting (parking it if something is delayed or
leased). Because a mark always follows its push and a removal is atomic with the emptiness
check, no backlogged tenant is ever left out of the ring: a dequeue costs O(1) whatever the
number of known tenants.
"""

from __future__ import annotations

import re
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


MARK = _scripts.Script("fair_mark", r"""
-- KEYS: 1 ring, 2 deficits.  ARGV: tenants to mark backlogged.
-- A tenant already ringed (its deficit field exists) is left where it is. A tenant that was
-- empty joins at the head: it is served next, once, then rotates to the tail like any other
-- (RFC 8290's "new flows first"): a sparse tenant's job does not wait a whole round, and
-- tenants that stay backlogged never re-enter this way, so their shares are untouched.
for _, t in ipairs(ARGV) do
  if redis.call("HSETNX", KEYS[2], t, "0") == 1 then redis.call("LPUSH", KEYS[1], t) end
end
return 1
""")

FAIR_DEQUEUE = _scripts.Script("fair_dequeue", allow_oom=True, source=_wrap_dequeue() + r"""
-- KEYS: 1 ring, 2 deficits, 3 parked, 4 weights
-- ARGV: 1..12 as the dequeue script's (1 unused, 6 = jobs wanted), 13 queue-name prefix,
--       14 queue-name suffix, 15 default weight, 16 most tenants visited without a job
-- Returns {n, next_due | false, then per job: tenant, level, id, msg, enqueued, since}.
local ring, defs, parked, weights = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local pre, suf, dw = ARGV[13], ARGV[14], tonumber(ARGV[15])
local want, budget, now = tonumber(ARGV[6]), tonumber(ARGV[16]), tonumber(ARGV[2])
-- Parked tenants whose delayed job fell due or whose lease ran out rejoin the ring.
for _, t in ipairs(redis.call("ZRANGEBYSCORE", parked, "-inf", now, "LIMIT", 0, 100)) do
  redis.call("ZREM", parked, t)
  if redis.call("HSETNX", defs, t, "0") == 1 then redis.call("RPUSH", ring, t) end
end
local result = {0, false}
local got, misses = 0, 0
local function rotate() redis.call("RPUSH", ring, redis.call("LPOP", ring)) end
while got < want and misses < budget do
  local t = redis.call("LINDEX", ring, 0)
  if not t then break end
  local d = tonumber(redis.call("HGET", defs, t)) or 0
  if d < 1 then
    -- A new turn: credit the quantum (weights below 1 accumulate over rounds).
    d = d + (tonumber(redis.call("HGET", weights, t)) or dw)
  end
  if d < 1 then
    redis.call("HSET", defs, t, d)
    rotate()
    misses = misses + 1
  else
    local name = pre .. t .. suf
    local P = "asynq:{" .. name .. "}:"
    local out = uq_take_from(name, P .. "uq:levels", P .. "uq:maintained", 1)
    if out[1] > 0 then
      got = got + 1
      d = d - 1
      result[#result + 1] = t
      for i = 3, 7 do result[#result + 1] = out[i] end
      redis.call("HSET", defs, t, d)
      if d < 1 then rotate() end
    else
      -- Nothing waiting: out of the ring, its credit dropped (idle tenants save up nothing);
      -- parked until its earliest delayed/retry/lease time if it has any.
      redis.call("LPOP", ring)
      redis.call("HDEL", defs, t)
      if out[2] then redis.call("ZADD", parked, out[2], t) end
      misses = misses + 1
    end
  end
end
result[1] = got
if got == 0 then
  local z = redis.call("ZRANGE", parked, 0, 0, "WITHSCORES")
  if z[2] then result[2] = z[2] end
end
return result
""")


class FairKeys:
    """Key names and call arguments of one fair template (no I/O)."""

    def __init__(self, qname_template: str, default_weight: float) -> None:
        pre, _, suf = qname_template.partition("{tenant}")
        self.prefix, self.suffix = pre, suf
        tag = qname_template.replace("{tenant}", "*")
        base = f"uq:fair:{{{tag}}}:"
        self.ring, self.deficit = base + "ring", base + "deficit"
        self.parked, self.weights = base + "parked", base + "weights"
        self.default_weight = default_weight

    @property
    def keys(self) -> list[str]:
        """Every key of the scheduler state (for purge)."""
        return [self.ring, self.deficit, self.parked, self.weights]

    def mark_call(self, tenants: Sequence[str]) -> tuple[Any, list[str], list[str]]:
        return MARK, [self.ring, self.deficit], list(tenants)

    def dequeue_call(self, dequeue_args: list[Any], max_jobs: int,
                     budget: int = 1000) -> tuple[Any, list[str], list[Any]]:
        """The fair script call around a tenant handle's dequeue arguments."""
        args = list(dequeue_args)
        args[5] = max_jobs
        return (FAIR_DEQUEUE, [self.ring, self.deficit, self.parked, self.weights],
                [*args, self.prefix, self.suffix, repr(self.default_weight), budget])

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
