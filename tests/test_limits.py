"""Token buckets: local (fake clock), keyed, asyncio, and the shared Redis variant."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import unifiedq
from unifiedq.limits import KeyedLimiter, RedisTokenBucket, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_bucket_burst_refill_and_wait_time() -> None:
    c = Clock()
    b = TokenBucket(rate=10, burst=5, clock=c)
    assert [b.try_acquire() for _ in range(6)] == [True] * 5 + [False]
    assert b.wait_time() == pytest.approx(0.1)
    c.t += 0.25  # 2.5 tokens
    assert b.try_acquire(2) and not b.try_acquire(1)
    c.t += 100  # refills only up to the burst
    assert b.tokens == pytest.approx(5)
    c.t -= 50  # a clock stepping back does not drain the bucket
    assert b.tokens == pytest.approx(5)
    with pytest.raises(unifiedq.InvalidArgument):
        b.try_acquire(6)
    with pytest.raises(unifiedq.InvalidArgument):
        TokenBucket(rate=0)
    with pytest.raises(unifiedq.InvalidArgument):
        TokenBucket(rate=1, burst=0.5)


def test_acquire_waits_and_times_out() -> None:
    b = TokenBucket(rate=20, burst=1)
    assert b.acquire(timeout=1)
    assert b.acquire(timeout=2)  # waits ~50 ms for the next token
    slow = TokenBucket(rate=0.01, burst=1)
    assert slow.acquire(timeout=0)
    assert not slow.acquire(timeout=0.05)


def test_async_acquire() -> None:
    async def main() -> tuple[bool, bool]:
        b = TokenBucket(rate=50, burst=1)
        assert await b.acquire_async(timeout=1)
        got = await b.acquire_async(timeout=2)
        slow = TokenBucket(rate=0.01, burst=1)
        await slow.acquire_async()
        return got, await slow.acquire_async(timeout=0.05)

    assert asyncio.run(main()) == (True, False)


def test_keyed_limiter_separates_keys_and_overrides() -> None:
    c = Clock()
    k = KeyedLimiter(rate=1, burst=2, overrides={"vip": (1, 5)}, clock=c)
    assert [k.try_acquire("a") for _ in range(3)] == [True, True, False]
    assert k.try_acquire("b")  # its own bucket
    assert sum(k.try_acquire("vip") for _ in range(10)) == 5
    small = KeyedLimiter(rate=1, burst=1, max_keys=2, clock=c)
    for key in ("x", "y", "z"):
        small.try_acquire(key)
    assert len(small._buckets) <= 3


def test_redis_bucket_is_shared_between_clients(redis_url: str) -> None:
    redis = pytest.importorskip("redis")
    key = f"unifiedq:test:limit:{uuid.uuid4().hex}"
    c1, c2 = redis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url)
    b1 = RedisTokenBucket(c1, key, rate=0.5, burst=5)
    b2 = RedisTokenBucket(c2, key, rate=0.5, burst=5)
    taken = sum(b.try_acquire() for _ in range(10) for b in (b1, b2))
    assert taken == 5  # one budget for both clients, not 5 each
    assert 0 < b1.wait_time() <= 2.0
    assert not b2.acquire(timeout=0.05)
    c1.close()
    c2.close()
