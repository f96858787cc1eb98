# unasync: the blocking twin, _sync/scheduler.py, is generated from this file.
"""The scheduler of one face: enqueue each entry's ticks exactly once (see ``unifiedq.scheduler``).

Written once for both faces: ``AsyncScheduler`` awaits its queues and its lease store; the
generated ``Scheduler`` calls them. Tick computation and policies live in ``_scheduler_core``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import secrets
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Self, cast

from .._capabilities import Capability
from .._concurrency import AsyncRuntime
from .._connect import connect_async
from .._errors import ConfigurationError, DuplicateJob, InvalidArgument
from .._protocol import AsyncQueue
from .._scheduler_core import (
    SCHEDULE_HEADER,
    TICK_HEADER,
    Entry,
    MemoryLeaseState,
    Tick,
    check_target,
    plan_ticks,
)
from .._url import URL, parse_url

__all__ = ["AsyncScheduler"]

log = logging.getLogger("unifiedq.scheduler")

#: The value of a tick's lease key once its job is enqueued.
DONE = "done"

# Claim a key unless set, else return its value: one atomic round trip.
_CLAIM = ("if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end "
          "return redis.call('GET', KEYS[1])")
_RELEASE = ("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end "
            "return 0")
_SET_MAX = ("local v = tonumber(redis.call('GET', KEYS[1])) "
            "if v == nil or v < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end "
            "return 0")


class AsyncMemoryLease:
    """``memory://NAME``: claims shared by the schedulers of this process only."""

    def __init__(self, url: URL) -> None:
        self._s = MemoryLeaseState.named(url.authority or url.path or "default")
        self.where = url.redacted()

    async def claim(self, key: str, value: str, ttl: float) -> str | None:
        """Take ``key`` for ``ttl`` seconds; None if taken, else the holder's value."""
        return self._s.set(key, value, ttl, nx=True)

    async def mark_done(self, key: str, keep: float) -> None:
        """Record that ``key``'s job is enqueued, for ``keep`` seconds."""
        self._s.set(key, DONE, keep)

    async def release(self, key: str, value: str) -> None:
        """Drop our claim on ``key`` (the enqueue failed)."""
        self._s.delete_if(key, value)

    async def state(self, key: str) -> str | None:
        """The value of ``key``: a claim, ``DONE``, or None (never claimed, or expired)."""
        return self._s.get(key)

    async def last(self, entry: str) -> float | None:
        """The latest tick (seconds) any scheduler dealt with for ``entry``."""
        v = self._s.get(f"last:{entry}")
        return float(v) if v is not None else None

    async def set_last(self, entry: str, epoch: float) -> None:
        """Raise the latest dealt-with tick of ``entry`` to ``epoch`` (never lowers it)."""
        self._s.set_max(f"last:{entry}", epoch, float("inf"))

    async def aclose(self) -> None:
        """Nothing to release."""


class AsyncRedisLease:
    """``redis://host:port/db?prefix=unifiedq:sched:``: claims shared across machines."""

    def __init__(self, url: URL) -> None:
        from ..drivers.redis._clients import aredis  # the `redis` extra

        self.where = url.redacted()
        self._prefix = url.query.get("prefix", "unifiedq:sched:")
        bare = urllib.parse.urlsplit(url.raw)._replace(query="", fragment="").geturl()
        self._r = aredis.Redis.from_url(bare, socket_timeout=5.0, socket_connect_timeout=5.0)

    async def claim(self, key: str, value: str, ttl: float) -> str | None:
        """Take ``key`` for ``ttl`` seconds; None if taken, else the holder's value."""
        got = await self._r.eval(_CLAIM, 1, self._prefix + key, value, max(1, round(ttl * 1000)))
        return None if got is None else (got.decode() if isinstance(got, bytes) else str(got))

    async def mark_done(self, key: str, keep: float) -> None:
        """Record that ``key``'s job is enqueued, for ``keep`` seconds."""
        await self._r.set(self._prefix + key, DONE, px=max(1, round(keep * 1000)))

    async def release(self, key: str, value: str) -> None:
        """Drop our claim on ``key`` (the enqueue failed)."""
        await self._r.eval(_RELEASE, 1, self._prefix + key, value)

    async def state(self, key: str) -> str | None:
        """The value of ``key``: a claim, ``DONE``, or None (never claimed, or expired)."""
        v = await self._r.get(self._prefix + key)
        return v.decode() if isinstance(v, bytes) else v

    async def last(self, entry: str) -> float | None:
        """The latest tick (seconds) any scheduler dealt with for ``entry``."""
        v = await self._r.get(f"{self._prefix}last:{entry}")
        return float(v) if v is not None else None

    async def set_last(self, entry: str, epoch: float) -> None:
        """Raise the latest dealt-with tick of ``entry`` to ``epoch`` (never lowers it)."""
        await self._r.eval(_SET_MAX, 1, f"{self._prefix}last:{entry}", repr(epoch))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._r.aclose()


