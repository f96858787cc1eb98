# unasync: the blocking twin, _sync/bound.py, is generated from this file.
"""The atomic bound of a redis:// queue handle (see ``unifiedq.drivers.redis._bound``).

It drives the handle's own plumbing (request checks, task encoding, publishing, the pooled
connection with its deadline and one retry), so a bounded enqueue differs from a plain one
only in the script it runs.
"""

from __future__ import annotations

import time
from typing import Any

from redis import exceptions as rexc

from ...._errors import ProtocolError
from ...._job import EnqueueRequest
from .. import _bound, _scripts
from .._core import pack, translating

__all__ = ["AsyncRedisBound"]


class AsyncRedisBound:
    """Enqueue through ``q`` only while its queue holds fewer than ``maxsize`` jobs."""

    def __init__(self, q: Any, maxsize: int) -> None:
        self.q = q
        self.maxsize = maxsize
        self._by_sha = {s.sha: s for s in vars(_scripts).values()
                        if isinstance(s, _scripts.Script)}

    async def enqueue(self, reqs: list[EnqueueRequest]) -> list[str] | None:
        """Enqueue every request or none; None when they do not fit under the bound.

        Raises:
            UnsupportedOperation: On a Redis Cluster, a job with a priority, or a queue whose
                priority levels are in use (the bound could not count them atomically).
        """
        q = self.q
        core = q._core
        cluster = core.cluster is not None
        if cluster and any(r.priority for r in reqs):
            raise _bound.levels_refused(core.qname, "enqueue(priority=...) under a bound")
        if reqs[0].headers:
            core.check_headers(reqs[0].headers)
        now = time.time_ns()
        calls: list[tuple[int, list[Any]]] = [core.enqueue_call(r, now) for r in reqs]
        inner = self._by_sha.get(str(calls[0][1][1]))
        if inner is None or any(c[1][1] != calls[0][1][1] for c in calls):
            raise ProtocolError("unknown or mixed enqueue scripts in one bounded batch")
        script = _bound.bounded(inner, cluster)
        _, keys, args = _bound.batch_call(script, core.levels_key, core.qname, self.maxsize,
                                          [c[1] for c in calls])
        deadline = q._deadline()
        # WAIT (min_replicas) rides on the connection that wrote, as on the plain enqueue.
        wait = core.wait_command()
        with translating():
            for level in {lv for lv, _ in calls}:
                await q._publish(level, deadline)
            data = pack(("EVALSHA", script.sha, len(keys), *keys, *args)) + wait
            for _ in range(2):
                replies, resent = await q._send(data, 1 + bool(wait), deadline)
                reply = replies[0]
                if not isinstance(reply, rexc.NoScriptError):
                    break
                await q._load(script, deadline)  # first use, or a flushed script cache
            if isinstance(reply, Exception):
                raise reply
        if reply and reply[0] == _bound.FULL:  # enqueue replies are 1/0/-1, never FULL
            return None
        if reply and reply[0] == _bound.LEVELS:
            raise _bound.levels_refused(core.qname, f"the queue has {reply[1]} priority "
                                        f"level(s) in use besides the base one")
        if wait:
            core.check_replicated(replies[1], [r.job_id for r in reqs])
        return [core.enqueue_result(c, r.job_id, resent=resent and not r.custom_id)
                for c, r in zip(reply, reqs, strict=True)]
