"""BoundedQueue / AsyncBoundedQueue: every overflow policy, concurrent producers, honest bounds."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import unifiedq
from unifiedq import Capability
from unifiedq.bounded import AsyncBoundedQueue, BoundedQueue, ShedEvent
from unifiedq.drivers import memory

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def _name() -> str:
    return f"bq-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    memory.reset()


def _hammer(bq: BoundedQueue, producers: int, each: int) -> tuple[int, int]:
    ok = full = 0
    lock = threading.Lock()
    barrier = threading.Barrier(producers)

    def run() -> None:
        nonlocal ok, full
        barrier.wait()
        for _ in range(each):
            try:
                bq.enqueue(b"x")
                r = "ok"
            except unifiedq.QueueFull:
                r = "full"
            with lock:
                if r == "ok":
                    ok += 1
                else:
                    full += 1

    ts = [threading.Thread(target=run) for _ in range(producers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return ok, full


@pytest.mark.parametrize("native", [True, False])
def test_reject_under_concurrent_producers_never_overshoots(native: bool) -> None:
    name = _name()
    # From a URL memory:// enforces the bound itself; from an open Queue it is client-side.
    src = f"memory://{name}" if native else unifiedq.connect(f"memory://{name}")
    bq = BoundedQueue(src, 100, overflow="reject")
    assert bq.atomic is native
    ok, full = _hammer(bq, 8, 100)
    assert ok == 100 and full == 700
    assert bq.size() == 100
    assert bq.stats() == {"accepted": 100, "reject": 700, "block": 0, "drop_oldest": 0,
                          "spill": 0}
    assert Capability.BOUNDED in bq.capabilities


def test_block_waits_for_room_then_times_out() -> None:
    name = _name()
    bq = BoundedQueue(f"memory://{name}", 2, overflow="block", timeout=5)
    bq.enqueue_many([b"1", b"2"])
    consumer = unifiedq.connect(f"memory://{name}")

    def free_one() -> None:
        j = consumer.dequeue(timeout=5)
        assert j is not None
        consumer.ack(j)

    threading.Timer(0.2, free_one).start()
    bq.enqueue(b"3")  # blocks until the consumer acked one
    assert bq.size() == 2
    quick = BoundedQueue(unifiedq.connect(f"memory://{name}"), 2, overflow="block",
                         timeout=0.1)
    with pytest.raises(unifiedq.QueueFull):
        quick.enqueue(b"4")
    assert quick.stats()["block"] == 1


def test_drop_oldest_reports_the_dropped_job() -> None:
    events: list[ShedEvent] = []
    bq = BoundedQueue(f"memory://{_name()}", 3, overflow="drop_oldest", on_shed=events.append)
    for i in range(5):
        bq.enqueue(str(i).encode())
    bodies = []
    while (j := bq.dequeue()) is not None:
        bodies.append(j.body)
        bq.ack(j)
    assert bodies == [b"2", b"3", b"4"]
    assert [e.job.body for e in events if e.job is not None] == [b"0", b"1"]
    assert bq.stats()["drop_oldest"] == 2 and bq.stats()["accepted"] == 5


def test_drop_oldest_with_everything_leased_rejects() -> None:
    name = _name()
    bq = BoundedQueue(f"memory://{name}", 1, overflow="drop_oldest")
    bq.enqueue(b"held")
    assert bq.dequeue() is not None  # leased: counts toward memory's bound, cannot be dropped
    with pytest.raises(unifiedq.QueueFull):
        bq.enqueue(b"new")
    assert bq.stats()["reject"] == 1


def test_spill_loses_nothing() -> None:
    name = _name()
    spill = unifiedq.connect(f"memory://{name}-spill")
    bq = BoundedQueue(f"memory://{name}", 10, overflow="spill", spill=spill)
    ids = [bq.enqueue(str(i).encode()) for i in range(25)]
    assert len(set(ids)) == 25
    assert bq.size() == 10 and spill.size() == 15
    assert bq.stats()["spill"] == 15
    bq.enqueue_many([b"a", b"b"])  # a batch spills as a whole
    assert spill.size() == 17


def test_enqueue_many_is_all_or_nothing_and_bad_args() -> None:
    bq = BoundedQueue(unifiedq.connect(f"memory://{_name()}"), 5)
    bq.enqueue_many([b"x"] * 4)
    with pytest.raises(unifiedq.QueueFull):
        bq.enqueue_many([b"y"] * 2)
    assert bq.size() == 4
    with pytest.raises(unifiedq.QueueFull):
        bq.enqueue_many([b"z"] * 6)  # can never fit
    with pytest.raises(unifiedq.InvalidArgument):
        BoundedQueue(f"memory://{_name()}", 0)
    with pytest.raises(unifiedq.InvalidArgument):
        BoundedQueue(f"memory://{_name()}", 5, overflow="spill")
    with pytest.raises(unifiedq.InvalidArgument):
        BoundedQueue(f"memory://{_name()}", 5, overflow="nope")  # type: ignore[arg-type]


def test_shed_metrics() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from unifiedq.metrics import PrometheusMetrics

    reg = prometheus_client.CollectorRegistry()
    name = _name()
    bq = BoundedQueue(f"memory://{name}", 1, metrics=PrometheusMetrics(reg))
    bq.enqueue(b"1")
    for _ in range(3):
        with pytest.raises(unifiedq.QueueFull):
            bq.enqueue(b"2")
    labels = {"queue": name, "driver": "memory", "policy": "reject"}
    assert reg.get_sample_value("unifiedq_jobs_shed_total", labels) == 3


_PRODUCER = textwrap.dedent("""
    import sys
    import unifiedq
    from unifiedq.bounded import BoundedQueue
    bq = BoundedQueue(sys.argv[1], int(sys.argv[2]), overflow="reject")
    ok = full = 0
    for _ in range(int(sys.argv[3])):
        try:
            bq.enqueue(b"x"); ok += 1
        except unifiedq.QueueFull:
            full += 1
    print(ok, full)
