"""redis:// under faults (issue 20), both faces, on real redis-servers.

* Deadlines: with the server frozen (SIGSTOP of its process), every verb returns or raises
  BackendTimeout within ``socket_timeout`` (a waiting dequeue: its timeout plus that), and
  the handle works again once the server thaws.
* Cancellation: cancelling the asyncio face's dequeue at random points never strands a job.
* RELEASE: a stopped worker hands its job back without consuming an attempt.
* Limits: an oversized task message is refused before a byte is sent.
* A full Redis (maxmemory + noeviction): producers get BackendFull, consumers still drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import redis

from unifiedq import (
    AsyncWorker,
    BackendConnectionError,
    BackendFull,
    BackendTimeout,
    Job,
    JobNotLeased,
    LimitExceeded,
    Queue,
    Worker,
    connect,
    connect_async,
)
from unifiedq.testing.fixtures import require_binary
from unifiedq.testing.servers import RedisServer
from unifiedq.testing.suite import BlockingView

ST = 1.0  # socket_timeout of the handles under test (a busy 2-core machine stalls 0.5 s)
SLACK = 1.0  # scheduling slack on a shared, busy 2-core machine


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A private Redis: these tests freeze it, which must not stall other modules' tests."""
    require_binary("redis-server")
    s = RedisServer()
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def qname() -> str:
    return f"uq-fault-{uuid.uuid4().hex[:10]}"


def _open(url: str, face: str) -> Queue:
    if face == "sync":
        return connect(url)
    return cast(Queue, BlockingView(connect_async(url)))


def _raw(server: RedisServer) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, socket_timeout=5)


# --------------------------------------------------------------------------- deadlines

# verb -> (call on a handle holding leased jobs, seconds it may wait on top of socket_timeout)
VERBS: dict[str, tuple[Callable[[Queue, list[Job]], object], float]] = {
    "enqueue": (lambda q, jobs: q.enqueue(b"x"), 0.0),
    "enqueue_many": (lambda q, jobs: q.enqueue_many([b"a", b"b"]), 0.0),
    "dequeue": (lambda q, jobs: q.dequeue(), 0.0),
    "dequeue_wait": (lambda q, jobs: q.dequeue(timeout=1.0), 1.0),
    "dequeue_many_wait": (lambda q, jobs: q.dequeue_many(5, timeout=1.0), 1.0),
    "peek": (lambda q, jobs: q.peek(), 0.0),
    "ack": (lambda q, jobs: q.ack(jobs[0]), 0.0),
    "nack": (lambda q, jobs: q.nack(jobs[0]), 0.0),
    "release": (lambda q, jobs: q.release(jobs[0]), 0.0),
    "extend_lease": (lambda q, jobs: q.extend_lease(jobs[0], 10), 0.0),
    "size": (lambda q, jobs: q.size(), 0.0),
    "purge": (lambda q, jobs: q.purge(), 0.0),
    "stats": (lambda q, jobs: q.stats(), 0.0),  # type: ignore[attr-defined]
}


@pytest.mark.parametrize("face", ["sync", "async"])
@pytest.mark.parametrize("verb", sorted(VERBS))
def test_verb_keeps_its_deadline_on_a_frozen_server(
    server: RedisServer, qname: str, face: str, verb: str
) -> None:
    call, wait = VERBS[verb]
    url = f"{server.url}?queue={qname}&socket_timeout={ST}"
    q = _open(url, face)
    try:
        q.enqueue_many([b"1", b"2"])
        jobs = q.dequeue_many(2, timeout=5)
        assert len(jobs) == 2
        if verb.startswith("dequeue"):
            q.ack(jobs.pop())
            q.ack(jobs.pop())  # nothing ready: a waiting dequeue really waits
        with server.frozen():
            t0 = time.monotonic()
            with pytest.raises(BackendTimeout):
                call(q, jobs)
            took = time.monotonic() - t0
        print(f"frozen: {verb} on {face} raised after {took:.3f} s (bound {wait + ST} s)")
        assert took <= wait + ST + SLACK, f"{verb} on {face} took {took:.2f} s"
        # Thawed: the handle works again (a connection that timed out was dropped, not pooled).
        jid = q.enqueue(b"after", job_id=f"after-{verb}")
        seen = []
        while (job := q.dequeue(timeout=1.0)) is not None:
            seen.append(job.id)
            q.ack(job)
        assert jid in seen
        assert q.size() == 0
    finally:
        q.close()


