"""redis:// driver: the conformance suite plus asynq-specific checks, on a real redis-server."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gobuild import built_go_program
from unifiedq import connect, connect_async
from unifiedq.drivers.redis import AsyncRedisQueue, RedisQueue, _proto
from unifiedq.testing.fixtures import require_binary
from unifiedq.testing.servers import RedisServer, find_free_port
from unifiedq.testing.suite import QueueConformance


@pytest.fixture(scope="module")
def persistent_redis() -> Iterator[RedisServer]:
    """A private AOF-backed Redis, for the durability check (restart keeps data)."""
    require_binary("redis-server")
    server = RedisServer(persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class TestRedis(QueueConformance):
    # Short leases without the heartbeat, so un-acked jobs really come back.
    LEASE_OPTIONS = {"visibility_timeout": 1.0, "heartbeat": False}
    LEASE_SECONDS = 1.0
    DELAY_SLACK = 0.5

    @pytest.fixture
    def url_template(self, request: pytest.FixtureRequest, redis_url: str) -> str:
        if request.node.originalname == "test_durability_matches_flag":
            server: RedisServer = request.getfixturevalue("persistent_redis")
            return server.url + "?queue={name}"
        return redis_url + "?queue={name}"

    @pytest.fixture
    def restart_backend(
        self, request: pytest.FixtureRequest
    ) -> Callable[[], None] | None:
        if request.node.originalname != "test_durability_matches_flag":
            return None
        server: RedisServer = request.getfixturevalue("persistent_redis")
        return server.restart


# --------------------------------------------------------------------------- helpers


def _url(redis_url: str, name: str, **opts: object) -> str:
    extra = "".join(f"&{k}={v}" for k, v in opts.items())
    return f"{redis_url}?queue={name}{extra}"


@pytest.fixture
def qname() -> str:
    return f"uq-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


# --------------------------------------------------------------------------- TaskMessage codec


def _reference_class() -> Any:
    """asynq.TaskMessage built from a descriptor at run time with the protobuf library."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="uq_asynq_ref.proto", package="uqref",
                                             syntax="proto3")
    m = fdp.message_type.add(name="TaskMessage")
    f = descriptor_pb2.FieldDescriptorProto
    spec = [("type", 1, f.TYPE_STRING), ("payload", 2, f.TYPE_BYTES), ("id", 3, f.TYPE_STRING),
            ("queue", 4, f.TYPE_STRING), ("retry", 5, f.TYPE_INT32), ("retried", 6, f.TYPE_INT32),
            ("error_msg", 7, f.TYPE_STRING), ("timeout", 8, f.TYPE_INT64),
            ("deadline", 9, f.TYPE_INT64), ("unique_key", 10, f.TYPE_STRING),
            ("last_failed_at", 11, f.TYPE_INT64), ("retention", 12, f.TYPE_INT64),
            ("completed_at", 13, f.TYPE_INT64), ("group_key", 14, f.TYPE_STRING)]
    for name, num, typ in spec:
        m.field.add(name=name, number=num, type=typ, label=f.LABEL_OPTIONAL)
    entry = m.nested_type.add(name="HeadersEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    m.field.add(name="headers", number=15, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED,
                type_name=".uqref.TaskMessage.HeadersEntry")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("uqref.TaskMessage"))


_SAMPLES = [
    _proto.TaskMessage(),
    _proto.TaskMessage(type="email:send", payload=b"\x00\xff" * 300, id="id-1", queue="q",
                       retry=25, retried=3, error_msg="boom ü", timeout=1800,
                       deadline=1_900_000_000, unique_key="asynq:{q}:unique:x:y",
                       last_failed_at=1_700_000_000, retention=3600, completed_at=5,
                       group_key="g", headers={"a": "1", "ü": "", "": "v"}),
    _proto.TaskMessage(type="t", retry=-1, timeout=-5, deadline=2**62),
]


