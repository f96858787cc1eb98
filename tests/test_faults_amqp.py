"""Faults of a real peak on amqp:// (issue 20), against real RabbitMQ brokers (never a mock).

* limits known up front: what the broker would answer by closing the connection raises
  ``LimitExceeded`` before a byte is sent, and touches no lease;
* deadlines under stalls: a frozen broker (SIGSTOP) makes every verb return or raise
  ``BackendTimeout`` within its timeout plus ``socket_timeout``;
* shutdown is not failure: ``release()`` and a stopped Worker consume no attempt;
* a full backend still drains: under a memory alarm producers get ``BackendFull`` and
  consumers keep dequeuing, acking, nacking and releasing;
* cancellation safety of the bridged asyncio face.

The freeze and alarm tests use a private broker (module scope), since both affect every
connection of the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import unifiedq
from unifiedq import (
    AsyncWorker,
    BackendError,
    BackendFull,
    BackendTimeout,
    BodyTooLarge,
    Capability,
    Job,
    LimitExceeded,
    Worker,
)
from unifiedq._base import QueueBase
from unifiedq.drivers.amqp import AmqpOptions, AmqpQueue
from unifiedq.testing.fixtures import ServerFactory
from unifiedq.testing.servers import RabbitMQServer

# The private broker's max_message_size and frame_max (bytes).
BROKER_MAX = 1024 * 1024
FRAME_MAX = 8192
# Slack for a loaded 2-core CI machine on top of every bound below (seconds).
CI = 1.5
# The fault handles' socket_timeout and connect_timeout (seconds).
S = 1.0


def _name() -> str:
    return f"uqf-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def broker() -> Iterator[RabbitMQServer]:
    """A private broker for this module: the tests freeze it and raise its alarms."""
    factory = ServerFactory()
    try:
        # A max_message_size below the driver's default max_body (128 MiB), as a broker
        # configured by someone else may have.
        yield factory.rabbitmq(config=f"max_message_size = {BROKER_MAX}\nframe_max = {FRAME_MAX}")
    finally:
        factory.close()


@pytest.fixture
def opened() -> Iterator[Callable[..., QueueBase]]:
    handles: list[QueueBase] = []

    def open_(url: str, **options: Any) -> QueueBase:
        q = unifiedq.connect(url, **options)
        handles.append(q)
        return q

    yield open_
    for q in handles:
        with contextlib.suppress(Exception):
            q.close()


def _drain(q: QueueBase, *, idle: float = 1.0) -> list[Job]:
    got: list[Job] = []
    while (job := q.dequeue(timeout=idle)) is not None:
        got.append(job)
        q.ack(job)
    return got


# ------------------------------------------------------------------------ limits up front
def test_defaults_are_finite() -> None:
    o = AmqpOptions()
    for value in (o.socket_timeout, o.connect_timeout, o.confirm_timeout, o.reconnect_timeout):
        assert 0 < value < 60


def test_oversized_header_rejected_at_once_and_touches_nothing(
    opened: Callable[..., QueueBase], amqp_url: str
) -> None:
    q = opened(f"{amqp_url}?queue={_name()}")
    ids = q.enqueue_many([b"a", b"b"])
    held = q.dequeue(timeout=5)
    assert held is not None and held.id == ids[0]
    t0 = time.monotonic()
    with pytest.raises(LimitExceeded) as info:
        q.enqueue(b"x", headers={"trace": "h" * 140_000})
    assert time.monotonic() - t0 < 0.5
    assert info.value.limit == "frame_max"
    assert info.value.maximum == 131072 and info.value.size > 140_000
    # A batch with one bad message sends none of them.
    with pytest.raises(LimitExceeded):
        q.enqueue_many([b"c", b"d"], headers={"trace": "h" * 140_000})
    # Just under the frame fits (header plus our properties: a few hundred bytes).
    ok = q.enqueue(b"e", headers={"trace": "h" * 130_000})
    assert time.monotonic() - t0 < 5
    q.ack(held)  # the lease survived: nothing reconnected
    rest = _drain(q)
    assert [j.id for j in rest] == [ids[1], ok]
    assert rest[1].headers["trace"] == "h" * 130_000


def test_other_broker_limits_rejected_up_front(
    opened: Callable[..., QueueBase], amqp_url: str
) -> None:
    q = opened(f"{amqp_url}?queue={_name()}&max_body=1000")
    q.enqueue(b"keep")
    held = q.dequeue(timeout=5)
    assert held is not None
    with pytest.raises(LimitExceeded) as info:  # a table field name is a short string
        q.enqueue(b"x", headers={"k" * 256: "v"})
    assert (info.value.limit, info.value.size, info.value.maximum) == ("shortstr", 256, 255)
    with pytest.raises(LimitExceeded) as info:  # 2-byte characters: 300 bytes
        q.enqueue(b"x", headers={"é" * 150: "v"})
    assert info.value.size == 300
    with pytest.raises(LimitExceeded) as info:  # x-expires past RabbitMQ's timer range
        q.enqueue(b"x", delay=30 * 86400)
    assert info.value.limit == "delay"
    with pytest.raises(BodyTooLarge):  # max_body (the broker's max_message_size)
        q.enqueue(b"x" * 1001)
    with pytest.raises(LimitExceeded):  # a nack's delay too: the job stays leased
        q.nack(held, delay=30 * 86400)
    q.enqueue(b"x", headers={"k" * 255: "v"}, delay=0.05)  # the edges are fine
    q.ack(held)
    got = _drain(q)
    assert [j.body for j in got] == [b"x"] and list(got[0].headers) == ["k" * 255]


def test_a_hard_connection_error_is_not_retried_and_keeps_leases(
    opened: Callable[..., QueueBase], amqp_url: str
) -> None:
    """The backstop: were a check missing, the broker's FRAME_ERROR is not republished."""
    q = opened(f"{amqp_url}?queue={_name()}")
    assert isinstance(q, AmqpQueue)
    q.enqueue(b"keep")
    held = q.dequeue(timeout=5)
    assert held is not None
    q._check_limits = lambda outs: None  # type: ignore[method-assign]  # the check disabled
    t0 = time.monotonic()
    with pytest.raises(BackendError) as info:
        q.enqueue(b"x", headers={"trace": "h" * 140_000})
    assert time.monotonic() - t0 < 5  # not reconnect_timeout (30 s) of republishing
    assert not isinstance(info.value, BackendTimeout)
    assert "FRAME_ERROR" in str(info.value) or "Frame" in str(info.value)
    q.ack(held)  # publishing has its own connection: the lease lived on
    assert q.size() == 0


