"""What the dashboard reads and does on the redis driver beyond the queue protocol.

asynq's key layout (``asynq:{queue}:...``, one asynq queue per priority level) keeps more than
``stats()`` returns: the ``processed``/``failed`` attempt counters, the archived set (asynq's
dead letters) and the ``asynq:queues`` registry. The scripts below read and change them the
way asynq's own Inspector does (``RunTask``/``DeleteTask`` on an archived task), so asynqmon
and Go consumers see the same state. They run through the open handle's own connection pool
and script loader (``_eval``), over every priority level the handle's queue has.
"""

from __future__ import annotations

import re
import time
from typing import Any

from .._base import QueueBase
from ..drivers.redis import _core, _proto, _scripts
from ._sources import DeadLetter

__all__ = ["counters", "dead_letters", "delete_dead", "is_redis", "matching_queues",
           "retry_dead"]

_COUNTERS = _scripts.Script("uq_dash_counters", _scripts._LEVELS + r"""
-- KEYS: 1 levels set; ARGV: 1 queue name. Read-only: asynq's processed/failed totals.
local p, f = 0, 0
for _, lv in ipairs(uq_levels(KEYS[1], ARGV[1])) do
  p = p + tonumber(redis.call("GET", lv[1] .. "processed") or "0")
  f = f + tonumber(redis.call("GET", lv[1] .. "failed") or "0")
end
return {p, f}
""")

_DEAD = _scripts.Script("uq_dash_dead", _scripts._LEVELS + r"""
-- KEYS: 1 levels set; ARGV: 1 queue name, 2 limit. Read-only: the newest archived tasks of
-- every level, {id, score, msg} each (the caller sorts across levels).
local out, lim = {}, tonumber(ARGV[2])
for _, lv in ipairs(uq_levels(KEYS[1], ARGV[1])) do
  local P = lv[1]
  local got = redis.call("ZREVRANGE", P .. "archived", 0, lim - 1, "WITHSCORES")
  for i = 1, #got, 2 do
    out[#out + 1] = got[i]
    out[#out + 1] = got[i + 1]
    out[#out + 1] = redis.call("HGET", P .. "t:" .. got[i], "msg") or ""
  end
end
return out
""")

_RETRY = _scripts.Script("uq_dash_retry", _scripts._LEVELS + r"""
-- KEYS: 1 levels set, 2 wake list; ARGV: 1 queue name, 2 id, 3 now (ns), 4 wake cap.
-- asynq's RunTask on an archived task: archived -> pending (retried count kept), and a
-- waiting consumer woken. Returns 1, or 0 when the id is not archived (any more).
for _, lv in ipairs(uq_levels(KEYS[1], ARGV[1])) do
  local P = lv[1]
  if redis.call("ZREM", P .. "archived", ARGV[2]) == 1 then
    redis.call("LPUSH", P .. "pending", ARGV[2])
    redis.call("HSET", P .. "t:" .. ARGV[2], "state", "pending", "pending_since", ARGV[3])
    if redis.call("LLEN", KEYS[2]) < tonumber(ARGV[4]) then redis.call("LPUSH", KEYS[2], "1") end
    return 1
  end
end
return 0
""")

_DELETE = _scripts.Script("uq_dash_delete", _scripts._LEVELS + r"""
-- KEYS: 1 levels set; ARGV: 1 queue name, 2 id. asynq's DeleteTask on an archived task:
-- the set entry, the task hash, and its unique lock if the task still holds it.
-- Returns 1, or 0 when the id is not archived (any more).
for _, lv in ipairs(uq_levels(KEYS[1], ARGV[1])) do
  local P = lv[1]
  if redis.call("ZREM", P .. "archived", ARGV[2]) == 1 then
    local tk = P .. "t:" .. ARGV[2]
    local uk = redis.call("HGET", tk, "unique_key")
    if uk and redis.call("GET", uk) == ARGV[2] then redis.call("DEL", uk) end
    redis.call("DEL", tk)
    return 1
  end
end
return 0
""")


def is_redis(q: QueueBase) -> bool:
    """True for an open blocking handle of the redis driver (not a bridge)."""
    return q.driver == "redis" and hasattr(q, "_eval") and hasattr(q, "_core")


def _run(q: Any, script: _scripts.Script, keys: list[str], args: list[str]) -> Any:
    # The handle's own pool, deadline and NOSCRIPT reload; errors translated as its verbs do.
    with _core.translating():
        return q._eval((script, keys, args), q._deadline())


def _each(q: Any, script: _scripts.Script, keys: list[str], args: list[str]) -> list[Any]:
    """The script's replies: one over every level, or one per level on a Redis Cluster.

    On a cluster a script may not touch two levels' slots, so it runs once per level.
    """
    if getattr(q._core, "cluster", None) is None:
        return [_run(q, script, keys, args)]
    return [r for _, r in q._per_level((script, keys, args), q._deadline())]


def counters(q: QueueBase) -> dict[str, int]:
    """The cumulative asynq ``processed`` and ``failed`` attempt counts of ``q``'s queue."""
    c: Any = q
    got = _each(c, _COUNTERS, [c._core.levels_key], [q.name])
    return {"processed": sum(int(r[0]) for r in got), "failed": sum(int(r[1]) for r in got)}


def _text(raw: bytes, n: int = 120) -> str:
    return raw[:n].decode("utf-8", "replace") + ("…" if len(raw) > n else "")


def dead_letters(q: QueueBase, limit: int) -> list[DeadLetter]:
    """The newest ``limit`` archived tasks of ``q``'s queue over its levels, newest first."""
    c: Any = q
    flat = [x for r in _each(c, _DEAD, [c._core.levels_key], [q.name, str(limit)]) for x in r]
    out: list[DeadLetter] = []
    for i in range(0, len(flat), 3):
        jid = flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i])
        raw = flat[i + 2]
        try:
            msg = _proto.decode(raw) if raw else None
        except _proto.DecodeError:
            msg = None
        payload = msg.payload if msg is not None else b""
        out.append(DeadLetter(
            id=jid, type=(msg.type or None) if msg else None,
            error=(msg.error_msg or None) if msg else None,
            attempts=msg.retried + 1 if msg else None, died_at=float(flat[i + 1]),
            size=len(payload), preview=_text(payload)))
    out.sort(key=lambda d: d.died_at or 0.0, reverse=True)
    return out[:limit]


def retry_dead(q: QueueBase, job_id: str) -> bool:
    """Move archived task ``job_id`` back to pending; False when it is not archived."""
    c: Any = q
    got = _each(c, _RETRY, [c._core.levels_key, c._core.wake_key],
                [q.name, job_id, str(time.time_ns()), str(_core._WAKE_CAP)])
    return any(int(n) for n in got)


def delete_dead(q: QueueBase, job_id: str) -> bool:
    """Delete archived task ``job_id`` for good; False when it is not archived."""
    c: Any = q
    return any(int(n) for n in _each(c, _DELETE, [c._core.levels_key], [q.name, job_id]))


def matching_queues(q: QueueBase, pattern: re.Pattern[str]) -> list[str]:
    """Tenants: group 1 of ``pattern`` over the asynq queue names registered on the server."""
    c: Any = q
    names = c._commands([("SMEMBERS", _core.ALL_QUEUES)])[0]
    found = set()
    for raw in names:
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        m = pattern.match(name)
        if m is not None and ":p" not in name:  # a priority level's queue is not a tenant
            found.add(m.group(1))
    return sorted(found)