@pytest.mark.parametrize("face", ["sync", "async"])
def test_dequeue_frozen_while_waiting_keeps_its_deadline(
    server: RedisServer, qname: str, face: str
) -> None:
    """Frozen while the dequeue blocks on the wake list (BLPOP): raised by timeout + ST."""
    url = f"{server.url}?queue={qname}&socket_timeout={ST}"
    q = _open(url, face)
    try:
        assert q.size() == 0
        timer = threading.Timer(0.3, server.freeze)
        t0 = time.monotonic()
        timer.start()
        try:
            with pytest.raises(BackendTimeout):
                q.dequeue(timeout=3.0)
            took = time.monotonic() - t0
        finally:
            timer.join()
            server.thaw()
        print(f"frozen while waiting: dequeue(timeout=3) on {face} raised after {took:.3f} s")
        assert took <= 3.0 + ST + SLACK
        q.enqueue(b"after")
        job = q.dequeue(timeout=5)
        assert job is not None and job.body == b"after"
        q.ack(job)
    finally:
        q.close()


@pytest.mark.parametrize("face", ["sync", "async"])
def test_fresh_handle_on_a_frozen_server_keeps_its_deadline(
    server: RedisServer, qname: str, face: str
) -> None:
    """No pooled connection yet: the connect (TCP is accepted by the kernel) is bounded too."""
    url = f"{server.url}?queue={qname}&socket_timeout={ST}"
    with server.frozen():
        q = _open(url, face)
        try:
            t0 = time.monotonic()
            with pytest.raises(BackendTimeout):
                q.enqueue(b"x")
            took = time.monotonic() - t0
        finally:
            q.close()
    print(f"frozen: first enqueue of a fresh handle on {face} raised after {took:.3f} s")
    assert took <= ST + SLACK


@pytest.mark.parametrize("face", ["sync", "async"])
def test_close_keeps_its_deadline_on_a_frozen_server(
    server: RedisServer, qname: str, face: str
) -> None:
    url = f"{server.url}?queue={qname}&socket_timeout={ST}&visibility_timeout=3"
    q = _open(url, face)
    q.enqueue(b"x")
    assert q.dequeue(timeout=5) is not None  # held: close() would give it back
    with server.frozen():
        time.sleep(1.2)  # the heartbeat (every 1 s) is stuck in a call now or soon
        t0 = time.monotonic()
        q.close()
        took = time.monotonic() - t0
    print(f"frozen: close on {face} returned after {took:.3f} s (bound {ST} s)")
    assert took <= ST + SLACK, f"close on {face} took {took:.2f} s"


def test_default_options_raise_instead_of_hanging(server: RedisServer, qname: str) -> None:
    """The issue's case: dequeue(timeout=1) with default options on a frozen Redis."""
    with connect(f"{server.url}?queue={qname}") as q:
        assert q.options.socket_timeout == 5.0  # type: ignore[attr-defined]
        q.size()  # a pooled, connected connection
        with server.frozen():
            t0 = time.monotonic()
            with pytest.raises(BackendTimeout):
                q.dequeue(timeout=1)
            took = time.monotonic() - t0
        print(f"frozen: dequeue(timeout=1), default options, raised after {took:.3f} s")
        assert took <= 1 + 5 + SLACK
        assert q.size() == 0


@pytest.mark.parametrize("face", ["sync", "async"])
def test_heartbeat_survives_a_freeze(server: RedisServer, qname: str, face: str) -> None:
    """Frozen for longer than a lease: the heartbeat keeps cycling and extends after a thaw."""
    url = f"{server.url}?queue={qname}&socket_timeout={ST}&visibility_timeout=1.5"
    raw = _raw(server)
    q = _open(url, face)
    try:
        q.enqueue(b"x")
        job = q.dequeue(timeout=5)
        assert job is not None
        lease = f"asynq:{{{qname}}}:lease"
        with server.frozen():
            time.sleep(2.0)  # several beats (every 0.5 s) time out meanwhile
        before = raw.zscore(lease, job.id)
        assert before is not None
        deadline = time.monotonic() + 3
        while (raw.zscore(lease, job.id) or 0) <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (raw.zscore(lease, job.id) or 0) > before, "the heartbeat stopped extending"
        q.ack(job)
    finally:
        q.close()


