"""FairQueue(scheduler="server") on Redis: one global weighted DRR shared by every consumer.

Real Redis (the session server), real consumer processes; ledgers are exact.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import subprocess
import sys
import time
import uuid

import pytest
import redis

import unifiedq
from unifiedq.fair import AsyncFairQueue, FairQueue, jain_index


def _tpl(redis_url: str, **opts: object) -> str:
    q = "&".join(f"{k}={v}" for k, v in opts.items())
    return f"{redis_url}?queue=fs-{uuid.uuid4().hex[:8]}.{{tenant}}" + (f"&{q}" if q else "")


def _take(fq: FairQueue, n: int) -> list[str]:
    out = []
    for _ in range(n):
        j = fq.dequeue(timeout=5)
        assert j is not None
        out.append(fq.tenant_of(j))
        fq.ack(j)
    return out


def test_weighted_drr_order_from_a_fresh_consumer(redis_url: str) -> None:
    tpl = _tpl(redis_url)
    with FairQueue(tpl, scheduler="server", weights={"gold": 3, "bronze": 0.5}) as prod:
        prod.enqueue_many([b"h"] * 300, tenant="heavy")
        for t in ("gold", "bronze", "a"):
            prod.enqueue_many([b"x"] * 100, tenant=t)
    # A consumer that declares nothing: the server knows who is backlogged, and the weights.
    with FairQueue(tpl, scheduler="server") as fq:
        got = collections.Counter(_take(fq, 110))
        # Per round of 2 bronze turns: heavy 2, gold 6, a 2, bronze 1 -> 11 jobs.
        assert got == {"heavy": 20, "gold": 60, "a": 20, "bronze": 10}
        assert fq.served()["gold"] == 60
        assert fq.size() == 600 - 110
        sizes = fq.sizes()  # tenants the server knows, though this consumer declared none
        assert sizes["heavy"] == 280 and sizes["gold"] == 40 and sizes["bronze"] == 90
        assert fq.purge() == 490 and fq.size() == 0 and fq.dequeue() is None


def test_idle_tenants_cost_nothing_and_leave_the_ring(redis_url: str) -> None:
    tpl = _tpl(redis_url)
    known = [f"t{i:05d}" for i in range(10_000)]
    with FairQueue(tpl, scheduler="server", tenants=known) as fq:
        for t in known[::1000]:
            fq.enqueue(b"x", tenant=t)
        keys = fq._server.keys  # type: ignore[union-attr]
        assert set(_take(fq, 10)) == set(known[::1000])
        assert fq.dequeue() is None
        # Every tenant found empty left the backlog: nothing is left to visit.
        cli = redis.Redis.from_url(redis_url)
        assert cli.zcard(keys.sfq) == 0 and cli.hlen(keys.tags) == 0
        # Handles are opened only for tenants that had jobs (not for the 10,000 known).
        assert len(fq._core.tenants) <= 11


def test_delayed_and_nacked_jobs_of_an_idle_tenant_come_back(redis_url: str) -> None:
    tpl = _tpl(redis_url)
    with FairQueue(tpl, scheduler="server") as fq:
        fq.enqueue(b"later", tenant="a", delay=1.0)
        assert fq.dequeue() is None  # not due: "a" is parked, not ringed
        j = fq.dequeue(timeout=5)
        assert j is not None and j.body == b"later"
        fq.nack(j, requeue=True)
        j2 = fq.dequeue(timeout=2)
        assert j2 is not None and j2.id == j.id and j2.attempt == 2
        fq.release(j2)
        j3 = fq.dequeue(timeout=2)
        assert j3 is not None and j3.id == j.id
        fq.ack(j3)
        assert fq.dequeue(timeout=0.2) is None


def test_server_scheduler_needs_redis_and_no_rate_limit(redis_url: str) -> None:
    with pytest.raises(unifiedq.InvalidArgument):
        FairQueue("memory://x.{tenant}", scheduler="server")
    from unifiedq.limits import KeyedLimiter
    with pytest.raises(unifiedq.InvalidArgument):
        FairQueue(_tpl(redis_url), scheduler="server", rate_limit=KeyedLimiter(1, 1))
    with pytest.raises(unifiedq.InvalidArgument):
        FairQueue(_tpl(redis_url), scheduler="global")  # type: ignore[arg-type]


def test_async_face_server_scheduler(redis_url: str) -> None:
    tpl = _tpl(redis_url)

    async def main() -> collections.Counter[str]:
        async with AsyncFairQueue(tpl, scheduler="server") as fq:
            await fq.enqueue_many([b"h"] * 50, tenant="heavy")
            await fq.enqueue_many([b"l"] * 10, tenant="light")
            got: collections.Counter[str] = collections.Counter()
            for j in await fq.dequeue_many(10):
                got[fq.tenant_of(j)] += 1
                await fq.ack(j)
            await fq.purge()
            return got

    assert asyncio.run(main()) == {"heavy": 5, "light": 5}


_CONSUMER = r"""
import sys, time
from unifiedq.fair import FairQueue
tpl, hold_after = sys.argv[1], int(sys.argv[2])
fq = FairQueue(tpl, scheduler="server", default_tenant=None)
n = 0
while True:
    j = fq.dequeue(timeout=1.5)
    if j is None:
        break
    n += 1
    if hold_after and n > hold_after:
        print("HELD", j.body.decode(), flush=True)  # leased, never settled: killed here
        continue
    print(time.time_ns(), fq.tenant_of(j), j.body.decode(), flush=True)
    fq.ack(j)
