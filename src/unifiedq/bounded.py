"""Bounded queues with overflow policies over any driver; every shed job is counted.

:class:`BoundedQueue` (blocking) and :class:`AsyncBoundedQueue` (asyncio, same arguments and
behaviour) wrap a queue and cap it at ``maxsize`` jobs. When a job does not fit, its
``overflow`` policy decides:

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
* ``redis://`` (from a URL or an open handle) gets an atomic bound too: one Lua script
  counts the queue's jobs (every priority level: pending + scheduled + retry + active, i.e.
  waiting, delayed and leased, as memory counts them) and pushes the job or batch only if
  it fits, so producers in any number of processes cannot overshoot
  (``unifiedq.drivers.redis._bound``). Jobs pushed by producers that bypass the
  BoundedQueue (plain handles, Go asynq clients) still count but are not refused.
* Every other driver gets a client-side check-then-enqueue on ``size()`` (waiting jobs),
  serialised by a lock inside this object, so threads (or tasks) sharing one BoundedQueue
  cannot overshoot either. Producers in **other processes** (or other BoundedQueue objects)
  can race: each passes the check before the others' enqueues land, so the queue may exceed
  ``maxsize`` by up to (number of concurrent producers - 1). ``drop_oldest`` is likewise
  best-effort there. For a hard cross-process bound use a backend that enforces it
  (RabbitMQ's ``x-max-length``, shm's fixed ring) or a single producer process.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from ._capabilities import Capability
from ._errors import InvalidArgument, QueueFull
from ._faces import load_face
from ._job import Job
from ._protocol import AsyncQueue, Queue
from ._registry import get_driver
from ._url import parse_url
from .metrics import Metrics, NullMetrics

if TYPE_CHECKING:
    from ._async.bounded import AsyncBoundedQueue
    from ._sync.bounded import BoundedQueue

__all__ = ["AsyncBoundedQueue", "BoundedQueue", "Overflow", "ShedEvent"]

log = logging.getLogger("unifiedq.bounded")
log.addHandler(logging.NullHandler())

Overflow = Literal["block", "reject", "drop_oldest", "spill"]
_POLICIES = ("block", "reject", "drop_oldest", "spill")

#: One enqueue under the bound, run on the wrapped queue or on the spill queue (one per face).
AsyncSend = Callable[[AsyncQueue], Awaitable[list[str]]]
SyncSend = Callable[[Queue], list[str]]


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


def declares_bound(url: str) -> bool:
    """Whether the driver serving ``url`` declares BOUNDED (it can take ``maxsize=``).

    Looks at the driver's classes only: no handle is opened.
    """
    drv = get_driver(parse_url(url).scheme)
    return any(cls is not None and Capability.BOUNDED in cls.capabilities
               for cls in (drv.sync_class, drv.async_class))


class _BoundedState:
    """What both faces of a bounded queue share: arguments, counts, shed reports; no I/O."""

    def __init__(self, maxsize: int, overflow: Overflow, timeout: float | None,
                 has_spill: bool, on_shed: Callable[[ShedEvent], None] | None,
                 metrics: Metrics | None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise InvalidArgument(f"maxsize must be an int >= 1, not {maxsize!r}")
        if overflow not in _POLICIES:
            raise InvalidArgument(f"overflow must be one of {', '.join(_POLICIES)}, "
                                  f"not {overflow!r}")
        if overflow == "spill" and not has_spill:
            raise InvalidArgument("overflow='spill' needs spill=<URL or Queue>")
        if timeout is not None and (isinstance(timeout, bool) or timeout < 0):
            raise InvalidArgument(f"timeout must be >= 0 or None, not {timeout!r}")
        self.maxsize = maxsize
        self.overflow: Overflow = overflow
        self.timeout = timeout
        self.on_shed = on_shed
        self.metrics = metrics or NullMetrics()
        self.native = False
        self._stats_lock = threading.Lock()
        self.shed: dict[str, int] = dict.fromkeys(_POLICIES, 0)
        self.accepted = 0

    @property
    def name(self) -> str:
        """The wrapped queue's name (set by each face)."""
        raise NotImplementedError

    @property
    def driver(self) -> str:
        """The wrapped queue's driver (set by each face)."""
        raise NotImplementedError

    @property
    def atomic(self) -> bool:
        """True when the backend itself enforces the bound (see the module docs)."""
        return self.native

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

    def _rejected(self, n: int, message: str) -> QueueFull:
        """Report ``n`` jobs shed by ``reject``; return the error to raise."""
        self._report(ShedEvent("reject", self.name, n))
        return QueueFull(message)


# The two faces live in _async/bounded.py (the source) and _sync/bounded.py (generated) and import
# the names above, so they are loaded on first use instead of imported here.
_FACES = {"AsyncBoundedQueue": "._async.bounded", "BoundedQueue": "._sync.bounded"}


def __getattr__(name: str) -> Any:
    return load_face(globals(), name, _FACES)
