"""BoundedQueue: every overflow policy, concurrent producers, honest cross-process bounds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import unifiedq
from unifiedq import Capability
from unifiedq.bounded import BoundedQueue, ShedEvent
from unifiedq.drivers import memory

ROOT = Path(__file__).resolve().parents[1]


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


def test_cross_process_producers_on_redis_are_best_effort_and_fully_counted(
        redis_url: str) -> None:
    """Client-side bounds race across processes: the overshoot is at most producers - 1.

    Every producer's own count of accepted and rejected jobs adds up exactly.
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
    assert maxsize <= size <= maxsize + procs - 1
    q.purge()
    q.close()
