"""Fair scheduling across tenants over any driver: weighted deficit round robin.

A :class:`FairQueue` keeps one sub-queue per tenant and dequeues across the tenants that have
backlog by **weighted deficit round robin** (DRR, Shreedhar & Varghese): each turn a tenant is
credited ``weight`` jobs and may take that many before the next tenant's turn; a tenant found
empty loses its credit, so idle tenants cannot save up a burst. With every tenant backlogged,
tenant *i* gets ``weight_i / sum(weights)`` of the dequeues, whatever their arrival rates; a
tenant that floods its own sub-queue only lengthens its own wait.

Sub-queue URLs come from a template with a ``{tenant}`` placeholder, so it works over every
driver::

    fq = FairQueue("redis://localhost:6379/0?queue=jobs.{tenant}", weights={"vip": 3})
    fq.enqueue(b"...", tenant="acme")          # or headers={"tenant": "acme"}
    job = fq.dequeue(timeout=1)
    fq.ack(job)                                # routed to the tenant's sub-queue
    Worker(fq, handler, concurrency=8).run()   # a FairQueue is a Queue

Tenants appear dynamically: on a local ``enqueue`` for a new tenant, through ``add_tenant``,
``weights``/``tenants`` given up front, or a ``discover`` callable polled every
``discover_interval`` seconds (e.g. reading tenant ids from your database). A tenant that is
not configured and stays empty for ``idle_ttl`` seconds is forgotten (its handle closed).
Tenant names are 1..64 characters of ``A-Z a-z 0-9 _ . -`` so they are safe in any URL.

**Fairness guarantee: local, not global.** The DRR state (the pointer and deficits) lives in
the process. One consumer process, any number of threads: dequeues are exactly DRR-fair.
Several consumer processes sharing a backend each run their own DRR over the shared sub-queues:
when every tenant is backlogged each process serves every tenant by weight, so the aggregate
is weight-proportional as well; the deviation from exact DRR order is bounded by about one
quantum (``max weight``) per process at any instant, and tenant discovery is per process (a
process only serves tenants it knows). There is no global guarantee for tenants a process does
not know, nor across consumers running at different speeds within a round. The noisy-neighbour
benchmark measures the multi-process case (``benchmarks/noisy_neighbour.py --procs 2``).

Each ``dequeue`` polls the sub-queues with non-blocking dequeues: one round trip per tenant
visited. A tenant found empty is skipped without a round trip for ``empty_recheck`` seconds
(5 ms) unless a job is enqueued for it through this object. When every tenant is empty it
waits, woken at once by a local ``enqueue`` and otherwise re-polling with a backoff up to
``max_poll`` seconds, so jobs from other processes are picked up within ``max_poll``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

from ._capabilities import Capability, require
from ._connect import connect, connect_async
from ._errors import InvalidArgument, QueueClosed, WrongQueue
from ._job import Job, check_timeout
from ._protocol import AsyncQueue, Delay, Queue
from .limits import KeyedLimiter, RateLimiter

__all__ = ["TENANT_HEADER", "AsyncFairQueue", "FairQueue", "jain_index"]

#: Header naming a job's tenant (set on every job where the driver has HEADERS).
TENANT_HEADER = "tenant"

_TENANT_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

# What the FairQueue can pass through from its sub-queues. CUSTOM_ID is left out (ids are only
# unique per tenant), PEEK too (a peek across tenants would not match what dequeue takes).
_PASS = (Capability.ACK | Capability.LEASE_EXTEND | Capability.DELAY | Capability.PRIORITY
         | Capability.BATCH | Capability.HEADERS | Capability.DURABLE | Capability.CROSS_PROCESS
         | Capability.DISTRIBUTED | Capability.BOUNDED)

Q = TypeVar("Q")


def check_tenant(tenant: object) -> str:
    """Return ``tenant`` if it is a valid tenant name, else raise InvalidArgument."""
    if not isinstance(tenant, str) or not _TENANT_RE.match(tenant):
        raise InvalidArgument(
            f"tenant must be 1..64 characters of A-Z a-z 0-9 _ . -, not {tenant!r}")
    return tenant


def _check_weight(w: object, tenant: str = "") -> float:
    if isinstance(w, bool) or not isinstance(w, int | float) or not 0 < w < 1e6:
        raise InvalidArgument(f"weight of tenant {tenant!r} must be a number > 0, not {w!r}")
    return float(w)


def jain_index(values: Iterable[float]) -> float:
    """Jain's fairness index of ``values``: 1.0 = perfectly equal, 1/n = one takes all."""
    xs = list(values)
    if not xs or not any(xs):
        return 1.0
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