""")


def test_cross_process_producers_on_redis_are_exact_and_fully_counted(
        redis_url: str) -> None:
    """On redis the bound check and the push are one script: no overshoot across processes.

    Every producer's own count of accepted and rejected jobs adds up exactly.
    (tests/test_bounded_atomic.py has the 16-process version.)
    """
    url = f"{redis_url}?queue={_name()}"
    procs, each, maxsize = 4, 150, 100
    ps = [subprocess.Popen([sys.executable, "-c", _PRODUCER, url, str(maxsize), str(each)],
                           stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(procs)]
    outs = [p.communicate(timeout=120)[0].split() for p in ps]
    assert all(p.returncode == 0 for p in ps)
    ok = sum(int(o[0]) for o in outs)
    full = sum(int(o[1]) for o in outs)
    q = unifiedq.connect(url)
    size = q.size()
    assert ok + full == procs * each  # every attempt was either accepted or told "full"
    assert size == ok  # nothing accepted was lost, nothing rejected slipped in
    assert size == maxsize
    q.purge()
    q.close()


# -- the asyncio face: AsyncBoundedQueue (BoundedQueue is generated from it) -------------------
def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.mark.parametrize("native", [True, False])
def test_async_reject_under_concurrent_producers_never_overshoots(native: bool) -> None:
    async def main() -> None:
        name = _name()
        src = f"memory://{name}" if native else unifiedq.connect_async(f"memory://{name}")
        events: list[ShedEvent] = []
        async with AsyncBoundedQueue(src, 20, overflow="reject", on_shed=events.append) as bq:
            assert bq.atomic is native
            assert Capability.BOUNDED in bq.capabilities

            async def produce() -> tuple[int, int]:
                ok = full = 0
                for _ in range(10):
                    try:
                        await bq.enqueue(b"x")
                        ok += 1
                    except unifiedq.QueueFull:
                        full += 1
                return ok, full

            counts = await asyncio.gather(*(produce() for _ in range(8)))
            assert sum(c[0] for c in counts) == 20 and sum(c[1] for c in counts) == 60
            assert await bq.size() == 20
            assert bq.stats() == {"accepted": 20, "reject": 60, "block": 0, "drop_oldest": 0,
                                  "spill": 0}
            assert len(events) == 60 and {e.policy for e in events} == {"reject"}
        if not isinstance(src, str):
            assert not src.closed  # an open queue passed in stays open (native: opened here)
            await src.aclose()

    _run(main())


def test_async_block_waits_for_room_then_times_out() -> None:
    async def main() -> None:
        name = _name()
        bq = AsyncBoundedQueue(f"memory://{name}", 2, overflow="block", timeout=5)
        await bq.enqueue_many([b"1", b"2"])
        consumer = unifiedq.connect_async(f"memory://{name}")

        async def free_one() -> None:
            await asyncio.sleep(0.2)
            j = await consumer.dequeue(timeout=5)
            assert j is not None
            await consumer.ack(j)

        freed = asyncio.ensure_future(free_one())
        await bq.enqueue(b"3")  # waits (without blocking the loop) until one was acked
        await freed
        assert await bq.size() == 2
        quick = AsyncBoundedQueue(consumer, 2, overflow="block", timeout=0.1)
        with pytest.raises(unifiedq.QueueFull):
            await quick.enqueue(b"4")
        assert quick.stats()["block"] == 1 and quick.stats()["accepted"] == 0
        await bq.aclose()
        await consumer.aclose()

    _run(main())


def test_async_drop_oldest_reports_the_dropped_job() -> None:
    async def main() -> None:
        events: list[ShedEvent] = []
        bq = AsyncBoundedQueue(f"memory://{_name()}", 3, overflow="drop_oldest",
                               on_shed=events.append)
        for i in range(5):
            await bq.enqueue(str(i).encode())
        bodies = []
        while (j := await bq.dequeue()) is not None:
            bodies.append(j.body)
            await bq.ack(j)
        assert bodies == [b"2", b"3", b"4"]
        assert [e.job.body for e in events if e.job is not None] == [b"0", b"1"]
        assert bq.stats()["drop_oldest"] == 2 and bq.stats()["accepted"] == 5
        # Everything leased: nothing to drop, so the new job is rejected.
        held = AsyncBoundedQueue(f"memory://{_name()}", 1, overflow="drop_oldest")
        await held.enqueue(b"held")
        assert await held.dequeue() is not None
        with pytest.raises(unifiedq.QueueFull):
            await held.enqueue(b"new")
        assert held.stats()["reject"] == 1
        await bq.aclose()
        await held.aclose()

    _run(main())


def test_async_spill_loses_nothing() -> None:
    async def main() -> None:
        name = _name()
        spill = unifiedq.connect_async(f"memory://{name}-spill")
        events: list[ShedEvent] = []
        async with AsyncBoundedQueue(f"memory://{name}", 10, overflow="spill", spill=spill,
                                     on_shed=events.append) as bq:
            ids = [await bq.enqueue(str(i).encode()) for i in range(25)]
            assert len(set(ids)) == 25
            assert await bq.size() == 10 and await spill.size() == 15
            assert bq.stats()["spill"] == 15
            assert sum(len(e.spilled_ids) for e in events) == 15
            await bq.enqueue_many([b"a", b"b"])  # a batch spills as a whole
            assert await spill.size() == 17
        assert not spill.closed  # passed in open: not ours to close
        await spill.aclose()

    _run(main())


def test_async_enqueue_many_all_or_nothing_bad_args_and_a_raising_callback() -> None:
    def boom(ev: ShedEvent) -> None:
        raise RuntimeError("callback bug")

    async def main() -> None:
        inner = unifiedq.connect_async(f"memory://{_name()}")
        bq = AsyncBoundedQueue(inner, 5, on_shed=boom)
        assert await bq.enqueue_many([]) == []
        await bq.enqueue_many([b"x"] * 4)
        with pytest.raises(unifiedq.QueueFull):
            await bq.enqueue_many([b"y"] * 2)  # the callback's error is logged, not raised
        assert await bq.size() == 4
        with pytest.raises(unifiedq.QueueFull):
            await bq.enqueue_many([b"z"] * 6)  # can never fit
        assert bq.stats()["reject"] == 8
        await inner.aclose()
        with pytest.raises(unifiedq.InvalidArgument):
            AsyncBoundedQueue(f"memory://{_name()}", 0)
        with pytest.raises(unifiedq.InvalidArgument):
            AsyncBoundedQueue(f"memory://{_name()}", 5, overflow="spill")
        with pytest.raises(unifiedq.InvalidArgument):
            AsyncBoundedQueue(unifiedq.connect(f"memory://{_name()}"), 5)  # type: ignore[arg-type]

    _run(main())


def test_both_faces_offer_the_same_members() -> None:
    def members(cls: type) -> set[str]:
        return {m.replace("aclose", "close").replace("__aenter__", "__enter__")
                .replace("__aexit__", "__exit__") for m in dir(cls) if m != "__init__"}

    assert members(AsyncBoundedQueue) == members(BoundedQueue)
    assert unifiedq.AsyncBoundedQueue is AsyncBoundedQueue
