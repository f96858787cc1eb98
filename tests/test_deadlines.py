"""Per-job deadlines (``deadline=``/``ttl=``) and run timeouts (``timeout=``): Capability.DEADLINE.

Round-trips on every driver that has the flag, both faces; jobs past their deadline are
settled as expired by ``dequeue``/``dequeue_many`` (dead letter or drop) and counted; bad
input is refused before any I/O. Worker enforcement is in the second half.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from unifiedq import (
    Capability,
    InvalidArgument,
    InvalidURL,
    UnsupportedOperation,
    connect,
    connect_async,
)
from unifiedq._job import EnqueueRequest

# -- bad input: typed errors before any I/O ---------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"deadline": 1.0e9, "ttl": 5},
    {"ttl": 0},
    {"ttl": -1},
    {"ttl": math.nan},
    {"ttl": math.inf},
    {"ttl": True},
    {"ttl": "5"},
    {"deadline": dt.datetime(2030, 1, 1)},  # naive: ambiguous
    {"deadline": math.nan},
    {"deadline": -5.0},
    {"deadline": "2030-01-01"},
    {"timeout": 0},
    {"timeout": -0.5},
    {"timeout": math.nan},
    {"timeout": False},
])
def test_bad_arguments_are_refused_before_io(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        EnqueueRequest.build(b"x", **kwargs)
    q = connect(f"memory://dl-bad-{uuid.uuid4().hex[:8]}")
    with pytest.raises(InvalidArgument):
        q.enqueue(b"x", **kwargs)
    with pytest.raises(InvalidArgument):
        q.enqueue_many([b"x"], **kwargs)
    assert q.size() == 0
    q.close()


def test_deadline_forms() -> None:
    aware = dt.datetime(2031, 5, 6, 7, 8, 9, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert EnqueueRequest.build(b"", deadline=aware).deadline == aware.timestamp()
    assert EnqueueRequest.build(b"", deadline=2_000_000_000).deadline == 2e9
    t0 = time.time()
    r = EnqueueRequest.build(b"", ttl=dt.timedelta(seconds=30), timeout=dt.timedelta(seconds=2))
    assert r.deadline is not None and t0 + 30 <= r.deadline <= time.time() + 30
    assert r.timeout == 2.0
    assert EnqueueRequest.build(b"").deadline is None


def test_on_expired_option_is_checked() -> None:
    with pytest.raises(InvalidURL):
        connect("memory://dl-x", on_expired="later")
    with pytest.raises(InvalidURL):
        connect("memory://dl-x?on_expired=nope")
    assert connect("memory://dl-x?on_expired=drop").on_expired == "drop"
    assert connect("memory://dl-x").on_expired == "dead"


def test_a_driver_without_the_flag_refuses() -> None:
    # The conformance suite checks this on every driver without DEADLINE; shm is one.
    q = connect(f"shm://dl-unsupported-{uuid.uuid4().hex[:8]}")
    try:
        assert Capability.DEADLINE not in q.capabilities
        kws: list[dict[str, Any]] = [{"ttl": 5}, {"deadline": time.time() + 5}, {"timeout": 1}]
        for kw in kws:
            with pytest.raises(UnsupportedOperation):
                q.enqueue(b"x", **kw)
        assert q.size() == 0
    finally:
        q.close()


# -- round trip and shedding, per driver, both faces --------------------------------------------

DRIVERS = ["memory", "redis", "amqp", "faktory"]


@pytest.fixture(params=DRIVERS)
def make_url(request: pytest.FixtureRequest) -> Callable[[], str]:
    """A factory of fresh queue URLs of one driver with DEADLINE."""
    kind = request.param

    def fresh() -> str:
        name = f"dl-{uuid.uuid4().hex[:10]}"
        if kind == "memory":
            return f"memory://{name}"
        base = request.getfixturevalue(f"{kind}_url")
        return f"{base}?queue={name}"
    fresh.kind = kind  # type: ignore[attr-defined]
    return fresh


def _whole(kind: str, x: float) -> float:
    """What the driver stores for ``x`` seconds: redis keeps asynq's whole seconds (ceil)."""
    return float(math.ceil(x)) if kind == "redis" else x


def _shed_ok(make_url: Callable[[], str], counted: int, expected: int) -> bool:
    """Whether ``counted`` jobs shed by the handle fit: exactly ``expected``, except on amqp,
    where the broker dead-letters expired messages at the head of the queue itself (those
    are not counted by the handle)."""
    if make_url.kind == "amqp":  # type: ignore[attr-defined]
        return 0 <= counted <= expected
    return counted == expected