class _DRR:
    """Weighted deficit round robin over a ring of tenants; no I/O, not thread-safe.

    One *scan* looks for the next job: :meth:`candidate` names the tenant to try, and the
    caller reports :meth:`took`, :meth:`empty` or :meth:`skip`. A scan ends with a job or when
    every tenant was tried once.
    """

    def __init__(self) -> None:
        self.ring: list[str] = []
        self.weight: dict[str, float] = {}
        self.deficit: dict[str, float] = {}
        self.served: dict[str, int] = {}
        self.ptr = 0
        self._tried: set[str] = set()

    def add(self, tenant: str, weight: float) -> None:
        if tenant not in self.weight:
            # New tenants join just before the pointer: they get their turn at the end of
            # the current round, not ahead of tenants already waiting.
            self.ring.insert(self.ptr, tenant)
            self.ptr += 1
            self.deficit[tenant] = 0.0
            self.served.setdefault(tenant, 0)
        self.weight[tenant] = weight

    def remove(self, tenant: str) -> None:
        if tenant not in self.weight:
            return
        i = self.ring.index(tenant)
        del self.ring[i]
        if i < self.ptr:
            self.ptr -= 1
        del self.weight[tenant], self.deficit[tenant]
        self._tried.discard(tenant)

    def begin(self) -> None:
        self._tried = set()

    def _advance(self) -> None:
        self.ptr = (self.ptr + 1) % len(self.ring) if self.ring else 0

    def candidate(self) -> str | None:
        n = len(self.ring)
        while n and len(self._tried) < n:
            self.ptr %= n
            t = self.ring[self.ptr]
            if t in self._tried:
                self._advance()
                continue
            if self.deficit[t] < 1.0:
                # A new turn: credit the quantum. Weights below 1 accumulate over rounds.
                self.deficit[t] += self.weight[t]
                if self.deficit[t] < 1.0:
                    self._advance()
                    continue
            return t
        return None

    def took(self, tenant: str) -> None:
        self.deficit[tenant] -= 1.0
        self.served[tenant] = self.served.get(tenant, 0) + 1
        if self.deficit[tenant] < 1.0:
            self._advance()

    def empty(self, tenant: str) -> None:
        self.deficit[tenant] = 0.0  # idle tenants keep no credit
        self._tried.add(tenant)
        self._advance()

    def skip(self, tenant: str) -> None:
        """Tenant is rate-limited: pass its turn but keep its credit."""
        self._tried.add(tenant)
        self._advance()


@dataclasses.dataclass(eq=False)
class _Tenant(Generic[Q]):
    name: str
    queue: Q
    configured: bool
    empty_since: float | None = None
    polled: float = 0.0  # monotonic time of the last poll that found it empty

    def skip_poll(self, now: float, recheck: float) -> bool:
        """True if it was found empty very recently and nothing local was enqueued since."""
        return self.empty_since is not None and now - self.polled < recheck


