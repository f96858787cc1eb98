"""shm:// under faults (issue 20): cancellation of the asyncio face never loses a job, limits
are typed errors raised before the ring is touched, and bad input never corrupts the ring.
(A process SIGKILLed mid-operation is covered by tests/test_shm.py: the ``sigkill`` tests.)"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import unifiedq
from unifiedq import (
    BodyTooLarge,
    InvalidArgument,
    LimitExceeded,
    QueueFull,
    UnsupportedOperation,
)
from unifiedq.drivers import shm

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")


@pytest.fixture
def name() -> Iterator[str]:
    n = f"uq-{uuid.uuid4().hex[:12]}"
    yield n
    shm.unlink(n)


def _url(name: str, **opts: object) -> str:
    return f"shm://{name}?" + "&".join(f"{k}={v}" for k, v in opts.items())


# -- cancellation safety ----------------------------------------------------------------------
@pytest.mark.parametrize("many", [False, True], ids=["dequeue", "dequeue_many"])
def test_random_cancellation_delivers_every_job_exactly_once(name: str, many: bool) -> None:
    """wait_for() with tiny random timeouts around dequeues, hundreds of times, while a
    producer trickles jobs in: every job is delivered exactly once (shm is at-most-once, so
    a job taken by a cancelled call would simply be gone)."""
    rng = random.Random(11 + many)
    jobs = 3000

    async def main() -> None:
        url = _url(name, capacity=64, slot_size=32, enqueue_timeout=30)
        async with unifiedq.connect_async(url) as q, unifiedq.connect_async(url) as p:
            sent: list[str] = []

            async def produce() -> None:
                for i in range(jobs):
                    sent.append(await p.enqueue(b"%d" % i))
                    if i % 4 == 0:  # often empty: consumers wait (and get cancelled) there
                        await asyncio.sleep(rng.uniform(0, 0.001))

            producer = asyncio.ensure_future(produce())
            got: collections.Counter[str] = collections.Counter()
            cancelled = 0

            async def take() -> list[Any]:
                if many:
                    return await q.dequeue_many(rng.randint(1, 8),
                                                timeout=rng.choice((0, 0.001, None)))
                job = await q.dequeue(timeout=rng.choice((0, 0.001, None)))
                return [] if job is None else [job]

            rounds = 0
            while not producer.done() or rounds < 600:
                rounds += 1
                try:
                    batch = await asyncio.wait_for(take(), rng.uniform(0, 0.002))
                except TimeoutError:
                    cancelled += 1
                    continue
                got.update(j.id for j in batch)
            await producer
            while batch := await q.dequeue_many(100):
                got.update(j.id for j in batch)
            assert cancelled > 150, cancelled
            assert set(got) == set(sent) and len(sent) == jobs, len(set(sent) - set(got))
            assert max(got.values()) == 1
            assert await q.size() == 0

    asyncio.run(main())


# -- limits before the ring is touched ----------------------------------------------------------
def _contents(q: Any) -> list[bytes]:
    """Drain the ring (in order), then put the same bodies back."""
    bodies = [j.body for j in q.dequeue_many(10_000)]
    if bodies:
        q.enqueue_many(bodies)
    return bodies


def test_body_larger_than_a_slot(name: str) -> None:
    with unifiedq.connect(_url(name, capacity=8, slot_size=16)) as q:
        q.enqueue_many([b"a", b"b"])
        with pytest.raises(BodyTooLarge) as info:
            q.enqueue(b"x" * 17)
        err = info.value
        assert isinstance(err, LimitExceeded)
        assert (err.limit, err.size, err.maximum) == ("max_body", 17, 16)  # max_body = slot_size
        with pytest.raises(BodyTooLarge):  # all or nothing: the good bodies stay out too
            q.enqueue_many([b"c", b"x" * 17, b"d"])
        q.enqueue(b"y" * 16)  # exactly a slot: fine
        assert _contents(q) == [b"a", b"b", b"y" * 16]


def test_reject_batch_beyond_capacity_is_a_limit(name: str) -> None:
    with unifiedq.connect(_url(name, capacity=4, overflow="reject")) as q:
        q.enqueue(b"first")
        with pytest.raises(LimitExceeded) as info:
            q.enqueue_many([b"%d" % i for i in range(5)])
        assert (info.value.limit, info.value.size, info.value.maximum) == ("capacity", 5, 4)
        # Waiting would never help (a limit); still a QueueFull, as it was before.
        assert isinstance(info.value, shm.CapacityExceeded) and isinstance(info.value, QueueFull)
        with pytest.raises(QueueFull):  # fits the ring, not the room left: QueueFull
            q.enqueue_many([b"%d" % i for i in range(4)])
        assert _contents(q) == [b"first"]
    # block streams a larger batch through as room appears; drop_oldest keeps the newest.
    with unifiedq.connect(_url(name, capacity=4, overflow="drop_oldest")) as q:
        q.purge()
        q.enqueue_many([b"%d" % i for i in range(6)])
        assert _contents(q) == [b"2", b"3", b"4", b"5"]


def test_async_face_limits(name: str) -> None:
    async def main() -> None:
        async with unifiedq.connect_async(_url(name, capacity=4, slot_size=8,
                                               overflow="reject")) as q:
            with pytest.raises(BodyTooLarge):
                await q.enqueue(b"x" * 9)
            with pytest.raises(LimitExceeded):
                await q.enqueue_many([b"1"] * 5)
            assert await q.size() == 0

    asyncio.run(main())


def test_bad_input_never_corrupts_the_ring(name: str) -> None:
    """Random good and bad calls against a FIFO model: every bad call raises a typed error and
    leaves the ring exactly as it was."""
    rng = random.Random(5)
    cap = 8
    model: collections.deque[bytes] = collections.deque()
    bad_calls = 0
    with unifiedq.connect(_url(name, capacity=cap, slot_size=16, overflow="reject")) as q:
        for step in range(600):
            op = rng.randrange(10)
            body = b"%d" % step
            try:
                if op == 0:
                    q.enqueue(b"z" * rng.randint(17, 64))
                elif op == 1:
                    q.enqueue("text")  # type: ignore[arg-type]
                elif op == 2:
                    q.enqueue(body, delay=1)
                elif op == 3:
                    q.enqueue(body, headers={"h": "v"})
                elif op == 4:
                    q.enqueue_many([body, b"z" * 40])
                elif op == 5:
                    q.enqueue_many([body] * (cap + 1))
                elif op == 6 and len(model) < cap:
                    q.enqueue(body)
                    model.append(body)
                    continue
                elif op == 7:
                    n = rng.randint(1, 3)
                    if len(model) + n <= cap:
                        q.enqueue_many([body] * n)
                        model.extend([body] * n)
                    continue
                else:
                    job = q.dequeue()
                    assert (job.body if job else None) == (model.popleft() if model else None)
                    continue
            except (InvalidArgument, UnsupportedOperation):
                bad_calls += 1
            else:
                raise AssertionError(f"step {step}: bad call {op} was accepted")
            assert q.size() == len(model), step
        assert bad_calls > 200
        assert [j.body for j in q.dequeue_many(100)] == list(model)
