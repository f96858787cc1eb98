"""asynqmon v0.7.2 (the asynq Web UI) and asynq v0.25.1's Inspector read every state of a
unifiedq-written task, and list a unifiedq Worker among the servers.

asynqmon's JSON API is what its pages call; before scores were written in whole seconds its
scheduled, retry and archived lists and the task page answered HTTP 500 for our tasks, and
asynq v0.25's Inspector failed the same way (issue 15). Both Go programs are built once from
pinned modules (``tests/interop_asynqmon``, ``tests/interop_asynq025``) and cached.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gobuild import built_go_program
from unifiedq import Job, Worker, connect
from unifiedq.drivers.redis._sync.registry import SyncServerRegistration
from unifiedq.testing.servers import find_free_port

_TESTS = Path(__file__).parent
HOUR = 3600.0


@pytest.fixture(scope="module")
def asynqmon_bin() -> Path:
    """asynqmon's own command (``cmd/asynqmon``) at the version pinned in tests/interop_asynqmon."""
    return built_go_program(_TESTS / "interop_asynqmon", "asynqmon", "asynqmon",
                            files=("go.mod", "go.sum", "tools.go"),
                            package="github.com/hibiken/asynqmon/cmd/asynqmon", timeout=900)


@pytest.fixture(scope="module")
def asynq025_bin() -> Path:
    """The Inspector program of tests/interop_asynq025 (asynq v0.25.1)."""
    return built_go_program(_TESTS / "interop_asynq025", "asynq025-interop", "asynq v0.25")


def _redis_args(redis_url: str) -> list[str]:
    u = urllib.parse.urlsplit(redis_url)
    args = ["-redis-addr", f"{u.hostname}:{u.port}", "-redis-db", u.path.strip("/") or "0"]
    if u.password:
        args += ["-redis-password", urllib.parse.unquote(u.password)]
    return args


