"""Job results (RESULT): result()/complete()/fail(), result stores, the Worker, asynq interop.

Real servers only: Redis (native results), RabbitMQ and Faktory (through a ``results=``
store), and Go asynq's Inspector/ResultWriter for the wire format.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gobuild import built_go_program
from unifiedq import (
    AsyncWorker,
    Capability,
    InvalidURL,
    JobFailed,
    ResultTimeout,
    Worker,
    connect,
    connect_async,
)
from unifiedq.codecs import JsonCodec, TypedQueue
from unifiedq.drivers.redis import RedisQueue
from unifiedq.results import MemoryResultStore, RedisResultStore
from unifiedq.testing.suite import QueueConformance

# ----------------------------------------------------- the suite's RESULT tests, store-backed


def _only_result_tests(cls: type[QueueConformance]) -> type[QueueConformance]:
    """Keep only the suite's RESULT tests (the drivers' own files run the rest)."""
    for name in dir(QueueConformance):
        if name.startswith("test_") and "result" not in name:
            setattr(cls, name, None)  # pytest collects functions only
    return cls


@_only_result_tests
class TestAmqpWithMemoryStore(QueueConformance):
    OPTIONS = {"results": "memory://amqp-results"}

    @pytest.fixture
    def url_template(self, amqp_url: str) -> str:
        return amqp_url + "?queue={name}"


@_only_result_tests
class TestAmqpWithRedisStoreInURL(QueueConformance):
    @pytest.fixture
    def url_template(self, amqp_url: str, redis_url: str) -> str:
        return amqp_url + "?queue={name}&results=" + urllib.parse.quote(redis_url, safe="")


@_only_result_tests
class TestFaktoryWithRedisStore(QueueConformance):
    @pytest.fixture
    def url_template(self, faktory_url: str, redis_url: str) -> str:
        return faktory_url + "?queue={name}&results=" + urllib.parse.quote(redis_url, safe="")


# ---------------------------------------------------------------------------------- helpers


@pytest.fixture
def qname() -> str:
    return f"uqr-{uuid.uuid4().hex[:10]}"


def _handler(job: Any) -> Any:
    if job.body == b"boom":
        raise ValueError("no such user")
    if job.body == b"none":
        return None
    if job.body == b"obj":
        return {"n": 1}
    return b"re:" + job.body


async def _ahandler(job: Any) -> Any:
    return _handler(job)


def _urls(kind: str, qname: str, redis_url: str, amqp_url: str) -> str:
    if kind == "memory":
        return f"memory://{qname}"
    if kind == "redis":
        return f"{redis_url}?queue={qname}"
    return f"{amqp_url}?queue={qname}&results=memory://{qname}"


# ------------------------------------------------------------------------ the Worker stores


@pytest.mark.parametrize("kind", ["memory", "redis", "amqp"])
def test_worker_stores_results_and_failures(kind: str, qname: str, redis_url: str,
                                            amqp_url: str) -> None:
    url = _urls(kind, qname, redis_url, amqp_url)
    with connect(url) as q, Worker(url, _handler, concurrency=2, max_attempts=2,
                                   result_codec=JsonCodec()) as w:
        assert Capability.RESULT in q.capabilities
        ok, bad, none, obj = (q.enqueue(b) for b in (b"x", b"boom", b"none", b"obj"))
        assert q.result(ok, timeout=10) == b"re:x"
        assert TypedQueue(q, JsonCodec()).result(obj, timeout=10) == {"n": 1}
        with pytest.raises(JobFailed) as info:
            q.result(bad, timeout=30)  # after its 2 attempts
        assert "ValueError: no such user" in info.value.error and info.value.job_id == bad
        with pytest.raises(ResultTimeout):
            q.result(none, timeout=0.5)  # None: acked, nothing stored
        deadline = time.monotonic() + 10
        # The failure is stored before the job is dead-lettered and counted (on amqp a broker
        # round trip later): wait for the count too.
        while (w.stats().processed < 3 or w.stats().dead < 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (w.stats().processed, w.stats().dead) == (3, 1)


@pytest.mark.parametrize("kind", ["memory", "redis", "amqp"])
def test_async_worker_stores_results(kind: str, qname: str, redis_url: str,
                                     amqp_url: str) -> None:
    url = _urls(kind, qname, redis_url, amqp_url)

    async def main() -> None:
        async with connect_async(url) as q, AsyncWorker(q, _ahandler, concurrency=4,
                                                        max_attempts=1):
            ids = [await q.enqueue(b"%d" % i) for i in range(20)]
            bad = await q.enqueue(b"boom")
            got = await asyncio.gather(*(q.result(i, timeout=10) for i in ids))
            assert got == [b"re:%d" % i for i in range(20)]
            with pytest.raises(JobFailed):
                await q.result(bad, timeout=10)
            obj = await q.enqueue(b"obj")  # a dict and no result_codec: acked, not stored
            with pytest.raises(ResultTimeout):
                await q.result(obj, timeout=0.5)

    asyncio.run(main())


def test_worker_on_a_queue_without_result_ignores_return_values(qname: str,
                                                                 faktory_url: str) -> None:
    # faktory without a results= store has no RESULT: return values are dropped, as before.
    with connect(f"{faktory_url}?queue={qname}") as q, Worker(q, lambda job: b"ignored") as w:
        assert Capability.RESULT not in q.capabilities
        q.enqueue(b"x")
        deadline = time.monotonic() + 10
        while w.stats().processed < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (w.stats().processed, w.stats().dead) == (1, 0)


# ---------------------------------------------------------------------------- redis native


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


def test_redis_result_is_asynqs_result_field(qname: str, redis_url: str,
                                             raw: redis.Redis) -> None:
    with connect(f"{redis_url}?queue={qname}") as q:
        jid = q.enqueue(b"x", priority=3)  # a priority level: asynq queue <name>:p3
        job = q.dequeue(timeout=5)
        assert job is not None
        q.complete(job, b"\x00bin", retention=120)
        p = f"asynq:{{{qname}:p3}}:"
        h = raw.hgetall(p + "t:" + jid)
        assert (h[b"state"], h[b"result"]) == (b"completed", b"\x00bin")
        score = raw.zscore(p + "completed", jid)
        assert score is not None and score == int(score)  # whole seconds, as asynq writes
        assert int(time.time()) + 118 <= score <= int(time.time()) + 121
        assert q.result(jid) == b"\x00bin"
        assert isinstance(q, RedisQueue) and q.stats()["completed"] == 1


def test_redis_result_expires_with_its_retention(qname: str, redis_url: str,
                                                 raw: redis.Redis) -> None:
    with connect(f"{redis_url}?queue={qname}") as q:
        a = q.enqueue(b"a")
        q.complete(q.dequeue(timeout=5), b"ra", retention=1)  # type: ignore[arg-type]
        assert q.result(a) == b"ra"
        time.sleep(2.1)  # whole-second scores: kept until the next second boundary past 1 s
        with pytest.raises(ResultTimeout):
            q.result(a, timeout=0.2)
        # The next complete() deletes it, as asynq's janitor would.
        q.enqueue(b"b")
        q.complete(q.dequeue(timeout=5), b"rb")  # type: ignore[arg-type]
        assert not raw.exists(f"asynq:{{{qname}}}:t:{a}")
        assert raw.zscore(f"asynq:{{{qname}}}:completed", a) is None


def test_redis_default_retention(qname: str, redis_url: str, raw: redis.Redis) -> None:
    with connect(f"{redis_url}?queue={qname}&retention=30") as q:
        a = q.enqueue(b"a")
        q.complete(q.dequeue(timeout=5), b"r")  # type: ignore[arg-type]
        score = raw.zscore(f"asynq:{{{qname}}}:completed", a)
        assert score is not None and score <= int(time.time()) + 31
    with connect(f"{redis_url}?queue={qname}") as q:  # no retention option: 1 hour
        b = q.enqueue(b"b")
        q.complete(q.dequeue(timeout=5), b"r")  # type: ignore[arg-type]
        score = raw.zscore(f"asynq:{{{qname}}}:completed", b)
        assert score is not None and score >= int(time.time()) + 3599


def test_redis_complete_of_a_lost_lease_stores_nothing(qname: str, redis_url: str) -> None:
    with connect(f"{redis_url}?queue={qname}") as q:
        jid = q.enqueue(b"a")
        job = q.dequeue(timeout=5)
        assert job is not None
        q.ack(job)
        from unifiedq import JobNotLeased

        with pytest.raises(JobNotLeased):
            q.complete(job, b"late")
        with pytest.raises(ResultTimeout):
            q.result(jid)


# ------------------------------------------------------------------------- Go asynq interop

_INTEROP = Path(__file__).parent / "interop"


@pytest.fixture(scope="module")
def interop_bin() -> Path:
    return built_go_program(_INTEROP, "asynq-interop", "asynq interop")


def _go(binary: Path, redis_url: str, cmd: str, queue: str, *args: str) -> list[dict[str, Any]]:
    u = urllib.parse.urlsplit(redis_url)
    argv = [str(binary), cmd, "-addr", f"{u.hostname}:{u.port}", "-db",
            u.path.strip("/") or "0", "-queue", queue, *args]
    if u.password:
        argv += ["-password", urllib.parse.unquote(u.password)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stderr}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_go_inspector_reads_python_results(interop_bin: Path, qname: str,
                                           redis_url: str) -> None:
    with connect(f"{redis_url}?queue={qname}") as q:
        ok, bad = q.enqueue(b"x"), q.enqueue(b"y")
        j1, j2 = q.dequeue(timeout=5), q.dequeue(timeout=5)
        assert j1 is not None and j2 is not None
        q.complete(j1, b"py-result", retention=600)
        q.fail(j2, "RuntimeError: python says no")
    (info,) = _go(interop_bin, redis_url, "taskinfo", qname, "-id", ok)
    assert (info["state"], info["result"], info["retention"]) == ("completed", "py-result", 600)
    assert abs(info["completed_at"] - time.time()) < 10
    (info,) = _go(interop_bin, redis_url, "taskinfo", qname, "-id", bad)
    assert (info["state"], info["last_err"]) == ("archived", "RuntimeError: python says no")


def test_python_reads_go_result_writer(interop_bin: Path, qname: str, redis_url: str) -> None:
    # A Go asynq server runs a Python-enqueued task and writes its result with ResultWriter;
    # the retention comes from the Python side (the task message's Retention).
    with connect(f"{redis_url}?queue={qname}&retention=60&poll_interval=0.2") as q:
        jid = q.enqueue(b"payload", headers={"type": "interop:result"})
        got: list[Any] = []
        t = threading.Thread(target=lambda: got.append(q.result(jid, timeout=60)))
        t.start()
        _go(interop_bin, redis_url, "consume", qname, "-count", "1", "-timeout", "60s")
        t.join(65)
        assert got == [b"go:payload"]


# ---------------------------------------------------------------------------- stores, options


def test_memory_store_is_shared_by_name_and_expires() -> None:
    a, b = MemoryResultStore.named("t-shared"), MemoryResultStore.named("t-shared")
    assert a is b and MemoryResultStore.named("t-other") is not a
    a.put("q", "1", b"\x01r", 0.2)
    assert b.wait("q", "1", 0) == b"\x01r"
    assert b.wait("q", "2", 0) is None
    time.sleep(0.3)
    assert b.wait("q", "1", 0) is None  # past its retention


def test_redis_store_wakes_waiters_without_polling(redis_url: str) -> None:
    store = RedisResultStore(redis_url)
    scope, jid = f"s-{uuid.uuid4().hex[:8]}", "job-1"
    out: list[Any] = []
    waiters = [threading.Thread(target=lambda: out.append(store.wait(scope, jid, 10)))
               for _ in range(3)]
    for t in waiters:
        t.start()
    time.sleep(0.3)
    start = time.monotonic()
    store.put(scope, jid, b"\x01v", 5)
    for t in waiters:
        t.join(12)
    assert out == [b"\x01v"] * 3  # every waiter saw the one token
    assert time.monotonic() - start < 1.0
    store.close()


def test_results_option_errors(redis_url: str, amqp_url: str) -> None:
    with pytest.raises(InvalidURL, match="natively"):
        connect(f"{redis_url}?queue=x&results=memory://r")
    with pytest.raises(InvalidURL, match="memory://<name> or redis"):
        connect(f"{amqp_url}?queue=x&results=ftp://nope")
    with pytest.raises(InvalidURL, match="asyncio-only"):
        connect_async("quic://127.0.0.1:4433/x?ca=/nonexistent", results="memory://r")
    # A keyword beats the URL; the option never reaches the driver's own parser.
    q = connect(f"{amqp_url}?queue=x&results=ftp://nope", results="memory://kw")
    assert Capability.RESULT in q.capabilities and q._results is MemoryResultStore.named("kw")
    q.close()


def test_a_store_keeps_the_flags_a_handle_dropped(qname: str, amqp_url: str) -> None:
    """results= adds RESULT to the handle's own flags: a quorum queue has no PRIORITY, and a
    store must not give it back (it did: the class's flags were used)."""
    with connect(f"{amqp_url}?queue={qname}&queue_type=quorum") as plain, \
            connect(f"{amqp_url}?queue={qname}-r&queue_type=quorum"
                    f"&results=memory://{qname}") as stored:
        assert Capability.PRIORITY not in plain.capabilities
        assert stored.capabilities == plain.capabilities | Capability.RESULT
