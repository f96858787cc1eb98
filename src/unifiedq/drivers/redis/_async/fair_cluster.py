# unasync: the blocking twin, _sync/fair_cluster.py, is generated from this file.
"""``FairQueue(scheduler="server")`` on ``redis+cluster://``: pick, lease, report.

See ``unifiedq.drivers.redis._fair_cluster`` for the scheme and its guarantees. This object
has the interface ``FairQueue`` uses of its single-server scheduler (``take``, ``adopt``,
``before_push``, ``mark``, ``tenants``, ``reset``, ``pending``, ``ctl``); it drives the
driver's private plumbing (``_eval``, ``_send``, ``_take_once``) on purpose, as that one does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ...._concurrency import AsyncRuntime
from ...._connect import connect_async
from ...._errors import InvalidArgument
from ...._job import Job
from .._core import pack, translating
from .._fair_cluster import ClusterFairKeys, Report

__all__ = ["AsyncClusterFairSched"]

#: Most pick rounds of one ``take`` that lease nothing (tenants found empty) before it gives
#: up for now (the caller waits and tries again): bounds a dequeue's round trips.
ROUNDS = 64


class AsyncClusterFairSched:
    """The server scheduler over a Redis Cluster, for one ``FairQueue``.

    Args:
        template: The ``redis+cluster://`` sub-queue URL with ``{tenant}``.
        opts: Connect options of the sub-queues.
        default_weight: Weight of tenants without one.
        weights: Configured weights (written to Redis on the first call).
        open_tenant: The fair queue's open handle of a tenant (opened on first use): the
            jobs are leased through it, so it holds them (heartbeat, ack).
        burst: The lag credit of a tenant that becomes backlogged (``FairQueue``'s ``burst``).

    Raises:
        InvalidArgument: The template has no ``{tenant}`` in its queue name.
    """

    def __init__(self, template: str, opts: Mapping[str, Any], default_weight: float,
                 weights: Mapping[str, float], open_tenant: Callable[[str], Any],
                 burst: float = 4.0) -> None:
        probe = "uqfairprobe"
        ctl: Any = connect_async(template.replace("{tenant}", probe), **opts)
        self.ctl = ctl
        qname: str = ctl._core.qname
        if qname.count(probe) != 1:
            raise InvalidArgument(f"scheduler='server': put {{tenant}} in the queue name of "
                                  f"{template!r} (e.g. ?queue=jobs.{{tenant}})")
        # An intent must outlive a push and a mark (each bounded by socket_timeout): renewed
        # when less than 2 socket timeouts + 1 s are left, it lasts twice that.
        st = float(ctl.options.socket_timeout)
        self._margin = 2 * st + 1
        self.keys = ClusterFairKeys(qname.replace(probe, "{tenant}"), default_weight, burst,
                                    intent_seconds=2 * self._margin)
        self.pending: dict[str, float] = dict(weights)  # weights not yet in Redis
        self._open = open_tenant
        self._intents: dict[str, float] = {}  # tenant -> monotonic end of our last intent
        self.next_due: float | None = None  # when the earliest parked job falls due (s)
        self.blocked = 0  # dequeuers of this handle blocked on the wake list

    async def _send(self, cmds: list[tuple[str, ...]]) -> list[Any]:
        with translating():
            got, _ = await self.ctl._send(b"".join(pack(c) for c in cmds), len(cmds),
                                          self.ctl._deadline(), key=self.keys.weights)
        for r in got:
            if isinstance(r, Exception):
                raise r
        return list(got)

    async def _call(self, call: Any) -> Any:
        if self.pending:
            w, self.pending = self.pending, {}
            await self._send(self.keys.weight_calls(w))
        with translating():
            return await self.ctl._eval(call, self.ctl._deadline())

    def _covered(self, tenant: str, now: float) -> None:
        if len(self._intents) > 10_000:  # tenants this process pushed for: keep it bounded
            self._intents = {t: end for t, end in self._intents.items() if end > now}
        self._intents[tenant] = now + self.keys.intent_seconds

    async def before_push(self, tenant: str) -> None:
        """Record an intent before a push for ``tenant``, unless ours covers the push."""
        now = time.monotonic()
        if self._intents.get(tenant, 0.0) - now > self._margin:
            return
        await self._call(self.keys.intent_call([tenant]))
        self._covered(tenant, now)

    async def mark(self, tenant: str, jobs: int = 1) -> None:
        """``tenant`` has ``jobs`` jobs just pushed: backlogged now (our intent renewed)."""
        now = time.monotonic()
        await self._call(self.keys.mark_call([tenant], time.time(), jobs))
        self._covered(tenant, now)

    async def wait(self, seconds: float) -> None:
        """Block up to ``seconds`` on the wake list (a mark in any process ends it)."""
        self.blocked += 1
        try:
            with translating():
                await self.ctl._send(pack(("BLPOP", self.keys.wake, repr(max(seconds, 0.001)))),
                                     1, time.monotonic() + seconds + self.ctl._st,
                                     key=self.keys.wake)
        finally:
            self.blocked -= 1

    async def wake(self, n: int) -> None:
        """Push ``n`` wake-up tokens (closing: this handle's blocked dequeuers return)."""
        if n > 0:
            await self._send([("LPUSH", self.keys.wake, *["1"] * n)])

    async def take(self, max_jobs: int) -> tuple[dict[str, list[Any]], str]:
        """Pick and lease up to ``max_jobs`` jobs: ``{tenant: [n, None, *jobs]}`` and ""."""
        by: dict[str, list[Any]] = {}
        got = 0
        reports: list[Report] = []
        held: list[tuple[Any, Job]] = []  # (handle, job) leased so far
        try:
            for _ in range(ROUNDS):
                reply = await self._call(self.keys.pick_call(max_jobs - got, reports,
                                                             time.time()))
                reports = []
                due, picks = self.keys.parse_pick(reply)
                if not picks:
                    self.next_due = due
                    break
                for tenant, k, seq in picks:
                    q = self._open(tenant)
                    inner = getattr(q, "inner", q)  # a per-tenant BoundedQueue wraps it
                    try:
                        jobs, due = await inner._take_once(k)
                    except Exception:
                        if got:  # already leased by their handles: hand them out
                            return by, ""
                        raise
                    if jobs:
                        inner._start_heartbeat()
                        held += [(inner, j) for j in jobs]
                        sub = by.setdefault(tenant, [0, None])
                        sub[0] += len(jobs)
                        sub.extend(jobs)
                        got += len(jobs)
                    if len(jobs) < k:
                        reports.append((tenant, seq, k - len(jobs), not jobs, due))
                if got:
                    break
            if reports:  # report alone: the next pick may be another process's
                await self._call(self.keys.pick_call(0, reports, time.time()))
        except AsyncRuntime.Cancelled:
            # The caller will not receive the jobs leased so far: stop holding them, so
            # their leases run out and they are recovered (an attempt counted), not kept
            # alive by the heartbeat forever.
            for inner, job in held:
                inner._core.release(inner._core.receipt(job), job.id)
            raise
        return by, ""

    @staticmethod
    def adopt(q: Any, sub: list[Any], token: str) -> list[Job]:
        """The jobs of one tenant from :meth:`take` (already leased by ``q``)."""
        return list(sub[2:])

    async def tenants(self) -> list[str]:
        """Tenants the scheduler knows: ever marked, backlogged or parked."""
        k = self.keys.all
        got = await self._send([("HKEYS", k[6]), ("ZRANGE", k[0], "0", "-1"),
                                ("ZRANGE", k[4], "0", "-1")])
        return sorted({x.decode() if isinstance(x, bytes) else str(x)
                       for r in got for x in r})

    async def reset(self) -> None:
        """Drop the schedule (weights stay)."""
        await self._send([("DEL", *self.keys.schedule)])