def test_round_trip_blocking(make_url: Callable[[], str]) -> None:
    kind = make_url.kind  # type: ignore[attr-defined]
    with connect(make_url()) as q:
        assert Capability.DEADLINE in q.capabilities
        dl = time.time() + 60.25
        q.enqueue(b"a", deadline=dl, timeout=2.5)
        q.enqueue(b"b", ttl=30)
        q.enqueue(b"c")
        a, b, c = (q.dequeue(timeout=2) for _ in range(3))
        assert a is not None and b is not None and c is not None
        assert (a.body, a.deadline, a.timeout) == (b"a", _whole(kind, dl), _whole(kind, 2.5))
        assert b.deadline is not None and time.time() + 25 < b.deadline <= time.time() + 31
        assert c.deadline is None
        q.ack_many([a, b, c])


def test_round_trip_async_and_batch(make_url: Callable[[], str]) -> None:
    kind = make_url.kind  # type: ignore[attr-defined]

    async def run() -> None:
        async with connect_async(make_url()) as q:
            dl = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
            await q.enqueue_many([b"1", b"2", b"3"], deadline=dl, timeout=7)
            jobs = await q.dequeue_many(10, timeout=2)
            assert [j.body for j in jobs] == [b"1", b"2", b"3"]
            assert {j.deadline for j in jobs} == {_whole(kind, dl.timestamp())}
            assert {j.timeout for j in jobs} == {7.0}
            await q.ack_many(jobs)
            await q.enqueue_many([b"x", b"y"], ttl=60)
            jobs = await q.dequeue_many(10, timeout=2)
            assert len({j.deadline for j in jobs}) == 1  # one deadline for the batch
            await q.ack_many(jobs)
    asyncio.run(run())


def test_dequeue_sheds_expired_jobs(make_url: Callable[[], str]) -> None:
    with connect(make_url()) as q:
        past = time.time() - 5
        q.enqueue(b"stale1", deadline=past)
        q.enqueue(b"fresh", ttl=60)
        q.enqueue(b"stale2", deadline=past)
        q.enqueue(b"plain")
        got = [q.dequeue(timeout=1) for _ in range(3)]
        assert [j.body if j else None for j in got] == [b"fresh", b"plain", None]
        assert _shed_ok(make_url, q.expired_count, 2)
        assert q.size() == 0
        q.ack_many([j for j in got if j is not None])


def test_dequeue_many_sheds_and_waits_for_a_live_job(make_url: Callable[[], str]) -> None:
    async def run() -> None:
        async with connect_async(make_url()) as q:
            await q.enqueue_many([b"s"] * 5, deadline=time.time() - 5)
            assert await q.dequeue_many(10, timeout=0.3) == []
            assert _shed_ok(make_url, q.expired_count, 5)
            await q.enqueue_many([b"s"] * 3, deadline=time.time() - 5)
            await q.enqueue(b"live")
            jobs = await q.dequeue_many(10, timeout=2)
            assert [j.body for j in jobs] == [b"live"]
            assert _shed_ok(make_url, q.expired_count, 8)
            await q.ack_many(jobs)
    asyncio.run(run())


@pytest.mark.parametrize("kind", ["memory", "redis"])  # amqp: the broker expires them first
def test_keep_policy_hands_expired_jobs_out(kind: str, request: pytest.FixtureRequest) -> None:
    name = f"dl-keep-{uuid.uuid4().hex[:8]}"
    url = (f"memory://{name}" if kind == "memory"
           else f"{request.getfixturevalue('redis_url')}?queue={name}")
    with connect(url, on_expired="keep") as q:
        q.enqueue(b"stale", deadline=time.time() - 5)
        job = q.dequeue(timeout=2)
        assert job is not None and job.body == b"stale" and q.expired_count == 0
        q.ack(job)


def test_drop_policy_acks_expired_jobs(make_url: Callable[[], str]) -> None:
    url = make_url()
    with connect(url, on_expired="drop") as q:
        q.enqueue(b"stale", deadline=time.time() - 5)
        assert q.dequeue(timeout=0.5) is None
        assert _shed_ok(make_url, q.expired_count, 1)


# -- the Worker: never starts an expired job, enforces timeout and deadline, CoDel ------------

