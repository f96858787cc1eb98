"""BoundedQueue over redis://: bound check and push in one Lua script, across processes.

Real Redis (the session server) and real producer processes; the counts are exact.
"""

from __future__ import annotations

import uuid

import pytest

import unifiedq
from bound_producers import check_producers_never_overshoot
from unifiedq.bounded import BoundedQueue
from unifiedq.fair import FairQueue


def _url(redis_url: str, **opts: object) -> str:
    extra = "".join(f"&{k}={v}" for k, v in opts.items())
    return f"{redis_url}?queue=ba-{uuid.uuid4().hex[:8]}{extra}"


@pytest.mark.parametrize("nprocs", [4, pytest.param(16, marks=pytest.mark.slow)])
def test_producer_processes_never_overshoot(redis_url: str, nprocs: int) -> None:
    url = _url(redis_url)
    check_producers_never_overshoot(url, nprocs)


def test_leased_delayed_and_every_level_count(redis_url: str) -> None:
    with BoundedQueue(_url(redis_url), maxsize=4) as bq:
        assert "native" in repr(bq)
        bq.enqueue(b"a")
        bq.enqueue(b"b", priority=5)
        bq.enqueue(b"c", delay=60)
        job = bq.dequeue()
        assert job is not None and job.body == b"b"  # leased: still counted
        bq.enqueue(b"d")
        with pytest.raises(unifiedq.QueueFull):
            bq.enqueue(b"e")
        with pytest.raises(unifiedq.QueueFull):
            bq.enqueue_many([b"f", b"g"])  # all or nothing
        bq.ack(job)
        bq.enqueue(b"e")
        assert bq.stats()["accepted"] == 5 and bq.stats()["reject"] == 3
        assert bq.purge() == 4


def test_policies_on_the_atomic_bound(redis_url: str) -> None:
    spill = _url(redis_url)
    with BoundedQueue(_url(redis_url), maxsize=2, overflow="drop_oldest") as bq:
        for b in (b"1", b"2", b"3"):
            bq.enqueue(b)
        assert bq.size() == 2 and bq.stats()["drop_oldest"] == 1
        first = bq.dequeue()
        assert first is not None and first.body == b"2"
        bq.ack(first)
        bq.purge()
    with BoundedQueue(_url(redis_url), maxsize=1, overflow="spill", spill=spill) as bq:
        bq.enqueue(b"1")
        bq.enqueue(b"2")
        assert bq.size() == 1 and bq.stats()["spill"] == 1
        bq.purge()
    with BoundedQueue(_url(redis_url), maxsize=1, overflow="block", timeout=0.2) as bq:
        bq.enqueue(b"1")
        with pytest.raises(unifiedq.QueueFull):
            bq.enqueue(b"2")
        assert bq.stats()["block"] == 1
        bq.purge()
    s = unifiedq.connect(spill)
    assert s.purge() == 1
    s.close()


def test_an_open_redis_handle_gets_the_atomic_bound_too(redis_url: str) -> None:
    url = _url(redis_url)
    other = unifiedq.connect(url)
    other.enqueue_many([b"x"] * 3)  # a producer that ignores the bound
    with BoundedQueue(unifiedq.connect(url), maxsize=3) as bq:
        assert "native" in repr(bq)
        with pytest.raises(unifiedq.QueueFull):
            bq.enqueue(b"y")
    assert other.purge() == 3
    other.close()


def test_fair_queue_per_tenant_bound_on_redis(redis_url: str) -> None:
    tpl = f"{redis_url}?queue=bf-{uuid.uuid4().hex[:8]}.{{tenant}}"
    for sched in ("local", "server"):
        with FairQueue(tpl, maxsize_per_tenant=3, scheduler=sched) as fq:
            fq.enqueue_many([b"x"] * 3, tenant="a")
            with pytest.raises(unifiedq.QueueFull):
                fq.enqueue(b"x", tenant="a")
            fq.enqueue(b"x", tenant="b")
            j = fq.dequeue()
            assert j is not None
            fq.ack(j)
            fq.purge()
