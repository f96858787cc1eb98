"""The blocking face of the redis:// driver (redis-py)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Self

import redis
from redis import exceptions as rexc

from ..._base import QueueBase
from ..._errors import JobNotLeased
from ..._job import EnqueueRequest, Job
from ..._url import URL
from . import _scripts
from ._core import (
    CAPABILITIES,
    Call,
    Core,
    RedisOptions,
    pack,
    parse,
    pool_args,
    translating,
)

__all__ = ["RedisQueue"]

log = logging.getLogger("unifiedq.drivers.redis")


_POOL_ARGS = pool_args(redis.ConnectionPool)


class RedisQueue(QueueBase):
    """A blocking handle on an asynq-compatible Redis queue (see the package docstring)."""

    driver = "redis"
    capabilities = CAPABILITIES

    def __init__(self, url: URL, options: RedisOptions) -> None:
        super().__init__(options.queue, url)
        self.options = options
        self.max_body = options.max_body
        self._core = Core(url, options)
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()
        self._hb: threading.Thread | None = None
        self._hb_stop = threading.Event()

    @classmethod
    def from_url(cls, url: URL, options: Mapping[str, object]) -> Self:
        """Build a handle from ``redis://[[user]:password@]host[:port][/db]?queue=...``."""
        return cls(*parse(url, options))

    # -- plumbing --------------------------------------------------------------------------
    def _redis(self) -> redis.Redis:
        c = self._client
        if c is None:
            with self._lock:
                if self._client is None:
                    self._client = redis.Redis(**self._core.connection_kwargs)
                c = self._client
        return c

    def _eval(self, call: Call) -> Any:
        script, keys, args = call
        data = pack(("EVALSHA", script.sha, len(keys), *keys, *args))
        reply = self._send(data, 1)[0][0]
        if isinstance(reply, rexc.NoScriptError):  # first use, or the server lost its cache
            self._redis().script_load(script.source)
            reply = self._send(data, 1)[0][0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _roundtrip(self, data: bytes, n: int) -> list[Any]:
        """Write pre-packed commands at once and read their ``n`` replies (errors as values).

        This is what a redis-py pipeline does, minus its per-command bookkeeping (argument
        re-encoding, response callbacks), which cost more than the rest of an enqueue.
        """
        pool = self._redis().connection_pool
        conn = pool.get_connection(*_POOL_ARGS)
        try:
            conn.send_packed_command([data])  # type: ignore[no-untyped-call]
            out: list[Any] = []
            for _ in range(n):
                try:
                    out.append(conn.read_response())
                except rexc.ResponseError as exc:  # the reply was read; the stream is in step
                    out.append(exc)
            return out
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]  # never pool a desynced socket
            raise
        finally:
            pool.release(conn)

    def _send(self, data: bytes, n: int) -> tuple[list[Any], bool]:
        """:meth:`_roundtrip` retried once on a broken connection (as redis-py retries).

        Returns the replies and whether the commands went out twice.
        """
        try:
            return self._roundtrip(data, n), False
        except rexc.AuthenticationError:
            raise
        except (rexc.ConnectionError, rexc.TimeoutError):
            return self._roundtrip(data, n), True

    def _start_heartbeat(self) -> None:
        if not self.options.heartbeat or self._hb is not None:
            return
        with self._lock:
            if self._hb is None and not self._closed:
                self._hb = threading.Thread(target=self._beat, name="unifiedq-redis-heartbeat",
                                            daemon=True)
                self._hb.start()

    def _beat(self) -> None:
        while not self._hb_stop.wait(self._core.heartbeat_interval):
            for call in self._core.heartbeat_calls():
                try:
                    with translating():
                        lost = self._eval(call)
                except Exception as exc:  # keep beating; the next tick retries
                    log.warning("lease heartbeat for queue %r failed: %s", self.name, exc)
                    continue
                self._core.lost(call, lost)

    # -- verbs -----------------------------------------------------------------------------
    def _publish(self, level: int) -> None:
        if level not in self._core.published:
            for cmd in self._core.publish_calls(level):
                self._redis().execute_command(*cmd)  # type: ignore[no-untyped-call]
            self._core.published.add(level)

    def _enqueue(self, req: EnqueueRequest) -> str:
        return self._enqueue_many([req])[0]

    def _enqueue_many(self, reqs: list[EnqueueRequest]) -> list[str]:
        core = self._core
        if reqs[0].headers:
            core.check_headers(reqs[0].headers)  # one batch shares its headers
        now = time.time_ns()
        levels, data = core.enqueue_commands(reqs, now)
        with translating():
            for level in levels:
                if level not in core.published:
                    self._publish(level)
            replies, resent = self._send(data, len(reqs))
            missing = [i for i, r in enumerate(replies) if isinstance(r, rexc.NoScriptError)]
            if missing:  # first use, or the server restarted and lost its script cache
                self._redis().script_load(_scripts.ENQUEUE.source)
                _, data = core.enqueue_commands([reqs[i] for i in missing], now)
                again, twice = self._send(data, len(missing))
                for i, r in zip(missing, again, strict=True):
                    replies[i] = r
                resent = resent or twice
            for r in replies:
                if isinstance(r, Exception):
                    raise r
        return [core.enqueue_result(c, r.job_id, resent=resent and not r.custom_id)
                for c, r in zip(replies, reqs, strict=True)]

    def _take(self, max_jobs: int, timeout: float | None) -> list[Job]:
        deadline = None if timeout is None else time.monotonic() + timeout
        core = self._core
        with translating():
            while True:
                call, token = core.dequeue_call(max_jobs)
                jobs, next_due = core.dequeue_result(self._eval(call), token)
                if jobs:
                    self._start_heartbeat()
                    return jobs
                if timeout == 0:
                    return []
                wait = core.wait_seconds(next_due, deadline)
                if wait is None:
                    return []
                self._redis().blpop([core.wake_key], timeout=wait)
                self._check_open()

    def _dequeue(self, timeout: float | None) -> Job | None:
        jobs = self._take(1, timeout)
        return jobs[0] if jobs else None

    def _dequeue_many(self, max_jobs: int, timeout: float | None) -> list[Job]:
        return self._take(max_jobs, timeout)

    def _peek(self) -> Job | None:
        with translating():
            return self._core.peek_result(self._eval(self._core.peek_call()))

    def _settle(self, job: Job, call: Call) -> None:
        r = self._core.receipt(job)
        try:
            with translating():
                self._eval(call)
        finally:
            self._core.release(r, job.id)

    def _ack(self, job: Job) -> None:
        self._settle(job, self._core.ack_call(job))

    def _nack(self, job: Job, requeue: bool, delay: float) -> None:
        self._settle(job, self._core.nack_call(job, requeue, delay))

    def _extend_lease(self, job: Job, seconds: float) -> None:
        r = self._core.receipt(job)
        with translating():
            lost = self._eval(self._core.extend_call(job, seconds))
        if lost:
            self._core.release(r, job.id)
            raise JobNotLeased(f"job {job.id!r} is no longer leased by this delivery")

    def _size(self) -> int:
        with translating():
            return int(self._eval(self._core.size_call()))

    def stats(self) -> Mapping[str, object]:
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
            return self._core.stats_result(self._eval(self._core.stats_call()))

    def _purge(self) -> int:
        with translating():
            return int(self._eval(self._core.purge_call()))

    def _close(self) -> None:
        self._hb_stop.set()
        if self._hb is not None:
            self._hb.join(10)
        client = self._client
        if client is None:
            return
        with contextlib.suppress(Exception), translating():
            for call in self._core.held_jobs_calls():
                with contextlib.suppress(rexc.ResponseError):
                    self._eval(call)
        client.close()
