"""``amqp://...?protocol=machinery``: Machinery v1's task protocol (issue 15, items 3 and 4).

Against the test RabbitMQ and, both ways, ``tests/interop_machinery``: a Go program built
with Machinery v1.10.8 and its stock configuration (``config.NewFromEnvironment``: exchange
``machinery_exchange``, binding key ``machinery_task``, queue ``machinery_tasks``), only
``BROKER`` and ``RESULT_BACKEND`` pointing at the test broker. The stock names are shared,
so every test starts by purging them (the tests of this module run one after another).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import amqp
import pytest

import unifiedq
from gobuild import built_go_program
from unifiedq import InvalidArgument, InvalidURL, Router, TypedQueue, Worker
from unifiedq._url import parse_url
from unifiedq.codecs import JsonCodec
from unifiedq.drivers.amqp.machinery import (
    MachineryQueue,
    MachineryResultStore,
    fibonacci_next,
    task_of,
)

# Generous: the first run builds Machinery (~70 s of the Go compiler on 2 cores).
pytestmark = pytest.mark.timeout(600)

_GO_SRC = Path(__file__).parent / "interop_machinery"
STOCK_QUEUES = ("machinery_tasks", "machinery_task", "machinery_tasks.dead")


@pytest.fixture(scope="module")
def go_machinery() -> Path:
    """The Machinery v1 program, built once per source hash and cached."""
    return built_go_program(_GO_SRC, "machinery-interop", "Machinery interop")


def _broker(amqp_url: str) -> str:
    # Go's amqp091 reads the vhost from the path after its first "/": "//" and "/" are "/".
    return amqp_url[:-1] if amqp_url.endswith("//") else amqp_url


@pytest.fixture
def mq(amqp_url: str) -> Iterator[MachineryQueue]:
    """A stock-config handle, with Machinery's queues emptied first."""
    with unifiedq.connect(f"{amqp_url}?protocol=machinery") as q:
        assert isinstance(q, MachineryQueue)
        q.size()  # declares the topology
        _purge(amqp_url, *STOCK_QUEUES)
        yield q


def _channel(amqp_url: str) -> tuple[amqp.Connection, Any]:
    url = parse_url(amqp_url)
    conn = amqp.Connection(f"{url.host}:{url.port}", userid=url.username,
                           password=url.password, virtual_host="/")
    conn.connect()
    return conn, conn.channel()


def _purge(amqp_url: str, *queues: str) -> None:
    conn, ch = _channel(amqp_url)
    try:
        for name in queues:
            try:
                ch.queue_purge(name)
            except amqp.exceptions.NotFound:
                ch = conn.channel()
    finally:
        conn.close()


