# unasync: the blocking twin, _sync/limits.py, is generated from this file.
"""Waiting for rate-limit tokens on one face; the buckets themselves are in ``unifiedq.limits``.

``TokenBucket`` and ``KeyedLimiter`` offer both faces on one object (``acquire`` and
``acquire_async``), so only this waiting loop is generated, not the classes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .._concurrency import AsyncRuntime

if TYPE_CHECKING:
    from ..limits import RateLimiter

__all__ = ["acquire_async"]

# Shortest pause between tries: a limiter reporting "now" may still lose the token to a racer.
_MIN_WAIT = 0.0005


async def acquire_async(limiter: RateLimiter, n: float, timeout: float | None) -> bool:
    """Wait until ``limiter`` hands out ``n`` tokens, then take them; False on timeout.

    Sleeps for the limiter's own ``wait_time`` between tries and never holds its lock while
    waiting.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if limiter.try_acquire(n):
            return True
        wait = max(limiter.wait_time(n), _MIN_WAIT)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            wait = min(wait, left)
        await AsyncRuntime.sleep(wait)