@pytest.mark.parametrize("msg", _SAMPLES)
def test_task_message_matches_protobuf(msg: _proto.TaskMessage) -> None:
    ref = _reference_class()
    ours = _proto.encode(msg)
    theirs = ref()
    theirs.ParseFromString(ours)
    for field in ("type", "payload", "id", "queue", "retry", "retried", "error_msg", "timeout",
                  "deadline", "unique_key", "last_failed_at", "retention", "completed_at",
                  "group_key"):
        assert getattr(theirs, field) == getattr(msg, field), field
    assert dict(theirs.headers) == msg.headers
    assert _proto.decode(theirs.SerializeToString(deterministic=True)) == msg
    if len(msg.headers) <= 1:  # map order is not part of the format; the rest is byte-exact
        assert ours == theirs.SerializeToString(deterministic=True)


def test_task_message_rejects_garbage() -> None:
    with pytest.raises(_proto.DecodeError):
        _proto.decode(b"\x0a\x05ab")  # length runs past the end
    with pytest.raises(_proto.DecodeError):
        _proto.decode(b"\x0f")  # wire type 7


@pytest.mark.parametrize("query", ["", "&retention=60&max_retry=0&timeout=99999",
                                   "&unique_ttl=5&task_type=t:x"])
def test_enqueue_fast_path_sends_what_the_generic_path_sends(query: str) -> None:
    """The cached-fragment enqueue is byte-identical to packing enqueue_call's arguments,
    and both to what redis-py itself would put on the wire for them."""
    from redis._parsers.encoders import Encoder
    from redis.connection import PythonRespSerializer

    from unifiedq._job import EnqueueRequest
    from unifiedq._url import parse_url
    from unifiedq.drivers.redis import _core

    core = _core.Core(*_core.parse(parse_url("redis://h/0?queue=q" + query), {}))
    encoder = Encoder("utf-8", "strict", False)  # type: ignore[no-untyped-call]
    py = PythonRespSerializer(6000, encoder.encode)
    now = time.time_ns()
    seen = 0
    for size in (0, 1, 127, 128, 20_000):
        for prio in (None, 9):
            for delay in (None, 2.5):
                for jid in (None, "j" * 200):
                    for hdr in (None, {"type": "t", "k": "ü"}):
                        req = EnqueueRequest.build(b"\x00" * size, priority=prio, delay=delay,
                                                   job_id=jid, headers=hdr)
                        level, args = core.enqueue_call(req, now)
                        assert core.enqueue_commands([req], now) == ({level}, _core.pack(args))
                        redis_py = b"".join(py.pack(*args))  # type: ignore[no-untyped-call]
                        assert _core._pack_py(args) == redis_py
                        seen += 1
    assert seen == 80


def test_enqueued_messages_are_canonical_protobuf(redis_url: str, raw: redis.Redis,
                                                   qname: str) -> None:
    """What the fast enqueue path stores parses with protobuf and re-serialises identically."""
    ref = _reference_class()
    with connect(_url(redis_url, qname, retention=7)) as q:
        bodies = [b"", b"a", b"b" * 127, b"c" * 128, os.urandom(70_000)]
        ids = [*q.enqueue_many(bodies, priority=4), q.enqueue(b"one", delay=60)]
        for jid, body in zip(ids, [*bodies, b"one"], strict=True):
            level = qname if body == b"one" else f"{qname}:p4"
            data = raw.hget(f"asynq:{{{level}}}:t:{jid}", "msg")
            assert isinstance(data, bytes)
            theirs = ref()
            theirs.ParseFromString(data)
            assert (theirs.type, theirs.payload, theirs.id, theirs.queue, theirs.retry,
                    theirs.timeout, theirs.retention) == ("unifiedq", body, jid, level, 25,
                                                          1800, 7)
            assert data == theirs.SerializeToString(deterministic=True)


@pytest.mark.parametrize("face", ["sync", "async"])
def test_enqueue_survives_script_flush_and_killed_connections(
    redis_url: str, raw: redis.Redis, qname: str, face: str
) -> None:
    """NOSCRIPT reloads the script; a connection killed under the pool reconnects; no job is
    lost or reported as a duplicate."""

    async def run_async() -> list[str]:
        async with connect_async(_url(redis_url, qname)) as q:
            ids = await q.enqueue_many([b"a"] * 50)
            raw.script_flush()
            ids += await q.enqueue_many([b"b"] * 50)
            raw.client_kill_filter(_type="normal", skipme=True)
            ids.append(await q.enqueue(b"c"))
            raw.script_flush()
            raw.client_kill_filter(_type="normal", skipme=True)
            ids += await q.enqueue_many([b"d"] * 50)
            job = await q.dequeue()
            assert job is not None
            await q.ack(job)
            return ids

    if face == "async":
        ids = asyncio.run(run_async())
    else:
        with connect(_url(redis_url, qname)) as q:
            ids = q.enqueue_many([b"a"] * 50)
            raw.script_flush()
            ids += q.enqueue_many([b"b"] * 50)
            raw.client_kill_filter(_type="normal", skipme=True)
            ids.append(q.enqueue(b"c"))
            raw.script_flush()
            raw.client_kill_filter(_type="normal", skipme=True)
            ids += q.enqueue_many([b"d"] * 50)
            job = q.dequeue()
            assert job is not None
            q.ack(job)
    assert len(set(ids)) == 151
    assert raw.llen(f"asynq:{{{qname}}}:pending") == 150


