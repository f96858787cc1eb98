# unasync: the blocking twin, _sync/fair.py, is generated from this file.
"""The fair queue of one face; the scheduler and the tenant bookkeeping are in ``fair``.

Locking, the same on both faces: a reentrant guard protects the tenant bookkeeping and is never
held across I/O (on the asyncio face it is never contended: code without ``await`` runs
atomically there); the scan lock serialises scans, which keep the shared DRR order across their
polls of the sub-queues; a dequeuer with nothing to take waits on its own event, which a local
enqueue, requeue or close sets.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, Self

from .._capabilities import Capability, require
from .._checks import check_jobs, not_leased_many
from .._concurrency import AsyncEvent, AsyncRuntime
from .._connect import connect_async
from .._errors import InvalidArgument, JobNotLeased, QueueClosed
from .._job import EnqueueRequest, Job, check_timeout
from .._protocol import AsyncQueue, Deadline, Delay
from ..fair import _PASS, TENANT_HEADER, _FairCore, _Tenant, check_tenant
from ..limits import KeyedLimiter, RateLimiter

__all__ = ["AsyncFairQueue"]


class AsyncFairQueue:
    """A queue that dequeues fairly across tenants (weighted DRR); see ``unifiedq.fair``.

    Args:
        template: Sub-queue URL with a ``{tenant}`` placeholder, or a callable returning an
            open queue of this face for a tenant.
        weights: Per-tenant weights (these tenants are always known); others get
            ``default_weight``.
        tenants: More tenants known from the start.
        default_weight: Weight of tenants not in ``weights``.
        default_tenant: Tenant of jobs enqueued without one; None makes a tenant mandatory.
        tenant_header: Header naming the tenant (read at enqueue, written on every job).
        discover: Callable returning tenant names, polled every ``discover_interval`` s.
        discover_interval: Seconds between ``discover`` calls.
        idle_ttl: Forget unconfigured tenants empty for this long (None = never).
        max_poll: Longest wait between polls of empty sub-queues while blocking (local
            scheduler; the server scheduler's idle dequeuers block on a wake list that every
            process's enqueues push to).
        empty_recheck: A tenant found empty leaves the scheduling ring and is not polled
            again for at least this many seconds unless a job is enqueued for it through
            this object.
        idle_recheck_rate: While other tenants are backlogged, idle tenants are re-polled
            (least recently polled first, each at most every ``empty_recheck``) at most this
            many times per second in all: jobs enqueued for an idle tenant by *other*
            processes are found within about ``max(empty_recheck, idle tenants /
            idle_recheck_rate)`` seconds (at once when nothing else is backlogged). The cost
            of a dequeue does not grow with the number of idle tenants.
        rate_limit: Per-tenant consumer limits: a :class:`~unifiedq.limits.KeyedLimiter`
            or a mapping of tenant to bucket. A tenant out of tokens is skipped this turn.
        maxsize_per_tenant: Bound each tenant's sub-queue at this size with the bounded queue
            of this face (:class:`~unifiedq.BoundedQueue` / :class:`~unifiedq.AsyncBoundedQueue`).
        overflow: Overflow policy of the per-tenant bound (see ``unifiedq.bounded``).
        block_timeout: Wait of the ``block`` policy.
        spill_template: Spill URL template (``{tenant}``) for the ``spill`` policy.
        connect_options: Options for opening each sub-queue from its URL.
        name: A display name (default: the template).
        scheduler: ``"local"`` (default): the DRR runs in this object over any driver.
            ``"server"`` (``redis://`` templates only): one Lua script on the Redis server
            picks the tenant by weighted Start-time Fair Queuing (with the lag credit
            ``burst``) over a server-kept set of backlogged tenants and leases its job, so
            every consumer process shares one schedule and a dequeue costs one round trip
            whatever the number of known tenants. Weights live in Redis (shared by all
            handles). ``rate_limit`` is not available.
        burst: ``scheduler="server"`` only (default 4.0): how much unused share a tenant that
            was idle keeps, in rounds: coming back, it may take up to ``burst * weight``
            jobs ahead of the backlogged tenants, never more than it left unused, so a
            sparse tenant's short bursts wait for no round of the busy ones. 0 gives plain
            SFQ (a returning tenant competes from the current round).

    Raises:
        InvalidArgument: A bad argument, or ``scheduler="server"`` over a driver other than
            ``redis://`` or with ``rate_limit``, or ``burst`` with the local scheduler.
    """

    def __init__(
        self,
        template: str | Callable[[str], AsyncQueue],
        *,
        weights: Mapping[str, float] | None = None,
        tenants: Iterable[str] = (),
        default_weight: float = 1.0,
        default_tenant: str | None = "default",
        tenant_header: str = TENANT_HEADER,
        discover: Callable[[], Iterable[str]] | None = None,
        discover_interval: float = 5.0,
        idle_ttl: float | None = 300.0,
        max_poll: float = 0.05,
        empty_recheck: float = 0.005,
        idle_recheck_rate: float = 1000.0,
        rate_limit: KeyedLimiter | Mapping[str, RateLimiter] | None = None,
        maxsize_per_tenant: int | None = None,
        overflow: Literal["block", "reject", "drop_oldest", "spill"] = "reject",
        block_timeout: float | None = None,
        spill_template: str | None = None,
        connect_options: Mapping[str, Any] | None = None,
        name: str | None = None,
        scheduler: Literal["local", "server"] = "local",
        burst: float | None = None,
    ) -> None:
        if scheduler not in ("local", "server"):
            raise InvalidArgument(f"scheduler must be 'local' or 'server', not {scheduler!r}")
        if burst is not None and scheduler != "server":
            raise InvalidArgument("burst is an option of scheduler='server'")
        if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int | float)
                                  or not 0 <= burst < float("inf")):
            raise InvalidArgument(f"burst must be a finite number >= 0, not {burst!r}")
        if scheduler == "server" and rate_limit is not None:
            raise InvalidArgument("scheduler='server' does not take rate_limit")
        self._bound: dict[str, Any] | None = None
        if maxsize_per_tenant is not None:
            self._bound = {"maxsize": maxsize_per_tenant, "overflow": overflow,
                           "timeout": block_timeout}
            if overflow == "spill" and spill_template is None:
                raise InvalidArgument("overflow='spill' needs spill_template=<URL with {tenant}>")
        self._spill_template = spill_template
        self._core: _FairCore[AsyncQueue] = _FairCore(
            template, weights=weights, tenants=tenants, default_weight=default_weight,
            default_tenant=default_tenant, tenant_header=tenant_header, discover=discover,
            discover_interval=discover_interval, idle_ttl=idle_ttl, max_poll=max_poll,
            rate_limit=rate_limit, name=name, empty_recheck=empty_recheck,
            idle_recheck_rate=idle_recheck_rate)
        self._opts = dict(connect_options or {})
        self._guard = threading.RLock()
        self._scan_lock = AsyncRuntime.Lock()
        self._waiters: dict[AsyncEvent, None] = {}  # waiting dequeuers, oldest first
        self._signals = 0  # local enqueues, requeues and closes so far
        self._caps: Capability | None = None
        self._driver: str | None = None
        self._server: _ServerSched | None = None
        if scheduler == "server":
            lag = 4.0 if burst is None else float(burst)
            if isinstance(template, str) and template.startswith("redis+cluster:"):
                # Two slots (schedule, tenant): a pick, then the lease (see _fair_cluster).
                from ..drivers.redis._fair_cluster import AsyncClusterFairSched
                self._server = AsyncClusterFairSched(
                    template, self._opts, self._core.default_weight, self._core._weights,
                    self.sub_queue, lag)
            else:
                self._server = _ServerSched(template, self._opts, self._core, lag)
        for t in sorted(self._core._configured):
            if self._server is not None:
                continue  # known to the server by name and weight; handles open on use
            self._tenant(t, configured=True)
        if default_tenant is not None:
            # Known from the start, like a configured tenant: every handle on the same
            # template then sees the jobs enqueued without a tenant (another process's too),
            # and a bad template URL fails here, as connect() would, not at first use.
            self._tenant(check_tenant(default_tenant), configured=True)

    # -- Queue protocol: properties ---------------------------------------------------------
    @property
    def name(self) -> str:
        """The display name (the template)."""
        return self._core.name

    @property
    def driver(self) -> str:
        """``fair+<sub-queue driver>``."""
        return f"fair+{self._driver}" if self._driver else "fair"

    @property
    def capabilities(self) -> Capability:
        """The sub-queues' capabilities that carry over, plus BLOCKING_DEQUEUE."""
        base = self._caps if self._caps is not None else self._probe()
        return (base & _PASS) | Capability.BLOCKING_DEQUEUE | AsyncRuntime.NATIVE

    @property
    def bridged(self) -> bool:
        """Always False: a fair queue is native to its face, never a bridge."""
        return False

    @property
    def expired_count(self) -> int:
        """Jobs the known tenants' queues settled as expired instead of handing them out."""
        with self._guard:
            return sum(getattr(t.queue, "expired_count", 0)
                       for t in self._core.tenants.values())

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._core.closed

    def _probe(self) -> Capability:
        t = self._core.default_tenant or "default"
        with self._guard:
            if self._caps is None:
                self._tenant(t, configured=self._core.default_tenant is not None)
            assert self._caps is not None
            return self._caps

    # -- tenants ---------------------------------------------------------------------------
    def _tenant(self, tenant: str, *, configured: bool = False) -> _Tenant[AsyncQueue]:
        """The tenant's entry, its sub-queue opened on first use (the guard is held)."""
        c = self._core
        t = c.tenants.get(tenant)
        if t is not None:
            return t
        src: str | AsyncQueue = c.url_for(tenant) if isinstance(c.template, str) \
            else c.template(tenant)
        q: AsyncQueue
        if self._bound is not None:
            from .bounded import AsyncBoundedQueue
            spill = self._spill_template.replace("{tenant}", tenant) \
                if self._spill_template else None
            # From a URL the bound is native (atomic) on drivers with BOUNDED.
            q = AsyncBoundedQueue(src, spill=spill, connect_options=self._opts, **self._bound)
        else:
            q = connect_async(src, **self._opts) if isinstance(src, str) else src
        t = c.register(tenant, q, configured=configured)
        if self._caps is None:
            self._caps, self._driver = t.queue.capabilities, t.queue.driver
        return t

    def add_tenant(self, tenant: str, weight: float | None = None) -> None:
        """Make ``tenant`` known (and keep it: it is never forgotten as idle)."""
        with self._guard:
            self._check_open()
            if weight is not None:
                self._core.set_weight(check_tenant(tenant), weight)
                if self._server is not None:
                    self._server.pending[tenant] = self._core.weight_of(tenant)
            self._tenant(check_tenant(tenant), configured=True).configured = True

    def set_weight(self, tenant: str, weight: float) -> None:
        """Change a tenant's weight (takes effect from its next turn).

        With ``scheduler="server"`` the weight is written to Redis on the next verb, for
        every consumer.
        """
        with self._guard:
            self._core.set_weight(tenant, weight)
            if self._server is not None:
                self._server.pending[tenant] = self._core.weight_of(tenant)

    @property
    def tenants(self) -> list[str]:
        """The tenants known now: the active ones in scheduling order, then the idle ones."""
        with self._guard:
            return [*self._core.drr.ring, *self._core.drr.idle]

    def served(self) -> dict[str, int]:
        """Jobs dequeued per known tenant by this object so far (forgotten tenants drop out)."""
        with self._guard:
            return self._core.served()

    def tenant_of(self, job: Job) -> str:
        """Return the tenant a dequeued job belongs to."""
        with self._guard:
            return self._core.tenant_of(job)

    def sub_queue(self, tenant: str) -> AsyncQueue:
        """The open sub-queue of ``tenant`` (created if needed)."""
        with self._guard:
            self._check_open()
            return self._tenant(check_tenant(tenant)).queue

    def _check_open(self) -> None:
        if self._core.closed:
            raise QueueClosed(f"{self!r} is closed")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} tenants={len(self._core.tenants)}>"

    # -- routing jobs, waking waiting dequeuers ---------------------------------------------
    def _route(
        self, tenant: str | None, headers: Mapping[str, str] | None,
    ) -> tuple[_Tenant[AsyncQueue], Mapping[str, str] | None]:
        """The tenant a new job goes to, and the headers to send with it."""
        with self._guard:
            self._check_open()
            name = self._core.resolve(tenant, headers)
            t = self._tenant(name)
        return t, self._core.headers_with(name, headers, t.queue.capabilities)

    def _pushed(self, t: _Tenant[AsyncQueue] | None, n: int) -> None:
        """``n`` jobs were enqueued or requeued for ``t``: wake up to ``n`` waiting dequeuers."""
        with self._guard:
            if t is not None:  # None: a requeue for a tenant forgotten meanwhile
                self._core.pushed(t)
            self._notify(n)

    def _notify(self, n: int) -> None:
        """Wake up to ``n`` waiting dequeuers, oldest first (the guard is held)."""
        self._signals += 1
        while n > 0 and self._waiters:
            event = next(iter(self._waiters))
            del self._waiters[event]
            event.set()
            n -= 1

    async def _wait(self, seen: int, seconds: float) -> None:
        """Wait up to ``seconds`` for a wake-up; none if one was signalled since ``seen``."""
        event = AsyncRuntime.Event()
        with self._guard:
            if self._signals != seen:
                return  # something was enqueued while this dequeuer scanned
            self._waiters[event] = None
        try:
            await event.wait(seconds)
        finally:
            with self._guard:
                self._waiters.pop(event, None)

    # -- verbs ------------------------------------------------------------------------------
    async def enqueue(
        self,
        body: bytes,
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        tenant: str | None = None,
        deadline: Deadline | None = None,
        ttl: Delay | None = None,
        timeout: Delay | None = None,
    ) -> str:
        """Enqueue a job for ``tenant`` (or the tenant header, or ``default_tenant``).

        ``job_id`` is not supported (ids are unique per tenant only).
        """
        if job_id is not None or not isinstance(headers, Mapping | None):
            # Bad input gets its own typed error (InvalidArgument...) before the capability.
            EnqueueRequest.build(body, delay=delay, priority=priority, job_id=job_id,
                                 headers=headers)
            require(Capability(0), Capability.CUSTOM_ID, driver=self.driver,
                    what="enqueue(job_id=...)")
        t, hdrs = self._route(tenant, headers)
        if self._server is not None:
            await self._server.before_push(t.name)
        jid = await t.queue.enqueue(body, delay=delay, priority=priority, headers=hdrs,
                                    deadline=deadline, ttl=ttl, timeout=timeout)
        if self._server is not None:
            await self._server.mark(t.name)
            t.polled = time.monotonic()
            await self._server_forget(t.polled)
        self._pushed(t, 1)
        return jid

    async def enqueue_many(
        self,
        bodies: Iterable[bytes],
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
        tenant: str | None = None,
        deadline: Deadline | None = None,
        ttl: Delay | None = None,
        timeout: Delay | None = None,
    ) -> list[str]:
        """Enqueue several jobs for one tenant (BATCH)."""
        t, hdrs = self._route(tenant, headers)
        if self._server is not None:
            await self._server.before_push(t.name)
        ids = await t.queue.enqueue_many(bodies, delay=delay, priority=priority, headers=hdrs,
                                         deadline=deadline, ttl=ttl, timeout=timeout)
        if self._server is not None and ids:
            await self._server.mark(t.name, len(ids))
            t.polled = time.monotonic()
            await self._server_forget(t.polled)
        self._pushed(t, len(ids))
        return ids

    async def _scan(self) -> Job | None:
        """One DRR scan over every tenant (the caller holds the scan lock): a job or None."""
        c = self._core
        now = time.monotonic()
        with self._guard:
            for name in (*c.discovered(now), *c.board_news()):
                self._tenant(name)
            gone = c.forget_idle(now)
            t = c.begin(now)
        for idle in gone:
            with contextlib.suppress(Exception):  # closing an idle handle is best effort
                await idle.queue.aclose()
        while t is not None:
            snap = c.snapshot(t)
            job = await t.queue.dequeue(timeout=0.0)  # 0.0: the drivers' fast path
            with self._guard:
                c.polled(t, job is not None, now, snap)
                if job is not None:
                    return job
                t = c.next_to_poll(now)
        return None

    async def dequeue(self, *, timeout: float | None = 0.0) -> Job | None:
        """Take the next job in weighted round-robin order across tenants.

        Args:
            timeout: Seconds to wait (0 = don't, None = forever).

        Returns:
            A job (settle it on this fair queue), or None.
        """
        # The default (0.0) is valid already: skip the check on this hot path.
        t_out = timeout if timeout == 0.0 and type(timeout) is float else check_timeout(timeout)
        deadline = None if t_out is None else time.monotonic() + t_out
        backoff = 0.001
        while True:
            self._check_open()
            seen = self._signals
            if self._server is not None:
                jobs = await self._server_take(1)  # atomic on the server: no local lock
                job = jobs[0] if jobs else None
            else:
                async with self._scan_lock:
                    job = await self._scan()
            if job is not None:
                return job
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            if self._server is not None:
                # Block on the server's wake list (any process's mark ends it) until the
                # earliest parked job is due; at most 1 s, then the script runs again.
                wait = 1.0 if deadline is None else min(1.0, deadline - now)
                due = self._server.next_due
                if due is not None:
                    wait = min(wait, max(0.001, due - time.time()))
                await self._server.wait(wait)
                continue
            with self._guard:
                more = self._core.more_due(now)
            if more:
                continue  # idle tenants left to sweep: no wait before the next scan
            await self._wait(seen, backoff if deadline is None else min(backoff, deadline - now))
            backoff = min(backoff * 2, self._core.max_poll)

    async def dequeue_many(self, max_jobs: int, *, timeout: float | None = 0.0) -> list[Job]:
        """Take up to ``max_jobs`` jobs in fair order, waiting up to ``timeout`` for the first."""
        if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
            raise InvalidArgument(f"max_jobs must be an int >= 1, not {max_jobs!r}")
        if self._server is not None:
            self._check_open()
            got = await self._server_take(max_jobs)
            if got or timeout == 0.0:
                return got
        first = await self.dequeue(timeout=timeout)
        if first is None:
            return []
        out = [first]
        if self._server is not None:
            return out + (await self._server_take(max_jobs - 1) if max_jobs > 1 else [])
        async with self._scan_lock:
            while len(out) < max_jobs and (job := await self._scan()) is not None:
                out.append(job)
        return out

    async def peek(self) -> Job | None:
        """Not supported: raises UnsupportedOperation (QueueClosed once closed)."""
        self._check_open()
        require(Capability(0), Capability.PEEK, driver=self.driver, what="peek()")
        return None  # pragma: no cover

    async def pause(self) -> None:
        """Not supported (tenants come and go): raises UnsupportedOperation; pause sub-queues."""
        self._check_open()
        require(Capability(0), Capability.PAUSE, driver=self.driver, what="pause()")

    async def resume(self) -> None:
        """Not supported: raises UnsupportedOperation (QueueClosed once closed)."""
        self._check_open()
        require(Capability(0), Capability.PAUSE, driver=self.driver, what="resume()")

    async def is_paused(self) -> bool:
        """Not supported: raises UnsupportedOperation (QueueClosed once closed)."""
        self._check_open()
        require(Capability(0), Capability.PAUSE, driver=self.driver, what="is_paused()")
        return False  # pragma: no cover

    async def result(self, job_id: str, *, timeout: float | None = 0.0) -> bytes:
        """Not supported (job ids are unique per tenant only): raises UnsupportedOperation."""
        self._check_open()
        require(Capability(0), Capability.RESULT, driver=self.driver, what="result()")
        return b""  # pragma: no cover

    async def complete(self, job: Job, result: bytes, *,
                       retention: float | None = None) -> None:
        """Not supported (no RESULT across tenants): raises UnsupportedOperation; use ack."""
        self._check_open()
        require(Capability(0), Capability.RESULT, driver=self.driver, what="complete()")

    async def fail(self, job: Job, error: str, *, retention: float | None = None) -> None:
        """Not supported (no RESULT across tenants): raises UnsupportedOperation; use nack."""
        self._check_open()
        require(Capability(0), Capability.RESULT, driver=self.driver, what="fail()")

    async def ack(self, job: Job) -> None:
        """Ack a job on its tenant's sub-queue."""
        with self._guard:
            q = self._core.sub_for(job)
        await q.ack(job)

    async def ack_many(self, jobs: Iterable[Job]) -> None:
        """Ack jobs on their tenants' sub-queues (one ``ack_many`` per sub-queue).

        Raises:
            JobNotLeased: Some leases were lost (the other jobs were acked); ``job_ids``
                names them across every sub-queue.
        """
        groups: dict[int, tuple[AsyncQueue, list[Job]]] = {}
        items = check_jobs(jobs, "ack_many")
        with self._guard:
            for job in items:
                q = self._core.sub_for(job)
                groups.setdefault(id(q), (q, []))[1].append(job)
        lost: list[str] = []
        total = 0
        for q, group in groups.values():
            total += len(group)
            try:
                await q.ack_many(group)
            except JobNotLeased as exc:
                lost.extend(exc.job_ids)
        if lost:
            raise not_leased_many(lost, total)

    async def nack(self, job: Job, *, requeue: bool = True, delay: Delay | None = None) -> None:
        """Nack a job on its tenant's sub-queue."""
        with self._guard:
            q = self._core.sub_for(job)
        if requeue:
            await self._requeuing(job)
        await q.nack(job, requeue=requeue, delay=delay)
        if requeue:
            await self._requeued(job)

    async def release(self, job: Job) -> None:
        """Release a job on its tenant's sub-queue (no attempt consumed)."""
        with self._guard:
            q = self._core.sub_for(job)
        await self._requeuing(job)
        await q.release(job)
        await self._requeued(job)

    async def _requeuing(self, job: Job) -> None:
        t = self._core.by_queue.get(job.queue)
        if self._server is not None and t is not None:
            await self._server.before_push(t.name)

    async def _requeued(self, job: Job) -> None:
        t = self._core.by_queue.get(job.queue)
        if self._server is not None and t is not None:
            await self._server.mark(t.name)
        self._pushed(t, 1)

    async def _server_take(self, max_jobs: int) -> list[Job]:
        """One fair script call: up to ``max_jobs`` jobs, leased on their tenants' handles."""
        srv = self._server
        assert srv is not None
        by, token = await srv.take(max_jobs)
        jobs: list[Job] = []
        now = time.monotonic()
        for name, sub in by.items():
            with self._guard:
                t = self._tenant(name)
                t.polled = now  # last used: see _server_forget
                self._core.drr.served[name] = self._core.drr.served.get(name, 0) + sub[0]
            jobs.extend(await self._live(t.queue, srv.adopt(t.queue, sub, token)))
        await self._server_forget(now)
        return jobs

    @staticmethod
    async def _live(q: AsyncQueue, jobs: list[Job]) -> list[Job]:
        """``jobs`` minus those past their deadline, settled as expired by their handle.

        The server scheduler leases through the handle's private plumbing, which skips the
        expiry check of its public ``dequeue``: applied here instead (DEADLINE).
        """
        if all(j.deadline is None for j in jobs):
            return jobs
        inner: Any = getattr(q, "inner", q)  # a per-tenant BoundedQueue wraps the handle
        if getattr(inner, "on_expired", "keep") == "keep":
            return jobs
        now = time.time()
        dead = [j for j in jobs if j.deadline is not None and j.deadline <= now]
        if dead:
            await inner._shed(dead)
        return [j for j in jobs if j.deadline is None or j.deadline > now]

    async def _server_forget(self, now: float) -> None:
        """Close the handles of unconfigured tenants unused for ``idle_ttl`` (server mode).

        The server scheduler opens a handle per tenant it serves or enqueues for; without
        this, a process serving tenants that come and go would keep every handle. A handle
        still holding leased jobs is kept (their ack needs it).
        """
        c = self._core
        if c.idle_ttl is None or now < c._next_forget:
            return
        c._next_forget = now + min(1.0, c.idle_ttl / 10)
        with self._guard:
            gone = [t for t in c.tenants.values()
                    if not t.configured and t.name not in c._configured
                    and now - t.polled >= c.idle_ttl
                    and not getattr(getattr(getattr(t.queue, "inner", t.queue), "_core", None),
                                    "holding", True)]
            for t in gone:
                del c.tenants[t.name]
                c.by_queue.pop(t.queue.name, None)
                c.drr.remove(t.name)
        for t in gone:
            with contextlib.suppress(Exception):  # closing an idle handle is best effort
                await t.queue.aclose()

    async def extend_lease(self, job: Job, seconds: float) -> None:
        """Extend a job's lease on its tenant's sub-queue."""
        with self._guard:
            q = self._core.sub_for(job)
        await q.extend_lease(job, seconds)

    async def _all_queues(self) -> list[AsyncQueue]:
        """The known tenants' sub-queues (with the server scheduler: also those it knows)."""
        with self._guard:
            self._check_open()
        if self._server is not None:
            for name in await self._server.tenants():
                with self._guard:
                    self._tenant(check_tenant(name))
        with self._guard:
            return [t.queue for t in self._core.tenants.values()]

    async def size(self) -> int:
        """Waiting jobs summed over the known tenants."""
        return sum([await q.size() for q in await self._all_queues()])

    async def sizes(self) -> dict[str, int]:
        """Waiting jobs per known tenant (with the server scheduler: also those it knows)."""
        await self._all_queues()
        with self._guard:
            items = [(n, t.queue) for n, t in self._core.tenants.items()]
        return {n: await q.size() for n, q in items}

    async def purge(self) -> int:
        """Purge every known tenant's sub-queue."""
        n = sum([await q.purge() for q in await self._all_queues()])
        if self._server is not None:
            await self._server.reset()
        return n

    async def aclose(self) -> None:
        """Close every sub-queue handle. Idempotent."""
        with self._guard:
            if self._core.closed:
                return
            self._core.closed = True
            qs = [t.queue for t in self._core.tenants.values()]
            self._notify(len(self._waiters))
        if self._server is not None:
            with contextlib.suppress(Exception):  # wake this handle's blocked dequeuers
                await self._server.wake(self._server.blocked)
        for q in qs:
            await q.aclose()
        if self._server is not None:
            await self._server.ctl.aclose()

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


class _ServerSched:
    """The ``scheduler="server"`` half: the redis fair script, called on a control handle.

    It drives the redis driver's private plumbing (``_eval``, ``_core``) on purpose: the
    script leases jobs of *other* handles' queues, which then hold them (heartbeat, ack).
    """

    def __init__(self, template: object, opts: Mapping[str, Any],
                 core: _FairCore[AsyncQueue], burst: float) -> None:
        if not isinstance(template, str):
            raise InvalidArgument("scheduler='server' needs a redis:// template URL, "
                                  f"not {template!r}")
        from ..drivers.redis._fair import FairKeys
        probe = "uqfairprobe"
        ctl: Any = connect_async(template.replace("{tenant}", probe), **opts)
        if ctl.driver != "redis" or not hasattr(ctl, "_eval"):
            raise InvalidArgument(f"scheduler='server' needs a redis:// template URL (the "
                                  f"script runs on the Redis server), not {template!r}")
        self.ctl = ctl
        qname: str = ctl._core.qname
        if qname.count(probe) != 1:
            raise InvalidArgument(f"scheduler='server': put {{tenant}} in the queue name of "
                                  f"{template!r} (e.g. ?queue=jobs.{{tenant}})")
        self.keys = FairKeys(qname.replace(probe, "{tenant}"), core.default_weight, burst)
        self.pending: dict[str, float] = dict(core._weights)  # weights not yet in Redis
        self.next_due: float | None = None  # when the earliest parked job falls due (s)
        self.blocked = 0  # dequeuers of this handle blocked on the wake list

    async def _send(self, cmds: list[tuple[str, ...]]) -> list[Any]:
        from ..drivers.redis._core import pack, translating
        with translating():
            got, _ = await self.ctl._send(b"".join(pack(c) for c in cmds), len(cmds),
                                          self.ctl._deadline())
        for r in got:
            if isinstance(r, Exception):
                raise r
        return list(got)

    async def _call(self, call: Any) -> Any:
        from ..drivers.redis._core import translating
        await self._flush_weights()
        with translating():
            return await self.ctl._eval(call, self.ctl._deadline())

    async def _flush_weights(self) -> None:
        if self.pending:
            w, self.pending = self.pending, {}
            await self._send(self.keys.weight_calls(w))

    async def before_push(self, tenant: str) -> None:
        """Nothing: here one script picks, leases and removes atomically.

        (The cluster scheduler records an intent here.)
        """

    async def mark(self, tenant: str, jobs: int = 1) -> None:
        """Mark ``tenant`` backlogged on the server (after its ``jobs`` jobs landed)."""
        await self._call(self.keys.mark_call([tenant], jobs))

    async def wait(self, seconds: float) -> None:
        """Block up to ``seconds`` on the wake list (a mark in any process ends it)."""
        from ..drivers.redis._core import pack, translating
        self.blocked += 1
        try:
            with translating():
                await self.ctl._send(pack(("BLPOP", self.keys.wake, repr(max(seconds, 0.001)))),
                                     1, time.monotonic() + seconds + self.ctl._st)
        finally:
            self.blocked -= 1

    async def wake(self, n: int) -> None:
        """Push ``n`` wake-up tokens (closing: this handle's blocked dequeuers return)."""
        if n > 0:
            await self._send([("LPUSH", self.keys.wake, *["1"] * n)])

    async def take(self, max_jobs: int) -> tuple[dict[str, list[Any]], str]:
        """Run the fair script once: jobs taken, grouped by tenant, and their lease token."""
        (_, _, args), token = self.ctl._core.dequeue_call(max_jobs)
        reply = await self._call(self.keys.dequeue_call(args, max_jobs))
        by, self.next_due = self.keys.split(reply)
        return by, token

    @staticmethod
    def adopt(q: Any, sub: list[Any], token: str) -> list[Job]:
        """Jobs the script leased from ``q``'s queue: held (heartbeat-extended) by ``q``."""
        inner = getattr(q, "inner", q)  # a per-tenant BoundedQueue wraps the redis handle
        jobs: list[Job] = inner._core.dequeue_result(sub, token)[0]
        inner._start_heartbeat()
        return jobs

    async def tenants(self) -> list[str]:
        """Tenants the server scheduler knows: backlogged or parked."""
        k = self.keys
        got = await self._send([("ZRANGE", k.sfq, "0", "-1"), ("ZRANGE", k.ahead, "0", "-1"),
                                ("ZRANGE", k.parked, "0", "-1")])
        return sorted({x.decode() if isinstance(x, bytes) else str(x)
                       for r in got for x in r})

    async def reset(self) -> None:
        """Drop the schedule: backlog, tags, lag, virtual time, parked set (weights stay)."""
        await self._send([("DEL", *self.keys.schedule)])
