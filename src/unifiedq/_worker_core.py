"""What both faces of the worker share: policy, routing, counters, logging (no I/O).

:class:`~unifiedq.Worker` and :class:`~unifiedq.AsyncWorker` (one generated from the other, see
docs/contributing.md) subclass :class:`WorkerCore`; the public names are re-exported by
``unifiedq.worker``, whose docstring describes what the worker does.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, TypeAlias, TypeVar

from ._capabilities import Capability
from ._errors import InvalidArgument, UnifiedQError
from ._job import Job
from ._protocol import AsyncQueue, Queue
from .limits import RateLimiter
from .metrics import Metrics, NullMetrics

__all__ = [
    "ATTEMPT_HEADER",
    "ERROR_HEADER",
    "Handler",
    "Middleware",
    "NoHandler",
    "Retry",
    "RetryLater",
    "Route",
    "Router",
    "SkipRetry",
    "WorkerCore",
    "WorkerStats",
    "log",
    "open_queue",
]

log = logging.getLogger("unifiedq.worker")
log.addHandler(logging.NullHandler())  # a library must not print unless the app configures logging

#: Header carrying the attempt number on re-enqueued copies.
ATTEMPT_HEADER = "x-unifiedq-attempt"
#: Header carrying the last error on re-enqueued and dead-lettered copies.
ERROR_HEADER = "x-unifiedq-error"
_MAX_ERROR = 500
# Attempt numbers remembered for copies re-enqueued on drivers without HEADERS. A copy that
# another process dequeues is never looked up here, so the oldest are forgotten beyond this.
_MAX_LOCAL_ATTEMPTS = 10_000

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
    # Looked up once: inspect's checks cost ~5 µs, and the worker asks for every job.
    _async: bool = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_async", _is_async(self.fn))

    @property
    def is_async(self) -> bool:
        """True when ``fn`` is a coroutine function."""
        return self._async


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
        expired: Jobs settled as expired instead of run: past their deadline (by the
            queue's ``dequeue`` or while prefetched) or shed by the ``overload`` policy.
    """

    processed: int = 0
    failed: int = 0
    timed_out: int = 0
    retried: int = 0
    dead: int = 0
    returned: int = 0
    lease_lost: int = 0
    in_flight: int = 0
    expired: int = 0


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
    # Set while a blocking handler runs on its slot's own thread (the housekeeper's watchdog
    # times it out): its route, the slot, and the monotonic start and deadline.
    route: Route | None = None
    slot: int = -1
    started: float = 0.0
    deadline: float | None = None

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


def _running_mean(mean: float | None, sample: float, weight: float) -> float:
    """An exponentially weighted running mean: ``sample`` counts ``weight``; the first is it."""
    return sample if mean is None else mean + weight * (sample - mean)


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


def open_queue(source: str | _Q, what: str, kind: type[Any], opener: Callable[..., _Q],
          options: Mapping[str, Any] | None) -> tuple[_Q, bool]:
    """A worker's queue from a URL (opened here: owned) or an open handle; else a clear error."""
    if isinstance(source, str):
        return opener(source, **dict(options or {})), True
    if isinstance(source, kind):
        return source, False
    raise InvalidArgument(f"{what} must be a queue URL or an open {kind.__name__}, "
                          f"not {source!r}")