# --------------------------------------------------------------------------- asynq layout


def _msg(raw: redis.Redis, q: str, jid: str) -> _proto.TaskMessage:
    data = raw.hget(f"asynq:{{{q}}}:t:{jid}", "msg")
    assert isinstance(data, bytes)
    return _proto.decode(data)


def test_asynq_layout_through_a_lifecycle(redis_url: str, raw: redis.Redis, qname: str) -> None:
    with connect(_url(redis_url, qname, max_retry=2, retention=60)) as q:
        jid = q.enqueue(b"payload", headers={"type": "email:send", "tenant": "t1"})
        p = f"asynq:{{{qname}}}:"
        assert raw.sismember("asynq:queues", qname)
        assert raw.lrange(p + "pending", 0, -1) == [jid.encode()]
        assert raw.hget(p + "t:" + jid, "state") == b"pending"
        assert raw.hget(p + "t:" + jid, "pending_since")
        m = _msg(raw, qname, jid)
        assert (m.type, m.payload, m.id, m.queue, m.retry, m.retried, m.timeout, m.retention) == (
            "email:send", b"payload", jid, qname, 2, 0, 1800, 60)
        assert m.headers == {"tenant": "t1"}  # the type travels in TaskMessage.type

        job = q.dequeue(timeout=5)
        assert job is not None and job.headers == {"type": "email:send", "tenant": "t1"}
        assert raw.lrange(p + "active", 0, -1) == [jid.encode()]
        lease = raw.zscore(p + "lease", jid)
        assert lease is not None and lease > time.time() + 20
        assert raw.hget(p + "t:" + jid, "state") == b"active"
        assert raw.hget(p + "t:" + jid, "pending_since") is None
        q.ack(job)  # retention > 0: asynq's "completed"
        assert raw.zscore(p + "completed", jid) is not None
        assert raw.hget(p + "t:" + jid, "state") == b"completed"
        assert _msg(raw, qname, jid).completed_at > 0
        assert raw.llen(p + "active") == 0 and raw.zcard(p + "lease") == 0
        assert raw.get(p + "processed") == b"1"

        later = q.enqueue(b"later", delay=30)
        assert raw.zscore(p + "scheduled", later) is not None
        assert raw.hget(p + "t:" + later, "state") == b"scheduled"

        hi = q.enqueue(b"hi", priority=5)
        hp = f"asynq:{{{qname}:p5}}:"
        assert raw.lrange(hp + "pending", 0, -1) == [hi.encode()]
        assert raw.sismember("asynq:queues", f"{qname}:p5")
        assert q.size() == 2
        job = q.dequeue()
        assert job is not None and job.id == hi and job.priority == 5
        q.nack(job, requeue=False)
        assert raw.zscore(hp + "archived", hi) is not None
        assert raw.hget(hp + "t:" + hi, "state") == b"archived"
        assert "nack" in _msg(raw, f"{qname}:p5", hi).error_msg


def test_retries_then_archive(redis_url: str, raw: redis.Redis, qname: str) -> None:
    with connect(_url(redis_url, qname, max_retry=1)) as q:
        jid = q.enqueue(b"x")
        job = q.dequeue(timeout=5)
        assert job is not None and job.attempt == 1
        q.nack(job)
        job = q.dequeue(timeout=5)
        assert job is not None and job.attempt == 2
        q.nack(job)  # retried (1) >= max_retry (1): archived, as asynq does
        assert q.dequeue(timeout=0.3) is None
        assert raw.hget(f"asynq:{{{qname}}}:t:{jid}", "state") == b"archived"
        assert raw.get(f"asynq:{{{qname}}}:failed") == b"2"


