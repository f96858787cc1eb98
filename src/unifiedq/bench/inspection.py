"""``unifiedq inspect URL``: how deep a queue is, how old its head is, and per-state counts.

The optional driver hook
------------------------

A driver MAY define a ``stats()`` method (a coroutine on an asyncio driver) returning a
mapping with any of the standard keys below, plus any driver-specific keys it likes
(they are shown as-is)::

    def stats(self) -> Mapping[str, object]:
        return {"depth": 12, "oldest_age": 3.5, "pending": 10, "scheduled": 2,
                "active": 1, "retry": 0, "dead": 0, "server": "Redis 7.0.15"}

=============  ==================================================================
key            meaning
=============  ==================================================================
``depth``      jobs waiting (ready or delayed), not counting leased ones = ``size()``
``oldest_age`` seconds since the oldest waiting job was enqueued
``pending``    ready to be dequeued now
``active``     leased by a consumer, not yet acked
``scheduled``  delayed, not yet visible
``retry``      failed and waiting for a retry
``dead``       dead-lettered (retries exhausted or nacked with ``requeue=False``)
=============  ==================================================================

A key left out or set to None means "not known". Without the hook, ``inspect`` falls back to
``size()`` for the depth and, when the driver can peek, to the age of the job at the head of
the queue; the other counts are reported as unknown. Inspection only reads: it never takes,
acks or purges a job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from .._base import AsyncQueueBase, QueueBase
from .._capabilities import Capability
from .._connect import connect, connect_async
from .._registry import get_driver
from .._url import parse_url

__all__ = ["STATS_KEYS", "SupportsAsyncStats", "SupportsStats", "inspect_queue"]

#: The standard keys of a driver's ``stats()`` mapping, in display order.
STATS_KEYS: tuple[str, ...] = (
    "depth", "oldest_age", "pending", "active", "scheduled", "retry", "dead",
)


@runtime_checkable
class SupportsStats(Protocol):
    """A blocking driver that can describe its queue (the optional ``stats()`` hook)."""

    def stats(self) -> Mapping[str, object]:
        """Return standard keys (see :data:`STATS_KEYS`) and any driver-specific ones."""
        ...


@runtime_checkable
class SupportsAsyncStats(Protocol):
    """An asyncio driver that can describe its queue (the optional ``stats()`` hook)."""

    async def stats(self) -> Mapping[str, object]:
        """Return standard keys (see :data:`STATS_KEYS`) and any driver-specific ones."""
        ...


def _finish(
    url: str, q: QueueBase | AsyncQueueBase, raw: Mapping[str, object] | None,
    size: int | None, head_enqueued_at: float | None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    source: dict[str, str] = {}
    if raw is not None:
        for k, v in raw.items():
            fields[k] = v
            if v is not None:
                source[k] = "stats()"
    if fields.get("depth") is None and size is not None:
        fields["depth"], source["depth"] = size, "size()"
    if fields.get("oldest_age") is None and head_enqueued_at:
        fields["oldest_age"] = max(0.0, time.time() - head_enqueued_at)
        source["oldest_age"] = "peek() (age of the head job)"
    unknown = [k for k in STATS_KEYS if fields.get(k) is None]
    return {
        "url": parse_url(url).redacted(),
        "driver": q.driver,
        "queue": q.name,
        "capabilities": q.capabilities.names(),
        "stats_hook": raw is not None,
        "fields": {k: fields.get(k) for k in STATS_KEYS} | {
            k: v for k, v in fields.items() if k not in STATS_KEYS},
        "source": source,
        "unknown": unknown,
    }


def _inspect_sync(url: str) -> dict[str, Any]:
    with connect(url) as q:
        hook = q.stats if isinstance(q, SupportsStats) else None
        raw = dict(hook()) if hook is not None else None
        size = q.size() if raw is None or raw.get("depth") is None else None
        head = None
        if (raw is None or raw.get("oldest_age") is None) and Capability.PEEK in q.capabilities:
            job = q.peek()
            head = job.enqueued_at if job is not None else None
        return _finish(url, q, raw, size, head)


async def _inspect_async(url: str) -> dict[str, Any]:
    async with connect_async(url) as q:
        hook = q.stats if isinstance(q, SupportsAsyncStats) else None
        raw = dict(await hook()) if hook is not None else None
        size = await q.size() if raw is None or raw.get("depth") is None else None
        head = None
        if (raw is None or raw.get("oldest_age") is None) and Capability.PEEK in q.capabilities:
            job = await q.peek()
            head = job.enqueued_at if job is not None else None
        return _finish(url, q, raw, size, head)


def inspect_queue(url: str) -> dict[str, Any]:
    """Describe the queue at ``url`` without changing it.

    Args:
        url: The queue URL.

    Returns:
        A dict with ``url`` (redacted), ``driver``, ``queue``, ``capabilities``,
        ``stats_hook`` (whether the driver has ``stats()``), ``fields`` (every standard key,
        None when unknown, then driver-specific keys), ``source`` (where each known value came
        from) and ``unknown`` (standard keys nobody could tell).

    Raises:
        InvalidURL, DriverNotFound, DriverUnavailable: as :func:`unifiedq.connect`.
        BackendConnectionError: the backend did not answer.
    """
    drv = get_driver(parse_url(url).scheme)
    # Use the driver's native face so its own stats() hook is found without a bridge.
    if drv.sync_class is not None:
        return _inspect_sync(url)
    return asyncio.run(_inspect_async(url))
