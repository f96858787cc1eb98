"""amqp:// batching: ``ack_many`` frames and ``dequeue_many`` from the prefetch buffer.

Against the rig's real RabbitMQ. Which frames ``ack_many`` writes is observed by wrapping the
driver's frame encoder (the frames still go to the broker); that the broker settled exactly
the right deliveries is checked on the broker: the jobs left unacked must come back, and only
they, when their connection goes.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

import unifiedq
from unifiedq import connect
from unifiedq._errors import JobNotLeased
from unifiedq._job import Job
from unifiedq.drivers.amqp import AmqpQueue, consuming
from unifiedq.testing.fixtures import RigServer, require_managed


@pytest.fixture
def qurl(amqp_url: str) -> str:
    return f"{amqp_url}?queue=uqb-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def opened() -> Iterator[Callable[..., AmqpQueue]]:
    handles: list[AmqpQueue] = []

    def open_(url: str) -> AmqpQueue:
        q = connect(url)
        assert isinstance(q, AmqpQueue)
        handles.append(q)
        return q

    yield open_
    for q in handles:
        if not q.closed:
            try:
                q.purge()
            finally:
                q.close()


@pytest.fixture
def frames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """(delivery tag, multiple) of every basic.ack frame ``ack_many`` writes."""
    seen: list[tuple[int, bool]] = []
    encode = consuming._ack_frame

    def spy(channel_id: int, tag: int, multiple: bool) -> bytes:
        seen.append((tag, multiple))
        return encode(channel_id, tag, multiple)

    monkeypatch.setattr(consuming, "_ack_frame", spy)
    return seen


def _take(q: AmqpQueue, n: int) -> list[Job]:
    """Exactly ``n`` jobs from ``q`` (blocking, so from its consumer's prefetch)."""
    jobs: list[Job] = []
    deadline = time.monotonic() + 10
    while len(jobs) < n and time.monotonic() < deadline:
        jobs += q.dequeue_many(n - len(jobs), timeout=5)
    assert len(jobs) == n
    return jobs


def _tags(jobs: list[Job]) -> list[int]:
    return [j.receipt[2] for j in jobs]


def _lose_connection(q: AmqpQueue) -> None:
    """End ``q``'s consume connection as a crash would: the socket closes, nothing is said."""
    q.size()  # a round trip on the channel: the broker has read our acks before the close
    q._conn.sock.close()  # the broker sees the TCP connection end and requeues what it held
    q._drop()


def _drain(q: AmqpQueue, idle: float = 1.0) -> list[Job]:
    out: list[Job] = []
    while jobs := q.dequeue_many(50, timeout=idle):
        q.ack_many(jobs)
        out += jobs
    return out


# -- ack_many ---------------------------------------------------------------------------------
def test_ack_many_of_everything_held_is_one_multiple_frame(
    opened: Callable[..., AmqpQueue], qurl: str, frames: list[tuple[int, bool]]
) -> None:
    q = opened(qurl + "&prefetch=20")
    q.enqueue_many([b"%d" % i for i in range(10)])
    jobs = _take(q, 10)
    q.ack_many(jobs[::-1])  # order does not matter
    assert frames == [(max(_tags(jobs)), True)]
    assert not q._held
    _lose_connection(q)  # anything not really acked would come back now
    assert _drain(opened(qurl), idle=0.5) == []


def test_ack_many_leaves_other_callers_deliveries_unacked(
    opened: Callable[..., AmqpQueue], qurl: str, frames: list[tuple[int, bool]]
) -> None:
    """Tags another caller holds in between are not covered by ``multiple``."""
    q = opened(qurl + "&prefetch=20")
    ids = q.enqueue_many([b"%d" % i for i in range(8)])
    mine, theirs, mine2 = _take(q, 3), _take(q, 2), _take(q, 3)  # two callers, one channel
    assert [j.id for j in mine + theirs + mine2] == ids
    t = _tags(mine + theirs + mine2)
    q.ack_many(mine + mine2)
    # multiple=True up to the last tag below the first foreign one, then one frame each.
    assert frames == [(t[2], True), (t[5], False), (t[6], False), (t[7], False)]
    assert sorted(q._held) == t[3:5]
    other = opened(qurl)
    assert other.dequeue(timeout=0.5) is None  # nothing came back: theirs are still leased
    q.nack(theirs[0], requeue=False)  # their own settlement still works: dead-lettered
    dead = opened(qurl + ".dead")
    assert [j.id for j in _drain(dead)] == [theirs[0].id]
    _lose_connection(q)  # the other is still held: the broker returns it, and only it
    assert [(j.id, j.attempt) for j in _drain(other)] == [(theirs[1].id, 2)]


def test_ack_many_with_a_single_tag_per_run(
    opened: Callable[..., AmqpQueue], qurl: str, frames: list[tuple[int, bool]]
) -> None:
    q = opened(qurl + "&prefetch=20")
    q.enqueue_many([b"%d" % i for i in range(4)])
    jobs = _take(q, 4)
    t = _tags(jobs)
    q.ack_many([jobs[1], jobs[3]])  # jobs[0] is held below both: no multiple at all
    assert frames == [(t[1], False), (t[3], False)]
    q.ack_many([jobs[0], jobs[2]])  # now the whole rest: one frame
    assert frames[2:] == [(t[2], True)]
    _lose_connection(q)
    assert _drain(opened(qurl), idle=0.5) == []


def test_ack_many_names_settled_and_lost_leases(
    opened: Callable[..., AmqpQueue], qurl: str, rabbitmq_server: RigServer
) -> None:
    server = require_managed(rabbitmq_server)
    q = opened(qurl + "&prefetch=20")
    q.enqueue_many([b"%d" % i for i in range(6)])
    old = _take(q, 3)
    q.ack(old[0])
    done = server.rabbitmqctl("close_all_connections", "unifiedq test")  # type: ignore[attr-defined]
    assert done.returncode == 0, done.stderr
    time.sleep(0.3)
    new = _take(q, 6 - 1)  # the reconnect: old[1:] come back (redelivered) with the rest
    again = [j for j in new if j.id in {o.id for o in old}]
    fresh = [j for j in new if j not in again]
    assert [(j.id, j.attempt) for j in again] == [(j.id, 2) for j in old[1:]]
    with pytest.raises(JobNotLeased) as info:
        q.ack_many(old + fresh)
    # Already acked, or lost with the connection; the fresh ones were acked.
    assert info.value.job_ids == tuple(j.id for j in old)
    assert sorted(q._held) == sorted(_tags(again))
    q.ack_many(again)  # the redeliveries are new leases
    _lose_connection(q)
    assert _drain(opened(qurl), idle=0.5) == []


def test_ack_many_async_face(qurl: str, rabbitmq_server: RigServer) -> None:
    async def run() -> None:
        aq = unifiedq.connect_async(qurl + "&prefetch=20")
        try:
            await aq.enqueue_many([b"%d" % i for i in range(10)])
            jobs: list[Job] = []
            while len(jobs) < 10:
                jobs += await aq.dequeue_many(10 - len(jobs), timeout=5)
            await aq.ack(jobs[0])
            with pytest.raises(JobNotLeased) as info:
                await aq.ack_many(jobs)
            assert info.value.job_ids == (jobs[0].id,)
            assert await aq.dequeue(timeout=0.3) is None
            assert await aq.size() == 0
        finally:
            await aq.aclose()

    asyncio.run(run())


def test_ack_many_from_threads_sharing_a_handle_accounts_exactly(
    opened: Callable[..., AmqpQueue], qurl: str
) -> None:
    """Four threads take batches from one handle, ack them in batches and nack a few.

    A ``multiple=True`` that covered another thread's delivery would show up twice: the
    broker closes the channel when that thread acks the tag again (unknown delivery tag),
    and its job would be missing from the ledger. Every job must be acked exactly once.
    """
    q = opened(qurl + "&prefetch=16")
    ids = q.enqueue_many([b"%d" % i for i in range(400)])
    acked: list[str] = []
    nacked: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while jobs := q.dequeue_many(rng.randint(1, 8), timeout=0.5):
                time.sleep(rng.uniform(0, 0.002))  # "work", while other threads take and ack
                back = [j for j in jobs if rng.random() < 0.05]
                for job in back:
                    q.nack(job)
                done = [j for j in jobs if j not in back]
                if done:
                    q.ack_many(done)
                with lock:
                    acked.extend(j.id for j in done)
                    nacked.extend(j.id for j in back)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(acked) == sorted(ids)  # each exactly once, nacked ones after their retry
    assert nacked  # the mix did happen
    _lose_connection(q)  # anything acked only on paper would come back now
    assert _drain(opened(qurl), idle=0.5) == []


# -- dequeue_many -----------------------------------------------------------------------------
def test_dequeue_many_takes_the_prefetch_buffer_without_round_trips(
    opened: Callable[..., AmqpQueue], qurl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = opened(qurl + "&prefetch=50")  # never saturated: held stays below prefetch
    ids = q.enqueue_many([b"%d" % i for i in range(40)])
    gets: list[int] = []
    real_get = AmqpQueue._get

    def counting_get(self: AmqpQueue) -> bool:
        gets.append(1)
        return real_get(self)

    monkeypatch.setattr(AmqpQueue, "_get", counting_get)
    got: list[Job] = []
    calls = 0
    while len(got) < 40:
        batch = q.dequeue_many(7, timeout=5)
        assert 1 <= len(batch) <= 7  # bounded by k
        got += batch
        calls += 1
    assert [j.id for j in got] == ids
    assert gets == []  # every job came from the consumer's buffer, no basic.get per job
    assert calls <= 40  # and typically 6 calls of 7 (the buffer fills while we take)
    assert q.dequeue_many(5, timeout=0.2) == []
    q.ack_many(got)


def test_dequeue_many_polling_becomes_a_consumer(
    opened: Callable[..., AmqpQueue], qurl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dequeue_many(k, timeout=0) in a loop: a few gets, not one per job (the Worker's call)."""
    q = opened(qurl + "&prefetch=50")
    ids = q.enqueue_many([b"%d" % i for i in range(40)])
    gets: list[int] = []
    real_get = AmqpQueue._get

    def counting_get(self: AmqpQueue) -> bool:
        gets.append(1)
        return real_get(self)

    monkeypatch.setattr(AmqpQueue, "_get", counting_get)
    got: list[Job] = []
    for _ in range(200):
        batch = q.dequeue_many(8, timeout=0)
        assert len(batch) <= 8
        got += batch
        if len(got) == 40:
            break
    assert [j.id for j in got] == ids
    assert len(gets) <= 10, gets  # one per job before: a polling batch used basic.get only
    q.ack_many(got)
    assert q.dequeue(timeout=0) is None  # the single poll is still a basic.get: nothing left


def test_dequeue_many_saturated_consumer_tops_up(
    opened: Callable[..., AmqpQueue], qurl: str
) -> None:
    """A consumer holding ``prefetch`` jobs gets nothing pushed: basic.get tops a batch up."""
    q = opened(qurl + "&prefetch=2")
    q.enqueue_many([b"%d" % i for i in range(12)])
    polled = [q.dequeue(timeout=0) for _ in range(2)]  # single polls: no consumer
    assert all(j is not None for j in polled) and q._consumer_tag is None
    first = _take(q, 3)  # starts the consumer; now 5 held with prefetch 2: saturated
    more = q.dequeue_many(5, timeout=1)
    assert len(more) == 5
    q.ack_many([j for j in polled if j is not None] + first + more)
    rest = _drain(q, idle=0.5)
    assert len(polled + first + more + rest) == 12


def test_dequeue_many_async_face_bounded(qurl: str) -> None:
    async def run() -> None:
        aq = unifiedq.connect_async(qurl + "&prefetch=30")
        try:
            ids = await aq.enqueue_many([b"%d" % i for i in range(30)])
            got: list[Job] = []
            while len(got) < 30:
                batch = await aq.dequeue_many(4, timeout=5)
                assert 1 <= len(batch) <= 4
                got += batch
            assert [j.id for j in got] == ids
            await aq.ack_many(got)
            assert await aq.size() == 0
        finally:
            await aq.aclose()

    asyncio.run(run())
