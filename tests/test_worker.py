"""Worker runtime: accounting, retries, timeouts, leases, shutdown, signals, CLI, metrics."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import pytest

import unifiedq
from unifiedq import Capability, Job
from unifiedq._base import QueueBase
from unifiedq._job import EnqueueRequest
from unifiedq.drivers import memory
from unifiedq.testing.quic import Pki, ServerProcess
from unifiedq.worker import (
    ATTEMPT_HEADER,
    ERROR_HEADER,
    AsyncWorker,
    JsonLogFormatter,
    Middleware,
    Retry,
    RetryLater,
    Router,
    SkipRetry,
    Worker,
    worker_main,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = Retry(max_attempts=3, backoff=0.001, factor=2.0, jitter=0.5)


def _name() -> str:
    return f"w-{uuid.uuid4().hex[:10]}"


def wait_for(pred: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _fails(body: bytes, attempt: int, p: float = 0.3) -> bool:
    # Deterministic "random" failure per (job, attempt) so a run is reproducible.
    return random.Random(f"{body!r}/{attempt}").random() < p


@pytest.fixture(scope="module")
def quic_memory_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real ``unifiedq serve`` process over ``memory://`` (client certificates and all)."""
    srv = ServerProcess(Pki(tmp_path_factory.mktemp("pki"))).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(params=["memory", "redis", "faktory", "amqp", "quic"])
