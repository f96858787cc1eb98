# unasync: the blocking twin, _sync/queue.py, is generated from this file.
"""One face of the redis:// driver: the I/O around the shared, non-I/O ``Core``.

The asyncio face (``_async/queue.py``, redis.asyncio) is the source; the blocking one
(``_sync/queue.py``, redis-py) is generated from it. Each face takes its client module from
``_clients`` and its heartbeat (a task or a thread) from ``_concurrency``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Self

from redis import exceptions as rexc

from ...._base import AsyncQueueBase
from ...._concurrency import AsyncRuntime, AsyncTask
from ...._errors import JobNotLeased
from ...._job import EnqueueRequest, Job
from ...._url import URL
from .. import _scripts
from .._clients import aredis, disconnect_async
from .._core import (
    CAPABILITIES,
    Call,
    Core,
    RedisOptions,
    pack,
    parse,
    pool_args,
    translating,
)

__all__ = ["AsyncRedisQueue"]

log = logging.getLogger("unifiedq.drivers.redis")


_POOL_ARGS = pool_args(aredis.ConnectionPool)


class AsyncRedisQueue(AsyncQueueBase):
    """A handle on an asynq-compatible Redis queue (see the package docstring)."""

    driver = "redis"
    capabilities = CAPABILITIES

    def __init__(self, url: URL, options: RedisOptions) -> None:
        super().__init__(options.queue, url)
        self.options = options
        self.max_body = options.max_body
        self._core = Core(url, options)
        self._client: aredis.Redis | None = None  # made on first use
        self._lock = threading.Lock()  # the client and the heartbeat are made once
        self._hb: AsyncTask | None = None
        self._hb_stop = AsyncRuntime.Event()

    @classmethod
    def from_url(cls, url: URL, options: Mapping[str, object]) -> Self:
        """Build a handle from ``redis://[[user]:password@]host[:port][/db]?queue=...``."""
        return cls(*parse(url, options))

    # -- plumbing --------------------------------------------------------------------------
    def _redis(self) -> aredis.Redis:
        c = self._client
        if c is None:
            with self._lock:
                if self._client is None:
                    self._client = aredis.Redis(**self._core.connection_kwargs)
                c = self._client
        return c

    async def _eval(self, call: Call) -> Any:
        script, keys, args = call
        data = pack(("EVALSHA", script.sha, len(keys), *keys, *args))
        reply = (await self._send(data, 1))[0][0]
        if isinstance(reply, rexc.NoScriptError):  # first use, or the server lost its cache
            await self._redis().script_load(script.source)
            reply = (await self._send(data, 1))[0][0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _roundtrip(self, data: bytes, n: int) -> list[Any]:
        """Write pre-packed commands at once and read their ``n`` replies (errors as values).

        This is what a redis-py pipeline does, minus its per-command bookkeeping (argument
        re-encoding, response callbacks), which cost more than the rest of an enqueue.
        """
        pool = self._redis().connection_pool
        # The ignores: redis.asyncio leaves get_connection unannotated, redis-py the
        # connection's methods; each face's twin needs one of them.
        conn = await pool.get_connection(*_POOL_ARGS)  # type: ignore[no-untyped-call, unused-ignore]
        try:
            await conn.send_packed_command([data])  # type: ignore[no-untyped-call, unused-ignore]
            out: list[Any] = []
            for _ in range(n):
                try:
                    out.append(await conn.read_response())
                except rexc.ResponseError as exc:  # the reply was read; the stream is in step
                    out.append(exc)
            return out
        except BaseException:
            await disconnect_async(conn)  # never pool a desynced socket
            raise
        finally:
            await pool.release(conn)

    async def _send(self, data: bytes, n: int) -> tuple[list[Any], bool]:
        """:meth:`_roundtrip` retried once on a broken connection (as redis-py retries).

        Returns the replies and whether the commands went out twice.
        """
        try:
            return await self._roundtrip(data, n), False
        except rexc.AuthenticationError:
            raise
        except (rexc.ConnectionError, rexc.TimeoutError):
            return await self._roundtrip(data, n), True

    def _start_heartbeat(self) -> None:
        if not self.options.heartbeat or self._hb is not None:
            return
        with self._lock:
            if self._hb is None and not self._closed:
                self._hb = AsyncRuntime.spawn(self._beat, name="unifiedq-redis-heartbeat")

    async def _beat(self) -> None:
        while not await self._hb_stop.wait(self._core.heartbeat_interval):
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
        return (await self._enqueue_many([req]))[0]

    async def _enqueue_many(self, reqs: list[EnqueueRequest]) -> list[str]:
        core = self._core
        if reqs[0].headers:
            core.check_headers(reqs[0].headers)  # one batch shares its headers
        now = time.time_ns()
        levels, data = core.enqueue_commands(reqs, now)
        with translating():
            for level in levels:
                if level not in core.published:
                    await self._publish(level)
            replies, resent = await self._send(data, len(reqs))
            missing = [i for i, r in enumerate(replies) if isinstance(r, rexc.NoScriptError)]
            if missing:  # first use, or the server restarted and lost its script cache
                await self._redis().script_load(_scripts.ENQUEUE.source)
                _, data = core.enqueue_commands([reqs[i] for i in missing], now)
                again, twice = await self._send(data, len(missing))
                for i, r in zip(missing, again, strict=True):
                    replies[i] = r
                resent = resent or twice
            for r in replies:
                if isinstance(r, Exception):
                    raise r
        return [core.enqueue_result(c, r.job_id, resent=resent and not r.custom_id)
                for c, r in zip(replies, reqs, strict=True)]

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
        self._hb_stop.set()  # a heartbeat thread ends at its next wait
        if self._hb is not None:
            self._hb.cancel()  # a heartbeat task ends now (a no-op for a thread)
            await self._hb.join(10)
        client = self._client
        if client is None:
            return
        with contextlib.suppress(Exception), translating():
            for call in self._core.held_jobs_calls():
                with contextlib.suppress(rexc.ResponseError):
                    await self._eval(call)
        await client.aclose()