"""


def _spawn(tpl: str, hold_after: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _CONSUMER, tpl, str(hold_after)],
                            stdout=subprocess.PIPE, text=True)


def test_four_consumer_processes_share_one_schedule_exact_ledger(redis_url: str) -> None:
    tpl = _tpl(redis_url)
    tenants = ["heavy"] + [f"t{i}" for i in range(1, 10)]
    light = 60
    with FairQueue(tpl, scheduler="server", weights={"t1": 2}) as prod:
        for t in tenants:
            n = 10 * light if t == "heavy" else light * (2 if t == "t1" else 1)
            prod.enqueue_many([f"{t}-{i}".encode() for i in range(n)], tenant=t)
        total = prod.size()
        procs = [_spawn(tpl) for _ in range(4)]
        rows = []
        for p in procs:
            out, _ = p.communicate(timeout=120)
            rows += [line.split() for line in out.splitlines()]
        assert all(p.returncode == 0 for p in procs)
    bodies = collections.Counter(r[2] for r in rows)
    assert len(bodies) == total and max(bodies.values()) == 1  # each job exactly once
    # While every tenant is backlogged (the first 11 rounds' worth), shares follow weights.
    rows.sort(key=lambda r: int(r[0]))
    window = [r[1] for r in rows[: 11 * light // 2]]
    got = collections.Counter(window)
    w = {t: (2.0 if t == "t1" else 1.0) for t in tenants}
    share_err = max(abs(got[t] / len(window) - w[t] / 11) for t in tenants)
    assert jain_index(got[t] / w[t] for t in tenants) > 0.99
    assert share_err < 0.02, (share_err, got)


def test_sigkilled_consumer_leases_come_back_exactly_once(redis_url: str) -> None:
    # Short leases, no grace: the killed consumer's jobs are recovered by lease expiry, via
    # the parked set (their tenant may have nothing else waiting).
    tpl = _tpl(redis_url, visibility_timeout=1, lease_grace=0, heartbeat=0)
    rng = random.Random(os.getpid())
    with FairQueue(tpl, scheduler="server") as prod:
        for t in ("a", "b", "c"):
            prod.enqueue_many([f"{t}-{i}".encode() for i in range(20)], tenant=t)
        victim = _spawn(tpl, hold_after=rng.randint(1, 30))
        held: list[str] = []
        assert victim.stdout is not None
        acked_by_victim = []
        while not held:
            line = victim.stdout.readline()
            assert line, "the victim exited without holding a job"
            parts = line.split()
            if parts[0] == "HELD":
                held.append(parts[1])
            else:
                acked_by_victim.append(parts[2])
        victim.send_signal(signal.SIGKILL)
        rest, _ = victim.communicate(timeout=10)
        held += [ln.split()[1] for ln in rest.splitlines() if ln.startswith("HELD")]
        acked_by_victim += [ln.split()[2] for ln in rest.splitlines()
                            if not ln.startswith("HELD")]
        survivor = _spawn(tpl)
        out, _ = survivor.communicate(timeout=60)
        acked = [ln.split()[2] for ln in out.splitlines()]
        assert prod.size() == 0
    everything = collections.Counter(acked_by_victim + acked)
    assert len(everything) == 60 and max(everything.values()) == 1
    assert set(held) <= set(acked)  # the killed consumer's leases were recovered


def test_worker_over_the_server_scheduler_processes_everything_once(redis_url: str) -> None:
    import threading

    from unifiedq import Job
    from unifiedq.worker import Worker

    tpl = _tpl(redis_url)
    fq = FairQueue(tpl, scheduler="server")
    for t in ("a", "b", "c"):
        fq.enqueue_many([f"{t}-{i}".encode() for i in range(100)], tenant=t)
    done: collections.Counter[bytes] = collections.Counter()
    lock = threading.Lock()

    def handler(job: Job) -> None:
        with lock:
            done[job.body] += 1

    w = Worker(fq, handler, concurrency=4, poll_interval=0.05)
    w.start()
    deadline = time.monotonic() + 60
    while w.stats().processed < 300 and time.monotonic() < deadline:
        time.sleep(0.02)
    w.stop(grace=10)
    assert len(done) == 300 and max(done.values()) == 1
    assert fq.size() == 0
    fq.close()


def test_handles_of_idle_tenants_are_closed_but_not_while_holding_jobs(redis_url: str) -> None:
    tpl = _tpl(redis_url)
    with FairQueue(tpl, scheduler="server", idle_ttl=0.1) as fq:
        fq.enqueue(b"x", tenant="gone")
        held = fq.dequeue()
        assert held is not None
        time.sleep(0.25)
        fq.enqueue(b"y", tenant="other")  # a verb runs the forget pass
        assert "gone" in fq._core.tenants  # still holds a leased job: kept
        fq.ack(held)
        time.sleep(0.25)
        fq.enqueue(b"z", tenant="other")
        assert "gone" not in fq._core.tenants
        fq.purge()
