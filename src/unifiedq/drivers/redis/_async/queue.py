# unasync: the blocking twin, _sync/queue.py, is generated from this file.
"""One face of the redis:// driver: the I/O around the shared, non-I/O ``Core``.

The asyncio face (``_async/queue.py``, redis.asyncio) is the source; the blocking one
(``_sync/queue.py``, redis-py) is generated from it. Each face takes its connection layer
from ``_clients`` and its heartbeat (a task or a thread) from ``_concurrency``.

Deadlines: every verb computes one deadline (``socket_timeout`` from now; a waiting dequeue
adds its wait) and every connect, write and read inside it gets only what is left of it. The
driver pools redis-py *connections* itself, so nothing retries behind its back: a broken
connection is retried once, on a fresh connection, only within the same deadline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Self

from redis import exceptions as rexc

from ...._base import AsyncQueueBase
from ...._checks import not_leased_many
from ...._concurrency import AsyncRuntime, AsyncTask
from ...._consumers import ConsumerInfo
from ...._errors import BackendConnectionError, JobNotLeased
from ...._job import EnqueueRequest, Job
from ...._url import URL
from .. import _cluster, _results, _scripts
from .._clients import AsyncWire, disconnect_async
from .._core import (
    CAPABILITIES,
    Call,
    Core,
    RedisOptions,
    pack,
    parse,
    translating,
)
from .registry import AsyncServerRegistration

__all__ = ["AsyncRedisQueue"]

log = logging.getLogger("unifiedq.drivers.redis")


class AsyncRedisQueue(AsyncQueueBase):
    """A handle on an asynq-compatible Redis queue (see the package docstring).

    Every verb returns or raises within ``socket_timeout`` seconds (a waiting dequeue within
    its ``timeout`` plus that): ``BackendTimeout`` when Redis does not answer in time,
    ``BackendConnectionError`` when it cannot be reached, ``BackendFull`` when an enqueue
    meets Redis at ``maxmemory`` (consumers keep draining), ``LimitExceeded`` before sending
    a task larger than ``proto_max_bulk_len``. ``release()`` is asynq's shutdown requeue.
    """

    driver = "redis"
    capabilities = CAPABILITIES

    def __init__(self, url: URL, options: RedisOptions) -> None:
        super().__init__(options.queue, url)
        self.options = options
        self.max_body = options.max_body
        self._core = Core(url, options)
        self._st = options.socket_timeout
        self._lock = threading.Lock()  # the heartbeat is made once
        self._pool_lock = threading.Lock()  # no await is ever made while holding it
        self._idle: list[Any] = []  # connections ready for use (connected or not)
        self._slots = self._core.cluster  # redis+cluster://: the slot map, else None
        self._pools: dict[tuple[str, int], list[Any]] = {}  # cluster: idle ones per node
        self._cl_levels: tuple[float, list[tuple[int, str, str]]] | None = None
        self._conns = 0  # connections made (idle or in use)
        self._pool_closed = False
        self._pid = os.getpid()
        self._legacy = False  # Redis < 7: scripts without their allow-oom shebang
        self._suspects: list[Call] = []  # dequeues whose reply was lost (see _take_once)
        self._hb: AsyncTask | None = None
        self._hb_stop = AsyncRuntime.Event()

    @classmethod
    def from_url(cls, url: URL, options: Mapping[str, object]) -> Self:
        """Build a handle from ``redis://[[user]:password@]host[:port][/db]?queue=...``."""
        return cls(*parse(url, options))

    # -- plumbing --------------------------------------------------------------------------
    def _deadline(self) -> float:
        """The deadline of a verb that does not wait for jobs: ``socket_timeout`` from now."""
        return time.monotonic() + self._st

    def _left(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise rexc.TimeoutError(f"no reply within the verb's deadline "
                                    f"(socket_timeout={self._st} s)")
        return left

    async def _acquire(self, deadline: float, addr: tuple[str, int] | None = None) -> Any:
        """A pooled connection (to cluster node ``addr``), connected within the deadline."""
        with self._pool_lock:
            if self._pool_closed:
                raise rexc.ConnectionError("the handle was closed")
            if self._pid != os.getpid():  # a forked child must not share the parent's sockets
                self._pid, self._idle, self._conns, self._pools = os.getpid(), [], 0, {}
            idle = self._idle if addr is None else self._pools.setdefault(addr, [])
            conn = idle.pop() if idle else None
            if conn is None:
                cap = self.options.max_connections
                if cap is not None and self._conns >= cap:
                    raise rexc.ConnectionError(f"Too many connections (max_connections={cap})")
                self._conns += 1
        if conn is None:
            conn = AsyncWire.connection(self._core.connection_kwargs, self._core.ssl)
            if addr is not None:
                conn.host, conn.port = addr
        try:
            if self._core.sentinel is not None and not conn.is_connected:
                # Ask the Sentinels on every new connection: after a failover the pool's
                # dropped connections reconnect to the promoted replica.
                conn.host, conn.port = await self._master_address(deadline)
            await AsyncWire.connect(
                conn, min(self._left(deadline), self.options.socket_connect_timeout))
        except BaseException:
            await self._put(conn, broken=True)
            raise
        return conn

    async def _master_address(self, deadline: float) -> tuple[str, int]:
        """The current master of a ``redis+sentinel://`` URL, from the first Sentinel that knows.

        As Redis' Sentinel client guidelines ask: Sentinels are tried in order, the first
        that answers ``SENTINEL get-master-addr-by-name`` wins (the promoted replica once a
        failover is done). Connections to the old master are refused ``READONLY`` once it
        rejoins as a replica, which drops them (see :meth:`_roundtrip`).
        """
        spec = self._core.sentinel
        assert spec is not None
        errors: list[str] = []
        for host, port in spec.addresses:
            conn = AsyncWire.connection({**spec.kwargs, "host": host, "port": port}, False)
            try:
                await AsyncWire.connect(
                    conn, min(self._left(deadline), self.options.socket_connect_timeout))
                await AsyncWire.send(conn, pack(("SENTINEL", "get-master-addr-by-name",
                                                 spec.master)), self._left(deadline))
                reply = await AsyncWire.read(conn, self._left(deadline))
            except (rexc.ConnectionError, rexc.TimeoutError, rexc.ResponseError, OSError) as exc:
                errors.append(f"{host}:{port}: {exc}")
                continue
            finally:
                await disconnect_async(conn)
            if reply:
                addr, mport = reply
                return (addr.decode() if isinstance(addr, bytes) else str(addr)), int(mport)
            errors.append(f"{host}:{port}: does not know master {spec.master!r}")
        raise rexc.ConnectionError(f"no Sentinel named a master {spec.master!r} "
                                   f"({'; '.join(errors)})")

    async def _put(self, conn: Any, *, broken: bool = False) -> None:
        if broken:
            await disconnect_async(conn)  # never pool a desynced socket
        with self._pool_lock:
            if not self._pool_closed:
                # A dropped one reconnects on its next use.
                if self._slots is None:
                    self._idle.append(conn)
                else:
                    self._pools.setdefault((conn.host, conn.port), []).append(conn)
                return
        if not broken:
            await disconnect_async(conn)

    async def _roundtrip(self, data: bytes, n: int, deadline: float,
                         addr: tuple[str, int] | None = None) -> list[Any]:
        """Write pre-packed commands at once and read their ``n`` replies (errors as values).

        This is what a redis-py pipeline does, minus its per-command bookkeeping (argument
        re-encoding, response callbacks), which cost more than the rest of an enqueue. Every
        step gets what is left of ``deadline``; a connection that failed or timed out in the
        middle is dropped, never pooled (its replies would answer the next caller).
        """
        async with AsyncWire.within(self._left(deadline)):
            conn = await self._acquire(deadline, addr)
            try:
                await AsyncWire.send(conn, data, self._left(deadline))
                out: list[Any] = []
                for _ in range(n):
                    try:
                        out.append(await AsyncWire.read(conn, self._left(deadline)))
                    except rexc.ResponseError as exc:  # the reply was read: still in step
                        out.append(exc)
            except BaseException:
                await self._put(conn, broken=True)
                raise
            if any(isinstance(r, rexc.ReadOnlyError) for r in out):
                # A demoted master (Sentinel failover): drop the connection, so the next one
                # asks the Sentinels, and let _send retry once within the deadline.
                await self._put(conn, broken=True)
                raise rexc.ConnectionError("the server is now a read-only replica "
                                           "(a failover happened)")
            await self._put(conn)
        return out

    async def _send(
        self, data: bytes, n: int, deadline: float, again: bytes | None = None,
        key: str | None = None,
    ) -> tuple[list[Any], bool]:
        """:meth:`_roundtrip`, retried once on a broken connection within the same deadline.

        ``again``: what to send on the retry instead of ``data``. A timeout is not retried:
        it used the whole deadline. Returns the replies and whether the commands went out
        twice. ``key``: on a cluster, the commands go to the master of this key's slot (all
        their keys share it; None: the base queue's slot).
        """
        if self._slots is not None:
            return await self._cluster_send(data, n, deadline, again, key)
        try:
            return await self._roundtrip(data, n, deadline), False
        except (rexc.AuthenticationError, rexc.TimeoutError):
            raise
        except rexc.ConnectionError:
            if deadline - time.monotonic() <= 0:
                raise
            # The failed connection went back to the top of the pool, dropped: the retry takes
            # it and reconnects, rather than another (after a restart, also dead) idle one.
            return await self._roundtrip(data if again is None else again, n, deadline), True

    async def _cluster_send(
        self, data: bytes, n: int, deadline: float, again: bytes | None, key: str | None,
    ) -> tuple[list[Any], bool]:
        """:meth:`_send` on a cluster: to the slot's master, following the cluster's changes.

        ``MOVED`` (every reply: nothing ran) patches the slot, reads the map again and resends;
        ``ASK`` (one command) resends it once to the named node behind ``ASKING``; a node that
        cannot be reached, ``CLUSTERDOWN`` or ``TRYAGAIN`` (a failover in progress) reads the
        map again and retries every 0.1 s until the deadline, sending ``again`` once the
        commands may have run.
        """
        slots = self._slots
        assert slots is not None
        route = self._core.wake_key if key is None else key
        payload, twice = data, False
        ask: tuple[str, int] | None = None
        while True:
            addr = ask or slots.node(route)
            if addr is None:
                await self._refresh_slots(deadline)
                addr = slots.node(route)
                if addr is None:
                    raise rexc.ConnectionError(f"no master serves slot {slots.slot(route)}")
            try:
                out = await self._roundtrip(
                    pack(("ASKING",)) + payload if ask else payload, n + bool(ask), deadline,
                    addr)
            except (rexc.AuthenticationError, rexc.TimeoutError):
                raise
            except rexc.ConnectionError:
                if deadline - time.monotonic() <= 0.1:
                    raise
                # The master may be dead before its replica is promoted: look again soon.
                payload, twice, ask = (data if again is None else again), True, None
                await AsyncRuntime.sleep(0.1)
                with contextlib.suppress(rexc.RedisError, OSError):
                    await self._refresh_slots(deadline, avoid=addr)
                continue
            if ask:
                out, ask = out[1:], None
            first = out[0] if out else None
            if isinstance(first, rexc.MovedError) and all(
                    isinstance(r, rexc.MovedError) for r in out):
                slots.moved(first.slot_id, first.host, first.port)
                with contextlib.suppress(rexc.RedisError, OSError):
                    await self._refresh_slots(deadline)
                self._left(deadline)
                continue
            if n == 1 and isinstance(first, rexc.AskError):
                ask = (first.host, int(first.port))
                continue
            if any(isinstance(r, rexc.ClusterDownError | rexc.TryAgainError
                              | rexc.MovedError) for r in out):
                if deadline - time.monotonic() <= 0.1:
                    return out, twice
                if not all(isinstance(r, rexc.ResponseError) for r in out):
                    payload, twice = (data if again is None else again), True
                await AsyncRuntime.sleep(0.1)
                with contextlib.suppress(rexc.RedisError, OSError):
                    await self._refresh_slots(deadline)
                continue
            return out, twice

    async def _refresh_slots(self, deadline: float,
                             avoid: tuple[str, int] | None = None) -> None:
        """Read the slot map (``CLUSTER SLOTS``) from the first known node that answers."""
        slots = self._slots
        assert slots is not None
        nodes = [a for a in slots.known if a != avoid] + ([avoid] if avoid else [])
        errors: list[str] = []
        for addr in nodes:
            try:
                reply = (await self._roundtrip(pack(("CLUSTER", "SLOTS")), 1, deadline,
                                               addr))[0]
                if isinstance(reply, Exception):
                    raise reply
                slots.load(reply, addr)
                return
            except rexc.TimeoutError:
                raise
            except (rexc.RedisError, OSError, ValueError) as exc:
                errors.append(f"{addr[0]}:{addr[1]}: {exc}")
        raise rexc.ConnectionError(f"no cluster node gave its slot map ({'; '.join(errors)})")

    def _variant(self, script: _scripts.Script) -> _scripts.Script:
        return script.legacy if self._legacy and script.legacy is not None else script

    async def _eval(self, call: Call, deadline: float, resend: Call | None = None) -> Any:
        script, keys, args = call
        sha = self._variant(script).sha
        for _ in range(2):
            data = pack(("EVALSHA", sha, len(keys), *keys, *args))
            again = None if resend is None else pack(("EVALSHA", sha, len(keys), *keys,
                                                      *resend[2]))
            reply = (await self._send(data, 1, deadline, again, keys[0]))[0][0]
            if not isinstance(reply, rexc.NoScriptError):
                break
            await self._load(script, deadline, keys[0])  # first use, or a lost cache
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _eval_many(self, calls: list[Call], deadline: float) -> list[Any]:
        """Several script calls in one round trip (a pipeline); their replies, in order.

        Raises the first error reply (after every reply was read). On a cluster the calls
        (of several slots) go one by one.
        """
        if self._slots is not None:
            return [await self._eval(c, deadline) for c in calls]
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _ in range(2):
            data = b"".join(pack(("EVALSHA", self._variant(calls[i][0]).sha,
                                  len(calls[i][1]), *calls[i][1], *calls[i][2]))
                            for i in todo)
            got, _ = await self._send(data, len(todo), deadline)
            for i, r in zip(todo, got, strict=True):
                replies[i] = r
            missing = [i for i in todo if isinstance(replies[i], rexc.NoScriptError)]
            if not missing:
                break
            for script in {calls[i][0] for i in missing}:  # first use, or a lost cache
                await self._load(script, deadline)
            todo = missing
        for r in replies:
            if isinstance(r, Exception):
                raise r
        return replies

    async def _load(self, script: _scripts.Script, deadline: float,
                    key: str | None = None) -> None:
        s = self._variant(script)
        reply = (await self._send(pack(("SCRIPT", "LOAD", s.source)), 1, deadline,
                                  key=key))[0][0]
        if (isinstance(reply, rexc.ResponseError) and s.legacy is not None
                and "near '#'" in str(reply)):
            # Redis < 7 cannot parse the allow-oom shebang: run the scripts without it (a
            # Redis at maxmemory then refuses dequeues too; see docs/drivers/redis.md).
            log.warning("Redis < 7: consumer scripts run without allow-oom (%s)", reply)
            self._legacy = True
            reply = (await self._send(pack(("SCRIPT", "LOAD", s.legacy.source)), 1,
                                      deadline, key=key))[0][0]
        if isinstance(reply, Exception):
            raise reply

    def _start_heartbeat(self) -> None:
        if not self.options.heartbeat or self._hb is not None:
            return
        with self._lock:
            if self._hb is None and not self._closed:
                self._hb = AsyncRuntime.spawn(self._beat, name="unifiedq-redis-heartbeat")

    async def _beat(self) -> None:
        while not await self._hb_stop.wait(self._core.heartbeat_interval):
            if self._suspects:
                await self._untake(self._deadline())
            for call in self._core.heartbeat_calls():
                try:
                    with translating():  # bounded like a verb: a frozen server cannot wedge it
                        lost = await self._eval(call, self._deadline())
                except Exception as exc:  # keep beating; the next tick retries
                    if not self._hb_stop.is_set():  # not the handle closing under it
                        log.warning("lease heartbeat for queue %r failed: %s", self.name, exc)
                    continue
                self._core.lost(call, lost)

    # -- verbs -----------------------------------------------------------------------------
    async def _publish(self, level: int, deadline: float) -> None:
        if level not in self._core.published:
            cmds = self._core.publish_calls(level)
            if self._slots is not None:  # asynq:queues and the levels set: two slots
                replies = [(await self._send(pack(c), 1, deadline, key=c[1]))[0][0]
                           for c in cmds]
            else:
                replies, _ = await self._send(b"".join(pack(c) for c in cmds), len(cmds),
                                              deadline)
            for r in replies:
                if isinstance(r, Exception):  # e.g. OOM: registered on a later enqueue
                    raise r
            self._core.published.add(level)
            self._cl_levels = None  # a cluster consumer on this handle reads the new level

    async def _enqueue(self, req: EnqueueRequest) -> str:
        return (await self._enqueue_many([req]))[0]

    async def _cluster_enqueue(self, reqs: list[EnqueueRequest]) -> list[str]:
        """Enqueue on a cluster: one batch per priority level (one slot each), then wake.

        A level other than 0 lives in another slot than the wake list consumers block on:
        its batch is followed by a separate push of wake-up tokens to the base slot.
        """
        by_level: dict[int, list[int]] = {}
        for i, r in enumerate(reqs):
            by_level.setdefault(r.priority or 0, []).append(i)
        if len(by_level) == 1 and 0 in by_level:
            return await self._enqueue_many(reqs, self._core.wake_key)
        out: list[str] = [""] * len(reqs)
        for level in sorted(by_level, reverse=True):
            idx = by_level[level]
            got = await self._enqueue_many([reqs[i] for i in idx], self._core.wakes[level])
            for i, jid in zip(idx, got, strict=True):
                out[i] = jid
        woken = sum(len(v) for k, v in by_level.items() if k)
        if woken:
            await self._commands(self._core.wake_calls(woken))
        return out

    async def _enqueue_many(self, reqs: list[EnqueueRequest],
                            key: str | None = None) -> list[str]:
        """Enqueue in one round trip.

        On a cluster: jobs of one priority level, whose slot ``key`` names (without it,
        :meth:`_cluster_enqueue` splits the batch by level and calls back).
        """
        if key is None and self._slots is not None:
            return await self._cluster_enqueue(reqs)
        core = self._core
        if reqs[0].headers:
            core.check_headers(reqs[0].headers)  # one batch shares its headers
        now = time.time_ns()
        levels, data = core.enqueue_commands(reqs, now)  # limits are checked before any I/O
        deadline = self._deadline()
        # WAIT (min_replicas) goes on the connection that wrote: it waits for that client's
        # last write to reach the replicas.
        wait = core.wait_command()
        with translating():
            for level in levels:
                if level not in core.published:
                    await self._publish(level, deadline)
            replies, resent = await self._send(data + wait, len(reqs) + bool(wait), deadline,
                                               key=key)
            acked = replies.pop() if wait else None
            missing = [i for i, r in enumerate(replies) if isinstance(r, rexc.NoScriptError)]
            if missing:  # first use, or the server restarted and lost its script cache
                await self._load(_scripts.ENQUEUE, deadline, key)
                _, data = core.enqueue_commands([reqs[i] for i in missing], now)
                again, twice = await self._send(data + wait, len(missing) + bool(wait),
                                                deadline, key=key)
                acked = again.pop() if wait else None
                for i, r in zip(missing, again, strict=True):
                    replies[i] = r
                resent = resent or twice
            for r in replies:
                if isinstance(r, Exception):
                    raise r
        if wait:
            core.check_replicated(acked, [r.job_id for r in reqs])
        return [core.enqueue_result(c, r.job_id, resent=resent and not r.custom_id)
                for c, r in zip(replies, reqs, strict=True)]

    async def _take_once(self, max_jobs: int) -> tuple[list[Job], float | None]:
        """One dequeue script call, safe to cancel and to lose the reply of.

        A resend after a broken connection returns what the first attempt took. If the call
        still fails, or its caller is cancelled while it runs (``wait_for``, ``cancel()``, a
        TaskGroup abort), the script may have taken jobs nobody will receive: they are given
        back at once, without counting an attempt (asynq's requeue), or by a later call once
        Redis answers again. Once the reply is read, nothing awaits before the jobs reach the
        caller, so a cancellation cannot land between the two.
        """
        core = self._core
        deadline = self._deadline()
        if self._suspects:
            await self._untake(deadline)
        if self._slots is not None:
            return await self._cluster_take(max_jobs, deadline)
        call, token = core.dequeue_call(max_jobs)
        try:
            with translating():
                reply = await self._eval(call, deadline, core.dequeue_resend(call))
        except (BackendConnectionError, AsyncRuntime.Cancelled):  # the script may have run
            with self._lock:
                self._suspects.append(call)
            await AsyncRuntime.shield(self._untake, deadline)
            raise
        return core.dequeue_result(reply, token)

    async def _cluster_take(self, max_jobs: int,
                            deadline: float) -> tuple[list[Job], float | None]:
        """:meth:`_take_once` on a cluster: one dequeue script per level, highest first.

        Each level is one slot, so each call runs on that level's master; the calls stop once
        ``max_jobs`` are taken. A lost reply or a cancellation gives that call's jobs back as
        :meth:`_take_once` does (the levels already taken are the caller's).
        """
        core = self._core
        jobs: list[Job] = []
        taken: list[Call] = []  # the calls that took ``jobs``
        due: float | None = None
        levels = list(await self._cluster_levels(deadline))
        todo = list(levels)
        while todo:
            level, qname, pfx = todo.pop(0)
            call, token = core.dequeue_call(max_jobs - len(jobs))
            call = _cluster.level_call(call, qname, pfx)
            try:
                with translating():
                    reply = await self._eval(call, deadline, core.dequeue_resend(call))
            except BackendConnectionError:  # it may have run
                with self._lock:
                    self._suspects.append(call)
                await AsyncRuntime.shield(self._untake, deadline)
                if jobs:  # already leased by this handle: hand them out, not drop them
                    return jobs, None
                raise
            except AsyncRuntime.Cancelled:
                # The caller will not receive what the earlier levels took either: give
                # those back too (by lease score and token, as a lost reply's).
                for job in jobs:
                    core.release(core.receipt(job), job.id)
                with self._lock:
                    self._suspects.extend([*taken, call])
                await AsyncRuntime.shield(self._untake, deadline)
                raise
            for i in range(int(reply[0])):  # the script saw one level, reported as 0
                reply[2 + 5 * i] = level
            got, next_due = core.dequeue_result(reply, token)
            if got:
                taken.append(call)
            jobs += got
            if next_due is not None and (due is None or next_due < due):
                due = next_due
            if len(jobs) >= max_jobs:
                break
            if not todo and not jobs:  # a level a producer added since the levels were read?
                todo = [lv for lv in await self._cluster_levels(deadline, fresh=True)
                        if lv not in levels]
                levels += todo
        return jobs, (None if jobs else due)

    async def _cluster_levels(self, deadline: float,
                              fresh: bool = False) -> list[tuple[int, str, str]]:
        """The queue's levels in use, highest first: (level, asynq queue, key prefix).

        Read from the levels set (base slot) at most once per ``poll_interval`` unless
        ``fresh`` (a dequeue that found nothing reads it again, so a level a producer just
        added is not missed).
        """
        now = time.monotonic()
        cached = self._cl_levels
        if cached is None or (fresh and now > cached[0]) or (
                now - cached[0] > self.options.poll_interval):
            with translating():
                reply = (await self._send(pack(("SMEMBERS", self._core.levels_key)), 1,
                                          deadline))[0][0]
            if isinstance(reply, Exception):
                with translating():
                    raise reply
            nums = sorted({int(x) for x in reply if 0 < int(x) < 10} | {0}, reverse=True)
            lv = self._core._levels
            cached = self._cl_levels = (now, [(n, lv[n].qname, lv[n].prefix) for n in nums])
        return cached[1]

    async def _wait_take(
        self, max_jobs: int, wait: float
    ) -> tuple[list[Job], float | None] | None:
        """Wait up to ``wait`` seconds for a wake-up token, then take jobs: ONE round trip.

        The dequeue script is pipelined behind the BLPOP on the wake list: Redis runs it as
        soon as the BLPOP returns (token or timeout), so the enqueue that wakes us is followed
        by one reply, not a reply and another round trip. The script's arguments are computed
        before the wait, so its lease ends ``wait`` seconds later than a plain dequeue's (it
        lasts at least ``visibility_timeout``), and tasks that fell due during the wait are
        forwarded by the next call (``next_due`` says when). The server answers after
        ``wait``: the read may take that long plus the usual socket_timeout, so a waiting
        dequeue ends within timeout + socket_timeout. A lost reply or a cancellation is
        handled as in :meth:`_take_once`; jobs taken after the handle was closed are given
        back on the same connection, so a closed handle never holds jobs. Returns None when
        Redis lost the script (its cache was flushed): :meth:`_take_once` loads it.
        """
        core = self._core
        if self._slots is not None:  # the levels' scripts run on other nodes: no pipelining
            with translating():
                await self._send(pack(("BLPOP", core.wake_key, repr(wait))), 1,
                                 time.monotonic() + wait + self._st)
            if self._closed:  # closed while waiting: take nothing more
                return [], None
            return await self._take_once(max_jobs)
        call, token = core.dequeue_call(max_jobs, wait)
        script, keys, args = call
        data = (pack(("BLPOP", core.wake_key, repr(wait)))
                + pack(("EVALSHA", self._variant(script).sha, len(keys), *keys, *args)))
        deadline = time.monotonic() + wait + self._st
        try:
            with translating():
                reply = await self._blpop_then(data, call, deadline)
        except (BackendConnectionError, AsyncRuntime.Cancelled):  # the script may have run
            with self._lock:
                self._suspects.append(call)
            await AsyncRuntime.shield(self._untake, self._deadline())
            raise
        return None if reply is None else core.dequeue_result(reply, token)

    async def _blpop_then(self, data: bytes, call: Call, deadline: float) -> Any:
        """Send a BLPOP and the dequeue ``call`` behind it; the dequeue's reply (None: NOSCRIPT)."""
        async with AsyncWire.within(self._left(deadline)):
            conn = await self._acquire(deadline)
            try:
                await AsyncWire.send(conn, data, self._left(deadline))
                await AsyncWire.read(conn, self._left(deadline))  # the token, or nil
                try:
                    reply = await AsyncWire.read(conn, self._left(deadline))
                except rexc.NoScriptError:
                    reply = None
                if self._closed and reply and int(reply[0]):
                    await self._give_back(conn, call, deadline)
                    reply = [0, False]
            except BaseException:
                await self._put(conn, broken=True)
                raise
            await self._put(conn)
        return reply

    async def _give_back(self, conn: Any, call: Call, deadline: float) -> None:
        # EVAL with the source: the pool is closed, so this connection is all there is, and
        # a NOSCRIPT cannot be answered by a load on another one.
        script, keys, args = self._core.untake_call(call)
        await AsyncWire.send(conn, pack(("EVAL", self._variant(script).source, len(keys),
                                         *keys, *args)), self._left(deadline))
        await AsyncWire.read(conn, self._left(deadline))

    async def _untake(self, deadline: float) -> None:
        """Give back what dequeues with lost replies took; keep those Redis did not confirm."""
        with self._lock:
            suspects = list(self._suspects)
        for call in suspects:
            if not self._core.untake_expired(call):
                try:
                    await self._eval(self._core.untake_call(call), deadline)
                except (rexc.RedisError, OSError):
                    return  # Redis still does not answer: try again later
            with self._lock, contextlib.suppress(ValueError):
                self._suspects.remove(call)

    async def _take(self, max_jobs: int, timeout: float | None) -> list[Job]:
        deadline = None if timeout is None else time.monotonic() + timeout
        core = self._core
        jobs, next_due = await self._take_once(max_jobs)
        while True:
            if jobs:
                self._start_heartbeat()
                return jobs
            if timeout == 0:
                return []
            wait = core.wait_seconds(next_due, deadline)
            if wait is None:
                return []
            got = await self._wait_take(max_jobs, wait)
            self._check_open()
            # None: the script cache was flushed; _take_once loads the script.
            jobs, next_due = got if got is not None else await self._take_once(max_jobs)

    async def _dequeue(self, timeout: float | None) -> Job | None:
        jobs = await self._take(1, timeout)
        return jobs[0] if jobs else None

    async def _dequeue_many(self, max_jobs: int, timeout: float | None) -> list[Job]:
        return await self._take(max_jobs, timeout)

    async def _per_level(self, call: Call, deadline: float) -> list[tuple[int, Any]]:
        """A multi-level script once per level on a cluster (highest first): the replies.

        The levels are read afresh (one more round trip): size, stats, peek and purge must
        not miss a level another producer added a moment ago.
        """
        out = []
        for level, qname, pfx in await self._cluster_levels(deadline, fresh=True):
            with translating():
                out.append((level, await self._eval(_cluster.level_call(call, qname, pfx),
                                                    deadline)))
        return out

    async def _peek(self) -> Job | None:
        if self._slots is not None:
            for level, reply in await self._per_level(self._core.peek_call(), self._deadline()):
                if reply:
                    reply[0] = level
                    return self._core.peek_result(reply)
            return None
        with translating():
            reply = await self._eval(self._core.peek_call(), self._deadline())
        return self._core.peek_result(reply)

    async def _settle(self, job: Job, call: Call) -> None:
        r = self._core.receipt(job)
        try:
            with translating():
                await self._eval(call, self._deadline())
        finally:
            self._core.release(r, job.id)
        if self._slots is not None and r.level and call[0] is _scripts.NACK:
            # The script woke a list in the level's slot, which nobody reads: wake the base.
            await self._commands(self._core.wake_calls(1))

    async def _ack(self, job: Job) -> None:
        await self._settle(job, self._core.ack_call(job))

    async def _ack_many(self, jobs: list[Job]) -> None:
        # One ack_many script per priority level, all in one round trip.
        core = self._core
        receipts = [core.receipt(job) for job in jobs]
        try:
            with translating():
                replies = await self._eval_many(core.ack_many_calls(jobs), self._deadline())
        finally:
            for r, job in zip(receipts, jobs, strict=True):
                core.release(r, job.id)
        lost = [raw.decode() for reply in replies for raw in reply]
        if lost:
            raise not_leased_many(lost, len(jobs))

    async def _ack_then_dequeue(
        self, acks: list[Job], max_jobs: int,
        settled: Callable[[list[str], BaseException | None], None],
    ) -> list[Job]:
        """``ack_many(acks)`` then ``dequeue_many(max_jobs, timeout=0)``, in ONE round trip.

        The worker's hook (not public API; wrappers do not have it): a worker slot that is
        about to fetch sends the acks waiting for their batch in the same pipeline, so they
        cost no round trip of their own. The ack scripts run before the dequeue script.

        ``settled(lost_ids, error)`` reports the acks, exactly once, before this returns or
        raises: ``lost_ids`` were not acked (their lease was lost, as ``JobNotLeased``
        says); ``error`` (a translated backend error, or the round trip's own failure) means
        the acks may not have run at all: those jobs come back after their lease.

        Returns:
            The jobs taken (jobs past their deadline are shed, as ``dequeue_many`` does).

        Raises:
            InvalidArgument, WrongQueue: ``acks`` refused before anything was sent
                (``settled`` is not called).
            UnifiedQError: The dequeue failed (after ``settled``); what it may have taken is
                given back as a failed ``dequeue_many``'s is.
        """
        js = self._prepare_settle_many(acks)
        n, _ = self._prepare_many_dequeue(max_jobs, 0.0)
        if self._slots is not None:  # a cluster: the calls go to several slots' masters
            lost: list[str] = []
            err: BaseException | None = None
            try:
                await self._ack_many(js)
            except JobNotLeased as exc:
                lost = list(exc.job_ids)
            except Exception as exc:
                err = exc
            settled(lost, err)
            return await self.dequeue_many(n, timeout=0.0)
        core = self._core
        deadline = self._deadline()
        receipts = [core.receipt(job) for job in js]
        reported = False
        try:
            if self._suspects:
                await self._untake(deadline)
            ack_calls = core.ack_many_calls(js)
            call, token = core.dequeue_call(n)
            try:
                with translating():
                    replies = await self._ack_take_pipeline(ack_calls, call, deadline)
            except (BackendConnectionError, AsyncRuntime.Cancelled):  # the script may have run
                with self._lock:
                    self._suspects.append(call)
                await AsyncRuntime.shield(self._untake, deadline)
                raise
            lost = []
            err = None
            for r in replies[:-1]:
                if isinstance(r, Exception):
                    try:
                        with translating():
                            raise r
                    except Exception as exc:
                        err = err or exc
                else:
                    lost += [raw.decode() for raw in r]
            reported = True
            settled(lost, err)
        except BaseException as exc:
            if not reported:
                settled([], exc)
            raise
        finally:
            for rc, job in zip(receipts, js, strict=True):
                core.release(rc, job.id)
        reply = replies[-1]
        if isinstance(reply, Exception):  # the script failed: it took nothing
            with translating():
                raise reply
        jobs, _ = core.dequeue_result(reply, token)
        if not jobs:
            return jobs
        self._start_heartbeat()
        if self.on_expired != "keep" and any(j.deadline is not None for j in jobs):
            now = time.time()
            late = [j for j in jobs if j.deadline is not None and j.deadline <= now]
            if late:
                await self._shed(late)
                jobs = [j for j in jobs if j.deadline is None or j.deadline > now]
        return jobs

    async def _ack_take_pipeline(self, ack_calls: list[Call], call: Call,
                                 deadline: float) -> list[Any]:
        """Send the ack scripts and the dequeue ``call`` at once; their replies (errors as values).

        A broken connection is retried once (``_send``) with the dequeue's resend, which
        returns what a first run took. A NOSCRIPT reply (first use, or a flushed cache) means
        that call did not run: it is run again on its own, loading its script.
        """
        def packed(c: Call) -> bytes:
            script, keys, args = c
            return pack(("EVALSHA", self._variant(script).sha, len(keys), *keys, *args))

        resend = self._core.dequeue_resend(call)
        head = b"".join(packed(c) for c in ack_calls)
        replies, _ = await self._send(head + packed(call), len(ack_calls) + 1, deadline,
                                      head + packed(resend))
        for i, r in enumerate(replies):
            if isinstance(r, rexc.NoScriptError):
                last = i == len(ack_calls)
                try:
                    replies[i] = await self._eval(call if last else ack_calls[i], deadline,
                                                  resend if last else None)
                except rexc.ResponseError as exc:
                    replies[i] = exc
        return replies

    async def _nack(self, job: Job, requeue: bool, delay: float) -> None:
        await self._settle(job, self._core.nack_call(job, requeue, delay))

    async def _settle_expired(self, job: Job) -> None:
        # Archived with asynq's last error "unifiedq: expired" (a dead letter with a reason).
        await self._settle(job, self._core.nack_call(job, False, 0.0, expired=True))

    async def _release(self, job: Job) -> None:
        # asynq's Requeue (its shutdown path): active -> head of pending, lease removed,
        # message and `retried` untouched, no failure counted.
        await self._settle(job, self._core.nack_call(job, True, 0.0, shutdown=True))

    async def _extend_lease(self, job: Job, seconds: float) -> None:
        r = self._core.receipt(job)
        with translating():
            lost = await self._eval(self._core.extend_call(job, seconds), self._deadline())
        if lost:
            self._core.release(r, job.id)
            raise JobNotLeased(f"job {job.id!r} is no longer leased by this delivery")

    async def _complete(self, job: Job, result: bytes, retention: float | None) -> None:
        # One script: ack, asynq's result field, the completed set and the waiters' token.
        r = self._core.receipt(job)
        await self._finish(job, _results.complete_call(self._core, job.id, r, result, retention))

    async def _fail(self, job: Job, error: str, retention: float | None) -> None:
        r = self._core.receipt(job)
        await self._finish(job, _results.fail_call(self._core, job.id, r, error, retention))

    async def _finish(self, job: Job, call: Call) -> None:
        """Settle with complete/fail; on a cluster, a level's waiters' token is pushed apart."""
        r = self._core.receipt(job)
        if self._slots is None or not r.level:
            await self._settle(job, call)
            return
        script, keys, args = call
        done = keys[1]  # in the base slot: the script gets a list in the level's own slot
        await self._settle(job, (script, [keys[0], r.prefix + "uq:done:" + job.id], args))
        ttl = args[9] if script is _results.COMPLETE else args[8]  # the token's lifetime
        await self._commands([("RPUSH", done, "1"), ("EXPIRE", done, str(ttl))])

    async def _result(self, job_id: str, timeout: float | None) -> bytes | None:
        core = self._core
        end = None if timeout is None else time.monotonic() + timeout
        with translating():
            while True:
                wait = core.options.poll_interval  # then read again: Go asynq pushes no token
                if end is not None:
                    wait = min(wait, end - time.monotonic())
                call = _results.read_call(core, job_id)
                if self._slots is not None:  # the read runs per level: no pipelining
                    if wait > 0:
                        await self._send(pack(_results.wait_command(core, job_id, wait)), 1,
                                         time.monotonic() + wait + self._st)
                    for _, reply in await self._per_level(call, self._deadline()):
                        if reply:
                            return _results.outcome(core, reply)
                    if wait <= 0:
                        return None
                    continue
                if wait <= 0:  # timeout=0, or the time is up: one last look
                    return _results.outcome(core, await self._eval(call, self._deadline()))
                # The job's token list, then the read, in ONE round trip: a job already done
                # has its token there (the BRPOPLPUSH returns at once), else the read runs as
                # soon as complete()/fail() pushes it.
                script, keys, args = call
                data = (pack(_results.wait_command(core, job_id, wait))
                        + pack(("EVALSHA", script.sha, len(keys), *keys, *args)))
                replies, _ = await self._send(data, 2, time.monotonic() + wait + self._st)
                reply = replies[1]
                if isinstance(reply, rexc.NoScriptError):  # first use, or a flushed cache
                    reply = await self._eval(call, self._deadline())
                elif isinstance(reply, Exception):
                    raise reply
                got = _results.outcome(core, reply)
                if got is not None:
                    return got

    async def _commands(self, cmds: list[tuple[str, ...]]) -> list[Any]:
        """Plain commands in one round trip; their replies (the first error reply raised).

        On a cluster each command goes to its first key's slot, one round trip each.
        """
        if self._slots is not None:
            out: list[Any] = []
            slots = self._slots
            with translating():
                i = 0
                while i < len(cmds):  # consecutive commands of one slot share a round trip
                    j = i + 1
                    while j < len(cmds) and slots.slot(cmds[j][1]) == slots.slot(cmds[i][1]):
                        j += 1
                    got, _ = await self._send(b"".join(pack(c) for c in cmds[i:j]), j - i,
                                              self._deadline(), key=cmds[i][1])
                    out += got
                    i = j
                for r in out:
                    if isinstance(r, Exception):
                        raise r
            return out
        with translating():
            replies, _ = await self._send(b"".join(pack(c) for c in cmds), len(cmds),
                                          self._deadline())
            for r in replies:
                if isinstance(r, Exception):
                    raise r
        return list(replies)

    async def _pause(self) -> None:
        await self._commands(self._core.pause_calls())

    async def _resume(self) -> None:
        cmds = self._core.resume_calls()
        if self._slots is not None:  # one DEL per level: every level is a slot of its own
            cmds = [("DEL", k) for k in cmds[0][1:]] + cmds[1:]
            replies = await self._commands(cmds)
            replies = [sum(int(r) for r in replies[:10]), *replies[10:]]
        else:
            replies = await self._commands(cmds)
        # Consumers waiting on the wake list would otherwise sleep until their timeout.
        wake = self._core.wake_calls(sum(int(r) for r in replies[1:]))
        if wake:
            await self._commands(wake)

    async def _is_paused(self) -> bool:
        return bool((await self._commands([("EXISTS", self._core.paused_key)]))[0])

    async def _size(self) -> int:
        if self._slots is not None:
            return sum(int(r) for _, r in await self._per_level(self._core.size_call(),
                                                                 self._deadline()))
        with translating():
            return int(await self._eval(self._core.size_call(), self._deadline()))

    async def stats(self) -> Mapping[str, object]:
        """Per-state counts of this queue over all its priority levels, as asynq counts them.

        Read-only, one script call. Keys: ``depth`` (= ``size()``), ``oldest_age`` (asynq's
        latency, seconds), ``pending``, ``active``, ``scheduled``, ``retry``, ``dead`` (asynq's
        archived set), plus ``completed`` (kept by ``retention``) and ``paused``.

        Raises:
            QueueClosed: The handle is closed.
            BackendTimeout: Redis did not answer within ``socket_timeout`` seconds.
            BackendConnectionError: Redis cannot be reached.
        """
        self._check_open()
        if self._slots is not None:  # per level, summed as the script sums them
            replies = await self._per_level(self._core.stats_call(), self._deadline())
            reply = [sum(int(r[i]) for _, r in replies) for i in range(7)]
            since = [int(r[7]) for _, r in replies if r[7]]
            return self._core.stats_result([*reply, min(since) if since else False])
        with translating():
            reply = await self._eval(self._core.stats_call(), self._deadline())
        return self._core.stats_result(reply)

    async def open_consumer_registry(self, info: ConsumerInfo) -> AsyncServerRegistration:
        """Show a worker of this queue in asynq's server list (``Inspector.Servers``, asynqmon).

        The worker calls this once at start, then ``heartbeat`` every ``interval`` (5) seconds
        and ``close`` when it stops (see ``unifiedq._consumers``).

        Raises:
            BackendError: The first heartbeat could not be written.
        """
        reg = AsyncServerRegistration(self, info)
        await reg.heartbeat(())
        return reg

    async def _purge(self) -> int:
        if self._slots is not None:
            return sum(int(r) for _, r in await self._per_level(self._core.purge_call(),
                                                                 self._deadline()))
        with translating():
            return int(await self._eval(self._core.purge_call(), self._deadline()))

    async def _close(self) -> None:
        # One deadline for the whole close: a frozen server cannot hold it longer than a verb.
        deadline = self._deadline()
        self._hb_stop.set()  # a heartbeat thread ends at its next wait
        if self._hb is not None:
            self._hb.cancel()  # a heartbeat task ends now (a no-op for a thread)
            await self._hb.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(Exception), translating():
            for call in self._core.held_jobs_calls():  # give held jobs back, no retry counted
                with contextlib.suppress(rexc.ResponseError):
                    await self._eval(call, deadline)
            if self._suspects:  # and what dequeues with lost replies took
                await self._untake(deadline)
        with self._pool_lock:
            self._pool_closed = True
            idle, self._idle = self._idle, []
            for pool in self._pools.values():
                idle += pool
            self._pools = {}
        for conn in idle:
            with contextlib.suppress(Exception):
                await disconnect_async(conn)