@pytest.mark.parametrize("face", ["sync", "async"])
def test_reply_cut_mid_dequeue_strands_nothing(
    server: RedisServer, qname: str, face: str, toxiproxy: Any
) -> None:
    """The connection closes 512 bytes into a 4 KiB job (reconnections too): the job the
    script took is given back at once (small replies still pass), attempt unchanged."""
    url, proxy = toxiproxy.url(f"{server.url}?queue={qname}&socket_timeout={ST}")
    q = _open(url, face)
    try:
        q.enqueue(b"j" * 4096)
        with proxy.toxic("limit_data", bytes=512):
            t0 = time.monotonic()
            with pytest.raises(BackendConnectionError):
                q.dequeue(timeout=1.0)
            took = time.monotonic() - t0
        print(f"reply cut: dequeue on {face} raised after {took:.3f} s")
        assert took <= 1.0 + ST + SLACK
        stats = q.stats()  # type: ignore[attr-defined]
        assert (stats["pending"], stats["active"]) == (1, 0)
        job = q.dequeue(timeout=5)
        assert job is not None and job.attempt == 1 and len(job.body) == 4096
        q.ack(job)
    finally:
        q.close()


@pytest.mark.parametrize("face", ["sync", "async"])
def test_late_dequeue_reply_is_given_back_later(
    server: RedisServer, qname: str, face: str, toxiproxy: Any
) -> None:
    """Redis ran the dequeue but its reply came after the deadline (and so would the
    give-back's): the next dequeue, once replies flow again, gives the job back first."""
    url, proxy = toxiproxy.url(f"{server.url}?queue={qname}&socket_timeout={ST}")
    q = _open(url, face)
    try:
        assert q.dequeue() is None  # the dequeue script is loaded (no NOSCRIPT round trip)
        q.enqueue(b"slow")
        with proxy.toxic("latency", latency=int((ST + 0.5) * 1000)), \
                pytest.raises(BackendTimeout):
            q.dequeue()
        stats = q.stats()  # type: ignore[attr-defined]
        assert stats["active"] == 1  # taken by the dequeue whose reply was late
        job = q.dequeue(timeout=2)  # gives it back first, then takes it again
        assert job is not None and job.body == b"slow" and job.attempt == 1
        q.ack(job)
        assert q.stats()["active"] == 0  # type: ignore[attr-defined]
    finally:
        q.close()


def test_resent_dequeue_returns_what_the_lost_reply_carried(
    server: RedisServer, qname: str
) -> None:
    """The dequeue script's resend mode: same token and lease score -> the same jobs again."""
    from unifiedq._url import parse_url
    from unifiedq.drivers.redis import _core, _scripts

    url = f"{server.url}?queue={qname}"
    core = _core.Core(*_core.parse(parse_url(url), {}))
    raw = _raw(server)
    with connect(url) as q:
        q.enqueue_many([b"a", b"b", b"c"])
    call, token = core.dequeue_call(2)
    script, keys, args = call
    first = raw.eval(script.source, len(keys), *keys, *args)  # its reply is "lost"
    _, _, again = core.dequeue_resend(call)
    second = raw.eval(script.source, len(keys), *keys, *again)
    first_jobs, _ = core.dequeue_result(first, token)
    second_jobs, _ = core.dequeue_result(second, token)
    assert [j.id for j in second_jobs] == [j.id for j in first_jobs]  # not two more jobs
    assert [j.body for j in second_jobs] == [b"a", b"b"]
    # The untake script gives them back (no attempt counted), e.g. when the resend failed too.
    u_script, u_keys, u_args = core.untake_call(call)
    assert u_script is _scripts.UNTAKE
    assert raw.eval(u_script.source, len(u_keys), *u_keys, *u_args) == 2
    with connect(url) as q:
        jobs = q.dequeue_many(3, timeout=5)
        assert sorted(j.body for j in jobs) == [b"a", b"b", b"c"]
        assert {j.attempt for j in jobs} == {1}
        for j in jobs:
            q.ack(j)
        assert q.stats()["active"] == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("face", ["sync", "async"])
