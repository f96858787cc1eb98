"""Issue 19 on Redis Cluster: the atomic bound and the server fair scheduler.

Real cluster (``RedisClusterRig``: 3 masters, 3 replicas of the installed ``redis-server``) and
real producer/consumer processes; counts are exact.

* The bound: one script in the queue's ``{q}`` slot counts the queue and pushes, so producer
  processes never overshoot; a priority (another slot) is refused, never bounded loosely.
* The fair scheduler: a pick on the scheduler's slot, the lease on the tenant's slot; shares
  across consumer processes, a producer killed between its push and its mark, and the
  pick/empty race.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import unifiedq
from bound_producers import check_producers_never_overshoot
from test_redis_cluster import ClusterConformance
from unifiedq import Queue, UnsupportedOperation
from unifiedq.bounded import AsyncBoundedQueue, BoundedQueue
from unifiedq.fair import AsyncFairQueue, FairQueue
from unifiedq.testing.cluster import RedisClusterRig
from unifiedq.testing.fixtures import require_binary
from unifiedq.testing.suite import BlockingView


@pytest.fixture(scope="module")
def rig() -> Iterator[RedisClusterRig]:
    require_binary("redis-server")
    require_binary("redis-cli")
    with RedisClusterRig() as r:
        yield r


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- the bound

@pytest.mark.parametrize("nprocs", [4, pytest.param(16, marks=pytest.mark.slow)])
def test_bound_producer_processes_never_overshoot(rig: RedisClusterRig, nprocs: int) -> None:
    url = rig.url(queue=_name("cb"))
    check_producers_never_overshoot(url, nprocs)


def test_bound_counts_leased_and_delayed_and_refuses_priorities(rig: RedisClusterRig) -> None:
    url = rig.url(queue=_name("cbl"))
    with BoundedQueue(url, maxsize=3) as bq:
        assert bq.native and "native" in repr(bq)
        assert unifiedq.Capability.PRIORITY not in bq.capabilities
        assert unifiedq.Capability.BOUNDED in bq.capabilities
        bq.enqueue(b"a")
        bq.enqueue(b"b", delay=60)
        job = bq.dequeue()
        assert job is not None and job.body == b"a"  # leased: still counted
        bq.enqueue(b"c")
        with pytest.raises(unifiedq.QueueFull):
            bq.enqueue(b"d")
        with pytest.raises(UnsupportedOperation, match="not atomic on Redis Cluster"):
            bq.enqueue(b"p", priority=5)
        bq.ack(job)
        bq.enqueue(b"d")
        assert bq.stats()["accepted"] == 4 and bq.stats()["reject"] == 1
        assert bq.purge() == 3
    # A queue whose levels another (unbounded) producer used cannot be bounded atomically.
    plain = unifiedq.connect(url)
    plain.enqueue(b"hi", priority=3)
    with BoundedQueue(url, maxsize=10) as bq, \
            pytest.raises(UnsupportedOperation, match="priority level"):
        bq.enqueue(b"x")
    assert plain.purge() == 1
    plain.close()


def test_fair_tenant_bound_is_atomic_on_the_cluster(rig: RedisClusterRig) -> None:
    with FairQueue(rig.url(queue=_name("cbf") + ".{tenant}"), maxsize_per_tenant=2) as fq:
        sub = fq.sub_queue("a")
        assert getattr(sub, "native", False)
        fq.enqueue_many([b"x"] * 2, tenant="a")
        with pytest.raises(unifiedq.QueueFull):
            fq.enqueue(b"x", tenant="a")
        fq.purge()


# --------------------------------------------------------------------------- fair scheduler

_CONSUMER = r"""
import json, sys, time
from unifiedq.fair import FairQueue
tpl, n, weights = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
got = []
with FairQueue(tpl, scheduler="server", weights=weights) as fq:
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    while len(got) < n:
        job = fq.dequeue(timeout=10)
        assert job is not None, got
        got.append((time.time(), fq.tenant_of(job)))
        fq.ack(job)
