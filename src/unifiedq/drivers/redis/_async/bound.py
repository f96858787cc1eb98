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
        """Enqueue every request or none; None when they do not fit under the bound."""
        q = self.q
        core = q._core
        if reqs[0].headers:
            core.check_headers(reqs[0].headers)
        now = time.time_ns()
        calls: list[tuple[int, list[Any]]] = [core.enqueue_call(r, now) for r in reqs]
        inner = self._by_sha.get(str(calls[0][1][1]))
        if inner is None or any(c[1][1] != calls[0][1][1] for c in calls):
            raise ProtocolError("unknown or mixed enqueue scripts in one bounded batch")
        script = _bound.bounded(inner)
        _, keys, args = _bound.batch_call(script, core.levels_key, core.qname, self.maxsize,
                                          [c[1] for c in calls])
        deadline = q._deadline()
        with translating():
            for level in {lv for lv, _ in calls}:
                await q._publish(level, deadline)
            data = pack(("EVALSHA", script.sha, len(keys), *keys, *args))
            for _ in range(2):
                replies, resent = await q._send(data, 1, deadline)
                reply = replies[0]
                if not isinstance(reply, rexc.NoScriptError):
                    break
                await q._load(script, deadline)  # first use, or a flushed script cache
            if isinstance(reply, Exception):
                raise reply
        if reply and reply[0] == _bound.FULL:  # enqueue replies are 1/0/-1, never FULL
            return None
        return [core.enqueue_result(c, r.job_id, resent=resent and not r.custom_id)
                for c, r in zip(reply, reqs, strict=True)]
