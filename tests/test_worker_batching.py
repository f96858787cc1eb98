"""The worker's throughput machinery (issue 18): prefetch bounded by idle slots, batched acks,
handlers on their slot's own thread with the housekeeper as timeout watchdog, exact stats."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import unifiedq
from unifiedq import AsyncWorker, Job, Retry, Worker
from unifiedq.drivers import memory

FAST = Retry(max_attempts=3, backoff=0.001, factor=2.0, jitter=0.5)


def _name() -> str:
    return f"wb-{uuid.uuid4().hex[:10]}"


def wait_for(pred: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture(autouse=True)
def _no_leaked_memory_queues() -> Iterator[None]:
    yield
    memory.reset()


def _spy_dequeue_many(q: Any, calls: list[tuple[int, int]]) -> None:
    """Record (max_jobs, jobs returned) of each dequeue_many on this (real) queue."""
    real = q.dequeue_many

    def spy(max_jobs: int, *, timeout: float | None = 0.0) -> list[Job]:
        jobs: list[Job] = real(max_jobs, timeout=timeout)
        calls.append((max_jobs, len(jobs)))
        return jobs

    q.dequeue_many = spy


# -- prefetch ----------------------------------------------------------------------------------
def test_prefetch_takes_a_batch_for_idle_slots_and_never_more() -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    calls: list[tuple[int, int]] = []
    _spy_dequeue_many(q, calls)
    gate = threading.Semaphore(0)
    started: list[bytes] = []
    lock = threading.Lock()

    def h(job: Job) -> None:
        with lock:
            started.append(job.body)
        assert gate.acquire(timeout=20)

    w = Worker(q, h, concurrency=4, poll_interval=0.05)
    w.start()
    try:
        time.sleep(0.3)  # every slot is idle: the fetcher now waits for 4 jobs at once
        q.enqueue_many([f"j{i}".encode() for i in range(40)])
        wait_for(lambda: len(started) == 4, what="four handlers running")
        time.sleep(0.2)  # an over-eager prefetch would show now
        # All four slots are busy: nothing was taken beyond the jobs they run.
        assert q.size() == 36 and len(started) == 4
        assert max(k for k, _ in calls) == 4, calls
        assert any(n > 1 for _, n in calls), f"no batch was ever taken: {calls}"
        for i in range(5, 9):  # free one slot at a time: each takes one job, no more
            gate.release()
            wait_for(lambda: len(started) == i, what=f"{i} started")  # noqa: B023
            time.sleep(0.05)
            assert q.size() == 40 - i
        for _ in range(40):
            gate.release()
        wait_for(lambda: w.stats().processed == 40, what="all done")
    finally:
        for _ in range(40):
            gate.release()
        w.stop(grace=10)
    assert w.stats().processed == 40 and q.size() == 0
    q.close()


def test_no_job_is_prefetched_while_every_slot_is_busy() -> None:
    # Regression: a fetcher left the idle count until after it released the fetch lock, so
    # the next slot counted it as idle and took a job for a slot that was already busy.
    for round_ in range(15):
        _two_busy_slots_three_jobs(round_)


def _two_busy_slots_three_jobs(round_: int) -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    q.enqueue_many([b"a", b"b", b"c"])
    release = threading.Event()
    w = Worker(q, lambda job: release.wait(10), concurrency=2, poll_interval=0.05)
    w.start()
    try:
        wait_for(lambda: w.stats().in_flight == 2, what="two running")
        time.sleep(0.05)
        assert q.size() == 1, f"round {round_}: a third job was taken"
    finally:
        release.set()
        w.stop(grace=5)
    st = w.stats()
    assert st.returned == 0 and st.processed + q.size() == 3
    q.close()


def test_async_worker_prefetch_is_bounded_too() -> None:
    async def main() -> tuple[list[tuple[int, int]], int, int]:
        q = unifiedq.connect_async(f"memory://{_name()}")
        calls: list[tuple[int, int]] = []
        real = q.dequeue_many

        async def spy(max_jobs: int, *, timeout: float | None = 0.0) -> list[Job]:
            jobs = await real(max_jobs, timeout=timeout)
            calls.append((max_jobs, len(jobs)))
            return jobs

        q.dequeue_many = spy  # type: ignore[method-assign]
        gate = asyncio.Event()
        started = 0

        async def h(job: Job) -> None:
            nonlocal started
            started += 1
            await gate.wait()

        w = AsyncWorker(q, h, concurrency=3, poll_interval=0.05)
        w.start()
        await asyncio.sleep(0.3)
        await q.enqueue_many([b"x"] * 30)
        while started < 3:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        size = await q.size()
        gate.set()
        while w.stats().processed < 30:
            await asyncio.sleep(0.01)
        await w.stop(grace=5)
        await q.aclose()
        return calls, size, started

    calls, size, started = asyncio.run(main())
    assert size == 27, "jobs were prefetched beyond the idle slots"
    assert max(k for k, _ in calls) == 3 and any(n > 1 for _, n in calls), calls
    assert started == 30


# -- batched acks ------------------------------------------------------------------------------
def _acks_worker(q: Any, ran: list[bytes], **kw: Any) -> Worker:
    w = Worker(q, lambda job: ran.append(job.body), concurrency=2, poll_interval=0.05)
    for k, v in kw.items():
        setattr(w, k, v)  # class attributes, overridable per worker
    return w


def test_acks_are_sent_within_the_window() -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    ran: list[bytes] = []
    w = _acks_worker(q, ran, ack_window=0.5, ack_batch=1000)
    w.start()
    try:
        q.enqueue_many([b"a", b"b", b"c"])
        wait_for(lambda: len(ran) == 3, what="handlers")
        t0 = time.monotonic()
        # Finished but not yet acked: processed counts acked jobs.
        assert w.stats().processed == 0
        wait_for(lambda: w.stats().processed == 3, 5, "the window's flush")
        waited = time.monotonic() - t0
        assert 0.2 < waited < 3.0, waited
    finally:
        w.stop(grace=5)
    q.close()


def test_full_batches_go_at_once_and_the_rest_at_stop() -> None:
    name = _name()
    # A short lease: any job left unacked after the stop would come back within 0.5 s.
    q = unifiedq.connect(f"memory://{name}", visibility_timeout=0.5)
    ran: list[bytes] = []
    w = _acks_worker(q, ran, ack_window=60.0, ack_batch=5)
    w.start()
    try:
        q.enqueue_many([f"j{i}".encode() for i in range(12)])
        wait_for(lambda: len(ran) == 12, what="handlers")
        wait_for(lambda: w.stats().processed == 10, 5, "two full batches")
        time.sleep(0.1)
        assert w.stats().processed == 10  # the last two wait for their batch (or the stop)
    finally:
        w.stop(grace=5)
    assert w.stats().processed == 12
    time.sleep(0.7)  # past the lease: an unacked job would be back
    assert q.dequeue(timeout=0) is None and q.size() == 0
    assert sorted(ran) == sorted(f"j{i}".encode() for i in range(12))
    q.close()


# -- handlers on the slot's thread; the watchdog ----------------------------------------------
def test_handlers_run_on_the_slot_thread_without_a_runner() -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    names: set[str] = set()
    w = Worker(q, lambda job: names.add(threading.current_thread().name), concurrency=3,
               poll_interval=0.05)
    w.start()
    try:
        q.enqueue_many([b"x"] * 200)
        wait_for(lambda: w.stats().processed == 200, what="all done")
        workers = [t for t in threading.enumerate() if t.name.startswith("unifiedq-worker")]
    finally:
        w.stop(grace=5)
    assert names and all(n.startswith("unifiedq-worker-") and "-run" not in n for n in names)
    assert len(workers) == 3 + 1, [t.name for t in workers]  # three slots + the housekeeper
    q.close()


def test_watchdog_times_out_a_hung_handler_and_replaces_its_thread() -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    release = threading.Event()
    runs: list[tuple[bytes, int, str]] = []
    hung_at: list[float] = []

    def h(job: Job) -> None:
        runs.append((job.body, job.attempt, threading.current_thread().name))
        if job.body == b"hang" and job.attempt == 1:
            hung_at.append(time.monotonic())
            release.wait(30)

    w = Worker(q, h, concurrency=1, timeout=0.3, retry=FAST, poll_interval=0.05)
    q.enqueue(b"hang")
    w.start()
    try:
        wait_for(lambda: bool(hung_at), what="the hang")
        wait_for(lambda: w.stats().timed_out == 1, 5, "the watchdog")
        took = time.monotonic() - hung_at[0]
        assert 0.3 <= took < 1.5, took  # a deadline, not the 1 s housekeeping beat
        q.enqueue(b"after")
        wait_for(lambda: w.stats().processed == 2, 10, "the retry and the next job")
        st = w.stats()
        assert (st.failed, st.retried, st.in_flight) == (1, 1, 0)
        stuck = runs[0][2]
        assert {n for b, a, n in runs[1:]} == {"unifiedq-worker-0.1"}  # the new thread
        assert any(t.name == stuck and t.is_alive() for t in threading.enumerate())
    finally:
        release.set()
        w.stop(grace=5)
    wait_for(lambda: not any(t.name == stuck for t in threading.enumerate()), 5,
             "the stuck thread to exit once its handler returned")
    st = w.stats()
    assert st.processed == 2 and st.lease_lost == 0 and q.size() == 0  # it never acked
    q.close()


def test_stop_does_not_wait_for_a_thread_hung_past_the_grace() -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    release = threading.Event()
    started = threading.Event()

    def h(job: Job) -> None:
        started.set()
        release.wait(30)

    w = Worker(q, h, concurrency=2, timeout=None, poll_interval=0.05)
    q.enqueue(b"x")
    w.start()
    try:
        assert started.wait(10)
        t0 = time.monotonic()
        w.stop(grace=0.2)
        took = time.monotonic() - t0
        st = w.stats()
        assert st.returned == 1 and st.in_flight == 0 and st.processed == 0
        assert took < 2.0, f"the stop waited {took:.1f}s for a hung thread"
        assert q.size() == 1  # handed back (released) for another worker
    finally:
        release.set()
    q.close()


# -- exact accounting with batching on a real server -------------------------------------------
def _fails(body: bytes, attempt: int) -> bool:
    n = int(body.split(b"-")[1])
    return (n % 7 == 0 and attempt < 2) or n % 31 == 0  # retried once; or dead


@pytest.mark.parametrize("face", ["sync", "async"])
def test_exact_stats_with_batching_on_redis(redis_url: str, face: str) -> None:
    name = _name()
    url, dl_url = f"{redis_url}?queue={name}", f"{redis_url}?queue={name}-dead"
    n = 600
    bodies = [f"job-{i}".encode() for i in range(n)]
    feed = unifiedq.connect(url)
    feed.enqueue_many(bodies)
    done: collections.Counter[bytes] = collections.Counter()

    def handle(job: Job) -> None:
        if _fails(job.body, job.attempt):
            raise RuntimeError("planned failure")
        done[job.body] += 1

    if face == "sync":
        w = Worker(url, handle, concurrency=8, retry=Retry(max_attempts=2, backoff=0.0),
                   dead_letter=dl_url, poll_interval=0.05)
        w.start()
        try:
            wait_for(lambda: w.stats().processed + w.stats().dead >= n, 60, "all settled")
        finally:
            w.stop(grace=10)
        st = w.stats()
    else:
        async def ahandle(job: Job) -> None:
            handle(job)

        async def main() -> Any:
            aw = AsyncWorker(url, ahandle, concurrency=8,
                             retry=Retry(max_attempts=2, backoff=0.0), dead_letter=dl_url,
                             poll_interval=0.05)
            aw.start()
            while aw.stats().processed + aw.stats().dead < n:
                await asyncio.sleep(0.01)
            await aw.stop(grace=10)
            return aw.stats()

        st = asyncio.run(main())
    dl = unifiedq.connect(dl_url)
    dead = []
    while (j := dl.dequeue(timeout=0)) is not None:
        dead.append(j.body)
        dl.ack(j)
    expected_dead = {b for b in bodies if int(b.split(b"-")[1]) % 31 == 0}
    retried_ok = {b for b in bodies if int(b.split(b"-")[1]) % 7 == 0} - expected_dead
    assert set(dead) == expected_dead and len(dead) == len(expected_dead)
    assert set(done) == set(bodies) - expected_dead and max(done.values()) == 1
    assert st.processed == n - len(expected_dead) and st.dead == len(expected_dead)
    assert st.retried == len(retried_ok) + len(expected_dead)
    assert st.failed == st.retried + st.dead and st.timed_out == 0
    assert st.lease_lost == 0 and st.returned == 0 and st.in_flight == 0
    assert feed.size() == 0 and feed.dequeue(timeout=0) is None
    feed.close()
    dl.close()


def test_async_watchdog_cancels_the_slot_and_abandons_a_coroutine_that_ignores_it() -> None:
    async def main() -> tuple[list[tuple[bytes, int]], Any, int]:
        q = unifiedq.connect_async(f"memory://{_name()}")
        await q.enqueue(b"stubborn")
        runs: list[tuple[bytes, int]] = []
        swallowed = 0

        async def h(job: Job) -> None:
            nonlocal swallowed
            runs.append((job.body, job.attempt))
            if job.body == b"stubborn" and job.attempt == 1:
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    swallowed += 1  # ignores the cancellation and carries on a while
                    await asyncio.sleep(0.5)

        w = AsyncWorker(q, h, concurrency=1, timeout=0.2, retry=FAST, poll_interval=0.05)
        w.start()
        await q.enqueue(b"next")
        t0 = time.monotonic()
        while w.stats().processed < 2:
            assert time.monotonic() - t0 < 10, w.stats()
            await asyncio.sleep(0.01)
        took = time.monotonic() - t0
        await asyncio.sleep(0.6)  # the stubborn call returns now: it must settle nothing
        await w.stop(grace=5)
        await q.aclose()
        assert took < 0.5 + 0.2, f"the slot waited for the stubborn coroutine ({took:.2f}s)"
        return runs, w.stats(), swallowed

    runs, st, swallowed = asyncio.run(main())
    assert swallowed == 1 and sorted(runs) == [(b"next", 1), (b"stubborn", 1), (b"stubborn", 2)]
    assert (st.processed, st.timed_out, st.retried, st.failed) == (2, 1, 1, 1)
    assert st.lease_lost == 0 and st.in_flight == 0


# -- in-flight accounting with batched acks -----------------------------------------------------
class _InFlightLog(unifiedq.metrics.Metrics):
    """Records the running in-flight gauge (its lowest value, and where it ends)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.level = 0
        self.lowest = 0
        self.highest = 0

    def in_flight(self, queue: str, driver: str, delta: int) -> None:
        with self.lock:
            self.level += delta
            self.lowest = min(self.lowest, self.level)
            self.highest = max(self.highest, self.level)