def test_header_limit_is_the_negotiated_frame_max(broker: RabbitMQServer) -> None:
    name = _name()
    with unifiedq.connect(f"{broker.url}?queue={name}") as q:
        with pytest.raises(LimitExceeded) as info:
            q.enqueue(b"x", headers={"trace": "h" * 9000})
        assert (info.value.limit, info.value.maximum) == ("frame_max", FRAME_MAX)
        body = bytes(range(256)) * 100  # 25,600 bytes: four body frames of at most 8 KiB
        q.enqueue(body, headers={"trace": "h" * 7000})
        job = q.dequeue(timeout=5)
        assert job is not None and job.body == body and len(job.headers["trace"]) == 7000
        q.ack(job)


def test_a_body_over_the_brokers_max_message_size(broker: RabbitMQServer) -> None:
    """The broker's own limit, when max_body is left above it: a channel error, not a loop."""
    name = _name()
    q = unifiedq.connect(f"{broker.url}?queue={name}")
    try:
        q.enqueue(b"keep")
        held = q.dequeue(timeout=5)
        assert held is not None
        t0 = time.monotonic()
        with pytest.raises(BackendError) as info:
            q.enqueue(b"x" * (BROKER_MAX + 1))
        assert time.monotonic() - t0 < 2 and "max" in str(info.value).lower()
        q.ack(held)  # publishing has its own connection: the lease lived on
        q.enqueue(b"small")  # and publishing works again on a new channel
        assert [j.body for j in _drain(q)] == [b"small"]
    finally:
        q.close()
    # Told the broker's limit, the driver refuses up front.
    with unifiedq.connect(f"{broker.url}?queue={name}&max_body={BROKER_MAX}") as q2:
        with pytest.raises(BodyTooLarge) as too_big:
            q2.enqueue(b"x" * (BROKER_MAX + 1))
        assert (too_big.value.limit, too_big.value.maximum) == ("max_body", BROKER_MAX)