print(json.dumps(got))
"""


def test_shares_across_consumer_processes(rig: RedisClusterRig) -> None:
    """4 consumer processes share one schedule: each tenant within 2% of its weighted share."""
    weights = {"a": 1.0, "b": 1.0, "c": 2.0, "d": 4.0}
    tpl = rig.url(queue=_name("cfs") + ".{tenant}")
    with FairQueue(tpl, scheduler="server", weights=weights) as fq:
        for t in weights:
            fq.enqueue_many([t.encode()] * 400, tenant=t)  # all backlogged throughout
        nprocs, per = 4, 150
        procs = [subprocess.Popen([sys.executable, "-c", _CONSUMER, tpl, str(per),
                                   json.dumps(weights)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for _ in range(nprocs)]
        try:
            for p in procs:
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            rows: list[tuple[float, str]] = []
            for p in procs:
                out, _ = p.communicate(timeout=120)
                assert p.returncode == 0
                rows += [tuple(r) for r in json.loads(out.splitlines()[-1])]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        rows.sort()
        first = [t for _, t in rows[:480]]  # d (weight 4) takes 240 of 400: still backlogged
        total = sum(weights.values())
        for t, w in weights.items():
            share = first.count(t) / len(first)
            assert abs(share - w / total) <= 0.02, (t, share, w / total)
        # Every job served exactly once (acked), the rest still waiting.
        assert fq.size() == 1600 - nprocs * per
        fq.purge()


_CRASHING_PRODUCER = r"""
import os, sys
from unifiedq.fair import FairQueue
fq = FairQueue(sys.argv[1], scheduler="server", connect_options={"socket_timeout": 0.5})
def crash(tenant):
    os._exit(17)  # killed after the push, before its mark
fq._server.mark = crash
fq.enqueue(b"orphan", tenant="x")
"""


def test_producer_killed_between_push_and_mark_strands_nothing(rig: RedisClusterRig) -> None:
    tpl = rig.url(queue=_name("cfk") + ".{tenant}")
    opts = {"socket_timeout": 0.5}  # intents last 4 * 0.5 + 2 = 4 s
    with FairQueue(tpl, scheduler="server", connect_options=opts) as fq:
        fq.enqueue(b"first", tenant="x")  # x has been backlogged, served, found empty
        job = fq.dequeue(timeout=5)
        assert job is not None
        fq.ack(job)
        assert fq.dequeue(timeout=0.3) is None
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-c", _CRASHING_PRODUCER, tpl], timeout=60,
                           check=False)
        assert p.returncode == 17
        assert fq.sub_queue("x").size() == 1  # pushed, never marked
        # Not scheduled by a mark (there was none)...
        assert fq.dequeue(timeout=1.0) is None
        # ...but once the producer's intent runs out.
        job = fq.dequeue(timeout=10)
        took = time.monotonic() - t0
        assert job is not None and job.body == b"orphan"
        assert took < 4.0 + 3.0, took
        fq.ack(job)
        fq.purge()


def test_a_mark_during_the_pick_keeps_the_tenant_backlogged(rig: RedisClusterRig) -> None:
    """The race one script excluded: a consumer finds x empty while a producer pushes."""
    tpl = rig.url(queue=_name("cfr") + ".{tenant}")
    with FairQueue(tpl, scheduler="server") as fq:
        srv: Any = fq._server
        keys = srv.keys
        fq.enqueue(b"1", tenant="x")
        job = fq.dequeue(timeout=5)
        assert job is not None
        fq.ack(job)  # x is empty but still in the backlog (its take was not short)
        _, picks = keys.parse_pick(srv._call(keys.pick_call(1, [], time.time())))
        assert [(t, k) for t, k, _ in picks] == [("x", 1)]
        seq = picks[0][2]
        # Its lease finds nothing; meanwhile a producer pushes and marks...
        fq.enqueue(b"2", tenant="x")
        # ...then the consumer's report arrives: it must not drop x.
        srv._call(keys.pick_call(0, [("x", seq, 1, True, None)], time.time()))
        job = fq.dequeue(timeout=0)
        assert job is not None and job.body == b"2"
        fq.ack(job)
        # A report with the current sequence does drop an empty tenant.
        _, picks = keys.parse_pick(srv._call(keys.pick_call(1, [], time.time())))
        assert [(t, k) for t, k, _ in picks] == [("x", 1)]
        srv._call(keys.pick_call(0, [("x", picks[0][2], 1, True, None)], time.time()))
        _, picks = keys.parse_pick(srv._call(keys.pick_call(1, [], time.time())))
        assert picks == []
        fq.purge()


_DYING_CONSUMER = r"""
import os, sys
from unifiedq.fair import FairQueue
fq = FairQueue(sys.argv[1], scheduler="server",
               connect_options={"visibility_timeout": 1.0, "heartbeat": False})
