"""Native Faktory jobs (issue 15 item 2): typed payloads as Faktory's own ``args``/``custom``.

Against a real Faktory server (the rig) and, both ways, a Go program built with Faktory's own
Go client (``tests/interop_faktory``, the client faktory_worker_go is built on).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from pyfaktory import Client

import unifiedq
from gobuild import built_go_program
from unifiedq import InvalidArgument, SerializationError, TypedQueue
from unifiedq.drivers.faktory import FaktoryQueue

pytestmark = pytest.mark.timeout(120)

_GO_SRC = Path(__file__).parent / "interop_faktory"
JSON = {"content-type": "application/json"}


def _queue() -> str:
    return f"uq-native-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def go_faktory() -> Path:
    """The Go program of tests/interop_faktory, built once per source hash and cached."""
    return built_go_program(_GO_SRC, "faktory-interop", "Faktory interop")


def _go(binary: Path, faktory_url: str, cmd: str, *args: str) -> list[dict[str, Any]]:
    env = dict(os.environ, FAKTORY_URL=faktory_url.replace("faktory://", "tcp://", 1))
    proc = subprocess.run([str(binary), cmd, *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stderr}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _work(binary: Path, faktory_url: str, queue: str, count: int) -> list[dict[str, Any]]:
    return _go(binary, faktory_url, "work", "-queue", queue, "-count", str(count),
               "-timeout", "30s")


def _raw_push(faktory_url: str, job: dict[str, Any]) -> None:
    """PUSH a job dict exactly as given (pyfaktory's client, no unifiedq encoding)."""
    c = Client(faktory_url=faktory_url.replace("faktory://", "tcp://"), role="producer",
               timeout=10)
    c.connect()
    try:
        c._push(job)
    finally:
        c.disconnect()


# ------------------------------------------------------------------------ Python -> Go


def test_go_worker_runs_python_typed_jobs(go_faktory: Path, faktory_url: str) -> None:
    name = _queue()
    with unifiedq.connect(f"{faktory_url}?queue={name}") as q:
        tq: TypedQueue[Any] = TypedQueue(q)
        ids = [
            tq.put([1, "two", {"three": 3}], headers={"type": "Add", "tenant": "acme"}),
            tq.put({"to": "ada@example.com"}, headers={"type": "SendEmail"}),
            tq.put("plain ü", headers={"type": "Echo"}),
        ]
        got = _work(go_faktory, faktory_url, name, 3)
    by_jid = {e["jid"]: e for e in got}
    assert set(by_jid) == set(ids)  # the unifiedq id is the Faktory jid of a fresh job
    add, email, echo = (by_jid[i] for i in ids)
    assert (add["jobtype"], add["args"], add["queue"]) == ("Add", [1, "two", {"three": 3}], name)
    assert add["custom"] == {"tenant": "acme", "unifiedq": {"body": "args"}}
    assert (email["jobtype"], email["args"]) == ("SendEmail", [{"to": "ada@example.com"}])
    assert email["custom"] == {"unifiedq": {"body": "args[0]"}}
    assert (echo["jobtype"], echo["args"]) == ("Echo", ["plain ü"])


def test_nack_and_release_copies_stay_native(go_faktory: Path, faktory_url: str) -> None:
    name = _queue()
    with unifiedq.connect(f"{faktory_url}?queue={name}") as q:
        tq: TypedQueue[Any] = TypedQueue(q)
        tq.put([7, {"k": [1, 2]}], headers={"type": "Job", "tenant": "t1"})
        tq.put({"x": 1}, headers={"type": "Other"})
        first = q.dequeue(timeout=5)
        second = q.dequeue(timeout=5)
        assert first is not None and second is not None
        q.nack(first)  # a copy, attempt + 1
        q.release(second)  # a copy, same attempt
        got = {e["jobtype"]: e for e in _work(go_faktory, faktory_url, name, 2)}
    job, other = got["Job"], got["Other"]
    assert job["args"] == [7, {"k": [1, 2]}] and job["custom"]["tenant"] == "t1"
    assert job["custom"]["unifiedq"] == {"body": "args", "id": first.id, "attempt": 2}
    assert other["args"] == [{"x": 1}]
    assert other["custom"]["unifiedq"] == {"body": "args[0]", "id": second.id}


def test_bytes_bodies_keep_their_marked_base64(go_faktory: Path, faktory_url: str) -> None:
    name = _queue()
    body = bytes(range(256))
    with unifiedq.connect(f"{faktory_url}?queue={name}") as q:
        typed = q.enqueue(body, headers={"type": "Blob", "k": "v"})
        plain = q.enqueue(b"\x00old", headers={"k": "v"})
        got = {e["jid"]: e for e in _work(go_faktory, faktory_url, name, 2)}
        # The same two again, read by Python: bytes exactly, headers exactly.
        q.enqueue(body, headers={"type": "Blob", "k": "v"})
        q.enqueue(b"\x00old", headers={"k": "v"})
        jobs = sorted((q.dequeue(timeout=5) for _ in range(2)), key=lambda j: len(j.body) if j
                      else 0)
        for j in jobs:
            assert j is not None
            q.ack(j)
    assert got[typed]["jobtype"] == "Blob"
    assert base64.b64decode(got[typed]["args"][0]) == body
    assert got[typed]["custom"] == {"unifiedq": {"body": "base64", "headers": {"k": "v"}}}
    # Without a type: exactly the format of earlier versions (no marker), so they read it.
    assert got[plain]["jobtype"] == "unifiedq"
    assert got[plain]["custom"] == {"unifiedq": {"headers": {"k": "v"}}}
    assert jobs[0] is not None and jobs[1] is not None
    assert (jobs[0].body, dict(jobs[0].headers)) == (b"\x00old", {"k": "v"})
    assert (jobs[1].body, dict(jobs[1].headers)) == (body, {"type": "Blob", "k": "v"})


# ------------------------------------------------------------------------ Go -> Python


def test_python_reads_go_pushed_native_job(go_faktory: Path, faktory_url: str) -> None:
    name = _queue()
    (pushed,) = _go(go_faktory, faktory_url, "push", "-queue", name, "-jobtype", "X",
                    "-args", '[1,"two",{"three":3}]',
                    "-custom", '{"tenant":"acme","n":3,"tags":["a"]}')
    with unifiedq.connect(f"{faktory_url}?queue={name}") as q:
        tq: TypedQueue[Any] = TypedQueue(q)
        got = tq.get(timeout=5)
        assert got is not None
        job, payload = got
        assert job.id == pushed["jid"]
        assert payload == [1, "two", {"three": 3}]
        assert job.body == b'[1,"two",{"three":3}]'  # the JSON of args: no base64
        assert job.headers["type"] == "X"
        assert job.headers["tenant"] == "acme"
        assert (job.headers["n"], json.loads(job.headers["tags"])) == ("3", ["a"])
        q.nack(job)  # Python retries it: the copy is the same Go job (jobtype, args, custom)
        again = q.dequeue(timeout=5)
        assert again is not None and again.id == job.id and again.attempt == 2
        assert again.body == job.body and again.headers["type"] == "X"
        q.release(again)
        (e,) = _work(go_faktory, faktory_url, name, 1)
    assert (e["jobtype"], e["args"]) == ("X", [1, "two", {"three": 3}])
    assert e["custom"]["tenant"] == "acme" and e["custom"]["n"] == 3


def test_old_format_jobs_are_still_read(faktory_url: str) -> None:
    """A job as unifiedq wrote it before native jobs (base64, no marker) reads as before."""
    name = _queue()
    old = {"jid": uuid.uuid4().hex, "jobtype": "unifiedq", "queue": name,
           "args": [base64.b64encode(b"\xffold body").decode()],
           "custom": {"unifiedq": {"headers": {"type": "legacy", "k": "v"}, "priority": 0}}}
    _raw_push(faktory_url, old)
    with unifiedq.connect(f"{faktory_url}?queue={name}") as q:
        job = q.dequeue(timeout=5)
        assert job is not None
        assert (job.id, job.body) == (old["jid"], b"\xffold body")
        assert dict(job.headers) == {"type": "legacy", "k": "v"}
        q.nack(job)
        again = q.dequeue(timeout=5)
        assert again is not None and again.body == b"\xffold body" and again.attempt == 2
        q.ack(again)


# ------------------------------------------------------------------------ Python <-> Python


def test_typed_round_trip_is_exact(faktory_url: str) -> None:
    name = _queue()
    payloads: list[Any] = [[1, 2.5, "ü", None], {"a": {"b": [True]}}, "s", 0, None, [], {}]
    with unifiedq.connect(f"{faktory_url}?queue={name}") as q:
        tq: TypedQueue[Any] = TypedQueue(q)
        for p in payloads:
            tq.put(p, headers={"type": "T", "h": "v"})
        tq.put([1], headers={"h": "v"})  # native with the default jobtype
        for p in [*payloads, [1]]:
            got = tq.get(timeout=5)
            assert got is not None
            job, payload = got
            assert payload == p and type(payload) is type(p)
            assert job.body == json.dumps(p, separators=(",", ":"), ensure_ascii=False).encode()
            want = {"h": "v", **JSON, **({"type": "T"} if p != [1] else {})}
            assert dict(job.headers) == want
            q.ack(job)


def test_bad_input_raises_before_anything_is_sent(faktory_url: str) -> None:
    name = _queue()
    with unifiedq.connect(f"{faktory_url}?queue={name}") as q:
        tq: TypedQueue[Any] = TypedQueue(q)
        for bad in ("", "two words", "tab\there", "x" * 1025):
            with pytest.raises(InvalidArgument, match="jobtype"):
                q.enqueue(b"x", headers={"type": bad})
            with pytest.raises(InvalidArgument, match="jobtype"):
                tq.put([1], headers={"type": bad})
        for big in (2**53 + 1, -(2**60)):  # Go's float64 would silently change them
            with pytest.raises(InvalidArgument, match="2\\*\\*53"):
                tq.put([1, {"n": big}], headers={"type": "T"})
        tq.put([2**53, -(2**53)], headers={"type": "T"})  # the largest exact ones pass
        got = tq.get(timeout=5)
        assert got is not None and got[1] == [2**53, -(2**53)]
        q.ack(got[0])
        with pytest.raises(InvalidArgument):  # a jobtype must be a str, like every header
            q.enqueue(b"x", headers={"type": 5})  # type: ignore[dict-item]
        for body in (b"\xff", b"{", b"NaN", b"[Infinity]", b""):
            with pytest.raises(InvalidArgument, match="not UTF-8 JSON"):
                q.enqueue(body, headers=JSON)
        for payload in (object(), float("nan"), {1: {2j}}):
            with pytest.raises(SerializationError):
                tq.put(payload, headers={"type": "T"})
        with pytest.raises(InvalidArgument):  # one bad job: none of the batch is sent
            q.enqueue_many([b"[1]", b"oops"], headers=JSON)
        assert q.size() == 0
        assert q.dequeue(timeout=0) is None


def test_native_json_is_faktorys_alone() -> None:
    """Other drivers keep TypedQueue's bodies and headers exactly as before."""
    assert FaktoryQueue.native_json is True
    with unifiedq.connect(f"memory://{_queue()}") as q:
        assert getattr(q, "native_json", False) is False
        tq: TypedQueue[Any] = TypedQueue(q)
        tq.put({"a": 1}, headers={"type": "T"})
        job = q.dequeue(timeout=1)
        assert job is not None
        assert (job.body, dict(job.headers)) == (b'{"a":1}', {"type": "T"})