def _go(binary: Path, amqp_url: str, cmd: str, *args: str, timeout: float = 60
        ) -> list[dict[str, Any]]:
    env = dict(os.environ, BROKER=_broker(amqp_url), RESULT_BACKEND=_broker(amqp_url))
    proc = subprocess.run([str(binary), cmd, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _go_worker(binary: Path, amqp_url: str, tmp_path: Path, count: int) -> list[dict[str, Any]]:
    out = tmp_path / "runs.jsonl"
    _go(binary, amqp_url, "worker", "-count", str(count), "-out", str(out), "-timeout", "40s")
    return [json.loads(line) for line in out.read_text().splitlines()]


def _send(binary: Path, amqp_url: str, name: str, args: list[dict[str, Any]], *flags: str
          ) -> str:
    (reply,) = _go(binary, amqp_url, "send", "-name", name, "-args", json.dumps(args), *flags)
    return str(reply["uuid"])


TYPED = [1, 2.5, "two", True, [3, 4], ["a", "b"], {"Type": "int32", "Value": 5},
         {"Type": "[]byte", "Value": base64.b64encode(b"raw").decode()}]


# ------------------------------------------------------------------------ Python alone


def test_typed_round_trip(mq: MachineryQueue, amqp_url: str) -> None:
    tq: TypedQueue[Any] = TypedQueue(mq)
    jid = tq.put(TYPED, headers={"type": "Typed", "tenant": "acme"})
    got = tq.get(timeout=5)
    assert got is not None
    job, payload = got
    mq.ack(job)
    assert job.id == jid
    assert payload == [1, 2.5, "two", True, [3, 4], ["a", "b"], 5,
                       base64.b64encode(b"raw").decode()]
    task = task_of(job)
    assert (task.uuid, task.name, task.args) == (jid, "Typed", payload)
    assert task.types == ["int64", "float64", "string", "bool", "[]int64", "[]string",
                          "int32", "[]byte"]
    assert (task.retry_count, task.retry_timeout, dict(task.headers)) == (0, 0,
                                                                           {"tenant": "acme"})


def test_the_message_is_a_machinery_signature(mq: MachineryQueue, amqp_url: str) -> None:
    # Read raw (this handle never consumes): Machinery's Signature with Go field names.
    mq.enqueue(b"\x00bytes", headers={"type": "Blob", "machinery.retry_count": "3"})
    conn, ch = _channel(amqp_url)
    try:
        msg = None
        for _ in range(50):
            msg = ch.basic_get("machinery_tasks", no_ack=True)
            if msg is not None:
                break
            time.sleep(0.1)
        assert msg is not None
    finally:
        conn.close()
    sig = json.loads(msg.body)
    assert msg.properties["content_type"] == "application/json"
    assert msg.properties["delivery_mode"] == 2
    assert sig["Name"] == "Blob" and sig["RoutingKey"] == "machinery_task"
    assert sig["Args"] == [{"Name": "", "Type": "[]byte",
                            "Value": base64.b64encode(b"\x00bytes").decode()}]
    assert (sig["RetryCount"], sig["RetryTimeout"], sig["ETA"]) == (3, 0, None)
    assert sig["Headers"] == {"unifiedq.body": "bytes"}


def test_raw_bytes_round_trip(mq: MachineryQueue) -> None:
    body = bytes(range(256))
    jid = mq.enqueue(body, headers={"type": "Blob", "k": "v", "content-type": "text/plain"})
    job = mq.dequeue(timeout=5)
    assert job is not None
    mq.ack(job)
    assert (job.id, job.body, job.headers["type"], job.headers["k"]) == (jid, body, "Blob", "v")
    assert job.headers["content-type"] == "text/plain"  # not JSON: kept as a header


def test_batches(mq: MachineryQueue, amqp_url: str) -> None:
    ids = mq.enqueue_many([b"a", b"b", b"c"], headers={"type": "Blob"})
    jobs: list[unifiedq.Job] = []
    deadline = time.monotonic() + 10
    while len(jobs) < 3 and time.monotonic() < deadline:
        jobs += mq.dequeue_many(3 - len(jobs), timeout=5)  # returns what is there
    assert sorted(j.id for j in jobs) == sorted(ids)
    assert sorted(j.body for j in jobs) == [b"a", b"b", b"c"]
    mq.ack_many(jobs)


def test_the_async_face(mq: MachineryQueue, amqp_url: str) -> None:
    async def main() -> tuple[str, Any]:
        async with unifiedq.connect_async(f"{amqp_url}?protocol=machinery") as aq:
            jid = await aq.enqueue(b"[1]", headers={"type": "Add",
                                                    "content-type": "application/json"})
            job = await aq.dequeue(timeout=5)
            assert job is not None
            await aq.ack(job)
            return jid, job

    jid, job = asyncio.run(main())
    assert (job.id, task_of(job).args, task_of(job).types) == (jid, [1], ["int64"])


def test_bad_input_is_refused_before_sending(mq: MachineryQueue, amqp_url: str) -> None:
    tq: TypedQueue[Any] = TypedQueue(mq)
    with pytest.raises(InvalidArgument, match="'type' header"):
        tq.put([1])
    bad: list[Any]
    for bad in ([None], [{"k": 1}], [[]], [[1, "a"]], [{"Type": "map", "Value": 1}]):
        with pytest.raises(InvalidArgument):
            tq.put(bad, headers={"type": "T"})
    with pytest.raises(InvalidArgument, match="reserved"):
        mq.enqueue(b"x", headers={"type": "T", "machinery.types": "int64"})
    with pytest.raises(InvalidArgument, match="whole number"):
        mq.enqueue(b"x", headers={"type": "T", "machinery.retry_count": "-1"})
    with pytest.raises(InvalidArgument, match="whole number"):
        mq.enqueue(b"x", headers={"type": "T", "machinery.retry_timeout": "²"})
    assert mq.size() == 0
    with pytest.raises(InvalidURL, match="max_attempts"):
        unifiedq.connect(f"{amqp_url}?protocol=machinery&max_attempts=3")
    with pytest.raises(InvalidURL, match="protocol"):
        unifiedq.connect(f"{amqp_url}?protocol=celery")
    with unifiedq.connect(f"{amqp_url}?protocol=unifiedq&queue=uq-mach-plain") as plain:
        assert not isinstance(plain, MachineryQueue)


def test_not_a_signature_is_delivered_marked(mq: MachineryQueue, amqp_url: str) -> None:
    conn, ch = _channel(amqp_url)
    try:
        ch.confirm_select()
        ch.basic_publish(amqp.Message(b"not json", delivery_mode=2),
                         exchange="machinery_exchange", routing_key="machinery_task")
    finally:
        conn.close()
    job = mq.dequeue(timeout=5)
    assert job is not None
    assert job.body == b"not json" and "type" not in job.headers
    assert "machinery.invalid" in job.headers
    mq.nack(job, requeue=False)
    with unifiedq.connect(f"{amqp_url}?queue=machinery_tasks.dead&exchange=machinery_exchange"
                          ) as dead:
        copy = dead.dequeue(timeout=5)
        assert copy is not None and copy.body == b"not json"
        dead.ack(copy)


def test_fibonacci_next_is_machinerys() -> None:
    # retry/fibonacci.go: FibonacciNext(start) is the first Fibonacci number > start.
    assert [fibonacci_next(n) for n in (0, 1, 2, 3, 4, 5, 8, 12, 13)] == \
        [1, 2, 3, 5, 5, 8, 13, 13, 21]


def test_retries_follow_machinerys_rules(mq: MachineryQueue, amqp_url: str) -> None:
    """RetryCount 2: two retries 1 s and 2 s later (Fibonacci from RetryTimeout 0), then the
    third failure dead-letters it (Machinery: FAILURE)."""
    jid = TypedQueue[Any](mq).put(["x"], headers={"type": "Echo", "machinery.retry_count": "2"})
    seen: list[tuple[int, int, float]] = []
    start = time.monotonic()
    for _ in range(3):
        job = mq.dequeue(timeout=10)
        assert job is not None and job.id == jid
        t = task_of(job)
        seen.append((t.retry_count, t.retry_timeout, time.monotonic() - start))
        start = time.monotonic()
        mq.nack(job, delay=30.0)  # the caller's delay gives way to Machinery's rule
    assert [(c, rt) for c, rt, _ in seen] == [(2, 0), (1, 1), (0, 2)]
    assert 0.9 <= seen[1][2] < 6 and 1.9 <= seen[2][2] < 7
    assert mq.dequeue(timeout=0.5) is None
    with unifiedq.connect(f"{amqp_url}?queue=machinery_tasks.dead&exchange=machinery_exchange"
                          ) as dead:
        copy = dead.dequeue(timeout=5)
        assert copy is not None
        dead.ack(copy)
    sig = json.loads(copy.body)
    assert (sig["UUID"], sig["RetryCount"], sig["RetryTimeout"]) == (jid, 0, 2)


def test_release_keeps_the_retry_state(mq: MachineryQueue) -> None:
    TypedQueue[Any](mq).put(["x"], headers={"type": "Echo", "machinery.retry_count": "1"})
    job = mq.dequeue(timeout=5)
    assert job is not None
    mq.release(job)
    again = mq.dequeue(timeout=5)
    assert again is not None and again.id == job.id and again.attempt == job.attempt
    assert task_of(again).retry_count == 1
    mq.ack(again)


# ------------------------------------------------------------------------ Python -> Go


def test_go_worker_runs_python_tasks(go_machinery: Path, mq: MachineryQueue, amqp_url: str,
                                     tmp_path: Path) -> None:
    tq: TypedQueue[Any] = TypedQueue(mq)
    typed = tq.put(TYPED, headers={"type": "Typed"})
    echo = tq.put("hello ü", headers={"type": "Echo"})
    later = tq.put(["later"], headers={"type": "Echo"}, delay=1.0)  # Machinery's delay queue
    runs = _go_worker(go_machinery, amqp_url, tmp_path, 3)
    by_uuid = {r["uuid"]: r for r in runs}
    assert set(by_uuid) == {typed, echo, later}
    assert by_uuid[typed]["task"] == "Typed"
    # Go received real typed values: int64, float64, string, bool, []int64, []string, int32,
    # and []byte (printed as a string by the task).
    assert by_uuid[typed]["args"] == [1, 2.5, "two", True, [3, 4], ["a", "b"], 5, "raw"]
    assert by_uuid[echo]["args"] == ["hello ü"] and by_uuid[later]["args"] == ["later"]
    assert mq.size() == 0  # acked by the Go worker


def test_go_worker_retries_a_python_task_by_its_retry_count(
        go_machinery: Path, mq: MachineryQueue, amqp_url: str, tmp_path: Path) -> None:
    jid = TypedQueue[Any](mq).put(["boom"], headers={"type": "Fail",
                                                "machinery.retry_count": "1"})
    runs = _go_worker(go_machinery, amqp_url, tmp_path, 2)  # the run and one retry
    assert [(r["uuid"], r["retry_count"], r["retry_timeout"]) for r in runs] == \
        [(jid, 1, 0), (jid, 0, 1)]


def test_python_and_go_share_a_delay_queue(go_machinery: Path, mq: MachineryQueue,
                                           amqp_url: str) -> None:
    """Go's amqp091 declares Machinery's delay queue with int64 arguments; ours declares the
    same queue with py-amqp's encoding: RabbitMQ must find them equivalent."""
    (reply,) = _go(go_machinery, amqp_url, "declare-delay", "-ms", "1500")
    assert reply["queue"] == "delay.1500.machinery_exchange.machinery_task"
    jid = TypedQueue[Any](mq).put(["x"], headers={"type": "Echo"}, delay=1.5)
    job = mq.dequeue(timeout=10)
    assert job is not None and job.id == jid
    mq.ack(job)


# ------------------------------------------------------------------------ Go -> Python


def _run_worker(mq: MachineryQueue, router: Router, until: Any, timeout: float = 20) -> Worker:
    with Worker(mq, router, poll_interval=0.05) as w:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert until(), "the worker did not finish in time"
    return w


def test_python_worker_runs_go_sent_tasks(go_machinery: Path, mq: MachineryQueue,
                                          amqp_url: str) -> None:
    args: list[dict[str, Any]] = [{"Type": "int64", "Value": 7}, {"Type": "float64", "Value": 2},
            {"Type": "string", "Value": "s"}, {"Type": "[]string", "Value": ["a"]},
            {"Type": "bool", "Value": False}]
    uuid = _send(go_machinery, amqp_url, "Typed", args)
    later = _send(go_machinery, amqp_url, "Echo", [{"Type": "string", "Value": "eta"}],
                  "-eta", "1s")
    ran: dict[str, Any] = {}
    router = Router()
    router.add("Typed", lambda job: ran.__setitem__(job.id, task_of(job)))
    router.add("Echo", lambda job: ran.__setitem__(job.id, task_of(job)))
    w = _run_worker(mq, router, lambda: len(ran) == 2)
    t = ran[uuid]
    assert (t.name, t.args) == ("Typed", [7, 2.0, "s", ["a"], False])
    assert isinstance(t.args[1], float)
    assert t.types == ["int64", "float64", "string", "[]string", "bool"]
    assert ran[later].args == ["eta"]
    stats = w.stats()
    assert (stats.processed, stats.failed, stats.retried, stats.dead) == (2, 0, 0, 0)
    assert mq.size() == 0
    _purge(amqp_url, "machinery_task")  # Machinery's sender also declares this queue


def test_python_worker_failures_follow_the_go_tasks_retry_count(
        go_machinery: Path, mq: MachineryQueue, amqp_url: str) -> None:
    """RetryCount 1: the Worker's handler fails twice (the retry 1 s later), then the task
    is dead-lettered although the Worker's own policy (5 attempts) would go on."""
    uuid = _send(go_machinery, amqp_url, "Fail", [{"Type": "string", "Value": "x"}],
                 "-retry-count", "1")
    runs: list[tuple[int, int]] = []

    def fail(job: unifiedq.Job) -> None:
        t = task_of(job)
        runs.append((t.retry_count, t.retry_timeout))
        raise RuntimeError("failing on purpose")

    router = Router()
    router.add("Fail", fail)
    _run_worker(mq, router, lambda: len(runs) == 2 and mq.size() == 0)
    assert runs == [(1, 0), (0, 1)]
    with unifiedq.connect(f"{amqp_url}?queue=machinery_tasks.dead&exchange=machinery_exchange"
                          ) as dead:
        copy = dead.dequeue(timeout=5)
        assert copy is not None
        dead.ack(copy)
    assert json.loads(copy.body)["UUID"] == uuid
    _purge(amqp_url, "machinery_task")


def test_python_retry_of_a_go_task_is_run_by_go(go_machinery: Path, mq: MachineryQueue,
                                                amqp_url: str, tmp_path: Path) -> None:
    uuid = _send(go_machinery, amqp_url, "Echo", [{"Type": "string", "Value": "again"}],
                 "-retry-count", "3", "-retry-timeout", "0")
    # Its own handle, closed before the Go worker starts: an open consumer would prefetch
    # the retried copy itself.
    with unifiedq.connect(f"{amqp_url}?protocol=machinery") as q:
        job = q.dequeue(timeout=10)
        assert job is not None and job.id == uuid
        assert task_of(job).retry_count == 3
        q.nack(job)  # Machinery's rule: RetryCount 2, RetryTimeout 1, 1 s later
    runs = _go_worker(go_machinery, amqp_url, tmp_path, 1)
    assert [(r["uuid"], r["args"], r["retry_count"], r["retry_timeout"]) for r in runs] == \
        [(uuid, ["again"], 2, 1)]
    _purge(amqp_url, "machinery_task")


# ------------------------------------------------------------------------ result backend


def test_go_sender_gets_the_results_of_python_tasks(go_machinery: Path, amqp_url: str) -> None:
    """Go's AsyncResult.Get (stock AMQP result backend) returns what Python handlers did."""
    env = dict(os.environ, BROKER=_broker(amqp_url), RESULT_BACKEND=_broker(amqp_url))

    def send(name: str, args: list[dict[str, Any]]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(go_machinery), "send", "-name", name, "-args", json.dumps(args),
             "-wait", "30s"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    store = MachineryResultStore(amqp_url)
    with unifiedq.connect(f"{amqp_url}?protocol=machinery", results=store) as q:
        q.size()
        _purge(amqp_url, *STOCK_QUEUES)
        procs = [send("Add", [{"Type": "int64", "Value": 2}, {"Type": "int64", "Value": 3}]),
                 send("Echo", [{"Type": "string", "Value": "no result"}]),
                 send("Fail", [{"Type": "string", "Value": "x"}]),
                 send("Typed", [{"Type": "string", "Value": "x"}])]
        router = Router()
        router.add("Add", lambda job: sum(task_of(job).args))
        router.add("Echo", lambda job: None)

        def fail(job: unifiedq.Job) -> None:
            raise RuntimeError("failing on purpose")

        router.add("Fail", fail, max_attempts=1)  # the Worker gives up: fail(job, error)
        router.add("Typed", fail)  # the Worker retries; the task's RetryCount 0 ends it
        with Worker(q, router, result_codec=JsonCodec(), poll_interval=0.05):
            outs = [p.communicate(timeout=60) for p in procs]
    store.close()
    replies = []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        replies.append([json.loads(line) for line in out.splitlines()][-1])
    add, echo, failed, exhausted = replies
    assert add["results"] == [5]  # an int64 for Go: reflect.Value of the Go type
    assert echo["results"] == []  # a handler without a result: SUCCESS, no results
    assert "failing on purpose" in failed["error"]  # the handler's error, as Machinery's
    # The Worker retried (nack); the task's RetryCount (0) ran out first: FAILURE says so.
    assert "retries exhausted (RetryCount 0)" in exhausted["error"]
    _purge(amqp_url, "machinery_task", "machinery_tasks.dead")


def test_python_reads_the_result_of_a_go_worker(go_machinery: Path, amqp_url: str,
                                                 tmp_path: Path) -> None:
    store = MachineryResultStore(amqp_url)
    with unifiedq.connect(f"{amqp_url}?protocol=machinery", results=store) as q:
        q.size()
        _purge(amqp_url, *STOCK_QUEUES)
        jid = TypedQueue[Any](q).put([20, 22], headers={"type": "Add"})
        with pytest.raises(unifiedq.ResultTimeout):
            q.result(jid, timeout=0)
        runs = _go_worker(go_machinery, amqp_url, tmp_path, 1)
        assert [r["uuid"] for r in runs] == [jid]
        # The Go worker wrote RECEIVED, STARTED, SUCCESS; result() reads on to the last.
        assert json.loads(q.result(jid, timeout=10)) == [42]
    store.close()
