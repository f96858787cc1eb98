"""amqp:// ``maxsize``: the broker's own bound (``x-max-length``, ``x-overflow=reject-publish``).

Against a real RabbitMQ started by the rig. The bound is checked by the broker as it takes
each publish, so producers in many processes cannot overshoot it together, and a refused
publish comes back as a nacked confirm: ``QueueFull``, with nothing queued. Both queue types.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from typing import Any

import pytest

from unifiedq import BoundedQueue, Capability, QueueFull, UnsupportedOperation, connect
from unifiedq.drivers.amqp.publishing import QueueFullRefused

QUEUE_TYPES = ["classic", "quorum"]


@pytest.fixture(params=QUEUE_TYPES)
def queue_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _url(amqp_url: str, queue_type: str, maxsize: int, name: str | None = None) -> str:
    name = name or f"uqb-{uuid.uuid4().hex[:12]}"
    return f"{amqp_url}?queue={name}&queue_type={queue_type}&maxsize={maxsize}"


def _producer(url: str, proc: int, jobs: int, start: Any, out: Any) -> None:
    """Enqueue ``jobs`` jobs one by one; report every accepted and every refused body."""
    q = connect(url)
    accepted: list[bytes] = []
    refused: list[bytes] = []
    start.wait()
    for i in range(jobs):
        body = b"%d-%d" % (proc, i)
        try:
            q.enqueue(body)
        except QueueFull:
            refused.append(body)
        else:
            accepted.append(body)
    q.close()
    out.put((accepted, refused))


def test_sixteen_producer_processes_never_overshoot(amqp_url: str, queue_type: str) -> None:
    """16 processes x 100 publishes against maxsize=1000: 1,000 queued, 600 refused.

    The ledger is exact: every accepted body is in the queue once, no refused body is. On
    classic queues the bound is exact. A quorum queue (RabbitMQ 3.10) takes publishes that
    were in flight when it filled up: up to one per concurrent producer past the bound.
    """
    bound, procs, per = 1000, 16, 100
    url = _url(amqp_url, queue_type, bound)
    q = connect(url)
    q.size()  # declares the queue before the race
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_producer, args=(url, p, per, start, out))
               for p in range(procs)]
    for w in workers:
        w.start()
    start.set()
    results = [out.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    accepted = [b for a, _ in results for b in a]
    refused = [b for _, r in results for b in r]
    assert len(accepted) + len(refused) == procs * per
    slack = 0 if queue_type == "classic" else procs - 1
    assert bound <= len(accepted) <= bound + slack, f"{len(accepted)} accepted, bound {bound}"
    print(f"{queue_type}: {len(accepted)} accepted, {len(refused)} refused, bound {bound}")
    assert q.size() == len(accepted)
    drained: list[bytes] = []
    while True:
        jobs = q.dequeue_many(200, timeout=1)
        if not jobs:
            break
        drained += [j.body for j in jobs]
        q.ack_many(jobs)
    assert sorted(drained) == sorted(accepted)  # each accepted job once, no refused one
    q.close()


def test_refused_batch_reports_what_was_not_queued(amqp_url: str) -> None:
    """A classic queue refuses exactly the part of a batch past the bound."""
    q = connect(_url(amqp_url, "classic", 5))
    try:
        q.enqueue_many([b"a", b"b", b"c"])
        with pytest.raises(QueueFullRefused) as info:
            q.enqueue_many([b"d", b"e", b"f", b"g"])
        assert isinstance(info.value, QueueFull)
        assert len(info.value.job_ids) == 2  # f and g; d and e were queued
        assert q.size() == 5
        bodies = []
        for _ in range(5):
            job = q.dequeue(timeout=5)
            assert job is not None
            assert job.id not in info.value.job_ids
            bodies.append(job.body)
            q.ack(job)
        assert bodies == [b"a", b"b", b"c", b"d", b"e"]
    finally:
        q.close()


def test_a_nack_at_the_bound_loses_nothing(amqp_url: str, queue_type: str) -> None:
    """A requeued copy the bound refuses: the original goes back instead (a return).

    The consumer has prefetch=1, so the broker pushes it nothing while it holds a job: the
    second job stays ready, and counts (leased and prefetched jobs do not).
    """
    url = _url(amqp_url, queue_type, 1)
    producer, consumer = connect(url), connect(url + "&prefetch=1")
    try:
        producer.enqueue(b"first")
        job = consumer.dequeue(timeout=5)
        assert job is not None
        producer.enqueue(b"second")  # fits: a leased job is not a ready one
        with pytest.raises(QueueFull):
            producer.enqueue(b"third")
        consumer.nack(job)  # its copy is refused; the original is returned to the queue
        seen = []
        for _ in range(2):
            again = consumer.dequeue(timeout=5)
            assert again is not None
            seen.append((again.body, again.attempt))
            consumer.ack(again)
        assert sorted(seen) == [(b"first", 2), (b"second", 1)]
        assert consumer.dequeue(timeout=0.2) is None
    finally:
        producer.close()
        consumer.close()


def test_bounded_handles_have_no_delay(amqp_url: str, queue_type: str) -> None:
    q = connect(_url(amqp_url, queue_type, 10))
    try:
        assert Capability.BOUNDED in q.capabilities
        assert Capability.DELAY not in q.capabilities
        with pytest.raises(UnsupportedOperation):
            q.enqueue(b"later", delay=1.0)
    finally:
        q.close()


def test_bounded_queue_uses_the_native_bound(amqp_url: str) -> None:
    url = f"{amqp_url}?queue=uqb-{uuid.uuid4().hex[:12]}"
    with BoundedQueue(url, maxsize=2) as bq:
        assert bq.native
        bq.enqueue(b"1")
        bq.enqueue(b"2")
        t = time.monotonic()
        with pytest.raises(QueueFull):
            bq.enqueue(b"3")
        assert time.monotonic() - t < 5
        assert bq.size() == 2
        bq.purge()