def test_nack_backoff_asynq_goes_to_retry_set(redis_url: str, raw: redis.Redis,
                                               qname: str) -> None:
    with connect(_url(redis_url, qname, backoff="asynq")) as q:
        jid = q.enqueue(b"x")
        job = q.dequeue(timeout=5)
        assert job is not None
        q.nack(job)
        score = raw.zscore(f"asynq:{{{qname}}}:retry", jid)
        assert score is not None and time.time() + 10 < score < time.time() + 60
        assert q.size() == 1 and q.dequeue() is None


def test_unique_ttl(redis_url: str, qname: str) -> None:
    from unifiedq import DuplicateJob

    with connect(_url(redis_url, qname, unique_ttl=60)) as q:
        q.enqueue(b"same")
        with pytest.raises(DuplicateJob):
            q.enqueue(b"same")
        q.enqueue(b"other")
        job = q.dequeue(timeout=5)
        assert job is not None and job.body == b"same"
        q.ack(job)  # releases the lock
        q.enqueue(b"same")


def test_empty_type_header_rejected(redis_url: str, qname: str) -> None:
    from unifiedq import InvalidArgument

    with connect(_url(redis_url, qname)) as q:
        with pytest.raises(InvalidArgument):
            q.enqueue(b"x", headers={"type": ""})
        assert q.size() == 0


def test_bad_options_and_errors(redis_url: str, qname: str) -> None:
    from unifiedq import BackendConnectionError, InvalidURL

    for bad in ("queue=a{b}", "visibility_timeout=0", "backoff=linear", "max_retry=-1"):
        with pytest.raises(InvalidURL):
            connect(f"{redis_url}?{bad}")
    with pytest.raises(InvalidURL):
        connect("redis://127.0.0.1/notanumber")
    port = find_free_port()
    with connect(f"redis://127.0.0.1:{port}/0?queue={qname}&socket_connect_timeout=2") as q, \
            pytest.raises(BackendConnectionError):
        q.enqueue(b"x")


def test_wrong_password_is_authentication_error(server_factory: Any, qname: str) -> None:
    from unifiedq import AuthenticationError

    server = server_factory.redis(password="s3cret")
    bad = server.url.replace("s3cret", "wrong")
    with connect(f"{bad}?queue={qname}") as q:
        with pytest.raises(AuthenticationError):
            q.size()
        assert "wrong" not in repr(q)
    with connect(f"{server.url}?queue={qname}") as q:
        q.enqueue(b"ok")
        assert q.size() == 1


# --------------------------------------------------------------------------- leases


def test_heartbeat_keeps_lease_while_held(redis_url: str, qname: str) -> None:
    opts = {"visibility_timeout": 1.0}
    with connect(_url(redis_url, qname, **opts)) as q, \
            connect(_url(redis_url, qname, **opts)) as other:
        q.enqueue(b"x")
        job = q.dequeue(timeout=5)
        assert job is not None
        time.sleep(3.0)  # three lease lengths; the heartbeat extends every ~0.33 s
        assert other.dequeue(timeout=0.5) is None
        q.ack(job)


def test_orphaned_active_task_is_recovered(redis_url: str, raw: redis.Redis, qname: str) -> None:
    """An id in active without a lease entry (asynq #1144) is handed out again."""
    with connect(_url(redis_url, qname)) as q:
        jid = q.enqueue(b"orphan")
        p = f"asynq:{{{qname}}}:"
        raw.lmove(p + "pending", p + "active", "RIGHT", "LEFT")  # what a torn dequeue leaves
        raw.hset(p + "t:" + jid, "state", "active")
        assert raw.zcard(p + "lease") == 0
        job = q.dequeue(timeout=5)
        assert job is not None and job.id == jid and job.attempt == 2
        q.ack(job)
        assert raw.llen(p + "active") == 0


def test_close_returns_held_jobs(redis_url: str, qname: str) -> None:
    q = connect(_url(redis_url, qname))
    q.enqueue(b"held")
    job = q.dequeue(timeout=5)
    assert job is not None
    q.close()
    with connect(_url(redis_url, qname)) as q2:
        again = q2.dequeue(timeout=5)
        assert again is not None and again.id == job.id and again.attempt == 1
        q2.ack(again)


