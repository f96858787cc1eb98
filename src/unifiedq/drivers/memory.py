"""In-process reference driver: every verb, no dependencies.

Features: leases with a visibility timeout and redelivery, delays, priorities (0..9, higher
first; no priority counts as 0), batches, blocking dequeue, caller-chosen ids, headers, and an
optional bound with :class:`~unifiedq.QueueFull`. Thread-safe. Not durable and not shared
between processes: a queue lives as long as the process.

Connection string::

    memory://<queue name>?maxsize=1000&visibility_timeout=30&max_body=1048576

Handles opened with the same name in one process share one queue. Closing a handle returns
the jobs it still holds to the queue at once (as if they had been nacked), so nothing is lost.
A queue with no open handle and no job is forgotten, so short-lived names (a fair queue's
tenants) cost nothing once they are done.

Memory: a settled job leaves nothing behind. Its entry goes at once; the lease heap drops
entries lazily (a settled or extended lease leaves a stale heap item), and is compacted as
soon as stale items outnumber live leases by more than ``_COMPACT_SLACK``, so it stays within
``2 x leased jobs + _COMPACT_SLACK`` items, at amortised O(1) extra work per verb.

This module is the one to copy when writing a driver: one store, one lock, the underscore
methods of :class:`~unifiedq.QueueBase`, and a ``from_url`` that parses typed options.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
import time
from collections.abc import Mapping
from typing import Self

from .._base import QueueBase
from .._capabilities import Capability
from .._checks import not_leased_many
from .._errors import DuplicateJob, InvalidURL, JobNotLeased, QueueFull
from .._job import EnqueueRequest, Job
from .._url import URL, parse_options
from ..results import MemoryResultStore

__all__ = ["MemoryOptions", "MemoryQueue", "reset"]


@dataclasses.dataclass(frozen=True, slots=True)
class MemoryOptions:
    """Options of ``memory://`` URLs.

    Attributes:
        maxsize: Most jobs held at once (waiting, delayed and leased); None = unbounded.
        visibility_timeout: Seconds a dequeued job stays leased before it is redelivered.
        max_body: Largest body accepted, in bytes; None = unlimited.
    """

    maxsize: int | None = None
    visibility_timeout: float = 30.0
    max_body: int | None = None

    def __post_init__(self) -> None:
        if self.maxsize is not None and self.maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, not {self.maxsize}")
        if not self.visibility_timeout > 0:
            raise ValueError(f"visibility_timeout must be > 0, not {self.visibility_timeout}")
        if self.max_body is not None and self.max_body < 0:
            raise ValueError(f"max_body must be >= 0, not {self.max_body}")


@dataclasses.dataclass(slots=True)
class _Entry:
    id: str
    body: bytes
    priority: int | None
    headers: Mapping[str, str]
    enqueued_at: float
    seq: int
    deliveries: int = 0
    token: int = 0  # the current lease's token; 0 = not leased
    deadline: float = 0.0  # monotonic time the current lease ends
    holder: dict[int, str] | None = None  # the leasing handle's token -> id map
    expires: float | None = None  # Job.deadline (Unix seconds)
    run_timeout: float | None = None  # Job.timeout


# Stale lease-heap items tolerated beyond the live leases before a compaction: small enough
# to bound memory (a few hundred KB), large enough that a compaction is rare and cheap.
_COMPACT_SLACK = 1024


class _Store:
    """One named queue: the state every handle with that name shares."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.entries: dict[str, _Entry] = {}
        self.ready: list[tuple[int, int, str]] = []  # (-priority, seq, id)
        self.delayed: list[tuple[float, int, str]] = []  # (due, seq, id)
        self.leases: list[tuple[float, int, str]] = []  # (deadline, token, id); lazy deletion
        self.leased = 0  # entries with a lease (token != 0)
        self.paused = False  # pause(): _take hands out nothing until resume()
        self.refs = 0  # open handles (guarded by _stores_lock)
        self.seq = itertools.count()
        self.tokens = itertools.count(1)

    def push_ready(self, e: _Entry) -> None:
        heapq.heappush(self.ready, (-(e.priority or 0), e.seq, e.id))

    def _live(self, item: tuple[float, int, str]) -> bool:
        """Whether a lease-heap item is its entry's current lease (else it is stale)."""
        e = self.entries.get(item[2])
        return e is not None and e.token == item[1] and e.deadline == item[0]

    def expire_leases(self, mono: float) -> float | None:
        """Return expired leases to ready; return when the next lease ends (monotonic)."""
        while self.leases and self.leases[0][0] <= mono:
            item = heapq.heappop(self.leases)
            # Stale heap entries (acked, redelivered or extended since) are skipped.
            if self._live(item):
                e = self.entries[item[2]]
                self.unlease(e)
                self.push_ready(e)
        return self.leases[0][0] if self.leases else None

    def lease(self, e: _Entry, seconds: float) -> None:
        """Start a lease (``e.token`` set) or extend one (then call :meth:`compact`)."""
        e.deadline = time.monotonic() + seconds
        heapq.heappush(self.leases, (e.deadline, e.token, e.id))

    def unlease(self, e: _Entry) -> None:
        """End ``e``'s lease (settled, released, expired or given back at close)."""
        if e.holder is not None:
            e.holder.pop(e.token, None)
        e.token = 0
        self.leased -= 1
        # Its heap item is stale now. Without compaction every settled job left one (and its
        # id) behind until its visibility timeout passed: memory grew as rate x timeout at
        # peak (issue 20).
        if len(self.leases) > 2 * self.leased + _COMPACT_SLACK:
            self.compact()

    def compact(self) -> None:
        """Drop stale lease-heap items once they outnumber live leases by the slack.

        Each stale item is dropped by exactly one compaction, and one runs only when at least
        half the heap is stale, so the cost is amortised O(1) per verb.
        """
        if len(self.leases) <= 2 * self.leased + _COMPACT_SLACK:
            return
        if not self.leased:
            self.leases = []  # all stale: nothing to look at (a fast producer-consumer loop)
        else:
            get = self.entries.get  # _live() inlined: this loop is the whole cost
            self.leases = [it for it in self.leases if (e := get(it[2])) is not None
                           and e.token == it[1] and e.deadline == it[0]]
            heapq.heapify(self.leases)

    def waiting(self) -> int:
        return len(self.entries) - self.leased


