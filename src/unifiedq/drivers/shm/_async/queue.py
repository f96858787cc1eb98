# unasync: the blocking twin, _sync/queue.py, is generated from this file.
"""One face of the shm:// driver: the verbs over the shared ring, and how this face waits.

The asyncio face (``_async/queue.py``) is the source; the blocking one (``_sync/queue.py``) is
generated from it. Everything that does not wait is in ``_core`` (the ring, ``_ShmCommon`` and
its enqueue plans); a face adds only ``_retry`` and ``_wait``, which run those plans.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Self, TypeVar

from ...._base import AsyncQueueBase
from ...._concurrency import AsyncRuntime
from ...._errors import QueueClosed
from ...._job import EnqueueRequest, Job
from ...._url import URL
from .._core import _CAPS, _ID_MAX, ShmOptions, _Plan, _ShmCommon

__all__ = ["AsyncShmQueue"]

T = TypeVar("T")

#: Tries before the first clock read (about 0.4 us each on an empty ring). Only a thread
#: polls like this: a task that does would hold up its whole event loop.
_POLLS = 0 if AsyncRuntime.RUNS_COROUTINES else 64


async def _retry(
    fn: Callable[[], T | None], timeout: float | None, opts: ShmOptions,
    closed: Callable[[], bool],
) -> T | None:
    """Call ``fn`` until it returns non-None or ``timeout`` passes: poll, spin, then sleep."""
    # Busy-poll first, with no syscall or clock read: a reply in a request/response exchange
    # usually lands within these tens of microseconds, and yielding the CPU here would cost a
    # scheduler round trip (the ping-pong latency). Idle waits stay cheap: this happens once
    # per call, then the loop below spins for ``opts.spin`` and backs off to sleeps.
    for _ in range(_POLLS):
        got = fn()
        if got is not None:
            return got
    now = time.monotonic()
    deadline = None if timeout is None else now + timeout
    spin_end = now + opts.spin
    nap = 0.00005
    while True:
        got = fn()
        if got is not None:
            return got
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return None
        if closed():
            raise QueueClosed("the shm queue was closed while waiting")
        if now < spin_end:
            await AsyncRuntime.yield_now()
            continue
        await AsyncRuntime.sleep(nap if deadline is None else min(nap, deadline - now))
        nap = min(nap * 2, opts.max_sleep)


class AsyncShmQueue(_ShmCommon, AsyncQueueBase):
    """A handle on a shared-memory ring (see the package docstring)."""

    capabilities = _CAPS | AsyncRuntime.NATIVE

    def __init__(self, name: str, options: ShmOptions, url: URL | None = None) -> None:
        AsyncQueueBase.__init__(self, name, url)
        self._setup(name, options)

    @classmethod
    def from_url(cls, url: URL, options: Mapping[str, object]) -> Self:
        """Build a handle from ``shm://<name>?...`` without touching the segment."""
        name, opts = cls._parse(url, options)
        return cls(name, opts, url)

    async def unlink(self) -> bool:
        """Remove this queue's segment (see :func:`unlink`); this handle keeps working."""
        return self._unlink()

    def _closed_now(self) -> bool:
        return self._closed

    # shm has no enqueue options (no DELAY, PRIORITY, CUSTOM_ID, HEADERS), so every request
    # is plain: the request objects' verbs forward to the plain hooks.
    async def _enqueue(self, req: EnqueueRequest) -> str:
        return await self._enqueue_plain(req.body, req.job_id)

    async def _enqueue_many(self, reqs: list[EnqueueRequest]) -> list[str]:
        return await self._enqueue_plain_many([r.body for r in reqs], [r.job_id for r in reqs])

    async def _enqueue_plain(self, body: bytes, job_id: str) -> str:
        ring = self._ring or self._attach()
        c = ring.c
        # The common case, one compiled call: room in the ring (the id and body sizes are
        # checked there too; any trouble takes the slow path, which explains it).
        if c is not None and len(job_id) <= _ID_MAX and not c.put(body, job_id, time.time()):
            return job_id
        return await self._wait(self._put_plan(ring, body, job_id))

    async def _enqueue_plain_many(self, bodies: list[bytes], ids: list[str]) -> list[str]:
        return await self._wait(self._put_many_plan(bodies, ids))

    async def _wait(self, plan: _Plan[T]) -> T:
        """Run a plan (see :class:`~._core._ShmCommon`), waiting as this face waits."""
        try:
            fn, t = next(plan)
            while True:
                if fn is None:
                    await AsyncRuntime.sleep(t)
                    got = None
                else:
                    got = await _retry(fn, t, self.options, self._closed_now)
                fn, t = plan.send(got)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _dequeue(self, timeout: float | None) -> Job | None:
        ring = self._ring or self._attach()
        job = ring.take()
        if job is None and timeout != 0.0:
            job = await _retry(ring.take, timeout, self.options, self._closed_now)
        return job

    async def _dequeue_many(self, max_jobs: int, timeout: float | None) -> list[Job]:
        ring = self._ring or self._attach()
        jobs = ring.take_many(max_jobs)
        if not jobs and timeout != 0.0:
            jobs = await _retry(
                lambda: ring.take_many(max_jobs) or None, timeout, self.options, self._closed_now,
            ) or []
        return jobs

    async def _peek(self) -> Job | None:
        item = (self._ring or self._attach()).peek()
        return None if item is None else self._job(item)

    async def _size(self) -> int:
        return (self._ring or self._attach()).size()

    async def _purge(self) -> int:
        return (self._ring or self._attach()).purge()

    async def _close(self) -> None:
        self._detach()
