"""A stock Go ``faktory_worker_go`` worker runs Python-enqueued typed jobs (issue 15, item 4).

``tests/interop_faktory_worker`` is a ``worker.Manager`` with a handler registered per job
type, as a Go shop runs one (faktory_worker_go v1.7.0); each handler prints the jid, job type,
args and custom keys it was given. The jobs are enqueued by unifiedq through ``TypedQueue``
(JSON codec), so they are native Faktory jobs: ``jobtype`` from the ``type`` header, the
payload as ``args``.
"""

from __future__ import annotations

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
from unifiedq import TypedQueue

pytestmark = pytest.mark.timeout(120)

_GO_SRC = Path(__file__).parent / "interop_faktory_worker"


@pytest.fixture(scope="module")
def go_worker() -> Path:
    """The faktory_worker_go program, built once per source hash and cached."""
    return built_go_program(_GO_SRC, "faktory-worker-go", "faktory_worker_go interop")


def _run_worker(binary: Path, faktory_url: str, queue: str, jobtypes: str, count: int,
                fail: str = "") -> list[dict[str, Any]]:
    env = dict(os.environ, FAKTORY_URL=faktory_url.replace("faktory://", "tcp://", 1))
    proc = subprocess.run(
        [str(binary), "-queue", queue, "-jobtypes", jobtypes, "-count", str(count),
         "-fail", fail, "-timeout", "30s"],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{proc.stderr}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_go_worker_runs_python_typed_jobs_with_native_args(go_worker: Path,
                                                           faktory_url: str) -> None:
    queue = f"uq-fwg-{uuid.uuid4().hex[:10]}"
    with unifiedq.connect(f"{faktory_url}?queue={queue}") as q:
        tq: TypedQueue[Any] = TypedQueue(q)
        add = tq.put([1, 2.5, "two", True, None, {"three": [3]}],
                     headers={"type": "Add", "tenant": "acme"})
        email = tq.put({"to": "ada@example.com", "cc": []}, headers={"type": "SendEmail"})
        many = [tq.put([i], headers={"type": "Add"}) for i in range(10)]
        ran = _run_worker(go_worker, faktory_url, queue, "Add,SendEmail", 12)
        # Every job ran exactly once and was acked by the Go worker: nothing is left.
        assert q.size() == 0
    by_jid = {r["jid"]: r for r in ran}
    assert len(ran) == 12 and set(by_jid) == {add, email, *many}
    # Go decodes JSON numbers as float64; the values and their order are the ones we sent.
    assert by_jid[add]["jobtype"] == "Add"
    assert by_jid[add]["args"] == [1, 2.5, "two", True, None, {"three": [3]}]
    assert by_jid[add]["custom"] == {"tenant": "acme", "unifiedq": {"body": "args"}}
    assert by_jid[email]["jobtype"] == "SendEmail"
    assert by_jid[email]["args"] == [{"to": "ada@example.com", "cc": []}]
    assert by_jid[email]["custom"] == {"unifiedq": {"body": "args[0]"}}
    assert sorted(by_jid[j]["args"][0] for j in many) == list(range(10))


def test_a_go_handler_failure_comes_back_to_python_as_a_retry(go_worker: Path,
                                                             faktory_url: str) -> None:
    """A failing Go handler makes Faktory schedule a retry (the job is not lost); requeued
    from the retry set, a Python consumer reads it with the same args and attempt 2."""
    queue = f"uq-fwg-{uuid.uuid4().hex[:10]}"
    with unifiedq.connect(f"{faktory_url}?queue={queue}") as q:
        tq: TypedQueue[Any] = TypedQueue(q)
        jid = tq.put(["boom", 3], headers={"type": "Flaky"})
        ran = _run_worker(go_worker, faktory_url, queue, "Flaky", 1, fail="Flaky")
        assert [(r["jid"], r["args"]) for r in ran] == [(jid, ["boom", 3])]
        assert q.dequeue(timeout=0.5) is None  # in Faktory's retry set, due seconds from now
        _requeue_retry(faktory_url, jid)  # make it due now
        got = tq.get(timeout=10)
        assert got is not None
        job, payload = got
        q.ack(job)
    assert (job.id, payload, job.attempt, job.headers["type"]) == (jid, ["boom", 3], 2, "Flaky")


def _requeue_retry(faktory_url: str, jid: str) -> None:
    """MUTATE: move job ``jid`` from Faktory's retry set back to its queue."""
    c = Client(faktory_url=faktory_url.replace("faktory://", "tcp://"), role="producer",
               timeout=10)
    c.connect()
    try:
        c._mutate({"cmd": "requeue", "target": "retries", "filter": {"jids": [jid]}})
    finally:
        c.disconnect()