def test_restart_with_several_pooled_connections(qname: str, face: str) -> None:
    """After a restart every pooled connection is dead; concurrent verbs still succeed (each
    retries once, on its own dropped connection, reconnected)."""
    require_binary("redis-server")
    s = RedisServer(persistent=True)
    s.start()
    try:
        url = f"{s.url}?queue={qname}&socket_timeout=2"
        if face == "sync":
            with connect(url) as q:
                threads = [threading.Thread(target=q.size) for _ in range(4)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                assert len(q._idle) >= 2  # type: ignore[attr-defined]
                s.restart()
                errors: list[BaseException] = []

                def produce(i: int) -> None:
                    try:
                        for k in range(3):
                            q.enqueue(b"%d-%d" % (i, k))
                    except BaseException as exc:
                        errors.append(exc)

                threads = [threading.Thread(target=produce, args=(i,)) for i in range(4)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                assert not errors, errors
                assert q.size() == 12
        else:
            async def run() -> None:  # one loop: the asyncio face's connections belong to it
                async with connect_async(url) as aq:
                    await asyncio.gather(*(aq.size() for _ in range(4)))
                    assert len(aq._idle) == 4  # type: ignore[attr-defined]
                    await asyncio.to_thread(s.restart)
                    await asyncio.gather(*(aq.enqueue(b"%d" % i) for i in range(4)))
                    assert await aq.size() == 4

            asyncio.run(run())
    finally:
        s.stop()


def test_forked_child_does_not_share_pooled_connections(server: RedisServer, qname: str) -> None:
    url = f"{server.url}?queue={qname}"
    with connect(url) as q:
        q.enqueue(b"parent")
        pid = os.fork()
        if pid == 0:  # the child uses the parent's handle: it must open its own sockets
            code = 0
            try:
                for i in range(20):
                    q.enqueue(b"child-%d" % i)
                code = 0 if q.size() == 21 else 3
            except BaseException:
                code = 2
            os._exit(code)
        for _ in range(20):
            assert q.size() >= 1  # the parent's connection stays in step meanwhile
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert q.size() == 21
        q.purge()


# --------------------------------------------------------------------------- cancellation


def test_cancelled_dequeues_strand_no_job(server: RedisServer, qname: str) -> None:
    """Hundreds of dequeues cancelled at random points; every job is delivered exactly once."""
    url = f"{server.url}?queue={qname}&heartbeat=false"
    n = 40
    rng = random.Random(20)

    async def run() -> tuple[dict[str, list[int]], int, dict[str, Any]]:
        delivered: dict[str, list[int]] = {}
        cancels = 0
        async with connect_async(url) as q:
            ids = await q.enqueue_many([b"%d" % i for i in range(n)])
            for jid in ids:
                delivered[jid] = []

            async def take() -> list[Job]:
                if rng.random() < 0.5:
                    job = await q.dequeue(timeout=0.05)
                    return [job] if job is not None else []
                return await q.dequeue_many(rng.randint(1, 3), timeout=0.05)

            while cancels < 300:
                task = asyncio.ensure_future(take())
                await asyncio.sleep(rng.choice((0, 0, 0.0001, 0.0003, 0.001)))
                for _ in range(rng.randint(0, 3)):
                    await asyncio.sleep(0)  # land the cancel at another await point
                if not task.done():
                    task.cancel()
                try:
                    jobs = await task
                except asyncio.CancelledError:
                    cancels += 1
                    continue
                for job in jobs:
                    delivered[job.id].append(job.attempt)
                    # Give some back at once: the next delivery must not count an attempt.
                    await (q.release(job) if rng.random() < 0.7 else q.ack(job))
            # Drain without cancellation.
            while (last := await q.dequeue(timeout=0.3)) is not None:
                delivered[last.id].append(last.attempt)
                await q.ack(last)
            stats = dict(await q.stats())  # type: ignore[attr-defined]
        return delivered, cancels, stats

    delivered, cancels, stats = asyncio.run(run())
    assert cancels >= 300
    assert stats["active"] == 0 and stats["pending"] == 0 and stats["dead"] == 0
    assert stats["retry"] == 0
    for jid, attempts in delivered.items():
        assert attempts, f"job {jid} was never delivered"
        assert set(attempts) == {1}, f"job {jid} counted attempts: {attempts}"


def test_wait_for_timeouts_strand_no_job(server: RedisServer, qname: str) -> None:
    """asyncio.wait_for with random tiny timeouts around dequeue: each job is acked once."""
    url = f"{server.url}?queue={qname}&heartbeat=false"
    n = 30
    rng = random.Random(7)

    async def run() -> tuple[dict[str, list[int]], int, dict[str, Any]]:
        acked: dict[str, list[int]] = {}
        timeouts = 0
        async with connect_async(url) as q:
            ids = await q.enqueue_many([b"%d" % i for i in range(n)])
            while len(acked) < n or timeouts < 200:
                try:
                    job = await asyncio.wait_for(q.dequeue(timeout=0.2),
                                                 rng.uniform(0.0, 0.001))
                except TimeoutError:
                    timeouts += 1
                    continue
                if job is not None:
                    acked.setdefault(job.id, []).append(job.attempt)
                    await q.ack(job)
                elif timeouts > 5000:
                    break
            assert set(acked) == set(ids)
            stats = dict(await q.stats())  # type: ignore[attr-defined]
        return acked, timeouts, stats

    acked, timeouts, stats = asyncio.run(run())
    assert timeouts >= 200, timeouts
    assert stats["active"] == 0 and stats["depth"] == 0 and stats["dead"] == 0
    assert all(v == [1] for v in acked.values()), acked


def test_cancelled_settles_do_not_desync_the_pool(server: RedisServer, qname: str) -> None:
    url = f"{server.url}?queue={qname}&heartbeat=false"
    rng = random.Random(3)

    async def run() -> None:
        async with connect_async(url) as q:
            await q.enqueue_many([b"%d" % i for i in range(60)])
            jobs = await q.dequeue_many(60, timeout=5)
            assert len(jobs) == 60
            for job in jobs:
                verb = q.ack(job) if rng.random() < 0.5 else q.nack(job)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(verb, rng.uniform(0.0, 0.001))
                # Every reply still answers its own command.
                assert isinstance(await q.size(), int)
                peeked = await q.peek()
                assert peeked is None or isinstance(peeked.body, bytes)
            # A settle cut short either landed or left the job leased; a second one ends it.
            for job in jobs:
                with contextlib.suppress(JobNotLeased):
                    await q.ack(job)
            while (left := await q.dequeue(timeout=0.2)) is not None:
                await q.ack(left)
            stats = await q.stats()  # type: ignore[attr-defined]
            assert stats["active"] == 0 and stats["depth"] == 0

    asyncio.run(run())


# --------------------------------------------------------------------------- RELEASE


def _pending_retried(server: RedisServer, qname: str) -> tuple[int, int, list[int]]:
    """(pending, archived, retried of each pending task) read straight from Redis."""
    from unifiedq.drivers.redis import _proto

    raw = _raw(server)
    p = f"asynq:{{{qname}}}:"
    ids: list[bytes] = raw.lrange(p + "pending", 0, -1)  # type: ignore[assignment]
    msgs: list[bytes] = [raw.hget(p + "t:" + i.decode(), "msg") for i in ids]  # type: ignore[misc]
    retried = [_proto.decode(m).retried for m in msgs]
    return len(ids), int(raw.zcard(p + "archived")), retried


def test_stopped_worker_releases_without_counting(server: RedisServer, qname: str) -> None:
    url = f"{server.url}?queue={qname}&max_retry=0"
    started = threading.Event()

    def handler(job: Job) -> None:
        started.set()
        time.sleep(3)

    with connect(url) as q:
        q.enqueue(b"work")
    worker = Worker(url, handler, poll_interval=0.1)
    worker.start()
    assert started.wait(10)
    t0 = time.monotonic()
    worker.stop(grace=0.2)
    assert time.monotonic() - t0 < 5
    assert _pending_retried(server, qname) == (1, 0, [0])
    with connect(url) as q:
        job = q.dequeue(timeout=5)
        assert job is not None and job.attempt == 1
        q.ack(job)


def test_stopped_async_worker_releases_without_counting(
    server: RedisServer, qname: str
) -> None:
    url = f"{server.url}?queue={qname}&max_retry=0"

    async def run() -> None:
        started = asyncio.Event()

        async def handler(job: Job) -> None:
            started.set()
            await asyncio.sleep(3)

        async with connect_async(url) as q:
            await q.enqueue(b"work")
        worker = AsyncWorker(url, handler, poll_interval=0.1)
        worker.start()
        await asyncio.wait_for(started.wait(), 10)
        await worker.stop(grace=0.2)

    asyncio.run(run())
    assert _pending_retried(server, qname) == (1, 0, [0])
    with connect(url) as q:
        job = q.dequeue(timeout=5)
        assert job is not None and job.attempt == 1
        q.ack(job)


def test_sigterm_to_a_worker_process_releases_its_job(
    server: RedisServer, qname: str, tmp_path: Any
) -> None:
    url = f"{server.url}?queue={qname}&max_retry=0"
    flag = tmp_path / "started"
    script = textwrap.dedent(f"""
        import pathlib, time
        from unifiedq import Worker

        def handler(job):
            pathlib.Path({str(flag)!r}).write_text(job.id)
            time.sleep(30)

        Worker({url!r}, handler, poll_interval=0.1, grace=0.2).run()
    """)
    with connect(url) as q:
        q.enqueue(b"work")
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while not flag.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _pending_retried(server, qname) == (1, 0, [0])
    with connect(url) as q:
        job = q.dequeue(timeout=5)
        assert job is not None and job.attempt == 1
        q.ack(job)


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("face", ["sync", "async"])
def test_oversized_message_is_refused_before_sending(
    server: RedisServer, qname: str, face: str
) -> None:
    # A lowered proto-max-bulk-len stands for Redis' 512 MiB default (same code path).
    server_limit = 1024 * 1024  # the smallest value Redis takes
    raw = _raw(server)
    old = str(raw.config_get("proto-max-bulk-len")["proto-max-bulk-len"])
    raw.config_set("proto-max-bulk-len", server_limit)
    try:
        url = f"{server.url}?queue={qname}&proto_max_bulk_len={server_limit}"
        before = int(raw.info("stats")["total_net_input_bytes"])
        q = _open(url, face)
        try:
            t0 = time.monotonic()
            with pytest.raises(LimitExceeded) as info:
                q.enqueue(b"x" * server_limit)
            with pytest.raises(LimitExceeded):  # headers count too
                q.enqueue(b"x", headers={"trace": "h" * server_limit})
            with pytest.raises(LimitExceeded):  # one bad job refuses the whole batch
                q.enqueue_many([b"ok", b"y" * (server_limit + 1)])
            assert time.monotonic() - t0 < 1.0
            assert info.value.limit == "proto-max-bulk-len"
            assert info.value.maximum == server_limit and info.value.size > server_limit
            # Nothing went out: the server saw (almost) no bytes from us.
            assert int(raw.info("stats")["total_net_input_bytes"]) - before < 1000
            assert q.size() == 0
            q.enqueue(b"x" * (server_limit - 200))  # just under the limit: accepted
            assert q.size() == 1
            q.purge()
        finally:
            q.close()
    finally:
        raw.config_set("proto-max-bulk-len", old)


# --------------------------------------------------------------------------- full backend


@pytest.mark.parametrize("face", ["sync", "async"])
def test_full_redis_refuses_producers_and_drains(qname: str, face: str) -> None:
    require_binary("redis-server")
    s = RedisServer(extra_args=["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"])
    s.start()
    try:
        url = f"{s.url}?queue={qname}&socket_timeout=2&heartbeat=false"
        q = _open(url, face)
        try:
            body = b"p" * 2000
            accepted = 0
            t0 = time.monotonic()
            with pytest.raises(BackendFull):
                while True:
                    q.enqueue_many([body] * 20)
                    accepted += 20
                    assert time.monotonic() - t0 < 60, "Redis never filled up"
            # Producers are refused promptly, again and again.
            t1 = time.monotonic()
            with pytest.raises(BackendFull):
                q.enqueue(body)
            assert time.monotonic() - t1 < 1.0
            assert accepted > 100
            # Consumers keep going: dequeue, nack (retry), release, ack until empty.
            drained, nacked, released = 0, 0, 0
            while (job := q.dequeue(timeout=0.5)) is not None:
                if job.attempt == 1 and nacked < 5:
                    q.nack(job)
                    nacked += 1
                elif released < 5:
                    q.release(job)
                    released += 1
                else:
                    q.ack(job)
                    drained += 1
            assert drained >= accepted  # every job that enqueue accepted came out
            assert q.size() == 0
            q.enqueue(body)  # memory freed: producers are welcome again
            assert q.size() == 1
        finally:
            q.close()
    finally:
        s.stop()