@pytest.mark.parametrize("face", ["sync", "async"])
def test_in_flight_is_dropped_exactly_once_per_job_with_batched_acks(face: str) -> None:
    # A batched success leaves in_flight where it queues its ack; the slot's own drop after
    # it must then do nothing. Mixed outcomes (acked, retried, dead) cover every path.
    url = f"memory://{_name()}"
    n = 300
    log = _InFlightLog()
    with unifiedq.connect(url) as q:
        for i in range(n):
            q.enqueue(str(i).encode())

        def outcome(job: Job) -> None:
            i = int(job.body)
            if i % 10 == 0 and job.attempt == 1:
                raise RuntimeError("retry me")  # retried once, then acked
            if i % 25 == 1:
                raise unifiedq.SkipRetry("dead")  # dead at once

        if face == "sync":
            w: Any = Worker(url, outcome, concurrency=8, retry=FAST, poll_interval=0.05,
                            metrics=log)
            w.start()
            wait_for(lambda: w.stats().processed + w.stats().dead == n, what="all settled")
            w.stop(grace=5)
            st = w.stats()
        else:
            async def aoutcome(job: Job) -> None:
                outcome(job)
                await asyncio.sleep(0)

            async def main() -> Any:
                aw = AsyncWorker(url, aoutcome, concurrency=8, retry=FAST, poll_interval=0.05,
                                 metrics=log)
                aw.start()
                end = time.monotonic() + 20
                while aw.stats().processed + aw.stats().dead < n:
                    assert time.monotonic() < end, aw.stats()
                    await asyncio.sleep(0.005)
                await aw.stop(grace=5)
                return aw.stats()

            st = asyncio.run(main())
    dead = len([i for i in range(n) if i % 25 == 1])
    assert (st.processed, st.dead, st.in_flight) == (n - dead, dead, 0), st
    assert st.retried == len([i for i in range(n) if i % 10 == 0 and i % 25 != 1])
    assert log.level == 0 and log.lowest == 0, (log.level, log.lowest)
    assert 1 <= log.highest <= 8
