"""FairQueue and AsyncFairQueue are one source: same members, same behaviour on both faces.

Also the waking of waiting dequeuers (one per local enqueue, on both faces) and a push that
lands while a scan polls the same tenant.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

import unifiedq
from unifiedq import Capability, Job, Queue
from unifiedq.drivers import memory
from unifiedq.fair import AsyncFairQueue, FairQueue


def _tpl() -> str:
    return f"memory://ff-{uuid.uuid4().hex[:8]}.{{tenant}}"


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    memory.reset()


def _blocking_name(member: str) -> str:
    return {"aclose": "close", "__aenter__": "__enter__", "__aexit__": "__exit__"}.get(member,
                                                                                     member)


def test_both_faces_offer_the_same_members() -> None:
    sync = {m for m in dir(FairQueue) if m != "__init__"}
    asyn = {_blocking_name(m) for m in dir(AsyncFairQueue) if m != "__init__"}
    assert sync == asyn
    for m in ("sizes", "sub_queue", "_probe", "served", "tenant_of", "add_tenant"):
        assert m in asyn, m
    assert unifiedq.AsyncFairQueue is AsyncFairQueue and unifiedq.FairQueue is FairQueue


def test_async_face_has_sizes_sub_queue_bounds_and_settling() -> None:
    async def main() -> None:
        fq = AsyncFairQueue(_tpl(), maxsize_per_tenant=3, default_tenant=None)
        await fq.enqueue_many([b"a1", b"a2", b"a3"], tenant="a")
        assert Capability.NATIVE_ASYNC in fq.capabilities
        assert Capability.BOUNDED in fq.capabilities and Capability.PEEK not in fq.capabilities
        with pytest.raises(unifiedq.QueueFull):
            await fq.enqueue(b"a4", tenant="a")  # the per-tenant bound
        await fq.enqueue(b"b1", headers={"tenant": "b", "type": "t"})
        assert await fq.sizes() == {"a": 3, "b": 1}
        assert await fq.size() == 4
        sub = fq.sub_queue("b")
        assert await sub.size() == 1 and isinstance(sub, unifiedq.AsyncQueue)
        order = []
        for _ in range(2):
            j = await fq.dequeue(timeout=5)
            assert j is not None
            order.append(j.body)
            await fq.ack(j)
        assert order == [b"a1", b"b1"]  # round robin across tenants
        j = await fq.dequeue(timeout=5)
        assert j is not None and fq.tenant_of(j) == "a"
        await fq.nack(j)
        j2 = await fq.dequeue(timeout=5)
        assert j2 is not None and j2.id == j.id and j2.attempt == 2
        await fq.extend_lease(j2, 10)
        await fq.ack(j2)
        with pytest.raises(unifiedq.UnsupportedOperation):
            await fq.peek()
        with pytest.raises(unifiedq.InvalidArgument):
            await fq.enqueue(b"no tenant")
        assert fq.served() == {"a": 3, "b": 1}
        assert repr(fq).startswith("<AsyncFairQueue ")
        await fq.aclose()
        assert fq.closed
        with pytest.raises(unifiedq.QueueClosed):
            await fq.dequeue()

    asyncio.run(main())
    with FairQueue(_tpl()) as fq:
        assert Capability.NATIVE_SYNC in fq.capabilities
        assert repr(fq).startswith("<FairQueue ")


def test_every_waiting_thread_is_woken_by_its_own_enqueue() -> None:
    # Waiting dequeuers back off to long sleeps (max_poll); each local enqueue must wake one.
    fq = FairQueue(_tpl(), max_poll=30.0)
    got: list[tuple[bytes, float]] = []
    lock = threading.Lock()

    def consume() -> None:
        j = fq.dequeue(timeout=20)
        assert j is not None
        with lock:
            got.append((j.body, time.monotonic()))
        fq.ack(j)

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.1)  # each consumer is now in a back-off sleep of about two seconds
    sent = time.monotonic()
    for i in range(4):
        fq.enqueue(str(i).encode(), tenant=f"t{i % 2}")
    for t in threads:
        t.join(20)
    assert sorted(b for b, _ in got) == [b"0", b"1", b"2", b"3"]
    assert max(at for _, at in got) - sent < 0.8  # woken, not found by the next poll
    fq.close()


def test_every_waiting_task_is_woken_by_its_own_enqueue() -> None:
    async def main() -> list[float]:
        fq = AsyncFairQueue(_tpl(), max_poll=30.0)

        async def consume() -> float:
            j = await fq.dequeue(timeout=20)
            assert j is not None
            await fq.ack(j)
            return time.monotonic()

        tasks = [asyncio.ensure_future(consume()) for _ in range(4)]
        await asyncio.sleep(2.1)
        sent = time.monotonic()
        for i in range(4):
            await fq.enqueue(str(i).encode(), tenant=f"t{i % 2}")
        done = await asyncio.wait_for(asyncio.gather(*tasks), 20)
        await fq.aclose()
        return [at - sent for at in done]

    assert max(asyncio.run(main())) < 0.8


def test_close_wakes_waiting_dequeuers() -> None:
    fq = FairQueue(_tpl(), max_poll=30.0)
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            fq.dequeue(timeout=20)
        except unifiedq.QueueClosed as exc:
            errors.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.3)
    fq.close()
    t.join(5)
    assert not t.is_alive() and len(errors) == 1


class _PushWhilePolled:
    """A sub-queue whose first empty poll lets another producer enqueue mid-scan."""

    def __init__(self, inner: Queue, push: list[object]) -> None:
        self._inner = inner
        self._push = push

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def dequeue(self, *, timeout: float | None = 0.0) -> Job | None:
        job = self._inner.dequeue(timeout=timeout)
        if job is None and self._push:
            hook = self._push.pop()
            assert callable(hook)
            hook()  # lands after this poll looked, before the scan records "empty"
        return job


def test_an_enqueue_during_the_poll_of_its_tenant_is_not_skipped() -> None:
    base = f"ff-{uuid.uuid4().hex[:8]}"
    push: list[object] = []

    def open_sub(tenant: str) -> Queue:
        inner = unifiedq.connect(f"memory://{base}.{tenant}")
        return _PushWhilePolled(inner, push)  # type: ignore[return-value]

    fq = FairQueue(open_sub, empty_recheck=30.0, max_poll=30.0)
    fq.add_tenant("a")
    push.append(lambda: fq.enqueue(b"late", tenant="a"))
    start = time.monotonic()
    j = fq.dequeue(timeout=5)
    # Found by an immediate re-scan; without the push count, "a" would be skipped as
    # recently empty until empty_recheck ran out (the dequeue would time out).
    assert j is not None and j.body == b"late"
    assert time.monotonic() - start < 2.5
    fq.close()