@pytest.fixture(scope="module")
def asynqmon(asynqmon_bin: Path, redis_url: str) -> Iterator[str]:
    """A running asynqmon on a free port against the test Redis; its base URL."""
    port = find_free_port()
    proc = subprocess.Popen([str(asynqmon_bin), "-port", str(port), *_redis_args(redis_url)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"asynqmon exited: {proc.stderr.read()!r}"  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(base + "/api/queues", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < end, "asynqmon did not start listening"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def get(base: str, path: str) -> Any:
    """GET ``path`` of asynqmon's API; fails the test on anything but HTTP 200."""
    try:
        with urllib.request.urlopen(base + path, timeout=10) as r:
            assert r.status == 200
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        pytest.fail(f"GET {path}: HTTP {exc.code}: {exc.read()[:300]!r}")


def iso(ts: str) -> float:
    """An asynqmon timestamp (RFC 3339, whole seconds) as Unix seconds."""
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class Population:
    """One unifiedq-written task in each asynq state, the active one held by a live Worker."""

    def __init__(self, redis_url: str) -> None:
        self.qname = f"mon-{uuid.uuid4().hex[:8]}"
        self.url = f"{redis_url}?queue={self.qname}&retention=3600"
        self.ids: dict[str, str] = {}
        self.release = threading.Event()
        self._running = threading.Event()
        self.worker: Worker | None = None

    def __enter__(self) -> Population:
        self.t0 = time.time()
        with connect(self.url) as q:
            for st in ("retry", "archived", "completed"):
                self.ids[st] = q.enqueue(f"body-{st}".encode(), headers={"type": f"t:{st}"})
            jobs = {j.headers["type"][2:]: j for j in q.dequeue_many(3, timeout=1)}
            assert set(jobs) == {"retry", "archived", "completed"}
            q.nack(jobs["retry"], delay=HOUR)  # asynq's retry set, due in an hour
            q.nack(jobs["archived"], requeue=False)  # asynq's archive
            q.ack(jobs["completed"])  # kept as completed: retention=3600
            self.ids["active"] = q.enqueue(b"body-active", headers={"type": "t:active"})

            def handler(job: Job) -> None:
                self._running.set()
                self.release.wait(30)

            # One slot, busy with the active task: nothing else is taken from the queue.
            self.worker = Worker(self.url, handler, concurrency=1, timeout=120)
            self.worker.start()
            assert self._running.wait(10)
            self.ids["pending"] = q.enqueue(b"body-pending", headers={"type": "t:pending"})
            self.ids["scheduled"] = q.enqueue(b"body-scheduled", delay=HOUR,
                                              headers={"type": "t:scheduled"})
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        if self.worker is not None:
            self.worker.stop(grace=5)
        with connect(self.url) as q:
            q.purge()


@pytest.fixture
def population(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Population]:
    monkeypatch.setattr(SyncServerRegistration, "INTERVAL", 0.3)  # running task listed fast
    with Population(redis_url) as pop:
        yield pop


STATES = ("pending", "active", "scheduled", "retry", "archived", "completed")


def test_asynqmon_lists_every_state_and_our_worker(asynqmon: str, population: Population) -> None:
    pop, q = population, population.qname
    seen: dict[str, dict[str, Any]] = {}
    for st in STATES:
        body = get(asynqmon, f"/api/queues/{q}/{st}_tasks")
        assert body["stats"][st] == 1, (st, body["stats"])
        (task,) = body["tasks"]
        assert (task["id"], task["type"], task["payload"], task["queue"]) == (
            pop.ids[st], f"t:{st}", f"body-{st}", q), st
        seen[st] = task
    now = time.time()
    assert iso(seen["scheduled"]["next_process_at"]) == pytest.approx(pop.t0 + HOUR, abs=60)
    assert iso(seen["retry"]["next_process_at"]) == pytest.approx(pop.t0 + HOUR, abs=60)
    assert seen["retry"]["retried"] == 1 and seen["retry"]["error_message"]
    assert seen["archived"]["error_message"]
    assert pop.t0 - 2 <= iso(seen["archived"]["last_failed_at"]) <= now + 1
    assert pop.t0 - 2 <= iso(seen["completed"]["completed_at"]) <= now + 1
    assert 0 < seen["completed"]["ttl_seconds"] <= HOUR

    # The active task's start and deadline come from our worker's registry entry.
    def active_started() -> dict[str, Any] | None:
        (t,) = get(asynqmon, f"/api/queues/{q}/active_tasks")["tasks"]
        return t if t["start_time"] != "-" else None

    end = time.monotonic() + 8
    while (active := active_started()) is None:
        assert time.monotonic() < end, "asynqmon never showed the active task's start time"
        time.sleep(0.1)
    assert pop.t0 - 2 <= iso(active["start_time"]) <= now + 1
    assert iso(active["deadline"]) == pytest.approx(iso(active["start_time"]) + 120, abs=2)
    assert active["is_orphaned"] is False

    # The task page of each one.
    for st in STATES:
        info = get(asynqmon, f"/api/queues/{q}/tasks/{pop.ids[st]}")
        assert (info["id"], info["state"], info["type"], info["payload"]) == (
            pop.ids[st], st, f"t:{st}", f"body-{st}")

    # The Servers page: our worker, with the task it is running.
    servers = [s for s in get(asynqmon, "/api/servers")["servers"]
               if q in s["queue_priorities"]]
    (srv,) = servers
    assert srv["pid"] == os.getpid() and srv["concurrency"] == 1
    assert srv["status"] == "active" and srv["queue_priorities"] == {q: 1}
    (w,) = srv["active_workers"]
    assert (w["task_id"], w["task_type"], w["task_payload"], w["queue"]) == (
        pop.ids["active"], "t:active", "body-active", q)


def test_asynq_v025_inspector_reads_every_state(asynq025_bin: Path, redis_url: str,
                                                population: Population) -> None:
    pop = population
    u = urllib.parse.urlsplit(redis_url)
    argv = [str(asynq025_bin), "inspect", "-addr", f"{u.hostname}:{u.port}",
            "-db", u.path.strip("/") or "0", "-queue", pop.qname,
            "-ids", ",".join(pop.ids[st] for st in STATES)]
    if u.password:
        argv += ["-password", urllib.parse.unquote(u.password)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["errors"] == {}
    assert out["counts"] == dict.fromkeys(STATES, 1)
    for st in STATES:
        (task,) = out["tasks"][st]
        assert (task["id"], task["state"], task["payload"]) == (pop.ids[st], st, f"body-{st}")
        assert out["info"][pop.ids[st]]["state"] == st
    assert out["tasks"]["scheduled"][0]["next_process_at"] == pytest.approx(pop.t0 + HOUR,
                                                                             abs=60)
    assert out["tasks"]["retry"][0]["retried"] == 1
    assert out["tasks"]["completed"][0]["completed_at"] >= int(pop.t0) - 1