def _crash_consumer(url: str, n: int, ready: Any) -> None:
    q = connect(url)
    held = [q.dequeue(timeout=10) for _ in range(n)]
    ready.put([j.id for j in held if j is not None])
    time.sleep(600)  # killed long before this ends


def test_sigkill_consumer_jobs_come_back(redis_url: str, raw: redis.Redis, qname: str) -> None:
    lease = 2.0
    url = _url(redis_url, qname, visibility_timeout=lease)
    with connect(url) as q:
        ids = set(q.enqueue_many([b"%d" % i for i in range(20)]))
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Queue()
        child = ctx.Process(target=_crash_consumer, args=(url, 8, ready))
        child.start()
        try:
            taken = ready.get(timeout=60)
            assert len(taken) == 8
            time.sleep(lease * 1.5)  # the child's heartbeat keeps its leases meanwhile
            assert raw.zcard(f"asynq:{{{qname}}}:lease") == 8
            os.kill(child.pid or 0, signal.SIGKILL)
            killed = time.monotonic()
        finally:
            child.join(30)
        seen: dict[str, int] = {}
        while len(seen) < len(ids):
            job = q.dequeue(timeout=lease * 3 + 5)
            assert job is not None, f"only {len(seen)} of {len(ids)} came back"
            assert job.id not in seen
            seen[job.id] = job.attempt
            q.ack(job)
        assert time.monotonic() - killed < lease * 3 + 5
        assert set(seen) == ids
        assert sorted(i for i, a in seen.items() if a == 2) == sorted(taken)
        assert q.size() == 0 and q.dequeue() is None
        p = f"asynq:{{{qname}}}:"
        assert raw.llen(p + "active") == 0 and raw.zcard(p + "lease") == 0


# --------------------------------------------------------------------------- stats() / inspect


def test_stats_counts_every_state_over_priority_levels(
    redis_url: str, raw: redis.Redis, qname: str
) -> None:
    with connect(_url(redis_url, qname)) as q:
        assert isinstance(q, RedisQueue)
        assert q.stats()["depth"] == 0 and q.stats()["oldest_age"] == 0.0
        q.enqueue(b"a")
        q.enqueue(b"b", priority=5)
        top = q.enqueue(b"c", priority=7)
        q.enqueue(b"d", priority=3, delay=60)
        time.sleep(0.5)
        job = q.dequeue(timeout=5)
        assert job is not None and job.id == top
        head = q.peek()
        st = q.stats()
        assert {k: st[k] for k in ("depth", "pending", "active", "scheduled", "retry", "dead",
                                   "completed", "paused")} == {
            "depth": 3, "pending": 2, "active": 1, "scheduled": 1, "retry": 0, "dead": 0,
            "completed": 0, "paused": False}
        age = st["oldest_age"]
        assert isinstance(age, float) and 0.4 <= age < 120
        # Read-only: nothing moved.
        assert q.size() == 3 and q.peek() == head

        q.nack(job, delay=60)  # asynq's retry set
        st = q.stats()
        assert (st["active"], st["retry"], st["depth"]) == (0, 1, 4)
        job = q.dequeue(timeout=5)
        assert job is not None and job.priority == 5
        q.nack(job, requeue=False)  # asynq's archived set
        st = q.stats()
        assert (st["pending"], st["active"], st["dead"], st["depth"]) == (1, 0, 1, 3)

        raw.set(f"asynq:{{{qname}:p3}}:paused", int(time.time()))
        assert q.stats()["paused"] is True
        q.purge()
        st = q.stats()
        assert (st["depth"], st["pending"], st["scheduled"], st["retry"], st["oldest_age"]) == (
            0, 0, 0, 0, 0.0)
        assert st["dead"] == 1  # purge leaves dead jobs alone


