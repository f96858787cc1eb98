"""Job results on redis:// (RESULT), the way asynq keeps them; no I/O here.

asynq's ``ResultWriter`` writes the task hash field ``result``; with a ``Retention`` the
acked task stays in ``asynq:{q}:completed`` (score: its expiry, whole Unix seconds) until
asynq's janitor deletes it, and ``Inspector.GetTaskInfo(q, id).Result`` reads the field.
``complete()`` does all of that in ONE script together with the ack (so a result is never
visible for a task that was not acked, nor an ack made without its result), and deletes up
to 100 completed tasks past their retention, as the janitor does (a queue served only by
Python workers has no janitor).

A failed-for-good task is asynq's archived task; ``fail()`` archives it with the error text
as the message's ``error_msg`` (what asynqmon shows as the last error).

Waiting: ``complete()``/``fail()`` push a token to ``asynq:{q}:uq:done:<id>`` (it expires
with the result); a waiting ``result()`` pipelines ``BRPOPLPUSH`` of that list onto itself
(so every waiter sees the one token) with the read script, one round trip per wake-up. The
wait is capped at ``poll_interval`` so results written by Go asynq (which pushes no token)
are seen within that time.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from ... import results as _results
from . import _proto, _scripts
from ._core import Call, Core, Receipt

__all__ = ["COMPLETE", "FAIL", "READ", "complete_call", "fail_call", "outcome", "read_call",
           "wait_command"]

#: Completed tasks past their retention deleted by one ``complete()`` (asynq's janitor batch).
JANITOR_BATCH = 100

COMPLETE = _scripts.Script("complete", allow_oom=True, source=_scripts._COUNT + r"""
-- ACK's steps with retention, plus asynq's result field and the waiters' token.
-- KEYS: 1 task hash, 2 done-token list
-- ARGV: 1 queue prefix, 2 id, 3 token, 4 UTC date, 5 stats expiry, 6 completed-set score
--       (expiry, whole seconds), 7 completed msg, 8 unique lock key ("" = none), 9 result,
--       10 token ttl (s), 11 now (whole seconds), 12 janitor batch
local P, id, tk = ARGV[1], ARGV[2], KEYS[1]
if redis.call("HGET", tk, "uq_token") ~= ARGV[3] then return redis.error_reply("NOT LEASED") end
if redis.call("LREM", P .. "active", -1, id) == 0 then return redis.error_reply("NOT LEASED") end
redis.call("ZREM", P .. "lease", id)
-- asynq's janitor: completed tasks past their retention go first (never this one).
local ck = P .. "completed"
for _, old in ipairs(redis.call("ZRANGEBYSCORE", ck, "-inf", ARGV[11], "LIMIT", 0, ARGV[12])) do
  redis.call("DEL", P .. "t:" .. old)
  redis.call("ZREM", ck, old)
