"""Worker runtime: run handlers over any queue, with retries, timeouts and graceful shutdown.

Two flavours with the same options:

* :class:`Worker` runs blocking handlers on ``concurrency`` threads over a :class:`Queue`.
* :class:`AsyncWorker` runs coroutine handlers (and blocking ones, on daemon threads) as
  ``concurrency`` asyncio tasks over an :class:`AsyncQueue`.

Routing by job type::

    from unifiedq import Router, Worker

    app = Router()                      # routes on the "type" header

    @app.handler("email.send", timeout=30, max_attempts=5)
    def send_email(job):
        ...

    Worker("redis://localhost:6379/0?queue=emails", app, concurrency=8).run()

or from the command line: ``unifiedq worker myapp.tasks:app --url ... --concurrency 8``.

What the worker does for each job, and how it adapts to the driver's capabilities:

* **Success**: ``ack()`` (ACK drivers). A handler's return value is ignored.
* **Failure** (exception or timeout) with attempts left: retry after an exponential backoff
  with jitter (:class:`Retry`). With ACK and DELAY: ``nack(delay=backoff)``. With ACK but
  no DELAY: the worker holds the leased job (extending its lease) and ``nack()``s it when the
  backoff is over. Without ACK: the job is already gone from the queue, so a copy is
  re-enqueued with ``x-unifiedq-attempt`` and ``x-unifiedq-error`` headers (where the driver
  has HEADERS).
* **Last attempt failed** (or the handler raised :class:`SkipRetry`, or no handler matches the
  job type): dead-letter. With a ``dead_letter`` queue, a copy (with ``x-unifiedq-error``,
  ``x-unifiedq-attempts``, ``x-unifiedq-job-id`` and ``x-unifiedq-queue`` headers) is enqueued
  there and the original acked; otherwise ``nack(requeue=False)`` hands it to the driver's
  own dead set (asynq's archive, RabbitMQ's DLQ, Faktory's dead set; memory:// drops it).
* **Attempts** are counted by the driver (``job.attempt``), by the ``x-unifiedq-attempt``
  header for re-enqueued copies, whichever is higher.
* **Timeouts**: a handler running past ``timeout`` is failed and retried. A Python thread
  cannot be killed, so a hung *blocking* handler keeps its thread: the worker abandons that
  thread (it is a daemon), starts a fresh one for the slot, and settles the job itself; when
  the stuck call finally returns, its result is thrown away and it can never ack the job.
  Coroutine handlers are cancelled (one that ignores cancellation is abandoned likewise).
* **Leases**: while a handler runs (and while a job waits for its backoff), a housekeeping
  thread calls ``extend_lease(job, lease_extend)`` every ``lease_extend / 3`` seconds on
  drivers with LEASE_EXTEND, so slow jobs are not handed to a second worker. Drivers without
  it rely on their own lease length (set it above your longest handler).
* **Shutdown** (SIGTERM/SIGINT in :meth:`Worker.run`, or :meth:`Worker.stop`): stop fetching,
  let running handlers finish within ``grace`` seconds, then ``nack()`` what is still running
  (and any job waiting for its backoff) so another worker picks it up. A second signal skips
  the grace period.

Delivery semantics follow the driver. With ACK (memory, redis, amqp, faktory, quic) a job is
processed **at least once**: it is settled only after its handler returns, and a worker that
dies leaves it to come back after its lease. Without ACK (``shm://``) dequeue removes the job,
so a worker that dies mid-handler loses it: **at most once**; graceful shutdown still re-enqueues
jobs whose handler did not finish.

Logging goes to the ``unifiedq.worker`` logger with structured fields on each record
(``event``, ``job_id``, ``queue``, ``driver``, ``attempt``, ``job_type``, ``duration``,
``error``); :class:`JsonLogFormatter` renders them as one JSON object per line.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import heapq
import importlib
import inspect
import itertools
import json
import logging
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import FrameType
from typing import Any, TypeAlias, TypeVar

from ._capabilities import Capability
from ._connect import connect, connect_async
from ._errors import ConfigurationError, InvalidArgument, JobNotLeased, UnifiedQError
from ._job import Job
from ._protocol import AsyncQueue, Queue
from .limits import RateLimiter, TokenBucket
from .metrics import Metrics, NullMetrics

__all__ = [
    "ATTEMPT_HEADER",
    "ERROR_HEADER",
    "AsyncWorker",
    "JsonLogFormatter",
    "Middleware",
    "NoHandler",
    "Retry",
    "RetryLater",
    "Router",
    "SkipRetry",
    "Worker",
    "WorkerStats",
    "worker_main",
]

log = logging.getLogger("unifiedq.worker")
log.addHandler(logging.NullHandler())  # a library must not print unless the app configures logging

#: Header carrying the attempt number on re-enqueued copies.
ATTEMPT_HEADER = "x-unifiedq-attempt"
#: Header carrying the last error on re-enqueued and dead-lettered copies.
ERROR_HEADER = "x-unifiedq-error"
_MAX_ERROR = 500

SyncHandler: TypeAlias = Callable[[Job], object]
AsyncHandler: TypeAlias = Callable[[Job], Awaitable[object]]
Handler: TypeAlias = Callable[[Job], Any]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


_UNSET: Any = _Unset()


# -- policy ------------------------------------------------------------------------------------
class SkipRetry(Exception):
    """Raise from a handler to dead-letter the job at once, without further attempts."""


class RetryLater(Exception):
    """Raise from a handler to retry after ``delay`` seconds instead of the backoff.

    The attempt still counts towards ``max_attempts``.
    """

    def __init__(self, delay: float, message: str = "") -> None:
        super().__init__(message or f"retry requested in {delay}s")
        self.delay = float(delay)


class NoHandler(UnifiedQError, LookupError):
    """No handler is registered for the job's type; the job is dead-lettered."""


@dataclasses.dataclass(frozen=True, slots=True)
class Retry:
    """Retry policy: exponential backoff with jitter, then dead-letter.

    The delay before attempt ``n + 1`` is ``min(max_backoff, backoff * factor ** (n - 1))``,
    scaled by a random factor in ``[1 - jitter, 1]`` so that jobs failing together do not
    come back together.

    Attributes:
        max_attempts: Attempts in total (1 = never retry).
        backoff: Delay after the first failure, in seconds.
        factor: Growth per attempt.
        max_backoff: Cap on the delay.
        jitter: Fraction of the delay that is randomised (0..1).
    """

    max_attempts: int = 5
    backoff: float = 1.0
    factor: float = 2.0
    max_backoff: float = 300.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) \
                or self.max_attempts < 1:
            raise InvalidArgument(f"max_attempts must be an int >= 1, not {self.max_attempts!r}")
        if self.backoff < 0 or self.factor < 1 or self.max_backoff < 0:
            raise InvalidArgument("backoff and max_backoff must be >= 0 and factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise InvalidArgument(f"jitter must be within 0..1, not {self.jitter!r}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_backoff, self.backoff * self.factor ** max(0, attempt - 1))
        r = (rng or random).random()
        return base * (1.0 - self.jitter * r)


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """A registered handler and its per-type overrides.

    Attributes:
        fn: The handler: ``fn(job)``, blocking or ``async``.
        timeout: Seconds before the attempt fails; UNSET = the worker's default.
        retry: Retry policy; None = the worker's default.
    """

    fn: Handler
    timeout: float | None = _UNSET
    retry: Retry | None = None

    @property
    def is_async(self) -> bool:
        """True when ``fn`` is a coroutine function."""
        return _is_async(self.fn)


