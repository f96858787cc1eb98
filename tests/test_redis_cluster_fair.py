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

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

import unifiedq
from unifiedq import UnsupportedOperation
from unifiedq.bounded import BoundedQueue
from unifiedq.fair import FairQueue
from unifiedq.testing.cluster import RedisClusterRig
from unifiedq.testing.fixtures import require_binary


@pytest.fixture(scope="module")
def rig() -> Iterator[RedisClusterRig]:
    require_binary("redis-server")
    require_binary("redis-cli")
    with RedisClusterRig() as r:
        yield r


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- the bound

_PRODUCER = r"""
import json, sys
import unifiedq
from unifiedq.bounded import BoundedQueue
url, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bq = BoundedQueue(url, maxsize=1000)
assert bq.native, bq
ok = full = 0
i = 0
while i < n:
    k = min(batch, n - i)
    try:
        if k == 1:
            bq.enqueue(b"x")
        else:
            bq.enqueue_many([b"x"] * k)
        ok += k
    except unifiedq.QueueFull:
        full += k
    i += k
s = bq.stats()
assert s["accepted"] == ok and s["reject"] == full, (s, ok, full)
print(json.dumps({"ok": ok, "full": full}))
"""


@pytest.mark.parametrize("nprocs", [4, pytest.param(16, marks=pytest.mark.slow)])
def test_bound_producer_processes_never_overshoot(rig: RedisClusterRig, nprocs: int) -> None:
    url = rig.url(queue=_name("cb"))
    per = 1600 // nprocs  # 1,600 attempts against a bound of 1,000
    procs = [subprocess.Popen([sys.executable, "-c", _PRODUCER, url, str(per),
                               str(1 + 4 * (i % 2))], stdout=subprocess.PIPE, text=True)
             for i in range(nprocs)]
    res = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        res.append(json.loads(out))
    ok = sum(r["ok"] for r in res)
    full = sum(r["full"] for r in res)
    q = unifiedq.connect(url)
    try:
        assert ok + full == nprocs * per  # every attempt accepted or reported as QueueFull
        assert q.size() == ok <= 1000  # zero overshoot
        assert ok >= 1000 - 4  # and the bound was reached (a batch of 5 may not fit the end)
    finally:
        q.purge()
        q.close()


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
