"""Base classes for drivers: argument checking, capability gates and lifecycle, written once.

A driver subclasses :class:`QueueBase` (blocking) or :class:`AsyncQueueBase` (asyncio) and
implements the underscore methods (``_enqueue``, ``_dequeue``, ...). The public verbs here
validate every argument and check capabilities *before* calling the driver, so bad input never
reaches a backend and every driver reports it the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeGuard

from ._capabilities import Capability, require
from ._errors import InvalidArgument, QueueClosed, UnsupportedOperation, WrongQueue
from ._job import EnqueueRequest, Job, _plain_request, check_delay, check_timeout, new_job_id
from ._protocol import Delay
from ._url import URL

__all__ = ["AsyncQueueBase", "QueueBase"]

_MAX_BATCH = 100_000


class _Core:
    """State and checks shared by both faces; no I/O here."""

    #: The driver's name; an instance attribute on bridges, which take it from the driver.
    driver: str = "?"
    capabilities: Capability = Capability(0)
    #: Largest body the driver accepts, or None for no limit.
    max_body: int | None = None
    bridged: bool = False

    def __init__(self, name: str, url: URL | None = None) -> None:
        self._name = name
        self._url = url
        self._closed = False
        self._close_lock = threading.Lock()

    @property
    def name(self) -> str:
        """The queue's name within its backend."""
        return self._name

    @property
    def closed(self) -> bool:
        """True once the queue was closed."""
        return self._closed

    def __repr__(self) -> str:
        url = self._url.redacted() if self._url is not None else self._name
        state = " closed" if self._closed else ""
        return f"<{type(self).__name__} {url}{state}>"

    @classmethod
    def from_url(cls, url: URL, options: Mapping[str, object]) -> Self:
        """Build a handle from a parsed URL and keyword options, without blocking I/O.

        Drivers implement this: parse their options with :func:`unifiedq.parse_options`
        (which raises InvalidURL for unknown or malformed ones) and connect lazily on first
        use, so that bad input fails fast and bridges can build handles on any thread.
        """
        raise NotImplementedError(f"{cls.__name__} must implement from_url()")

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosed(f"{self!r} is closed; open a new one with connect()")

    def _need(self, cap: Capability, what: str) -> None:
        # Plain int test first: enum.Flag operators cost microseconds on every verb.
        if cap._value_ & self.capabilities._value_ != cap._value_:
            require(self.capabilities, cap, driver=self.driver, what=what)

    def _plain(
        self, body: object, delay: object, priority: object, job_id: object, headers: object
    ) -> TypeGuard[bytes]:
        """Whether an enqueue call is the common one: bytes within the limit and no options.

        Such a call needs no other check, and goes to the driver's ``_enqueue_plain`` hook.
        """
        return (type(body) is bytes and delay is None and priority is None and job_id is None
                and headers is None and not self._closed
                and (self.max_body is None or len(body) <= self.max_body))

    def _prepare(
        self,
        body: object,
        delay: object,
        priority: object,
        job_id: object,
        headers: object,
    ) -> EnqueueRequest:
        self._check_open()
        req = EnqueueRequest.build(
            body, delay=delay, priority=priority, job_id=job_id, headers=headers,
            max_body=self.max_body,
        )
        if delay is not None:
            self._need(Capability.DELAY, "enqueue(delay=...)")
        if priority is not None:
            self._need(Capability.PRIORITY, "enqueue(priority=...)")
        if job_id is not None:
            self._need(Capability.CUSTOM_ID, "enqueue(job_id=...)")
        if headers:
            self._need(Capability.HEADERS, "enqueue(headers=...)")
        return req

    def _batch(self, bodies: object, delay: object, priority: object,
               headers: object) -> tuple[list[Any], bool]:
        """Check an ``enqueue_many`` call's container; return its items and whether plain.

        Plain: all bytes within the limit and no options (the ``_enqueue_plain_many`` hook).
        """
        self._check_open()
        self._need(Capability.BATCH, "enqueue_many()")
        if isinstance(bodies, bytes | bytearray | memoryview | str):
            raise InvalidArgument("enqueue_many() takes an iterable of bodies, not one body")
        if not isinstance(bodies, Iterable):
            raise InvalidArgument(f"enqueue_many() takes an iterable of bytes, not {bodies!r}")
        items = list(bodies)
        if len(items) > _MAX_BATCH:
            raise InvalidArgument(f"enqueue_many() takes at most {_MAX_BATCH} bodies per call")
        mb = self.max_body
        plain = (delay is None and priority is None and headers is None
                 and all(type(b) is bytes for b in items)
                 and (mb is None or max(map(len, items), default=0) <= mb))
        return items, plain

    def _prepare_many(
        self, items: list[Any], delay: object, priority: object, headers: object
    ) -> list[EnqueueRequest]:
        # Validate everything before anything is sent: a bad item must not half-enqueue a batch.
        return [self._prepare(b, delay, priority, None, headers) for b in items]

    def _prepare_dequeue(self, timeout: object) -> float | None:
        self._check_open()
        t = check_timeout(timeout)
        if t != 0.0:
            self._need(Capability.BLOCKING_DEQUEUE, "dequeue(timeout>0)")
        return t

    def _prepare_many_dequeue(self, max_jobs: object, timeout: object) -> tuple[int, float | None]:
        self._check_open()
        self._need(Capability.BATCH, "dequeue_many()")
        if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
            raise InvalidArgument(f"max_jobs must be an int >= 1, not {max_jobs!r}")
        return min(max_jobs, _MAX_BATCH), self._prepare_dequeue(timeout)

    def _prepare_settle(self, job: object, verb: str) -> Job:
        self._check_open()
        self._need(Capability.ACK, f"{verb}()")
        if not isinstance(job, Job):
            raise InvalidArgument(f"{verb}() takes a Job returned by dequeue(), not {job!r}")
        if job.queue != self._name:
            raise WrongQueue(
                f"job {job.id!r} came from queue {job.queue!r}, not {self._name!r}; "
                f"{verb} it on the queue it was dequeued from"
            )
        if job.receipt is None:
            raise InvalidArgument(
                f"job {job.id!r} has no lease receipt (was it returned by peek()?); "
                f"only jobs returned by dequeue() can be settled"
            )
        return job

    def _prepare_nack(self, job: object, requeue: object, delay: object) -> tuple[Job, float]:
        j = self._prepare_settle(job, "nack")
        if not isinstance(requeue, bool):
            raise InvalidArgument(f"requeue must be True or False, not {requeue!r}")
        d = check_delay(delay)
        if delay is not None:
            if not requeue:
                raise InvalidArgument("nack(delay=...) only makes sense with requeue=True")
            self._need(Capability.DELAY, "nack(delay=...)")
        return j, d

    def _prepare_extend(self, job: object, seconds: object) -> tuple[Job, float]:
        j = self._prepare_settle(job, "extend_lease")
        self._need(Capability.LEASE_EXTEND, "extend_lease()")
        s = check_delay(seconds, name="seconds")
        if s <= 0:
            raise InvalidArgument("extend_lease() needs seconds > 0")
        return j, s

    def _unsupported(self, what: str, cap: Capability) -> UnsupportedOperation:
        require(Capability(0), cap, driver=self.driver, what=what)
        raise AssertionError("unreachable")  # pragma: no cover


