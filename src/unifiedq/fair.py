"""Fair scheduling across tenants over any driver: weighted deficit round robin.

A :class:`FairQueue` (blocking) or :class:`AsyncFairQueue` (asyncio: the same arguments, verbs
and scheduling, generated from one source) keeps one sub-queue per tenant and dequeues across
the tenants that have backlog by **weighted deficit round robin** (DRR, Shreedhar &
Varghese): each turn a tenant is credited ``weight`` jobs and may take that many before the
next tenant's turn; a tenant found empty loses its credit, so idle tenants cannot save up a
burst. With every tenant backlogged, tenant *i* gets ``weight_i / sum(weights)`` of the
dequeues, whatever their arrival rates; a tenant that floods its own sub-queue only lengthens
its own wait.

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
not configured and stays empty for ``idle_ttl`` seconds is forgotten: its handle is closed and
its :meth:`~FairQueue.served` count and (full) rate-limit bucket dropped, so tenants that come
and go leave nothing behind.
Tenant names are 1..64 characters of ``A-Z a-z 0-9 _ . -`` so they are safe in any URL.

**Server-side scheduling (Redis).** ``scheduler="server"`` on a ``redis://`` template moves
the DRR into Redis: one Lua script picks the tenant over a server-kept ring of backlogged
tenants and leases its job atomically, so every consumer process shares one schedule and a
dequeue costs one round trip whatever the number of known tenants
(``unifiedq.drivers.redis._fair``).

**Local scheduler: fairness is local, not global.** The DRR state (the pointer and deficits)
lives in the process. One consumer process, any number of threads: dequeues are exactly DRR-fair.
Several consumer processes sharing a backend each run their own DRR over the shared sub-queues:
when every tenant is backlogged each process serves every tenant by weight, so the aggregate
is weight-proportional as well; the deviation from exact DRR order is bounded by about one
quantum (``max weight``) per process at any instant, and tenant discovery is per process (a
process only serves tenants it knows). There is no global guarantee for tenants a process does
not know, nor across consumers running at different speeds within a round. The noisy-neighbour
benchmark measures the multi-process case (``benchmarks/noisy_neighbour.py --procs 2``).

Each ``dequeue`` of the local scheduler polls sub-queues with non-blocking dequeues, one
round trip per tenant visited, and visits only the *active* tenants (believed backlogged): a
tenant found empty becomes idle and costs nothing per dequeue until a local enqueue (or, on
``memory://``, any FairQueue of the template in the process: a shared backlog board) marks
it, or a recheck finds it backlogged. Idle tenants are rechecked, least recently polled
first and each at most every ``empty_recheck`` seconds (5 ms), at up to
``idle_recheck_rate`` polls a second (1000) while others are busy, and all of them (in
batches, without waiting) when nothing is backlogged. When every tenant is empty it waits,
woken at once by a local ``enqueue`` and otherwise re-polling with a backoff up to
``max_poll`` seconds.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._capabilities import Capability, require
from ._errors import InvalidArgument, WrongQueue
from ._faces import load_face
from ._job import Job
from .limits import KeyedLimiter, RateLimiter

if TYPE_CHECKING:
    from ._async.fair import AsyncFairQueue
    from ._sync.fair import FairQueue

__all__ = ["TENANT_HEADER", "AsyncFairQueue", "FairQueue", "jain_index"]

#: Header naming a job's tenant (set on every job where the driver has HEADERS).
TENANT_HEADER = "tenant"

_TENANT_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

# What the FairQueue can pass through from its sub-queues. CUSTOM_ID is left out (ids are only
# unique per tenant), PEEK too (a peek across tenants would not match what dequeue takes).
_PASS = (Capability.ACK | Capability.LEASE_EXTEND | Capability.RELEASE | Capability.DELAY
         | Capability.PRIORITY | Capability.BATCH | Capability.HEADERS | Capability.DURABLE
         | Capability.CROSS_PROCESS | Capability.DISTRIBUTED | Capability.BOUNDED
         | Capability.DEADLINE)

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
    """Weighted deficit round robin over the *active* tenants; no I/O, not thread-safe.

    ``ring`` holds the tenants believed backlogged, in DRR order; ``idle`` the known tenants
    last found empty, least recently polled first. A scan only walks the ring, so its cost
    depends on the backlogged tenants, not on how many are known. A tenant leaves the ring
    when it is found empty and comes back through :meth:`activate` (a local enqueue) or
    :meth:`took` (a recheck of an idle tenant found a job).

    One *scan* looks for the next job: :meth:`candidate` names the tenant to try, and the
    caller reports :meth:`took`, :meth:`empty` or :meth:`skip`. A scan ends with a job or when
    every active tenant was tried once.
    """

    def __init__(self) -> None:
        self.ring: list[str] = []
        self.idle: dict[str, None] = {}  # insertion-ordered: least recently polled first
        self.weight: dict[str, float] = {}
        self.deficit: dict[str, float] = {}
        self.served: dict[str, int] = {}
        self.ptr = 0
        self._tried: set[str] = set()

    def add(self, tenant: str, weight: float) -> None:
        if tenant not in self.weight:
            # Unknown state: active until a poll finds it empty.
            self._insert(tenant)
            self.deficit[tenant] = 0.0
            self.served.setdefault(tenant, 0)
        self.weight[tenant] = weight

    def _insert(self, tenant: str) -> None:
        # Tenants join just before the pointer: they get their turn at the end of the
        # current round, not ahead of tenants already waiting.
        self.ring.insert(self.ptr, tenant)
        self.ptr += 1

    def _unlink(self, tenant: str) -> None:
        n = len(self.ring)
        i = self.ptr % n if n and self.ring[self.ptr % n] == tenant else self.ring.index(tenant)
        del self.ring[i]
        if i < self.ptr:
            self.ptr -= 1
        self._tried.discard(tenant)

    def activate(self, tenant: str) -> None:
        """An idle tenant got a job: back into the ring (no-op when active or unknown)."""
        if tenant in self.idle:
            del self.idle[tenant]
            self._insert(tenant)

    def remove(self, tenant: str) -> None:
        if tenant not in self.weight:
            return
        if tenant in self.idle:
            del self.idle[tenant]
        else:
            self._unlink(tenant)
        del self.weight[tenant], self.deficit[tenant]
        self.served.pop(tenant, None)  # tenants that come and go must not pile up here

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
        self.served[tenant] = self.served.get(tenant, 0) + 1
        if tenant in self.idle:
            # A recheck found an idle tenant backlogged: it rejoins at the end of the round
            # (this one job was taken out of turn, a deviation of one job).
            self.activate(tenant)
            return
        self.deficit[tenant] -= 1.0
        if self.deficit[tenant] < 1.0:
            self._advance()

    def empty(self, tenant: str) -> None:
        """Found empty: it leaves the ring (idle tenants keep no credit)."""
        self.deficit[tenant] = 0.0
        if tenant in self.idle:
            del self.idle[tenant]  # re-inserted last: most recently polled
        else:
            self._unlink(tenant)
        self.idle[tenant] = None

    def busy(self, tenant: str) -> None:
        """Found empty, but a local enqueue raced the poll: stays active, tried this scan."""
        self.deficit[tenant] = 0.0
        if tenant in self.idle:
            self.activate(tenant)
        self._tried.add(tenant)

    def skip(self, tenant: str) -> None:
        """Tenant is rate-limited: pass its turn but keep its credit."""
        self._tried.add(tenant)
        self._advance()


class _Board:
    """Backlog marks shared by the FairQueues of one ``memory://`` template in this process.

    A producer marks its tenant after each push; a consumer that finds the tenant empty
    clears the mark only if nobody marked it since its poll began (compare-and-delete), so
    a backlogged tenant is never left unmarked. Consumers read the marks made since their
    last look from a log (trimmed; a consumer that fell behind re-reads every mark), so a
    dequeue learns of new backlog without polling idle tenants.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hot: dict[str, int] = {}  # marked tenant -> marks so far
        self.log: list[str] = []  # tenants in the order they became marked
        self.base = 0  # log position of log[0]

    def mark(self, tenant: str) -> None:
        with self.lock:
            n = self.hot.get(tenant)
            self.hot[tenant] = (n or 0) + 1
            if n is None:
                self.log.append(tenant)
                if len(self.log) > 4096:
                    cut = len(self.log) // 2
                    del self.log[:cut]
                    self.base += cut

    def since(self, cursor: int) -> tuple[int, list[str]]:
        """Tenants marked since log position ``cursor``, and the position to read from next."""
        with self.lock:
            end = self.base + len(self.log)
            if cursor < self.base:
                return end, list(self.hot)
            return end, self.log[cursor - self.base:]

    def cool(self, tenant: str, seen: int | None) -> None:
        """``tenant`` was found empty by a poll that began when it had ``seen`` marks."""
        with self.lock:
            if seen is not None and self.hot.get(tenant) == seen:
                del self.hot[tenant]


