"""redis+cluster://: the conformance suite on a Redis Cluster, levels on several nodes, Go asynq
interop through asynq's cluster client, and a master killed mid-run.

The rig (``unifiedq.testing.cluster.RedisClusterRig``) runs 3 masters and 3 replicas of the
installed ``redis-server``, joined by ``redis-cli --cluster create``; failovers are real
(SIGKILL of a master, its replica promoted after ``cluster-node-timeout`` = 1 s).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import unifiedq
from gobuild import built_go_program
from unifiedq import InvalidURL, UnsupportedOperation
from unifiedq.testing.cluster import RedisClusterRig
from unifiedq.testing.fixtures import require_binary
from unifiedq.testing.suite import QueueConformance


@pytest.fixture(scope="module")
def rig() -> Iterator[RedisClusterRig]:
    """3 masters + 3 replicas for the module (the suite never fails over)."""
    require_binary("redis-server")
    require_binary("redis-cli")
    with RedisClusterRig() as r:
        yield r


@pytest.fixture
def fresh_rig() -> Iterator[RedisClusterRig]:
    """A cluster of its own, for a test that kills a master."""
    require_binary("redis-server")
    require_binary("redis-cli")
    with RedisClusterRig() as r:
        yield r


class ClusterConformance(QueueConformance):
    """The conformance suite's settings for queues on the cluster rig (a module's ``rig``)."""

    LEASE_OPTIONS = {"visibility_timeout": 1.0, "heartbeat": False}
    LEASE_SECONDS = 1.0
    DELAY_SLACK = 0.5

    @pytest.fixture
    def url_template(self, rig: RedisClusterRig) -> str:
        return rig.url(queue="{name}")


class TestRedisCluster(ClusterConformance):
    """The whole conformance suite on a queue of a Redis Cluster."""


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(("url", "match"), [
    ("redis+cluster://127.0.0.1:1,127.0.0.1:abc", "bad node address"),
    ("redis+cluster://127.0.0.1:1,127.0.0.1:2/3", "database 0 only"),
])
def test_bad_cluster_urls_fail_before_any_io(url: str, match: str) -> None:
    with pytest.raises(InvalidURL, match=match):
        unifiedq.connect(url)


def test_no_node_answering_is_a_connection_error() -> None:
    q = unifiedq.connect("redis+cluster://127.0.0.1:1,127.0.0.1:2?socket_timeout=0.5")
    with q, pytest.raises(unifiedq.BackendConnectionError, match="slot map"):
        q.enqueue(b"x")


# --------------------------------------------------------------------------- levels


def _spread_queue(rig: RedisClusterRig, prefix: str = "spread") -> str:
    """A queue name whose priority levels 0, 3 and 7 live on three different masters."""
    for i in range(200):
        name = f"{prefix}{i}"
        nodes = {rig.node_of(f"asynq:{{{name if n == 0 else f'{name}:p{n}'}}}:x").port
                 for n in (0, 3, 7)}
        if len(nodes) == 3:
            return name
    raise AssertionError("no queue name spreads its levels over 3 masters")


def test_priority_levels_on_different_masters(rig: RedisClusterRig) -> None:
    """Levels 0, 3 and 7 on three masters: every verb sees the queue as one."""
    name = _spread_queue(rig)
    q: Any
    other: Any
    with unifiedq.connect(rig.url(queue=name)) as q, \
            unifiedq.connect(rig.url(queue=name)) as other:
        ids = {q.enqueue(b"p%d" % p, priority=p or None): p for p in (0, 3, 7, 0, 7, 3)}
        assert q.size() == 6
        st = q.stats()
        assert (st["pending"], st["depth"], st["active"]) == (6, 6, 0)
        peeked = q.peek()
        assert peeked is not None and peeked.priority == 7
        got = other.dequeue_many(4, timeout=1)  # another handle: levels read from Redis
        assert [j.priority for j in got] == [7, 7, 3, 3]
        assert q.stats()["active"] == 4
        other.ack_many(got[:2])
        other.nack(got[2])  # back to pending on level 3, and the base wake list is pushed
        other.release(got[3])
        rest = [other.dequeue(timeout=1) for _ in range(4)]
        assert all(j is not None for j in rest)
        assert [j.priority for j in rest if j] == [3, 3, None, None]  # None: level 0
        for j in rest:
            assert j is not None
            other.ack(j)
        assert set(ids) == {j.id for j in [*got[:2], *rest] if j}
        assert other.dequeue(timeout=0) is None and q.size() == 0
        q.enqueue(b"a")
        q.enqueue(b"b", priority=7)
        q.pause()
        assert q.is_paused() and other.dequeue(timeout=0) is None
        q.resume()
        assert not q.is_paused()
        assert q.purge() == 2 and q.size() == 0


def test_a_new_level_wakes_a_waiting_consumer(rig: RedisClusterRig) -> None:
    """A consumer blocked on the base slot's wake list sees a job on a level it never saw."""
    name = _spread_queue(rig)
    with unifiedq.connect(rig.url(queue=name)) as q, \
            unifiedq.connect(rig.url(queue=name)) as c:
        assert c.dequeue(timeout=0) is None  # reads the levels (only level 0 now)
        t = threading.Timer(0.3, lambda: q.enqueue(b"late", priority=7))
        t.start()
        t0 = time.monotonic()
        job = c.dequeue(timeout=5)
        took = time.monotonic() - t0
        t.join()
        assert job is not None and job.body == b"late" and job.priority == 7
        assert took < 0.3 + 0.5, took  # woken, not found by the 1 s poll
        c.ack(job)