class QueueBase(_Core):
    """Base class of blocking drivers. Subclasses implement the underscore methods.

    Required: ``_enqueue``, ``_dequeue``, ``_size``, ``_purge``, ``_close``. Others are
    needed only with the matching capability: ``_peek`` (PEEK), ``_ack``/``_nack`` (ACK),
    ``_extend_lease`` (LEASE_EXTEND), ``_enqueue_many``/``_dequeue_many`` (BATCH; the
    defaults loop).
    """

    def enqueue(
        self,
        body: bytes,
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Add a job and return its id.

        Args:
            body: The payload (bytes).
            delay: Seconds (or a timedelta) before the job becomes visible (DELAY).
            priority: 0..9, higher first (PRIORITY).
            job_id: A caller-chosen id; a duplicate raises DuplicateJob (CUSTOM_ID).
            headers: String headers delivered with the job (HEADERS).

        Returns:
            The job id.
        """
        if self._plain(body, delay, priority, job_id, headers):
            return self._enqueue_plain(body, new_job_id())
        return self._enqueue(self._prepare(body, delay, priority, job_id, headers))

    def enqueue_many(
        self,
        bodies: Iterable[bytes],
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Add several jobs, in order, with the same options; return their ids (BATCH)."""
        items, plain = self._batch(bodies, delay, priority, headers)
        if not items:
            return []
        if plain:
            return self._enqueue_plain_many(items, [new_job_id() for _ in items])
        return self._enqueue_many(self._prepare_many(items, delay, priority, headers))

    def dequeue(self, *, timeout: float | None = 0.0) -> Job | None:
        """Take the next job, waiting up to ``timeout`` seconds (None = forever)."""
        if timeout == 0.0 and type(timeout) is float and not self._closed:
            return self._dequeue(timeout)  # the default, already valid: skip the checks
        return self._dequeue(self._prepare_dequeue(timeout))

    def dequeue_many(self, max_jobs: int, *, timeout: float | None = 0.0) -> list[Job]:
        """Take up to ``max_jobs`` jobs, waiting up to ``timeout`` for the first (BATCH)."""
        n, t = self._prepare_many_dequeue(max_jobs, timeout)
        return self._dequeue_many(n, t)

    def peek(self) -> Job | None:
        """Return the next job without taking it (PEEK). The result cannot be acked."""
        self._check_open()
        self._need(Capability.PEEK, "peek()")
        return self._peek()

    def ack(self, job: Job) -> None:
        """Settle a job returned by ``dequeue()`` as done (ACK)."""
        self._ack(self._prepare_settle(job, "ack"))

    def nack(self, job: Job, *, requeue: bool = True, delay: Delay | None = None) -> None:
        """Return a leased job to the queue, after ``delay`` if given, or dead-letter it (ACK)."""
        j, d = self._prepare_nack(job, requeue, delay)
        self._nack(j, requeue, d)

    def extend_lease(self, job: Job, seconds: float) -> None:
        """Keep a leased job for ``seconds`` more, counted from now (LEASE_EXTEND)."""
        j, s = self._prepare_extend(job, seconds)
        self._extend_lease(j, s)

    def size(self) -> int:
        """Number of waiting jobs (ready or delayed), excluding leased ones."""
        self._check_open()
        return self._size()

    def purge(self) -> int:
        """Remove every waiting job and return how many were removed."""
        self._check_open()
        return self._purge()

    def close(self) -> None:
        """Close the handle. Idempotent; later verbs raise QueueClosed."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._close()

    def __enter__(self) -> Self:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- to implement ----------------------------------------------------------------------
    def _enqueue(self, req: EnqueueRequest) -> str:
        raise NotImplementedError

    def _enqueue_many(self, reqs: list[EnqueueRequest]) -> list[str]:
        return [self._enqueue(r) for r in reqs]

    # Optional hooks for plain calls (bytes within max_body, no options, a generated id):
    # a driver whose hot path gains from skipping the EnqueueRequest objects overrides them.
    def _enqueue_plain(self, body: bytes, job_id: str) -> str:
        return self._enqueue(_plain_request(body, job_id))

    def _enqueue_plain_many(self, bodies: list[bytes], ids: list[str]) -> list[str]:
        return self._enqueue_many([_plain_request(b, i) for b, i in zip(bodies, ids, strict=True)])

    def _dequeue(self, timeout: float | None) -> Job | None:
        raise NotImplementedError

    def _dequeue_many(self, max_jobs: int, timeout: float | None) -> list[Job]:
        first = self._dequeue(timeout)
        if first is None:
            return []
        jobs = [first]
        while len(jobs) < max_jobs and (job := self._dequeue(0.0)) is not None:
            jobs.append(job)
        return jobs

    def _peek(self) -> Job | None:
        raise self._unsupported("peek()", Capability.PEEK)

    def _ack(self, job: Job) -> None:
        raise self._unsupported("ack()", Capability.ACK)

    def _nack(self, job: Job, requeue: bool, delay: float) -> None:
        raise self._unsupported("nack()", Capability.ACK)

    def _extend_lease(self, job: Job, seconds: float) -> None:
        raise self._unsupported("extend_lease()", Capability.LEASE_EXTEND)

    def _size(self) -> int:
        raise NotImplementedError

    def _purge(self) -> int:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class AsyncQueueBase(_Core):
    """Base class of asyncio drivers: the same contract as :class:`QueueBase`, as coroutines."""

    async def enqueue(
        self,
        body: bytes,
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Add a job and return its id (see :meth:`QueueBase.enqueue`)."""
        if self._plain(body, delay, priority, job_id, headers):
            return await self._enqueue_plain(body, new_job_id())
        return await self._enqueue(self._prepare(body, delay, priority, job_id, headers))

    async def enqueue_many(
        self,
        bodies: Iterable[bytes],
        *,
        delay: Delay | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Add several jobs, in order, with the same options; return their ids (BATCH)."""
        items, plain = self._batch(bodies, delay, priority, headers)
        if not items:
            return []
        if plain:
            return await self._enqueue_plain_many(items, [new_job_id() for _ in items])
        return await self._enqueue_many(self._prepare_many(items, delay, priority, headers))

    async def dequeue(self, *, timeout: float | None = 0.0) -> Job | None:
        """Take the next job, waiting up to ``timeout`` seconds (None = forever)."""
        if timeout == 0.0 and type(timeout) is float and not self._closed:
            return await self._dequeue(timeout)  # the default, already valid
        return await self._dequeue(self._prepare_dequeue(timeout))

    async def dequeue_many(self, max_jobs: int, *, timeout: float | None = 0.0) -> list[Job]:
        """Take up to ``max_jobs`` jobs, waiting up to ``timeout`` for the first (BATCH)."""
        n, t = self._prepare_many_dequeue(max_jobs, timeout)
        return await self._dequeue_many(n, t)

    async def peek(self) -> Job | None:
        """Return the next job without taking it (PEEK)."""
        self._check_open()
        self._need(Capability.PEEK, "peek()")
        return await self._peek()

    async def ack(self, job: Job) -> None:
        """Settle a job returned by ``dequeue()`` as done (ACK)."""
        await self._ack(self._prepare_settle(job, "ack"))

    async def nack(self, job: Job, *, requeue: bool = True, delay: Delay | None = None) -> None:
        """Return a leased job to the queue, after ``delay`` if given, or dead-letter it (ACK)."""
        j, d = self._prepare_nack(job, requeue, delay)
        await self._nack(j, requeue, d)

    async def extend_lease(self, job: Job, seconds: float) -> None:
        """Keep a leased job for ``seconds`` more, counted from now (LEASE_EXTEND)."""
        j, s = self._prepare_extend(job, seconds)
        await self._extend_lease(j, s)

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
        await self._close()

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

    async def _nack(self, job: Job, requeue: bool, delay: float) -> None:
        raise self._unsupported("nack()", Capability.ACK)

    async def _extend_lease(self, job: Job, seconds: float) -> None:
        raise self._unsupported("extend_lease()", Capability.LEASE_EXTEND)

    async def _size(self) -> int:
        raise NotImplementedError

    async def _purge(self) -> int:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError


