# unasync: the blocking twin, _sync/base.py, is generated from this file.
"""The driver base class of one face; the checks both faces share are in ``_checks``."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self

from .. import results as _results
from .._capabilities import Capability
from .._checks import QueueChecks, not_leased_many
from .._errors import JobNotLeased, ResultTimeout
from .._job import (
    Deadline,
    Delay,
    EnqueueRequest,
    Job,
    _check_id,
    _plain_request,
    check_timeout,
    new_job_id,
)

__all__ = ["AsyncQueueBase"]


class AsyncQueueBase(QueueChecks):
    """Base class of drivers (this face). Subclasses implement the underscore methods.

    Required: ``_enqueue``, ``_dequeue``, ``_size``, ``_purge``, ``_close``. Others are
    needed only with the matching capability: ``_peek`` (PEEK), ``_ack``/``_nack`` (ACK),
    ``_extend_lease`` (LEASE_EXTEND), ``_release`` (RELEASE), ``_enqueue_many``/
    ``_dequeue_many`` (BATCH; the defaults loop), ``_result``/``_complete``/``_fail``
    (RESULT; the defaults use the handle's result store, see ``unifiedq.results``).
    """

    #: The result store of a store-backed handle (``results=``), or None.
    _results: Any = None
    _results_owned = False  # opened from a URL for this handle: closed with it

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
        """Add a job and return its id.

        Args:
            body: The payload (bytes).
            delay: Seconds (or a timedelta) before the job becomes visible (DELAY).
            priority: 0..9, higher first (PRIORITY).
            job_id: A caller-chosen id; a duplicate raises DuplicateJob (CUSTOM_ID).
            headers: String headers delivered with the job (HEADERS).
            deadline: Unix seconds or an aware datetime after which the job must not start:
                ``dequeue`` settles it as expired instead (DEADLINE).
            ttl: Seconds from now: the same as ``deadline=time.time() + ttl`` (DEADLINE).
            timeout: Most seconds one attempt may run; the Worker enforces it (DEADLINE).

        Returns:
            The job id.

        Raises:
            InvalidArgument: Both ``deadline`` and ``ttl``, a naive datetime, a ttl or
                timeout <= 0, or another invalid argument.
            UnsupportedOperation: The driver lacks the capability an argument needs.
        """
        if deadline is None and ttl is None and timeout is None and \
                self._plain(body, delay, priority, job_id, headers):
            return await self._enqueue_plain(body, new_job_id())
        return await self._enqueue(self._prepare(body, delay, priority, job_id, headers,
                                                 deadline, ttl, timeout))

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
        """Add several jobs, in order, with the same options; return their ids (BATCH).

        ``deadline``/``ttl``/``timeout`` are as for :meth:`enqueue`; a ``ttl`` gives every job
        of the batch the same deadline.
        """
        items, plain = self._batch(bodies, delay, priority, headers)
        if not items:
            return []
        if plain and deadline is None and ttl is None and timeout is None:
            return await self._enqueue_plain_many(items, [new_job_id() for _ in items])
        return await self._enqueue_many(self._prepare_many(items, delay, priority, headers,
                                                           deadline, ttl, timeout))

    async def dequeue(self, *, timeout: float | None = 0.0) -> Job | None:
        """Take the next job, waiting up to ``timeout`` seconds (None = forever).

        A job past its deadline (DEADLINE) is not returned: it is settled as expired (see
        ``on_expired``) and the next one is taken, within the same ``timeout``.
        """
        if timeout == 0.0 and type(timeout) is float and not self._closed:
            job = await self._dequeue(timeout)  # the default, already valid: skip the checks
        else:
            timeout = self._prepare_dequeue(timeout)
            job = await self._dequeue(timeout)
        if job is None or job.deadline is None or self.on_expired == "keep":
            return job
        return await self._skip_expired(job, timeout, time.monotonic())

    async def dequeue_many(self, max_jobs: int, *, timeout: float | None = 0.0) -> list[Job]:
        """Take up to ``max_jobs`` jobs, waiting up to ``timeout`` for the first (BATCH).

        Jobs past their deadline are settled as expired and left out (see :meth:`dequeue`).
        """
        n, t = self._prepare_many_dequeue(max_jobs, timeout)
        start = time.monotonic()
        while True:
            jobs = await self._dequeue_many(n, t)
            for j in jobs:
                if j.deadline is not None:
                    break
            else:
                return jobs  # no job with a deadline: the common case, no clock read
            if self.on_expired == "keep":
                return jobs
            now = time.time()
            live = [j for j in jobs if j.deadline is None or j.deadline > now]
            if len(live) < len(jobs):
                await self._shed([j for j in jobs if j.deadline is not None
                                  and j.deadline <= now])
            left = None if t is None else t - (time.monotonic() - start)
            if live or (left is not None and left <= 0.0):
                return live
            t = None if left is None else left

    async def _skip_expired(self, job: Job | None, timeout: float | None,
                            start: float) -> Job | None:
        """``job`` unless it is past its deadline; then settle it and take the next one."""
        while job is not None and job.deadline is not None and job.deadline <= time.time():
            await self._shed([job])
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
            job = await self._dequeue(left)
        return job

    async def _shed(self, jobs: list[Job]) -> None:
        """Settle jobs past their deadline as expired (``on_expired``) and count them."""
        with self._close_lock:
            self.expired_count += len(jobs)
        if Capability.ACK not in self.capabilities:
            return  # at-most-once: dequeue already removed them
        for job in jobs:
            try:
                if self.on_expired == "drop":
                    await self._ack(job)
                else:
                    await self._settle_expired(job)
            except JobNotLeased:
                pass  # its lease ran out meanwhile: whoever takes it next sheds it

    async def peek(self) -> Job | None:
        """Return the next job without taking it (PEEK). The result cannot be acked."""
        self._check_open()
        self._need(Capability.PEEK, "peek()")
        return await self._peek()

    async def ack(self, job: Job) -> None:
        """Settle a job returned by ``dequeue()`` as done (ACK)."""
        await self._ack(self._prepare_settle(job, "ack"))

    async def ack_many(self, jobs: Iterable[Job]) -> None:
        """Settle several jobs returned by ``dequeue()`` as done (ACK).

        One round trip where the driver can batch (redis: one pipeline; amqp: one
        ``basic.ack`` with ``multiple`` where the tags allow); the others ack one by one.
        Every job is checked before anything is sent, so a bad argument acks nothing.

        Args:
            jobs: Jobs leased from this queue, each at most once (at most ``MAX_BATCH`` per call).

        Raises:
            UnsupportedOperation: The driver lacks ACK.
            InvalidArgument, WrongQueue: Not jobs dequeued from this queue, or a job twice
                (nothing was acked).
            JobNotLeased: Some leases were already settled or lost; the other jobs were
                acked, and ``job_ids`` names the ones that were not.
        """
        js = self._prepare_settle_many(jobs)
        if js:
            await self._ack_many(js)

    async def nack(self, job: Job, *, requeue: bool = True, delay: Delay | None = None) -> None:
        """Return a leased job to the queue, after ``delay`` if given, or dead-letter it (ACK)."""
        j, d = self._prepare_nack(job, requeue, delay)
        await self._nack(j, requeue, d)

    async def release(self, job: Job) -> None:
        """Hand a leased job back unprocessed, at once, without consuming an attempt (RELEASE).

        The job is ready again immediately and its next delivery has the same ``attempt``
        number as this one: a worker that is shutting down gives back what it did not run
        without bringing those jobs closer to their retry limit or dead letter.

        Raises:
            UnsupportedOperation: The driver lacks RELEASE (its ``nack()`` counts an attempt).
            JobNotLeased: The job's lease was already settled or lost.
            WrongQueue, InvalidArgument: Not a job dequeued from this queue.
        """
        await self._release(self._prepare_release(job))

    async def extend_lease(self, job: Job, seconds: float) -> None:
        """Keep a leased job for ``seconds`` more, counted from now (LEASE_EXTEND)."""
        j, s = self._prepare_extend(job, seconds)
        await self._extend_lease(j, s)

    async def pause(self) -> None:
        """Stop handing out jobs until :meth:`resume` (PAUSE); producers are not affected.

        Every handle of the queue sees it (on redis, also Go asynq: it is asynq's per-queue
        pause). A ``dequeue`` of a paused queue returns None after its ``timeout``, waiting
        the way it waits on an empty queue (no faster polling). Jobs already leased are not
        affected: they can be acked, nacked and released. Pausing a paused queue does nothing.

        Raises:
            UnsupportedOperation: The driver lacks PAUSE.
            QueueClosed: The handle was closed.
        """
        self._check_open()
        self._need(Capability.PAUSE, "pause()")
        await self._pause()

    async def resume(self) -> None:
        """Hand out jobs again after :meth:`pause` (PAUSE); resuming a running queue is a no-op.

        Raises:
            UnsupportedOperation: The driver lacks PAUSE.
            QueueClosed: The handle was closed.
        """
        self._check_open()
        self._need(Capability.PAUSE, "resume()")
        await self._resume()

    async def is_paused(self) -> bool:
        """Whether the queue is paused, by any handle or the backend's own tools (PAUSE).

        A method, not a property: on networked drivers it asks the backend.

        Raises:
            UnsupportedOperation: The driver lacks PAUSE.
            QueueClosed: The handle was closed.
        """
        self._check_open()
        self._need(Capability.PAUSE, "is_paused()")
        return await self._is_paused()

    async def result(self, job_id: str, *, timeout: float | None = 0.0) -> bytes:
        """Return the result of job ``job_id``, waiting up to ``timeout`` seconds (RESULT).

        The result is what ``complete(job, result)`` stored (the Worker stores a handler's
        return value), kept for its retention time. The wait does not poll where the backend
        can notify (redis: a per-job token list; memory: a condition variable).

        Args:
            job_id: The id ``enqueue()`` returned.
            timeout: Seconds to wait (0: only look; None: wait forever).

        Returns:
            The result bytes.

        Raises:
            JobFailed: The job failed for good (``fail()``; on redis also any dead-lettered
                task); ``.error`` is the last error's text.
            ResultTimeout: No result within ``timeout``: not finished yet, finished without
                a result, an unknown id, or a result past its retention.
            UnsupportedOperation: The driver lacks RESULT (give it a ``results=`` store).
            InvalidArgument: A malformed id or timeout.
        """
        self._check_open()
        self._need(Capability.RESULT, "result()")
        jid = _check_id(job_id)
        t = check_timeout(timeout)
        raw = await self._result(jid, t)
        if raw is None:
            raise ResultTimeout(f"no result for job {jid!r} within {t} s", job_id=jid)
        return _results.unwrap(jid, raw)

    async def complete(self, job: Job, result: bytes, *,
                       retention: float | None = None) -> None:
        """Settle a leased job as done and store ``result`` for it (RESULT and ACK).

        One atomic step where the backend allows (redis: one script, asynq's result field
        and completed set); with a result store, the result is stored first and the job
        acked after (a crash between them leaves the job to run again, at least once).

        Args:
            job: A job returned by ``dequeue()`` on this handle.
            result: The result bytes.
            retention: Seconds the result is kept (None: the queue's default; redis: its
                ``retention`` option, else ``results.DEFAULT_RETENTION``).

        Raises:
            JobNotLeased: The lease was lost (nothing was stored where the step is atomic).
            UnsupportedOperation: The driver lacks RESULT or ACK.
            InvalidBody: ``result`` is not bytes.
            InvalidArgument, WrongQueue: Not a job dequeued from this queue; bad retention.
        """
        self._need(Capability.RESULT, "complete()")
        j = self._prepare_settle(job, "complete")
        await self._complete(j, _results.check_result(result), _results.check_retention(retention))

    async def fail(self, job: Job, error: str, *, retention: float | None = None) -> None:
        """Dead-letter a leased job (as ``nack(requeue=False)``) and record ``error`` (RESULT).

        ``result()`` of the job then raises JobFailed with ``error`` as its ``.error``.

        Args:
            job: A job returned by ``dequeue()`` on this handle.
            error: The last error's text.
            retention: Seconds the failure is kept (as for :meth:`complete`).

        Raises:
            JobNotLeased: The lease was lost.
            UnsupportedOperation: The driver lacks RESULT or ACK.
            InvalidArgument, WrongQueue: Not a job dequeued from this queue; bad arguments.
        """
        self._need(Capability.RESULT, "fail()")
        j = self._prepare_settle(job, "fail")
        await self._fail(j, _results.check_error(error), _results.check_retention(retention))

    async def size(self) -> int:
        """Number of waiting jobs (ready or delayed), excluding leased ones."""
        self._check_open()
        return await self._size()

    async def purge(self) -> int:
        """Remove every waiting job and return how many were removed."""
        self._check_open()
        return await self._purge()

    async def aclose(self) -> None:
        """Close the handle. Idempotent; later verbs raise QueueClosed."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            await self._close()
        finally:
            if self._results_owned:
                self._results.close()

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- to implement ----------------------------------------------------------------------
    async def _enqueue(self, req: EnqueueRequest) -> str:
        raise NotImplementedError

    async def _enqueue_many(self, reqs: list[EnqueueRequest]) -> list[str]:
        return [await self._enqueue(r) for r in reqs]

    # Optional hooks for plain calls (bytes within max_body, no options, a generated id):
    # a driver whose hot path gains from skipping the EnqueueRequest objects overrides them.
    async def _enqueue_plain(self, body: bytes, job_id: str) -> str:
        return await self._enqueue(_plain_request(body, job_id))

    async def _enqueue_plain_many(self, bodies: list[bytes], ids: list[str]) -> list[str]:
        return await self._enqueue_many(
            [_plain_request(b, i) for b, i in zip(bodies, ids, strict=True)])

    async def _dequeue(self, timeout: float | None) -> Job | None:
        raise NotImplementedError

    async def _dequeue_many(self, max_jobs: int, timeout: float | None) -> list[Job]:
        first = await self._dequeue(timeout)
        if first is None:
            return []
        jobs = [first]
        while len(jobs) < max_jobs and (job := await self._dequeue(0.0)) is not None:
            jobs.append(job)
        return jobs

    async def _peek(self) -> Job | None:
        raise self._unsupported("peek()", Capability.PEEK)

    async def _ack(self, job: Job) -> None:
        raise self._unsupported("ack()", Capability.ACK)

    async def _ack_many(self, jobs: list[Job]) -> None:
        # The default: one ack per job; drivers that can batch override it.
        lost: list[str] = []
        for job in jobs:
            try:
                await self._ack(job)
            except JobNotLeased:
                lost.append(job.id)
        if lost:
            raise not_leased_many(lost, len(jobs))

    async def _nack(self, job: Job, requeue: bool, delay: float) -> None:
        raise self._unsupported("nack()", Capability.ACK)

    async def _release(self, job: Job) -> None:
        raise self._unsupported("release()", Capability.RELEASE)

    async def _settle_expired(self, job: Job) -> None:
        # A job past its deadline, settled as dead; drivers that keep dead letters override
        # this to record the reason "expired".
        await self._nack(job, False, 0.0)

    async def _pause(self) -> None:
        raise self._unsupported("pause()", Capability.PAUSE)

    async def _resume(self) -> None:
        raise self._unsupported("resume()", Capability.PAUSE)

    async def _is_paused(self) -> bool:
        raise self._unsupported("is_paused()", Capability.PAUSE)

    async def _extend_lease(self, job: Job, seconds: float) -> None:
        raise self._unsupported("extend_lease()", Capability.LEASE_EXTEND)

    # A store-backed handle (``results=``) gets these defaults; they run the blocking store
    # directly, which only blocking drivers (and the thread bridge over them) are given.
    async def _result(self, job_id: str, timeout: float | None) -> bytes | None:
        if self._results is None:
            raise self._unsupported("result()", Capability.RESULT)
        return self._results.wait(self.name, job_id, timeout)  # type: ignore[no-any-return]

    async def _complete(self, job: Job, result: bytes, retention: float | None) -> None:
        if self._results is None:
            raise self._unsupported("complete()", Capability.RESULT)
        # Stored before the ack: a crash between the two runs the job again (at least once)
        # rather than acking it with no result.
        self._results.put(self.name, job.id, _results.outcome(True, result),
                          retention or _results.DEFAULT_RETENTION)
        await self._ack(job)

    async def _fail(self, job: Job, error: str, retention: float | None) -> None:
        if self._results is None:
            raise self._unsupported("fail()", Capability.RESULT)
        self._results.put(self.name, job.id, _results.outcome(False, error.encode()),
                          retention or _results.DEFAULT_RETENTION)
        await self._nack(job, False, 0.0)

    async def _size(self) -> int:
        raise NotImplementedError

    async def _purge(self) -> int:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError


