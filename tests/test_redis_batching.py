"""redis:// hot path (issue 18): ack_many in one round trip, and what the scripts cost.

Real redis-server only. The command counts come from the server's own ``INFO commandstats``
on a private server, so no other test's traffic is counted.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from unifiedq import Job, JobNotLeased, QueueBase, connect, connect_async
from unifiedq.drivers.redis import AsyncRedisQueue, RedisQueue
from unifiedq.testing.fixtures import require_binary
from unifiedq.testing.servers import RedisServer


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    require_binary("redis-server")
    s = RedisServer()
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def raw(server: RedisServer) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(server.url)
    yield r
    r.close()


def _url(server: RedisServer, name: str, **opts: object) -> str:
    return f"{server.url}?queue={name}" + "".join(f"&{k}={v}" for k, v in opts.items())


def _active(q: object) -> int:
    assert isinstance(q, RedisQueue)
    n = q.stats()["active"]
    assert isinstance(n, int)
    return n


def _one(q: QueueBase) -> Job:
    job = q.dequeue()
    assert job is not None
    return job


def _calls(r: redis.Redis, cmd: str) -> int:
    stats: dict[str, Any] = r.info("commandstats")
    return int(stats.get(f"cmdstat_{cmd}", {}).get("calls", 0))


@pytest.fixture
def qname() -> str:
    return f"b-{uuid.uuid4().hex[:8]}"


def test_ack_many_is_one_script_call_and_one_round_trip(
    server: RedisServer, raw: redis.Redis, qname: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect(_url(server, qname, heartbeat="false")) as q:
        assert isinstance(q, RedisQueue)
        q.enqueue_many([b"x%d" % i for i in range(40)])
        q.ack_many([_one(q)])  # loads the script: not part of the count below
        jobs = q.dequeue_many(39)
        assert len(jobs) == 39
        trips = 0
        real = q._roundtrip

        def counting(*a: Any, **k: Any) -> Any:
            nonlocal trips
            trips += 1
            return real(*a, **k)

        monkeypatch.setattr(q, "_roundtrip", counting)
        raw.config_resetstat()
        q.ack_many(jobs)
        assert trips == 1
        assert _calls(raw, "evalsha") == 1
        # Every job is settled as ack() settles it: gone from active, lease and Redis.
        assert raw.llen(f"asynq:{{{qname}}}:active") == 0
        assert raw.zcard(f"asynq:{{{qname}}}:lease") == 0
        assert not raw.exists(*[f"asynq:{{{qname}}}:t:{j.id}" for j in jobs])
        assert int(raw.get(f"asynq:{{{qname}}}:processed") or 0) == 40
        daily = f"asynq:{{{qname}}}:processed:" + time.strftime("%Y-%m-%d", time.gmtime())
        assert int(raw.get(daily) or 0) == 40
        assert raw.ttl(daily) > 80 * 86_400  # asynq's 90-day expiry, set once


def test_ack_many_over_priority_levels_is_one_call_per_level(
    server: RedisServer, raw: redis.Redis, qname: str
) -> None:
    with connect(_url(server, qname, heartbeat="false")) as q:
        q.enqueue_many([b"lo"] * 3)
        q.enqueue_many([b"hi"] * 3, priority=4)
        q.ack_many([_one(q)])  # load the script
        jobs = q.dequeue_many(10)
        assert sorted(j.priority or 0 for j in jobs) == [0, 0, 0, 4, 4]
        raw.config_resetstat()
        q.ack_many(jobs)
        assert _calls(raw, "evalsha") == 2  # one per asynq queue: no script spans two
        assert _active(q) == 0
        assert q.size() == 0


def test_ack_many_names_lost_leases_and_acks_the_rest(
    server: RedisServer, raw: redis.Redis, qname: str
) -> None:
    opts = {"visibility_timeout": 0.3, "heartbeat": "false"}
    with connect(_url(server, qname, **opts)) as a, connect(_url(server, qname, **opts)) as b:
        a.enqueue_many([b"j%d" % i for i in range(6)])
        held = a.dequeue_many(5)
        a.ack(held[0])  # settled before: not leased any more
        time.sleep(0.45)  # held[1..4]'s leases lapse; b takes them all over (and the 6th)
        taken = b.dequeue_many(10)
        assert len(taken) == 5
        again = {j.id: j for j in taken}
        with pytest.raises(JobNotLeased) as err:
            a.ack_many([held[0], held[1], held[2]])
        assert set(err.value.job_ids) == {held[0].id, held[1].id, held[2].id}
        assert _active(b) == 5  # a's stale ack_many touched none of b's leases
        with pytest.raises(JobNotLeased) as err:
            b.ack_many([again[held[1].id], held[3], again[held[4].id]])  # held[3]: a's, stale
        assert err.value.job_ids == (held[3].id,)
        assert _active(b) == 3  # the two others were acked
        b.ack_many([j for j in taken if j.id not in (held[1].id, held[4].id)])
        assert _active(b) == 0
        assert b.size() == 0
        # One ack() plus five acked by b: recovery counted four failures, no ack twice.
        assert int(raw.get(f"asynq:{{{qname}}}:processed") or 0) == 10


def test_ack_many_keeps_retention_and_unique_locks(
    server: RedisServer, raw: redis.Redis, qname: str
) -> None:
    with connect(_url(server, qname, retention=60, unique_ttl=60, heartbeat="false")) as q:
        q.enqueue_many([b"u1"])
        q.enqueue(b"u2")
        jobs = q.dequeue_many(2)
        assert len(jobs) == 2
        locks = raw.keys(f"asynq:{{{qname}}}:unique:*")
        assert len(locks) == 2
        q.ack_many(jobs)
        assert raw.keys(f"asynq:{{{qname}}}:unique:*") == []  # released, as ack() does
        completed: list[tuple[bytes, float]] = raw.zrange(  # type: ignore[assignment]
            f"asynq:{{{qname}}}:completed", 0, -1, withscores=True)
        assert sorted(i.decode() for i, _ in completed) == sorted(j.id for j in jobs)
        for _, score in completed:
            assert abs(score - (time.time() + 60)) < 5
        for j in jobs:
            h = raw.hgetall(f"asynq:{{{qname}}}:t:{j.id}")
            assert h[b"state"] == b"completed" and b"uq_token" not in h


def test_ack_many_async_face(server: RedisServer, raw: redis.Redis, qname: str) -> None:
    async def main() -> None:
        async with connect_async(_url(server, qname, heartbeat="false")) as q:
            await q.enqueue_many([b"a%d" % i for i in range(10)])
            jobs = await q.dequeue_many(10)
            await q.ack(jobs[0])
            raw.config_resetstat()
            with pytest.raises(JobNotLeased) as err:
                await q.ack_many(jobs)
            assert err.value.job_ids == (jobs[0].id,)
            assert _calls(raw, "evalsha") == 1
            assert isinstance(q, AsyncRedisQueue)
            assert (await q.stats())["active"] == 0
            await q.ack_many([])

    asyncio.run(main())


def test_ack_many_after_script_flush(server: RedisServer, raw: redis.Redis, qname: str) -> None:
    # A restarted Redis has lost its script cache: ack_many loads the script and resends.
    with connect(_url(server, qname, heartbeat="false")) as q:
        q.enqueue_many([b"f"] * 4)
        jobs = q.dequeue_many(4)
        raw.script_flush()
        q.ack_many(jobs)
        assert _active(q) == 0


# --------------------------------------------------------------------------- idle pickup


def test_idle_pickup_is_one_request_after_the_wake(
    server: RedisServer, raw: redis.Redis, qname: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dequeue script rides behind the BLPOP: after its first (empty) take, a waiting
    # consumer sends ONE request in all (before: the BLPOP, then the take once woken).
    from unifiedq.drivers.redis import _clients

    sends: list[bytes] = []
    real = _clients.SyncWire.send

    def counting(conn: Any, data: bytes, timeout: float) -> None:
        if threading.current_thread().name == "consumer":
            sends.append(data)
        real(conn, data, timeout)

    monkeypatch.setattr(_clients.SyncWire, "send", staticmethod(counting))
    got: list[Job | None] = []
    with connect(_url(server, qname, heartbeat="false", poll_interval=3)) as q:
        q.enqueue(b"warm")
        q.ack(_one(q))  # connected, scripts loaded
        raw.delete(f"asynq:{{{qname}}}:uq:wake")  # warm's token would wake us at once
        t = threading.Thread(target=lambda: got.append(q.dequeue(timeout=5)), name="consumer")
        t.start()
        time.sleep(0.3)  # blocked in the wait by now
        with connect(_url(server, qname)) as producer:
            jid = producer.enqueue(b"wake")
        t.join(5)
        assert got and got[0] is not None and got[0].id == jid
        assert len(sends) == 2, [s[:60] for s in sends]  # first take; BLPOP + take at once
        assert b"BLPOP" in sends[1] and b"EVALSHA" in sends[1]
        q.ack(got[0])


def test_waited_take_leases_for_the_full_visibility_timeout(
    server: RedisServer, raw: redis.Redis, qname: str
) -> None:
    # Its arguments were computed before the wait: the lease is lengthened by the wait.
    with connect(_url(server, qname, heartbeat="false", visibility_timeout=2,
                      poll_interval=1)) as q:
        got: list[Job | None] = []
        t = threading.Thread(target=lambda: got.append(q.dequeue(timeout=5)))
        t.start()
        time.sleep(0.6)
        with connect(_url(server, qname)) as producer:
            jid = producer.enqueue(b"x")
        t.join(5)
        score = raw.zscore(f"asynq:{{{qname}}}:lease", jid)
        assert score is not None and score - time.time() > 1.8
        assert got and got[0] is not None
        q.ack(got[0])


def test_waiting_consumer_survives_a_script_flush(
    server: RedisServer, raw: redis.Redis, qname: str
) -> None:
    with connect(_url(server, qname, heartbeat="false", poll_interval=3)) as q:
        q.enqueue(b"warm")
        q.ack(_one(q))
        got: list[Job | None] = []
        t = threading.Thread(target=lambda: got.append(q.dequeue(timeout=4)))
        t.start()
        time.sleep(0.3)
        raw.script_flush()  # the pipelined EVALSHA meets NOSCRIPT: the next take loads it
        with connect(_url(server, qname)) as producer:
            jid = producer.enqueue(b"after flush")
        t.join(5)
        assert got and got[0] is not None and got[0].id == jid


def test_close_during_a_wait_takes_no_job(
    server: RedisServer, raw: redis.Redis, qname: str
) -> None:
    # A job the pipelined take grabs after close() is given back at once: pending again,
    # attempt unchanged, nothing in active.
    q = connect(_url(server, qname, heartbeat="false", poll_interval=3))
    q.enqueue(b"warm")
    q.ack(_one(q))
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            q.dequeue(timeout=5)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.3)
    q.close()
    with connect(_url(server, qname, heartbeat="false")) as producer:
        jid = producer.enqueue(b"late")
        t.join(5)
        assert errors and type(errors[0]).__name__ == "QueueClosed"
        assert raw.llen(f"asynq:{{{qname}}}:active") == 0
        job = producer.dequeue(timeout=1)
        assert job is not None and job.id == jid and job.attempt == 1
        producer.ack(job)


# --------------------------------------------------------------------------- maintenance


def test_due_task_is_forwarded_while_the_queue_stays_busy(
    server: RedisServer, raw: redis.Redis, qname: str
) -> None:
    # Maintenance is skipped while every call finds ready jobs, but runs at least every
    # MAINTAIN_EVERY seconds: a due delayed job reaches pending before the backlog drains.
    with connect(_url(server, qname, heartbeat="false")) as q:
        q.enqueue_many([b"busy"] * 1000)
        late = q.enqueue(b"late", delay=0.2)
        # Due at a whole second (asynq's score format, rounded up): up to 1.2 s from now.
        due = float(raw.zscore(f"asynq:{{{qname}}}:scheduled", late) or 0)
        assert due >= time.time() + 0.1
        held = [_one(q)]
        end = time.monotonic() + (due - time.time()) + 0.5  # then MAINTAIN_EVERY, with slack
        while time.monotonic() < end:
            held.append(_one(q))
            time.sleep(0.005)
        assert raw.zcard(f"asynq:{{{qname}}}:scheduled") == 0
        assert raw.hget(f"asynq:{{{qname}}}:t:{late}", "state") == b"pending"
        assert q.size() > 100  # the backlog never drained
        q.ack_many(held)
        q.purge()