def url_factory(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Queue URLs on every landed driver with ACK (memory always; others via the rig)."""
    kind = request.param
    if kind == "memory":
        return lambda name: f"memory://{name}"
    if kind == "quic":
        srv: ServerProcess = request.getfixturevalue("quic_memory_server")
        return lambda name: srv.url(name, capabilities="memory")
    base = request.getfixturevalue(f"{kind}_url").split("?")[0]
    return lambda name: f"{base}?queue={name}"


# -- a real memory queue with capabilities taken away, to drive the fallback paths ------------
class Restricted(QueueBase):
    """memory:// without some capabilities. Without ACK it removes jobs on dequeue."""

    driver = "memory-restricted"

    def __init__(self, name: str, drop: Capability, **options: Any) -> None:
        super().__init__(name)
        self.inner = unifiedq.connect(f"memory://{name}", **options)
        self.capabilities = self.inner.capabilities & ~drop

    @classmethod
    def from_url(cls, url: Any, options: Mapping[str, object]) -> Self:
        raise NotImplementedError

    def _enqueue(self, req: EnqueueRequest) -> str:
        return self.inner._enqueue(req)

    def _dequeue(self, timeout: float | None) -> Job | None:
        job = self.inner._dequeue(timeout)
        if job is not None and Capability.ACK not in self.capabilities:
            self.inner._ack(job)  # at-most-once: gone from the queue once handed out
        return job

    def _ack(self, job: Job) -> None:
        self.inner._ack(job)

    def _nack(self, job: Job, requeue: bool, delay: float) -> None:
        self.inner._nack(job, requeue, delay)

    def _extend_lease(self, job: Job, seconds: float) -> None:
        self.inner._extend_lease(job, seconds)

    def _size(self) -> int:
        return self.inner._size()

    def _purge(self) -> int:
        return self.inner._purge()

    def _close(self) -> None:
        self.inner.close()


def drain(q: unifiedq.Queue) -> list[Job]:
    out = []
    while (j := q.dequeue(timeout=0)) is not None:
        out.append(j)
        if Capability.ACK in q.capabilities:
            q.ack(j)
    return out


# -- exactly-once accounting -------------------------------------------------------------------
def _accounting(url: str, dl_url: str, n: int, concurrency: int) -> None:
    q = unifiedq.connect(url)
    dl = unifiedq.connect(dl_url)
    bodies = [f"job-{i}".encode() for i in range(n)]
    for i in range(0, n, 1000):
        q.enqueue_many(bodies[i:i + 1000])
    done: collections.Counter[bytes] = collections.Counter()
    lock = threading.Lock()

    def handler(job: Job) -> None:
        if _fails(job.body, job.attempt):
            raise RuntimeError("random failure")
        with lock:
            done[job.body] += 1

    w = Worker(q, handler, concurrency=concurrency, retry=FAST, dead_letter=dl,
               poll_interval=0.05, seed=1)
    w.start()
    try:
        wait_for(lambda: w.stats().processed + w.stats().dead >= n, 120, "all jobs settled")
    finally:
        w.stop(grace=10)
    dead = drain(dl)
    st = w.stats()
    dead_bodies = collections.Counter(j.body for j in dead)
    assert max(done.values()) == 1, "a job succeeded twice"
    assert max(dead_bodies.values(), default=1) == 1, "a job was dead-lettered twice"
    assert not set(done) & set(dead_bodies), "a job both succeeded and died"
    assert set(done) | set(dead_bodies) == set(bodies), "jobs were lost"
    # Every dead job failed exactly max_attempts times, and says so.
    expected_dead = {b for b in bodies if all(_fails(b, a) for a in (1, 2, 3))}
    assert set(dead_bodies) == expected_dead
    for j in dead:
        assert j.headers["x-unifiedq-attempts"] == "3"
        assert j.headers[ERROR_HEADER].startswith("RuntimeError: random failure")
    assert st.processed == len(done) and st.dead == len(dead)
    assert st.failed == st.retried + st.dead
    assert q.size() == 0
    q.close()
    dl.close()


def test_accounting_10k_memory() -> None:
    name = _name()
    _accounting(f"memory://{name}", f"memory://{name}-dead", 10_000, 8)


def test_accounting_on_landed_drivers(url_factory: Callable[[str], str]) -> None:
    name = _name()
    # memory gets its 10k run above; remote drivers do a smaller but identical run.
    n = {"memory": 2_000, "redis": 2_000}.get(url_factory("x").split(":")[0], 500)
    _accounting(url_factory(name), url_factory(name + "-dead"), n, 8)


def test_accounting_async_memory() -> None:
    name = _name()
    n = 3_000

    async def main() -> tuple[collections.Counter[bytes], list[Job], int]:
        q = unifiedq.connect_async(f"memory://{name}")
        dl = unifiedq.connect_async(f"memory://{name}-dead")
        await q.enqueue_many([f"a-{i}".encode() for i in range(n)])
        done: collections.Counter[bytes] = collections.Counter()

        async def handler(job: Job) -> None:
            await asyncio.sleep(0)
            if _fails(job.body, job.attempt):
                raise RuntimeError("random failure")
            done[job.body] += 1

        w = AsyncWorker(q, handler, concurrency=16, retry=FAST, dead_letter=dl,
                        poll_interval=0.05)
        w.start()
        while w.stats().processed + w.stats().dead < n:
            await asyncio.sleep(0.02)
        await w.stop()
        dead = []
        while (j := await dl.dequeue(timeout=0)) is not None:
            dead.append(j)
            await dl.ack(j)
        left = await q.size()
        await q.aclose()
        await dl.aclose()
        return done, dead, left

    done, dead, left = asyncio.run(main())
    assert max(done.values()) == 1
    dead_b = {j.body for j in dead}
    assert len(dead_b) == len(dead) and not dead_b & set(done)
    assert len(done) + len(dead) == n and left == 0


# -- retries, routing, dead-letter -------------------------------------------------------------
def test_retry_backoff_then_success_uses_delayed_nack() -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    q.enqueue(b"x")
    seen: list[tuple[int, float]] = []

    def h(job: Job) -> None:
        seen.append((job.attempt, time.monotonic()))
        if job.attempt < 3:
            raise ValueError("not yet")

    with Worker(q, h, retry=Retry(max_attempts=5, backoff=0.2, factor=2, jitter=0),
                poll_interval=0.05) as w:
        wait_for(lambda: w.stats().processed == 1, 20)
    assert [a for a, _ in seen] == [1, 2, 3]
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(seen)]
    assert gaps[0] >= 0.19 and gaps[1] >= 0.39  # backoff 0.2 then 0.4 (no jitter)
    assert w.stats().retried == 2


