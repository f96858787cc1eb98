"""Token-bucket rate limits for consumers and producers, per queue or per tenant.

A :class:`TokenBucket` holds up to ``burst`` tokens and refills at ``rate`` tokens per
second. Taking a token is how a consumer (or producer) asks "may I go now?"::

    bucket = TokenBucket(rate=100, burst=20)       # 100 jobs/s, bursts of 20
    if bucket.try_acquire():
        ...                                        # go
    bucket.acquire(timeout=1.0)                    # or wait for a token (False on timeout)

:class:`KeyedLimiter` keeps one bucket per key (a tenant, a job type) and creates buckets on
first use. Both are thread-safe and have asyncio twins of their waiting calls
(``acquire_async``); waiting never holds the lock.

The buckets here are **local**: they limit one process. Several worker processes sharing a
backend each get their own budget, so a limit of R per process is R x P in total; divide the
rate by the number of processes, or use a backend-side limiter. Where Redis is available,
:class:`RedisTokenBucket` keeps the bucket in Redis and refills/takes atomically in a Lua
script, so every process shares one budget.

:class:`~unifiedq.Worker` takes a ``rate_limit`` (a bucket it acquires before every fetch) and
:class:`~unifiedq.FairQueue` takes per-tenant limits (a tenant without tokens is skipped by the
scheduler, without losing its turn's credit).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ._async.limits import acquire_async as _acquire_async
from ._errors import InvalidArgument
from ._sync.limits import acquire as _acquire_sync

__all__ = ["KeyedLimiter", "RateLimiter", "RedisTokenBucket", "TokenBucket"]

# Least recently used buckets a KeyedLimiter looks at for a full one when it must forget one:
# a bound, so a new key never costs a scan of all ``max_keys`` buckets.
_EVICT_SCAN = 32


@runtime_checkable
class RateLimiter(Protocol):
    """Anything that hands out tokens: :class:`TokenBucket`, :class:`RedisTokenBucket`."""

    def try_acquire(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if they are there now; return whether it did."""
        ...

    def wait_time(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens could be taken (0.0 = now)."""
        ...


def _check_rate(rate: object, burst: object) -> tuple[float, float]:
    for name, v in (("rate", rate), ("burst", burst)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise InvalidArgument(f"{name} must be a finite number, not {v!r}")
    assert isinstance(rate, int | float) and isinstance(burst, int | float)
    if rate <= 0:
        raise InvalidArgument(f"rate must be > 0 tokens per second, not {rate!r}")
    if burst < 1:
        raise InvalidArgument(f"burst must be >= 1 token, not {burst!r}")
    return float(rate), float(burst)


def _check_n(n: object, burst: float) -> float:
    if isinstance(n, bool) or not isinstance(n, int | float) or not n > 0:
        raise InvalidArgument(f"n must be a number of tokens > 0, not {n!r}")
    if n > burst:
        raise InvalidArgument(f"cannot take {n} tokens at once from a bucket of burst {burst}")
    return float(n)


class TokenBucket:
    """A thread-safe local token bucket.

    Args:
        rate: Tokens added per second.
        burst: Bucket capacity (the largest burst); the bucket starts full.
        clock: Monotonic clock in seconds (tests may pass a fake one).

    Raises:
        InvalidArgument: ``rate`` <= 0 or ``burst`` < 1.
    """

    def __init__(self, rate: float, burst: float = 1.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst = _check_rate(rate, burst)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate:g}, burst={self.burst:g})"

    def _refill(self) -> None:
        now = self._clock()
        # max(): a clock that steps back must not drain the bucket.
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        with self._lock:
            self._refill()
            return self._tokens

    def try_acquire(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if available now.

        Args:
            n: Tokens to take (at most ``burst``).

        Returns:
            True if they were taken.
        """
        need = _check_n(n, self.burst)
        with self._lock:
            self._refill()
            if self._tokens >= need:
                self._tokens -= need
                return True
            return False

    def wait_time(self, n: float = 1.0) -> float:
        """Return the seconds until ``n`` tokens are available (0.0 if they are now)."""
        need = _check_n(n, self.burst)
        with self._lock:
            self._refill()
            return max(0.0, (need - self._tokens) / self.rate)

    def acquire(self, n: float = 1.0, *, timeout: float | None = None) -> bool:
        """Wait until ``n`` tokens can be taken, then take them.

        Args:
            n: Tokens to take.
            timeout: Longest wait in seconds; None waits as long as needed.

        Returns:
            True if taken, False if ``timeout`` ran out first.
        """
        return _acquire_sync(self, n, timeout)

    async def acquire_async(self, n: float = 1.0, *, timeout: float | None = None) -> bool:
        """Asyncio twin of :meth:`acquire`."""
        return await _acquire_async(self, n, timeout)


class KeyedLimiter:
    """One token bucket per key (tenant, job type, ...), created on first use.

    Args:
        rate: Default tokens per second for a key.
        burst: Default capacity for a key.
        overrides: Per-key ``(rate, burst)`` that replace the defaults.
        max_keys: Buckets kept at most, a hard bound on memory. Beyond it a full bucket
            among the least recently used is forgotten (a full bucket carries no state worth
            keeping); if none of those is full, the least recently used one is (its key
            starts with a full bucket if it comes back).
    """

    def __init__(self, rate: float, burst: float = 1.0, *,
                 overrides: dict[str, tuple[float, float]] | None = None,
                 max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst = _check_rate(rate, burst)
        self._overrides = {k: _check_rate(*v) for k, v in (overrides or {}).items()}
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def bucket(self, key: str) -> TokenBucket:
        """Return the bucket of ``key``, creating it (full) if needed."""
        with self._lock:
            b = self._buckets.pop(key, None)
            if b is None:
                rate, burst = self._overrides.get(key, (self.rate, self.burst))
                b = TokenBucket(rate, burst, clock=self._clock)
                if len(self._buckets) >= self._max_keys:
                    self._evict()
            self._buckets[key] = b  # re-insert: dict order doubles as LRU order
            return b

    def _evict(self) -> None:
        for k in itertools.islice(self._buckets, _EVICT_SCAN):
            b = self._buckets[k]
            if b.tokens >= b.burst:
                del self._buckets[k]  # and stop iterating: the dict just changed
                return
        del self._buckets[next(iter(self._buckets))]

    def _forget(self, key: str) -> None:
        """Drop ``key``'s bucket if it is full (its owner, e.g. a tenant, went away)."""
        with self._lock:
            b = self._buckets.get(key)
            if b is not None and b.tokens >= b.burst:
                del self._buckets[key]

    def try_acquire(self, key: str, n: float = 1.0) -> bool:
        """Take ``n`` tokens from ``key``'s bucket if available now."""
        return self.bucket(key).try_acquire(n)

    def acquire(self, key: str, n: float = 1.0, *, timeout: float | None = None) -> bool:
        """Wait for ``n`` tokens of ``key``; False if ``timeout`` ran out."""
        return self.bucket(key).acquire(n, timeout=timeout)

    async def acquire_async(self, key: str, n: float = 1.0, *,
                            timeout: float | None = None) -> bool:
        """Asyncio twin of :meth:`acquire`."""
        return await self.bucket(key).acquire_async(n, timeout=timeout)


# KEYS[1] = bucket hash; ARGV = rate, burst, n to take (0 = only look), n to wait for.
# Uses the server's clock (TIME) so clients with skewed clocks share one consistent bucket.
# Returns {taken (0/1), wait_ms}.
_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
local dt = now - stamp
if dt < 0 then dt = 0 end
tokens = math.min(burst, tokens + dt * rate)
local taken = 0
if n > 0 and tokens >= n then
  tokens = tokens - n
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
local need = tonumber(ARGV[4])
local wait = 0
if taken == 0 and tokens < need then wait = math.ceil((need - tokens) / rate * 1000) end
return {taken, wait}
"""


class RedisTokenBucket:
    """A token bucket kept in Redis and shared by every process that names the same key.

    Refill and take happen atomically in one Lua script using the Redis server's clock, so
    concurrent consumers on many machines share one budget of ``rate`` tokens per second.

    Args:
        client: A ``redis.Redis`` client (from the ``redis`` extra).
        key: The Redis key of the bucket, e.g. ``"unifiedq:limit:{emails}"``.
        rate: Tokens added per second.
        burst: Bucket capacity.
    """

    def __init__(self, client: Any, key: str, rate: float, burst: float = 1.0) -> None:
        self.rate, self.burst = _check_rate(rate, burst)
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"key must be a non-empty str, not {key!r}")
        self.key = key
        self._client = client
        self._script = client.register_script(_LUA)

    def __repr__(self) -> str:
        return f"RedisTokenBucket({self.key!r}, rate={self.rate:g}, burst={self.burst:g})"

    def _call(self, take: float, need: float) -> tuple[bool, float]:
        taken, wait_ms = self._script(keys=[self.key], args=[self.rate, self.burst, take, need])
        return bool(int(taken)), int(wait_ms) / 1000.0

    def try_acquire(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if available now (one Redis round trip)."""
        need = _check_n(n, self.burst)
        return self._call(need, need)[0]

    def wait_time(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are available, as the server sees it."""
        return self._call(0.0, _check_n(n, self.burst))[1]

    def acquire(self, n: float = 1.0, *, timeout: float | None = None) -> bool:
        """Wait until ``n`` tokens can be taken, then take them; False on timeout."""
        return _acquire_sync(self, n, timeout)
