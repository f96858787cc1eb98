"""The two faces every queue offers: :class:`Queue` (blocking) and :class:`AsyncQueue`.

Both are ``typing.Protocol`` classes with the same verbs. Drivers implement the face their
library has natively by subclassing :class:`~unifiedq.QueueBase` or
:class:`~unifiedq.AsyncQueueBase`; ``connect()`` / ``connect_async()`` bridge the other one.

Delivery semantics: ``dequeue()`` hands out a *leased* job. ``ack()`` settles it;
``nack(requeue=True)`` returns it; ``nack(requeue=False)`` dead-letters it (or drops it where
the backend has no dead set). A job whose consumer never settles it comes back after its lease
(drivers with ``Capability.ACK``: at-least-once). Drivers without ``ACK`` remove a job when it
is dequeued (at-most-once).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from ._capabilities import Capability
from ._job import Job

__all__ = ["AsyncQueue", "Delay", "Queue"]

#: A delay: seconds or a timedelta.
Delay = float | _dt.timedelta


@runtime_checkable
class Queue(Protocol):
    """A blocking queue handle. Thread-safe unless the driver's docs say otherwise."""

    @property
    def driver(self) -> str:
        """The driver's name, e.g. ``"memory"``."""
        ...

    @property
    def name(self) -> str:
        """The queue's name within its backend."""
        ...

    @property
    def capabilities(self) -> Capability:
        """What this driver supports."""
        ...

    @property
    def bridged(self) -> bool:
        """True when this face is a bridge over the driver's other face."""
        ...

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        ...

    def enqueue(
        self,
        body: bytes,
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Add a job and return its id."""
        ...

    def enqueue_many(
        self,
        bodies: Iterable[bytes],
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Add several jobs (in order) and return their ids."""
        ...

    def dequeue(self, *, timeout: float | None = 0.0) -> Job | None:
        """Take the next job (0 = don't wait, None = wait forever); None if none came."""
        ...

    def dequeue_many(self, max_jobs: int, *, timeout: float | None = 0.0) -> list[Job]:
        """Take up to ``max_jobs`` jobs, waiting at most ``timeout`` for the first."""
        ...

    def peek(self) -> Job | None:
        """Return the next job without taking it, or None."""
        ...

    def ack(self, job: Job) -> None:
        """Settle a leased job as done."""
        ...

    def nack(self, job: Job, *, requeue: bool = True, delay: Delay | None = None) -> None:
        """Return a leased job (``requeue=True``) or dead-letter it."""
        ...

    def extend_lease(self, job: Job, seconds: float) -> None:
        """Keep a leased job for ``seconds`` more from now."""
        ...

    def size(self) -> int:
        """Number of jobs waiting (ready or delayed), not counting leased ones."""
        ...

    def purge(self) -> int:
        """Remove every waiting job; return how many were removed."""
        ...

    def close(self) -> None:
        """Release the connection. Idempotent."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class AsyncQueue(Protocol):
    """The asyncio face: the same verbs as :class:`Queue`, as coroutines."""

    @property
    def driver(self) -> str:
        """The driver's name."""
        ...

    @property
    def name(self) -> str:
        """The queue's name within its backend."""
        ...

    @property
    def capabilities(self) -> Capability:
        """What this driver supports."""
        ...

    @property
    def bridged(self) -> bool:
        """True when this face is a bridge over the driver's other face."""
        ...

    @property
    def closed(self) -> bool:
        """True once ``aclose()`` was called."""
        ...

    async def enqueue(
        self,
        body: bytes,
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Add a job and return its id."""
        ...

    async def enqueue_many(
        self,
        bodies: Iterable[bytes],
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Add several jobs (in order) and return their ids."""
        ...

    async def dequeue(self, *, timeout: float | None = 0.0) -> Job | None:
        """Take the next job (0 = don't wait, None = wait forever); None if none came."""
        ...

    async def dequeue_many(self, max_jobs: int, *, timeout: float | None = 0.0) -> list[Job]:
        """Take up to ``max_jobs`` jobs, waiting at most ``timeout`` for the first."""
        ...

    async def peek(self) -> Job | None:
        """Return the next job without taking it, or None."""
        ...

    async def ack(self, job: Job) -> None:
        """Settle a leased job as done."""
        ...

    async def nack(self, job: Job, *, requeue: bool = True, delay: Delay | None = None) -> None:
        """Return a leased job (``requeue=True``) or dead-letter it."""
        ...

    async def extend_lease(self, job: Job, seconds: float) -> None:
        """Keep a leased job for ``seconds`` more from now."""
        ...

    async def size(self) -> int:
        """Number of jobs waiting (ready or delayed), not counting leased ones."""
        ...

    async def purge(self) -> int:
        """Remove every waiting job; return how many were removed."""
        ...

    async def aclose(self) -> None:
        """Release the connection. Idempotent."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
