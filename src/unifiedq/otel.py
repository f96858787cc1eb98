"""OpenTelemetry traces: a producer span per enqueue, a consumer span per processed job.

Needs the ``otel`` extra (``opentelemetry-api`` only; the application installs and configures
an SDK and exporter). Nothing here is imported by ``unifiedq`` itself, so an application that
does not import this module pays nothing.

* :func:`instrument` wraps an open queue (either face) in :class:`TracedQueue` /
  :class:`AsyncTracedQueue`: ``enqueue`` and ``enqueue_many`` run inside a ``PRODUCER`` span
  named ``"<queue> publish"`` and inject its W3C trace context (``traceparent``,
  ``tracestate``, and ``baggage`` when set) into the job's headers, on drivers with
  ``Capability.HEADERS``. Every other call is forwarded untouched.
* :class:`TracingMiddleware` is a :class:`unifiedq.worker.Middleware`: for each attempt the
  worker runs, it starts a ``CONSUMER`` span named ``"<queue> process"`` whose parent is the
  context extracted from the job's headers (and which also links to it), makes it current
  while the handler runs (the handler's own spans nest under it), and ends it with the
  outcome: success, or ERROR status, the exception, and whether the job will be retried or
  dead-lettered.

Attributes follow OpenTelemetry's messaging semantic conventions (see docs/tracing.md).

Example::

    from unifiedq import Worker, connect
    from unifiedq.otel import TracingMiddleware, instrument

    q = instrument(connect("redis://localhost/0?queue=emails"))
    q.enqueue(b"hi")                      # a "emails publish" span; traceparent in the headers
    Worker(handle, queue=q, middleware=[TracingMiddleware(q)]).run()
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from . import __version__
from ._capabilities import Capability
from ._errors import InvalidArgument
from ._faces import load_face
from ._job import Job
from ._protocol import AsyncQueue, Queue
from ._worker_core import Middleware

if TYPE_CHECKING:
    from ._async.otel import AsyncTracedQueue
    from ._sync.otel import TracedQueue

__all__ = [
    "ATTEMPT",
    "OUTCOME",
    "AsyncTracedQueue",
    "TracedQueue",
    "TracingMiddleware",
    "instrument",
    "messaging_system",
]

#: The delivery attempt (1 = first). The messaging conventions define no system-neutral
#: attribute for it, only per-system ones (``messaging.gcp_pubsub.message.delivery_attempt``).
ATTEMPT = "unifiedq.job.attempt"
#: How an attempt ended: ``success``, ``retry``, ``dead_letter`` (or ``abandoned``, see
#: :meth:`TracingMiddleware.close`).
OUTCOME = "unifiedq.job.outcome"

# Driver name -> the semantic conventions' well-known ``messaging.system`` value, where one
# exists; every other driver (redis, faktory, memory, shm, quic) reports its own name.
_SYSTEMS = {"amqp": "rabbitmq", "amqps": "rabbitmq", "rediss": "redis"}


def messaging_system(driver: str) -> str:
    """The ``messaging.system`` value for a unifiedq driver name (``amqp`` -> ``rabbitmq``)."""
    return _SYSTEMS.get(driver, driver)


def _tracer(provider: trace.TracerProvider | None) -> trace.Tracer:
    return trace.get_tracer("unifiedq", __version__, tracer_provider=provider)


class _Producer:
    """What both faces of the traced queue share: the span and the header injection."""

    def __init__(self, name: str, driver: str, caps: Capability,
                 tracer_provider: trace.TracerProvider | None) -> None:
        self._tracer = _tracer(tracer_provider)
        self._span_name = f"{name} publish"
        self._attrs: dict[str, str] = {
            "messaging.system": messaging_system(driver),
            "messaging.destination.name": name,
            "messaging.operation.type": "publish",
            "messaging.operation.name": "publish",
        }
        self._headers = Capability.HEADERS in caps

    def start(self, headers: Mapping[str, str] | None, *, job_id: str | None = None,
              count: int | None = None) -> tuple[Span, Mapping[str, str] | None]:
        """Start the producer span (a child of the current context); the headers to send."""
        attrs: dict[str, Any] = dict(self._attrs)
        if job_id is not None:
            attrs["messaging.message.id"] = job_id
        if count is not None:
            attrs["messaging.batch.message_count"] = count
        span = self._tracer.start_span(self._span_name, kind=SpanKind.PRODUCER,
                                       attributes=attrs)
        if not self._headers:
            # Nowhere to carry the context: the consumer's span starts a trace of its own.
            return span, headers
        carrier: dict[str, str] = dict(headers or {})
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return span, carrier


def instrument(queue: Any, *, tracer_provider: trace.TracerProvider | None = None) -> Any:
    """Wrap an open queue so that its enqueues are traced (see the module docstring).

    Args:
        queue: An open :class:`~unifiedq.Queue` or :class:`~unifiedq.AsyncQueue` (the wrapper
            has the same face and stands in for it: closing the wrapper closes it).
        tracer_provider: Where spans go; None = the global provider.

    Returns:
        A :class:`TracedQueue` or :class:`AsyncTracedQueue` around ``queue``.

    Raises:
        InvalidArgument: ``queue`` is not an open queue.
    """
    if isinstance(queue, AsyncQueue):
        from ._async.otel import AsyncTracedQueue
        return AsyncTracedQueue(queue, tracer_provider=tracer_provider)
    if isinstance(queue, Queue):
        from ._sync.otel import TracedQueue
        return TracedQueue(queue, tracer_provider=tracer_provider)
    raise InvalidArgument(f"instrument() takes an open queue, not {queue!r}")


# -- consumer side -------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class _Open:
    """A consumer span from ``before`` until ``after`` / ``on_error`` ends it."""

    span: Span
    key: tuple[str, int]
    token: object = None  # from opentelemetry.context.attach
    active: contextvars.Token[_Open | None] | None = None
    detached: bool = False


# The consumer span this execution context made current (per thread, per asyncio task).
# ``after``/``on_error`` may run elsewhere than ``before`` (a blocking handler of an
# AsyncWorker runs on a thread, the worker settles it in a task; a timeout is settled by the
# housekeeper): they detach only where the attach happened, and the next ``before`` in that
# context detaches a leftover.
_ACTIVE: contextvars.ContextVar[_Open | None] = contextvars.ContextVar(
    "unifiedq_otel_active", default=None)


def _detach(o: _Open) -> None:
    if o.detached:
        return
    o.detached = True
    try:
        if o.active is not None:
            _ACTIVE.reset(o.active)
    except ValueError:
        # A copy of the attaching context (a task or thread the handler started): leave the
        # attachment to its owner (OpenTelemetry's detach would fail the same way, loudly).
        _ACTIVE.set(None)
        return
    otel_context.detach(o.token)  # type: ignore[arg-type]


class TracingMiddleware(Middleware):
    """Worker middleware: one ``CONSUMER`` span per attempt, current while the handler runs.

    The span's parent is the trace context carried in the job's headers (put there by a
    :func:`instrument`-ed queue, or by any producer writing a W3C ``traceparent`` header), and it
    also links to it as the messaging conventions ask; without one it starts a new trace.

    Args:
        source: Names ``messaging.system``: an open queue (its ``driver``), a queue URL (its
            scheme) or a driver name. None = ``"unifiedq"``.
        tracer_provider: Where spans go; None = the global provider.
        type_header: The header naming the job type (as the worker's Router), reported as
            ``unifiedq.job.type``.
        max_open: Most spans kept open at once. A job handed back at shutdown gets no hook:
            its span stays open until :meth:`close`, or until this many newer ones push it
            out (it is then ended with ``unifiedq.job.outcome = "abandoned"``).
    """

    def __init__(self, source: Queue | AsyncQueue | str | None = None, *,
                 tracer_provider: trace.TracerProvider | None = None,
                 type_header: str = "type", max_open: int = 10_000) -> None:
        if isinstance(source, (Queue, AsyncQueue)):
            system = messaging_system(source.driver)
        elif isinstance(source, str):
            system = messaging_system(source.partition("://")[0].lower()
                                      if "://" in source else source)
        elif source is None:
            system = "unifiedq"
        else:
            raise InvalidArgument(f"source must be a queue, a URL or a driver name, "
                                  f"not {source!r}")
        self._tracer = _tracer(tracer_provider)
        self.system = system
        self.type_header = type_header
        self.max_open = max(1, max_open)
        self._open: dict[tuple[str, int], _Open] = {}
        self._lock = threading.Lock()

    def before(self, job: Job) -> None:
        """Start the job's consumer span and make it current (never raises)."""
        with contextlib.suppress(Exception):  # tracing must never fail a job
            self._start(job)

    def _start(self, job: Job) -> None:
        stale = _ACTIVE.get()
        if stale is not None:
            _detach(stale)  # a job settled elsewhere left its span current here
        parent = propagate.extract(job.headers)
        link = trace.get_current_span(parent).get_span_context()
        attrs: dict[str, Any] = {
            "messaging.system": self.system,
            "messaging.destination.name": job.queue,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.message.id": job.id,
            "messaging.message.body.size": len(job.body),
            ATTEMPT: job.attempt,
        }
        jtype = job.headers.get(self.type_header)
        if jtype:
            attrs["unifiedq.job.type"] = jtype
        span = self._tracer.start_span(f"{job.queue} process", context=parent,
                                       kind=SpanKind.CONSUMER, attributes=attrs,
                                       links=[Link(link)] if link.is_valid else None)
        o = _Open(span, (job.id, job.attempt))
        o.token = otel_context.attach(trace.set_span_in_context(span, parent))
        o.active = _ACTIVE.set(o)
        evicted: list[_Open] = []
        with self._lock:
            old = self._open.pop(o.key, None)
            if old is not None:
                evicted.append(old)
            self._open[o.key] = o
            while len(self._open) > self.max_open:
                evicted.append(self._open.pop(next(iter(self._open))))
        for e in evicted:
            e.span.set_attribute(OUTCOME, "abandoned")
            e.span.end()

    def _finish(self, job: Job) -> _Open | None:
        with self._lock:
            o = self._open.pop((job.id, job.attempt), None)
        if o is not None and _ACTIVE.get() is o:
            _detach(o)  # the context that attached it: restore it now
        return o

    def after(self, job: Job, duration: float) -> None:
        """End the job's span: the handler succeeded."""
        o = self._finish(job)
        if o is not None:
            o.span.set_attribute(OUTCOME, "success")
            o.span.end()

    def on_error(self, job: Job, exc: BaseException, will_retry: bool) -> None:
        """End the job's span with ERROR status, the exception, and retry or dead-letter.

        A job that failed before its handler ran (no handler for its type) gets a span here.
        """
        o = self._finish(job)
        if o is None:
            try:
                self._start(job)
            except Exception:  # tracing must never break the worker
                return
            o = self._finish(job)
            if o is None:
                return
        span = o.span
        outcome = "retry" if will_retry else "dead_letter"
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        # As OpenTelemetry's own Python instrumentations report it.
        span.set_attribute("error.type", type(exc).__qualname__)
        span.set_attribute(OUTCOME, outcome)
        span.add_event(f"unifiedq.{outcome}", {ATTEMPT: job.attempt})
        span.end()

    def close(self) -> None:
        """End every span still open (jobs handed back at shutdown): ``abandoned``."""
        with self._lock:
            left, self._open = list(self._open.values()), {}
        for o in left:
            o.span.set_attribute(OUTCOME, "abandoned")
            o.span.end()


# The two faces of the traced queue live in _async/otel.py (the source) and _sync/otel.py
# (generated) and import the names above, so they are loaded on first use.
_FACES = {"AsyncTracedQueue": "._async.otel", "TracedQueue": "._sync.otel"}


def __getattr__(name: str) -> Any:
    return load_face(globals(), name, _FACES)