# ------------------------------------------------------------------- deadlines under stalls
def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.monotonic()
    try:
        result: Any = fn()
    except Exception as exc:
        result = exc
    return time.monotonic() - t0, result


def test_frozen_broker_every_verb_keeps_its_deadline(broker: RabbitMQServer) -> None:
    name = _name()
    url = (f"{broker.url}?queue={name}&socket_timeout={S}&connect_timeout={S}"
           "&confirm_timeout=3")
    verbs = ["enqueue", "enqueue_many", "dequeue", "dequeue_many", "ack", "nack", "release",
             "size", "purge", "close"]
    handles = {v: unifiedq.connect(url) for v in verbs}
    try:
        handles["enqueue"].enqueue_many([b"%d" % i for i in range(6)])
        leased: dict[str, Job] = {}
        for v in ("ack", "nack", "release"):
            job = handles[v].dequeue(timeout=0)  # basic.get: no prefetch into the others
            assert job is not None
            handles[v].enqueue(b"warm")  # each handle's publish connection is open too
            leased[v] = job
        for v in ("dequeue", "dequeue_many", "size", "purge", "close"):
            handles[v].size()  # connected before the freeze
        calls: dict[str, Callable[[], Any]] = {
            "enqueue": lambda: handles["enqueue"].enqueue(b"frozen"),
            "enqueue_many": lambda: handles["enqueue_many"].enqueue_many([b"f1", b"f2"]),
            "dequeue": lambda: handles["dequeue"].dequeue(timeout=1.0),
            "dequeue_many": lambda: handles["dequeue_many"].dequeue_many(5, timeout=1.0),
            "ack": lambda: handles["ack"].ack(leased["ack"]),
            "nack": lambda: handles["nack"].nack(leased["nack"]),
            "release": lambda: handles["release"].release(leased["release"]),
            "size": lambda: handles["size"].size(),
            "purge": lambda: handles["purge"].purge(),
            "close": lambda: handles["close"].close(),
        }
        # Each verb's bound: its own timeout (dequeue 1 s; a publish's confirm_timeout 3 s)
        # capped by socket_timeout for a stall, plus socket_timeout.
        bound = {v: S + (1.0 if v.startswith("dequeue") else 0.0) for v in verbs}
        results: dict[str, tuple[float, Any]] = {}
        with broker.frozen():
            threads = [threading.Thread(target=lambda v=v: results.__setitem__(v, _timed(calls[v])))
                       for v in verbs]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        for v in verbs:
            elapsed, result = results[v]
            assert elapsed < bound[v] + CI, (v, elapsed, result)
            ok = result is None or isinstance(result, BackendTimeout | list | int)
            assert ok, (v, result)
        assert isinstance(results["enqueue"][1], BackendTimeout)
        assert isinstance(results["size"][1], BackendTimeout)
        print({v: (round(e, 2), type(r).__name__) for v, (e, r) in results.items()})
        # Thawed: every handle works again (a new connection where the old one was dropped).
        for v in verbs:
            if v != "close":
                assert handles[v].size() >= 0
                handles[v].enqueue(b"after")
        for v in verbs:
            if v != "dequeue":
                handles[v].close()  # their prefetched jobs go back to the queue
        got = _drain(handles["dequeue"])
        assert sum(j.body == b"after" for j in got) == len(verbs) - 1
    finally:
        for h in handles.values():
            with contextlib.suppress(Exception):
                h.close()
    with unifiedq.connect(broker.url + f"?queue={name}") as q:
        q.purge()