def test_results_on_a_priority_level(rig: RedisClusterRig) -> None:
    name = _spread_queue(rig)

    async def main() -> tuple[bytes, float]:
        async with unifiedq.connect_async(rig.url(queue=name)) as q:
            jid = await q.enqueue(b"x", priority=7)
            job = await q.dequeue(timeout=1)
            assert job is not None and job.id == jid

            async def later() -> None:
                await asyncio.sleep(0.2)
                await q.complete(job, b"done")
            task = asyncio.create_task(later())
            t0 = time.monotonic()
            got = await q.result(jid, timeout=5)
            await task
            return got, time.monotonic() - t0

    got, took = asyncio.run(main())
    assert got == b"done"
    assert took < 0.2 + 0.5, took  # the token in the base slot woke the waiter


def test_fair_server_scheduler_runs_on_a_cluster(rig: RedisClusterRig) -> None:
    # Pick on the scheduler's slot, lease on the tenant's: tests/test_redis_cluster_fair.py.
    with unifiedq.FairQueue(rig.url(queue="t.{tenant}"), scheduler="server") as fq:
        fq.enqueue(b"x", tenant="a")
        job = fq.dequeue(timeout=5)
        assert job is not None and job.body == b"x"
        fq.ack(job)


def test_bounded_queue_on_a_cluster_is_atomic_without_priorities(rig: RedisClusterRig) -> None:
    # More in tests/test_redis_cluster_fair.py (producer processes, levels refused).
    with unifiedq.BoundedQueue(rig.url(queue="bounded-cl"), maxsize=2) as q:
        assert q.native
        q.enqueue(b"a")
        with pytest.raises(UnsupportedOperation):
            q.enqueue(b"b", priority=5)
        q.enqueue(b"b")
        with pytest.raises(unifiedq.QueueFull):
            q.enqueue(b"c")
        assert q.purge() == 2


# --------------------------------------------------------------------------- Go asynq

_INTEROP = Path(__file__).parent / "interop"


@pytest.fixture(scope="module")
def interop_bin() -> Path:
    return built_go_program(_INTEROP, "asynq-interop", "asynq interop")


