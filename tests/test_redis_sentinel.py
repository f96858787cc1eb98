"""redis+sentinel://: the conformance suite through Sentinel, failover, and min_replicas (WAIT).

The rig (``unifiedq.testing.sentinel.RedisSentinelRig``) runs a real master, replica and three
Sentinels from the installed ``redis-server``; failovers are real (SIGKILL of the master).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

import unifiedq
from unifiedq import InvalidURL, NotReplicated
from unifiedq.testing.fixtures import require_binary
from unifiedq.testing.sentinel import MASTER_NAME, RedisSentinelRig
from unifiedq.testing.suite import QueueConformance


@pytest.fixture(scope="module")
def rig() -> Iterator[RedisSentinelRig]:
    """One master, one replica, three Sentinels for the module (the suite never fails over)."""
    require_binary("redis-server")
    with RedisSentinelRig() as r:
        yield r


@pytest.fixture
def fresh_rig() -> Iterator[RedisSentinelRig]:
    """A rig of its own, for a test that fails the master over."""
    require_binary("redis-server")
    with RedisSentinelRig() as r:
        yield r


class TestRedisSentinel(QueueConformance):
    """The whole conformance suite on a queue reached through Sentinel."""

    LEASE_OPTIONS = {"visibility_timeout": 1.0, "heartbeat": False}
    LEASE_SECONDS = 1.0
    DELAY_SLACK = 0.5

    @pytest.fixture
    def url_template(self, rig: RedisSentinelRig) -> str:
        return rig.url(queue="{name}")


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(("url", "match"), [
    ("redis+sentinel://127.0.0.1:1,127.0.0.1:2", "names its master"),
    ("redis+sentinel://127.0.0.1:1,127.0.0.1:2/m/x", "database number"),
    ("redis+sentinel://127.0.0.1:1,127.0.0.1:abc/m", "bad Sentinel address"),
    ("redis://127.0.0.1:1/0?sentinel_password=x", "need a redis\\+sentinel"),
    ("redis://127.0.0.1:1/0?min_replicas=-1", "min_replicas"),
    ("redis://127.0.0.1:1/0?min_replicas=1&min_replicas_timeout=9", "min_replicas_timeout"),
    ("redis://127.0.0.1:1/0?min_replicas=1&min_replicas_timeout=0", "min_replicas_timeout"),
])
def test_bad_sentinel_urls_fail_before_any_io(url: str, match: str) -> None:
    with pytest.raises(InvalidURL, match=match):
        unifiedq.connect(url)


def test_password_of_a_multi_host_url_is_redacted() -> None:
    url = unifiedq.parse_url("redis+sentinel://:s3cret@127.0.0.1:1,127.0.0.1:2/m/0")
    assert "s3cret" not in url.redacted()
    assert "127.0.0.1:1,127.0.0.1:2" in url.redacted()


def test_no_sentinel_answering_is_a_connection_error() -> None:
    q = unifiedq.connect(f"redis+sentinel://127.0.0.1:1,127.0.0.1:2/{MASTER_NAME}"
                         "?socket_timeout=1")
    with q, pytest.raises(unifiedq.BackendConnectionError, match="no Sentinel named"):
        q.enqueue(b"x")


def test_unknown_master_name_is_a_connection_error(rig: RedisSentinelRig) -> None:
    url = rig.url(queue="q").replace(f"/{MASTER_NAME}/", "/nosuchmaster/")
    with unifiedq.connect(url + "&socket_timeout=1") as q, \
            pytest.raises(unifiedq.BackendConnectionError, match="does not know master"):
        q.enqueue(b"x")


# --------------------------------------------------------------------------- replication


def test_min_replicas_waits_for_the_replica(rig: RedisSentinelRig, request: pytest.FixtureRequest,
                                            ) -> None:
    name = f"wait-{request.node.name}"
    with unifiedq.connect(rig.url(queue=name, min_replicas="1")) as q:
        jid = q.enqueue(b"replicated")
        # WAIT returned 1: the replica has the task hash already (read it there directly).
        replica = rig.replicas[0]
        from unifiedq.testing.redis_rig import command
        assert command(replica.port, "EXISTS", f"asynq:{{{name}}}:t:{jid}") == b":1"
        q.purge()


def test_min_replicas_more_than_exist_raises_not_replicated(
        rig: RedisSentinelRig, request: pytest.FixtureRequest) -> None:
    name = f"wait2-{request.node.name}"
    with unifiedq.connect(rig.url(queue=name, min_replicas="2",
                                  min_replicas_timeout="0.2")) as q:
        with pytest.raises(NotReplicated) as info:
            q.enqueue(b"x", job_id="only-once")
        assert (info.value.replicas, info.value.wanted) == (1, 2)
        assert info.value.job_ids == ("only-once",)
        assert q.size() == 1  # on the master: not lost, and a retry cannot queue it twice
        q.purge()


# --------------------------------------------------------------------------- failover


def _until_written(enqueue: object, jid: str) -> float:
    """Retry one enqueue until the handle reaches a master; seconds it took."""
    assert callable(enqueue)
    t0 = time.monotonic()
    while True:
        try:
            enqueue(jid)
            return time.monotonic() - t0
        except unifiedq.BackendConnectionError:  # not NotReplicated: that is a BackendError
            assert time.monotonic() - t0 < 30, "no master reachable within 30 s"
            time.sleep(0.2)


def test_failover_is_followed_and_replicated_jobs_survive_sync(
        fresh_rig: RedisSentinelRig) -> None:
    """SIGKILL the master: the same handle reaches the promoted replica; WAITed jobs survive."""
    before = [f"before-{i}" for i in range(20)]
    with unifiedq.connect(fresh_rig.url(queue="fo", socket_timeout="2")) as q:
        with unifiedq.connect(fresh_rig.url(queue="fo", min_replicas="1")) as durable:
            for jid in before:
                durable.enqueue(jid.encode(), job_id=jid)
        old, promoted_in = fresh_rig.fail_over()
        assert promoted_in < 20
        took = _until_written(lambda j: q.enqueue(j.encode(), job_id=j), "after-0")
        assert took < 30
        fresh_rig.rejoin(old)  # back as a replica of the new master
        got = set()
        while (job := q.dequeue(timeout=1.0)) is not None:
            got.add(job.id)
            q.ack(job)
    assert got == set(before) | {"after-0"}


def test_failover_is_followed_and_replicated_jobs_survive_async(
        fresh_rig: RedisSentinelRig) -> None:
    before = [f"before-{i}" for i in range(20)]

    async def main() -> set[str]:
        async with unifiedq.connect_async(fresh_rig.url(queue="fo", socket_timeout="2")) as q:
            async with unifiedq.connect_async(fresh_rig.url(queue="fo",
                                                            min_replicas="1")) as durable:
                for jid in before:
                    await durable.enqueue(jid.encode(), job_id=jid)
            await asyncio.to_thread(fresh_rig.fail_over)
            t0 = time.monotonic()
            while True:
                try:
                    await q.enqueue(b"after-0", job_id="after-0")
                    break
                except unifiedq.BackendConnectionError:
                    assert time.monotonic() - t0 < 30, "no master reachable within 30 s"
                    await asyncio.sleep(0.2)
            got = set()
            while (job := await q.dequeue(timeout=1.0)) is not None:
                got.add(job.id)
                await q.ack(job)
            return got

    assert asyncio.run(main()) == set(before) | {"after-0"}