def _is_async(fn: object) -> bool:
    target = getattr(fn, "__call__", None) if not inspect.isroutine(fn) else fn  # noqa: B004
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(target)


class Router:
    """Routes jobs to handlers by a header (the job *type*).

    Args:
        type_header: The header naming the job type.

    Example::

        app = Router()

        @app.handler("resize")
        def resize(job): ...

        @app.default
        def other(job): ...
    """

    def __init__(self, *, type_header: str = "type") -> None:
        self.type_header = type_header
        self._routes: dict[str, Route] = {}
        self._default: Route | None = None

    def add(self, job_type: str | None, fn: Handler, *, timeout: float | None = _UNSET,
            max_attempts: int | None = None, retry: Retry | None = None) -> None:
        """Register ``fn`` for ``job_type`` (None = jobs of any other type).

        Args:
            job_type: The value of the type header, or None for the fallback handler.
            fn: The handler, blocking or ``async``.
            timeout: Per-type timeout (None = no timeout; unset = the worker's).
            max_attempts: Shortcut for ``retry=Retry(max_attempts=...)``.
            retry: A full retry policy for this type.
        """
        if not callable(fn):
            raise InvalidArgument(f"handler must be callable, not {fn!r}")
        if max_attempts is not None:
            retry = dataclasses.replace(retry or Retry(), max_attempts=max_attempts)
        route = Route(fn, timeout, retry)
        if job_type is None:
            self._default = route
        else:
            if not isinstance(job_type, str) or not job_type:
                raise InvalidArgument(f"job_type must be a non-empty str, not {job_type!r}")
            if job_type in self._routes:
                raise InvalidArgument(f"a handler for job type {job_type!r} is already set")
            self._routes[job_type] = route

    def handler(self, job_type: str | None = None, *, timeout: float | None = _UNSET,
                max_attempts: int | None = None,
                retry: Retry | None = None) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add`."""
        def deco(fn: Handler) -> Handler:
            self.add(job_type, fn, timeout=timeout, max_attempts=max_attempts, retry=retry)
            return fn
        return deco

    def default(self, fn: Handler) -> Handler:
        """Decorator registering the fallback handler for unrouted types."""
        self.add(None, fn)
        return fn

    def route(self, job: Job) -> Route | None:
        """Return the route for ``job``, or None if no handler matches."""
        t = job.headers.get(self.type_header)
        if t is not None and t in self._routes:
            return self._routes[t]
        return self._default

    @property
    def types(self) -> list[str]:
        """The registered job types."""
        return sorted(self._routes)

    @property
    def is_async(self) -> bool:
        """True when every handler is a coroutine function (suits :class:`AsyncWorker`)."""
        routes = [*self._routes.values(), *([self._default] if self._default else [])]
        return bool(routes) and all(r.is_async for r in routes)


class Middleware:
    """Hooks around each job. Override what you need; every hook is a no-op.

    Hooks run on the thread (or event loop) handling the job, must be quick and must not
    block the loop in :class:`AsyncWorker`. An exception in ``before`` fails the attempt like
    a handler error; exceptions in ``after`` and ``on_error`` are logged and ignored.
    """

    def before(self, job: Job) -> None:
        """Called before the handler."""

    def after(self, job: Job, duration: float) -> None:
        """Called after the handler succeeded (before the ack)."""

    def on_error(self, job: Job, exc: BaseException, will_retry: bool) -> None:
        """Called after a failed attempt (exception or timeout)."""


@dataclasses.dataclass(slots=True)
class WorkerStats:
    """Counters kept by a worker (read them with :meth:`Worker.stats`).

    Attributes:
        processed: Handler successes.
        failed: Failed attempts (exceptions and timeouts).
        timed_out: Attempts that ran past their timeout.
        retried: Failed jobs scheduled for another attempt.
        dead: Jobs dead-lettered, or dropped where there is no dead set.
        returned: Jobs handed back to the queue at shutdown.
        lease_lost: Jobs whose lease could not be extended or that could not be acked
            because the lease had expired (another worker may run them again).
        in_flight: Handlers running now.
    """

    processed: int = 0
    failed: int = 0
    timed_out: int = 0
    retried: int = 0
    dead: int = 0
    returned: int = 0
    lease_lost: int = 0
    in_flight: int = 0


@dataclasses.dataclass(eq=False)
class _Entry:
    """A leased job the worker is responsible for until it is settled exactly once."""

    job: Job
    attempt: int
    job_type: str | None
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    settled: bool = False
    lease_lost: bool = False
    due: float = 0.0  # for held retries: monotonic time to release it

    @property
    def view(self) -> Job:
        """The job as handlers see it: ``attempt`` is the effective attempt number.

        Queue operations always use the original ``job`` (drivers may read any field).
        """
        if self.job.attempt == self.attempt:
            return self.job
        return dataclasses.replace(self.job, attempt=self.attempt)

    def claim(self) -> bool:
        """Take the right to settle this job; False if someone else already did."""
        with self.lock:
            if self.settled:
                return False
            self.settled = True
            return True


@dataclasses.dataclass(frozen=True, slots=True)
class _Decision:
    retry: bool
    delay: float
    error: str


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:_MAX_ERROR]


def _check_positive(name: str, v: object, *, allow_none: bool = False,
                    allow_zero: bool = False) -> float | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or \
            (v == 0 and not allow_zero):
        raise InvalidArgument(f"{name} must be a number {'>=' if allow_zero else '>'} 0, "
                              f"not {v!r}")
    return float(v)


_Q = TypeVar("_Q", Queue, AsyncQueue)


def _open(source: str | _Q, what: str, kind: type[Any], opener: Callable[..., _Q],
          options: Mapping[str, Any] | None) -> tuple[_Q, bool]:
    """A worker's queue from a URL (opened here: owned) or an open handle; else a clear error."""
    if isinstance(source, str):
        return opener(source, **dict(options or {})), True
    if isinstance(source, kind):
        return source, False
    raise InvalidArgument(f"{what} must be a queue URL or an open {kind.__name__}, "
                          f"not {source!r}")


class _Core:
    """Configuration, policy, logging and counters shared by both flavours (no I/O)."""

    def __init__(
        self,
        handler: Handler | Router,
        *,
        concurrency: int,
        timeout: float | None,
        retry: Retry | None,
        max_attempts: int | None,
        dead_letter: Any,
        lease_extend: float,
        poll_interval: float,
        grace: float,
        middleware: Iterable[Middleware],
        metrics: Metrics | None,
        rate_limit: RateLimiter | None,
        depth_interval: float,
        seed: int | None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidArgument(f"concurrency must be an int >= 1, not {concurrency!r}")
        if isinstance(handler, Router):
            self.router = handler
        elif callable(handler):
            self.router = Router()
            self.router.add(None, handler)
        else:
            raise InvalidArgument(f"handler must be a callable or a Router, not {handler!r}")
        self.concurrency = concurrency
        self.timeout = _check_positive("timeout", timeout, allow_none=True)
        self.retry = retry or Retry()
        if max_attempts is not None:
            self.retry = dataclasses.replace(self.retry, max_attempts=max_attempts)
        self.lease_extend = _check_positive("lease_extend", lease_extend) or 30.0
        self.poll_interval = _check_positive("poll_interval", poll_interval) or 0.5
        self.grace = _check_positive("grace", grace, allow_zero=True) or 0.0
        self.depth_interval = _check_positive("depth_interval", depth_interval) or 5.0
        self.middleware = list(middleware)
        self.metrics = metrics or NullMetrics()
        self.rate_limit = rate_limit
        self.dead_letter_spec = dead_letter
        self._rng = random.Random(seed)
        self._stats = WorkerStats()
        self._stats_lock = threading.Lock()
        # Attempts of copies this process re-enqueued on drivers without HEADERS, by new id.
        self._local_attempts: dict[str, int] = {}
        self.queue_name = "?"
        self.driver = "?"
        self.caps = Capability(0)

    # -- bookkeeping ---------------------------------------------------------------------------
    def stats(self) -> WorkerStats:
        """Return a snapshot of the counters."""
        with self._stats_lock:
            return dataclasses.replace(self._stats)

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for k, v in deltas.items():
                setattr(self._stats, k, getattr(self._stats, k) + v)

    def _fields(self, e: _Entry | None = None, **more: Any) -> dict[str, Any]:
        f: dict[str, Any] = {"queue": self.queue_name, "driver": self.driver}
        if e is not None:
            f.update(job_id=e.job.id, attempt=e.attempt, job_type=e.job_type)
        f.update(more)
        return f

    def _log(self, level: int, event: str, msg: str, e: _Entry | None = None,
             exc_info: Any = None, **more: Any) -> None:
        if log.isEnabledFor(level):
            extra = {"event": event, **self._fields(e, **more)}
            log.log(level, msg, exc_info=exc_info, extra=extra)

    def _entry(self, job: Job) -> _Entry:
        attempt = job.attempt
        hdr = job.headers.get(ATTEMPT_HEADER)
        if hdr is not None and hdr.isdigit():
            attempt = max(attempt, int(hdr))
        with self._stats_lock:
            attempt = max(attempt, self._local_attempts.pop(job.id, 0))
        return _Entry(job, attempt, job.headers.get(self.router.type_header))

    def _decide(self, e: _Entry, route: Route | None, exc: BaseException) -> _Decision:
        err = _error_text(exc)
        policy = (route.retry if route is not None else None) or self.retry
        if route is None or isinstance(exc, SkipRetry | NoHandler) or \
                e.attempt >= policy.max_attempts:
            return _Decision(False, 0.0, err)
        if isinstance(exc, RetryLater):
            return _Decision(True, max(0.0, exc.delay), err)
        with self._stats_lock:
            delay = policy.delay(e.attempt, self._rng)
        if self.driver.startswith("amqp") and delay > 0:
            # RabbitMQ delays go through one TTL queue per distinct delay (in ms): rounding
            # to 2 significant digits keeps jittered backoffs to ~90 queues per decade.
            delay = float(f"{delay:.2g}")
        return _Decision(True, delay, err)

    def _timeout_for(self, route: Route) -> float | None:
        return self.timeout if route.timeout is _UNSET else route.timeout

    def _copy_headers(self, job: Job, caps: Capability, **extra: str) -> dict[str, str] | None:
        if Capability.HEADERS not in caps:
            return None
        h = dict(job.headers)
        h.update(extra)
        return h

    def _hook_before(self, job: Job) -> None:
        for m in self.middleware:
            m.before(job)

    def _hook_after(self, e: _Entry, duration: float) -> None:
        for m in self.middleware:
            try:
                m.after(e.view, duration)
            except Exception:
                self._log(logging.ERROR, "middleware_error", "middleware after() raised", e,
                          exc_info=True)

    def _hook_error(self, e: _Entry, exc: BaseException, will_retry: bool) -> None:
        for m in self.middleware:
            try:
                m.on_error(e.view, exc, will_retry)
            except Exception:
                self._log(logging.ERROR, "middleware_error", "middleware on_error() raised", e,
                          exc_info=True)

    def _bind(self, driver: str, name: str, caps: Capability) -> None:
        self.driver, self.queue_name, self.caps = driver, name, caps
        if Capability.ACK not in caps:
            self._log(logging.INFO, "at_most_once",
                      f"driver {driver!r} has no ACK: jobs are removed when dequeued, so a "
                      "worker that dies mid-handler loses them (at-most-once)")


class _Runner:
    """A daemon thread running one call at a time; abandoned (never joined) when a call hangs.

    ``concurrent.futures.ThreadPoolExecutor`` is not used because its threads are joined at
    interpreter exit, so one hung handler would keep the process from ever exiting.
    """

    _ids = itertools.count(1)

    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._work: tuple[Callable[[], object], concurrent.futures.Future[object]] | None = None
        self._stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name=f"{name}-run{next(self._ids)}")
        self.thread.start()

    def submit(self, fn: Callable[[], object]) -> concurrent.futures.Future[object]:
        fut: concurrent.futures.Future[object] = concurrent.futures.Future()
        with self._cond:
            self._work = (fn, fut)
            self._cond.notify()
        return fut

    def retire(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._work is None and not self._stop:
                    self._cond.wait()
                if self._work is None:
                    return
                fn, fut = self._work
                self._work = None
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handler errors travel to the slot thread
                fut.set_exception(exc)


class Worker(_Core):
    """Run blocking handlers over a queue on ``concurrency`` threads.

    Args:
        source: A queue URL (the worker connects, and closes it at the end) or an open
            :class:`Queue` (left open). A :class:`~unifiedq.FairQueue` or
            :class:`~unifiedq.BoundedQueue` works too.
        handler: ``fn(job)`` or a :class:`Router`. Coroutine handlers need AsyncWorker.
        concurrency: Jobs handled at once (one thread each).
        timeout: Default per-attempt timeout in seconds (None = none). A :class:`Router`
            route can override it.
        retry: Retry policy (default: 5 attempts, backoff 1s x2, jitter 0.5).
        max_attempts: Shortcut overriding ``retry.max_attempts``.
        dead_letter: Queue URL or open Queue for jobs out of attempts; None uses the driver's
            ``nack(requeue=False)``.
        lease_extend: Seconds each lease extension asks for (every ``lease_extend / 3`` s).
        poll_interval: Longest blocking wait per fetch (also how fast a stop is noticed).
        grace: Seconds to let running handlers finish at shutdown.
        middleware: Hooks run around each job.
        metrics: Where to report (e.g. :class:`~unifiedq.metrics.PrometheusMetrics`).
        rate_limit: A token bucket acquired before each fetch (consumer-side limit).
        depth_interval: Seconds between queue-depth samples for metrics.
        seed: Seed of the jitter RNG (tests).
        connect_options: Options for ``connect()`` when ``source`` is a URL.
    """

    def __init__(
        self,
        source: str | Queue,
        handler: SyncHandler | Router,
        *,
        concurrency: int = 1,
        timeout: float | None = 300.0,
        retry: Retry | None = None,
        max_attempts: int | None = None,
        dead_letter: str | Queue | None = None,
        lease_extend: float = 30.0,
        poll_interval: float = 0.5,
        grace: float = 30.0,
        middleware: Iterable[Middleware] = (),
        metrics: Metrics | None = None,
        rate_limit: RateLimiter | None = None,
        depth_interval: float = 5.0,
        seed: int | None = None,
        connect_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(handler, concurrency=concurrency, timeout=timeout, retry=retry,
                         max_attempts=max_attempts, dead_letter=dead_letter,
                         lease_extend=lease_extend, poll_interval=poll_interval, grace=grace,
                         middleware=middleware, metrics=metrics, rate_limit=rate_limit,
                         depth_interval=depth_interval, seed=seed)
        self.queue, self._owns_queue = _open(source, "source", Queue, connect,
                                             connect_options)
        self._dl: Queue | None = None
        self._owns_dl = False
        if dead_letter is not None:
            self._dl, self._owns_dl = _open(dead_letter, "dead_letter", Queue, connect, None)
        self._bind(self.queue.driver, self.queue.name, self.queue.capabilities)
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._hk_cond = threading.Condition(self._lock)
        self._inflight: set[_Entry] = set()
        self._held: list[tuple[float, int, _Entry]] = []  # retries waiting for their backoff
        self._seq = itertools.count()
        self._slots: list[threading.Thread] = []
        self._hk: threading.Thread | None = None
        self._started = False
        self._deadline: float | None = None  # grace deadline once stopping

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the slot threads and the housekeeper; return at once."""
        with self._lock:
            if self._started:
                raise RuntimeError("this worker was already started")
            self._started = True
        if self.router.is_async:
            raise InvalidArgument("every handler is async: use AsyncWorker")
        self._log(logging.INFO, "worker_start",
                  f"worker starting: {self.concurrency} slots on {self.driver}:{self.queue_name}",
                  concurrency=self.concurrency)
        for i in range(self.concurrency):
            t = threading.Thread(target=self._slot, name=f"unifiedq-worker-{i}", daemon=True)
            self._slots.append(t)
            t.start()
        self._hk = threading.Thread(target=self._housekeeper, name="unifiedq-worker-hk",
                                    daemon=True)
        self._hk.start()

    def stop(self, grace: float | None = None, *, wait: bool = True) -> None:
        """Stop fetching; let running handlers finish within ``grace``; return the rest.

        Args:
            grace: Seconds to wait for running handlers (default: the worker's ``grace``).
            wait: Block until the worker has fully stopped.
        """
        g = self.grace if grace is None else max(0.0, grace)
        with self._lock:
            first = not self._stopping.is_set()
            dl = time.monotonic() + g
            self._deadline = dl if self._deadline is None else min(self._deadline, dl)
            self._stopping.set()
            self._hk_cond.notify_all()
        if first:
            self._log(logging.INFO, "worker_stopping",
                      f"worker stopping: {len(self._inflight)} in flight, grace {g:g}s")
            threading.Thread(target=self._shutdown, name="unifiedq-worker-stop",
                             daemon=True).start()
        if wait:
            self.join()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the worker has stopped; return True if it has."""
        return self._done.wait(timeout)

    def run(self, *, install_signals: bool = True) -> None:
        """Run until stopped; SIGTERM/SIGINT stop gracefully (a second one skips the grace).

        Args:
            install_signals: Install the signal handlers (only possible on the main thread).
        """
        old: dict[int, Any] = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            count = itertools.count()

            def on_signal(signum: int, frame: FrameType | None) -> None:
                n = next(count)
                self._log(logging.INFO, "signal", f"got signal {signum}", signal=signum)
                self.stop(0.0 if n else None, wait=False)

            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, on_signal)
        try:
            if not self._started:
                self.start()
            while not self._done.wait(0.2):  # short waits so signal handlers get to run
                pass
        except BaseException:
            self.stop(0.0, wait=False)
            self._done.wait(5.0)
            raise
        finally:
            for sig_no, h in old.items():
                signal.signal(sig_no, h)

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _shutdown(self) -> None:
        for t in self._slots:
            while t.is_alive():
                left = (self._deadline or 0.0) - time.monotonic()
                t.join(max(0.0, min(left, 0.1)) if left > 0 else 0.05)
                if left <= 0:
                    break
        with self._lock:
            running = list(self._inflight)
        for e in running:  # still running after the grace: hand them back
            if e.claim():
                self._return(e, "grace period over")
        for t in self._slots:
            t.join(5.0)  # slots notice their job was taken and exit
        self._flush_held()
        with self._lock:
            self._hk_cond.notify_all()
        if self._hk is not None:
            self._hk.join(5.0)
        if self._owns_queue:
            self._safe(self.queue.close)
        if self._dl is not None and self._owns_dl:
            self._safe(self._dl.close)
        self._log(logging.INFO, "worker_stopped", "worker stopped", **dataclasses.asdict(
            self.stats()))
        self._done.set()

    def _safe(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:
            self._log(logging.WARNING, "close_error", "error while closing", exc_info=True)

    # -- slots ---------------------------------------------------------------------------------
    def _fetch(self) -> Job | None:
        if self.rate_limit is not None and not _limit_wait(self.rate_limit, self.poll_interval,
                                                           self._stopping):
            return None
        if Capability.BLOCKING_DEQUEUE in self.caps:
            return self.queue.dequeue(timeout=self.poll_interval)
        job = self.queue.dequeue(timeout=0)
        if job is None:
            self._stopping.wait(min(self.poll_interval, 0.05))
        return job

    def _slot(self) -> None:
        runner: _Runner | None = None
        errors = 0
        while not self._stopping.is_set():
            try:
                job = self._fetch()
                errors = 0
            except Exception:
                errors += 1
                self._log(logging.ERROR, "fetch_error", "dequeue failed; retrying",
                          exc_info=True)
                self._stopping.wait(min(5.0, 0.1 * 2 ** min(errors, 6)))
                continue
            if job is None:
                continue
            e = self._entry(job)
            if self._stopping.is_set():
                if e.claim():
                    self._return(e, "fetched during shutdown")
                break
            if runner is None:
                runner = _Runner(threading.current_thread().name)
            if not self._process(e, runner):
                runner.retire()  # stuck in a hung handler: let it exit whenever that returns
                runner = None
        if runner is not None:
            runner.retire()

    def _process(self, e: _Entry, runner: _Runner) -> bool:
        """Run one job; return False if ``runner`` was abandoned to a hung handler."""
        route = self.router.route(e.job)
        with self._lock:
            self._inflight.add(e)
        self._count(in_flight=1)
        self.metrics.in_flight(self.queue_name, self.driver, 1)
        start = time.monotonic()
        runner_ok = True
        try:
            if route is None:
                self._failure(e, None, NoHandler(f"no handler for job type {e.job_type!r}"), 0.0)
                return True
            if route.is_async:
                self._failure(e, route, SkipRetry("async handler in a threaded Worker"), 0.0)
                return True
            limit = self._timeout_for(route)
            self._log(logging.DEBUG, "job_start", "job started", e)

            view = e.view

            def call() -> object:
                self._hook_before(view)
                return route.fn(view)

            fut = runner.submit(call)
            exc: BaseException | None = None
            timed_out = False
            end = None if limit is None else start + limit
            while True:
                step = 0.25 if end is None else max(0.0, min(0.25, end - time.monotonic()))
                try:
                    fut.result(timeout=step)
                    break
                except concurrent.futures.TimeoutError:
                    if e.settled:  # shutdown handed it back after the grace period
                        return False
                    if end is not None and time.monotonic() >= end:
                        timed_out, runner_ok = True, False
                        exc = TimeoutError(f"handler ran past its {limit:g}s timeout")
                        break
                except Exception as err:
                    exc = err
                    break
                except BaseException as err:  # SystemExit etc. from a handler: a failure
                    exc = err
                    break
            duration = time.monotonic() - start
            if exc is None:
                self._success(e, duration)
            else:
                if timed_out:
                    self._count(timed_out=1)
                    self.metrics.timed_out(self.queue_name, self.driver)
                    self._log(logging.WARNING, "job_timeout",
                              "handler timed out; its thread is abandoned", e, duration=duration)
                self._failure(e, route, exc, duration)
            return runner_ok
        finally:
            with self._lock:
                self._inflight.discard(e)
            self._count(in_flight=-1)
            self.metrics.in_flight(self.queue_name, self.driver, -1)

    # -- settling ------------------------------------------------------------------------------
    def _success(self, e: _Entry, duration: float) -> None:
        if not e.claim():
            return
        self._hook_after(e, duration)
        if Capability.ACK in self.caps:
            try:
                self.queue.ack(e.job)
            except JobNotLeased:
                self._count(lease_lost=1)
                self._log(logging.WARNING, "lease_lost",
                          "job finished but its lease had expired; it may run again", e)
            except Exception:
                self._log(logging.ERROR, "ack_error", "ack failed; the job will come back "
                          "after its lease", e, exc_info=True)
        self._count(processed=1)
        self.metrics.processed(self.queue_name, self.driver, duration)
        self._log(logging.INFO, "job_done", "job done", e, duration=round(duration, 6))

    def _failure(self, e: _Entry, route: Route | None, exc: BaseException,
                 duration: float) -> None:
        if not e.claim():
            return
        d = self._decide(e, route, exc)
        self._count(failed=1)
        self.metrics.failed(self.queue_name, self.driver, duration)
        self._hook_error(e, exc, d.retry)
        tb = (type(exc), exc, exc.__traceback__) if not isinstance(exc, TimeoutError) else None
        try:
            if d.retry:
                self._log(logging.WARNING, "job_retry", f"job failed; retry in {d.delay:.3g}s",
                          e, error=d.error, delay=d.delay)
                self._retry(e, d)
                self._count(retried=1)
                self.metrics.retried(self.queue_name, self.driver)
            else:
                self._log(logging.ERROR, "job_dead", "job failed for the last time; "
                          "dead-lettering it", e, error=d.error, exc_info=tb)
                self._dead(e, d)
                self._count(dead=1)
                self.metrics.dead(self.queue_name, self.driver)
        except JobNotLeased:
            self._count(lease_lost=1)
            self._log(logging.WARNING, "lease_lost", "could not settle the failed job: its "
                      "lease expired, so the queue already handed it out again", e)
        except Exception:
            self._log(logging.ERROR, "settle_error", "could not settle the failed job; it will "
                      "come back after its lease (ACK drivers)", e, exc_info=True)

    def _retry(self, e: _Entry, d: _Decision) -> None:
        q, caps = self.queue, self.caps
        if Capability.ACK in caps:
            if d.delay <= 0:
                q.nack(e.job)
            elif Capability.DELAY in caps:
                q.nack(e.job, delay=d.delay)
            else:
                self._hold(e, d.delay)
            return
        if Capability.DELAY in caps or d.delay <= 0:
            self._reenqueue(e, d.error, d.delay)
        else:
            self._hold(e, d.delay)

    def _reenqueue(self, e: _Entry, error: str, delay: float) -> None:
        hdrs = self._copy_headers(e.job, self.caps, **{ATTEMPT_HEADER: str(e.attempt + 1),
                                                       ERROR_HEADER: error})
        new_id = self.queue.enqueue(e.job.body, headers=hdrs,
                                    delay=delay if delay > 0 else None)
        if hdrs is None:
            with self._stats_lock:
                self._local_attempts[new_id] = e.attempt + 1

    def _hold(self, e: _Entry, delay: float) -> None:
        with self._lock:
            e.due = time.monotonic() + delay
            heapq.heappush(self._held, (e.due, next(self._seq), e))
            self._hk_cond.notify_all()

    def _release(self, e: _Entry) -> None:
        """A held retry is due (or we are stopping): give it back to the queue."""
        try:
            if Capability.ACK in self.caps:
                self.queue.nack(e.job)
            else:
                self._reenqueue(e, e.job.headers.get(ERROR_HEADER, ""), 0.0)
        except JobNotLeased:
            self._count(lease_lost=1)
        except Exception:
            self._log(logging.ERROR, "settle_error", "could not release a held retry", e,
                      exc_info=True)

    def _flush_held(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for _, _, e in held:
            self._release(e)

    def _dead(self, e: _Entry, d: _Decision) -> None:
        if self._dl is not None:
            hdrs = self._copy_headers(e.job, self._dl.capabilities, **{
                ERROR_HEADER: d.error, "x-unifiedq-attempts": str(e.attempt),
                "x-unifiedq-job-id": e.job.id, "x-unifiedq-queue": e.job.queue})
            self._dl.enqueue(e.job.body, headers=hdrs)
            if Capability.ACK in self.caps:
                self.queue.ack(e.job)
        elif Capability.ACK in self.caps:
            self.queue.nack(e.job, requeue=False)
        else:
            self._log(logging.ERROR, "job_dropped", "job dropped: the driver has no dead set "
                      "and no dead_letter queue was given", e, error=d.error)

    def _return(self, e: _Entry, why: str) -> None:
        """Hand a job back at shutdown without counting a failure."""
        try:
            if Capability.ACK in self.caps:
                self.queue.nack(e.job)
            else:
                hdrs = self._copy_headers(e.job, self.caps, **{ATTEMPT_HEADER: str(e.attempt)})
                self.queue.enqueue(e.job.body, headers=hdrs)
            self._count(returned=1)
            self._log(logging.INFO, "job_returned", f"job returned to the queue ({why})", e)
        except JobNotLeased:
            self._count(lease_lost=1)
        except Exception:
            self._log(logging.ERROR, "settle_error", "could not return the job", e,
                      exc_info=True)

    # -- housekeeping --------------------------------------------------------------------------
    def _housekeeper(self) -> None:
        extend = Capability.LEASE_EXTEND in self.caps
        every = self.lease_extend / 3.0
        next_beat = time.monotonic() + every
        next_depth = time.monotonic()
        track_depth = not isinstance(self.metrics, NullMetrics)
        while True:
            with self._lock:
                if self._stopping.is_set() and not self._inflight and (
                        self._done.is_set() or not any(t.is_alive() for t in self._slots)):
                    return
                now = time.monotonic()
                due: list[_Entry] = []
                while self._held and self._held[0][0] <= now and not self._stopping.is_set():
                    due.append(heapq.heappop(self._held)[2])
                waits = [next_beat - now]
                if self._held:
                    waits.append(self._held[0][0] - now)
                if track_depth:
                    waits.append(next_depth - now)
                if not due and min(waits) > 0:
                    self._hk_cond.wait(min(min(waits), 1.0))
                    continue
                beat = [x for x in (*self._inflight, *(h[2] for h in self._held))
                        if not x.lease_lost] if extend and now >= next_beat else []
            for e in due:
                self._release(e)
            for e in beat:
                if e.settled and e not in self._inflight:
                    continue
                try:
                    self.queue.extend_lease(e.job, self.lease_extend)
                except JobNotLeased:
                    e.lease_lost = True
                    self._count(lease_lost=1)
                    self._log(logging.WARNING, "lease_lost", "could not extend the lease: it "
                              "expired and the job may run twice", e)
                except Exception:
                    self._log(logging.WARNING, "extend_error", "extend_lease failed", e,
                              exc_info=True)
            if extend and now >= next_beat:
                next_beat = now + every
            if track_depth and now >= next_depth:
                next_depth = now + self.depth_interval
                self._sample_depth()

    def _sample_depth(self) -> None:
        try:
            size = self.queue.size()
            oldest = None
            if Capability.PEEK in self.caps:
                head = self.queue.peek()
                if head is not None and head.enqueued_at > 0:
                    oldest = max(0.0, time.time() - head.enqueued_at)
            self.metrics.depth(self.queue_name, self.driver, size, oldest)
        except Exception:
            self._log(logging.DEBUG, "depth_error", "could not sample the queue depth",
                      exc_info=True)


def _limit_wait(limit: RateLimiter, most: float, stop: threading.Event) -> bool:
    if limit.try_acquire():
        return True
    stop.wait(min(most, max(limit.wait_time(), 0.0005)))
    return limit.try_acquire()


async def _limit_wait_async(limit: RateLimiter, most: float) -> bool:
    if limit.try_acquire():
        return True
    await asyncio.sleep(min(most, max(limit.wait_time(), 0.0005)))
    return limit.try_acquire()


# -- asyncio flavour ---------------------------------------------------------------------------
class AsyncWorker(_Core):
    """Run coroutine handlers over an asyncio queue as ``concurrency`` tasks.

    Takes the same arguments as :class:`Worker`; ``source`` is a URL (opened with
    ``connect_async``) or an :class:`AsyncQueue`. Blocking handlers are allowed and run on
    daemon threads (one per task slot). Use ``await worker.run()`` (SIGTERM/SIGINT stop it
    gracefully when it runs on the main thread's loop), or ``start()`` / ``await stop()``.
    """

    def __init__(
        self,
        source: str | AsyncQueue,
        handler: Handler | Router,
        *,
        concurrency: int = 1,
        timeout: float | None = 300.0,
        retry: Retry | None = None,
        max_attempts: int | None = None,
        dead_letter: str | AsyncQueue | None = None,
        lease_extend: float = 30.0,
        poll_interval: float = 0.5,
        grace: float = 30.0,
        middleware: Iterable[Middleware] = (),
        metrics: Metrics | None = None,
        rate_limit: RateLimiter | None = None,
        depth_interval: float = 5.0,
        seed: int | None = None,
        connect_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(handler, concurrency=concurrency, timeout=timeout, retry=retry,
                         max_attempts=max_attempts, dead_letter=dead_letter,
                         lease_extend=lease_extend, poll_interval=poll_interval, grace=grace,
                         middleware=middleware, metrics=metrics, rate_limit=rate_limit,
                         depth_interval=depth_interval, seed=seed)
        self.queue, self._owns_queue = _open(source, "source", AsyncQueue, connect_async,
                                             connect_options)
        self._dl: AsyncQueue | None = None
        self._owns_dl = False
        if dead_letter is not None:
            self._dl, self._owns_dl = _open(dead_letter, "dead_letter", AsyncQueue,
                                            connect_async, None)
        self._bind(self.queue.driver, self.queue.name, self.queue.capabilities)
        self._stopping: asyncio.Event | None = None
        self._done: asyncio.Event | None = None
        self._inflight: set[_Entry] = set()
        self._held: list[tuple[float, int, _Entry]] = []
        self._seq = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._hk: asyncio.Task[None] | None = None
        self._stopper: asyncio.Task[None] | None = None
        self._deadline: float | None = None
        self._wake: asyncio.Event | None = None

    def start(self) -> None:
        """Start the slot tasks on the running loop; return at once."""
        if self._done is not None:
            raise RuntimeError("this worker was already started")
        self._stopping, self._done, self._wake = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._log(logging.INFO, "worker_start",
                  f"async worker starting: {self.concurrency} tasks on "
                  f"{self.driver}:{self.queue_name}", concurrency=self.concurrency)
        self._tasks = [asyncio.create_task(self._slot(i), name=f"unifiedq-worker-{i}")
                       for i in range(self.concurrency)]
        self._hk = asyncio.create_task(self._housekeeper(), name="unifiedq-worker-hk")

    def request_stop(self, grace: float | None = None) -> None:
        """Begin a graceful stop without waiting (safe to call from a signal handler)."""
        assert self._stopping is not None, "start() the worker first"
        g = self.grace if grace is None else max(0.0, grace)
        dl = asyncio.get_running_loop().time() + g
        self._deadline = dl if self._deadline is None else min(self._deadline, dl)
        if not self._stopping.is_set():
            self._stopping.set()
            self._log(logging.INFO, "worker_stopping",
                      f"worker stopping: {len(self._inflight)} in flight, grace {g:g}s")
            self._stopper = asyncio.create_task(self._shutdown())
        assert self._wake is not None
        self._wake.set()

    async def stop(self, grace: float | None = None) -> None:
        """Stop gracefully and wait until stopped (see :meth:`Worker.stop`)."""
        self.request_stop(grace)
        await self.join()

    async def join(self) -> None:
        """Wait until the worker has stopped."""
        assert self._done is not None, "start() the worker first"
        await self._done.wait()

    def stats(self) -> WorkerStats:
        """Return a snapshot of the counters."""
        return super().stats()

    async def run(self, *, install_signals: bool = True) -> None:
        """Run until stopped; SIGTERM/SIGINT stop gracefully (a second one skips the grace)."""
        loop = asyncio.get_running_loop()
        if self._done is None:
            self.start()
        installed: list[int] = []
        if install_signals and threading.current_thread() is threading.main_thread():
            count = itertools.count()

            def on_signal(signum: int) -> None:
                self._log(logging.INFO, "signal", f"got signal {signum}", signal=signum)
                self.request_stop(0.0 if next(count) else None)

            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, on_signal, sig)
                    installed.append(sig)
        try:
            await self.join()
        except asyncio.CancelledError:
            self.request_stop(0.0)
            await asyncio.shield(self.join())
            raise
        finally:
            for sig_no in installed:
                loop.remove_signal_handler(sig_no)

    async def __aenter__(self) -> AsyncWorker:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        pending = [t for t in self._tasks if not t.done()]
        left = (self._deadline or 0.0) - loop.time()
        while pending and left > 0:
            _, still = await asyncio.wait(pending, timeout=min(left, 0.1))
            pending = list(still)
            left = (self._deadline or 0.0) - loop.time()
        for e in list(self._inflight):
            if e.claim():
                await self._return(e, "grace period over")
        for t in pending:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        held, self._held = self._held, []
        for _, _, e in held:
            await self._release(e)
        if self._hk is not None:
            self._hk.cancel()
            await asyncio.gather(self._hk, return_exceptions=True)
        if self._owns_queue:
            await self._safe(self.queue.aclose())
        if self._dl is not None and self._owns_dl:
            await self._safe(self._dl.aclose())
        self._log(logging.INFO, "worker_stopped", "worker stopped",
                  **dataclasses.asdict(self.stats()))
        assert self._done is not None
        self._done.set()

    async def _safe(self, aw: Awaitable[object]) -> None:
        try:
            await aw
        except Exception:
            self._log(logging.WARNING, "close_error", "error while closing", exc_info=True)

    async def _fetch(self) -> Job | None:
        if self.rate_limit is not None and not await _limit_wait_async(self.rate_limit,
                                                                       self.poll_interval):
            return None
        if Capability.BLOCKING_DEQUEUE in self.caps:
            return await self.queue.dequeue(timeout=self.poll_interval)
        job = await self.queue.dequeue(timeout=0)
        if job is None:
            await asyncio.sleep(min(self.poll_interval, 0.05))
        return job

    async def _slot(self, i: int) -> None:
        assert self._stopping is not None
        runner: _Runner | None = None
        errors = 0
        try:
            while not self._stopping.is_set():
                try:
                    job = await self._fetch()
                    errors = 0
                except Exception:
                    errors += 1
                    self._log(logging.ERROR, "fetch_error", "dequeue failed; retrying",
                              exc_info=True)
                    await asyncio.sleep(min(5.0, 0.1 * 2 ** min(errors, 6)))
                    continue
                if job is None:
                    continue
                e = self._entry(job)
                if self._stopping.is_set():
                    if e.claim():
                        await self._return(e, "fetched during shutdown")
                    break
                route = self.router.route(job)
                if route is not None and not route.is_async and runner is None:
                    runner = _Runner(f"unifiedq-worker-{i}")
                if not await self._process(e, route, runner):
                    if runner is not None:
                        runner.retire()
                    runner = None
        finally:
            if runner is not None:
                runner.retire()

    async def _process(self, e: _Entry, route: Route | None, runner: _Runner | None) -> bool:
        self._inflight.add(e)
        self._count(in_flight=1)
        self.metrics.in_flight(self.queue_name, self.driver, 1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        runner_ok = True
        try:
            if route is None:
                await self._failure(e, None, NoHandler(f"no handler for job type "
                                                       f"{e.job_type!r}"), 0.0)
                return True
            limit = self._timeout_for(route)
            fut: asyncio.Future[object]
            if route.is_async:
                view = e.view

                async def call() -> object:
                    self._hook_before(view)
                    return await route.fn(view)
                fut = asyncio.ensure_future(call())
            else:
                assert runner is not None

                sview = e.view

                def scall() -> object:
                    self._hook_before(sview)
                    return route.fn(sview)
                fut = asyncio.wrap_future(runner.submit(scall))
            done, _ = await asyncio.wait({fut}, timeout=limit)
            duration = loop.time() - start
            if e.settled:  # handed back by shutdown meanwhile
                fut.cancel()
                return route.is_async or fut.done()
            if not done:
                fut.cancel()  # cancels a coroutine; a thread keeps running, abandoned
                runner_ok = route.is_async
                self._count(timed_out=1)
                self.metrics.timed_out(self.queue_name, self.driver)
                self._log(logging.WARNING, "job_timeout", "handler timed out", e,
                          duration=duration)
                await self._failure(e, route, TimeoutError(
                    f"handler ran past its {limit:g}s timeout"), duration)
                return runner_ok
            exc = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
            if exc is None:
                await self._success(e, duration)
            else:
                await self._failure(e, route, exc, duration)
            return True
        except asyncio.CancelledError:
            # Our task was cancelled (hard stop): hand the job back, then stop.
            if e.claim():
                await asyncio.shield(self._return(e, "worker cancelled"))
            raise
        finally:
            self._inflight.discard(e)
            self._count(in_flight=-1)
            self.metrics.in_flight(self.queue_name, self.driver, -1)

    async def _success(self, e: _Entry, duration: float) -> None:
        if not e.claim():
            return
        self._hook_after(e, duration)
        if Capability.ACK in self.caps:
            try:
                await self.queue.ack(e.job)
            except JobNotLeased:
                self._count(lease_lost=1)
                self._log(logging.WARNING, "lease_lost",
                          "job finished but its lease had expired; it may run again", e)
            except Exception:
                self._log(logging.ERROR, "ack_error", "ack failed; the job will come back "
                          "after its lease", e, exc_info=True)
        self._count(processed=1)
        self.metrics.processed(self.queue_name, self.driver, duration)
        self._log(logging.INFO, "job_done", "job done", e, duration=round(duration, 6))

    async def _failure(self, e: _Entry, route: Route | None, exc: BaseException,
                       duration: float) -> None:
        if not e.claim():
            return
        d = self._decide(e, route, exc)
        self._count(failed=1)
        self.metrics.failed(self.queue_name, self.driver, duration)
        self._hook_error(e, exc, d.retry)
        tb = (type(exc), exc, exc.__traceback__) if not isinstance(exc, TimeoutError) else None
        try:
            if d.retry:
                self._log(logging.WARNING, "job_retry", f"job failed; retry in {d.delay:.3g}s",
                          e, error=d.error, delay=d.delay)
                await self._retry(e, d)
                self._count(retried=1)
                self.metrics.retried(self.queue_name, self.driver)
            else:
                self._log(logging.ERROR, "job_dead", "job failed for the last time; "
                          "dead-lettering it", e, error=d.error, exc_info=tb)
                await self._dead(e, d)
                self._count(dead=1)
                self.metrics.dead(self.queue_name, self.driver)
        except JobNotLeased:
            self._count(lease_lost=1)
            self._log(logging.WARNING, "lease_lost", "could not settle the failed job: its "
                      "lease expired", e)
        except Exception:
            self._log(logging.ERROR, "settle_error", "could not settle the failed job", e,
                      exc_info=True)

    async def _retry(self, e: _Entry, d: _Decision) -> None:
        q, caps = self.queue, self.caps
        if Capability.ACK in caps:
            if d.delay <= 0:
                await q.nack(e.job)
            elif Capability.DELAY in caps:
                await q.nack(e.job, delay=d.delay)
            else:
                self._hold(e, d.delay)
            return
        if Capability.DELAY in caps or d.delay <= 0:
            await self._reenqueue(e, d.error, d.delay)
        else:
            self._hold(e, d.delay)

    def _hold(self, e: _Entry, delay: float) -> None:
        e.due = time.monotonic() + delay
        heapq.heappush(self._held, (e.due, next(self._seq), e))
        if self._wake is not None:
            self._wake.set()

    async def _reenqueue(self, e: _Entry, error: str, delay: float) -> None:
        hdrs = self._copy_headers(e.job, self.caps, **{ATTEMPT_HEADER: str(e.attempt + 1),
                                                       ERROR_HEADER: error})
        new_id = await self.queue.enqueue(e.job.body, headers=hdrs,
                                          delay=delay if delay > 0 else None)
        if hdrs is None:
            with self._stats_lock:
                self._local_attempts[new_id] = e.attempt + 1

    async def _release(self, e: _Entry) -> None:
        try:
            if Capability.ACK in self.caps:
                await self.queue.nack(e.job)
            else:
                await self._reenqueue(e, e.job.headers.get(ERROR_HEADER, ""), 0.0)
        except JobNotLeased:
            self._count(lease_lost=1)
        except Exception:
            self._log(logging.ERROR, "settle_error", "could not release a held retry", e,
                      exc_info=True)

    async def _dead(self, e: _Entry, d: _Decision) -> None:
        if self._dl is not None:
            hdrs = self._copy_headers(e.job, self._dl.capabilities, **{
                ERROR_HEADER: d.error, "x-unifiedq-attempts": str(e.attempt),
                "x-unifiedq-job-id": e.job.id, "x-unifiedq-queue": e.job.queue})
            await self._dl.enqueue(e.job.body, headers=hdrs)
            if Capability.ACK in self.caps:
                await self.queue.ack(e.job)
        elif Capability.ACK in self.caps:
            await self.queue.nack(e.job, requeue=False)
        else:
            self._log(logging.ERROR, "job_dropped", "job dropped: the driver has no dead set "
                      "and no dead_letter queue was given", e, error=d.error)

    async def _return(self, e: _Entry, why: str) -> None:
        try:
            if Capability.ACK in self.caps:
                await self.queue.nack(e.job)
            else:
                hdrs = self._copy_headers(e.job, self.caps, **{ATTEMPT_HEADER: str(e.attempt)})
                await self.queue.enqueue(e.job.body, headers=hdrs)
            self._count(returned=1)
            self._log(logging.INFO, "job_returned", f"job returned to the queue ({why})", e)
        except JobNotLeased:
            self._count(lease_lost=1)
        except Exception:
            self._log(logging.ERROR, "settle_error", "could not return the job", e,
                      exc_info=True)

    async def _housekeeper(self) -> None:
        assert self._wake is not None and self._stopping is not None
        extend = Capability.LEASE_EXTEND in self.caps
        every = self.lease_extend / 3.0
        next_beat = time.monotonic() + every
        next_depth = time.monotonic()
        track_depth = not isinstance(self.metrics, NullMetrics)
        while True:
            now = time.monotonic()
            while self._held and self._held[0][0] <= now and not self._stopping.is_set():
                await self._release(heapq.heappop(self._held)[2])
            if extend and now >= next_beat:
                next_beat = now + every
                for e in [*self._inflight, *(h[2] for h in self._held)]:
                    if e.lease_lost or (e.settled and e not in self._inflight):
                        continue
                    try:
                        await self.queue.extend_lease(e.job, self.lease_extend)
                    except JobNotLeased:
                        e.lease_lost = True
                        self._count(lease_lost=1)
                        self._log(logging.WARNING, "lease_lost", "could not extend the lease",
                                  e)
                    except Exception:
                        self._log(logging.WARNING, "extend_error", "extend_lease failed", e,
                                  exc_info=True)
            if track_depth and now >= next_depth:
                next_depth = now + self.depth_interval
                await self._sample_depth()
            waits = [next_beat - now, 1.0]
            if self._held:
                waits.append(self._held[0][0] - now)
            if track_depth:
                waits.append(next_depth - now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.001, min(waits)))

    async def _sample_depth(self) -> None:
        try:
            size = await self.queue.size()
            oldest = None
            if Capability.PEEK in self.caps:
                head = await self.queue.peek()
                if head is not None and head.enqueued_at > 0:
                    oldest = max(0.0, time.time() - head.enqueued_at)
            self.metrics.depth(self.queue_name, self.driver, size, oldest)
        except Exception:
            self._log(logging.DEBUG, "depth_error", "could not sample the queue depth",
                      exc_info=True)


# -- logging -----------------------------------------------------------------------------------
_LOG_FIELDS = ("event", "queue", "driver", "job_id", "attempt", "job_type", "duration",
               "error", "delay", "signal", "concurrency", "processed", "failed", "retried",
               "dead", "returned", "timed_out", "lease_lost", "in_flight")


class JsonLogFormatter(logging.Formatter):
    """Formats records as one JSON object per line, with the worker's structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as JSON."""
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k in _LOG_FIELDS:
            v = record.__dict__.get(k)
            if v is not None:
                out[k] = v
        if record.exc_info and record.exc_info[0] is not None:
            out["exc"] = "".join(traceback.format_exception(*record.exc_info)).strip()
        return json.dumps(out, default=str)


# -- command line ------------------------------------------------------------------------------
def _load_target(spec: str) -> Any:
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise InvalidArgument(f"expected 'package.module:attribute', not {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(mod_name)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InvalidArgument(f"module {mod_name!r} has no attribute {attr!r}") from None
    return obj


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unifiedq worker",
        description="Run handlers from APP (package.module:attribute, a Router or a callable "
                    "taking a Job) over the queue at --url until SIGTERM/SIGINT.")
    p.add_argument("app", help="package.module:attribute")
    p.add_argument("--url", required=True, help="queue URL, e.g. redis://localhost/0?queue=q")
    p.add_argument("--concurrency", "-c", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300.0,
                   help="per-attempt timeout in seconds (0 = none)")
    p.add_argument("--max-attempts", type=int, default=5)
    p.add_argument("--backoff", type=float, default=1.0, help="first retry delay, seconds")
    p.add_argument("--grace", type=float, default=30.0, help="shutdown grace period, seconds")
    p.add_argument("--dead-letter", default=None, help="URL of a dead-letter queue")
    p.add_argument("--lease-extend", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=None, help="max jobs per second (local)")
    p.add_argument("--flavour", choices=("auto", "threads", "asyncio"), default="auto",
                   help="auto = asyncio when every handler is async")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this port (needs unifiedq[metrics])")
    p.add_argument("--metrics-addr", default="127.0.0.1")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    return p


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point of ``unifiedq worker APP --url URL [--concurrency N] ...``.

    Args:
        argv: Arguments after ``worker`` (None = ``sys.argv[1:]``).

    Returns:
        The process exit code: 0 after a clean shutdown, 1 on error, 2 on bad arguments.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on errors
        return int(exc.code or 0)
    handler = logging.StreamHandler()
    if args.log_json:
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                               "%(message)s [%(event)s]", defaults={"event": "-"}))
    root = logging.getLogger("unifiedq")
    root.addHandler(handler)
    root.setLevel(args.log_level.upper())
    try:
        app = _load_target(args.app)
        if not isinstance(app, Router) and not callable(app):
            raise InvalidArgument(f"{args.app} is neither a Router nor a callable")
        metrics: Metrics | None = None
        if args.metrics_port is not None:
            from .metrics import PrometheusMetrics, start_metrics_server
            metrics = PrometheusMetrics()
            start_metrics_server(args.metrics_port, args.metrics_addr)
        is_async = app.is_async if isinstance(app, Router) else _is_async(app)
        use_async = args.flavour == "asyncio" or (args.flavour == "auto" and is_async)
        kw: dict[str, Any] = dict(
            concurrency=args.concurrency, timeout=args.timeout or None,
            retry=Retry(max_attempts=args.max_attempts, backoff=args.backoff),
            dead_letter=args.dead_letter, lease_extend=args.lease_extend, grace=args.grace,
            metrics=metrics,
            rate_limit=TokenBucket(args.rate, max(1.0, args.rate)) if args.rate else None)
        if use_async:
            aw = AsyncWorker(args.url, app, **kw)
            asyncio.run(aw.run())
        else:
            Worker(args.url, app, **kw).run()
    except (UnifiedQError, ImportError) as exc:
        log.error("%s", exc, extra={"event": "worker_error"})
        bad_input = isinstance(exc, InvalidArgument | ConfigurationError | ImportError)
        return 2 if bad_input else 1
    except KeyboardInterrupt:
        return 130
    finally:
        root.removeHandler(handler)
    return 0