class _Recheck:
    """A tick to look at again: another scheduler's claim (``watch``) or our failure."""

    __slots__ = ("at", "attempt", "entry", "kind", "tick")

    def __init__(self, at: float, entry: Entry, tick: Tick, kind: str, attempt: int) -> None:
        self.at, self.entry, self.tick, self.kind, self.attempt = at, entry, tick, kind, attempt


class AsyncScheduler:
    """Enqueues each entry's ticks, exactly once across several scheduler processes.

    Every process computes the same ticks and the same tick id
    (``sched:<entry>:<epoch seconds>``). On a target with CUSTOM_ID the job id *is* the tick
    id, so the queue refuses a second copy (DuplicateJob: counted as ``duplicate``). With a
    lease store (``lease=``) each tick is claimed first (SET NX with ``lease_ttl``), enqueued,
    then marked done; a scheduler that sees another's claim checks back after ``lease_ttl``
    and, if the claim expired without being marked done (its holder died between the claim
    and the enqueue), claims and enqueues it itself (counted as ``recovered``).

    Args:
        entries: The entries (more with :meth:`add` before starting).
        lease: Lease store URL: ``redis://host:port/db`` (optional ``?prefix=``, default
            ``unifiedq:sched:``) or ``memory://NAME`` (this process only). Required for
            targets without CUSTOM_ID unless ``single=True``; with CUSTOM_ID targets it adds
            restart memory (the latest tick dealt with) and claims.
        single: You run exactly one scheduler: targets without CUSTOM_ID need no lease.
        lease_ttl: Seconds a claim holds before survivors may redo the tick; keep it above
            the longest enqueue (a slower enqueue lets a survivor enqueue a second copy).
        keep: Seconds a "done" record is kept (must cover how late any scheduler can be).
        retries: Attempts after a failed claim or enqueue (backoff 1, 2, 4, ... s, capped
            at 30 s) before the tick is logged as ``lost``.
        clock: Wall clock in seconds since the epoch (tests inject a fake one).
        owner: This scheduler's name in claims (default ``host:pid:random``).

    Raises:
        ConfigurationError: A target lacks CUSTOM_ID and there is no lease (nor
            ``single=True``); a lease URL of another scheme; bad ``lease_ttl``/``keep``.
        InvalidArgument: Two entries share a name.
        UnsupportedOperation: An entry uses an enqueue option its driver lacks.
    """

    def __init__(
        self,
        entries: Iterable[Entry] = (),
        *,
        lease: str | None = None,
        single: bool = False,
        lease_ttl: float = 30.0,
        keep: float = 3600.0,
        retries: int = 5,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
    ) -> None:
        self._lease_url: URL | None = None
        if lease is not None:
            self._lease_url = parse_url(lease)
            if self._lease_url.scheme not in ("redis", "rediss", "memory"):
                raise ConfigurationError(f"lease= takes a redis:// or memory:// URL, not "
                                         f"{self._lease_url.redacted()!r}")
        if not lease_ttl > 0 or not keep >= lease_ttl:
            raise ConfigurationError(f"need lease_ttl > 0 and keep >= lease_ttl (seconds), "
                                     f"not lease_ttl={lease_ttl!r}, keep={keep!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(f"retries must be an int >= 0, not {retries!r}")
        self.single = single
        self.lease_ttl = float(lease_ttl)
        self.keep = float(keep)
        self.retries = retries
        self._clock = clock
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._claim_value = f"claimed:{self.owner}"
        self._opened = False
        self._entries: dict[str, Entry] = {}
        self._caps: dict[str, Capability] = {}
        for e in entries:
            self.add(e)
        self._store: AsyncMemoryLease | AsyncRedisLease | None = None
        self._queues: dict[str, AsyncQueue] = {}  # opened target URLs
        self._last_ms: dict[str, int] = {}
        self._pending: list[tuple[float, int, _Recheck]] = []
        self._seq = itertools.count()
        self._stop = AsyncRuntime.Event()
        self._counts = dict.fromkeys(("enqueued", "recovered", "duplicate", "claimed_elsewhere",
                                      "skipped", "failed", "lost"), 0)

    @property
    def entries(self) -> list[Entry]:
        """The entries, in the order they were added."""
        return list(self._entries.values())

    def add(self, entry: Entry) -> Entry:
        """Add an entry (before the scheduler starts); return it.

        Raises:
            InvalidArgument: An entry of that name exists, or the scheduler already started.
            ConfigurationError: The target lacks CUSTOM_ID and there is no lease.
        """
        if not isinstance(entry, Entry):
            raise InvalidArgument(f"expected an Entry, not {type(entry).__name__}")
        if self._opened:
            raise InvalidArgument("add entries before the scheduler starts")
        if entry.name in self._entries:
            raise InvalidArgument(f"two entries are named {entry.name!r}")
        self._caps[entry.name] = check_target(entry, lease=self._lease_url is not None,
                                              single=self.single)
        self._entries[entry.name] = entry
        return entry

    def stats(self) -> dict[str, int]:
        """Counts of tick outcomes in this process.

        Keys: ``enqueued`` (by us), ``recovered`` (another's dead claim, enqueued by us),
        ``duplicate`` (already enqueued elsewhere), ``claimed_elsewhere`` (another
        scheduler held the claim), ``skipped`` (missed-tick policy), ``failed`` (an attempt
        failed; retried), ``lost`` (gave up after ``retries``).
        """
        return dict(self._counts)

    # -- lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        """Open the lease store and the target queues; idempotent (``run`` calls it)."""
        if self._opened:
            return
        self._opened = True
        if self._lease_url is not None:
            self._store = (AsyncMemoryLease(self._lease_url)
                           if self._lease_url.scheme == "memory"
                           else AsyncRedisLease(self._lease_url))
        now_ms = int(self._clock() * 1000)
        for e in self._entries.values():
            if isinstance(e.target, str):
                if e.target not in self._queues:
                    self._queues[e.target] = connect_async(e.target)
                # The handle knows best (quic declares its flags in the URL).
                self._caps[e.name] = self._queues[e.target].capabilities
            stored = await self._store.last(e.name) if self._store is not None else None
            # Restart memory: ticks since the last one any scheduler dealt with are missed
            # ticks (the policy decides); without it the first start begins now.
            self._last_ms[e.name] = int(stored * 1000) if stored is not None else now_ms
        self._log(logging.INFO, "scheduler_start", f"scheduler {self.owner} started with "
                  f"{len(self._entries)} entries", lease=self._store.where if self._store
                  else None)

    async def aclose(self) -> None:
        """Close the queues this scheduler opened and the lease store. Idempotent."""
        queues, self._queues = self._queues, {}
        for q in queues.values():
            await q.aclose()
        if self._store is not None:
            store, self._store = self._store, None
            await store.aclose()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def request_stop(self) -> None:
        """Make :meth:`run` return after the current pass (safe in a signal handler)."""
        self._stop.set()

    async def run(self, *, install_signals: bool = True) -> None:
        """Enqueue due ticks until :meth:`request_stop` or SIGTERM/SIGINT; then close.

        Args:
            install_signals: Stop on SIGTERM/SIGINT (where the face allows it: the main
                thread, or the main thread's event loop).
        """
        restore: Callable[[], None] | None = None
        if install_signals:
            def on_signal(signum: int) -> None:
                self._log(logging.INFO, "signal", f"got signal {signum}: stopping")
                self.request_stop()

            restore = AsyncRuntime.install_signals(on_signal)
        try:
            await self.open()
            while not self._stop.is_set():
                await self.run_pending()
                # Sleep to the next due tick, but wake each second: the wall clock may jump.
                wait = min(1.0, max(0.005, self._next_wake() - self._clock()))
                await self._stop.wait(wait)
        finally:
            if restore is not None:
                restore()
            self._log(logging.INFO, "scheduler_stop", "scheduler stopped", **self._counts)
            await self.aclose()

    # -- one pass ----------------------------------------------------------------------------------
    async def run_pending(self, now: float | None = None) -> list[tuple[Tick, str]]:
        """Enqueue every tick due at ``now`` (default: the clock) and redo due rechecks.

        Returns:
            Each tick handled in this pass and its outcome (see :meth:`stats` for the names;
            ``watching`` = another scheduler's claim, rechecked later).
        """
        await self.open()
        now = self._clock() if now is None else now
        out: list[tuple[Tick, str]] = []
        while self._pending and self._pending[0][0] <= now:
            _, _, rc = heapq.heappop(self._pending)
            out.append((rc.tick, await self._recheck(rc, now)))
        for e in self._entries.values():
            last_ms = self._last_ms[e.name]
            if self._store is not None:
                try:
                    stored = await self._store.last(e.name)
                except Exception as exc:  # the claims will fail too and be retried
                    self._log(logging.WARNING, "lease_error", f"lease store: {exc}",
                              entry=e.name, error=repr(exc))
                    stored = None
                if stored is not None and stored * 1000 > last_ms:
                    last_ms = int(stored * 1000)  # another scheduler went ahead: not missed
            plan = plan_ticks(e, last_ms / 1000, now)
            for t in plan.skipped:
                self._counts["skipped"] += 1
                self._log(logging.WARNING, "tick_skipped", f"missed tick {t.id} skipped "
                          f"(policy {e.missed!r})", entry=e.name, tick=t.id)
            if plan.skipped_more:
                self._log(logging.WARNING, "tick_skipped", f"more than {e.max_catch_up} "
                          f"ticks of {e.name!r} were missed; the older ones are skipped",
                          entry=e.name)
            for t in plan.fire:
                out.append((t, await self._fire(e, t, now, 0)))
            self._last_ms[e.name] = plan.last_ms
            if self._store is not None and plan.last_ms > last_ms:
                try:
                    await self._store.set_last(e.name, plan.last_ms / 1000)
                except Exception as exc:
                    self._log(logging.WARNING, "lease_error", f"lease store: {exc}",
                              entry=e.name, error=repr(exc))
        return out

    def _next_wake(self) -> float:
        """When the next tick (or recheck) is due, in seconds since the epoch."""
        nxt = [e.next_tick(self._last_ms[e.name] / 1000).due for e in self._entries.values()]
        if self._pending:
            nxt.append(self._pending[0][0])
        return min(nxt, default=self._clock() + 1.0)

    def _push(self, rc: _Recheck) -> None:
        heapq.heappush(self._pending, (rc.at, next(self._seq), rc))

    def _queue_of(self, e: Entry) -> AsyncQueue:
        return self._queues[e.target] if isinstance(e.target, str) else cast(AsyncQueue, e.target)

    async def _fire(self, e: Entry, t: Tick, now: float, attempt: int,
                    recovering: bool = False) -> str:
        """Claim (with a lease store), enqueue and mark one tick; return its outcome."""
        store = self._store
        if store is not None:
            try:
                holder = await store.claim(t.id, self._claim_value, self.lease_ttl)
            except Exception as exc:
                return self._failed(e, t, now, attempt, exc)
            if holder == DONE:
                return self._count("duplicate", e, t)
            if holder is not None and holder != self._claim_value:  # ours: a retry of ours
                # Another scheduler holds it: if it dies before marking the tick done, its
                # claim expires and a survivor (maybe us) redoes the tick.
                self._push(_Recheck(now + self.lease_ttl, e, t, "watch", 0))
                return self._count("claimed_elsewhere", e, t)
            self._log(logging.DEBUG, "tick_claimed", f"tick {t.id}: claimed", entry=e.name,
                      tick=t.id)
        q = self._queue_of(e)
        caps = self._caps[e.name]
        headers = ({**e.headers, TICK_HEADER: t.id, SCHEDULE_HEADER: e.name}
                   if Capability.HEADERS in caps else None)
        try:
            await q.enqueue(e.make_body(t), job_id=t.id if Capability.CUSTOM_ID in caps else None,
                            headers=headers, priority=e.priority, delay=e.delay)
            outcome = "recovered" if recovering else "enqueued"
        except DuplicateJob:
            outcome = "duplicate"  # another scheduler enqueued it (CUSTOM_ID path)
        except Exception as exc:
            if store is not None:
                # Let a watching survivor redo it at once if we die before our retry.
                try:
                    await store.release(t.id, self._claim_value)
                except Exception as rexc:
                    self._log(logging.WARNING, "lease_error", f"lease store: {rexc}",
                              entry=e.name, tick=t.id, error=repr(rexc))
            return self._failed(e, t, now, attempt, exc)
        if store is not None:
            try:
                await store.mark_done(t.id, self.keep)
            except Exception as exc:  # the claim expires; a survivor may enqueue it again
                self._log(logging.ERROR, "lease_error", f"tick {t.id} enqueued but not marked "
                          f"done: {exc}", entry=e.name, tick=t.id, error=repr(exc))
        return self._count(outcome, e, t)

    async def _recheck(self, rc: _Recheck, now: float) -> str:
        if rc.kind == "retry" or self._store is None:
            return await self._fire(rc.entry, rc.tick, now, rc.attempt)
        try:
            holder = await self._store.state(rc.tick.id)
        except Exception as exc:
            self._push(_Recheck(now + 1.0, rc.entry, rc.tick, "watch", rc.attempt))
            self._log(logging.WARNING, "lease_error", f"lease store: {exc}",
                      entry=rc.entry.name, tick=rc.tick.id, error=repr(exc))
            return "watching"
        if holder == DONE:
            return "done_elsewhere"
        if holder is None:  # the claim expired unmarked: its holder died before enqueuing
            self._log(logging.WARNING, "tick_recover", f"claim on {rc.tick.id} expired "
                      f"without an enqueue: redoing it", entry=rc.entry.name, tick=rc.tick.id)
            return await self._fire(rc.entry, rc.tick, now, rc.attempt, recovering=True)
        self._push(_Recheck(now + self.lease_ttl, rc.entry, rc.tick, "watch", rc.attempt))
        return "watching"

    def _failed(self, e: Entry, t: Tick, now: float, attempt: int, exc: Exception) -> str:
        self._counts["failed"] += 1
        if attempt < self.retries:
            backoff = min(30.0, 2.0 ** attempt)
            self._push(_Recheck(now + backoff, e, t, "retry", attempt + 1))
            self._log(logging.WARNING, "tick_failed", f"tick {t.id} failed (attempt "
                      f"{attempt + 1}), retry in {backoff:g} s: {exc}", entry=e.name,
                      tick=t.id, error=repr(exc))
        else:
            self._counts["lost"] += 1
            self._log(logging.ERROR, "tick_lost", f"tick {t.id} lost after {attempt + 1} "
                      f"attempts: {exc}", entry=e.name, tick=t.id, error=repr(exc),
                      exc_info=exc)
        return "failed"

    def _count(self, outcome: str, e: Entry, t: Tick) -> str:
        self._counts[outcome] += 1
        level = logging.DEBUG if outcome in ("duplicate", "claimed_elsewhere") else logging.INFO
        self._log(level, "tick_" + outcome, f"tick {t.id}: {outcome}", entry=e.name,
                  tick=t.id, outcome=outcome, queue=self._where(e))
        return outcome

    def _where(self, e: Entry) -> str:
        if isinstance(e.target, str):
            return parse_url(e.target).redacted()  # never log a URL's password
        return f"{getattr(e.target, 'driver', '?')}:{getattr(e.target, 'name', '?')}"

    def _log(self, level: int, event: str, msg: str, *, exc_info: Any = None,
             **fields: Any) -> None:
        if log.isEnabledFor(level):
            log.log(level, msg, exc_info=exc_info,
                    extra={"event": event, "owner": self.owner, **fields})