def test_retry_delay_jitter_bounds() -> None:
    r = Retry(backoff=1.0, factor=2.0, max_backoff=10.0, jitter=0.5)
    rng = random.Random(3)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 10.0), (9, 10.0)]:
        ds = [r.delay(attempt, rng) for _ in range(200)]
        assert min(ds) >= base * 0.5 and max(ds) <= base
        assert max(ds) - min(ds) > base * 0.2  # jitter actually spreads them
    with pytest.raises(unifiedq.InvalidArgument):
        Retry(max_attempts=0)
    with pytest.raises(unifiedq.InvalidArgument):
        Retry(jitter=2)


def test_router_skipretry_retrylater_and_nohandler() -> None:
    name = _name()
    q = unifiedq.connect(f"memory://{name}")
    dl = unifiedq.connect(f"memory://{name}-dead")
    app = Router()
    calls: collections.Counter[str] = collections.Counter()

    @app.handler("ok")
    def ok(job: Job) -> None:
        calls["ok"] += 1

    @app.handler("skip")
    def skip(job: Job) -> None:
        calls["skip"] += 1
        raise SkipRetry("bad input")

    @app.handler("later", max_attempts=2)
    def later(job: Job) -> None:
        calls["later"] += 1
        raise RetryLater(0.01)

    with pytest.raises(unifiedq.InvalidArgument):
        app.add("ok", ok)
    for t in ("ok", "skip", "later", "unknown"):
        q.enqueue(t.encode(), headers={"type": t})
    with Worker(q, app, dead_letter=dl, retry=FAST, poll_interval=0.05) as w:
        wait_for(lambda: w.stats().processed + w.stats().dead == 4, 20)
    assert calls == {"ok": 1, "skip": 1, "later": 2}
    dead = {j.body: j for j in drain(dl)}
    assert set(dead) == {b"skip", b"later", b"unknown"}
    assert "SkipRetry: bad input" in dead[b"skip"].headers[ERROR_HEADER]
    assert "NoHandler" in dead[b"unknown"].headers[ERROR_HEADER]
    assert dead[b"later"].headers["type"] == "later"  # original headers are kept
    assert dead[b"later"].headers["x-unifiedq-attempts"] == "2"


def test_dead_letter_without_queue_uses_driver_nack() -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    q.enqueue(b"x")

    def boom(job: Job) -> None:
        raise RuntimeError("always")

    with Worker(q, boom, max_attempts=2, retry=FAST, poll_interval=0.05) as w:
        wait_for(lambda: w.stats().dead == 1, 20)
    assert q.size() == 0 and w.stats().failed == 2


def test_middleware_hooks_and_before_failure() -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    events: list[tuple[str, bytes, object]] = []

    class Rec(Middleware):
        def before(self, job: Job) -> None:
            events.append(("before", job.body, job.attempt))
            if job.body == b"reject" and job.attempt == 1:
                raise PermissionError("not allowed on attempt 1")

        def after(self, job: Job, duration: float) -> None:
            events.append(("after", job.body, duration >= 0))

        def on_error(self, job: Job, exc: BaseException, will_retry: bool) -> None:
            events.append(("error", job.body, will_retry))
            raise RuntimeError("a broken hook must not break the worker")

    q.enqueue(b"fine")
    q.enqueue(b"reject")
    with Worker(q, lambda job: None, middleware=[Rec()], retry=FAST, poll_interval=0.05) as w:
        wait_for(lambda: w.stats().processed == 2, 20)
    assert ("after", b"fine", True) in events
    assert ("error", b"reject", True) in events
    assert ("before", b"reject", 2) in events and ("after", b"reject", True) in events


