"""FairQueue / AsyncFairQueue: weighted DRR order, dynamic tenants, routing, limits, workers."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

import unifiedq
from unifiedq import Capability, Job
from unifiedq.drivers import memory
from unifiedq.fair import AsyncFairQueue, FairQueue, jain_index
from unifiedq.limits import KeyedLimiter, TokenBucket
from unifiedq.worker import Worker


def _base() -> str:
    return f"fq-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["memory", "redis"])
def template(request: pytest.FixtureRequest) -> str:
    """A sub-queue URL template on each landed driver."""
    b = _base()
    if request.param == "memory":
        return f"memory://{b}.{{tenant}}"
    return f"{request.getfixturevalue('redis_url')}?queue={b}.{{tenant}}"


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    memory.reset()


def take(fq: FairQueue, n: int) -> list[str]:
    out = []
    for _ in range(n):
        job = fq.dequeue(timeout=5)
        assert job is not None
        out.append(fq.tenant_of(job))
        fq.ack(job)
    return out


def test_equal_weights_share_equally_whatever_the_backlog(template: str) -> None:
    with FairQueue(template) as fq:
        fq.enqueue_many([b"h"] * 300, tenant="heavy")
        for t in ("a", "b"):
            fq.enqueue_many([b"l"] * 30, tenant=t)
        got = collections.Counter(take(fq, 60))
        assert got == {"heavy": 20, "a": 20, "b": 20}
        # Once the light tenants are empty the heavy one gets everything: work-conserving.
        got2 = collections.Counter(take(fq, 60))
        assert got2["heavy"] == 40 and got2["a"] == 10 and got2["b"] == 10


def test_round_robin_interleaves_tenants() -> None:
    fq = FairQueue(f"memory://{_base()}.{{tenant}}")
    fq.enqueue_many([b"A1", b"A2", b"A3"], tenant="A")
    fq.enqueue_many([b"B1", b"B2", b"B3"], tenant="B")
    bodies = []
    for _ in range(6):
        j = fq.dequeue()
        assert j is not None
        bodies.append(j.body)
        fq.ack(j)
    # asynq #175: campaign A1, B1, A2, B2 ... instead of A1, A2, A3, B1 ...
    assert bodies == [b"A1", b"B1", b"A2", b"B2", b"A3", b"B3"]


def test_weights_give_proportional_shares(template: str) -> None:
    with FairQueue(template, weights={"gold": 3, "silver": 1, "bronze": 0.5}) as fq:
        for t in ("gold", "silver", "bronze"):
            fq.enqueue_many([b"x"] * 400, tenant=t)
        got = collections.Counter(take(fq, 450))
    assert abs(got["gold"] - 300) <= 3 and abs(got["silver"] - 100) <= 3
    assert abs(got["bronze"] - 50) <= 3
    assert jain_index([got["gold"] / 3, got["silver"] / 1, got["bronze"] / 0.5]) > 0.999


def test_idle_tenant_gets_no_saved_up_credit() -> None:
    fq = FairQueue(f"memory://{_base()}.{{tenant}}", weights={"a": 1, "b": 1})
    fq.enqueue_many([b"a"] * 50, tenant="a")
    assert collections.Counter(take(fq, 20)) == {"a": 20}  # b idle the whole time
    fq.enqueue_many([b"b"] * 50, tenant="b")
    # b does not get a burst for the 20 rounds it was idle: strict alternation follows.
    assert collections.Counter(take(fq, 20)) == {"a": 10, "b": 10}


def test_new_tenant_joins_and_idle_one_is_forgotten() -> None:
    fq = FairQueue(f"memory://{_base()}.{{tenant}}", weights={"a": 1}, idle_ttl=0.1)
    fq.enqueue_many([b"x"] * 40, tenant="a")
    take(fq, 5)
    fq.enqueue_many([b"x"] * 10, tenant="new")
    assert "new" in fq.tenants
    got = collections.Counter(take(fq, 20))
    assert got == {"a": 10, "new": 10}
    take(fq, 3)  # a still has work; scans find "new" empty (that starts its idle clock)
    time.sleep(0.15)
    take(fq, 1)  # a scan notices "new" has been empty past idle_ttl
    assert "new" not in fq.tenants and "a" in fq.tenants  # configured tenants stay
    fq.close()


def test_discover_callable_finds_tenants_enqueued_elsewhere() -> None:
    base = _base()
    known: list[str] = []
    fq = FairQueue(f"memory://{base}.{{tenant}}", discover=lambda: list(known),
                   discover_interval=0.0)
    # Another producer (here: a plain handle) writes to a tenant's sub-queue directly.
    unifiedq.connect(f"memory://{base}.zed").enqueue(b"z")
    assert fq.dequeue() is None
    known.append("zed")
    job = fq.dequeue(timeout=2)
    assert job is not None and fq.tenant_of(job) == "zed"


def test_routing_headers_and_settling(template: str) -> None:
    with FairQueue(template, default_tenant=None) as fq:
        with pytest.raises(unifiedq.InvalidArgument):
            fq.enqueue(b"no tenant")
        with pytest.raises(unifiedq.InvalidArgument):
            fq.enqueue(b"x", tenant="bad tenant!")
        with pytest.raises(unifiedq.UnsupportedOperation):
            fq.enqueue(b"x", tenant="a", job_id="mine")
        fq.enqueue(b"1", headers={"tenant": "acme", "type": "t"})
        j = fq.dequeue(timeout=5)
        assert j is not None and fq.tenant_of(j) == "acme"
        assert j.headers["tenant"] == "acme" and j.headers["type"] == "t"
        fq.nack(j)
        j2 = fq.dequeue(timeout=5)
        assert j2 is not None and j2.id == j.id and j2.attempt == 2
        fq.extend_lease(j2, 10)
        fq.ack(j2)
        assert fq.size() == 0
        other = unifiedq.connect(f"memory://{_base()}")
        other.enqueue(b"o")
        foreign = other.dequeue()
        assert foreign is not None
        with pytest.raises(unifiedq.WrongQueue):
            fq.ack(foreign)
        assert Capability.BLOCKING_DEQUEUE in fq.capabilities
        assert Capability.PEEK not in fq.capabilities
        assert Capability.CUSTOM_ID not in fq.capabilities
        with pytest.raises(unifiedq.UnsupportedOperation):
            fq.peek()
    with pytest.raises(unifiedq.InvalidArgument):
        FairQueue("memory://no-placeholder")


def test_blocking_dequeue_wakes_on_enqueue_from_another_thread() -> None:
    fq = FairQueue(f"memory://{_base()}.{{tenant}}")
    threading.Timer(0.2, lambda: fq.enqueue(b"late", tenant="t")).start()
    j = fq.dequeue(timeout=10)
    assert j is not None and j.body == b"late"
    assert fq.dequeue(timeout=0.05) is None


def test_rate_limited_tenant_is_skipped_without_blocking_others() -> None:
    now = [0.0]
    lim = {"slow": TokenBucket(rate=1.0, burst=2, clock=lambda: now[0])}
    fq = FairQueue(f"memory://{_base()}.{{tenant}}", rate_limit=lim)
    fq.enqueue_many([b"s"] * 10, tenant="slow")
    fq.enqueue_many([b"f"] * 10, tenant="fast")
    got = collections.Counter(take(fq, 10))
    assert got == {"slow": 2, "fast": 8}  # slow used its burst, then only fast was served
    now[0] += 1.0  # one more token for slow
    assert collections.Counter(take(fq, 2)) == {"slow": 1, "fast": 1}
    keyed = KeyedLimiter(rate=1000, burst=1000)
    fq2 = FairQueue(f"memory://{_base()}.{{tenant}}", rate_limit=keyed)
    fq2.enqueue(b"x", tenant="k")
    assert fq2.dequeue(timeout=1) is not None


def test_per_tenant_bound() -> None:
    fq = FairQueue(f"memory://{_base()}.{{tenant}}", maxsize_per_tenant=5)
    fq.enqueue_many([b"x"] * 5, tenant="a")
    with pytest.raises(unifiedq.QueueFull):
        fq.enqueue(b"x", tenant="a")
    fq.enqueue_many([b"x"] * 5, tenant="b")  # b has its own bound
    assert fq.sizes() == {"default": 0, "a": 5, "b": 5} or fq.sizes() == {"a": 5, "b": 5}
    assert Capability.BOUNDED in fq.capabilities


def test_worker_over_fair_queue_processes_everything_once(template: str) -> None:
    fq = FairQueue(template)
    n_per = 150
    for t in ("a", "b", "c", "d"):
        fq.enqueue_many([f"{t}-{i}".encode() for i in range(n_per)], tenant=t)
    done: collections.Counter[bytes] = collections.Counter()
    lock = threading.Lock()
    order: list[str] = []

    def h(job: Job) -> None:
        with lock:
            done[job.body] += 1
            order.append(job.headers["tenant"])

    w = Worker(fq, h, concurrency=4, poll_interval=0.05)
    w.start()
    end = time.monotonic() + 60
    while w.stats().processed < 4 * n_per and time.monotonic() < end:
        time.sleep(0.02)
    w.stop(grace=10)
    fq.close()
    assert len(done) == 4 * n_per and max(done.values()) == 1
    first = collections.Counter(order[:200])  # all four backlogged the whole time
    assert jain_index(first.values()) > 0.99


def test_async_fair_queue_shares_and_settles() -> None:
    async def main() -> collections.Counter[str]:
        fq = AsyncFairQueue(f"memory://{_base()}.{{tenant}}", weights={"x": 2})
        await fq.enqueue_many([b"x"] * 100, tenant="x")
        await fq.enqueue_many([b"y"] * 100, tenant="y")
        got: collections.Counter[str] = collections.Counter()
        for _ in range(60):
            j = await fq.dequeue(timeout=5)
            assert j is not None
            got[fq.tenant_of(j)] += 1
            await fq.ack(j)
        later = asyncio.get_running_loop().call_later(
            0.1, lambda: asyncio.ensure_future(fq.enqueue(b"z", tenant="z")))
        del later
        while (j := await fq.dequeue(timeout=5)) is not None and fq.tenant_of(j) != "z":
            await fq.ack(j)
        assert j is not None
        await fq.aclose()
        return got

    got = asyncio.run(main())
    assert got == {"x": 40, "y": 20}


def test_two_processes_share_fairly_on_redis(redis_url: str) -> None:
    """Local DRR in each of two consumer processes still shares fairly overall."""
    import subprocess
    import sys
    import textwrap

    tpl = f"{redis_url}?queue={_base()}.{{tenant}}"
    tenants = ["heavy", "l1", "l2", "l3"]
    fq = FairQueue(tpl, tenants=tenants)
    fq.enqueue_many([b"h"] * 2000, tenant="heavy")
    for t in tenants[1:]:
        fq.enqueue_many([b"l"] * 200, tenant=t)
    child = textwrap.dedent("""
        import sys, time
        from unifiedq.fair import FairQueue
        fq = FairQueue(sys.argv[1], tenants=sys.argv[2].split(","))
        out = []
        for _ in range(300):
            j = fq.dequeue(timeout=5)
            out.append(fq.tenant_of(j)); fq.ack(j)
        print(",".join(out))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", child, tpl, ",".join(tenants)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    got = collections.Counter(t for o in outs for t in o.strip().split(","))
    # 600 dequeues while all four tenants were backlogged: 150 each if perfectly fair.
    assert sum(got.values()) == 600
    assert jain_index(got.values()) > 0.99, got
    fq.purge()
    fq.close()


def test_jain_index() -> None:
    assert jain_index([1, 1, 1]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0, 0]) == pytest.approx(0.25)
    assert jain_index([]) == 1.0