def test_frozen_broker_async_dequeue_and_enqueue(broker: RabbitMQServer) -> None:
    url = f"{broker.url}?queue={_name()}&socket_timeout={S}&connect_timeout={S}"

    async def run() -> list[tuple[str, float, Any]]:
        aq = unifiedq.connect_async(url)
        try:
            await aq.size()
            await aq.enqueue(b"warm")
            out = []
            broker.freeze()
            try:
                for what, coro in (("dequeue", lambda: aq.dequeue(timeout=0.5)),
                                   ("enqueue", lambda: aq.enqueue(b"x"))):
                    t0 = time.monotonic()
                    try:
                        result: Any = await coro()
                    except Exception as exc:
                        result = exc
                    out.append((what, time.monotonic() - t0, result))
            finally:
                broker.thaw()
            job = await aq.dequeue(timeout=10)  # works again
            assert job is not None
            await aq.ack(job)
            await aq.purge()
            return out
        finally:
            await aq.aclose()

    results = asyncio.run(run())
    print([(what, round(elapsed, 3), type(result).__name__) for what, elapsed, result in results])
    for what, elapsed, result in results:
        assert elapsed < (0.5 if what == "dequeue" else 0) + S + CI, (what, elapsed, result)
        assert result is None or isinstance(result, BackendTimeout | Job), (what, result)
    assert isinstance(results[1][2], BackendTimeout)


def test_frozen_broker_ends_a_dequeue_without_timeout(broker: RabbitMQServer) -> None:
    """An idle consumer's dequeue(timeout=None) notices a stall (its periodic round trip)."""
    q = unifiedq.connect(f"{broker.url}?queue={_name()}&socket_timeout={S}")
    try:
        assert q.dequeue(timeout=0.3) is None  # the consumer runs: idle, nothing pushed
        outcome: list[tuple[float, Any]] = []
        with broker.frozen():
            t = threading.Thread(target=lambda: outcome.append(_timed(lambda: q.dequeue(
                timeout=None))))
            t.start()
            t.join(2 * S + CI + 5)
        assert outcome, "dequeue(timeout=None) still blocked on a frozen broker"
        elapsed, result = outcome[0]
        assert isinstance(result, BackendTimeout) and elapsed < 2 * S + CI, outcome
    finally:
        q.close()


def test_reconnects_never_multiply_a_dequeue_timeout(broker: RabbitMQServer) -> None:
    """A dead broker address: dequeue(timeout=1) gives up at its deadline, not after 30 s."""
    q = unifiedq.connect(f"{broker.url}?queue={_name()}&socket_timeout={S}")
    try:
        q.size()
        assert isinstance(q, AmqpQueue)
        q._port = 1  # the next connection attempts are refused at once
        q._drop()
        t0 = time.monotonic()
        with pytest.raises(BackendError):
            q.dequeue(timeout=1.0)
        assert time.monotonic() - t0 < 1.0 + S + CI
    finally:
        q.close()


# ------------------------------------------------------------------------- release/shutdown
def test_release_keeps_the_attempt_across_redelivery(
    opened: Callable[..., QueueBase], amqp_url: str
) -> None:
    name = _name()
    q = opened(f"{amqp_url}?queue={name}&max_attempts=1")
    assert Capability.RELEASE in q.capabilities
    jid = q.enqueue(b"r")
    job = q.dequeue(timeout=5)
    assert job is not None and job.attempt == 1
    for _ in range(3):  # at max_attempts: a release still does not dead-letter
        q.release(job)
        job = q.dequeue(timeout=5)
        assert job is not None and (job.id, job.attempt) == (jid, 1)
    q.ack(job)
    with unifiedq.connect(f"{amqp_url}?queue={name}.dead") as dead:
        assert dead.size() == 0