class WorkerCore:
    """Configuration, policy, logging and counters shared by both faces (no I/O)."""

    #: Most jobs one fetch takes (fewer when fewer slots are idle; 1 with a ``rate_limit``).
    prefetch_max = 32
    #: Weight of the newest sample in the running means ``prefetch="auto"`` keeps of a slot's
    #: time per job and of a fetch's round trip.
    prefetch_smoothing = 0.05
    #: ``prefetch="auto"``: prefetched jobs expected to wait longer than this (seconds) for
    #: a slot are handed back to the queue (the jobs turned out longer than when fetched).
    prefetch_wait_max = 0.05
    #: Acks of finished jobs are sent together (``ack_many``, drivers with BATCH) once this
    #: many are waiting, when a slot is about to wait for work, or ``ack_window`` s after
    #: the first of them, whichever comes first.
    ack_batch = 32
    #: Longest time an ack waits for its batch, in seconds (see ``ack_batch``).
    ack_window = 0.005
    #: Send the acks waiting for their batch with the next fetch, in the same round trip
    #: (drivers that can: redis). Off by default: it shortens the window in which a crash
    #: redelivers a finished job, but puts the acks on the fetch's critical path, and it
    #: measured 0.9-1.1x the rate at concurrency 8 (docs/worker.md).
    ack_with_fetch = False

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
        # prefetch="auto": running means (s) of a slot's time per job and of a fetch that
        # took jobs without waiting; None until measured (no prefetch before that).
        self._job_time: float | None = None
        self._fetch_time: float | None = None

    # -- prefetch ------------------------------------------------------------------------------
    @staticmethod
    def _check_prefetch(prefetch: object) -> int | Literal["auto"]:
        if prefetch == "auto" and isinstance(prefetch, str):
            return "auto"
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise InvalidArgument(f"prefetch must be 'auto' or an int >= 0, not {prefetch!r}")
        return prefetch

    def _startable(self, seconds: float | None) -> int:
        """How many waiting jobs the slots start within ``seconds`` at their current pace.

        ``b`` waiting jobs drain in ``b * h / concurrency`` seconds when a slot spends ``h``
        per job, so ``concurrency * seconds / h`` of them (capped by ``prefetch_max``); 0
        until ``h`` (and ``seconds``) have been measured.

        ``prefetch="auto"`` uses it twice. A fetch takes this many beyond the idle slots
        for one fetch round trip (``_fetch_time``): a waiting job should start no later
        than another worker, fetching it, could start it. So there are many for jobs much
        shorter than a round trip, where batches pay off, and none for jobs as long, where
        prefetch would only hold jobs back from other workers. And for
        ``prefetch_wait_max``: waiting jobs beyond that many are handed back.
        """
        h = self._job_time
        if h is None or seconds is None:
            return 0
        if h * self.prefetch_max <= self.concurrency * seconds:
            return self.prefetch_max
        return int(self.concurrency * seconds / h)

    def _note_job_time(self, seconds: float) -> None:
        # A race between slots loses a sample at worst: this is an estimate, not a counter.
        self._job_time = _running_mean(self._job_time, seconds, self.prefetch_smoothing)

    def _note_fetch_time(self, seconds: float) -> None:
        self._fetch_time = _running_mean(self._fetch_time, seconds, self.prefetch_smoothing)

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

    def _remember_attempt(self, job_id: str, attempt: int) -> None:
        """Remember the attempt number of a re-enqueued copy (drivers without HEADERS)."""
        with self._stats_lock:
            d = self._local_attempts
            d[job_id] = attempt
            if len(d) > _MAX_LOCAL_ATTEMPTS:
                del d[next(iter(d))]  # the oldest: insertion order

    def _entry(self, job: Job) -> _Entry:
        attempt = job.attempt
        hdr = job.headers.get(ATTEMPT_HEADER)
        if hdr is not None and hdr.isdigit():
            attempt = max(attempt, int(hdr))
        if self._local_attempts:  # only ever filled on drivers without HEADERS
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
        if Capability.ACK not in caps:
            # RELEASE hands a lease back: without ACK there is none (a wrapper that drops ACK
            # may keep the flag), so shutdown re-enqueues as on any at-most-once driver.
            caps &= ~Capability.RELEASE
        self.driver, self.queue_name, self.caps = driver, name, caps
        if Capability.ACK not in caps:
            self._log(logging.INFO, "at_most_once",
                      f"driver {driver!r} has no ACK: jobs are removed when dequeued, so a "
                      "worker that dies mid-handler loses them (at-most-once)")
