"""redis:// heartbeat on both faces (one source, _async/queue.py): it keeps leases, close ends it.

The blocking face beats on a thread, the asyncio face on a task (``_concurrency`` spawns either);
both wait on the runtime's Event between beats, so close() ends them at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from unifiedq import connect, connect_async
from unifiedq.drivers.redis import AsyncRedisQueue, RedisQueue


@pytest.fixture
def qname() -> str:
    return f"uq-faces-{uuid.uuid4().hex[:10]}"


def _url(redis_url: str, name: str, lease: float) -> str:
    return f"{redis_url}?queue={name}&visibility_timeout={lease}"


def test_async_heartbeat_keeps_lease_while_held(redis_url: str, qname: str) -> None:
    url = _url(redis_url, qname, 1.0)

    async def run() -> None:
        async with connect_async(url) as q, connect_async(url) as other:
            await q.enqueue(b"x")
            job = await q.dequeue(timeout=5)
            assert job is not None
            await asyncio.sleep(3.0)  # three lease lengths; the heartbeat extends every ~0.33 s
            assert await other.dequeue(timeout=0.5) is None
            await q.ack(job)

    asyncio.run(run())


def test_sync_close_ends_the_heartbeat_thread_at_once(redis_url: str, qname: str) -> None:
    q = connect(_url(redis_url, qname, 30.0))  # beats every 5 s
    assert isinstance(q, RedisQueue)
    q.enqueue(b"x")
    job = q.dequeue(timeout=5)
    assert job is not None
    hb = q._hb
    assert hb is not None and not hb.done()
    t0 = time.monotonic()
    q.close()  # requeues the held job too
    assert time.monotonic() - t0 < 2.0  # woken by the stop event, not after its 5 s nap
    assert hb.done()
    with connect(_url(redis_url, qname, 30.0)) as again:
        assert again.size() == 1
        again.purge()


def test_async_close_ends_the_heartbeat_task_at_once(redis_url: str, qname: str) -> None:
    url = _url(redis_url, qname, 30.0)

    async def run() -> None:
        q = connect_async(url)
        assert isinstance(q, AsyncRedisQueue)
        await q.enqueue(b"x")
        job = await q.dequeue(timeout=5)
        assert job is not None
        hb = q._hb
        assert hb is not None and not hb.done()
        t0 = time.monotonic()
        await q.aclose()
        assert time.monotonic() - t0 < 2.0
        assert hb.done()
        async with connect_async(url) as again:
            assert await again.size() == 1
            await again.purge()

    asyncio.run(run())
