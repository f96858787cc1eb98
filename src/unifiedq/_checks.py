"""What both faces of a driver base share: state, argument checks, capability gates.

:class:`~unifiedq.QueueBase` and :class:`~unifiedq.AsyncQueueBase` (generated one from the other,
see docs/contributing.md) subclass :class:`QueueChecks`: every argument is validated and every
capability checked here *before* the driver's underscore method runs, so bad input never
reaches a backend and every driver reports it the same way.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Self, TypeGuard

from ._capabilities import Capability, require
from ._errors import (
    InvalidArgument,
    JobNotLeased,
    QueueClosed,
    UnsupportedOperation,
    WrongQueue,
)
from ._job import EnqueueRequest, Job, check_delay, check_timeout
from ._url import URL

__all__ = ["MAX_BATCH", "QueueChecks"]

#: Most bodies one ``enqueue_many`` call takes (and jobs one ``dequeue_many`` asks for).
MAX_BATCH = 100_000


class QueueChecks:
    """State and argument checks shared by both faces; no I/O here."""

    #: The driver's name; an instance attribute on bridges, which take it from the driver.
    driver: str = "?"
    capabilities: Capability = Capability(0)
    #: Largest body the driver accepts, or None for no limit.
    max_body: int | None = None
    bridged: bool = False

    def __init__(self, name: str, url: URL | None = None) -> None:
        self._name = name
        self._url = url
        self._closed = False
        self._close_lock = threading.Lock()

    @property
    def name(self) -> str:
        """The queue's name within its backend."""
        return self._name

    @property
    def closed(self) -> bool:
        """True once the queue was closed."""
        return self._closed

    def __repr__(self) -> str:
        url = self._url.redacted() if self._url is not None else self._name
        state = " closed" if self._closed else ""
        return f"<{type(self).__name__} {url}{state}>"

    @classmethod
    def from_url(cls, url: URL, options: Mapping[str, object]) -> Self:
        """Build a handle from a parsed URL and keyword options, without blocking I/O.

        Drivers implement this: parse their options with :func:`unifiedq.parse_options`
        (which raises InvalidURL for unknown or malformed ones) and connect lazily on first
        use, so that bad input fails fast and bridges can build handles on any thread.
        """
        raise NotImplementedError(f"{cls.__name__} must implement from_url()")

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosed(f"{self!r} is closed; open a new one with connect()")

    def _need(self, cap: Capability, what: str) -> None:
        # Plain int test first: enum.Flag operators cost microseconds on every verb.
        if cap._value_ & self.capabilities._value_ != cap._value_:
            require(self.capabilities, cap, driver=self.driver, what=what)

    def _plain(
        self, body: object, delay: object, priority: object, job_id: object, headers: object
    ) -> TypeGuard[bytes]:
        """Whether an enqueue call is the common one: bytes within the limit and no options.

        Such a call needs no other check, and goes to the driver's ``_enqueue_plain`` hook.
        """
        return (type(body) is bytes and delay is None and priority is None and job_id is None
                and headers is None and not self._closed
                and (self.max_body is None or len(body) <= self.max_body))

    def _prepare(
        self,
        body: object,
        delay: object,
        priority: object,
        job_id: object,
        headers: object,
        deadline: object = None,
        ttl: object = None,
        timeout: object = None,
    ) -> EnqueueRequest:
        self._check_open()
        req = EnqueueRequest.build(
            body, delay=delay, priority=priority, job_id=job_id, headers=headers,
            max_body=self.max_body, deadline=deadline, ttl=ttl, timeout=timeout,
        )
        if deadline is not None or ttl is not None or timeout is not None:
            self._need(Capability.DEADLINE, "enqueue(deadline=/ttl=/timeout=...)")
        if delay is not None:
            self._need(Capability.DELAY, "enqueue(delay=...)")
        if priority is not None:
            self._need(Capability.PRIORITY, "enqueue(priority=...)")
        if job_id is not None:
            self._need(Capability.CUSTOM_ID, "enqueue(job_id=...)")
        if headers:
            self._need(Capability.HEADERS, "enqueue(headers=...)")
        return req

    def _batch(self, bodies: object, delay: object, priority: object,
               headers: object) -> tuple[list[Any], bool]:
        """Check an ``enqueue_many`` call's container; return its items and whether plain.

        Plain: all bytes within the limit and no options (the ``_enqueue_plain_many`` hook).
        """
        self._check_open()
        self._need(Capability.BATCH, "enqueue_many()")
        if isinstance(bodies, bytes | bytearray | memoryview | str):
            raise InvalidArgument("enqueue_many() takes an iterable of bodies, not one body")
        if not isinstance(bodies, Iterable):
            raise InvalidArgument(f"enqueue_many() takes an iterable of bytes, not {bodies!r}")
        items = list(bodies)
        if len(items) > MAX_BATCH:
            raise InvalidArgument(f"enqueue_many() takes at most {MAX_BATCH} bodies per call")
        mb = self.max_body
        plain = (delay is None and priority is None and headers is None
                 and all(type(b) is bytes for b in items)
                 and (mb is None or max(map(len, items), default=0) <= mb))
        return items, plain

    def _prepare_many(
        self, items: list[Any], delay: object, priority: object, headers: object,
        deadline: object = None, ttl: object = None, timeout: object = None,
    ) -> list[EnqueueRequest]:
        # Validate everything before anything is sent: a bad item must not half-enqueue a batch.
        reqs = [self._prepare(b, delay, priority, None, headers, deadline, ttl, timeout)
                for b in items]
        if ttl is not None and len(reqs) > 1:
            # One deadline for the whole batch (ttl counted from the call, not from each item).
            dl = reqs[0].deadline
            reqs = [dataclasses.replace(r, deadline=dl) for r in reqs]
        return reqs

    # -- deadlines ---------------------------------------------------------------------------
    #: What ``dequeue`` does with a job past its deadline: ``"dead"`` settles it like
    #: ``nack(requeue=False)`` (dead-lettered with reason ``expired`` where the driver keeps
    #: dead letters), ``"drop"`` acks it, ``"keep"`` hands it out like any job (a handle
    #: that inspects or replays a dead-letter queue). Set by ``connect(..., on_expired=...)``.
    on_expired: str = "dead"
    #: Jobs this handle settled as expired instead of handing them out.
    expired_count: int = 0

    def _prepare_dequeue(self, timeout: object) -> float | None:
        self._check_open()
        t = check_timeout(timeout)
        if t != 0.0:
            self._need(Capability.BLOCKING_DEQUEUE, "dequeue(timeout>0)")
        return t

    def _prepare_many_dequeue(self, max_jobs: object, timeout: object) -> tuple[int, float | None]:
        self._check_open()
        self._need(Capability.BATCH, "dequeue_many()")
        if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
            raise InvalidArgument(f"max_jobs must be an int >= 1, not {max_jobs!r}")
        return min(max_jobs, MAX_BATCH), self._prepare_dequeue(timeout)

    def _prepare_settle(self, job: object, verb: str) -> Job:
        self._check_open()
        self._need(Capability.ACK, f"{verb}()")
        if not isinstance(job, Job):
            raise InvalidArgument(f"{verb}() takes a Job returned by dequeue(), not {job!r}")
        if job.queue != self._name:
            raise WrongQueue(
                f"job {job.id!r} came from queue {job.queue!r}, not {self._name!r}; "
                f"{verb} it on the queue it was dequeued from"
            )
        if job.receipt is None:
            raise InvalidArgument(
                f"job {job.id!r} has no lease receipt (was it returned by peek()?); "
                f"only jobs returned by dequeue() can be settled"
            )
        return job

    def _prepare_settle_many(self, jobs: object) -> list[Job]:
        self._check_open()
        self._need(Capability.ACK, "ack_many()")
        items = check_jobs(jobs, "ack_many")
        for job in items:
            self._prepare_settle(job, "ack_many")
        return items

    def _prepare_nack(self, job: object, requeue: object, delay: object) -> tuple[Job, float]:
        j = self._prepare_settle(job, "nack")
        if not isinstance(requeue, bool):
            raise InvalidArgument(f"requeue must be True or False, not {requeue!r}")
        d = check_delay(delay)
        if delay is not None:
            if not requeue:
                raise InvalidArgument("nack(delay=...) only makes sense with requeue=True")
            self._need(Capability.DELAY, "nack(delay=...)")
        return j, d

    def _prepare_release(self, job: object) -> Job:
        j = self._prepare_settle(job, "release")
        self._need(Capability.RELEASE, "release()")
        return j

    def _prepare_extend(self, job: object, seconds: object) -> tuple[Job, float]:
        j = self._prepare_settle(job, "extend_lease")
        self._need(Capability.LEASE_EXTEND, "extend_lease()")
        s = check_delay(seconds, name="seconds")
        if s <= 0:
            raise InvalidArgument("extend_lease() needs seconds > 0")
        return j, s

    def _unsupported(self, what: str, cap: Capability) -> UnsupportedOperation:
        require(Capability(0), cap, driver=self.driver, what=what)
        raise AssertionError("unreachable")  # pragma: no cover


def check_jobs(jobs: object, verb: str) -> list[Job]:
    """Check the list argument of a settle-many verb: Jobs, each once, at most MAX_BATCH."""
    if isinstance(jobs, Job) or not isinstance(jobs, Iterable):
        raise InvalidArgument(f"{verb}() takes an iterable of Jobs, not {jobs!r}")
    items = list(jobs)
    if len(items) > MAX_BATCH:
        raise InvalidArgument(f"{verb}() takes at most {MAX_BATCH} jobs per call")
    seen: set[str] = set()
    for job in items:
        if not isinstance(job, Job):
            raise InvalidArgument(f"{verb}() takes Jobs returned by dequeue(), not {job!r}")
        if job.id in seen:
            raise InvalidArgument(f"{verb}() got job {job.id!r} twice")
        seen.add(job.id)
    return items


def not_leased_many(lost: list[str], total: int) -> JobNotLeased:
    """The error of an ``ack_many()`` in which some of ``total`` jobs were not leased."""
    shown = ", ".join(repr(i) for i in lost[:5]) + (" ..." if len(lost) > 5 else "")
    return JobNotLeased(f"ack_many(): {len(lost)} of {total} jobs were no longer leased "
                        f"({shown}); the others were acked", job_ids=tuple(lost))