_stores_lock = threading.Lock()
_stores: dict[str, _Store] = {}


def _store(name: str) -> _Store:
    with _stores_lock:
        s = _stores.setdefault(name, _Store())
        s.refs += 1
        return s


def _unref(name: str, s: _Store) -> None:
    """A handle of ``s`` closed: forget the queue if it was the last one and nothing is left.

    No other handle exists then, so nothing can add a job meanwhile; a handle opened later
    starts a fresh (equally empty) queue.
    """
    with _stores_lock:
        s.refs -= 1
        if s.refs <= 0 and not s.entries and not s.paused and _stores.get(name) is s:
            del _stores[name]


def reset() -> None:
    """Forget every memory queue of this process, as a restart would (used by tests)."""
    with _stores_lock:
        _stores.clear()


class MemoryQueue(QueueBase):
    """A thread-safe in-process queue."""

    driver = "memory"
    capabilities = (
        Capability.PEEK | Capability.ACK | Capability.LEASE_EXTEND | Capability.DELAY
        | Capability.PRIORITY | Capability.BATCH | Capability.BLOCKING_DEQUEUE
        | Capability.CUSTOM_ID | Capability.HEADERS | Capability.BOUNDED
        | Capability.RELEASE | Capability.PAUSE | Capability.RESULT | Capability.DEADLINE
        | Capability.NATIVE_SYNC
    )

    def __init__(self, name: str, options: MemoryOptions, url: URL | None = None) -> None:
        super().__init__(name, url)
        self.options = options
        self.max_body = options.max_body
        self._s = _store(name)
        self._held: dict[int, str] = {}  # token -> id of jobs this handle leased
        # Results (RESULT) of every memory queue of this process, keyed by queue name; a
        # results= option replaces it (see unifiedq.results).
        self._results = MemoryResultStore.named("\x00memory-driver")

    @classmethod
    def from_url(cls, url: URL, options: Mapping[str, object]) -> Self:
        """Build a handle from ``memory://<name>?...``."""
        if url.username or url.password or url.path:
            raise InvalidURL(f"memory:// URLs take only a queue name, e.g. 'memory://jobs', "
                             f"not {url.redacted()!r}")
        name = url.authority or "default"
        return cls(name, parse_options(MemoryOptions, url.query, options, driver="memory"), url)

    def _add(self, req: EnqueueRequest, now: float) -> str:
        s = self._s
        if req.job_id in s.entries:
            raise DuplicateJob(f"job id {req.job_id!r} already exists in queue {self.name!r}")
        e = _Entry(req.job_id, req.body, req.priority, req.headers, now, next(s.seq))
        if req.deadline is not None or req.timeout is not None:
            e.expires, e.run_timeout = req.deadline, req.timeout
        s.entries[e.id] = e
        if req.delay > 0:
            heapq.heappush(s.delayed, (now + req.delay, e.seq, e.id))
        else:
            s.push_ready(e)
        return e.id

    def _check_room(self, n: int) -> None:
        limit = self.options.maxsize
        if limit is not None and len(self._s.entries) + n > limit:
            raise QueueFull(
                f"memory queue {self.name!r} holds {len(self._s.entries)} of at most {limit} "
                f"jobs; cannot add {n}"
            )

    def _enqueue(self, req: EnqueueRequest) -> str:
        with self._s.cond:
            self._check_room(1)
            jid = self._add(req, time.time())
            self._s.cond.notify()
        return jid

    def _enqueue_many(self, reqs: list[EnqueueRequest]) -> list[str]:
        with self._s.cond:
            self._check_room(len(reqs))
            ids = {r.job_id for r in reqs}
            if len(ids) < len(reqs) or ids & self._s.entries.keys():
                raise DuplicateJob("enqueue_many() got a job id that already exists")
            now = time.time()
            out = [self._add(r, now) for r in reqs]
            self._s.cond.notify(len(out))
        return out

    def _take(self) -> Job | None:
        s = self._s
        if s.paused:
            return None
        while s.ready:
            _, _, jid = heapq.heappop(s.ready)
            e = s.entries.get(jid)
            if e is None or e.token:  # purged or acked since it was pushed
                continue
            e.deliveries += 1
            e.token = next(s.tokens)
            s.leased += 1
            s.lease(e, self.options.visibility_timeout)
            self._held[e.token] = e.id
            e.holder = self._held
            return self._job(e, receipt=e.token)
        return None

    def _job(self, e: _Entry, receipt: int | None) -> Job:
        return Job(e.id, self.name, e.body, max(e.deliveries, 1), e.enqueued_at, e.headers,
                   e.priority, receipt, e.expires, e.run_timeout)

    def _dequeue(self, timeout: float | None) -> Job | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._s.cond:
            if self._closed:  # e.g. a bridge's next wait slice: a closed handle takes nothing
                self._check_open()
            while True:
                nxt = self._promote()
                job = self._take()
                if job is not None:
                    return job
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return None
                waits = [t - now for t in (deadline, nxt) if t is not None]
                self._s.cond.wait(max(0.0, min(waits)) if waits else None)
                self._check_open()

    def _promote(self) -> float | None:
        # Delays are kept on the wall clock (enqueue time + delay), leases on the monotonic one;
        # convert the next delayed due time to monotonic for waiting.
        s, wall, mono = self._s, time.time(), time.monotonic()
        while s.delayed and s.delayed[0][0] <= wall:
            _, _, jid = heapq.heappop(s.delayed)
            if jid in s.entries:
                s.push_ready(s.entries[jid])
        nxt_lease = s.expire_leases(mono)
        nxt_delay = s.delayed[0][0] - wall + mono if s.delayed else None
        cands = [t for t in (nxt_lease, nxt_delay) if t is not None]
        return min(cands) if cands else None

    def _dequeue_many(self, max_jobs: int, timeout: float | None) -> list[Job]:
        first = self._dequeue(timeout)
        if first is None:
            return []
        out = [first]
        with self._s.cond:
            while len(out) < max_jobs and (job := self._take()) is not None:
                out.append(job)
        return out

    def _pause(self) -> None:
        with self._s.cond:
            self._s.paused = True

    def _resume(self) -> None:
        with self._s.cond:
            self._s.paused = False
            self._s.cond.notify_all()  # waiting consumers take what is ready now

    def _is_paused(self) -> bool:
        return self._s.paused

    def _peek(self) -> Job | None:
        with self._s.cond:
            self._promote()
            ready, entries = self._s.ready, self._s.entries
            # Drop stale tops (purged or acked) so the heap's head is the next job: O(log n).
            while ready and (ready[0][2] not in entries or entries[ready[0][2]].token):
                heapq.heappop(ready)
            return self._job(entries[ready[0][2]], receipt=None) if ready else None

    def _leased(self, job: Job) -> _Entry:
        e = self._s.entries.get(job.id)
        if e is None or not e.token or e.token != job.receipt:
            raise JobNotLeased(
                f"job {job.id!r} is not leased by this delivery: it was already acked or "
                f"nacked, or its lease expired and it was handed out again"
            )
        return e

    def _ack(self, job: Job) -> None:
        with self._s.cond:
            self._promote()  # an expired lease must not be ackable
            self._settle_done(self._leased(job))
            self._s.cond.notify()

    def _ack_many(self, jobs: list[Job]) -> None:
        # One lock acquisition for the batch (the Worker's settle path).
        lost: list[str] = []
        with self._s.cond:
            self._promote()
            for job in jobs:
                try:
                    self._settle_done(self._leased(job))
                except JobNotLeased:
                    lost.append(job.id)
            self._s.cond.notify(len(jobs))
        if lost:
            raise not_leased_many(lost, len(jobs))

    def _settle_done(self, e: _Entry) -> None:
        s = self._s
        # s.unlease(e), inlined on this hottest settle path.
        if e.holder is not None:
            e.holder.pop(e.token, None)
        s.leased -= 1
        del s.entries[e.id]
        if len(s.leases) > 2 * s.leased + _COMPACT_SLACK:
            s.compact()

    def _nack(self, job: Job, requeue: bool, delay: float) -> None:
        with self._s.cond:
            self._promote()
            e = self._leased(job)
            self._s.unlease(e)
            if not requeue:
                del self._s.entries[e.id]  # no dead-letter store in memory: dropped
            elif delay > 0:
                heapq.heappush(self._s.delayed, (time.time() + delay, e.seq, e.id))
            else:
                self._s.push_ready(e)  # keeps its sequence number: back at the front
            self._s.cond.notify()

    def _release(self, job: Job) -> None:
        with self._s.cond:
            self._promote()
            e = self._leased(job)
            self._s.unlease(e)
            e.deliveries -= 1  # not consumed: the next delivery has this one's attempt number
            self._s.push_ready(e)  # keeps its sequence number: back at the front
            self._s.cond.notify()

    def _extend_lease(self, job: Job, seconds: float) -> None:
        with self._s.cond:
            self._promote()
            self._s.lease(self._leased(job), seconds)
            self._s.compact()  # the lease's previous heap item is stale now

    def _size(self) -> int:
        with self._s.cond:
            self._promote()
            return self._s.waiting()

    def _purge(self) -> int:
        with self._s.cond:
            self._promote()
            s = self._s
            gone = [jid for jid, e in s.entries.items() if not e.token]
            for jid in gone:
                del s.entries[jid]
            # Only leased jobs are left, and a leased job is in neither heap: drop the
            # purged jobs' items now rather than keep them until dequeues pop them.
            s.ready.clear()
            s.delayed.clear()
            s.cond.notify_all()
            return len(gone)

    def _close(self) -> None:
        s = self._s
        with s.cond:
            for token, jid in list(self._held.items()):
                e = s.entries.get(jid)
                if e is not None and e.token == token:
                    s.unlease(e)
                    s.push_ready(e)
            self._held.clear()
            s.cond.notify_all()
        _unref(self.name, s)


sync_class = MemoryQueue
async_class = None