# -- timeouts and leases -----------------------------------------------------------------------
def test_hung_handler_is_timed_out_and_retried_and_never_acks_late() -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    q.enqueue(b"hang")
    q.enqueue(b"other")
    release = threading.Event()
    runs: list[tuple[bytes, int, str]] = []

    def h(job: Job) -> None:
        runs.append((job.body, job.attempt, threading.current_thread().name))
        if job.body == b"hang" and job.attempt == 1:
            release.wait(30)  # hangs far past the timeout

    w = Worker(q, h, concurrency=1, timeout=1.0, retry=FAST, poll_interval=0.05)
    w.start()
    try:
        wait_for(lambda: w.stats().processed == 2, 20, "retry and the other job")
        st = w.stats()
        assert st.timed_out == 1 and st.retried == 1 and st.failed == 1
        # The single slot kept working on a fresh thread while the first one is stuck.
        assert (b"hang", 2) in [(b, a) for b, a, _ in runs]
        stuck = runs[0][2]
        assert any(t.name == stuck and t.is_alive() for t in threading.enumerate())
    finally:
        release.set()
        w.stop(grace=5)
    time.sleep(0.1)  # the stuck call returns now; it must not ack or count anything
    st = w.stats()
    assert st.processed == 2 and st.lease_lost == 0 and q.size() == 0


def test_async_hung_coroutine_is_cancelled_and_retried() -> None:
    async def main() -> tuple[list[int], Any]:
        q = unifiedq.connect_async(f"memory://{_name()}")
        await q.enqueue(b"x")
        attempts: list[int] = []

        async def h(job: Job) -> None:
            attempts.append(job.attempt)
            if job.attempt == 1:
                await asyncio.sleep(3600)

        w = AsyncWorker(q, h, timeout=1.0, retry=FAST, poll_interval=0.05)
        w.start()
        while w.stats().processed < 1:
            await asyncio.sleep(0.02)
        await w.stop()
        await q.aclose()
        return attempts, w.stats()

    attempts, st = asyncio.run(main())
    assert attempts == [1, 2] and st.timed_out == 1 and st.processed == 1


def test_lease_is_extended_while_a_slow_handler_runs() -> None:
    name = _name()
    q = unifiedq.connect(f"memory://{name}", visibility_timeout=1.5)
    q.enqueue(b"slow")
    runs: list[int] = []

    def h(job: Job) -> None:
        runs.append(job.attempt)
        time.sleep(4.5)  # three lease lengths

    # A second slot is idle and would get the job if its lease ran out. Heartbeats every
    # 0.5 s leave a 1 s margin for a loaded machine.
    with Worker(q, h, concurrency=2, lease_extend=1.5, timeout=30, poll_interval=0.05) as w:
        wait_for(lambda: w.stats().processed == 1, 20)
    assert runs == [1] and w.stats().lease_lost == 0


def test_without_lease_extension_a_slow_job_is_redelivered() -> None:
    # The converse of the test above, so that it can fail: same setup minus LEASE_EXTEND.
    name = _name()
    q = Restricted(name, Capability.LEASE_EXTEND, visibility_timeout=0.5)
    q.enqueue(b"slow")
    runs: list[int] = []

    def h(job: Job) -> None:
        runs.append(job.attempt)
        time.sleep(1.5)

    with Worker(q, h, concurrency=2, timeout=10, poll_interval=0.05) as w:
        wait_for(lambda: len(runs) >= 2, 20)
        wait_for(lambda: w.stats().processed >= 1, 20)
    assert runs[:2] == [1, 2] and w.stats().lease_lost >= 1