job = fq.dequeue(timeout=10)
assert job is not None
os._exit(17)  # killed holding the lease
"""


def test_a_killed_consumers_lease_is_served_again(rig: RedisClusterRig) -> None:
    tpl = rig.url(queue=_name("cfl") + ".{tenant}")
    opts = {"visibility_timeout": 1.0, "heartbeat": False}
    with FairQueue(tpl, scheduler="server", connect_options=opts) as fq:
        fq.enqueue(b"leased", tenant="y")
        p = subprocess.run([sys.executable, "-c", _DYING_CONSUMER, tpl], timeout=60,
                           check=False)
        assert p.returncode == 17
        job = fq.dequeue(timeout=10)  # parked at the lease's end, then recovered
        assert job is not None and job.body == b"leased" and job.attempt == 2
        fq.ack(job)
        fq.purge()


def test_async_face_and_weights_on_the_cluster(rig: RedisClusterRig) -> None:
    import asyncio

    tpl = rig.url(queue=_name("cfa") + ".{tenant}")

    async def main() -> list[str]:
        # burst=0: plain SFQ, no lag credit for joining tenants: the first 8 split 2:6.
        async with AsyncFairQueue(tpl, scheduler="server", burst=0) as fq:
            fq.set_weight("b", 3)
            for t in "ab":
                await fq.enqueue_many([t.encode()] * 8, tenant=t)
            got: list[str] = []
            while len(got) < 8:
                jobs = await fq.dequeue_many(2, timeout=5)
                assert jobs
                got += [j.body.decode() for j in jobs]
                await fq.ack_many(jobs)
            await fq.purge()
            return got

    got = asyncio.run(main())
    assert collections.Counter(got) == {"a": 2, "b": 6}, got


def test_headers_with_a_priority_stay_in_the_levels_slot(rig: RedisClusterRig) -> None:
    """Regression: an enqueue with headers and a priority named the base wake list (CROSSSLOT)."""
    with unifiedq.connect(rig.url(queue=_name("chp"))) as q:
        q.enqueue(b"low", headers={"k": "v"})
        q.enqueue(b"high", priority=7, headers={"k": "v"})
        got = [q.dequeue(timeout=5) for _ in range(2)]
        assert [j.body for j in got if j] == [b"high", b"low"]
        assert all(j and j.headers["k"] == "v" for j in got)
        q.ack_many([j for j in got if j])


# --------------------------------------------------------------------------- conformance


class TestBoundedQueueOnCluster(ClusterConformance):
    """The atomic cluster bound is a queue too: its flags (no PRIORITY) checked both ways."""

    def open_queue(self, url: str, face: str, options: dict[str, Any]) -> Queue:
        opts = dict(options)
        size = int(opts.pop("maxsize", 100_000))  # the suite's BOUNDED test sets the bound
        if face == "sync":
            return BoundedQueue(url, size, connect_options=opts)
        return BlockingView(AsyncBoundedQueue(url, size, connect_options=opts))


class TestServerFairQueueOnCluster(ClusterConformance):
    """``FairQueue(scheduler="server")`` on the cluster, named ``<name>``."""

    JOB_QUEUE_IS_HANDLE_NAME = False  # jobs name their tenant's sub-queue: <name>.<tenant>

    def open_queue(self, url: str, face: str, options: dict[str, Any]) -> Queue:
        query = url.partition("?")[2]
        name = query.partition("queue=")[2].partition("&")[0]
        tpl = url.replace(f"queue={name}", f"queue={name}.{{tenant}}")
        if face == "sync":
            return FairQueue(tpl, connect_options=options, tenant_header="x-tenant",
                             name=name, scheduler="server")
        return BlockingView(AsyncFairQueue(tpl, connect_options=options,
                                           tenant_header="x-tenant", name=name,
                                           scheduler="server"))

    def test_cross_process_matches_flag(self, harness: Any) -> None:
        """The suite's child enqueues on the plain queue ``<name>``; a fair queue's jobs live
        in ``<name>.<tenant>``: here the child enqueues through a FairQueue of its own."""
        q = harness.open()
        assert unifiedq.Capability.CROSS_PROCESS in q.capabilities
        name = harness.url.partition("queue=")[2].partition("&")[0]
        tpl = harness.url.replace(f"queue={name}", f"queue={name}.{{tenant}}")
        child = subprocess.run([sys.executable, "-c", _FAIR_CHILD, tpl,
                                json.dumps(harness.options)], timeout=60, check=False)
        assert child.returncode == 0
        job = q.dequeue(timeout=5)
        assert job is not None and job.body == b"kid"
        q.ack(job)


_FAIR_CHILD = r"""
import json, sys
from unifiedq.fair import FairQueue
with FairQueue(sys.argv[1], connect_options=json.loads(sys.argv[2]), tenant_header="x-tenant",
               scheduler="server") as fq:
    fq.enqueue(b"kid")
"""