def _go(binary: Path, rig: RedisClusterRig, cmd: str, queue: str,
        *args: str) -> list[dict[str, Any]]:
    argv = [str(binary), cmd, "-cluster", "-addr", rig.seeds, "-queue", queue, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stderr}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_go_asynq_cluster_client_both_ways(interop_bin: Path, rig: RedisClusterRig) -> None:
    """asynq.RedisClusterClientOpt: Go runs Python's tasks and Python runs Go's."""
    with unifiedq.connect(rig.url(queue="gocl")) as q:
        ids = {q.enqueue(b"py-%d" % i, headers={"type": "interop:ok"}) for i in range(5)}
        events = _go(interop_bin, rig, "consume", "gocl", "-count", "5", "-timeout", "60s")
        assert {e["id"] for e in events if e["event"] == "run"} == ids
        (info,) = _go(interop_bin, rig, "inspect", "gocl")
        assert (info["pending"], info["active"], info["processed"]) == (0, 0, 5)
        produced = [e["id"] for e in _go(interop_bin, rig, "produce", "gocl", "-count", "3")]
        jobs = q.dequeue_many(10, timeout=2)
        assert [j.id for j in jobs] == produced
        assert [j.body for j in jobs] == [b"go-0", b"go-1", b"go-2"]
        q.ack_many(jobs)
        (info,) = _go(interop_bin, rig, "inspect", "gocl")
        assert (info["pending"], info["active"], info["processed"]) == (0, 0, 8)


# --------------------------------------------------------------------------- failover


def test_master_killed_mid_run_is_followed(fresh_rig: RedisClusterRig) -> None:
    """Producer and consumer run while the queue's master is SIGKILLed.

    With ``min_replicas=1`` an enqueue returns only once the replica has it, so every job
    whose enqueue returned is processed after the replica takes over (at least once).
    """
    url = fresh_rig.url(queue="fo", min_replicas="1", socket_timeout="2",
                        visibility_timeout="3")
    enqueued: list[str] = []
    processed: list[str] = []
    errors: list[float] = []
    stop = threading.Event()

    def produce() -> None:
        with unifiedq.connect(url) as p:
            i = 0
            while not stop.is_set():
                jid = f"j{i}"
                try:
                    p.enqueue(b"x", job_id=jid)
                except unifiedq.DuplicateJob:  # a retry after a lost reply: it is in
                    pass
                except unifiedq.BackendError:
                    errors.append(time.monotonic())
                    time.sleep(0.05)
                    continue  # the same id again: at most once in the queue
                enqueued.append(jid)
                i += 1
                time.sleep(0.002)

    drained_by: list[float] = []  # set with stop: how long the consumer may still drain

    def unfinished() -> bool:
        # A job leased by a dequeue whose reply was lost in the failover is neither counted by
        # size() nor processed until its lease (3 s) runs out and it is redelivered: drain by
        # the ledger, not by size(), up to a deadline well past that lease.
        return bool(set(enqueued) - set(processed)) and time.monotonic() < drained_by[0]

    def consume() -> None:
        with unifiedq.connect(url) as c:
            while not stop.is_set() or unfinished():
                try:
                    job = c.dequeue(timeout=0.2)
                    if job is not None:
                        c.ack(job)
                        processed.append(job.id)
                except (unifiedq.BackendError, unifiedq.JobNotLeased):
                    errors.append(time.monotonic())
                    time.sleep(0.05)

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    n_before = len(enqueued)
    old, promoted_in = fresh_rig.kill_master_of("fo")
    # The promoted replica has no replica of its own until the old master rejoins: until then
    # min_replicas=1 refuses enqueues (NotReplicated), as it should.
    fresh_rig.rejoin(old)
    n_rejoined = len(enqueued)
    deadline = time.monotonic() + 10
    while len(enqueued) < n_rejoined + 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    drained_by.append(time.monotonic() + 20)
    stop.set()
    for t in threads:
        t.join(30)
    assert n_before > 20 and len(enqueued) >= n_rejoined + 20  # it ran before and after
    assert promoted_in < 15 and errors  # the kill was felt
    assert set(processed) == set(enqueued), (
        f"lost: {sorted(set(enqueued) - set(processed))[:10]}")


# --------------------------------------------------------------------------- Worker


