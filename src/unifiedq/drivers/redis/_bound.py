"""An atomic bound for redis:// queues: count check and push in one Lua script.

:class:`~unifiedq.BoundedQueue` over a ``redis://`` queue sends its enqueues through
:func:`bounded` instead of the driver's own enqueue script: one script counts the queue's jobs
(every priority level: pending + scheduled + retry + active, i.e. waiting, delayed and leased,
as ``memory://`` counts them) and, only if the whole batch fits, runs the driver's enqueue
script body once per job. Producers in any number of processes therefore cannot overshoot
``maxsize``; an enqueue that does not fit changes nothing and is reported as ``QueueFull``.

The enqueue script is reused as it is (whatever the driver builds for a job: headers, unique
locks, deadlines), wrapped as a Lua function of its KEYS/ARGV, so the bound never drifts from
the driver's enqueue. Keys: a queue's levels are separate asynq queues (``{q}``, ``{q:p1}``...),
so a bound across priority levels reads several hash slots; on a standalone Redis (or a
Sentinel master) that is fine, on a Cluster it would be CROSSSLOT. There (``bounded(...,
cluster=True)``) the script counts the base asynq queue only, every key of which is in the
``{q}`` slot the job is pushed to, and first checks, in that same slot and script, that the
queue's levels set is empty (no priority level was ever used): the count then is the whole
queue, so the bound stays exact. A queue with levels gets ``LEVELS`` back (the client raises
``UnsupportedOperation``), never a bound that silently misses jobs; a bounded enqueue with a
priority is refused before any I/O.
"""

from __future__ import annotations

import re
from typing import Any

from ..._errors import UnsupportedOperation
from . import _scripts

__all__ = ["FULL", "LEVELS", "bounded", "is_redis", "levels_refused"]

#: The script's reply when the batch does not fit: ``{FULL, jobs held now}``.
FULL = -2
#: The cluster script's reply when the queue has priority levels: ``{LEVELS, levels}``.
LEVELS = -3

_CACHE: dict[str, _scripts.Script] = {}


def _as_function(source: str) -> str:
    if source.startswith("#!"):
        source = source.split("\n", 1)[1]
    body = re.sub(r"\bKEYS\b", "K", source)
    body = re.sub(r"\bARGV\b", "A", body)
    return "local function uq_one(K, A)\n" + body + "\nend\n"


# How many jobs the queue holds: every level (one server), or the base asynq queue of a
# cluster queue without levels (its levels set, in the same slot, says there are none).
_COUNT_LEVELS = r"""
  for _, lv in ipairs(uq_levels(KEYS[1], ARGV[2])) do
    local P = lv[1]
    held = held + redis.call("LLEN", P .. "pending") + redis.call("LLEN", P .. "active")
      + redis.call("ZCARD", P .. "scheduled") + redis.call("ZCARD", P .. "retry")
  end
"""
_COUNT_BASE = r"""
  local levels = redis.call("SCARD", KEYS[1])
  if levels > 0 then return {""" + str(LEVELS) + r""", levels} end
  local P = "asynq:{" .. ARGV[2] .. "}:"
  held = redis.call("LLEN", P .. "pending") + redis.call("LLEN", P .. "active")
    + redis.call("ZCARD", P .. "scheduled") + redis.call("ZCARD", P .. "retry")
"""


def bounded(inner: _scripts.Script, cluster: bool = False) -> _scripts.Script:
    """The bounded batch variant of the enqueue script ``inner`` (built once per script).

    ``cluster``: the one-slot form (see the module docstring): it counts the base asynq
    queue and replies ``{LEVELS, n}`` when the queue has priority levels.
    """
    key = inner.sha + ("c" if cluster else "")
    got = _CACHE.get(key)
    if got is not None:
        return got
    src = inner.legacy.source if inner.legacy is not None else inner.source
    name = f"bounded_{'cluster_' if cluster else ''}{inner.name}"
    script = _scripts.Script(name, _scripts._LEVELS + _as_function(src) + r"""
-- KEYS: 1 levels set, then every job's own KEYS in turn
-- ARGV: 1 maxsize, 2 queue name, 3 jobs, then per job: #keys, #args, its ARGV...
-- Returns {FULL, held} when the batch does not fit, else each job's enqueue reply.
local maxsize, n = tonumber(ARGV[1]), tonumber(ARGV[3])
local jobs, ki, ai = {}, 2, 4
for j = 1, n do
  local nk, na = tonumber(ARGV[ai]), tonumber(ARGV[ai + 1])
  ai = ai + 2
  local k, a = {}, {}
  for i = 1, nk do k[i] = KEYS[ki]; ki = ki + 1 end
  for i = 1, na do a[i] = ARGV[ai]; ai = ai + 1 end
  jobs[j] = {k, a}
end
-- A resend after a lost reply finds its first job's task hash: it already passed the bound.
if redis.call("EXISTS", jobs[1][1][1]) == 0 then
  local held = 0
""" + (_COUNT_BASE if cluster else _COUNT_LEVELS) + r"""
  if held + n > maxsize then return {""" + str(FULL) + r""", held} end
end
local out = {}
for j = 1, n do out[j] = uq_one(jobs[j][1], jobs[j][2]) end
return out
""")
    _CACHE[key] = script
    return script


def is_redis(q: object) -> bool:
    """Whether ``q`` is a redis:// handle (any URL scheme) that can take the atomic bound.

    On a Redis Cluster the bound is the one-slot form: priorities are refused (see
    :func:`levels_refused`).
    """
    return getattr(q, "driver", None) == "redis" and hasattr(q, "_core") \
        and hasattr(q, "_send")


def levels_refused(qname: str, what: str) -> UnsupportedOperation:
    """The error of a bounded priority enqueue, or a bounded queue with levels, on a cluster."""
    return UnsupportedOperation(
        f"bounded priority queues are not atomic on Redis Cluster: {what} (queue {qname!r}; "
        f"each priority level is an asynq queue in a hash slot of its own, and one script "
        f"cannot count them all). Bound a queue without priorities (one bounded queue per "
        f"priority, e.g. ?queue={qname}-high), or use redis:// or redis+sentinel:// (see "
        f"docs/drivers/redis.md, 'Redis Cluster')")


def __getattr__(name: str) -> Any:
    # The two faces of the bound's I/O: ``BoundedQueue``'s source names the asyncio one and
    # its generated twin the blocking one, both imported from here.
    if name == "AsyncRedisBound":
        from ._async.bound import AsyncRedisBound
        return AsyncRedisBound
    if name == "SyncRedisBound":
        from ._sync.bound import SyncRedisBound
        return SyncRedisBound
    raise AttributeError(name)


def batch_call(script: _scripts.Script, levels_key: str, qname: str, maxsize: int,
               calls: list[list[Any]]) -> tuple[_scripts.Script, list[Any], list[Any]]:
    """One bounded call from the driver's per-job ``EVALSHA sha nkeys keys... args...`` lists."""
    keys: list[Any] = [levels_key]
    args: list[Any] = [maxsize, qname, len(calls)]
    for c in calls:
        nk = int(c[2])
        k, a = c[3:3 + nk], c[3 + nk:]
        keys += k
        args += [nk, len(a), *a]
    return script, keys, args
