"""Capability flags: what a driver can do, as data on the driver class.

The conformance suite checks every flag in both directions: a driver that has a flag must
behave as described below, and a driver that lacks it must raise
:class:`~unifiedq.UnsupportedOperation` (or, for flags that describe properties rather than
verbs, must observably not have the property).
"""

from __future__ import annotations

import enum

from ._errors import UnsupportedOperation

__all__ = ["Capability", "require"]


class Capability(enum.Flag):
    """What a driver supports.

    Attributes:
        PEEK: ``peek()`` returns the next job without taking it.
        ACK: ``dequeue()`` leases jobs; ``ack()``/``nack()`` settle them and an un-acked
            job comes back after its lease (at-least-once). Without it ``dequeue()``
            removes the job for good (at-most-once) and ``ack``/``nack`` are unsupported.
        LEASE_EXTEND: ``extend_lease(job, seconds)`` pushes a held job's lease forward.
        DELAY: ``enqueue(delay=...)`` and ``nack(delay=...)`` make a job visible later.
        PRIORITY: ``enqueue(priority=0..9)``; higher priorities are dequeued first.
        BATCH: ``enqueue_many()`` and ``dequeue_many()`` amortise round trips.
        BLOCKING_DEQUEUE: ``dequeue(timeout>0 or None)`` waits for a job.
        CUSTOM_ID: ``enqueue(job_id=...)`` is honoured; a duplicate id raises DuplicateJob.
        HEADERS: ``enqueue(headers=...)`` round-trips string headers to the consumer.
        DURABLE: queued jobs survive a restart of the backend.
        CROSS_PROCESS: other processes on this machine see the same queue.
        DISTRIBUTED: other machines can reach the queue over the network.
        RELEASE: ``release(job)`` hands a leased job back at once without consuming one of
            its attempts (a worker that is stopping, a consumer that took more than it can
            run). Without it the only way back is ``nack()``, which counts as an attempt.
        PAUSE: ``pause()`` / ``resume()`` / ``is_paused()``: a paused queue still accepts
            jobs but hands none out (a waiting ``dequeue`` waits, without polling the backend
            faster than it otherwise would); the state is shared by every handle of the queue
            and, where the backend has it natively, by its own tools.
        DEADLINE: ``enqueue(deadline=... | ttl=..., timeout=...)`` round-trip to the consumer
            as ``Job.deadline`` (Unix seconds) and ``Job.timeout`` (seconds per attempt), and
            ``dequeue()`` never hands out a job past its deadline: it settles it as expired
            (see docs/deadlines.md). Without it those arguments raise UnsupportedOperation.
        RESULT: ``result(job_id, timeout=)`` returns what ``complete(job, result)`` stored
            (the Worker stores a handler's return value), waiting for it; a job settled by
            ``fail(job, error)`` makes it raise JobFailed. Native on redis (asynq's task
            ``result`` field) and memory; other drivers get it from a ``results=`` store URL
            (docs/results.md).
        BOUNDED: the queue takes a ``maxsize`` and raises QueueFull (or applies its
            overflow policy) when it is reached.
        NATIVE_SYNC: the driver implements the blocking face itself (else it is bridged).
        NATIVE_ASYNC: the driver implements the asyncio face itself (else it is bridged).
    """

    PEEK = enum.auto()
    ACK = enum.auto()
    LEASE_EXTEND = enum.auto()
    DELAY = enum.auto()
    PRIORITY = enum.auto()
    BATCH = enum.auto()
    BLOCKING_DEQUEUE = enum.auto()
    CUSTOM_ID = enum.auto()
    HEADERS = enum.auto()
    DURABLE = enum.auto()
    CROSS_PROCESS = enum.auto()
    DISTRIBUTED = enum.auto()
    BOUNDED = enum.auto()
    NATIVE_SYNC = enum.auto()
    NATIVE_ASYNC = enum.auto()
    RELEASE = enum.auto()
    PAUSE = enum.auto()
    RESULT = enum.auto()
    DEADLINE = enum.auto()

    def names(self) -> list[str]:
        """Return the names of the individual flags set in this value, in definition order."""
        return [c.name for c in Capability if c in self and c.name is not None]


def require(have: Capability, needed: Capability, *, driver: str, what: str) -> None:
    """Raise UnsupportedOperation unless every flag in ``needed`` is in ``have``.

    Args:
        have: The driver's capabilities.
        needed: The capability the caller is about to use.
        driver: Driver name for the message.
        what: What the caller tried, e.g. ``"peek()"``.

    Raises:
        UnsupportedOperation: If a flag is missing.
    """
    missing = needed & ~have
    if missing:
        name = "|".join(missing.names())
        raise UnsupportedOperation(
            f"the {driver!r} driver does not support {what} (it lacks Capability.{name}); "
            f"check queue.capabilities before relying on it",
            driver=driver,
            capability=name,
        )
