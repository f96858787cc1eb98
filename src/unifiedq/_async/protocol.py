# unasync: the blocking twin, _sync/protocol.py, is generated from this file.
"""The queue protocol of one face (see ``unifiedq._protocol`` for the semantics)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from .._capabilities import Capability
from .._job import Deadline, Delay, Job

__all__ = ["AsyncQueue"]


@runtime_checkable
class AsyncQueue(Protocol):
    """A queue handle: the verbs every driver offers, on each face (blocking or asyncio).

    Thread-safe (blocking face) unless the driver's docs say otherwise.
    """

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
        """True once the handle was closed."""
        ...

    async def enqueue(
        self,
        body: bytes,
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        deadline: Deadline | None = None,
        ttl: Delay | None = None,
        timeout: Delay | None = None,
    ) -> str:
        """Add a job and return its id (``deadline``/``ttl``/``timeout``: DEADLINE)."""
        ...

    async def enqueue_many(
        self,
        bodies: Iterable[bytes],
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
        deadline: Deadline | None = None,
        ttl: Delay | None = None,
        timeout: Delay | None = None,
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

    async def ack_many(self, jobs: Iterable[Job]) -> None:
        """Settle several jobs as done, in one round trip where the driver can."""
        ...

    async def nack(self, job: Job, *, requeue: bool = True, delay: Delay | None = None) -> None:
        """Return a leased job (``requeue=True``) or dead-letter it."""
        ...

    async def release(self, job: Job) -> None:
        """Hand a leased job back unprocessed, without consuming an attempt (RELEASE)."""
        ...

    async def extend_lease(self, job: Job, seconds: float) -> None:
        """Keep a leased job for ``seconds`` more from now."""
        ...

    async def pause(self) -> None:
        """Stop handing out jobs (enqueue still works) until ``resume()``."""
        ...

    async def resume(self) -> None:
        """Hand out jobs again after ``pause()``."""
        ...

    async def is_paused(self) -> bool:
        """Whether the queue is paused (by any handle, or the backend's own tools)."""
        ...

    async def result(self, job_id: str, *, timeout: float | None = 0.0) -> bytes:
        """The job's stored result, waiting up to ``timeout`` (RESULT; JobFailed, ResultTimeout)."""
        ...

    async def complete(self, job: Job, result: bytes, *,
                       retention: float | None = None) -> None:
        """Settle a leased job as done and store its result (RESULT)."""
        ...

    async def fail(self, job: Job, error: str, *, retention: float | None = None) -> None:
        """Dead-letter a leased job and record ``error`` as its outcome (RESULT)."""
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
