# unasync: the blocking twin, _sync/bounded.py, is generated from this file.
"""The bounded queue of one face; the shared half (checks, counts, reports) is in ``bounded``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .._capabilities import Capability
from .._concurrency import AsyncRuntime
from .._connect import connect_async
from .._errors import InvalidArgument, InvalidURL, QueueFull
from .._protocol import AsyncQueue, Deadline, Delay
from ..bounded import AsyncSend, Overflow, ShedEvent, _BoundedState, declares_bound
from ..metrics import Metrics
from .wrapper import AsyncQueueWrapper

__all__ = ["AsyncBoundedQueue"]


class AsyncBoundedQueue(AsyncQueueWrapper, _BoundedState):
    """A queue capped at ``maxsize`` jobs, with an overflow policy (see ``unifiedq.bounded``).

    Args:
        source: A queue URL (opened here; with BOUNDED drivers the bound is native) or an
            open queue of this face (client-side bound). On ``redis://`` (URL or handle)
            the bound is atomic across processes (one Lua script checks and pushes); on
            ``redis+cluster://`` too, for queues without priorities (``enqueue(priority=)``
            then raises ``UnsupportedOperation`` and PRIORITY is not in ``capabilities``).
        maxsize: The cap (>= 1).
        overflow: ``reject`` | ``block`` | ``drop_oldest`` | ``spill``.
        timeout: Longest wait of ``block`` (None = forever).
        spill: URL or open queue receiving overflow under ``spill``.
        on_shed: Called with a :class:`~unifiedq.bounded.ShedEvent` for every shed.
        metrics: Where shed counts are reported.
        connect_options: Options for opening ``source``.

    Only ``enqueue``/``enqueue_many`` are bounded; every other verb is forwarded as is
    (:class:`~unifiedq._async.wrapper.AsyncQueueWrapper`), so a job returned by ``nack`` or
    ``release`` may briefly exceed a client-side bound.
    """

    def __init__(
        self,
        source: str | AsyncQueue,
        maxsize: int,
        *,
        overflow: Overflow = "reject",
        timeout: float | None = None,
        spill: str | AsyncQueue | None = None,
        on_shed: Callable[[ShedEvent], None] | None = None,
        metrics: Metrics | None = None,
        connect_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(maxsize, overflow, timeout, spill is not None, on_shed, metrics)
        opts = dict(connect_options or {})
        self._owns = isinstance(source, str)
        if isinstance(source, str):
            self.inner = self._open(source, opts)
        elif isinstance(source, AsyncQueue):
            self.inner = source
        else:
            raise InvalidArgument(f"source must be a URL or a queue, not {source!r}")
        self._spill: AsyncQueue | None = None
        self._owns_spill = isinstance(spill, str)
        if isinstance(spill, str):
            self._spill = connect_async(spill)
        elif spill is not None:
            self._spill = spill
        # Held from the size check to the enqueue, so this object's producers cannot overshoot.
        self._lock = AsyncRuntime.Lock()
        # redis:// (from a URL or an open handle): the bound is checked and the job pushed
        # in one Lua script, so producers in other processes cannot overshoot either.
        self._atomic: Any = None
        self._no_priority = False
        if getattr(self.inner, "driver", None) == "redis":
            from ..drivers.redis._bound import AsyncRedisBound, is_redis
            if is_redis(self.inner):
                self._atomic = AsyncRedisBound(self.inner, self.maxsize)
                self.native = True
                # On a cluster the one-slot bound script counts the base asynq queue only.
                self._no_priority = getattr(getattr(self.inner, "_core", None), "cluster",
                                            None) is not None

    def _open(self, url: str, opts: dict[str, Any]) -> AsyncQueue:
        if "maxsize" not in opts and declares_bound(url):
            # Let the backend enforce the bound atomically where it can take one.
            try:
                native = connect_async(url, **{**opts, "maxsize": self.maxsize})
            except InvalidURL:
                pass  # the driver is BOUNDED but takes no maxsize option: client-side
            else:
                self.native = True
                return native
        return connect_async(url, **opts)

    # -- Queue protocol ---------------------------------------------------------------------
    @property
    def capabilities(self) -> Capability:
        """The wrapped queue's capabilities plus BOUNDED (minus PRIORITY on a cluster)."""
        caps = self.inner.capabilities | Capability.BOUNDED
        return caps & ~Capability.PRIORITY if self._no_priority else caps

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.inner!r} maxsize={self.maxsize} "
                f"overflow={self.overflow} {'native' if self.native else 'client-side'}>")

    async def _fits(self, n: int) -> bool:
        return await self.inner.size() + n <= self.maxsize

    async def _put(self, n: int, do: AsyncSend) -> list[str]:
        """Enqueue ``n`` jobs via ``do`` under the bound, applying the overflow policy."""
        if n > self.maxsize:
            raise self._rejected(n, f"{n} jobs can never fit in a queue bounded at {self.maxsize}")
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        backoff = 0.001
        while True:
            async with self._lock:
                if self.native or await self._fits(n):
                    try:
                        ids = await do(self.inner)
                    except QueueFull:
                        pass  # native bound said no: apply the policy below
                    else:
                        with self._stats_lock:
                            self.accepted += n
                        return ids
                pol = self.overflow
                if pol == "reject":
                    raise self._rejected(n, f"queue {self.name!r} is full ({self.maxsize} jobs)")
                if pol == "spill":
                    assert self._spill is not None
                    ids = await do(self._spill)
                    self._report(ShedEvent("spill", self.name, n, spilled_ids=tuple(ids)))
                    return ids
                if pol == "drop_oldest":
                    if await self._drop_one():
                        continue
                    # Nothing waiting to drop (all leased): the new job cannot get in.
                    raise self._rejected(n, f"queue {self.name!r} is full of leased jobs; "
                                            "nothing to drop")
            # block: wait for room outside the lock
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self._report(ShedEvent("block", self.name, n))
                raise QueueFull(f"queue {self.name!r} stayed full for {self.timeout}s")
            await AsyncRuntime.sleep(backoff if deadline is None else min(backoff, deadline - now))
            backoff = min(backoff * 2, 0.05)

    async def _drop_one(self) -> bool:
        job = await self.inner.dequeue(timeout=0.0)
        if job is None:
            return False
        if Capability.ACK in self.inner.capabilities:
            await self.inner.ack(job)  # discarded on purpose, and reported below
        self._report(ShedEvent("drop_oldest", self.name, 1, job=job))
        return True

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
        """Enqueue under the bound; on overflow apply the policy.

        Raises:
            QueueFull: ``reject``, ``block`` after its timeout, or nothing left to drop.
        """
        async def do(q: AsyncQueue) -> list[str]:
            if q is self.inner and self._atomic is not None:
                return await self._atomic_put([q._prepare(  # type: ignore[attr-defined]
                    body, delay, priority, job_id, headers, deadline, ttl, timeout)])
            return [await q.enqueue(body, delay=delay, priority=priority, job_id=job_id,
                                    headers=headers, deadline=deadline, ttl=ttl,
                                    timeout=timeout)]
        ids = await self._put(1, do)
        return ids[0]

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
        """Enqueue several jobs all-or-nothing under the bound."""
        items = list(bodies)
        if not items:
            return []

        async def do(q: AsyncQueue) -> list[str]:
            if q is self.inner and self._atomic is not None:
                return await self._atomic_put(q._prepare_many(  # type: ignore[attr-defined]
                    items, delay, priority, headers, deadline, ttl, timeout))
            return await q.enqueue_many(items, delay=delay, priority=priority, headers=headers,
                                        deadline=deadline, ttl=ttl, timeout=timeout)
        return await self._put(len(items), do)

    async def _atomic_put(self, reqs: list[Any]) -> list[str]:
        """The redis bound: check and push in one script; QueueFull when it does not fit."""
        assert self._atomic is not None
        ids: list[str] | None = await self._atomic.enqueue(reqs)
        if ids is None:
            raise QueueFull(f"queue {self.name!r} is full ({self.maxsize} jobs)")
        return ids

    async def aclose(self) -> None:
        """Close the queues this object opened."""
        if self._owns:
            await self.inner.aclose()
        if self._spill is not None and self._owns_spill:
            await self._spill.aclose()