_BOARDS: dict[str, _Board] = {}
_BOARDS_LOCK = threading.Lock()


def _board_for(template: object) -> _Board | None:
    """The process-wide board of a ``memory://`` template (None for other drivers)."""
    if not isinstance(template, str) or not template.startswith("memory://"):
        return None
    with _BOARDS_LOCK:
        return _BOARDS.setdefault(template, _Board())


@dataclasses.dataclass(eq=False)
class _Tenant(Generic[Q]):
    name: str
    queue: Q
    configured: bool
    empty_since: float | None = None
    polled: float = 0.0  # monotonic time of the last poll that found it empty
    pushed: int = 0  # jobs enqueued or requeued through this object so far
    pushed_at_poll: int = -1  # ``pushed`` when the last poll that found it empty began

    def push(self) -> None:
        """A job was enqueued or requeued here through this object: poll it on the next scan.

        Counted rather than flagged, so a push that lands while a scan is polling this tenant
        is not overwritten when that poll comes back empty.
        """
        self.empty_since = None
        self.pushed += 1


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
        idle_recheck_rate: float = 1000.0,
        sweep_batch: int = 64,
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
        if not idle_recheck_rate > 0:
            raise InvalidArgument(f"idle_recheck_rate must be > 0, not {idle_recheck_rate!r}")
        self.idle_recheck_rate = float(idle_recheck_rate)
        self.sweep_batch = int(sweep_batch)
        self._sweep_left = 0
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._next_forget = 0.0
        self.board = _board_for(template)
        self._cursor = -1  # a new consumer first reads every current mark
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
        if configured and self.board is not None and tenant not in self.board.hot:
            # The board knows who is backlogged: a declared tenant without a mark starts
            # idle (rechecked like any idle tenant), not with a poll of its own.
            t.empty_since = t.polled = -self.empty_recheck
            self.drr.empty(tenant)
        return t

    def board_news(self) -> list[str]:
        """Read the board's new marks: known tenants become active, unknown ones are returned.

        The caller opens the unknown ones (marked by another FairQueue of the template).
        """
        if self.board is None:
            return []
        self._cursor, names = self.board.since(self._cursor)
        unknown = []
        for n in names:
            if n in self.tenants:
                self.drr.activate(n)
                self.tenants[n].empty_since = None
            else:
                unknown.append(n)
        return unknown

    def snapshot(self, t: _Tenant[Q]) -> tuple[int, int | None]:
        """What :meth:`polled` compares against: local pushes and board marks so far."""
        return t.pushed, (None if self.board is None else self.board.hot.get(t.name))

    def more_due(self, now: float) -> bool:
        """Whether idle tenants are still due for a recheck (a dequeue keeps sweeping)."""
        return self._due_idle(now) is not None

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

    def entry_of(self, job: Job) -> _Tenant[Q]:
        """The tenant entry whose sub-queue ``job`` came from; WrongQueue if none."""
        if not isinstance(job, Job):
            raise InvalidArgument(f"expected a Job returned by dequeue(), not {job!r}")
        t = self.by_queue.get(job.queue)
        if t is None:
            raise WrongQueue(f"job {job.id!r} came from queue {job.queue!r}, which is not a "
                             f"sub-queue of this FairQueue")
        return t

    def tenant_of(self, job: Job) -> str:
        return self.entry_of(job).name

    def sub_for(self, job: Job) -> Q:
        return self.entry_of(job).queue

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

    def discovered(self, now: float) -> tuple[str, ...]:
        """Tenant names from ``discover`` when a call is due (checked), else none."""
        if self.discover is None or now < self._next_discover:
            return ()
        self._next_discover = now + self.discover_interval
        return tuple(check_tenant(n) for n in self.discover())

    def begin(self, now: float) -> _Tenant[Q] | None:
        """Start a scan; return the first tenant to poll, or None.

        While other tenants keep the ring busy, idle tenants due for a recheck are polled
        first, at most ``idle_recheck_rate`` a second in all (a token bucket holding up to
        ``sweep_batch``): that is how a job enqueued for an idle tenant by someone else
        (another process, a sub-queue handle) is found, at a cost bounded per second rather
        than per known tenant. With few idle tenants every one is rechecked on each scan
        once its ``empty_recheck`` ran out.
        """
        self.drr.begin()
        self._sweep_left = self.sweep_batch
        self._tokens = min(float(self.sweep_batch),
                           self._tokens + (now - self._tokens_at) * self.idle_recheck_rate)
        self._tokens_at = now
        return self.next_to_poll(now)

    def _due_idle(self, now: float) -> _Tenant[Q] | None:
        """The least recently polled idle tenant, if its ``empty_recheck`` ran out."""
        for name in self.drr.idle:
            t = self.tenants[name]
            return t if now - t.polled >= self.empty_recheck else None
        return None

    def next_to_poll(self, now: float) -> _Tenant[Q] | None:
        """The next tenant of the current scan to poll, in DRR order; None when all were tried.

        Rate-limited tenants pass their turn here without a round trip. Once every active
        tenant was tried, idle tenants due for a recheck follow (``sweep_batch`` at most per
        scan), so a dequeue that finds nothing local still finds jobs enqueued elsewhere.
        """
        drr = self.drr
        if drr.ring and self._tokens >= 1.0:
            t = self._due_idle(now)
            if t is not None:
                self._tokens -= 1.0
                return t
        while (name := drr.candidate()) is not None:
            if self.limited(name):
                drr.skip(name)
            else:
                return self.tenants[name]
        if self._sweep_left > 0:
            t = self._due_idle(now)
            if t is not None:
                self._sweep_left -= 1
                return t
        return None

    def pushed(self, t: _Tenant[Q]) -> None:
        """A job was enqueued or requeued for ``t`` through this object: make it active."""
        t.push()
        self.drr.activate(t.name)
        if self.board is not None:
            self.board.mark(t.name)

    def polled(self, t: _Tenant[Q], found: bool, now: float,
               snap: tuple[int, int | None]) -> None:
        """Record a poll of ``t`` that began at :meth:`snapshot` ``snap``."""
        if t.name not in self.tenants:
            return  # forgotten meanwhile
        if found:
            t.empty_since = None
            self.drr.took(t.name)
            return
        pushed, marks = snap
        if self.board is not None:
            self.board.cool(t.name, marks)
        if t.pushed != pushed:
            # A local enqueue landed while this poll looked: the tenant is not empty.
            self.drr.busy(t.name)
            return
        if t.empty_since is None:
            t.empty_since = now
        t.polled = now
        t.pushed_at_poll = pushed
        self.drr.empty(t.name)

    def forget_idle(self, now: float) -> list[_Tenant[Q]]:
        if self.idle_ttl is None or now < self._next_forget:
            return []
        # Once per interval, not per scan: a scan must not cost O(known tenants).
        self._next_forget = now + min(1.0, self.idle_ttl / 10)
        gone = [t for t in (self.tenants[n] for n in self.drr.idle) if not t.configured
                and t.empty_since is not None and now - t.empty_since >= self.idle_ttl]
        for t in gone:
            del self.tenants[t.name]
            self.by_queue.pop(t.queue.name, None)  # type: ignore[attr-defined]
            self.drr.remove(t.name)
            if isinstance(self.rate_limit, KeyedLimiter):
                self.rate_limit._forget(t.name)
        return gone

    def served(self) -> dict[str, int]:
        return dict(self.drr.served)


# The two faces live in _async/fair.py (the source) and _sync/fair.py (generated) and import
# the names above, so they are loaded on first use instead of imported here.
_FACES = {"AsyncFairQueue": "._async.fair", "FairQueue": "._sync.fair"}


def __getattr__(name: str) -> Any:
    return load_face(globals(), name, _FACES)
