"""unifiedq workers on redis:// appear in asynq's server registry, as Go's Inspector reads it.

``Inspector.Servers()`` (asynq v0.26, ``tests/interop_servers``) is what ``asynq server ls``
and asynqmon's Servers page show. The heartbeat is shortened (class attribute) so that the
tests see running tasks and expiries within a second or two instead of asynq's 5 s / 10 s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gobuild import built_go_program
from unifiedq import AsyncWorker, BoundedQueue, Job, Worker, connect
from unifiedq._consumers import ConsumerInfo
from unifiedq._errors import BackendConnectionError
from unifiedq._sync import worker as sync_worker
from unifiedq._sync.wrapper import QueueWrapper
from unifiedq.drivers.redis import RedisQueue, _proto, _servers
from unifiedq.drivers.redis._async.registry import AsyncServerRegistration
from unifiedq.drivers.redis._sync.registry import SyncServerRegistration

_SRC = Path(__file__).parent / "interop_servers"
BEAT = 0.3  # heartbeat period in these tests (TTL: 1 s, rounded)


@pytest.fixture(scope="module")
def servers_bin() -> Path:
    """The Go program of tests/interop_servers, built once per source hash and cached."""
    return built_go_program(_SRC, "asynq-servers", "asynq server registry")


@pytest.fixture
def qname() -> str:
    return f"srv-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def fast_beat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SyncServerRegistration, "INTERVAL", BEAT)
    monkeypatch.setattr(AsyncServerRegistration, "INTERVAL", BEAT)


def go_servers(binary: Path, redis_url: str) -> list[dict[str, Any]]:
    """Every server Go's Inspector lists now."""
    u = urllib.parse.urlsplit(redis_url)
    argv = [str(binary), "servers", "-addr", f"{u.hostname}:{u.port}",
            "-db", u.path.strip("/") or "0"]
    if u.password:
        argv += ["-password", urllib.parse.unquote(u.password)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    (out,) = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    servers: list[dict[str, Any]] = out["servers"]
    return servers


def ours(binary: Path, redis_url: str, qname: str) -> list[dict[str, Any]]:
    """The listed servers that consume ``qname`` (the session's Redis is shared)."""
    return [s for s in go_servers(binary, redis_url) if qname in s["queues"]]


def wait_for(fn: Callable[[], Any], timeout: float = 8.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.1)


def test_worker_listed_with_its_running_tasks_then_gone(
        servers_bin: Path, redis_url: str, qname: str) -> None:
    url = f"{redis_url}?queue={qname}"
    release = threading.Event()
    started: list[str] = []

    def handler(job: Job) -> None:
        started.append(job.id)
        release.wait(20)

    with connect(url) as q:
        ids = [q.enqueue(f"body-{i}".encode(), headers={"type": "report:build"})
               for i in range(2)]
        before = time.time()
        w = Worker(url, handler, concurrency=3, timeout=60)
        w.start()
        try:
            wait_for(lambda: len(started) == 2)
            (srv,) = wait_for(lambda: [s for s in ours(servers_bin, redis_url, qname)
                                       if len(s["active"]) == 2])
            assert srv["host"] == socket.gethostname()
            assert srv["pid"] == os.getpid()
            assert srv["concurrency"] == 3
            assert srv["queues"] == {qname: 1}
            assert srv["status"] == "active"
            assert before - 1 <= srv["started"] <= time.time()
            uuid.UUID(srv["id"])
            by_id = {a["task_id"]: a for a in srv["active"]}
            assert set(by_id) == set(ids)
            for i, jid in enumerate(ids):
                a = by_id[jid]
                assert (a["type"], a["payload"], a["queue"]) == (
                    "report:build", f"body-{i}", qname)
                assert before - 1 <= a["started"] <= time.time()
                # The handler's timeout is asynq's per-task deadline.
                assert a["deadline"] == pytest.approx(a["started"] + 60, abs=1.0)
            # `asynq server ls` prints "Active Workers" from ServerInfo's own count (field 9),
            # which Inspector does not expose: read it from the stored protobuf.
            r = redis.Redis.from_url(redis_url)
            try:
                raw = r.get(_servers.server_key(srv["host"], srv["pid"], srv["id"]))
            finally:
                r.close()
            assert isinstance(raw, bytes)
            fields = dict(_proto._fields(raw))
            assert (fields[4], fields[9], fields[7]) == (3, 2, b"active")
            # Stopping: still listed while the grace period runs, as asynq's "stopped".
            w.request_stop(grace=20)
            wait_for(lambda: [s for s in ours(servers_bin, redis_url, qname)
                              if s["status"] == "stopped"])
        finally:
            release.set()
            w.stop()
        assert ours(servers_bin, redis_url, qname) == []
        r = redis.Redis.from_url(redis_url)
        try:
            skey = _servers.server_key(srv["host"], srv["pid"], srv["id"])
            wkey = _servers.workers_key(srv["host"], srv["pid"], srv["id"])
            assert r.exists(skey, wkey) == 0
            assert r.zscore(_servers.ALL_SERVERS, skey) is None
            assert r.zscore(_servers.ALL_WORKERS, wkey) is None
        finally:
            r.close()
        assert q.size() == 0  # both jobs finished and were acked


def test_async_worker_listed_with_priority_levels(
        servers_bin: Path, redis_url: str, qname: str) -> None:
    url = f"{redis_url}?queue={qname}&timeout=900"  # asynq's per-task Timeout, in each task

    async def main() -> dict[str, Any]:
        gate = asyncio.Event()
        running: list[Job] = []

        async def handler(job: Job) -> None:
            running.append(job)
            await gate.wait()

        with connect(url) as q:
            jid = q.enqueue(b"urgent", priority=3, headers={"type": "p:job"})
        w = AsyncWorker(url, handler, concurrency=2, timeout=None)
        w.start()
        try:
            while not running:
                await asyncio.sleep(0.05)
            end = time.monotonic() + 8
            while True:
                found = await asyncio.to_thread(ours, servers_bin, redis_url, qname)
                if found and found[0]["active"]:
                    break
                assert time.monotonic() < end
                await asyncio.sleep(0.1)
        finally:
            gate.set()
            await w.stop()
        (srv,) = found
        (task,) = srv["active"]
        assert task["task_id"] == jid
        assert (task["type"], task["payload"], task["queue"]) == ("p:job", "urgent",
                                                                   f"{qname}:p3")
        # No worker timeout: the task's own (asynq Timeout) is its deadline.
        assert task["deadline"] == pytest.approx(task["started"] + 900, abs=1.0)
        assert await asyncio.to_thread(ours, servers_bin, redis_url, qname) == []
        return srv

    srv = asyncio.run(main())
    # The level in use is listed as its asynq queue, above the base queue (strict order).
    assert srv["queues"] == {qname: 1, f"{qname}:p3": 4}
    assert srv["strict_priority"] is True
    assert srv["concurrency"] == 2


def test_wrapped_queue_registers_the_worker(
        servers_bin: Path, redis_url: str, qname: str) -> None:
    url = f"{redis_url}?queue={qname}"
    with BoundedQueue(url, maxsize=100) as bq:
        w = Worker(bq, lambda job: None, concurrency=1)
        w.start()
        try:
            (srv,) = wait_for(lambda: ours(servers_bin, redis_url, qname))
            assert srv["pid"] == os.getpid()
        finally:
            w.stop()
        assert ours(servers_bin, redis_url, qname) == []


_KILLED = textwrap.dedent("""
    import sys, time
    from unifiedq import Worker
    from unifiedq.drivers.redis._sync.registry import SyncServerRegistration
    SyncServerRegistration.INTERVAL = float(sys.argv[2])
    def handler(job):
        time.sleep(3600)
    Worker(sys.argv[1], handler, concurrency=2).run()
""")


@pytest.fixture
def killed_worker(redis_url: str, qname: str) -> Iterator[subprocess.Popen[bytes]]:
    url = f"{redis_url}?queue={qname}"
    with connect(url) as q:
        q.enqueue(b"forever", headers={"type": "hang"})
    p = subprocess.Popen([sys.executable, "-c", _KILLED, url, "1.0"])
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def test_sigkilled_worker_drops_out_after_its_ttl(
        servers_bin: Path, redis_url: str, qname: str,
        killed_worker: subprocess.Popen[bytes]) -> None:
    (srv,) = wait_for(lambda: [s for s in ours(servers_bin, redis_url, qname) if s["active"]],
                      timeout=15)
    assert srv["pid"] == killed_worker.pid
    killed_worker.send_signal(signal.SIGKILL)
    killed_worker.wait(10)
    killed_at = time.monotonic()
    # Nothing cleared it: it is listed until the last heartbeat's TTL (2 x 1 s) runs out.
    assert ours(servers_bin, redis_url, qname) != []
    wait_for(lambda: ours(servers_bin, redis_url, qname) == [], timeout=6)
    gone_after = time.monotonic() - killed_at
    assert gone_after <= 2.0 + 2.0  # TTL, plus a whole-second score and polling slack
    r = redis.Redis.from_url(redis_url)
    try:
        wkey = _servers.workers_key(srv["host"], srv["pid"], srv["id"])
        wait_for(lambda: r.exists(wkey) == 0, timeout=3)  # the hash expires with it
    finally:
        r.close()


class _FailsFirstOpen(QueueWrapper):
    """A redis queue whose consumer registry cannot be opened the first time (Redis away)."""

    def __init__(self, inner: RedisQueue) -> None:
        self.inner = self._redis = inner
        self.opens = 0

    def open_consumer_registry(self, info: ConsumerInfo) -> Any:
        self.opens += 1
        if self.opens == 1:
            raise BackendConnectionError("redis is away")
        return self._redis.open_consumer_registry(info)


def test_registry_opened_later_when_it_failed_at_start(
        servers_bin: Path, redis_url: str, qname: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sync_worker, "REGISTRY_RETRY", 0.3)
    inner = connect(f"{redis_url}?queue={qname}")
    assert isinstance(inner, RedisQueue)
    q = _FailsFirstOpen(inner)
    w = Worker(q, lambda job: None, concurrency=1)
    with caplog.at_level(logging.WARNING, logger="unifiedq.worker"):
        w.start()
        try:
            (srv,) = wait_for(lambda: ours(servers_bin, redis_url, qname))
            assert srv["status"] == "active" and q.opens == 2
        finally:
            w.stop()
    assert any("consumer registry" in r.getMessage() for r in caplog.records)
    assert ours(servers_bin, redis_url, qname) == []
    inner.close()
