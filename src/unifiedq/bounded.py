"""Bounded queues with overflow policies over any driver; every shed job is counted.

:class:`BoundedQueue` wraps a queue and caps it at ``maxsize`` jobs. When a job does not fit,
its ``overflow`` policy decides:

``reject``
    raise :class:`~unifiedq.QueueFull` (the producer is told; nothing was enqueued).
``block``
    wait up to ``timeout`` seconds for room, then raise QueueFull.
``drop_oldest``
    take the job at the head of the queue and discard it (``ack``), then enqueue the new one.
``spill``
    enqueue the job on another queue (``spill=URL``) instead; nothing is lost.

Every shed job (rejected, timed out, dropped, spilled) is counted in :attr:`BoundedQueue.shed`,
reported to ``metrics`` (``unifiedq_jobs_shed_total{policy=...}``), logged, and passed to the
``on_shed`` callback, so load shedding is never silent.

Use it per queue (wrap one queue) or per tenant (``FairQueue(maxsize_per_tenant=...)``).

**Atomicity, honestly.** How tight the bound is depends on the backend:

* Drivers with ``Capability.BOUNDED`` enforce ``maxsize`` themselves, atomically, when the
  BoundedQueue opens them from a URL (it passes ``maxsize=``): ``memory://`` does, under its
  lock, for every thread of the process. Concurrent producers cannot overshoot; what counts is
  the driver's notion of size (memory: waiting + delayed + leased jobs).
* Every other driver gets a client-side check-then-enqueue on ``size()`` (waiting jobs),
  serialised by a lock inside this object, so threads sharing one BoundedQueue cannot
  overshoot either. Producers in **other processes** (or other BoundedQueue objects) can race:
  each passes the check before the others' enqueues land, so the queue may exceed ``maxsize``
  by up to (number of concurrent producers - 1). ``drop_oldest`` is likewise best-effort
  there. For a hard cross-process bound use a backend that enforces it (RabbitMQ's
  ``x-max-length``, shm's fixed ring) or a single producer process.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, Self

from ._capabilities import Capability
from ._connect import connect
from ._errors import InvalidArgument, InvalidURL, QueueFull
from ._job import Job
from ._protocol import Delay, Queue
from .metrics import Metrics, NullMetrics

__all__ = ["BoundedQueue", "Overflow", "ShedEvent"]

log = logging.getLogger("unifiedq.bounded")
log.addHandler(logging.NullHandler())

Overflow = Literal["block", "reject", "drop_oldest", "spill"]
_POLICIES = ("block", "reject", "drop_oldest", "spill")


@dataclasses.dataclass(frozen=True, slots=True)
class ShedEvent:
    """A job the bound turned away or dropped.

    Attributes:
        policy: ``reject``, ``block`` (timed out), ``drop_oldest`` or ``spill``.
        queue: The bounded queue's name.
        count: Jobs affected by this event.
        job: The dropped job (``drop_oldest``), else None.
        spilled_ids: Ids on the spill queue (``spill``).
    """

    policy: str
    queue: str
    count: int
    job: Job | None = None
    spilled_ids: tuple[str, ...] = ()


class BoundedQueue:
    """A :class:`~unifiedq.Queue` capped at ``maxsize`` jobs, with an overflow policy.

    Args:
        source: A queue URL (opened here; with BOUNDED drivers the bound is native) or an
            open Queue (client-side bound).
        maxsize: The cap (>= 1).
        overflow: ``reject`` | ``block`` | ``drop_oldest`` | ``spill``.
        timeout: Longest wait of ``block`` (None = forever).
        spill: URL or Queue receiving overflow under ``spill``.
        on_shed: Called with a :class:`ShedEvent` for every shed.
        metrics: Where shed counts are reported.
        connect_options: Options for ``connect()`` of ``source``.
    """

    def __init__(
        self,
        source: str | Queue,
        maxsize: int,
        *,
        overflow: Overflow = "reject",
        timeout: float | None = None,
        spill: str | Queue | None = None,
        on_shed: Callable[[ShedEvent], None] | None = None,
        metrics: Metrics | None = None,
        connect_options: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise InvalidArgument(f"maxsize must be an int >= 1, not {maxsize!r}")
        if overflow not in _POLICIES:
            raise InvalidArgument(f"overflow must be one of {', '.join(_POLICIES)}, "
                                  f"not {overflow!r}")
        if overflow == "spill" and spill is None:
            raise InvalidArgument("overflow='spill' needs spill=<URL or Queue>")
        if timeout is not None and (isinstance(timeout, bool) or timeout < 0):
            raise InvalidArgument(f"timeout must be >= 0 or None, not {timeout!r}")
        self.maxsize = maxsize
        self.overflow: Overflow = overflow
        self.timeout = timeout
        self.on_shed = on_shed
        self.metrics = metrics or NullMetrics()
        self.native = False
        opts = dict(connect_options or {})
        self._owns = isinstance(source, str)
        if isinstance(source, str):
            self.inner = self._open(source, opts)
        elif isinstance(source, Queue):
            self.inner = source
        else:
            raise InvalidArgument(f"source must be a URL or a Queue, not {source!r}")
        self._spill: Queue | None = None
        self._owns_spill = isinstance(spill, str)
        if isinstance(spill, str):
            self._spill = connect(spill)
        elif spill is not None:
            self._spill = spill
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.shed: dict[str, int] = dict.fromkeys(_POLICIES, 0)
        self.accepted = 0

    def _open(self, url: str, opts: dict[str, Any]) -> Queue:
        q = connect(url, **opts)
        if Capability.BOUNDED in q.capabilities and "maxsize" not in opts:
            # Let the backend enforce the bound atomically where it can take one.
            try:
                native = connect(url, **{**opts, "maxsize": self.maxsize})
            except InvalidURL:
                return q
            q.close()
            self.native = True
            return native
        return q

    # -- Queue protocol ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The wrapped queue's name (jobs dequeued here are settled on it)."""
        return self.inner.name

    @property
    def driver(self) -> str:
        """The wrapped queue's driver."""
        return self.inner.driver

    @property
    def capabilities(self) -> Capability:
        """The wrapped queue's capabilities plus BOUNDED."""
        return self.inner.capabilities | Capability.BOUNDED

    @property
    def bridged(self) -> bool:
        """Whether the wrapped queue is bridged."""
        return self.inner.bridged

    @property
    def closed(self) -> bool:
        """Whether the wrapped queue is closed."""
        return self.inner.closed

    @property
    def atomic(self) -> bool:
        """True when the backend itself enforces the bound (see the module docs)."""
        return self.native

    def __repr__(self) -> str:
        return (f"<BoundedQueue {self.inner!r} maxsize={self.maxsize} "
                f"overflow={self.overflow} {'native' if self.native else 'client-side'}>")

    def stats(self) -> dict[str, int]:
        """Accepted jobs and shed jobs per policy."""
        with self._stats_lock:
            return {"accepted": self.accepted, **self.shed}

    def _report(self, ev: ShedEvent) -> None:
        with self._stats_lock:
            self.shed[ev.policy] += ev.count
        self.metrics.shed(self.name, self.driver, ev.policy, ev.count)
        log.warning("bounded queue %r shed %d job(s) (%s)", self.name, ev.count, ev.policy,
                    extra={"event": "shed", "queue": self.name, "driver": self.driver,
                           "policy": ev.policy, "count": ev.count})
        if self.on_shed is not None:
            try:
                self.on_shed(ev)
            except Exception:
                log.exception("on_shed callback raised")

    def _fits(self, n: int) -> bool:
        return self.inner.size() + n <= self.maxsize

    def _put(self, n: int, do: Callable[[Queue], list[str]]) -> list[str]:
        """Enqueue ``n`` jobs via ``do`` under the bound, applying the overflow policy."""
        if n > self.maxsize:
            self._report(ShedEvent("reject", self.name, n))
            raise QueueFull(f"{n} jobs can never fit in a queue bounded at {self.maxsize}")
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        backoff = 0.001
        while True:
            with self._lock:
                if self.native or self._fits(n):
                    try:
                        ids = do(self.inner)
                    except QueueFull:
                        pass  # native bound said no: apply the policy below
                    else:
                        with self._stats_lock:
                            self.accepted += n
                        return ids
                pol = self.overflow
                if pol == "reject":
                    self._report(ShedEvent("reject", self.name, n))
                    raise QueueFull(f"queue {self.name!r} is full ({self.maxsize} jobs)")
                if pol == "spill":
                    assert self._spill is not None
                    ids = do(self._spill)
                    self._report(ShedEvent("spill", self.name, n, spilled_ids=tuple(ids)))
                    return ids
                if pol == "drop_oldest":
                    if self._drop_one():
                        continue
                    # Nothing waiting to drop (all leased): the new job cannot get in.
                    self._report(ShedEvent("reject", self.name, n))
                    raise QueueFull(f"queue {self.name!r} is full of leased jobs; "
                                    "nothing to drop")
            # block: wait for room outside the lock
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self._report(ShedEvent("block", self.name, n))
                raise QueueFull(f"queue {self.name!r} stayed full for {self.timeout}s")
            time.sleep(backoff if deadline is None else min(backoff, deadline - now))
            backoff = min(backoff * 2, 0.05)

    def _drop_one(self) -> bool:
        job = self.inner.dequeue(timeout=0)
        if job is None:
            return False
        if Capability.ACK in self.inner.capabilities:
            self.inner.ack(job)  # discarded on purpose, and reported below
        self._report(ShedEvent("drop_oldest", self.name, 1, job=job))
        return True

    def enqueue(
        self,
        body: bytes,
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Enqueue under the bound; on overflow apply the policy.

        Raises:
            QueueFull: ``reject``, ``block`` after its timeout, or nothing left to drop.
        """
        def do(q: Queue) -> list[str]:
            return [q.enqueue(body, delay=delay, priority=priority, job_id=job_id,
                              headers=headers)]
        return self._put(1, do)[0]

    def enqueue_many(
        self,
        bodies: Iterable[bytes],
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Enqueue several jobs all-or-nothing under the bound."""
        items = list(bodies)
        if not items:
            return []

        def do(q: Queue) -> list[str]:
            return q.enqueue_many(items, delay=delay, priority=priority, headers=headers)
        return self._put(len(items), do)

    def dequeue(self, *, timeout: float | None = 0.0) -> Job | None:
        """Dequeue from the wrapped queue."""
        return self.inner.dequeue(timeout=timeout)

    def dequeue_many(self, max_jobs: int, *, timeout: float | None = 0.0) -> list[Job]:
        """Dequeue several from the wrapped queue."""
        return self.inner.dequeue_many(max_jobs, timeout=timeout)

    def peek(self) -> Job | None:
        """Peek the wrapped queue."""
        return self.inner.peek()

    def ack(self, job: Job) -> None:
        """Ack on the wrapped queue."""
        self.inner.ack(job)

    def nack(self, job: Job, *, requeue: bool = True, delay: Delay | None = None) -> None:
        """Nack on the wrapped queue (a requeued job may briefly exceed a client-side bound)."""
        self.inner.nack(job, requeue=requeue, delay=delay)

    def extend_lease(self, job: Job, seconds: float) -> None:
        """Extend a lease on the wrapped queue."""
        self.inner.extend_lease(job, seconds)

    def size(self) -> int:
        """Waiting jobs in the wrapped queue."""
        return self.inner.size()

    def purge(self) -> int:
        """Purge the wrapped queue."""
        return self.inner.purge()

    def close(self) -> None:
        """Close the queues this object opened."""
        if self._owns:
            self.inner.close()
        if self._spill is not None and self._owns_spill:
            self._spill.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