class _FairCore(Generic[Q]):
    """Tenant bookkeeping shared by both faces (no I/O)."""

    def __init__(
        self,
        template: str | Callable[[str], Q],
        *,
        weights: Mapping[str, float] | None,
        tenants: Iterable[str],
        default_weight: float,
        default_tenant: str | None,
        tenant_header: str,
        discover: Callable[[], Iterable[str]] | None,
        discover_interval: float,
        idle_ttl: float | None,
        max_poll: float,
        rate_limit: KeyedLimiter | Mapping[str, RateLimiter] | None,
        name: str | None,
        empty_recheck: float = 0.0,
    ) -> None:
        if isinstance(template, str):
            if "{tenant}" not in template:
                raise InvalidArgument(
                    f"the sub-queue URL template must contain '{{tenant}}', e.g. "
                    f"'memory://jobs.{{tenant}}'; got {template!r}")
        elif not callable(template):
            raise InvalidArgument(f"template must be a URL with {{tenant}} or a callable, "
                                  f"not {template!r}")
        self.template = template
        self.default_weight = _check_weight(default_weight, "<default>")
        self.default_tenant = None if default_tenant is None else check_tenant(default_tenant)
        self.tenant_header = tenant_header
        self.discover = discover
        self.discover_interval = float(discover_interval)
        self.idle_ttl = idle_ttl
        self.max_poll = float(max_poll)
        self.empty_recheck = float(empty_recheck)
        self.rate_limit = rate_limit
        self.drr = _DRR()
        self.tenants: dict[str, _Tenant[Q]] = {}
        self.by_queue: dict[str, _Tenant[Q]] = {}
        self.closed = False
        self._next_discover = 0.0
        self._weights = {check_tenant(k): _check_weight(v, k) for k, v in (weights or {}).items()}
        self._configured = set(self._weights) | {check_tenant(t) for t in tenants}
        self.name = name or (template if isinstance(template, str) else "fair")

    def url_for(self, tenant: str) -> str:
        """The sub-queue URL of ``tenant`` (only for string templates)."""
        assert isinstance(self.template, str)
        return self.template.replace("{tenant}", tenant)

    def weight_of(self, tenant: str) -> float:
        return self._weights.get(tenant, self.default_weight)

    def register(self, tenant: str, queue: Q, *, configured: bool) -> _Tenant[Q]:
        t = _Tenant(tenant, queue, configured)
        self.tenants[tenant] = t
        self.by_queue[queue.name] = t  # type: ignore[attr-defined]
        self.drr.add(tenant, self.weight_of(tenant))
        return t

    def set_weight(self, tenant: str, weight: float) -> None:
        check_tenant(tenant)
        self._weights[tenant] = _check_weight(weight, tenant)
        if tenant in self.tenants:
            self.drr.weight[tenant] = self._weights[tenant]

    def resolve(self, tenant: str | None, headers: Mapping[str, str] | None) -> str:
        if tenant is None and headers:
            tenant = headers.get(self.tenant_header)
        if tenant is None:
            if self.default_tenant is None:
                raise InvalidArgument(
                    f"no tenant given: pass tenant=... or a {self.tenant_header!r} header "
                    "(or set default_tenant)")
            tenant = self.default_tenant
        return check_tenant(tenant)

    def tenant_of(self, job: Job) -> str:
        t = self.by_queue.get(job.queue)
        if t is None:
            raise WrongQueue(f"job {job.id!r} came from queue {job.queue!r}, which is not a "
                             f"sub-queue of this FairQueue")
        return t.name

    def sub_for(self, job: Job) -> Q:
        t = self.by_queue.get(job.queue)
        if t is None:
            raise WrongQueue(f"job {job.id!r} came from queue {job.queue!r}, which is not a "
                             f"sub-queue of this FairQueue")
        return t.queue

    def headers_with(self, tenant: str, headers: Mapping[str, str] | None,
                     caps: Capability) -> Mapping[str, str] | None:
        if Capability.HEADERS not in caps:
            if headers and set(headers) - {self.tenant_header}:
                require(caps, Capability.HEADERS, driver="fair", what="enqueue(headers=...)")
            return None
        h = dict(headers or {})
        h[self.tenant_header] = tenant
        return h

    def limited(self, tenant: str) -> bool:
        rl = self.rate_limit
        if rl is None:
            return False
        if isinstance(rl, KeyedLimiter):
            return not rl.try_acquire(tenant)
        lim = rl.get(tenant)
        return lim is not None and not lim.try_acquire()

    def forget_idle(self, now: float) -> list[_Tenant[Q]]:
        if self.idle_ttl is None:
            return []
        gone = [t for t in self.tenants.values() if not t.configured
                and t.empty_since is not None and now - t.empty_since >= self.idle_ttl]
        for t in gone:
            del self.tenants[t.name]
            self.by_queue.pop(t.queue.name, None)  # type: ignore[attr-defined]
            self.drr.remove(t.name)
        return gone

    def served(self) -> dict[str, int]:
        return dict(self.drr.served)