# -- drivers without ACK / DELAY ---------------------------------------------------------------
def test_no_ack_driver_retries_by_reenqueue_with_attempt_header() -> None:
    name = _name()
    q = Restricted(name, Capability.ACK | Capability.DELAY | Capability.LEASE_EXTEND)
    q.enqueue(b"x")
    seen: list[tuple[int, str | None]] = []

    def h(job: Job) -> None:
        seen.append((job.attempt, job.headers.get(ATTEMPT_HEADER)))
        if len(seen) < 3:
            raise RuntimeError("again")

    with Worker(q, h, retry=Retry(max_attempts=5, backoff=0.05, jitter=0),
                poll_interval=0.05) as w:
        wait_for(lambda: w.stats().processed == 1, 20)
    # Attempts come from the header the worker wrote on each re-enqueued copy.
    assert seen == [(1, None), (2, "2"), (3, "3")]
    assert q.size() == 0


def test_accounting_on_shm_without_ack_or_headers() -> None:
    """shm:// has no ACK, DELAY or HEADERS: retries are re-enqueued copies whose attempt
    numbers the worker tracks by the new job id; the dead set must still be exact."""
    name = _name()
    q = unifiedq.connect(f"shm://{name}?capacity=2048&slot_size=64")
    try:
        n = 1000
        bodies = [f"s{i}".encode() for i in range(n)]
        for b in bodies:
            q.enqueue(b)
        dl = unifiedq.connect(f"memory://{name}-dead")
        done: collections.Counter[bytes] = collections.Counter()
        lock = threading.Lock()

        def h(job: Job) -> None:
            if _fails(job.body, job.attempt):
                raise RuntimeError("random failure")
            with lock:
                done[job.body] += 1

        w = Worker(q, h, concurrency=4, retry=FAST, dead_letter=dl, poll_interval=0.05)
        w.start()
        try:
            wait_for(lambda: w.stats().processed + w.stats().dead >= n, 60)
        finally:
            w.stop(grace=10)
        dead = {j.body for j in drain(dl)}
        assert max(done.values()) == 1 and not dead & set(done)
        assert set(done) | dead == set(bodies)
        assert dead == {b for b in bodies if all(_fails(b, a) for a in (1, 2, 3))}
    finally:
        unlink = getattr(q, "unlink", None)
        if unlink is not None:
            unlink()
        q.close()


def test_ack_without_delay_holds_the_retry_locally() -> None:
    q = Restricted(_name(), Capability.DELAY)
    q.enqueue(b"x")
    times: list[float] = []

    def h(job: Job) -> None:
        times.append(time.monotonic())
        if len(times) == 1:
            raise RuntimeError("once")

    with Worker(q, h, retry=Retry(backoff=0.3, jitter=0), poll_interval=0.05) as w:
        wait_for(lambda: w.stats().processed == 1, 20)
    assert times[1] - times[0] >= 0.29


def test_no_ack_graceful_shutdown_reenqueues_unfinished() -> None:
    name = _name()
    q = Restricted(name, Capability.ACK | Capability.LEASE_EXTEND)
    q.enqueue_many([b"a", b"b"])
    started = threading.Event()
    release = threading.Event()

    def h(job: Job) -> None:
        started.set()
        release.wait(30)

    w = Worker(q, h, concurrency=2, poll_interval=0.05)
    w.start()
    wait_for(lambda: w.stats().in_flight == 2, 20)
    w.stop(grace=0.2)
    release.set()
    assert w.stats().returned == 2
    assert sorted(j.body for j in drain(q)) == [b"a", b"b"]


# -- graceful shutdown -------------------------------------------------------------------------
def test_stop_lets_in_flight_finish_within_grace() -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    q.enqueue_many([str(i).encode() for i in range(50)])
    done: list[bytes] = []

    def h(job: Job) -> None:
        time.sleep(0.2)
        done.append(job.body)

    w = Worker(q, h, concurrency=4, poll_interval=0.05)
    w.start()
    wait_for(lambda: len(done) >= 4, 20)
    w.stop(grace=10)
    st = w.stats()
    assert st.returned == 0 and st.processed == len(done)
    left = drain(q)
    assert sorted(done + [j.body for j in left]) == sorted(str(i).encode() for i in range(50))


