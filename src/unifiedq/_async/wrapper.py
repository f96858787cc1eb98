# unasync: the blocking twin, _sync/wrapper.py, is generated from this file.
"""A queue that stands in for another: every verb forwarded to ``inner`` (one face).

Wrappers that change a few verbs (``BoundedQueue`` bounds ``enqueue``, ``TracedQueue`` traces
it) subclass this and override only those, so a verb added to the protocol is forwarded by
every wrapper at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Self

from .._capabilities import Capability
from .._job import Job
from .._protocol import AsyncQueue, Deadline, Delay

__all__ = ["AsyncQueueWrapper"]


class AsyncQueueWrapper:
    """Forwards the queue protocol to ``self.inner`` (set by the subclass's ``__init__``).

    ``aclose`` closes ``inner``; a subclass that does not own it overrides ``aclose``.
    """

    inner: AsyncQueue

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
        """The wrapped queue's capabilities."""
        return self.inner.capabilities

    @property
    def bridged(self) -> bool:
        """Whether the wrapped queue is bridged."""
        return self.inner.bridged

    @property
    def closed(self) -> bool:
        """Whether the wrapped queue is closed."""
        return self.inner.closed

    @property
    def expired_count(self) -> int:
        """Jobs the wrapped queue settled as expired (DEADLINE) instead of handing them out."""
        return int(getattr(self.inner, "expired_count", 0))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.inner!r}>"

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
        """Enqueue on the wrapped queue."""
        return await self.inner.enqueue(body, delay=delay, priority=priority, job_id=job_id,
                                        headers=headers, deadline=deadline, ttl=ttl,
                                        timeout=timeout)

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
        """Enqueue several jobs on the wrapped queue."""
        return await self.inner.enqueue_many(bodies, delay=delay, priority=priority,
                                             headers=headers, deadline=deadline, ttl=ttl,
                                             timeout=timeout)

    async def dequeue(self, *, timeout: float | None = 0.0) -> Job | None:
        """Dequeue from the wrapped queue."""
        return await self.inner.dequeue(timeout=timeout)

    async def dequeue_many(self, max_jobs: int, *, timeout: float | None = 0.0) -> list[Job]:
        """Dequeue several from the wrapped queue."""
        return await self.inner.dequeue_many(max_jobs, timeout=timeout)

    async def peek(self) -> Job | None:
        """Peek the wrapped queue."""
        return await self.inner.peek()

    async def ack(self, job: Job) -> None:
        """Ack on the wrapped queue."""
        await self.inner.ack(job)

    async def ack_many(self, jobs: Iterable[Job]) -> None:
        """Ack several jobs on the wrapped queue."""
        await self.inner.ack_many(jobs)

    async def nack(self, job: Job, *, requeue: bool = True, delay: Delay | None = None) -> None:
        """Nack on the wrapped queue."""
        await self.inner.nack(job, requeue=requeue, delay=delay)

    async def release(self, job: Job) -> None:
        """Release on the wrapped queue."""
        await self.inner.release(job)

    async def extend_lease(self, job: Job, seconds: float) -> None:
        """Extend a lease on the wrapped queue."""
        await self.inner.extend_lease(job, seconds)

    async def pause(self) -> None:
        """Pause the wrapped queue (PAUSE)."""
        await self.inner.pause()

    async def resume(self) -> None:
        """Resume the wrapped queue (PAUSE)."""
        await self.inner.resume()

    async def is_paused(self) -> bool:
        """Whether the wrapped queue is paused (PAUSE)."""
        return await self.inner.is_paused()

    async def result(self, job_id: str, *, timeout: float | None = 0.0) -> bytes:
        """Forward ``result``."""
        return await self.inner.result(job_id, timeout=timeout)

    async def complete(self, job: Job, result: bytes, *,
                       retention: float | None = None) -> None:
        """Forward ``complete``."""
        await self.inner.complete(job, result, retention=retention)

    async def fail(self, job: Job, error: str, *, retention: float | None = None) -> None:
        """Forward ``fail``."""
        await self.inner.fail(job, error, retention=retention)

    async def size(self) -> int:
        """Waiting jobs in the wrapped queue."""
        return await self.inner.size()

    async def purge(self) -> int:
        """Purge the wrapped queue."""
        return await self.inner.purge()

    async def aclose(self) -> None:
        """Close the wrapped queue."""
        await self.inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()