def test_stats_async_face(redis_url: str, qname: str) -> None:
    async def scenario() -> dict[str, object]:
        async with connect_async(_url(redis_url, qname, retention=60)) as q:
            assert isinstance(q, AsyncRedisQueue)
            for body in (b"1", b"2", b"3"):
                await q.enqueue(body)
            await q.enqueue(b"later", delay=60)
            job = await q.dequeue(timeout=5)
            assert job is not None
            st = dict(await q.stats())
            await q.ack(job)  # retention: asynq's completed set
            st["completed_after_ack"] = (await q.stats())["completed"]
            return st

    st = asyncio.run(scenario())
    assert {k: st[k] for k in ("depth", "pending", "active", "scheduled", "retry", "dead")} == {
        "depth": 3, "pending": 2, "active": 1, "scheduled": 1, "retry": 0, "dead": 0}
    assert st["completed_after_ack"] == 1


def test_cli_inspect_prints_per_state_counts(redis_url: str, qname: str) -> None:
    url = _url(redis_url, qname)
    with connect(url) as q:
        for body in (b"1", b"2", b"3"):
            q.enqueue(body)
        q.enqueue(b"later", delay=60)
        held = q.dequeue(timeout=5)
        assert held is not None
        env = {**os.environ, "COLUMNS": "200"}
        p = subprocess.run([sys.executable, "-m", "unifiedq", "inspect", url],
                           capture_output=True, text=True, timeout=120, env=env, check=False)
        assert p.returncode == 0, p.stderr
        rows = {m[1]: (m[2], m[3]) for m in
                re.finditer(r"^\W*(\w+)\W+(\S+(?: s)?)\W+(stats\(\))", p.stdout, re.M)}
        assert {k: rows[k][0] for k in ("depth", "pending", "active", "scheduled", "retry",
                                        "dead")} == {
            "depth": "3", "pending": "2", "active": "1", "scheduled": "1", "retry": "0",
            "dead": "0"}, p.stdout
        assert rows["oldest_age"][0].endswith(" s")
        assert "no stats() hook" not in p.stdout
        q.ack(held)


# --------------------------------------------------------------------------- Go asynq interop

_INTEROP = Path(__file__).parent / "interop"


@pytest.fixture(scope="module")
def interop_bin() -> Path:
    """The Go program of tests/interop, built once per source hash and cached."""
    return built_go_program(_INTEROP, "asynq-interop", "asynq interop")


def _go(binary: Path, redis_url: str, cmd: str, queue: str, *args: str,
        timeout: float = 120) -> list[dict[str, Any]]:
    u = urllib.parse.urlsplit(redis_url)
    argv = [str(binary), cmd, "-addr", f"{u.hostname}:{u.port}", "-db", u.path.strip("/") or "0",
            "-queue", queue, *args]
    if u.password:
        argv += ["-password", urllib.parse.unquote(u.password)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stderr}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_go_asynq_server_runs_python_tasks(interop_bin: Path, redis_url: str, qname: str) -> None:
    with connect(_url(redis_url, qname)) as q, \
            connect(_url(redis_url, qname, max_retry=2)) as q2:
        ok = {q.enqueue(b"py-%d" % i, headers={"type": "interop:ok", "k": f"v{i}"}): i
              for i in range(5)}
        delayed_at = time.time()
        delayed = q.enqueue(b"py-delayed", delay=1.5, headers={"type": "interop:ok"})
        failing = q2.enqueue(b"py-fail", headers={"type": "interop:fail"})
        events = _go(interop_bin, redis_url, "consume", qname, "-count", "7", "-timeout", "90s")
        runs = [e for e in events if e["event"] == "run"]
        for jid, i in ok.items():
            mine = [e for e in runs if e["id"] == jid]
            assert len(mine) == 1, mine
            e = mine[0]
            assert (e["type"], e["payload"], e["headers"], e["queue"]) == (
                "interop:ok", f"py-{i}", {"k": f"v{i}"}, qname)
            assert (e["retried"], e["max_retry"]) == (0, 25)
        (d,) = [e for e in runs if e["id"] == delayed]
        assert d["payload"] == "py-delayed" and d["at"] >= delayed_at + 1.5 - 0.05
        fails = [e for e in runs if e["id"] == failing]
        assert [(e["retried"], e["max_retry"]) for e in fails] == [(0, 2), (1, 2), (2, 2)]

        (info,) = _go(interop_bin, redis_url, "inspect", qname)
        assert (info["pending"], info["active"], info["scheduled"], info["retry"]) == (0, 0, 0, 0)
        assert info["archived"] == 1 and qname in info["queues"]
        (arch,) = info["tasks"]["archived"]
        assert (arch["id"], arch["type"], arch["retried"]) == (failing, "interop:fail", 2)
        assert "asked to fail" in arch["last_err"]
        assert q.size() == 0 and q.dequeue() is None