end
redis.call("ZADD", ck, ARGV[6], id)
redis.call("HSET", tk, "msg", ARGV[7], "state", "completed", "result", ARGV[9])
redis.call("HDEL", tk, "uq_token")
uq_count(P, ARGV[4], ARGV[5], false)
if ARGV[8] ~= "" and redis.call("GET", ARGV[8]) == id then redis.call("DEL", ARGV[8]) end
redis.call("RPUSH", KEYS[2], "1")
redis.call("EXPIRE", KEYS[2], ARGV[10])
return 1
""")

FAIL = _scripts.Script("fail", allow_oom=True, source=_scripts._HELPERS + r"""
-- NACK's archive branch, with the caller's error text, plus the waiters' token.
-- KEYS: 1 task hash, 2 done-token list
-- ARGV: 1 queue prefix, 2 id, 3 token, 4 archived msg, 5 now (s), 6 UTC date,
--       7 stats expiry, 8 archive cutoff, 9 token ttl (s)
local P, id, tk = ARGV[1], ARGV[2], KEYS[1]
if redis.call("HGET", tk, "uq_token") ~= ARGV[3] then return redis.error_reply("NOT LEASED") end
if redis.call("LREM", P .. "active", 0, id) == 0 then return redis.error_reply("NOT LEASED") end
redis.call("ZREM", P .. "lease", id)
redis.call("HDEL", tk, "uq_token")
uq_archive(P, id, ARGV[4], ARGV[5], ARGV[8])
uq_count(P, ARGV[6], ARGV[7], true)
redis.call("RPUSH", KEYS[2], "1")
redis.call("EXPIRE", KEYS[2], ARGV[9])
return 1
""")

READ = _scripts.Script("read_result", _scripts._LEVELS + r"""
-- KEYS: 1 levels set; ARGV: 1 queue name, 2 id, 3 now (s). Read-only.
-- Returns {"completed", result} (a completed task within its retention that has a result),
-- {"archived", msg}, or false (unknown, expired, not finished, or no result written).
for _, lv in ipairs(uq_levels(KEYS[1], ARGV[1])) do
  local P = lv[1]
  local v = redis.call("HMGET", P .. "t:" .. ARGV[2], "state", "result", "msg")
  if v[1] == "completed" then
    local exp = redis.call("ZSCORE", P .. "completed", ARGV[2])
    if v[2] and not (exp and tonumber(exp) <= tonumber(ARGV[3])) then
      return {"completed", v[2]}
    end
    return false
  elseif v[1] == "archived" then
    return {"archived", v[3]}
  elseif v[1] then
    return false
  end
end
return false
""")


def done_key(core: Core, job_id: str) -> str:
    """The token list a waiting ``result()`` blocks on (under the base queue's prefix)."""
    return f"{core.levels_key[:-len('uq:levels')]}uq:done:{job_id}"


def _retention(msg: _proto.TaskMessage, retention: float | None) -> int:
    # Whole seconds, as asynq's Retention; at least 1 so the task is kept at all.
    if retention is not None:
        return max(1, round(retention))
    return msg.retention or int(_results.DEFAULT_RETENTION)


def complete_call(core: Core, job_id: str, r: Receipt, result: bytes,
                  retention: float | None) -> Call:
    """The complete script call: ack, result field and completed set in one step."""
    msg = r.msg
    now = time.time()
    date, expire, _ = core._stats(now)
    keep = _retention(msg, retention)
    done_msg = _proto.encode(dataclasses.replace(msg, retention=keep, completed_at=int(now)))
    args: list[Any] = [r.prefix, msg.id, r.token, date, expire, int(now) + keep, done_msg,
                       msg.unique_key, result, keep, int(now), JANITOR_BATCH]
    return COMPLETE, [r.prefix + "t:" + msg.id, done_key(core, job_id)], args


def fail_call(core: Core, job_id: str, r: Receipt, error: str, retention: float | None) -> Call:
    """The fail script call: archive with ``error`` as the message's error_msg."""
    msg = r.msg
    now = time.time()
    date, expire, cutoff = core._stats(now)
    new = dataclasses.replace(msg, error_msg=error, last_failed_at=int(now))
    args: list[Any] = [r.prefix, msg.id, r.token, _proto.encode(new), repr(now), date, expire,
                       cutoff, _retention(msg, retention)]
    return FAIL, [r.prefix + "t:" + msg.id, done_key(core, job_id)], args


def read_call(core: Core, job_id: str) -> Call:
    """The read-only script call that looks for the job's outcome."""
    return READ, [core.levels_key], [core.qname, job_id, repr(time.time())]


def wait_command(core: Core, job_id: str, wait: float) -> tuple[str, ...]:
    """BRPOPLPUSH of the job's token list onto itself: wait for a token, leave it there."""
    key = done_key(core, job_id)
    return ("BRPOPLPUSH", key, key, f"{max(wait, 0.001):.3f}")


def outcome(core: Core, reply: Sequence[Any] | None) -> bytes | None:
    """The read script's reply as a stored outcome (``unifiedq.results``), or None."""
    if not reply:
        return None
    kind, data = reply[0], reply[1]
    if kind == b"completed":
        return _results.outcome(True, bytes(data))
    return _results.outcome(False, core._decode(bytes(data)).error_msg.encode())
