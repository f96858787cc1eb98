"""Bridges that give every driver both faces.

* :class:`SyncToAsync` runs a blocking driver's methods in a small, bounded thread pool.
* :class:`AsyncToSync` runs an asyncio driver on one private event-loop thread shared by all
  bridged queues of the process, and blocks the caller until each coroutine finishes.

Bridges call the wrapped driver's underscore methods directly: the bridge's own public verbs
have already validated the arguments, so the work is not done twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ._base import AsyncQueueBase, QueueBase
from ._capabilities import Capability
from ._job import EnqueueRequest, Job

__all__ = ["AsyncToSync", "SyncToAsync"]

T = TypeVar("T")

# A blocking dequeue in a worker thread is cut into slices so that a cancelled wait frees its
# thread within this many seconds instead of holding it until the full timeout.
_SLICE = 1.0
# Threads for result() waits of one bridged handle (beyond it, waits queue for a slice).
_MAX_WAITERS = 64


class SyncToAsync(AsyncQueueBase):
    """The asyncio face of a blocking driver."""

    bridged = True

    def __init__(self, inner: QueueBase, *, max_threads: int = 8) -> None:
        super().__init__(inner.name, inner._url)
        self.driver = inner.driver
        self.capabilities = inner.capabilities
        self.max_body = inner.max_body
        self.inner = inner
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_threads, thread_name_prefix=f"unifiedq-{inner.driver}"
        )
        self._waiters: concurrent.futures.ThreadPoolExecutor | None = None  # result() waits
        self._waiters_lock = threading.Lock()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    async def _enqueue(self, req: EnqueueRequest) -> str:
        return await self._run(self.inner._enqueue, req)

    async def _enqueue_many(self, reqs: list[EnqueueRequest]) -> list[str]:
        return await self._run(self.inner._enqueue_many, reqs)

    async def _take(self, fn: Callable[[float | None], T], timeout: float | None) -> T:
        """Run a taking call in the pool; if we are cancelled meanwhile, give its jobs back."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, fn, timeout)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(self._rescue)
            raise

    def _rescue(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        result = fut.result()
        jobs = result if isinstance(result, list) else [result] if result is not None else []
        for job in jobs:
            self._hand_back(job)

    def _hand_back(self, job: Job) -> None:
        """Give ``job`` back from a thread: it was taken for a caller that was cancelled."""
        try:
            self._pool.submit(self._give_back, job)
        except RuntimeError:  # the pool is shut down (closed meanwhile): one thread of its own
            threading.Thread(target=self._give_back, args=(job,), daemon=True,
                             name=f"unifiedq-{self.driver}-give-back").start()

    def _give_back(self, job: Job) -> None:
        # A dequeue cancelled after the driver took the job: nobody saw it, so it goes back
        # with its attempt count unchanged where the driver can do that.
        if Capability.RELEASE in self.capabilities:
            self.inner._release(job)
        elif Capability.ACK in self.capabilities:
            self.inner._nack(job, True, 0.0)
        else:  # at-most-once driver: the job is already removed; put a copy back
            self.inner._enqueue(
                EnqueueRequest(job.body, 0.0, job.priority, job.id, False, job.headers,
                               job.deadline, job.timeout)
            )

    async def _dequeue(self, timeout: float | None) -> Job | None:
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while True:
            now = asyncio.get_running_loop().time()
            step = _SLICE if deadline is None else max(0.0, min(_SLICE, deadline - now))
            job = await self._take(self.inner._dequeue, step)
            if job is not None or (deadline is not None and now + step >= deadline):
                return job

    async def _dequeue_many(self, max_jobs: int, timeout: float | None) -> list[Job]:
        first = await self._dequeue(timeout)
        if first is None or max_jobs == 1:
            return [] if first is None else [first]
        try:
            rest = await self._take(lambda _t: self.inner._dequeue_many(max_jobs - 1, 0.0), 0.0)
        except asyncio.CancelledError:
            # ``first`` is ours, and the caller will never see it (``rest`` is rescued by
            # _take): without this it stayed leased until its visibility timeout.
            self._hand_back(first)
            raise
        except Exception:
            # Fetching the rest failed (a timeout, a lost connection): the caller still gets
            # what was taken; raising would strand ``first`` leased to nobody.
            return [first]
        return [first, *rest]

    async def _peek(self) -> Job | None:
        return await self._run(self.inner._peek)

    async def _ack(self, job: Job) -> None:
        await self._run(self.inner._ack, job)

    async def _ack_many(self, jobs: list[Job]) -> None:
        await self._run(self.inner._ack_many, jobs)

    async def _pause(self) -> None:
        await self._run(self.inner._pause)

    async def _resume(self) -> None:
        await self._run(self.inner._resume)

    async def _is_paused(self) -> bool:
        return await self._run(self.inner._is_paused)

    async def _nack(self, job: Job, requeue: bool, delay: float) -> None:
        await self._run(self.inner._nack, job, requeue, delay)

    async def _settle_expired(self, job: Job) -> None:
        await self._run(self.inner._settle_expired, job)

    async def _extend_lease(self, job: Job, seconds: float) -> None:
        await self._run(self.inner._extend_lease, job, seconds)

    async def _release(self, job: Job) -> None:
        await self._run(self.inner._release, job)

    async def _result(self, job_id: str, timeout: float | None) -> bytes | None:
        # A result wait can last long and many callers may wait at once (a web app): it runs
        # in slices on threads of its own, so waiters never starve the pool the other verbs
        # (a worker's dequeue and ack on this handle) need.
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        with self._waiters_lock:
            if self._waiters is None:
                self._waiters = concurrent.futures.ThreadPoolExecutor(
                    max_workers=_MAX_WAITERS,
                    thread_name_prefix=f"unifiedq-{self.driver}-result")
            pool = self._waiters
        while True:
            now = loop.time()
            step = _SLICE if deadline is None else max(0.0, min(_SLICE, deadline - now))
            got = await loop.run_in_executor(pool, self.inner._result, job_id, step)
            if got is not None or (deadline is not None and now + step >= deadline):
                return got

    async def _complete(self, job: Job, result: bytes, retention: float | None) -> None:
        await self._run(self.inner._complete, job, result, retention)

    async def _fail(self, job: Job, error: str, retention: float | None) -> None:
        await self._run(self.inner._fail, job, error, retention)

    async def _size(self) -> int:
        return await self._run(self.inner._size)

    async def _purge(self) -> int:
        return await self._run(self.inner._purge)

    async def _close(self) -> None:
        try:
            await self._run(self.inner.close)
        finally:
            self._pool.shutdown(wait=False)
            if self._waiters is not None:
                self._waiters.shutdown(wait=False)


class _LoopThread:
    """One daemon thread running an event loop, recreated after fork."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _pid = 0

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._pid != os.getpid() or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                t = threading.Thread(
                    target=loop.run_forever, name="unifiedq-bridge-loop", daemon=True
                )
                t.start()
                cls._loop, cls._pid = loop, os.getpid()
            return cls._loop


def _run_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    fut = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return fut.result()
    except BaseException:
        fut.cancel()  # e.g. KeyboardInterrupt while blocked: stop the coroutine too
        raise


class AsyncToSync(QueueBase):
    """The blocking face of an asyncio driver."""

    bridged = True

    def __init__(self, inner: AsyncQueueBase) -> None:
        # Async drivers do no I/O and touch no event loop in their constructor, so the inner
        # handle can be built on the caller's thread and then driven on the loop thread.
        self._loop = _LoopThread.get()
        super().__init__(inner.name, inner._url)
        self.driver = inner.driver
        self.capabilities = inner.capabilities
        self.max_body = inner.max_body
        self.inner = inner

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return _run_on(self._loop, coro)

    def _enqueue(self, req: EnqueueRequest) -> str:
        return self._run(self.inner._enqueue(req))

    def _enqueue_many(self, reqs: list[EnqueueRequest]) -> list[str]:
        return self._run(self.inner._enqueue_many(reqs))

    def _dequeue(self, timeout: float | None) -> Job | None:
        return self._run(self.inner._dequeue(timeout))

    def _dequeue_many(self, max_jobs: int, timeout: float | None) -> list[Job]:
        return self._run(self.inner._dequeue_many(max_jobs, timeout))

    def _peek(self) -> Job | None:
        return self._run(self.inner._peek())

    def _ack(self, job: Job) -> None:
        self._run(self.inner._ack(job))

    def _ack_many(self, jobs: list[Job]) -> None:
        self._run(self.inner._ack_many(jobs))

    def _pause(self) -> None:
        self._run(self.inner._pause())

    def _resume(self) -> None:
        self._run(self.inner._resume())

    def _is_paused(self) -> bool:
        return self._run(self.inner._is_paused())

    def _nack(self, job: Job, requeue: bool, delay: float) -> None:
        self._run(self.inner._nack(job, requeue, delay))

    def _settle_expired(self, job: Job) -> None:
        self._run(self.inner._settle_expired(job))

    def _extend_lease(self, job: Job, seconds: float) -> None:
        self._run(self.inner._extend_lease(job, seconds))

    def _release(self, job: Job) -> None:
        self._run(self.inner._release(job))

    def _result(self, job_id: str, timeout: float | None) -> bytes | None:
        return self._run(self.inner._result(job_id, timeout))

    def _complete(self, job: Job, result: bytes, retention: float | None) -> None:
        self._run(self.inner._complete(job, result, retention))

    def _fail(self, job: Job, error: str, retention: float | None) -> None:
        self._run(self.inner._fail(job, error, retention))

    def _size(self) -> int:
        return self._run(self.inner._size())

    def _purge(self) -> int:
        return self._run(self.inner._purge())

    def _close(self) -> None:
        self._run(self.inner.aclose())
