# unasync: the blocking twin, _sync/worker.py, is generated from this file.
"""The worker of one face: slots fetch jobs, run handlers and settle them (see ``unifiedq.worker``).

Written once for both faces: on the asyncio face the slots, the housekeeper and the shutdown
are tasks; on the blocking face they are threads (``AsyncRuntime`` becomes ``SyncRuntime``).
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from .._base import AsyncQueueBase
from .._capabilities import Capability
from .._concurrency import AsyncRuntime, AsyncTask, CallOutcome, Runner
from .._connect import connect_async
from .._consumers import ConsumerInfo, RunningJob, registry_opener
from .._deadlines import attempt_limit
from .._errors import InvalidArgument, JobNotLeased
from .._job import Job
from .._protocol import AsyncQueue
from .._worker_core import (
    ATTEMPT_HEADER,
    ERROR_HEADER,
    Handler,
    Middleware,
    NoHandler,
    Retry,
    Route,
    Router,
    SkipRetry,
    WorkerCore,
    _Decision,
    _Entry,
    log,
    open_queue,
)
from ..codecs import Codec
from ..deadlines import CoDel
from ..limits import RateLimiter
from ..metrics import Metrics, NullMetrics

__all__ = ["AsyncWorker"]

#: Seconds before a consumer registry that could not be opened is tried again.
REGISTRY_RETRY = 5.0


class AsyncWorker(WorkerCore):
    """Run handlers over a queue, ``concurrency`` jobs at a time.

    ``Worker`` (blocking face) runs blocking handlers, one thread per slot. ``AsyncWorker``
    (asyncio face) runs coroutine handlers as tasks, and blocking ones on a daemon thread per
    slot. Both take the same arguments and have the same methods: ``run()`` until a signal,
    or ``start()`` / ``stop()`` / ``join()``, or use the worker as a context manager.

    Args:
        source: A queue URL (the worker connects, and closes it at the end) or an open queue
            of this face (left open). A :class:`~unifiedq.FairQueue` or
            :class:`~unifiedq.BoundedQueue` works too.
        handler: ``fn(job)`` or a :class:`Router`. Coroutine handlers need the asyncio face.
        concurrency: Jobs handled at once (one slot each).
        timeout: Default per-attempt timeout in seconds (None = none). A :class:`Router`
            route can override it.
        retry: Retry policy (default: 5 attempts, backoff 1s x2, jitter 0.5).
        max_attempts: Shortcut overriding ``retry.max_attempts``.
        dead_letter: Queue URL or open queue for jobs out of attempts; None uses the driver's
            ``nack(requeue=False)``.
        lease_extend: Seconds each lease extension asks for (every ``lease_extend / 3`` s).
        poll_interval: Longest blocking wait per fetch (also how fast a stop is noticed), s.
        grace: Seconds to let running handlers finish at shutdown.
        middleware: Hooks run around each job.
        metrics: Where to report (e.g. :class:`~unifiedq.metrics.PrometheusMetrics`).
        rate_limit: A token bucket acquired before each fetch (consumer-side limit).
        depth_interval: Seconds between queue-depth samples for metrics.
        seed: Seed of the jitter RNG (tests).
        overload: An overload policy, e.g. :class:`~unifiedq.deadlines.CoDel`: jobs it
            refuses are settled as expired instead of run (see docs/deadlines.md). Jobs past
            their ``deadline`` are never started, with or without it, and a job's
            ``timeout``/``deadline`` caps its attempt's run time as ``timeout`` does.
        connect_options: Options for the connect call when ``source`` is a URL.
        result_codec: Encodes a handler's non-bytes return value as its result (e.g.
            :class:`~unifiedq.codecs.JsonCodec`). On a queue with RESULT, a handler's
            non-None return value is stored with ``queue.complete()`` (bytes as they are),
            and a job that fails for good is settled with ``queue.fail()`` (unless a
            ``dead_letter`` queue is given); see docs/results.md.
        prefetch: Jobs a fetch may take beyond one per idle slot (drivers with BATCH): they
            wait in the worker for a busy slot, leased, where other workers cannot have
            them. ``"auto"`` (the default): as many as start within about one fetch round
            trip, from running means of the slots' time per job and of a fetch's round
            trip; many for jobs far shorter than a round trip, none for longer ones (and
            none before the first jobs are measured). An int: at most that many, always;
            0: a job is only taken when a slot is free to start it (see docs/worker.md).

    Raises:
        InvalidArgument: A bad option, handler or source (before anything connects).
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
        overload: CoDel | None = None,
        connect_options: Mapping[str, Any] | None = None,
        result_codec: Codec | None = None,
        prefetch: int | Literal["auto"] = "auto",
    ) -> None:
        self.prefetch = self._check_prefetch(prefetch)
        super().__init__(handler, concurrency=concurrency, timeout=timeout, retry=retry,
                         max_attempts=max_attempts, dead_letter=dead_letter,
                         lease_extend=lease_extend, poll_interval=poll_interval, grace=grace,
                         middleware=middleware, metrics=metrics, rate_limit=rate_limit,
                         depth_interval=depth_interval, seed=seed)
        self.queue, self._owns_queue = open_queue(source, "source", AsyncQueue, connect_async,
                                                  connect_options)
        self._dl: AsyncQueue | None = None
        self._owns_dl = False
        if dead_letter is not None:
            self._dl, self._owns_dl = open_queue(dead_letter, "dead_letter", AsyncQueue,
                                                 connect_async, None)
        self._bind(self.queue.driver, self.queue.name, self.queue.capabilities)
        self.overload = overload
        self._expired_seen: int = getattr(self.queue, "expired_count", 0)
        # on_expired="keep" (e.g. replaying a dead-letter queue): run expired jobs as well.
        self._shed_late = getattr(self.queue, "on_expired", "dead") != "keep"
        self.result_codec = result_codec
        # RESULT (and ACK: complete/fail settle the job): return values are stored.
        self._keep_results = (Capability.RESULT | Capability.ACK) in self.caps
        self._stopping = AsyncRuntime.Event()
        self._done = AsyncRuntime.Event()
        self._wake = AsyncRuntime.Event()  # the housekeeper's: a held retry or a stop
        # Guards _inflight, _held, _slots and the lifecycle flags: slots are threads on the
        # blocking face. Never held across an await, so on the asyncio face it is never
        # contended. Reentrant: a signal handler (request_stop) may run on the main thread
        # while start() holds it.
        self._lock = threading.RLock()
        self._inflight: set[_Entry] = set()
        self._held: list[tuple[float, int, _Entry]] = []  # retries waiting for their backoff
        self._seq = itertools.count()
        self._slots: list[AsyncTask] = []
        self._hk: AsyncTask | None = None
        self._reg: AsyncTask | None = None  # keeps us in the queue's consumer list, if any
        self._reg_stop = AsyncRuntime.Event()
        self._stopper: AsyncTask | None = None
        self._started = False
        self._deadline: float | None = None  # grace deadline (monotonic) once stopping
        # Fetching: one slot at a time fetches, for itself and the idle slots queued behind
        # it on _fetch_lock; what it took beyond its own job waits in _buf (with the monotonic
        # time it was fetched) for them. _idle counts the slots inside _next_job.
        self._fetch_lock = AsyncRuntime.Lock()
        self._buf: collections.deque[tuple[Job, float]] = collections.deque()
        self._idle = 0
        self._acks: list[tuple[_Entry, float]] = []  # succeeded, waiting for ack_many
        self._acks_since = 0.0  # when the oldest of them was added (monotonic)
        self._acks_sent = 0  # acks flushed so far (the housekeeper ticks while it grows)
        self._hk_wake_at = 0.0  # when the housekeeper next wakes by itself (monotonic)
        self._abandoned: set[int] = set()  # slots whose thread hangs in a handler, not replaced
        self._slot_gen = itertools.count(1)
        self._batch_fetch = False
        self._prefetch_n: int | None = 0  # jobs a fetch takes beyond idle slots (None: auto)
        self._batch_ack = False
        # The driver's one-round-trip ack_many + dequeue_many (redis), when it has one.
        self._ack_take: Callable[..., Any] | None = None
        self._metered = True

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the slots and the housekeeper; return at once.

        Raises:
            RuntimeError: The worker was started before.
            InvalidArgument: Every handler is a coroutine function on the blocking face.
        """
        with self._lock:
            if self._started:
                raise RuntimeError("this worker was already started")
            self._started = True
        if self.router.is_async and not AsyncRuntime.RUNS_COROUTINES:
            raise InvalidArgument("every handler is async: use AsyncWorker")
        # Decided here, not in __init__: tests (and wrappers) may narrow caps or swap metrics.
        batch = Capability.BATCH in self.caps
        self._batch_fetch = batch and self.rate_limit is None  # a limit is one token a fetch
        # "auto" needs a way to hand back jobs that would wait too long (RELEASE: without
        # consuming an attempt); else nothing waits. None: measured per fetch.
        auto_ok = (Capability.ACK | Capability.RELEASE) in self.caps
        self._prefetch_n = (None if auto_ok else 0) if self.prefetch == "auto" \
            else self.prefetch
        self._batch_ack = batch and Capability.ACK in self.caps
        self._ack_take = getattr(self.queue, "_ack_then_dequeue", None) \
            if self._batch_ack and self.ack_with_fetch else None
        self._metered = not isinstance(self.metrics, NullMetrics)
        self._log(logging.INFO, "worker_start",
                  f"worker starting: {self.concurrency} slots on {self.driver}:{self.queue_name}",
                  concurrency=self.concurrency)
        # Under the lock: a shutdown begun meanwhile (a signal handled while a thread starts)
        # must see every slot, or it would close the queue under the ones it missed.
        with self._lock:
            for i in range(self.concurrency):
                self._slots.append(AsyncRuntime.spawn(self._slot, i,
                                                      name=f"unifiedq-worker-{i}"))
            self._hk = AsyncRuntime.spawn(self._housekeeper, name="unifiedq-worker-hk")
            opener = registry_opener(self.queue)
            if opener is not None:  # e.g. redis://: listed as an asynq server
                self._reg = AsyncRuntime.spawn(self._registry, opener,
                                               name="unifiedq-worker-registry")

    def request_stop(self, grace: float | None = None) -> None:
        """Begin a graceful stop and return at once (safe to call from a signal handler).

        Args:
            grace: Seconds to let running handlers finish (default: the worker's ``grace``).
                A second call can only shorten the grace period.
        """
        g = self.grace if grace is None else max(0.0, grace)
        with self._lock:
            first = not self._stopping.is_set()
            self._started = True  # a worker stopped before it started never starts
            dl = time.monotonic() + g
            self._deadline = dl if self._deadline is None else min(self._deadline, dl)
            self._stopping.set()
        if first:
            self._log(logging.INFO, "worker_stopping",
                      f"worker stopping: {len(self._inflight)} in flight, grace {g:g}s")
            self._stopper = AsyncRuntime.spawn(self._shutdown, name="unifiedq-worker-stop")
        self._wake.set()

    async def stop(self, grace: float | None = None, *, wait: bool = True) -> None:
        """Stop fetching; let running handlers finish within ``grace``; return the rest.

        Args:
            grace: Seconds to wait for running handlers (default: the worker's ``grace``).
            wait: Also wait until the worker has fully stopped.
        """
        self.request_stop(grace)
        if wait:
            await self.join()

    async def join(self, timeout: float | None = None) -> bool:
        """Wait until the worker has stopped (at most ``timeout`` s); return whether it has."""
        return await self._done.wait(timeout)

    async def run(self, *, install_signals: bool = True) -> None:
        """Run until stopped; SIGTERM/SIGINT stop gracefully (a second one skips the grace).

        Args:
            install_signals: Install the signal handlers (where the face allows it: the main
                thread, or the main thread's event loop).
        """
        restore: Callable[[], None] | None = None
        if install_signals:
            count = itertools.count()

            def on_signal(signum: int) -> None:
                n = next(count)
                self._log(logging.INFO, "signal", f"got signal {signum}", signal=signum)
                self.request_stop(0.0 if n else None)

            restore = AsyncRuntime.install_signals(on_signal)
        try:
            if not self._started:
                self.start()
            while not await self._done.wait(0.2):  # short waits so signal handlers get to run
                pass
        except BaseException:
            self.request_stop(0.0)
            await AsyncRuntime.shield(self.join, 5.0)
            raise
        finally:
            if restore is not None:
                restore()

    async def __aenter__(self) -> AsyncWorker:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _shutdown(self) -> None:
        with self._lock:  # waits for a start() in progress: every slot is then in the list
            hk = self._hk
        while True:  # let running handlers finish within the grace period
            busy = [t for t in self._live_slots() if not t.done()]
            left = (self._deadline or 0.0) - time.monotonic()
            if not busy or left <= 0:  # re-read each step: a second signal shortens it
                break
            await busy[0].join(min(left, 0.1))
        with self._lock:
            running = list(self._inflight)
        for e in running:  # still running after the grace: hand them back
            if e.claim():
                if e.slot >= 0:  # its blocking handler holds the slot's thread: abandon it
                    with self._lock:
                        self._abandoned.add(e.slot)
                    self._drop_inflight(e)
                await self._return(e, "grace period over")
        with self._lock:
            every = list(self._slots)
        for t in every:
            t.cancel()  # tasks are cancelled; threads notice their job was taken and exit
        live = self._live_slots()
        for t in every:  # a moment for an abandoned one: a cancelled task ends at once
            await t.join(5.0 if t in live else 0.1)
        with self._lock:  # prefetched for slots that stopped instead: never started
            left_over, self._buf = list(self._buf), collections.deque()
        for job, _ in left_over:
            e = self._entry(job)
            e.claim()
            await self._return(e, "prefetched but not started")
        await self._flush_acks()
        await self._flush_held()
        self._wake.set()
        if hk is not None and not await hk.join(5.0):
            hk.cancel()
        await self._flush_acks()  # any the housekeeper had not sent yet
        if self._reg is not None:  # leave the consumer list while the queue is still open
            self._reg_stop.set()
            await self._reg.join(5.0)
        if self._owns_queue:
            await self._safe(self.queue.aclose)
        if self._dl is not None and self._owns_dl:
            await self._safe(self._dl.aclose)
        self._log(logging.INFO, "worker_stopped", "worker stopped", **dataclasses.asdict(
            self.stats()))
        self._done.set()

    async def _registry(self, opener: Callable[[ConsumerInfo], Any]) -> None:
        """Announce this worker where its queue lists consumers; heartbeat; leave at the end.

        A failure is logged and retried at the next period (the jobs matter more than the
        listing): a registry that could not be opened at start is opened later.
        """
        info = ConsumerInfo(concurrency=self.concurrency, queues={self.queue_name: 1},
                            started_at=time.time())
        reg: Any = None
        try:
            while True:
                try:
                    if reg is None:
                        reg = await opener(info)
                    else:
                        await reg.heartbeat(self._running(), status="stopped"
                                            if self._stopping.is_set() else "active")
                except Exception:
                    self._log(logging.WARNING, "registry_error", "could not update this "
                              "worker's entry in its queue's consumer registry", exc_info=True)
                if await self._reg_stop.wait(REGISTRY_RETRY if reg is None else reg.interval):
                    break
        finally:
            if reg is not None:
                await self._safe(reg.close)

    def _running(self) -> list[RunningJob]:
        """The jobs whose handlers run now, with wall-clock start times and deadlines."""
        now, mono = time.time(), time.monotonic()
        with self._lock:
            entries = [e for e in self._inflight if e.started and not e.settled]
        out = []
        for e in entries:
            end = None if e.deadline is None else now + (e.deadline - mono)
            if e.job.deadline is not None:
                end = e.job.deadline if end is None else min(end, e.job.deadline)
            out.append(RunningJob(e.job, now - (mono - e.started), end))
        return out

    def _live_slots(self) -> list[AsyncTask]:
        """The slots, less those abandoned to a hung handler after the stop began."""
        with self._lock:
            return [t for i, t in enumerate(self._slots) if i not in self._abandoned]

    async def _safe(self, close: Callable[[], Any]) -> None:
        try:
            await close()
        except Exception:
            self._log(logging.WARNING, "close_error", "error while closing", exc_info=True)

    # -- slots ---------------------------------------------------------------------------------
    async def _next_job(self) -> Job | None:
        """The next job for this idle slot: one prefetched for it, or one it fetches.

        One slot fetches at a time (``_fetch_lock``), taking up to as many jobs as there are
        idle slots (itself and those queued behind it): so no more jobs are prefetched than
        slots are free to start them at once, and leases and fairness stay honest. Only
        ``prefetch`` (opt-in) lets a fetch take that many more, to wait for busy slots.
        """
        with self._lock:
            got = self._buf.popleft() if self._buf else None
            if got is None:
                self._idle += 1
        if got is not None:
            return await self._fresh(*got)
        counted = True  # this slot is in _idle (until it holds a job, under the same lock)
        try:
            async with self._fetch_lock:
                with self._lock:
                    got = self._buf.popleft() if self._buf else None
                    if got is not None:
                        self._idle -= 1
                        counted = False
                    if self._batch_fetch:
                        extra = self._prefetch_n
                        if extra is None:  # "auto": those that start within a round trip
                            extra = self._startable(self._fetch_time)
                        k = min(self._idle + extra, self.prefetch_max)
                    else:
                        k = 1
                if got is None:
                    if self._stopping.is_set():
                        return None
                    jobs = await self._fetch(k)
                    with self._lock:
                        # Before the fetch lock goes: the next fetcher counts idle slots.
                        self._idle -= 1
                        counted = False
                        if len(jobs) > 1:
                            now = time.monotonic()
                            self._buf.extend((j, now) for j in jobs[1:])
                    return jobs[0] if jobs else None
        finally:
            if counted:
                with self._lock:
                    self._idle -= 1
        return await self._fresh(*got)

    async def _fresh(self, job: Job, fetched: float) -> Job | None:
        """A prefetched job, unless its lease may have run out while it waited (then None).

        It waits only for a slot that was already idle when it was fetched, so this is a
        microsecond in practice; past ``lease_extend / 3`` (the heartbeat period, which
        assumes leases last longer) the lease is extended first on LEASE_EXTEND drivers, and a
        job whose lease is already gone is not run (the queue has handed it out again).
        """
        if time.monotonic() - fetched <= self.lease_extend / 3.0 or \
                Capability.LEASE_EXTEND not in self.caps:
            return job
        try:
            await self.queue.extend_lease(job, self.lease_extend)
        except JobNotLeased:
            self._count(lease_lost=1)
            self._log(logging.WARNING, "lease_lost", "a prefetched job lost its lease before "
                      "a slot was free; not running it", job_id=job.id)
            return None
        except Exception:
            self._log(logging.WARNING, "extend_error", "extend_lease failed", exc_info=True)
        return job

    async def _give_back_prefetched(self) -> None:
        """``prefetch="auto"``: release the prefetched jobs that would now wait too long.

        The jobs got longer since they were fetched: those that would not start within
        ``prefetch_wait_max`` s go back to the queue (lease released, no attempt counted) for
        other workers, newest first, so the oldest still run here in order.
        """
        keep = self._startable(self.prefetch_wait_max)
        with self._lock:
            if len(self._buf) <= keep:
                return
            extra = [self._buf.pop() for _ in range(len(self._buf) - keep)]
        why = f"prefetched, but slots now take {self._job_time or 0.0:.3g} s per job"
        for job, _ in extra:
            e = self._entry(job)
            e.claim()
            await self._return(e, why)

    async def _fetch(self, k: int) -> list[Job]:
        if self.rate_limit is not None and not await self._limit_wait(self.rate_limit):
            return []
        # Acks waiting for their batch ride along with the fetch: no round trip of their own.
        # Without them, a busy queue answers at once: the cheap call first.
        acks = self._take_acks() if self._ack_take is not None and self._acks else []
        began = time.monotonic()
        jobs = await (self._ack_then_take(acks, k) if acks else self._take(k, 0.0))
        if jobs:
            self._note_fetch_time(time.monotonic() - began)
        else:
            if Capability.BLOCKING_DEQUEUE in self.caps:
                jobs = await self._take(k, self.poll_interval)
            else:
                await self._stopping.wait(min(self.poll_interval, 0.05))
        return jobs

    async def _ack_then_take(self, acks: list[tuple[_Entry, float]], k: int) -> list[Job]:
        """Send ``acks`` and fetch up to ``k`` jobs (no wait) in one round trip."""
        assert self._ack_take is not None
        reported = False

        def settled(lost: list[str], error: BaseException | None) -> None:
            nonlocal reported
            reported = True
            self._acked(acks, set(lost), error)

        try:
            jobs: list[Job] = await self._ack_take([e.job for e, _ in acks], k, settled)
        except InvalidArgument:
            if reported:
                raise
            # Refused before anything was sent (the same job id twice: a lease expired and
            # this worker got the job again): the one-by-one path, then a plain fetch.
            await self._send_acks(acks)
            jobs = await self._take(k, 0.0)
        except BaseException as exc:
            if not reported:  # a hook that failed before it could report: not acked
                self._acked(acks, set(), exc)
            raise
        if getattr(self.queue, "expired_count", 0) != self._expired_seen:
            self._note_expired()
        return jobs

    async def _take(self, k: int, wait: float) -> list[Job]:
        if k > 1:
            jobs = await self.queue.dequeue_many(k, timeout=wait)
        else:
            job = await self.queue.dequeue(timeout=wait)
            jobs = [job] if job is not None else []
        if getattr(self.queue, "expired_count", 0) != self._expired_seen:
            self._note_expired()  # the queue shed jobs past their deadline
        return jobs

    # -- deadlines -------------------------------------------------------------------------
    def _stale(self, job: Job) -> bool:
        """Whether ``job`` must not start: past its deadline, or refused by ``overload``."""
        now = time.time()
        if job.deadline is not None and job.deadline <= now and self._shed_late:
            return True  # e.g. prefetched, and expired while it waited for a slot
        o = self.overload
        # First attempts only: a retry's sojourn includes its backoff (see CoDel).
        return o is not None and job.attempt == 1 and not o.admit(now - job.enqueued_at)

    async def _expire(self, e: _Entry) -> None:
        """Settle a job that must not start as expired (the queue's ``on_expired`` policy)."""
        q, local = self.queue, 0
        try:
            if isinstance(q, AsyncQueueBase):
                await q._shed([e.job])  # dead letter (reason "expired") or drop; counted there
            else:  # a wrapper: the closest public verb
                if Capability.ACK in self.caps:
                    await q.nack(e.job, requeue=False)
                local = 1
        except Exception:
            local = 1
            self._log(logging.WARNING, "expire_error", "settling an expired job failed; it "
                      "comes back after its lease and is shed then", e, exc_info=True)
        self._note_expired(local)

    def _note_expired(self, local: int = 0) -> None:
        """Count jobs settled as expired since the last call (by the queue, or ``local``)."""
        with self._stats_lock:
            n = getattr(self.queue, "expired_count", 0)
            delta = n - self._expired_seen + local
            self._expired_seen = n
            if delta <= 0:
                return
            self._stats.expired += delta
        self.metrics.expired(self.queue_name, self.driver, delta)

    async def _limit_wait(self, limit: RateLimiter) -> bool:
        if limit.try_acquire():
            return True
        await self._stopping.wait(min(self.poll_interval, max(limit.wait_time(), 0.0005)))
        return limit.try_acquire()

    async def _slot(self, i: int) -> None:
        runner: Runner | None = None
        errors = 0
        try:
            while not self._stopping.is_set():
                try:
                    job = await self._next_job()
                    errors = 0
                except Exception:
                    errors += 1
                    self._log(logging.ERROR, "fetch_error", "dequeue failed; retrying",
                              exc_info=True)
                    await self._stopping.wait(min(5.0, 0.1 * 2 ** min(errors, 6)))
                    continue
                if job is None:
                    continue
                e = self._entry(job)
                if self._stopping.is_set():
                    if e.claim():
                        await self._return(e, "fetched during shutdown")
                    break
                if ((job.deadline is not None and self._shed_late)
                        or self.overload is not None) and self._stale(job):
                    if e.claim():
                        await self._expire(e)
                    continue
                route = self.router.route(job)
                if runner is None and route is not None and not route.is_async and \
                        AsyncRuntime.RUNS_COROUTINES:
                    runner = Runner(f"unifiedq-worker-{i}")
                if not await self._process(e, route, runner, i):
                    if runner is None:
                        return  # blocking face: this thread hung and the slot has a new one
                    runner.retire()  # stuck in a hung handler: it exits when that returns
                    runner = None
                if self._buf and self._prefetch_n is None:
                    await self._give_back_prefetched()
        finally:
            if runner is not None:
                runner.retire()

    async def _process(self, e: _Entry, route: Route | None, runner: Runner | None,
                       slot: int) -> bool:
        """Run one job; return False if its thread was abandoned to a hung handler."""
        start = time.monotonic()
        limit = self._timeout_for(route) if route is not None else None
        if route is not None and (e.job.timeout is not None or e.job.deadline is not None):
            limit = attempt_limit(limit, e.job)  # asynq: min(now + timeout, deadline)
        here = route is not None and route.is_async is AsyncRuntime.RUNS_COROUTINES
        wake = False
        with self._lock:
            self._inflight.add(e)
            self._stats_in_flight(1)
            e.started = start  # the consumer registry shows it too
            if here:  # run in this slot: the watchdog needs them (one lock for both)
                e.route, e.slot, e.started = route, slot, start
                if limit is not None:
                    e.deadline = start + limit
                    wake = e.deadline < self._hk_wake_at
        if wake:
            self._wake.set()
        try:
            if route is None:
                await self._failure(e, None, NoHandler(f"no handler for job type "
                                                       f"{e.job_type!r}"), 0.0)
                return True
            if route.is_async and not AsyncRuntime.RUNS_COROUTINES:
                await self._failure(e, route, SkipRetry("async handler in a threaded Worker"),
                                    0.0)
                return True
            if log.isEnabledFor(logging.DEBUG):
                self._log(logging.DEBUG, "job_start", "job started", e)
            view = e.view
            if here:  # this face's kind of handler
                return await self._run_here(e, route, view, limit, start)
            fn = route.fn

            def call() -> Any:
                self._hook_before(view)
                return fn(view)

            running = AsyncRuntime.start_call(call, runner, route.is_async)
            outcome = await running.wait(limit, lambda: e.settled)
            duration = time.monotonic() - start
            if outcome is CallOutcome.GAVE_UP:  # shutdown handed the job back meanwhile
                return running.runner_free
            if outcome is CallOutcome.TIMEOUT:
                await self._timed_out(e, route, duration, not running.runner_free)
                return running.runner_free
            if running.error is None:
                await self._success(e, duration, running.fut.result())
            else:
                await self._failure(e, route, running.error, duration)
            return True
        except AsyncRuntime.Cancelled:
            # Our task was cancelled (hard stop): hand the job back, then stop.
            if e.claim():
                await AsyncRuntime.shield(self._return, e, "worker cancelled")
            raise
        finally:
            self._drop_inflight(e)
            self._note_job_time(time.monotonic() - start)

    async def _run_here(self, e: _Entry, route: Route, view: Job, limit: float | None,
                        start: float) -> bool:
        """Run the handler right here, in the slot (no hand-off to another thread or task).

        The housekeeper enforces ``limit``: past the deadline it claims the job, fails it as
        timed out and gives the slot a new thread (task: the old one is cancelled); the old
        one, once its handler returns (or swallows the cancellation), sees the job claimed,
        drops the result and exits (returns False).
        """
        error: BaseException | None = None
        value: object = None
        try:
            if self.middleware:
                self._hook_before(view)
            value = await route.fn(view)
        except AsyncRuntime.Cancelled:
            raise  # the watchdog or a hard stop: _process hands the job back if still ours
        except BaseException as exc:  # SystemExit etc. from a handler: a failure too
            error = exc
        duration = time.monotonic() - start
        if limit is not None and duration > limit:  # before the watchdog saw it: same outcome
            return await self._timed_out(e, route, duration, False)
        if error is None:
            return await self._success(e, duration, value)
        return await self._failure(e, route, error, duration)

    def _drop_inflight(self, e: _Entry) -> None:
        """Stop counting ``e`` as running (once: the slot, watchdog or shutdown may each try)."""
        if e not in self._inflight:  # only ever added before this: no lock needed to see it
            return
        with self._lock:
            if e not in self._inflight:
                return
            self._inflight.discard(e)
            self._stats_in_flight(-1)

    def _stats_in_flight(self, delta: int) -> None:
        # Every caller holds self._lock, which serialises the writers of this one counter
        # (the others are written under _stats_lock).
        self._stats.in_flight += delta
        if self._metered:
            self.metrics.in_flight(self.queue_name, self.driver, delta)

    def _replace_slot(self, i: int) -> None:
        """Give slot ``i`` a new thread: the old one hangs in a handler the watchdog timed out."""
        with self._lock:
            self._slots[i].cancel()  # a task's handler is cancelled; a thread cannot be
            if self._stopping.is_set():
                self._abandoned.add(i)  # no new work: the shutdown must not wait for it
                return
            self._slots[i] = AsyncRuntime.spawn(self._slot, i,
                                                name=f"unifiedq-worker-{i}.{next(self._slot_gen)}")

    # -- settling ------------------------------------------------------------------------------
    async def _success(self, e: _Entry, duration: float, value: object = None) -> bool:
        """Settle a job whose handler returned; False if someone else settled it first."""
        if not e.claim():
            return False
        if self.middleware:
            self._hook_after(e, duration)
        if value is not None and self._keep_results:
            data = self._result_bytes(e, value)
            if data is not None:
                # Not batched: the result is what a caller waits for, so it goes out now,
                # in the same step as the ack (redis: one script).
                try:
                    await self.queue.complete(e.job, data)
                except JobNotLeased:
                    self._count(lease_lost=1)
                    self._log(logging.WARNING, "lease_lost",
                              "job finished but its lease had expired; it may run again", e)
                except Exception:
                    self._log(logging.ERROR, "ack_error", "complete failed; the job will come "
                              "back after its lease", e, exc_info=True)
                self._done_jobs([(e, duration)])
                return True
        if self._batch_ack:
            # Batched: acked within ack_window (or sooner); a crash meanwhile redelivers it.
            with self._lock:
                self._acks.append((e, duration))
                n = len(self._acks)
                # No longer running: dropped here, under the lock already held (the slot's
                # _drop_inflight then has nothing to do and takes no lock).
                if e in self._inflight:
                    self._inflight.discard(e)
                    self._stats_in_flight(-1)
                wake = False
                if n == 1:  # the housekeeper sends it at the latest ack_window from now
                    self._acks_since = time.monotonic()
                    # It wakes by itself that soon while acks flow; else wake it.
                    wake = self._hk_wake_at > self._acks_since + self.ack_window
            if n >= self.ack_batch:
                await self._flush_acks()
            elif wake:
                self._wake.set()
            return True
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
        self._done_jobs([(e, duration)])
        return True

    def _result_bytes(self, e: _Entry, value: object) -> bytes | None:
        """A handler's return value as result bytes; None (logged) if it cannot be one."""
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        if self.result_codec is None:
            self._log(logging.WARNING, "result_dropped", f"handler returned a "
                      f"{type(value).__name__}, not bytes, and the worker has no result_codec: "
                      "no result stored", e)
            return None
        try:
            return self.result_codec.encode(value)
        except Exception:
            self._log(logging.ERROR, "result_dropped", "result_codec could not encode the "
                      "handler's return value: no result stored", e, exc_info=True)
            return None

    def _take_acks(self) -> list[tuple[_Entry, float]]:
        """Every succeeded job waiting for its ack (now the caller's to send)."""
        with self._lock:
            batch, self._acks = self._acks, []
            self._acks_sent += len(batch)
        return batch

    async def _flush_acks(self) -> None:
        """Ack every succeeded job waiting for its batch, in one ``ack_many``."""
        if self._acks:
            batch = self._take_acks()
            if batch:
                await self._send_acks(batch)

    async def _send_acks(self, batch: list[tuple[_Entry, float]]) -> None:
        lost: set[str] = set()
        error: BaseException | None = None
        try:
            try:
                await self.queue.ack_many([e.job for e, _ in batch])
            except InvalidArgument:
                # The same job id twice (a lease expired and this worker got the job again):
                # ack_many refuses the batch, so ack them one by one.
                for e, _ in batch:
                    try:
                        await self.queue.ack(e.job)
                    except JobNotLeased:
                        lost.add(e.job.id)
        except JobNotLeased as err:
            lost = set(err.job_ids) or {e.job.id for e, _ in batch}
        except Exception as exc:
            error = exc
        self._acked(batch, lost, error)

    def _acked(self, batch: list[tuple[_Entry, float]], lost: set[str],
               error: BaseException | None) -> None:
        """Account for a sent ack batch.

        ``lost`` ids had lost their lease; ``error``: maybe not acked at all (they come back
        after their lease). Either way they count as processed: their handlers returned.
        """
        if error is not None:
            self._log(logging.ERROR, "ack_error", f"ack_many of {len(batch)} jobs failed; "
                      "they will come back after their lease",
                      exc_info=(type(error), error, error.__traceback__))
        if lost:
            self._count(lease_lost=len(lost))
            for e, _ in batch:
                if e.job.id in lost:
                    self._log(logging.WARNING, "lease_lost", "job finished but its lease had "
                              "expired; it may run again", e)
        self._done_jobs(batch)

    def _done_jobs(self, done: list[tuple[_Entry, float]]) -> None:
        """Count, meter and log succeeded jobs (after their ack was sent)."""
        with self._stats_lock:
            self._stats.processed += len(done)
        if self._metered:
            for _, d in done:
                self.metrics.processed(self.queue_name, self.driver, d)
        if log.isEnabledFor(logging.INFO):
            for e, d in done:
                self._log(logging.INFO, "job_done", "job done", e, duration=round(d, 6))

    async def _timed_out(self, e: _Entry, route: Route, duration: float,
                         abandoned: bool) -> bool:
        """Fail a job whose handler ran past its timeout; False if already settled."""
        if not e.claim():
            return False
        await self._settle_timeout(e, route, duration, abandoned)
        return True

    async def _settle_timeout(self, e: _Entry, route: Route, duration: float,
                              abandoned: bool) -> None:
        self._count(timed_out=1)
        if self._metered:
            self.metrics.timed_out(self.queue_name, self.driver)
        self._log(logging.WARNING, "job_timeout", "handler timed out" + (
            "; its slot starts afresh" if abandoned else ""), e, duration=duration)
        limit = self._timeout_for(route)
        job = e.job
        if job.timeout is not None and (limit is None or job.timeout < limit):
            limit = job.timeout  # the job's own timeout= was the tighter one
        if job.deadline is not None and job.deadline <= time.time() and \
                (limit is None or duration < limit):
            text = "handler ran past the job's deadline"
        else:
            text = f"handler ran past its {limit or 0:g}s timeout"
        await self._settle_failure(e, route, TimeoutError(text), duration)

    async def _failure(self, e: _Entry, route: Route | None, exc: BaseException,
                       duration: float) -> bool:
        """Settle a failed attempt (retry or dead-letter); False if already settled."""
        if not e.claim():
            return False
        await self._settle_failure(e, route, exc, duration)
        return True

    async def _settle_failure(self, e: _Entry, route: Route | None, exc: BaseException,
                              duration: float) -> None:
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
                      "lease expired, so the queue already handed it out again", e)
        except Exception:
            self._log(logging.ERROR, "settle_error", "could not settle the failed job; it will "
                      "come back after its lease (ACK drivers)", e, exc_info=True)

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

    async def _reenqueue(self, e: _Entry, error: str, delay: float) -> None:
        hdrs = self._copy_headers(e.job, self.caps, **{ATTEMPT_HEADER: str(e.attempt + 1),
                                                       ERROR_HEADER: error})
        new_id = await self.queue.enqueue(e.job.body, headers=hdrs,
                                          delay=delay if delay > 0 else None,
                                          deadline=e.job.deadline, timeout=e.job.timeout)
        if hdrs is None:
            self._remember_attempt(new_id, e.attempt + 1)

    def _hold(self, e: _Entry, delay: float) -> None:
        """Keep a leased job (its lease extended) until its backoff is over."""
        with self._lock:
            e.due = time.monotonic() + delay
            heapq.heappush(self._held, (e.due, next(self._seq), e))
        self._wake.set()

    async def _retry_held(self, e: _Entry) -> None:
        """A held retry is due (or we are stopping): give it back to the queue."""
        try:
            # nack, never release: this attempt failed and must count, or a job that always
            # fails would be retried forever on drivers with ACK but without DELAY.
            if Capability.ACK in self.caps:
                await self.queue.nack(e.job)
            else:
                await self._reenqueue(e, e.job.headers.get(ERROR_HEADER, ""), 0.0)
        except JobNotLeased:
            self._count(lease_lost=1)
        except Exception:
            self._log(logging.ERROR, "settle_error", "could not release a held retry", e,
                      exc_info=True)

    async def _flush_held(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for _, _, e in held:
            await self._retry_held(e)

    async def _dead(self, e: _Entry, d: _Decision) -> None:
        if self._dl is not None:
            hdrs = self._copy_headers(e.job, self._dl.capabilities, **{
                ERROR_HEADER: d.error, "x-unifiedq-attempts": str(e.attempt),
                "x-unifiedq-job-id": e.job.id, "x-unifiedq-queue": e.job.queue})
            await self._dl.enqueue(e.job.body, headers=hdrs)
            if Capability.ACK in self.caps:
                await self.queue.ack(e.job)
        elif self._keep_results:  # dead-lettered as by nack, and result() raises JobFailed
            await self.queue.fail(e.job, d.error)
        elif Capability.ACK in self.caps:
            await self.queue.nack(e.job, requeue=False)
        else:
            self._log(logging.ERROR, "job_dropped", "job dropped: the driver has no dead set "
                      "and no dead_letter queue was given", e, error=d.error)

    async def _return(self, e: _Entry, why: str) -> None:
        """Hand a job back at shutdown without counting a failure."""
        try:
            if Capability.RELEASE in self.caps:  # no attempt consumed: a deploy kills no job
                await self.queue.release(e.job)
            elif Capability.ACK in self.caps:  # the driver's page says this counts an attempt
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

    # -- housekeeping --------------------------------------------------------------------------
    async def _housekeeper(self) -> None:
        extend = Capability.LEASE_EXTEND in self.caps
        every = self.lease_extend / 3.0
        next_beat = time.monotonic() + every
        next_depth = time.monotonic()
        track_depth = not isinstance(self.metrics, NullMetrics)
        acks_seen = -1
        while True:
            self._wake.clear()  # before looking: a set() from now on ends the wait below
            with self._lock:
                if self._stopping.is_set() and not self._inflight and (
                        self._done.is_set() or all(t.done() for t in self._live_slots())):
                    return
                now = time.monotonic()
                due: list[_Entry] = []
                while self._held and self._held[0][0] <= now and not self._stopping.is_set():
                    due.append(heapq.heappop(self._held)[2])
                beat = [x for x in (*self._inflight, *(h[2] for h in self._held))
                        if not x.lease_lost] if extend and now >= next_beat else []
                # The watchdog: blocking handlers run on their slot's thread, so their
                # timeouts are enforced here.
                overdue: list[_Entry] = []
                waits = [next_beat - now]
                for x in self._inflight:
                    if x.deadline is not None and not x.settled:  # settled: its slot is done
                        if x.deadline <= now:
                            overdue.append(x)
                        else:
                            waits.append(x.deadline - now)
                # Acks waiting ack_window are sent; while acks flow, tick every ack_window so
                # that no slot has to wake us for each batch.
                flush = False
                if self._acks:
                    flush = now - self._acks_since >= self.ack_window
                    waits.append(self._acks_since + self.ack_window - now)
                elif acks_seen != self._acks_sent:
                    waits.append(self.ack_window)
                acks_seen = self._acks_sent
                if self._held and not self._stopping.is_set():  # stopping: the shutdown
                    waits.append(self._held[0][0] - now)  # flushes them (this would spin)
                if track_depth:
                    waits.append(next_depth - now)
                wait = min(min(waits), 1.0)
                idle = not due and not overdue and not flush and wait > 0
                self._hk_wake_at = now + wait if idle else now
            if idle:
                await self._wake.wait(wait)
                continue
            for x in overdue:
                if x.route is not None and x.claim():
                    self._drop_inflight(x)
                    self._replace_slot(x.slot)
                    await self._settle_timeout(x, x.route, now - x.started, True)
            if flush:
                await self._flush_acks()
            for e in due:
                await self._retry_held(e)
            for e in beat:
                if e.settled and e not in self._inflight:
                    continue
                try:
                    await self.queue.extend_lease(e.job, self.lease_extend)
                except JobNotLeased:
                    e.lease_lost = True
                    self._count(lease_lost=1)
                    self._log(logging.WARNING, "lease_lost", "could not extend the lease: it "
                              "expired and the job may run twice", e)
                except Exception:
                    self._log(logging.WARNING, "extend_error", "extend_lease failed", e,
                              exc_info=True)
            if now >= next_beat:  # also without LEASE_EXTEND, or this loop would spin
                next_beat = now + every
            if track_depth and now >= next_depth:
                next_depth = now + self.depth_interval
                await self._sample_depth()

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