def test_stop_after_grace_returns_running_jobs() -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    q.enqueue_many([b"a", b"b", b"c"])
    release = threading.Event()

    def h(job: Job) -> None:
        release.wait(30)

    w = Worker(q, h, concurrency=2, poll_interval=0.05)
    w.start()
    wait_for(lambda: w.stats().in_flight == 2, 20)
    t0 = time.monotonic()
    w.stop(grace=0.3)
    assert time.monotonic() - t0 < 10
    release.set()
    assert w.stats().returned == 2 and w.stats().processed == 0
    assert sorted(j.body for j in drain(q)) == [b"a", b"b", b"c"]


_SIGTERM_CHILD = textwrap.dedent("""
    import json, sys, threading, time
    import unifiedq
    from unifiedq.worker import Worker
    n = int(sys.argv[1])
    q = unifiedq.connect("memory://sigterm")
    q.enqueue_many([str(i).encode() for i in range(n)])
    done = []
    lock = threading.Lock()
    def handler(job):
        time.sleep(0.01)
        with lock:
            done.append(job.body.decode())
        if len(done) == 20:
            print("PROGRESS", flush=True)
    w = Worker(q, handler, concurrency=4, grace=10, poll_interval=0.05)
    w.run()   # returns after SIGTERM
    left = []
    while (j := q.dequeue(timeout=0)) is not None:
        left.append(j.body.decode()); q.ack(j)
    print(json.dumps({"done": done, "left": left, "stats": w.stats().returned}), flush=True)
""")


