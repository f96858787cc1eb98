"""The in-process DRR only visits backlogged tenants: cost independent of the known ones.

Costs are counted (sub-queue polls), not timed.
"""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import Iterator

import pytest

import unifiedq
from unifiedq import Job, Queue
from unifiedq.drivers import memory
from unifiedq.fair import FairQueue


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    memory.reset()


class _Counting:
    """A sub-queue handle that counts the polls a FairQueue makes."""

    def __init__(self, inner: Queue, polls: collections.Counter[str], tenant: str) -> None:
        self._inner, self._polls, self._tenant = inner, polls, tenant

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def dequeue(self, *, timeout: float | None = 0.0) -> Job | None:
        self._polls[self._tenant] += 1
        return self._inner.dequeue(timeout=timeout)


def _counting(base: str, polls: collections.Counter[str]) -> object:
    def open_sub(tenant: str) -> Queue:
        return _Counting(unifiedq.connect(f"memory://{base}.{tenant}"), polls, tenant)  # type: ignore[return-value]
    return open_sub


def test_steady_state_polls_do_not_grow_with_known_tenants() -> None:
    # A callable template has no backlog board: the first scan polls every tenant once,
    # after that only the backlogged ones (plus rate-limited idle rechecks).
    base = f"fs-{uuid.uuid4().hex[:6]}"
    known = [f"t{i:05d}" for i in range(5000)]
    busy = known[::500]
    for t in busy:
        unifiedq.connect(f"memory://{base}.{t}").enqueue_many([b"x"] * 200)
    polls: collections.Counter[str] = collections.Counter()
    fq = FairQueue(_counting(base, polls), tenants=known, default_tenant=None,  # type: ignore[arg-type]
                   idle_recheck_rate=100)
    got: collections.Counter[str] = collections.Counter()
    start = time.monotonic()
    for _ in range(2000):
        j = fq.dequeue()
        assert j is not None
        got[fq.tenant_of(j)] += 1
        fq.ack(j)
    elapsed = time.monotonic() - start
    # Each idle tenant is polled once (found empty, it leaves the ring), then one poll per
    # job, the last poll of each drained tenant, and idle rechecks at <= 100/s (a bucket
    # of up to 64 at once): nothing per dequeue proportional to the 4,990 idle tenants (the
    # old ring re-polled every idle tenant every 5 ms).
    total = sum(polls.values())
    assert total <= len(known) + 2000 + len(busy) + 64 + 100 * elapsed + 5, (total, elapsed)
    assert got == {t: 200 for t in busy}
    assert fq.dequeue() is None
    fq.close()


def test_memory_board_needs_no_poll_of_idle_declared_tenants() -> None:
    tpl = f"memory://fs-{uuid.uuid4().hex[:6]}.{{tenant}}"
    known = [f"t{i:05d}" for i in range(5000)]
    busy = known[::500]
    with FairQueue(tpl) as producer:
        for t in busy:
            producer.enqueue_many([b"x"] * 50, tenant=t)
    fq = FairQueue(tpl, tenants=known)
    drr = fq._core.drr
    # Only the marked (backlogged) tenants are in the ring from the start.
    assert sorted(drr.ring) == sorted(busy) and len(drr.idle) == len(known) - len(busy) + 1
    first = collections.Counter(fq.tenant_of(j) for j in fq.dequeue_many(100))
    assert first == {t: 10 for t in busy}  # exact DRR from the first round
    while (j := fq.dequeue()) is not None:
        fq.ack(j)
    assert drr.ring == [] and fq.size() == 0
    fq.close()


def test_another_handles_enqueue_for_an_unknown_tenant_is_seen() -> None:
    tpl = f"memory://fs-{uuid.uuid4().hex[:6]}.{{tenant}}"
    consumer = FairQueue(tpl)
    assert consumer.dequeue() is None
    with FairQueue(tpl) as producer:
        producer.enqueue(b"hello", tenant="newcomer")
    j = consumer.dequeue()
    assert j is not None and consumer.tenant_of(j) == "newcomer"
    consumer.ack(j)
    consumer.close()


def test_job_pushed_behind_the_boards_back_is_found_by_idle_rechecks() -> None:
    base = f"fs-{uuid.uuid4().hex[:6]}"
    tpl = f"memory://{base}.{{tenant}}"
    fq = FairQueue(tpl, tenants=["quiet"], idle_recheck_rate=200)
    fq.enqueue_many([b"x"] * 5000, tenant="busy")
    # A plain handle writes straight into an idle tenant's sub-queue: no mark.
    unifiedq.connect(f"memory://{base}.quiet").enqueue(b"q")
    start = time.monotonic()
    while True:
        j = fq.dequeue(timeout=1)
        assert j is not None
        fq.ack(j)
        if fq.tenant_of(j) == "quiet":
            break
        assert time.monotonic() - start < 3, "the idle tenant was never rechecked"
    fq.close()


def test_idle_tenants_in_a_fresh_empty_consumer_are_swept_promptly() -> None:
    base = f"fs-{uuid.uuid4().hex[:6]}"
    known = [f"t{i:04d}" for i in range(2000)]
    # Behind the board's back: only a sweep of idle tenants can find it.
    unifiedq.connect(f"memory://{base}.{known[-1]}").enqueue(b"late")
    fq = FairQueue(f"memory://{base}.{{tenant}}", tenants=known)
    start = time.monotonic()
    j = fq.dequeue(timeout=5)
    assert j is not None and j.body == b"late"
    assert time.monotonic() - start < 2.5  # a sweep, not a wait per batch
    fq.close()
