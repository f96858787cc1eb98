"""The worker's combined round trip on redis:// (issue 18): the acks waiting for their batch go
out in the same pipeline as the next fetch (``_ack_then_dequeue``). Exact: what it acks, what
it reports as lease-lost, what a failed pipeline leaves behind, and a SIGKILL ledger."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import unifiedq
from test_worker_batching import wait_for
from unifiedq import AsyncWorker, Job, Worker
from unifiedq._errors import BackendConnectionError

ROOT = Path(__file__).resolve().parent.parent


def _st(q: Any) -> dict[str, Any]:
    """The redis handle's ``stats()`` (not part of the typed protocol)."""
    out: dict[str, Any] = dict(q.stats())
    return out


def _name() -> str:
    return f"wp-{uuid.uuid4().hex[:10]}"


class Reports:
    """The ``settled`` callback: what the hook reported, and how often."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], BaseException | None]] = []

    def __call__(self, lost: list[str], error: BaseException | None) -> None:
        self.calls.append((sorted(lost), error))


def test_one_round_trip_acks_exactly_the_batch_then_takes(redis_url: str) -> None:
    q = unifiedq.connect(f"{redis_url}?queue={_name()}")
    try:
        q.enqueue_many([b"%d" % i for i in range(6)])
        first = q.dequeue_many(3)
        rep = Reports()
        rest = q._ack_then_dequeue(first, 10, rep)  # type: ignore[attr-defined]
        assert rep.calls == [([], None)]
        assert sorted(j.body for j in rest) == [b"3", b"4", b"5"]
        st = _st(q)
        assert st["active"] == 3 and st["pending"] == 0  # the acked three are gone
        # Nothing acked twice, nothing comes back: the other three ack normally.
        q.ack_many(rest)
        st = _st(q)
        assert st["active"] == 0 and q.size() == 0
        # An empty queue: the acks still go out, and no job comes back.
        q.enqueue(b"x")
        one = q.dequeue_many(5)
        rep2 = Reports()
        assert q._ack_then_dequeue(one, 5, rep2) == []  # type: ignore[attr-defined]
        assert rep2.calls == [([], None)] and _st(q)["active"] == 0
    finally:
        q.close()


def test_lost_leases_are_reported_and_the_rest_acked(redis_url: str) -> None:
    q = unifiedq.connect(f"{redis_url}?queue={_name()}")
    try:
        q.enqueue_many([b"a", b"b"])
        a, b = sorted(q.dequeue_many(2), key=lambda j: j.body)
        q.release(a)  # its lease is gone: back in pending, so acking this delivery must fail
        rep = Reports()
        again = q._ack_then_dequeue([a, b], 5, rep)  # type: ignore[attr-defined]
        assert rep.calls == [([a.id], None)]
        # Acks run before the take: b is acked, a (pending again) is taken by this call.
        assert [j.id for j in again] == [a.id]
        q.ack(again[0])
        assert _st(q)["active"] == 0 and q.size() == 0
    finally:
        q.close()


def test_refused_arguments_send_nothing(redis_url: str) -> None:
    q = unifiedq.connect(f"{redis_url}?queue={_name()}")
    try:
        q.enqueue_many([b"a", b"b"])
        jobs = q.dequeue_many(1)
        rep = Reports()
        with pytest.raises(unifiedq.InvalidArgument):
            q._ack_then_dequeue(jobs + jobs, 5, rep)  # type: ignore[attr-defined]
        assert rep.calls == []
        assert _st(q)["active"] == 1 and q.size() == 1  # nothing acked, nothing taken
    finally:
        q.close()


@pytest.mark.parametrize("face", ["threads", "asyncio"])
def test_worker_uses_it_and_counts_lease_lost_exactly(redis_url: str, face: str) -> None:
    """A worker whose queue has the hook acks through it; lost ids count as lease_lost."""
    name = _name()
    url = f"{redis_url}?queue={name}"
    n = 400
    with unifiedq.connect(url) as q:
        q.enqueue_many([b"%d" % i for i in range(n)])
    seen: list[bytes] = []
    used = [0]
    lock = threading.Lock()

    def wrap(w: Any) -> None:
        real = w.queue._ack_then_dequeue

        def spy(acks: list[Job], k: int, settled: Any) -> Any:
            used[0] += 1
            # Every 10th batch: the first job's lease is lost before the round trip (asynq's
            # requeue), so its ack must come back as lost and the job be taken again.
            if used[0] % 10 == 0:
                with unifiedq.connect(url) as other:
                    other.release(acks[0])
            return real(acks, k, settled)

        async def aspy(acks: list[Job], k: int, settled: Any) -> Any:
            used[0] += 1
            if used[0] % 10 == 0:
                async with unifiedq.connect_async(url) as other:
                    await other.release(acks[0])
            return await real(acks, k, settled)

        w.queue._ack_then_dequeue = aspy if face == "asyncio" else spy

    if face == "threads":
        def handler(job: Job) -> None:
            with lock:
                seen.append(job.body)

        # prefetch=0: one fetch per few jobs, so that many fetches carry acks.
        w = Worker(url, handler, concurrency=4, poll_interval=0.05, prefetch=0)
        w.ack_with_fetch = True
        wrap(w)
        with w:
            wait_for(lambda: w.stats().processed >= n + w.stats().lease_lost
                     and q_empty(url), 30, "every job handled")
        stats = w.stats()
    else:
        async def ahandler(job: Job) -> None:
            seen.append(job.body)

        async def main() -> Any:
            w = AsyncWorker(url, ahandler, concurrency=4, poll_interval=0.05, prefetch=0)
            w.ack_with_fetch = True
            wrap(w)
            async with w:
                end = time.monotonic() + 30
                while not (w.stats().processed >= n + w.stats().lease_lost and q_empty(url)):
                    assert time.monotonic() < end, "every job handled"
                    await asyncio.sleep(0.01)
            return w.stats()

        stats = asyncio.run(main())
    assert used[0] >= 10, "the combined round trip was not used"
    lost = stats.lease_lost
    assert lost >= 1
    # Exact: each lost ack is one extra run of that job, nothing else ran twice, none missing.
    assert stats.processed == len(seen) == n + lost
    assert {bytes(b) for b in seen} == {b"%d" % i for i in range(n)}


def q_empty(url: str) -> bool:
    with unifiedq.connect(url) as q:
        st = _st(q)
        return bool(st["active"] == 0 and st["pending"] == 0)


def test_failed_pipeline_acks_nothing_and_jobs_come_back(redis_url: str) -> None:
    """The round trip fails: the worker logs it, counts nothing as lost, and the jobs whose
    acks it carried come back after their lease (at least once), none lost."""
    name = _name()
    url = f"{redis_url}?queue={name}&visibility_timeout=1.5&heartbeat=false"
    n = 40
    with unifiedq.connect(url) as q:
        q.enqueue_many([b"%d" % i for i in range(n)])
    seen: list[bytes] = []
    lock = threading.Lock()
    failed: list[list[str]] = []

    def handler(job: Job) -> None:
        with lock:
            seen.append(job.body)

    w = Worker(url, handler, concurrency=4, poll_interval=0.05, lease_extend=30.0)
    w.ack_with_fetch = True
    real = w.queue._ack_then_dequeue  # type: ignore[attr-defined]

    def flaky(acks: list[Job], k: int, settled: Any) -> Any:
        if not failed:  # the first combined round trip breaks before anything is sent
            failed.append([j.id for j in acks])
            raise BackendConnectionError("connection reset (injected)")
        return real(acks, k, settled)

    w.queue._ack_then_dequeue = flaky  # type: ignore[attr-defined]
    with w:
        # Every job handled once, plus the failed batch's again after their 1.5 s lease.
        wait_for(lambda: bool(failed) and len(seen) >= n + len(failed[0]) and q_empty(url), 30,
                 "the failed batch to come back")
    stats = w.stats()
    assert failed and failed[0]
    assert stats.lease_lost == 0
    assert stats.processed == len(seen) == n + len(failed[0])
    counts = {b: seen.count(b) for b in set(seen)}
    assert set(counts) == {b"%d" % i for i in range(n)}
    with unifiedq.connect(url) as q:
        ids_twice = {b for b, c in counts.items() if c == 2}
        assert len(ids_twice) == len(failed[0])  # exactly the batch whose acks never left
        assert all(c <= 2 for c in counts.values())
        assert _st(q)["active"] == 0


_KILL_CHILD = textwrap.dedent("""
    import os, sys, time
    from unifiedq.worker import Worker
    url = sys.argv[1]
    def handler(job):
        time.sleep(0.001)
        os.write(1, b"GOT " + job.body + b"\\n")   # one write per line: no interleaving
    w = Worker(url, handler, concurrency=8, timeout=None)
    w.ack_with_fetch = True
    real = w.queue._ack_then_dequeue
    def spy(acks, k, settled):
        os.write(1, b"ACKS %d\\n" % len(acks))
        return real(acks, k, settled)
    w.queue._ack_then_dequeue = spy
    w.run()