def test_sigterm_mid_run_loses_nothing_in_a_real_process() -> None:
    n = 2000
    p = subprocess.Popen([sys.executable, "-c", _SIGTERM_CHILD, str(n)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "PROGRESS"
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert len(res["done"]) == len(set(res["done"]))
    assert sorted(res["done"] + res["left"], key=int) == [str(i) for i in range(n)]
    assert 20 <= len(res["done"]) < n  # it really was stopped mid-run


# -- cross-process crash (needs a shared backend) ----------------------------------------------
_CRASH_CHILD = textwrap.dedent("""
    import sys, time
    import unifiedq
    from unifiedq.worker import Worker
    url = sys.argv[1]
    def handler(job):
        # One write per line: print() writes the text and the newline separately, and
        # three threads printing at once would interleave them.
        sys.stdout.write(f"GOT {job.body.decode()}\\n")
        sys.stdout.flush()
        time.sleep(3600)     # never finishes: we get SIGKILLed
    Worker(url, handler, concurrency=3, lease_extend=3.0, timeout=None).run()
""")


def test_sigkill_worker_jobs_come_back_within_the_lease(redis_url: str) -> None:
    name = _name()
    # A short lease and the driver's own heartbeat off: only the worker keeps leases alive.
    url = f"{redis_url}?queue={name}&visibility_timeout=3&heartbeat=false"
    q = unifiedq.connect(url)
    q.enqueue_many([b"1", b"2", b"3"])
    p = subprocess.Popen([sys.executable, "-c", _CRASH_CHILD, url], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert p.stdout is not None and p.stderr is not None
        lines = [p.stdout.readline() for _ in range(3)]
        assert all(lines), p.stderr.read() if p.poll() is not None else lines
        assert all(len(line.split()) == 2 for line in lines), lines
        got = {line.split()[1] for line in lines}
        time.sleep(4.5)  # 1.5 leases: the worker's heartbeats must keep the jobs leased
        assert q.dequeue(timeout=0) is None, "a lease expired while its worker was alive"
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        killed = time.monotonic()
    finally:
        if p.poll() is None:
            p.kill()
    seen: dict[bytes, int] = {}
    while len(seen) < 3 and time.monotonic() - killed < 60:
        j = q.dequeue(timeout=1)
        if j is not None:
            seen[j.body] = j.attempt
            q.ack(j)
    back = time.monotonic() - killed
    assert {k.decode() for k in seen} == got == {"1", "2", "3"}
    assert all(a >= 2 for a in seen.values())  # redeliveries, not fresh copies
    # Not a speed assertion, just far from "never": default leases are 30 s.
    assert back < 30, f"jobs took {back:.1f}s to come back after a 3s lease"
    q.close()


# -- observability -----------------------------------------------------------------------------
def test_structured_json_logs(caplog: pytest.LogCaptureFixture) -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    q.enqueue(b"x", headers={"type": "t"})
    caplog.set_level(logging.INFO, logger="unifiedq.worker")
    with Worker(q, lambda j: None, poll_interval=0.05) as w:
        wait_for(lambda: w.stats().processed == 1, 20)
    rec = next(r for r in caplog.records if getattr(r, "event", "") == "job_done")
    doc = json.loads(JsonLogFormatter().format(rec))
    assert doc["event"] == "job_done" and doc["job_type"] == "t" and doc["driver"] == "memory"
    assert doc["attempt"] == 1 and doc["queue"] == q.name and doc["duration"] >= 0


def test_prometheus_metrics() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from unifiedq.metrics import PrometheusMetrics

    reg = prometheus_client.CollectorRegistry()
    name = _name()
    q = unifiedq.connect(f"memory://{name}")
    q.enqueue_many([b"ok", b"bad"])

    def h(job: Job) -> None:
        if job.body == b"bad":
            raise SkipRetry("no")

    with Worker(q, h, metrics=PrometheusMetrics(reg), depth_interval=0.05,
                poll_interval=0.05) as w:
        wait_for(lambda: w.stats().processed + w.stats().dead == 2, 20)
        time.sleep(0.2)

    def val(metric: str, **labels: str) -> float | None:
        v = reg.get_sample_value(metric, {"queue": name, "driver": "memory", **labels})
        return None if v is None else float(v)

    assert val("unifiedq_jobs_processed_total") == 1
    assert val("unifiedq_jobs_failed_total") == 1
    assert val("unifiedq_jobs_dead_total") == 1
    assert val("unifiedq_handler_duration_seconds_count") == 2
    assert val("unifiedq_jobs_in_flight") == 0
    assert val("unifiedq_queue_depth") == 0


# -- command line ------------------------------------------------------------------------------
def test_worker_main_bad_target_and_args() -> None:
    assert worker_main(["nomodule_xyz:app", "--url", "memory://x"]) == 2
    assert worker_main(["json:nothing_here", "--url", "memory://x"]) == 2
    assert worker_main(["json:dumps", "--url", "nope://x"]) != 0
    assert worker_main(["--url", "memory://x"]) == 2  # missing APP


def test_worker_main_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "myjobs.py").write_text(textwrap.dedent("""
        import sys
        from unifiedq import connect
        from unifiedq.worker import Router
        app = Router()
        q = connect("memory://cli")
        for i in range(5):
            q.enqueue(str(i).encode(), headers={"type": "echo"})
        @app.handler("echo")
        def echo(job):
            sys.stdout.write(f"DID {job.body.decode()}\\n")
            sys.stdout.flush()
    """))
    code = ("import sys; from unifiedq.worker import worker_main; "
            "sys.exit(worker_main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT / 'src'}"}
    p = subprocess.Popen([sys.executable, "-c", code, "myjobs:app", "--url", "memory://cli",
                          "--concurrency", "2", "--log-json"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        did = sorted(p.stdout.readline().split()[1] for _ in range(5))
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert did == ["0", "1", "2", "3", "4"]
    assert p.returncode == 0, err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "worker_start" in events and events[-1] == "worker_stopped"


def test_bad_arguments_fail_fast() -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    with pytest.raises(unifiedq.InvalidArgument):
        Worker(q, lambda j: None, concurrency=0)
    with pytest.raises(unifiedq.InvalidArgument):
        Worker(q, "not callable")  # type: ignore[arg-type]
    with pytest.raises(unifiedq.InvalidArgument, match="source must be"):
        Worker(42, lambda j: None)  # type: ignore[arg-type]
    with pytest.raises(unifiedq.InvalidArgument, match="dead_letter must be"):
        Worker(q, lambda j: None, dead_letter=42)  # type: ignore[arg-type]
    with pytest.raises(unifiedq.InvalidArgument, match="AsyncQueue"):
        AsyncWorker(q, lambda j: None)  # type: ignore[arg-type]  # a blocking handle
    with pytest.raises(unifiedq.InvalidArgument):
        Worker(q, lambda j: None, timeout=-1)

    async def ah(job: Job) -> None: ...

    with pytest.raises(unifiedq.InvalidArgument):
        Worker(q, ah).start()


@pytest.fixture(autouse=True)
def _no_leaked_memory_queues() -> Iterator[None]:
    yield
    memory.reset()


@pytest.mark.parametrize("face", ["sync", "async"])
def test_idle_housekeeper_does_not_spin_without_lease_extend(face: str) -> None:
    # Regression: without LEASE_EXTEND the housekeeper never advanced its next beat, so once
    # lease_extend / 3 had passed it looped without waiting (a core at 100% while idle).
    from unifiedq import AsyncWorker

    q = Restricted(_name(), Capability.LEASE_EXTEND)
    if face == "sync":
        w = Worker(q, lambda job: None, lease_extend=0.03, poll_interval=0.05)
        w.start()
        time.sleep(0.1)  # past lease_extend / 3
        cpu0 = time.process_time()
        time.sleep(1.0)
        used = time.process_time() - cpu0
        w.stop(0)
    else:
        async def main() -> float:
            aq = unifiedq.connect_async(f"memory://{_name()}")
            aw = AsyncWorker(aq, lambda job: None, lease_extend=0.03, poll_interval=0.05)
            # memory:// has LEASE_EXTEND: take it away on the async face's view of it.
            aw.caps = aw.caps & ~Capability.LEASE_EXTEND
            aw.start()
            await asyncio.sleep(0.1)
            c0 = time.process_time()
            await asyncio.sleep(1.0)
            u = time.process_time() - c0
            await aw.stop(0)
            await aq.aclose()
            return u
        used = asyncio.run(main())
    q.close()
    # Measured: an idle worker uses < 0.01 s of CPU in that second; the spinning one 0.26 s.
    assert used < 0.1, f"idle worker used {used:.2f} s of CPU in 1 s"


def test_signal_during_start_still_waits_for_every_slot(
        caplog: pytest.LogCaptureFixture) -> None:
    # Regression: a SIGTERM handled on the main thread while start() was still spawning the
    # slot threads ran the shutdown over the slots spawned so far (none), so the worker closed
    # its queue and reported "worker stopped" while slots were still fetching from it.
    caplog.set_level(logging.INFO, logger="unifiedq.worker")
    for round_ in range(20):
        url = f"memory://sigstart-{uuid.uuid4().hex[:8]}"
        feed = unifiedq.connect(url)
        feed.enqueue(b"first")
        def handler(job: Job, sent: list[int] = []) -> None:  # noqa: B006 (one per round)
            if not sent:  # the first job: SIGTERM ourselves while the slots are starting
                sent.append(1)
                os.kill(os.getpid(), signal.SIGTERM)

        w = Worker(url, handler, concurrency=16, poll_interval=0.05)
        caplog.clear()
        w.run()
        assert not [t for t in w._slots if not t.done()], f"round {round_}: slot alive"
        events = [getattr(r, "event", None) for r in caplog.records]
        assert "fetch_error" not in events, f"round {round_}: {events}"
        assert events[-1] == "worker_stopped"
        feed.close()