class FairQueue:
    """A :class:`~unifiedq.Queue` that dequeues fairly across tenants (weighted DRR).

    Args:
        template: Sub-queue URL with a ``{tenant}`` placeholder, or a callable returning an
            open :class:`Queue` for a tenant.
        weights: Per-tenant weights (these tenants are always known); others get
            ``default_weight``.
        tenants: More tenants known from the start.
        default_weight: Weight of tenants not in ``weights``.
        default_tenant: Tenant of jobs enqueued without one; None makes a tenant mandatory.
        tenant_header: Header naming the tenant (read at enqueue, written on every job).
        discover: Callable returning tenant names, polled every ``discover_interval`` s.
        discover_interval: Seconds between ``discover`` calls.
        idle_ttl: Forget unconfigured tenants empty for this long (None = never).
        max_poll: Longest wait between polls of empty sub-queues while blocking.
        empty_recheck: A tenant found empty is not polled again for this many seconds
            unless a job is enqueued for it through this object (saves one round trip per
            empty tenant per dequeue; delays pickup of jobs enqueued by *other* processes
            by at most this much).
        rate_limit: Per-tenant consumer limits: a :class:`~unifiedq.limits.KeyedLimiter`
            or a mapping of tenant to bucket. A tenant out of tokens is skipped this turn.
        maxsize_per_tenant: Bound each tenant's sub-queue with a
            :class:`~unifiedq.BoundedQueue` of this size.
        overflow: Overflow policy of the per-tenant bound (see BoundedQueue).
        block_timeout: Wait of the ``block`` policy.
        spill_template: Spill URL template (``{tenant}``) for the ``spill`` policy.
        connect_options: Options for ``connect()`` of each sub-queue.
        name: A display name (default: the template).
    """

    def __init__(
        self,
        template: str | Callable[[str], Queue],
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
        rate_limit: KeyedLimiter | Mapping[str, RateLimiter] | None = None,
        maxsize_per_tenant: int | None = None,
        overflow: Literal["block", "reject", "drop_oldest", "spill"] = "reject",
        block_timeout: float | None = None,
        spill_template: str | None = None,
        connect_options: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        self._bound: dict[str, Any] | None = None
        if maxsize_per_tenant is not None:
            self._bound = {"maxsize": maxsize_per_tenant, "overflow": overflow,
                           "timeout": block_timeout}
            if overflow == "spill" and spill_template is None:
                raise InvalidArgument("overflow='spill' needs spill_template=<URL with {tenant}>")
        self._spill_template = spill_template
        self._core: _FairCore[Queue] = _FairCore(
            template, weights=weights, tenants=tenants, default_weight=default_weight,
            default_tenant=default_tenant, tenant_header=tenant_header, discover=discover,
            discover_interval=discover_interval, idle_ttl=idle_ttl, max_poll=max_poll,
            rate_limit=rate_limit, name=name, empty_recheck=empty_recheck)
        self._opts = dict(connect_options or {})
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._caps: Capability | None = None
        self._driver: str | None = None
        for t in sorted(self._core._configured):
            self._tenant(t, configured=True)

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
        return (base & _PASS) | Capability.BLOCKING_DEQUEUE | Capability.NATIVE_SYNC

    @property
    def bridged(self) -> bool:
        """Always False: the FairQueue is a native blocking object."""
        return False

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._core.closed

    def _probe(self) -> Capability:
        t = self._core.default_tenant or "default"
        with self._lock:
            if self._caps is None:
                self._tenant(t, configured=self._core.default_tenant is not None)
            assert self._caps is not None
            return self._caps

    # -- tenants ---------------------------------------------------------------------------
    def _tenant(self, tenant: str, *, configured: bool = False) -> _Tenant[Queue]:
        c = self._core
        t = c.tenants.get(tenant)
        if t is not None:
            return t
        src: str | Queue = c.url_for(tenant) if isinstance(c.template, str) \
            else c.template(tenant)
        q: Queue
        if self._bound is not None:
            from .bounded import BoundedQueue
            spill = self._spill_template.replace("{tenant}", tenant) \
                if self._spill_template else None
            # From a URL the bound is native (atomic) on drivers with BOUNDED.
            q = BoundedQueue(src, spill=spill, connect_options=self._opts, **self._bound)
        else:
            q = connect(src, **self._opts) if isinstance(src, str) else src
        t = c.register(tenant, q, configured=configured)
        if self._caps is None:
            self._caps, self._driver = t.queue.capabilities, t.queue.driver
        return t

    def add_tenant(self, tenant: str, weight: float | None = None) -> None:
        """Make ``tenant`` known (and keep it: it is never forgotten as idle)."""
        with self._lock:
            self._check_open()
            if weight is not None:
                self._core.set_weight(check_tenant(tenant), weight)
            self._tenant(check_tenant(tenant), configured=True).configured = True

    def set_weight(self, tenant: str, weight: float) -> None:
        """Change a tenant's weight (takes effect from its next turn)."""
        with self._lock:
            self._core.set_weight(tenant, weight)

    @property
    def tenants(self) -> list[str]:
        """The tenants known now, in scheduling order."""
        with self._lock:
            return list(self._core.drr.ring)

    def served(self) -> dict[str, int]:
        """Jobs dequeued per tenant by this object so far."""
        with self._lock:
            return self._core.served()

    def tenant_of(self, job: Job) -> str:
        """Return the tenant a dequeued job belongs to."""
        with self._lock:
            return self._core.tenant_of(job)

    def sub_queue(self, tenant: str) -> Queue:
        """The open sub-queue of ``tenant`` (created if needed)."""
        with self._lock:
            self._check_open()
            return self._tenant(check_tenant(tenant)).queue

    def _check_open(self) -> None:
        if self._core.closed:
            raise QueueClosed(f"{self!r} is closed")

    def __repr__(self) -> str:
        return f"<FairQueue {self.name!r} tenants={len(self._core.tenants)}>"

    # -- verbs ------------------------------------------------------------------------------
    def enqueue(
        self,
        body: bytes,
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        tenant: str | None = None,
    ) -> str:
        """Enqueue a job for ``tenant`` (or the tenant header, or ``default_tenant``).

        ``job_id`` is not supported (ids are unique per tenant only).
        """
        if job_id is not None:
            require(Capability(0), Capability.CUSTOM_ID, driver=self.driver,
                    what="enqueue(job_id=...)")
        with self._lock:
            self._check_open()
            name = self._core.resolve(tenant, headers)
            t = self._tenant(name)
            q = t.queue
        hdrs = self._core.headers_with(name, headers, q.capabilities)
        jid = q.enqueue(body, delay=delay, priority=priority, headers=hdrs)
        with self._cond:
            t.empty_since = None
            self._cond.notify()
        return jid

    def enqueue_many(
        self,
        bodies: Iterable[bytes],
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
        tenant: str | None = None,
    ) -> list[str]:
        """Enqueue several jobs for one tenant (BATCH)."""
        with self._lock:
            self._check_open()
            name = self._core.resolve(tenant, headers)
            t = self._tenant(name)
            q = t.queue
        hdrs = self._core.headers_with(name, headers, q.capabilities)
        ids = q.enqueue_many(bodies, delay=delay, priority=priority, headers=hdrs)
        with self._cond:
            t.empty_since = None
            self._cond.notify(len(ids))
        return ids

    def _maybe_discover(self, now: float) -> None:
        c = self._core
        if c.discover is not None and now >= c._next_discover:
            c._next_discover = now + c.discover_interval
            for name in c.discover():
                self._tenant(check_tenant(name))
        for t in c.forget_idle(now):
            with contextlib.suppress(Exception):  # closing an idle handle is best effort
                t.queue.close()

    def _scan(self) -> Job | None:
        """One DRR scan over every tenant; the lock is held (DRR state is shared)."""
        c = self._core
        now = time.monotonic()
        self._maybe_discover(now)
        drr = c.drr
        drr.begin()
        while (name := drr.candidate()) is not None:
            t = c.tenants[name]
            if t.skip_poll(now, c.empty_recheck):
                drr.empty(name)
                continue
            if c.limited(name):
                drr.skip(name)
                continue
            job = t.queue.dequeue(timeout=0)
            if job is None:
                if t.empty_since is None:
                    t.empty_since = now
                t.polled = now
                drr.empty(name)
                continue
            t.empty_since = None
            drr.took(name)
            return job
        return None

    def dequeue(self, *, timeout: float | None = 0.0) -> Job | None:
        """Take the next job in weighted round-robin order across tenants.

        Args:
            timeout: Seconds to wait (0 = don't, None = forever).

        Returns:
            A job (settle it on this FairQueue), or None.
        """
        t_out = check_timeout(timeout)
        deadline = None if t_out is None else time.monotonic() + t_out
        backoff = 0.001
        with self._cond:
            while True:
                self._check_open()
                job = self._scan()
                if job is not None:
                    return job
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return None
                wait = backoff if deadline is None else min(backoff, deadline - now)
                self._cond.wait(wait)
                backoff = min(backoff * 2, self._core.max_poll)

    def dequeue_many(self, max_jobs: int, *, timeout: float | None = 0.0) -> list[Job]:
        """Take up to ``max_jobs`` jobs in fair order, waiting up to ``timeout`` for the first."""
        if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
            raise InvalidArgument(f"max_jobs must be an int >= 1, not {max_jobs!r}")
        first = self.dequeue(timeout=timeout)
        if first is None:
            return []
        out = [first]
        with self._lock:
            while len(out) < max_jobs and (job := self._scan()) is not None:
                out.append(job)
        return out

    def peek(self) -> Job | None:
        """Not supported: raises UnsupportedOperation."""
        require(Capability(0), Capability.PEEK, driver=self.driver, what="peek()")
        return None  # pragma: no cover

    def ack(self, job: Job) -> None:
        """Ack a job on its tenant's sub-queue."""
        with self._lock:
            q = self._core.sub_for(job)
        q.ack(job)

    def nack(self, job: Job, *, requeue: bool = True, delay: Delay | None = None) -> None:
        """Nack a job on its tenant's sub-queue."""
        with self._lock:
            q = self._core.sub_for(job)
        q.nack(job, requeue=requeue, delay=delay)
        if requeue:
            with self._cond:
                self._core.by_queue[job.queue].empty_since = None  # it has a job again
                self._cond.notify()

    def extend_lease(self, job: Job, seconds: float) -> None:
        """Extend a job's lease on its tenant's sub-queue."""
        with self._lock:
            q = self._core.sub_for(job)
        q.extend_lease(job, seconds)

    def size(self) -> int:
        """Waiting jobs summed over the known tenants."""
        with self._lock:
            self._check_open()
            qs = [t.queue for t in self._core.tenants.values()]
        return sum(q.size() for q in qs)

    def sizes(self) -> dict[str, int]:
        """Waiting jobs per known tenant."""
        with self._lock:
            self._check_open()
            items = [(n, t.queue) for n, t in self._core.tenants.items()]
        return {n: q.size() for n, q in items}

    def purge(self) -> int:
        """Purge every known tenant's sub-queue."""
        with self._lock:
            self._check_open()
            qs = [t.queue for t in self._core.tenants.values()]
        return sum(q.purge() for q in qs)

    def close(self) -> None:
        """Close every sub-queue handle. Idempotent."""
        with self._cond:
            if self._core.closed:
                return
            self._core.closed = True
            qs = [t.queue for t in self._core.tenants.values()]
            self._cond.notify_all()
        for q in qs:
            q.close()

    def __enter__(self) -> Self:
        self._check_open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncFairQueue:
    """The asyncio twin of :class:`FairQueue` (same arguments; sub-queues are AsyncQueues).

    ``template`` may be a URL (opened with ``connect_async``) or a callable returning an open
    :class:`AsyncQueue`. Per-tenant bounds are not built in here; wrap sub-queues yourself.
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
        rate_limit: KeyedLimiter | Mapping[str, RateLimiter] | None = None,
        connect_options: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        self._core: _FairCore[AsyncQueue] = _FairCore(
            template, weights=weights, tenants=tenants, default_weight=default_weight,
            default_tenant=default_tenant, tenant_header=tenant_header, discover=discover,
            discover_interval=discover_interval, idle_ttl=idle_ttl, max_poll=max_poll,
            rate_limit=rate_limit, name=name, empty_recheck=empty_recheck)
        self._opts = dict(connect_options or {})
        self._lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._caps: Capability | None = None
        self._driver: str | None = None
        for t in sorted(self._core._configured):
            self._tenant(t, configured=True)

    def _sync(self) -> tuple[asyncio.Lock, asyncio.Event]:
        # Created on first use so the constructor needs no running loop.
        if self._lock is None or self._wake is None:
            self._lock, self._wake = asyncio.Lock(), asyncio.Event()
        return self._lock, self._wake

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
        if self._caps is None:
            t = self._core.default_tenant or "default"
            self._tenant(t, configured=self._core.default_tenant is not None)
        assert self._caps is not None
        return (self._caps & _PASS) | Capability.BLOCKING_DEQUEUE | Capability.NATIVE_ASYNC

    @property
    def bridged(self) -> bool:
        """Always False."""
        return False

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._core.closed

    def _tenant(self, tenant: str, *, configured: bool = False) -> _Tenant[AsyncQueue]:
        c = self._core
        t = c.tenants.get(tenant)
        if t is not None:
            return t
        q = connect_async(c.url_for(tenant), **self._opts) if isinstance(c.template, str) \
            else c.template(tenant)
        t = c.register(tenant, q, configured=configured)
        if self._caps is None:
            self._caps, self._driver = t.queue.capabilities, t.queue.driver
        return t

    def _check_open(self) -> None:
        if self._core.closed:
            raise QueueClosed(f"{self!r} is closed")

    def __repr__(self) -> str:
        return f"<AsyncFairQueue {self.name!r} tenants={len(self._core.tenants)}>"

    def add_tenant(self, tenant: str, weight: float | None = None) -> None:
        """Make ``tenant`` known permanently."""
        self._check_open()
        if weight is not None:
            self._core.set_weight(check_tenant(tenant), weight)
        self._tenant(check_tenant(tenant), configured=True).configured = True

    def set_weight(self, tenant: str, weight: float) -> None:
        """Change a tenant's weight."""
        self._core.set_weight(tenant, weight)

    @property
    def tenants(self) -> list[str]:
        """Known tenants in scheduling order."""
        return list(self._core.drr.ring)

    def served(self) -> dict[str, int]:
        """Jobs dequeued per tenant so far."""
        return self._core.served()

    def tenant_of(self, job: Job) -> str:
        """The tenant of a dequeued job."""
        return self._core.tenant_of(job)

    async def enqueue(
        self,
        body: bytes,
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        tenant: str | None = None,
    ) -> str:
        """Enqueue a job for a tenant (see :meth:`FairQueue.enqueue`)."""
        if job_id is not None:
            require(Capability(0), Capability.CUSTOM_ID, driver=self.driver,
                    what="enqueue(job_id=...)")
        self._check_open()
        name = self._core.resolve(tenant, headers)
        t = self._tenant(name)
        hdrs = self._core.headers_with(name, headers, t.queue.capabilities)
        jid = await t.queue.enqueue(body, delay=delay, priority=priority, headers=hdrs)
        t.empty_since = None
        self._sync()[1].set()
        return jid

    async def enqueue_many(
        self,
        bodies: Iterable[bytes],
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
        tenant: str | None = None,
    ) -> list[str]:
        """Enqueue several jobs for one tenant."""
        self._check_open()
        name = self._core.resolve(tenant, headers)
        t = self._tenant(name)
        hdrs = self._core.headers_with(name, headers, t.queue.capabilities)
        ids = await t.queue.enqueue_many(bodies, delay=delay, priority=priority, headers=hdrs)
        t.empty_since = None
        self._sync()[1].set()
        return ids

    async def _scan(self) -> Job | None:
        c = self._core
        now = time.monotonic()
        if c.discover is not None and now >= c._next_discover:
            c._next_discover = now + c.discover_interval
            for n in c.discover():
                self._tenant(check_tenant(n))
        for gone in c.forget_idle(now):
            with contextlib.suppress(Exception):
                await gone.queue.aclose()
        drr = c.drr
        drr.begin()
        while (name := drr.candidate()) is not None:
            t = c.tenants[name]
            if t.skip_poll(now, c.empty_recheck):
                drr.empty(name)
                continue
            if c.limited(name):
                drr.skip(name)
                continue
            job = await t.queue.dequeue(timeout=0)
            if job is None:
                if t.empty_since is None:
                    t.empty_since = now
                t.polled = now
                drr.empty(name)
                continue
            t.empty_since = None
            drr.took(name)
            return job
        return None

    async def dequeue(self, *, timeout: float | None = 0.0) -> Job | None:
        """Take the next job in weighted round-robin order (see :meth:`FairQueue.dequeue`)."""
        t_out = check_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if t_out is None else loop.time() + t_out
        lock, wake = self._sync()
        backoff = 0.001
        while True:
            self._check_open()
            wake.clear()
            async with lock:
                job = await self._scan()
            if job is not None:
                return job
            now = loop.time()
            if deadline is not None and now >= deadline:
                return None
            wait = backoff if deadline is None else min(backoff, deadline - now)
            try:
                await asyncio.wait_for(wake.wait(), wait)
            except TimeoutError:
                backoff = min(backoff * 2, self._core.max_poll)

    async def dequeue_many(self, max_jobs: int, *, timeout: float | None = 0.0) -> list[Job]:
        """Take up to ``max_jobs`` jobs in fair order."""
        if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
            raise InvalidArgument(f"max_jobs must be an int >= 1, not {max_jobs!r}")
        first = await self.dequeue(timeout=timeout)
        if first is None:
            return []
        out = [first]
        lock, _ = self._sync()
        async with lock:
            while len(out) < max_jobs and (job := await self._scan()) is not None:
                out.append(job)
        return out

    async def peek(self) -> Job | None:
        """Not supported: raises UnsupportedOperation."""
        require(Capability(0), Capability.PEEK, driver=self.driver, what="peek()")
        return None  # pragma: no cover

    async def ack(self, job: Job) -> None:
        """Ack on the job's sub-queue."""
        await self._core.sub_for(job).ack(job)

    async def nack(self, job: Job, *, requeue: bool = True, delay: Delay | None = None) -> None:
        """Nack on the job's sub-queue."""
        await self._core.sub_for(job).nack(job, requeue=requeue, delay=delay)
        if requeue:
            self._core.by_queue[job.queue].empty_since = None
            self._sync()[1].set()

    async def extend_lease(self, job: Job, seconds: float) -> None:
        """Extend the lease on the job's sub-queue."""
        await self._core.sub_for(job).extend_lease(job, seconds)

    async def size(self) -> int:
        """Waiting jobs summed over the known tenants."""
        self._check_open()
        return sum([await t.queue.size() for t in list(self._core.tenants.values())])

    async def purge(self) -> int:
        """Purge every known tenant's sub-queue."""
        self._check_open()
        return sum([await t.queue.purge() for t in list(self._core.tenants.values())])

    async def aclose(self) -> None:
        """Close every sub-queue. Idempotent."""
        if self._core.closed:
            return
        self._core.closed = True
        for t in list(self._core.tenants.values()):
            await t.queue.aclose()

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

