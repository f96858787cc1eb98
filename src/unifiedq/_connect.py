"""``connect()`` and ``connect_async()``: from a URL to a queue handle."""

from __future__ import annotations

import dataclasses
from typing import Any

from ._base import AsyncQueueBase, QueueBase
from ._bridge import AsyncToSync, SyncToAsync
from ._deadlines import pop_on_expired, set_on_expired
from ._registry import LoadedDriver, get_driver
from ._url import URL, parse_url
from .results import attach_results

__all__ = ["connect", "connect_async"]


def _resolve(url: object) -> tuple[URL, LoadedDriver]:
    parsed = parse_url(url)
    return parsed, get_driver(parsed.scheme)


def _pop_results(parsed: URL, options: dict[str, Any]) -> tuple[URL, object]:
    """Take the ``results=`` option (a result store) out of the URL and the options."""
    spec = options.pop("results", None)
    if "results" in parsed.query:
        spec = spec if spec is not None else parsed.query["results"]
        parsed = dataclasses.replace(
            parsed, query={k: v for k, v in parsed.query.items() if k != "results"})
    return parsed, spec


def connect(url: str, **options: Any) -> QueueBase:
    """Open a blocking queue handle.

    Args:
        url: A connection string such as ``"memory://jobs"`` or
            ``"redis://localhost:6379/0?queue=emails"``.
        **options: Driver options; they override the same options in the URL's query.
            ``on_expired="dead"|"drop"`` (any driver) chooses what ``dequeue`` does with a
            job past its deadline (see docs/deadlines.md).

    Returns:
        A :class:`~unifiedq.Queue`. When the driver is asyncio-only, the handle is a bridge
        (``queue.bridged`` is True) running the driver on a private event-loop thread.

    Raises:
        InvalidURL: The URL or an option is invalid.
        DriverNotFound: No driver serves the scheme.
        DriverUnavailable: The driver's dependencies are missing (the message names the extra).
    """
    parsed, drv = _resolve(url)
    parsed, results = _pop_results(parsed, options)
    parsed, expired = pop_on_expired(parsed, options)
    if drv.sync_class is not None:
        return set_on_expired(
            attach_results(drv.sync_class.from_url(parsed, options), results), expired)
    assert drv.async_class is not None
    return set_on_expired(AsyncToSync(
        attach_results(drv.async_class.from_url(parsed, options), results)), expired)


def connect_async(url: str, **options: Any) -> AsyncQueueBase:
    """Open an asyncio queue handle (use it with ``async with``).

    Args:
        url: A connection string (see :func:`connect`).
        **options: Driver options; they override the same options in the URL's query.

    Returns:
        An :class:`~unifiedq.AsyncQueue`. When the driver is blocking-only, the handle is a
        bridge (``queue.bridged`` is True) that runs it in a bounded thread pool.

    Raises:
        InvalidURL: The URL or an option is invalid.
        DriverNotFound: No driver serves the scheme.
        DriverUnavailable: The driver's dependencies are missing.
    """
    parsed, drv = _resolve(url)
    parsed, results = _pop_results(parsed, options)
    parsed, expired = pop_on_expired(parsed, options)
    if drv.async_class is not None:
        return set_on_expired(
            attach_results(drv.async_class.from_url(parsed, options), results), expired)
    assert drv.sync_class is not None
    return set_on_expired(SyncToAsync(
        attach_results(drv.sync_class.from_url(parsed, options), results)), expired)