def test_worker_accounting_on_a_cluster(rig: RedisClusterRig) -> None:
    """test_worker's exact ledger (processed, retried, dead-lettered once each) on a cluster,
    with the Worker's asynq server registry written to its own slots."""
    from test_worker import _accounting
    _accounting(rig.url(queue="acct"), rig.url(queue="acct-dead"), 1000, 8)


def test_worker_serves_levels_on_several_masters(rig: RedisClusterRig) -> None:
    name = _spread_queue(rig)
    seen: list[int | None] = []
    lock = threading.Lock()

    def handler(job: unifiedq.Job) -> None:
        with lock:
            seen.append(job.priority)

    q: Any
    with unifiedq.connect(rig.url(queue=name)) as q:
        for p in (0, 3, 7):
            q.enqueue_many([b"x"] * 100, priority=p or None)
        w = unifiedq.Worker(q, handler, concurrency=4, poll_interval=0.05)
        w.start()
        try:
            end = time.monotonic() + 30
            while len(seen) < 300 and time.monotonic() < end:
                time.sleep(0.05)
        finally:
            w.stop(grace=5)
        assert sorted(seen, key=lambda p: p or 0) == [None] * 100 + [3] * 100 + [7] * 100
        assert q.size() == 0 and q.stats()["active"] == 0
        # Strict priority: the first hundred handled were level 7's (4 workers in flight).
        assert seen[:96].count(7) >= 90


# --------------------------------------------------------------------------- resharding


def test_a_slot_moved_to_another_master_is_followed(fresh_rig: RedisClusterRig) -> None:
    """The queue's slot migrates (keys and all) while the handle is idle: MOVED, then on."""
    import redis
    from redis.crc import key_slot

    key = "asynq:{mv}:x"
    slot = key_slot(key.encode())
    q: Any
    with unifiedq.connect(fresh_rig.url(queue="mv")) as q:
        ids = [q.enqueue(b"j%d" % i) for i in range(10)]
        held = q.dequeue(timeout=1)  # a lease that must survive the move
        assert held is not None
        src_node = fresh_rig.node_of(key)
        dst_node = next(n for n in fresh_rig.nodes if n is not src_node and n.is_running
                        and fresh_rig.is_master(n.port))
        src: Any = redis.Redis(port=src_node.port)
        dst: Any = redis.Redis(port=dst_node.port)
        src_id, dst_id = src.cluster("MYID").decode(), dst.cluster("MYID").decode()
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", dst_node.port, "", 0, 5000,
                                "KEYS", *keys)
        for n in fresh_rig.nodes:
            if n.is_running and fresh_rig.is_master(n.port):
                node: Any = redis.Redis(port=n.port)
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        src.close()
        dst.close()
        assert fresh_rig.node_of(key) is dst_node
        before = q._slots.refreshes
        q.ack(held)  # the old master answers MOVED: the handle reads the map and resends
        jobs = q.dequeue_many(20, timeout=1)
        assert sorted(j.id for j in [held, *jobs]) == sorted(ids)
        q.ack_many(jobs)
        assert q.size() == 0 and q.stats()["active"] == 0
        assert q._slots.refreshes > before


def test_master_killed_is_followed_async(fresh_rig: RedisClusterRig) -> None:
    """The asyncio face: jobs WAITed for before the kill are all there after the promotion."""
    before = [f"before-{i}" for i in range(20)]

    async def main() -> tuple[set[str], float]:
        async with unifiedq.connect_async(fresh_rig.url(queue="afo", socket_timeout="2")) as q:
            async with unifiedq.connect_async(fresh_rig.url(queue="afo",
                                                            min_replicas="1")) as durable:
                for jid in before:
                    await durable.enqueue(jid.encode(), job_id=jid)
            await asyncio.to_thread(fresh_rig.kill_master_of, "afo")
            t0 = time.monotonic()
            while True:
                try:
                    await q.enqueue(b"after-0", job_id="after-0")
                    break
                except unifiedq.BackendConnectionError:
                    assert time.monotonic() - t0 < 30, "no master reachable within 30 s"
                    await asyncio.sleep(0.1)
            took = time.monotonic() - t0
            got = set()
            while (job := await q.dequeue(timeout=0.5)) is not None:
                got.add(job.id)
                await q.ack(job)
            return got, took

    got, took = asyncio.run(main())
    assert got == set(before) | {"after-0"}
    assert took < 2.5  # the promotion was over: the first enqueue (or its retry) got through