def test_close_releases_held_and_prefetched_jobs(amqp_url: str) -> None:
    """Closing is not a failure: at max_attempts=1 nothing a closing handle had is lost."""
    name = _name()
    url = f"{amqp_url}?queue={name}&max_attempts=1"
    with unifiedq.connect(url) as q:
        ids = q.enqueue_many([b"%d" % i for i in range(5)])
    a = unifiedq.connect(url)
    held = a.dequeue(timeout=5)  # a consumer: the other four sit in a's prefetch buffer
    assert held is not None and held.id == ids[0]
    a.close()
    with unifiedq.connect(url) as b:
        got = _drain(b)
    assert sorted(j.id for j in got) == sorted(ids)
    assert [j.attempt for j in got] == [1] * 5
    with unifiedq.connect(f"{amqp_url}?queue={name}.dead") as dead:
        assert dead.size() == 0


def _wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_worker_stopped_mid_handler_consumes_no_attempt(amqp_url: str) -> None:
    name = _name()
    url = f"{amqp_url}?queue={name}&max_attempts=1"
    with unifiedq.connect(url) as q:
        jid = q.enqueue(b"deploy")
    started, gate = threading.Event(), threading.Event()

    def slow(job: Job) -> None:
        started.set()
        gate.wait(30)

    w = Worker(url, slow, max_attempts=1, poll_interval=0.2)
    w.start()
    try:
        assert started.wait(20)
        t0 = time.monotonic()
        w.stop(grace=0.2)
        assert time.monotonic() - t0 < 0.2 + 1.0 + CI
    finally:
        gate.set()
    assert w.stats().returned == 1 and w.stats().failed == 0
    with unifiedq.connect(f"{amqp_url}?queue={name}.dead") as dead:
        assert dead.size() == 0
    with unifiedq.connect(url) as q:
        job = q.dequeue(timeout=10)
        assert job is not None and (job.id, job.attempt) == (jid, 1)
        q.ack(job)


def test_async_worker_stopped_mid_handler_consumes_no_attempt(amqp_url: str) -> None:
    name = _name()
    url = f"{amqp_url}?queue={name}&max_attempts=1"

    async def run() -> tuple[bool, int]:
        aq = unifiedq.connect_async(url)
        try:
            jid = await aq.enqueue(b"deploy")
            started, gate = asyncio.Event(), asyncio.Event()

            async def slow(job: Job) -> None:
                started.set()
                await gate.wait()

            w = AsyncWorker(url, slow, max_attempts=1, poll_interval=0.2)
            w.start()
            await asyncio.wait_for(started.wait(), 20)
            await w.stop(grace=0.2)
            gate.set()
            assert w.stats().returned == 1 and w.stats().failed == 0
            job = await aq.dequeue(timeout=10)
            assert job is not None
            await aq.ack(job)
            return job.id == jid, job.attempt
        finally:
            await aq.aclose()

    assert asyncio.run(run()) == (True, 1)
    with unifiedq.connect(f"{amqp_url}?queue={name}.dead") as dead:
        assert dead.size() == 0