def _wait_for(pred: Callable[[], bool], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_worker_never_starts_expired_jobs_and_counts_them(make_url: Callable[[], str]) -> None:
    from unifiedq import Worker
    from unifiedq.metrics import Metrics

    class Count(Metrics):
        def __init__(self) -> None:
            self.n = 0

        def expired(self, queue: str, driver: str, n: int = 1) -> None:
            self.n += n

    ran: list[bytes] = []
    m = Count()
    url = make_url()
    with connect(url) as q:
        q.enqueue_many([b"stale"] * 4, deadline=time.time() - 5)
        q.enqueue_many([b"ok"] * 3, ttl=60)
        with Worker(q, lambda j: ran.append(j.body), concurrency=4, metrics=m,
                    poll_interval=0.05) as w:
            _wait_for(lambda: len(ran) == 3 and _shed_ok(make_url, w.stats().expired, 4)
                      and q.size() == 0)
        assert sorted(ran) == [b"ok"] * 3
        assert m.n == w.stats().expired
        assert q.size() == 0


def test_worker_sheds_a_prefetched_job_that_expired_while_waiting() -> None:
    from unifiedq import Worker
    ran: list[bytes] = []

    def slow(job: object) -> None:
        body = job.body  # type: ignore[attr-defined]
        if body == b"block":
            time.sleep(0.6)
        ran.append(body)

    with connect(f"memory://dl-pf-{uuid.uuid4().hex[:8]}") as q:
        q.enqueue(b"block")
        q.enqueue(b"short", ttl=0.3)  # taken with "block" or after it; expires meanwhile
        with Worker(q, slow, concurrency=1, poll_interval=0.05) as w:
            _wait_for(lambda: ran == [b"block"] and w.stats().expired == 1)
            time.sleep(0.1)
        assert ran == [b"block"]


@pytest.mark.parametrize("face", ["blocking", "async"])
def test_worker_enforces_job_timeout_and_deadline(face: str) -> None:
    from unifiedq import AsyncWorker, Retry, Worker
    name = f"dl-to-{uuid.uuid4().hex[:8]}"
    dl = f"memory://{name}-dead"
    started: list[float] = []

    if face == "blocking":
        def handler(job: object) -> None:
            started.append(time.monotonic())
            time.sleep(3.0)

        with connect(f"memory://{name}") as q:
            q.enqueue(b"t", timeout=0.3)
            q.enqueue(b"d", ttl=0.6)
            t0 = time.monotonic()
            with Worker(q, handler, concurrency=2, timeout=30, dead_letter=dl,
                        retry=Retry(max_attempts=1), poll_interval=0.05) as w:
                _wait_for(lambda: w.stats().timed_out == 2)
                elapsed = time.monotonic() - t0
    else:
        async def ahandler(job: object) -> None:
            started.append(time.monotonic())
            await asyncio.sleep(3.0)

        async def run() -> tuple[float, int]:
            async with connect_async(f"memory://{name}") as q:
                await q.enqueue(b"t", timeout=0.3)
                await q.enqueue(b"d", ttl=0.6)
                t0 = time.monotonic()
                w = AsyncWorker(q, ahandler, concurrency=2, timeout=30, dead_letter=dl,
                                retry=Retry(max_attempts=1), poll_interval=0.05)
                w.start()
                while w.stats().timed_out < 2:
                    assert time.monotonic() - t0 < 10
                    await asyncio.sleep(0.01)
                await w.stop()
                return time.monotonic() - t0, w.stats().timed_out
        elapsed, _ = asyncio.run(run())
    # Both cut well before the handler's 3 s and the worker's 30 s timeout.
    assert len(started) == 2
    assert elapsed < 2.5
    # Dead-lettered (max_attempts=1) with the limit that applied; the expired one may have
    # been shed instead of dead-lettered if its lease came back after the deadline.
    with connect(dl) as dead:
        errors = {}
        while (j := dead.dequeue()) is not None:
            errors[j.body] = j.headers.get("x-unifiedq-error", "")
    assert "past its 0.3s timeout" in errors[b"t"]
    assert "past the job's deadline" in errors[b"d"]


def test_codel_sheds_only_while_the_minimum_sojourn_stays_above_target() -> None:
    from unifiedq.deadlines import CoDel
    now = [0.0]
    c = CoDel(target=0.1, interval=1.0, clock=lambda: now[0])
    assert c.admit(5.0)  # above target: the interval starts, measuring only
    now[0] = 0.6
    assert c.admit(3.0)
    now[0] = 1.0
    assert not c.admit(2.0)  # every job for a whole interval was above target: shed
    assert c.overloaded and c.shed_count == 1
    now[0] = 1.2
    assert not c.admit(0.5)
    assert c.admit(0.05)  # fresh work again: shedding stops at once
    assert not c.overloaded
    assert c.admit(2.0)  # and a new interval must pass before it sheds again
    now[0] = 2.1
    assert c.admit(2.0)
    now[0] = 2.2
    assert not c.admit(2.0)
    now[0] = 3.0  # a pause shorter than ten intervals (busy shedding): still overloaded
    assert not c.admit(2.0)
    now[0] = 13.5  # no job for ten intervals: idle, not a backlog
    assert c.admit(2.0) and not c.overloaded
    with pytest.raises(InvalidArgument):
        CoDel(target=0)
    with pytest.raises(InvalidArgument):
        CoDel(interval=math.inf)


def test_worker_with_codel_sheds_a_stale_backlog() -> None:
    from unifiedq import Worker
    from unifiedq.deadlines import CoDel
    ran: list[bytes] = []
    with connect(f"memory://dl-codel-{uuid.uuid4().hex[:8]}") as q:
        q.enqueue_many([b"old"] * 50)
        time.sleep(0.3)  # the backlog is now 0.3 s old: above the 0.05 s target
        codel = CoDel(target=0.05, interval=0.1)

        def h(job: object) -> None:
            ran.append(job.body)  # type: ignore[attr-defined]
            time.sleep(0.01)

        with Worker(q, h, concurrency=1, overload=codel, poll_interval=0.02) as w:
            _wait_for(lambda: q.size() == 0 and len(ran) + w.stats().expired == 50)
            q.enqueue(b"new")
            _wait_for(lambda: b"new" in ran)
        assert codel.shed_count == w.stats().expired > 0
        assert len(ran) + codel.shed_count == 51


# -- amqp: the broker itself dead-letters expired messages (reason "expired") -----------------

def test_amqp_broker_dead_letters_expired_messages_with_reason_expired(amqp_url: str) -> None:
    import kombu.connection
    kombu_connection: Any = kombu.connection.Connection
    name = f"dl-amqp-{uuid.uuid4().hex[:8]}"
    with connect(f"{amqp_url}?queue={name}") as q:
        q.enqueue(b"short-lived", ttl=0.2)
        time.sleep(0.6)
        # Past its TTL at the head of the queue: RabbitMQ moved it to <name>.dead itself.
        assert q.size() == 0 and q.expired_count == 0
    with kombu_connection(amqp_url) as conn:
        msg = conn.default_channel.basic_get(f"{name}.dead", no_ack=True)
    assert msg is not None and bytes(msg.body) == b"short-lived"
    deaths = msg.properties["application_headers"]["x-death"]
    assert deaths[0]["reason"] == "expired"


# -- redis: asynq's own Timeout/Deadline, both directions, through Go asynq --------------------

@pytest.fixture(scope="module")
def asynq_bin() -> Path:
    from gobuild import built_go_program
    return built_go_program(Path(__file__).parent / "interop", "asynq-interop", "asynq interop")


def _go(binary: Path, redis_url: str, cmd: str, queue: str, *args: str) -> list[dict[str, Any]]:
    u = urllib.parse.urlsplit(redis_url)
    argv = [str(binary), cmd, "-addr", f"{u.hostname}:{u.port}", "-db",
            u.path.strip("/") or "0", "-queue", queue, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_go_asynq_timeout_and_deadline_read_by_python(asynq_bin: Path, redis_url: str) -> None:
    name = f"dl-go-{uuid.uuid4().hex[:8]}"
    dl = int(time.time()) + 600
    _go(asynq_bin, redis_url, "produce", name, "-count", "1", "-task-timeout", "7s",
        "-task-deadline", str(dl))
    with connect(f"{redis_url}?queue={name}") as q:
        job = q.dequeue(timeout=5)
        assert job is not None and job.body == b"go-0"
        assert (job.timeout, job.deadline) == (7.0, float(dl))
        q.ack(job)


def test_python_timeout_deadline_and_expiry_seen_by_go_inspector(asynq_bin: Path,
                                                                   redis_url: str) -> None:
    name = f"dl-go-{uuid.uuid4().hex[:8]}"
    dl = time.time() + 600.3
    with connect(f"{redis_url}?queue={name}") as q:
        jid = q.enqueue(b"py", deadline=dl, timeout=2.5)
        (info,) = _go(asynq_bin, redis_url, "taskinfo", name, "-id", jid)
        # asynq's units: whole seconds, rounded up (never earlier or shorter than asked).
        assert (info["timeout"], info["deadline"]) == (3.0, math.ceil(dl))
        only = q.enqueue(b"deadline only", ttl=600)
        (info,) = _go(asynq_bin, redis_url, "taskinfo", name, "-id", only)
        assert info["timeout"] == 0  # as asynq's client writes a deadline without a timeout
        q.purge()
        stale = q.enqueue(b"stale", deadline=time.time() - 5)
        assert q.dequeue(timeout=0.5) is None and q.expired_count == 1
        (info,) = _go(asynq_bin, redis_url, "taskinfo", name, "-id", stale)
        assert info["state"] == "archived" and info["last_err"] == "unifiedq: expired"


def test_amqp_delayed_job_past_its_deadline_is_shed_by_dequeue(amqp_url: str) -> None:
    name = f"dl-amqp-{uuid.uuid4().hex[:8]}"
    with connect(f"{amqp_url}?queue={name}") as q:
        q.enqueue(b"late", delay=0.2, ttl=0.6)  # out of the delay queue without its TTL
        q.enqueue(b"later", delay=0.2, ttl=60)
        time.sleep(1.0)
        job = q.dequeue(timeout=2)
        assert job is not None and job.body == b"later"
        assert q.dequeue(timeout=0.3) is None
        assert q.expired_count == 1
        q.ack(job)