def test_cancelled_between_two_levels_gives_every_job_back(rig: RedisClusterRig) -> None:
    """A dequeue cancelled after one level's script took a job and before the next level's:
    the job already taken goes back at once (not when its lease runs out)."""
    name = _spread_queue(rig)

    async def main() -> list[bytes]:
        async with unifiedq.connect_async(rig.url(queue=name)) as q, \
                unifiedq.connect_async(rig.url(queue=name)) as other:
            await q.enqueue(b"hi", priority=7)
            await q.enqueue(b"lo")
            real: Any = q._eval  # type: ignore[attr-defined]
            calls = 0

            async def cut(call: Any, deadline: float, resend: Any = None) -> Any:
                nonlocal calls
                calls += 1
                if calls == 2:  # level 7 was taken; cancelled before level 0's script
                    raise asyncio.CancelledError
                return await real(call, deadline, resend)

            q._eval = cut  # type: ignore[attr-defined]
            with pytest.raises(asyncio.CancelledError):
                await q.dequeue_many(10, timeout=0)
            q._eval = real  # type: ignore[attr-defined]
            jobs = await other.dequeue_many(10, timeout=0)
            await other.ack_many(jobs)
            return sorted(j.body for j in jobs)

    assert asyncio.run(main()) == [b"hi", b"lo"]


# --------------------------------------------------------------------------- dashboard


def test_dashboard_reads_and_acts_on_every_level(rig: RedisClusterRig) -> None:
    """The dashboard's asynq scripts (counters, dead letters, retry, delete) run per level."""
    from unifiedq.dashboard import _redis as dash

    name = _spread_queue(rig, "dash")  # counters are the queue's own from its start
    q: Any
    with unifiedq.connect(rig.url(queue=name)) as q:
        for p in (None, 7):
            q.enqueue(b"d%d" % (p or 0), priority=p)
        for job in q.dequeue_many(2, timeout=1):
            q.nack(job, requeue=False)  # archived on its own level
        assert dash.is_redis(q)
        assert dash.counters(q) == {"processed": 2, "failed": 2}
        dead = dash.dead_letters(q, 10)
        assert sorted(d.preview for d in dead) == ["d0", "d7"]
        by = {d.preview: d.id for d in dead}
        assert dash.retry_dead(q, by["d7"]) and not dash.retry_dead(q, by["d7"])
        assert dash.delete_dead(q, by["d0"]) and not dash.delete_dead(q, by["d0"])
        job = q.dequeue(timeout=1)
        assert job is not None and job.body == b"d7" and job.priority == 7
        q.ack(job)
        assert dash.dead_letters(q, 10) == [] and q.size() == 0


def test_go_asynq_pause_and_results_on_a_cluster(interop_bin: Path,
                                                  rig: RedisClusterRig) -> None:
    """asynq's Inspector over the cluster: pause both ways, and results it reads as ours."""
    q: Any
    with unifiedq.connect(rig.url(queue="gopause")) as q:
        q.enqueue(b"a")
        q.pause()
        (info,) = _go(interop_bin, rig, "inspect", "gopause")
        assert info["paused"] is True
        _go(interop_bin, rig, "unpause", "gopause")
        assert q.is_paused() is False
        _go(interop_bin, rig, "pause", "gopause")
        assert q.is_paused() is True and q.dequeue(timeout=0.3) is None
        q.resume()
        job = q.dequeue(timeout=5)
        assert job is not None
        q.complete(job, b"the result")
        (ti,) = _go(interop_bin, rig, "taskinfo", "gopause", "-id", job.id)
        assert (ti["state"], ti["result"]) == ("completed", "the result")
        assert q.result(job.id, timeout=1) == b"the result"