# ---------------------------------------------------------------- a full backend still drains
@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_alarm_producers_full_consumers_drain(broker: RabbitMQServer, kind: str) -> None:
    name = _name()
    url = f"{broker.url}?queue={name}&socket_timeout=5&confirm_timeout=5"
    producer = unifiedq.connect(url)
    consumer = unifiedq.connect(url)  # consumes and also publishes (nack/release copies)
    try:
        ids = producer.enqueue_many([b"%d" % i for i in range(20)])
        held = consumer.dequeue(timeout=5)
        assert held is not None
        with broker.alarm(kind):
            t0 = time.monotonic()
            with pytest.raises(BackendFull):
                producer.enqueue(b"refused")  # written, then blocked: may land later
            assert time.monotonic() - t0 < 5 + CI
            t0 = time.monotonic()
            with pytest.raises(BackendFull):
                producer.enqueue_many([b"r1", b"r2"])  # known blocked: refused at once
            assert time.monotonic() - t0 < 0.5
            with pytest.raises(BackendFull):
                consumer.enqueue(b"refused too")  # blocks only its publish connection
            # The consumer drains the backlog: ack, nack and release still work.
            consumer.nack(held)
            got: dict[str, int] = {}
            deadline = time.monotonic() + 30
            released = False
            while len(got) < len(ids) and time.monotonic() < deadline:
                job = consumer.dequeue(timeout=1)
                if job is None:
                    continue
                if not released:
                    consumer.release(job)
                    released = True
                    continue
                consumer.ack(job)
                got[job.id] = got.get(job.id, 0) + 1
            assert sorted(got) == sorted(ids) and set(got.values()) == {1}
            assert consumer.size() == 0
        # Alarm cleared: producers work again (once the broker's connection.unblocked came).
        assert _wait_for(lambda: _try_enqueue(producer), 15)
        leftovers = {j.body for j in _drain(consumer)}
        # The publishes that were written before the block may have landed after it ended.
        assert leftovers <= {b"refused", b"refused too", b"again"} and b"again" in leftovers
    finally:
        producer.close()
        consumer.close()


def _try_enqueue(q: QueueBase) -> bool:
    try:
        q.enqueue(b"again")
    except BackendFull:
        return False
    return True


# ------------------------------------------------------------------- cancellation safety
def test_cancelled_async_dequeues_strand_nothing(amqp_url: str) -> None:
    """Hundreds of ``wait_for(dequeue)`` cancelled at random points, then a drain.

    Every job is delivered and acked exactly once, at attempt 1, and nothing stays unacked.
    """
    n, rounds = 40, 250
    name = _name()
    rng = random.Random(20)

    async def run() -> tuple[list[str], list[Job], int]:
        aq = unifiedq.connect_async(f"{amqp_url}?queue={name}&prefetch=8")
        try:
            ids = await aq.enqueue_many([b"%d" % i for i in range(n)])
            acked: list[Job] = []
            cancelled = 0
            for _ in range(rounds):
                try:
                    job = await asyncio.wait_for(
                        aq.dequeue(timeout=rng.choice((0.0, 0.05, 0.2))), rng.uniform(0.0, 0.01))
                except TimeoutError:
                    cancelled += 1
                    continue
                if job is not None and rng.random() < 0.5:
                    await aq.ack(job)  # a few get through: settle them
                    acked.append(job)
                elif job is not None:
                    await aq.release(job)
            assert cancelled >= 10, cancelled  # the rescue path ran (33 of 250 in a probe)
            deadline = time.monotonic() + 30
            while len(acked) < n and time.monotonic() < deadline:
                job = await aq.dequeue(timeout=1.0)
                if job is not None:
                    await aq.ack(job)
                    acked.append(job)
            extra = await aq.dequeue(timeout=1.0)  # nothing more, not even a duplicate
            assert extra is None, extra
            return ids, acked, await aq.size()
        finally:
            await aq.aclose()

    ids, acked, left = asyncio.run(run())
    assert left == 0
    assert sorted(j.id for j in acked) == sorted(ids)  # each exactly once
    assert all(j.attempt == 1 for j in acked), [(j.id, j.attempt) for j in acked]
    with unifiedq.connect(f"{amqp_url}?queue={name}") as q:
        assert q.dequeue(timeout=0.5) is None and q.size() == 0  # nothing stranded unacked
    with unifiedq.connect(f"{amqp_url}?queue={name}.dead") as dead:
        assert dead.size() == 0