def test_python_consumes_go_asynq_tasks(interop_bin: Path, redis_url: str, qname: str) -> None:
    produced = _go(interop_bin, redis_url, "produce", qname, "-count", "5")
    ids = [e["id"] for e in produced]
    with connect(_url(redis_url, qname)) as q:
        assert q.size() == 5
        peeked = q.peek()
        assert peeked is not None and peeked.id == ids[0]
        jobs = []
        for i in range(5):
            job = q.dequeue(timeout=5)
            assert job is not None
            assert (job.id, job.body, job.attempt) == (ids[i], b"go-%d" % i, 1)
            assert job.headers == {"type": "interop:go", "seq": str(i), "origin": "go"}
            jobs.append(job)

        (info,) = _go(interop_bin, redis_url, "inspect", qname)
        assert info["active"] == 5 and info["pending"] == 0
        assert sorted(t["id"] for t in info["tasks"]["active"]) == sorted(ids)
        assert not any(t.get("orphaned") for t in info["tasks"]["active"])

        for job in jobs[:3]:
            q.ack(job)
        q.nack(jobs[3], requeue=False)
        q.nack(jobs[4])
        again = q.dequeue(timeout=5)
        assert again is not None and again.id == ids[4] and again.attempt == 2
        q.ack(again)

        (info,) = _go(interop_bin, redis_url, "inspect", qname)
        assert (info["pending"], info["active"], info["retry"], info["archived"]) == (0, 0, 0, 1)
        assert info["tasks"]["archived"][0]["id"] == ids[3]
        assert info["processed"] == 6 and info["failed"] == 2


def test_pause_is_asynqs_pause_both_ways(interop_bin: Path, redis_url: str, qname: str) -> None:
    """pause()/resume() and Go asynq's Inspector.PauseQueue/UnpauseQueue are one state."""
    with connect(_url(redis_url, qname)) as q:
        q.enqueue(b"a")
        q.pause()
        (info,) = _go(interop_bin, redis_url, "inspect", qname)
        assert info["paused"] is True
        _go(interop_bin, redis_url, "unpause", qname)
        assert q.is_paused() is False
        _go(interop_bin, redis_url, "pause", qname)
        assert q.is_paused() is True
        assert q.dequeue(timeout=0.3) is None  # asynq's pause stops our consumers too
        q.resume()
        (info,) = _go(interop_bin, redis_url, "inspect", qname)
        assert info["paused"] is False
        job = q.dequeue(timeout=5)
        assert job is not None and job.body == b"a"
        q.ack(job)


def test_sorted_set_scores_are_whole_seconds_as_asynq_writes(
        interop_bin: Path, redis_url: str, qname: str) -> None:
    """scheduled/retry/archived/completed scores are whole Unix seconds (asynqmon needs it)."""
    r = redis.Redis.from_url(redis_url)
    with connect(_url(redis_url, qname, retention=60)) as q:
        before = time.time()
        q.enqueue(b"scheduled", delay=30.3)
        for body in (b"retry", b"dead", b"done"):
            q.enqueue(body)
        got = {j.body: j for j in (q.dequeue(timeout=5) for _ in range(3)) if j is not None}
        assert set(got) == {b"retry", b"dead", b"done"}
        q.nack(got[b"retry"], delay=20.7)
        q.nack(got[b"dead"], requeue=False)
        q.ack(got[b"done"])
        def scores(state: str) -> list[float]:
            got: list[tuple[bytes, float]] = r.zrange(  # type: ignore[assignment]
                f"asynq:{{{qname}}}:{state}", 0, -1, withscores=True)
            return [float(score) for _, score in got]

        for state in ("scheduled", "retry", "archived", "completed"):
            found = scores(state)
            assert len(found) == 1 and found[0] == int(found[0]), (state, found)
        assert scores("scheduled")[0] >= before + 30.3  # rounded up: never early
        (info,) = _go(interop_bin, redis_url, "inspect", qname)
        assert [len(info["tasks"][s]) for s in ("scheduled", "retry", "archived", "completed")] \
            == [1, 1, 1, 1]
        q.purge()
