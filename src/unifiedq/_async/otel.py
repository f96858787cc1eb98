# unasync: the blocking twin, _sync/otel.py, is generated from this file.
"""The traced queue of one face; the shared half (spans, injection) is in ``unifiedq.otel``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry import trace

from .._errors import InvalidArgument
from .._protocol import AsyncQueue, Deadline, Delay
from ..otel import _Producer
from .wrapper import AsyncQueueWrapper

__all__ = ["AsyncTracedQueue"]


class AsyncTracedQueue(AsyncQueueWrapper):
    """An open queue whose enqueues run in a ``PRODUCER`` span (see ``unifiedq.otel``).

    ``enqueue`` / ``enqueue_many`` start a span named ``"<queue> publish"`` (a child of the
    current context), inject its W3C trace context into the job's headers (drivers with
    ``Capability.HEADERS``; elsewhere the job carries none) and end it when the call returns,
    with ERROR status and the exception if it raised. Everything else is forwarded
    (:class:`~unifiedq._async.wrapper.AsyncQueueWrapper`).

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
        """Enqueue in a producer span; the job carries its trace context in ``headers``.

        Returns:
            The job id (also the span's ``messaging.message.id``).

        Raises:
            Whatever the wrapped queue raises (recorded on the span).
        """
        span, hdrs = self._producer.start(headers, job_id=job_id)
        with trace.use_span(span, end_on_exit=True):
            jid = await self.inner.enqueue(body, delay=delay, priority=priority, job_id=job_id,
                                           headers=hdrs, deadline=deadline, ttl=ttl,
                                           timeout=timeout)
            span.set_attribute("messaging.message.id", jid)
            return jid

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
        """Enqueue several jobs in one producer span (``messaging.batch.message_count``).

        Every job carries the same trace context: the batch's span is their parent.

        Raises:
            Whatever the wrapped queue raises (recorded on the span).
        """
        items = list(bodies)
        span, hdrs = self._producer.start(headers, count=len(items))
        with trace.use_span(span, end_on_exit=True):
            return await self.inner.enqueue_many(items, delay=delay, priority=priority,
                                                 headers=hdrs, deadline=deadline, ttl=ttl,
                                                 timeout=timeout)
