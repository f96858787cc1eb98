"""The asyncio face of the redis:// driver (redis.asyncio), over the same core as the sync one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any, Self

from redis import asyncio as aredis
from redis import exceptions as rexc

from ..._base import AsyncQueueBase
from ..._errors import JobNotLeased
from ..._job import EnqueueRequest, Job
from ..._url import URL
from . import _scripts
from ._core import CAPABILITIES, Call, Core, RedisOptions, parse, translating

__all__ = ["AsyncRedisQueue"]

log = logging.getLogger("unifiedq.drivers.redis")


class AsyncRedisQueue(AsyncQueueBase):
    """An asyncio handle on an asynq-compatible Redis queue (see the package docstring)."""

    driver = "redis"
    capabilities = CAPABILITIES

    def __init__(self, url: URL, options: RedisOptions) -> None:
        super().__init__(options.queue, url)
        self.options = options
        self.max_body = options.max_body
        self._core = Core(url, options)
        self._client: aredis.Redis | None = None  # made on first use, inside the loop
        self._hb: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: URL, options: Mapping[str, object]) -> Self:
        """Build a handle from ``redis://[[user]:password@]host[:port][/db]?queue=...``."""
        return cls(*parse(url, options))

    # -- plumbing --------------------------------------------------------------------------
    def _redis(self) -> aredis.Redis:
        if self._client is None:
            self._client = aredis.Redis(**self._core.connection_kwargs)
        return self._client

    async def _eval(self, call: Call) -> Any:
        script, keys, args = call
        c = self._redis()
        try:
            return await c.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
        except rexc.NoScriptError:  # first use, or the server restarted and lost its cache
            await c.script_load(script.source)
            return await c.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]

    def _start_heartbeat(self) -> None:
        if self.options.heartbeat and self._hb is None and not self._closed:
            self._hb = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._core.heartbeat_interval)
            for call in self._core.heartbeat_calls():
                try:
                    with translating():
                        lost = await self._eval(call)
                except Exception as exc:  # keep beating; the next tick retries
                    log.warning("lease heartbeat for queue %r failed: %s", self.name, exc)
                    continue
                self._core.lost(call, lost)

    # -- verbs -----------------------------------------------------------------------------
    async def _publish(self, level: int) -> None:
        if level not in self._core.published:
            for cmd in self._core.publish_calls(level):
                await self._redis().execute_command(*cmd)  # type: ignore[no-untyped-call]
            self._core.published.add(level)

    async def _enqueue(self, req: EnqueueRequest) -> str:
        if req.headers:
            self._core.check_headers(req.headers)
        level, args = self._core.enqueue_call(req, time.time_ns())
        with translating():
            if level not in self._core.published:
                await self._publish(level)
            try:
                code = await self._redis().execute_command(*args)  # type: ignore[no-untyped-call]
            except rexc.NoScriptError:
                await self._redis().script_load(_scripts.ENQUEUE.source)
                code = await self._redis().execute_command(*args)  # type: ignore[no-untyped-call]
        return self._core.enqueue_result(code, req.job_id)

    async def _enqueue_many(self, reqs: list[EnqueueRequest]) -> list[str]:
        self._core.check_headers(reqs[0].headers)
        now = time.time_ns()
        calls = [self._core.enqueue_call(r, now) for r in reqs]
        with translating():
            for level in {lv for lv, _ in calls}:
                await self._publish(level)
            todo = list(range(len(calls)))
            codes: list[Any] = [None] * len(calls)
            for _ in range(2):  # a second pass only after NOSCRIPT
                pipe = self._redis().pipeline(transaction=False)
                for i in todo:
                    pipe.execute_command(*calls[i][1])
                res = await pipe.execute(raise_on_error=False)
                retry = []
                for i, r in zip(todo, res, strict=True):
                    if isinstance(r, rexc.NoScriptError):
                        retry.append(i)
                    elif isinstance(r, Exception):
                        raise r
                    else:
                        codes[i] = r
                if not retry:
                    break
                await self._redis().script_load(_scripts.ENQUEUE.source)
                todo = retry
        return [self._core.enqueue_result(c, r.job_id) for c, r in zip(codes, reqs, strict=True)]

    async def _take(self, max_jobs: int, timeout: float | None) -> list[Job]:
        deadline = None if timeout is None else time.monotonic() + timeout
        core = self._core
        with translating():
            while True:
                call, token = core.dequeue_call(max_jobs)
                jobs, next_due = core.dequeue_result(await self._eval(call), token)
                if jobs:
                    self._start_heartbeat()
                    return jobs
                if timeout == 0:
                    return []
                wait = core.wait_seconds(next_due, deadline)
                if wait is None:
                    return []
                await self._redis().blpop([core.wake_key], timeout=wait)
                self._check_open()

    async def _dequeue(self, timeout: float | None) -> Job | None:
        jobs = await self._take(1, timeout)
        return jobs[0] if jobs else None

    async def _dequeue_many(self, max_jobs: int, timeout: float | None) -> list[Job]:
        return await self._take(max_jobs, timeout)

    async def _peek(self) -> Job | None:
        with translating():
            return self._core.peek_result(await self._eval(self._core.peek_call()))

    async def _settle(self, job: Job, call: Call) -> None:
        r = self._core.receipt(job)
        try:
            with translating():
                await self._eval(call)
        finally:
            self._core.release(r, job.id)

    async def _ack(self, job: Job) -> None:
        await self._settle(job, self._core.ack_call(job))

    async def _nack(self, job: Job, requeue: bool, delay: float) -> None:
        await self._settle(job, self._core.nack_call(job, requeue, delay))

    async def _extend_lease(self, job: Job, seconds: float) -> None:
        r = self._core.receipt(job)
        with translating():
            lost = await self._eval(self._core.extend_call(job, seconds))
        if lost:
            self._core.release(r, job.id)
            raise JobNotLeased(f"job {job.id!r} is no longer leased by this delivery")

    async def _size(self) -> int:
        with translating():
            return int(await self._eval(self._core.size_call()))

    async def stats(self) -> Mapping[str, object]:
        """Per-state counts of this queue over all its priority levels, as asynq counts them.

        Read-only, one script call. Keys: ``depth`` (= ``size()``), ``oldest_age`` (asynq's
        latency, seconds), ``pending``, ``active``, ``scheduled``, ``retry``, ``dead`` (asynq's
        archived set), plus ``completed`` (kept by ``retention``) and ``paused``.

        Raises:
            QueueClosed: The handle is closed.
            BackendConnectionError: Redis did not answer.
        """
        self._check_open()
        with translating():
            return self._core.stats_result(await self._eval(self._core.stats_call()))

    async def _purge(self) -> int:
        with translating():
            return int(await self._eval(self._core.purge_call()))

    async def _close(self) -> None:
        if self._hb is not None:
            self._hb.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._hb
        client = self._client
        if client is None:
            return
        with contextlib.suppress(Exception), translating():
            for call in self._core.held_jobs_calls():
                with contextlib.suppress(rexc.ResponseError):
                    await self._eval(call)
        await client.aclose()
