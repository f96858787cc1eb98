# unasync: the blocking twin, _sync/otel.py, is generated from this file.
"""The traced queue of one face; the shared half (spans, injection) is in ``unifiedq.otel``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Self

from opentelemetry import trace

from .._capabilities import Capability
from .._errors import InvalidArgument
from .._job import Job
from .._protocol import AsyncQueue, Delay
from ..otel import _Producer

__all__ = ["AsyncTracedQueue"]


class AsyncTracedQueue:
    """An open queue whose enqueues run in a ``PRODUCER`` span (see ``unifiedq.otel``).

    ``enqueue`` / ``enqueue_many`` start a span named ``"<queue> publish"`` (a child of the
    current context), inject its W3C trace context into the job's headers (drivers with
    ``Capability.HEADERS``; elsewhere the job carries none) and end it when the call returns,
    with ERROR status and the exception if it raised. Everything else is forwarded.

    Args:
        inner: The open queue; the wrapper stands in for it (:meth:`aclose` closes it).
        tracer_provider: Where spans go; None = the global provider.
    """

    def __init__(self, inner: AsyncQueue, *,
                 tracer_provider: trace.TracerProvider | None = None) -> None:
        if not isinstance(inner, AsyncQueue):
            raise InvalidArgument(f"inner must be an open queue of this face, not {inner!r}")
        self.inner = inner
        self._producer = _Producer(inner.name, inner.driver, inner.capabilities,
                                   tracer_provider)

    @property
    def name(self) -> str:
        """The wrapped queue's name."""
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
    ) -> str:
        """Enqueue in a producer span; the job carries its trace context in ``headers``.

        Returns:
            The job id (also the span's ``messaging.message.id``).

        Raises:
            Whatever the wrapped queue raises (recorded on the span).
        """
        span, hdrs = self._producer.start(headers, job_id=job_id)
        with trace.use_span(span, end_on_exit=True):
            jid = await self.inner.enqueue(body, delay=delay, priority=priority, job_id=job_id,
                                           headers=hdrs)
            span.set_attribute("messaging.message.id", jid)
            return jid

    async def enqueue_many(
        self,
        bodies: Iterable[bytes],
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Enqueue several jobs in one producer span (``messaging.batch.message_count``).

        Every job carries the same trace context: the batch's span is their parent.

        Raises:
            Whatever the wrapped queue raises (recorded on the span).
        """
        items = list(bodies)
        span, hdrs = self._producer.start(headers, count=len(items))
        with trace.use_span(span, end_on_exit=True):
            return await self.inner.enqueue_many(items, delay=delay, priority=priority,
                                                 headers=hdrs)

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
