"""``prefetch="auto"``, the worker's default (issue 18): short jobs are fetched in batches
beyond the idle slots; long ones are not; jobs prefetched while jobs were short and that would
now wait too long are handed back to the queue. Exact ledgers on a real Redis, both faces."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest

import unifiedq
from test_worker_batching import wait_for
from test_worker_pipeline import q_empty
from unifiedq import AsyncWorker, Capability, Job, Worker
from unifiedq.worker import WorkerStats


def _name() -> str:
    return f"wpa-{uuid.uuid4().hex[:10]}"


def _spy(q: Any, calls: list[tuple[int, int]]) -> None:
    """Record (max_jobs, jobs returned) of each fetch (``dequeue_many``, ``dequeue``: 1)."""
    many, one = q.dequeue_many, q.dequeue
    if asyncio.iscoroutinefunction(many):
        async def amany(max_jobs: int, *, timeout: float | None = 0.0) -> list[Job]:
            jobs: list[Job] = await many(max_jobs, timeout=timeout)
            calls.append((max_jobs, len(jobs)))
            return jobs

        async def aone(*, timeout: float | None = 0.0) -> Job | None:
            job: Job | None = await one(timeout=timeout)
            calls.append((1, int(job is not None)))
            return job

        q.dequeue_many, q.dequeue = amany, aone
    else:
        def smany(max_jobs: int, *, timeout: float | None = 0.0) -> list[Job]:
            jobs: list[Job] = many(max_jobs, timeout=timeout)
            calls.append((max_jobs, len(jobs)))
            return jobs

        def sone(*, timeout: float | None = 0.0) -> Job | None:
            job: Job | None = one(timeout=timeout)
            calls.append((1, int(job is not None)))
            return job

        q.dequeue_many, q.dequeue = smany, sone


def _run(face: str, url: str, handler: Any, until: Any, calls: list[tuple[int, int]],
         during: Any = None, attrs: dict[str, Any] | None = None, **kw: Any) -> WorkerStats:
    """Run a worker of ``face`` on its own handle of ``url`` until ``until(stats)``.

    ``handler(job)`` returns None or seconds the job then takes (slept the face's way).
    ``during(q, stats)`` is called once the worker runs (the blocking face's handle, or a
    blocking handle of the same queue for the asyncio face). ``attrs``: set on the worker.
    """
    if face == "threads":
        q = unifiedq.connect(url)
        _spy(q, calls)
        def sync_handler(job: Job) -> None:
            pause = handler(job)
            if pause:
                time.sleep(pause)

        w = Worker(q, sync_handler, poll_interval=0.05, **kw)
        for k, v in (attrs or {}).items():
            setattr(w, k, v)
        with w:
            if during is not None:
                during(q, w.stats)
            wait_for(lambda: until(w.stats()), 60, "the jobs")
        q.close()
        return w.stats()

    async def ahandler(job: Job) -> None:
        pause = handler(job)
        if pause:
            await asyncio.sleep(pause)

    async def main() -> WorkerStats:
        aq = unifiedq.connect_async(url)
        _spy(aq, calls)
        aw = AsyncWorker(aq, ahandler, poll_interval=0.05, **kw)
        for k, v in (attrs or {}).items():
            setattr(aw, k, v)
        async with aw:
            if during is not None:
                with unifiedq.connect(url) as side:
                    await asyncio.to_thread(during, side, aw.stats)
            end = time.monotonic() + 60
            while not until(aw.stats()):
                assert time.monotonic() < end, aw.stats()
                await asyncio.sleep(0.01)
        await aq.aclose()
        return aw.stats()

    return asyncio.run(main())


@pytest.mark.parametrize("face", ["threads", "asyncio"])
def test_short_jobs_are_fetched_beyond_the_idle_slots(redis_url: str, face: str) -> None:
    url = f"{redis_url}?queue={_name()}"
    n = 3000
    with unifiedq.connect(url) as q:
        q.enqueue_many([b"%d" % i for i in range(n)])
    seen: list[bytes] = []
    calls: list[tuple[int, int]] = []
    st = _run(face, url, lambda j: seen.append(j.body), lambda s: s.processed >= n, calls,
              concurrency=4)
    # No-op jobs take microseconds against a round trip of a fraction of a millisecond:
    # fetches took far more than the 4 slots, and got them.
    assert max(got for _, got in calls) > 4, calls
    assert st.processed == len(seen) == len(set(seen)) == n
    assert st.returned == st.lease_lost == 0
    assert q_empty(url)


@pytest.mark.parametrize("face", ["threads", "asyncio"])
def test_long_jobs_are_not_prefetched(redis_url: str, face: str) -> None:
    url = f"{redis_url}?queue={_name()}"
    n = 24
    with unifiedq.connect(url) as q:
        q.enqueue_many([b"%d" % i for i in range(n)])
    calls: list[tuple[int, int]] = []
    st = _run(face, url, lambda j: 0.05, lambda s: s.processed >= n, calls, concurrency=2)
    assert sum(got for _, got in calls) == n
    assert max(k for k, _ in calls) <= 2, calls  # never beyond the idle slots
    assert st.processed == n and st.returned == 0
    assert q_empty(url)


@pytest.mark.parametrize("face", ["threads", "asyncio"])
def test_jobs_that_turned_long_are_handed_back(redis_url: str, face: str) -> None:
    """Short jobs teach the worker to prefetch; then a burst of long ones arrives in one
    batch, and an idle slot's fetch takes many of them. Once the first long ones finish,
    those that would wait more than ``prefetch_wait_max`` go back to the queue, where other
    workers can have them; every job still runs exactly once."""
    url = f"{redis_url}?queue={_name()}"
    short, long_, pause, slots = 400, 24, 0.5, 4
    with unifiedq.connect(url) as q:
        q.enqueue_many([b"s%d" % i for i in range(short)])
    ran: Counter[bytes] = Counter()
    lock = threading.Lock()

    def handler(job: Job) -> float | None:
        with lock:
            ran[job.body] += 1
        return pause if job.body.startswith(b"L") else None

    calls: list[tuple[int, int]] = []
    back: list[int] = []
    mark: list[int] = []

    def burst(q: Any, stats: Any) -> None:
        wait_for(lambda: stats().processed == short, 30, "the short jobs")
        time.sleep(0.2)  # every slot is now waiting in one fetch
        mark.append(len(calls))  # the fetches from here on took long jobs
        q.enqueue_many([b"L%d" % i for i in range(long_)])
        wait_for(lambda: stats().processed > short, 10, "a long job done")
        end = time.monotonic() + 0.3  # before the slots finish their next long jobs
        while time.monotonic() < end:
            back.append(q.size())
            time.sleep(0.01)

    # 0.01 s: once a slot's mean time per job is 0.05 * 0.5 s, 4 slots start at most one
    # waiting job within it, so all but one go back.
    st = _run(face, url, handler, lambda s: s.processed >= short + long_, calls, during=burst,
              attrs={"prefetch_wait_max": 0.01}, concurrency=slots)
    # The fetch after the short jobs took much of the burst: far beyond the idle slots...
    took = max(got for _, got in calls[mark[0]:])
    assert took >= 12, calls
    # ...and what waited went back to the queue once the first long jobs finished: all but
    # the one kept and those other slots took meanwhile (at most one each).
    assert max(back) >= took - 2 * slots, (took, back)
    assert st.returned >= took - 2 * slots
    assert sorted(ran.values()) == [1] * (short + long_)  # each ran once: nothing lost
    assert st.processed == short + long_ and st.lease_lost == 0
    assert q_empty(url)


def test_auto_needs_release_to_prefetch() -> None:
    """Without RELEASE a prefetched job could not be handed back without an attempt: "auto"
    then takes one job per idle slot, like ``prefetch=0``."""
    q = unifiedq.connect(f"memory://{_name()}")
    n = 2000
    q.enqueue_many([b"x"] * n)
    calls: list[tuple[int, int]] = []
    _spy(q, calls)
    w = Worker(q, lambda j: None, concurrency=3, poll_interval=0.05)
    w.caps &= ~Capability.RELEASE
    with w:
        wait_for(lambda: w.stats().processed == n, 30, "every job")
    assert max(k for k, _ in calls) <= 3, calls
    q.close()


def test_prefetch_is_auto_by_default_and_checked() -> None:
    w = Worker("memory://x", lambda j: None)
    assert w.prefetch == "auto"
    w.queue.close()
    for bad in ("AUTO", "", None, -1, 1.5, True):
        with pytest.raises(unifiedq.InvalidArgument, match="prefetch must be 'auto'"):
            Worker("memory://x", lambda j: None, prefetch=bad)  # type: ignore[arg-type]