""")


def test_sigkill_ledger_with_the_combined_round_trip(redis_url: str) -> None:
    """SIGKILL a worker mid-run: every job is handled before the kill and not redelivered
    (its ack went out), or comes back after the lease; none is lost, and only jobs the dead
    worker had taken come back as redeliveries."""
    name = _name()
    url = f"{redis_url}?queue={name}&visibility_timeout=1.5"
    n = 3000
    q = unifiedq.connect(url)
    q.enqueue_many([b"%d" % i for i in range(n)])
    p = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, url], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=ROOT)
    got: list[bytes] = []
    combined = 0
    try:
        assert p.stdout is not None
        while len(got) < 600:
            line = p.stdout.readline()
            assert line, p.stderr.read() if p.stderr else "child ended"
            if line.startswith(b"GOT "):
                got.append(line.split()[1])
            elif line.startswith(b"ACKS "):
                combined += 1
        p.send_signal(9)
        p.wait(10)
        rest = p.stdout.read()  # lines written before the kill
    finally:
        if p.poll() is None:
            p.kill()
    got += [ln.split()[1] for ln in rest.splitlines() if ln.startswith(b"GOT ")]
    assert combined > 0, "the combined round trip was not used"
    handled = set(got)
    assert len(handled) == len(got)  # no job ran twice in the child
    drained: dict[bytes, int] = {}
    end = time.monotonic() + 30
    while time.monotonic() < end:
        jobs = q.dequeue_many(100, timeout=0.5)
        for j in jobs:
            assert j.body not in drained, "a job was delivered twice after the kill"
            drained[j.body] = j.attempt
        if jobs:
            q.ack_many(jobs)
        elif _st(q)["active"] == 0 and q.size() == 0:
            break
    q.close()
    everything = {b"%d" % i for i in range(n)}
    assert handled | set(drained) == everything  # none lost
    redelivered = {b for b, a in drained.items() if a >= 2}
    # Only jobs the dead worker had leased come back as redeliveries; those it handled and
    # acked do not come back at all (handled and drained: its ack had not left yet).
    assert set(drained) & handled <= redelivered
    assert len(handled - set(drained)) > 0  # acks did reach Redis before the kill


# -- prefetch=N (a fixed number; the default, "auto", is in test_worker_prefetch_auto.py) --
@pytest.mark.parametrize("prefetch", [0, 3])
def test_prefetch_option_holds_at_most_that_many_waiting_jobs(prefetch: int) -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    q.enqueue_many([b"%d" % i for i in range(20)])
    gate = threading.Event()
    started: list[bytes] = []

    def handler(job: Job) -> None:
        started.append(job.body)
        gate.wait(10)

    w = Worker(q, handler, concurrency=2, prefetch=prefetch, poll_interval=0.05)
    w.start()
    try:
        wait_for(lambda: len(started) == 2, 10, "both slots busy")
        time.sleep(0.2)  # would a slot's fetch take more meanwhile?
        left = q.size()
        # Default: nothing waits for a busy slot. prefetch=3: some do (how many depends on
        # how many slots were idle at the fetch), never more than 3.
        assert left == 18 if not prefetch else 18 - prefetch <= left < 18
    finally:
        w.stop(0.0, wait=True)
        gate.set()
    st = w.stats()
    # Stopped with no grace: the running two and the waiting ones all go back.
    assert st.returned == 20 - left and st.processed == 0
    assert q.size() == 20
    q.close()


def test_prefetch_must_be_a_non_negative_int() -> None:
    for bad in (-1, 1.5, True):
        with pytest.raises(unifiedq.InvalidArgument):
            Worker("memory://x", lambda j: None, prefetch=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("face", ["threads", "asyncio"])
def test_prefetch_on_redis_exact(redis_url: str, face: str) -> None:
    url = f"{redis_url}?queue={_name()}"
    n = 2000
    with unifiedq.connect(url) as q:
        q.enqueue_many([b"%d" % i for i in range(n)])
    seen: list[bytes] = []
    if face == "threads":
        w = Worker(url, lambda j: seen.append(j.body), concurrency=4, prefetch=4,
                   poll_interval=0.05)
        with w:
            wait_for(lambda: w.stats().processed == n, 30, "every job")
        stats = w.stats()
    else:
        async def ahandler(job: Job) -> None:
            seen.append(job.body)

        async def main() -> Any:
            aw = AsyncWorker(url, ahandler, concurrency=4, prefetch=4, poll_interval=0.05)
            async with aw:
                end = time.monotonic() + 30
                while aw.stats().processed < n:
                    assert time.monotonic() < end
                    await asyncio.sleep(0.01)
            return aw.stats()

        stats = asyncio.run(main())
    assert stats.processed == len(seen) == n and len(set(seen)) == n
    assert stats.lease_lost == 0 and stats.returned == 0
    assert q_empty(url)
