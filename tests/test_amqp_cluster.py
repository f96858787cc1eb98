"""Quorum queues on a 3-node RabbitMQ cluster (``unifiedq.testing.RabbitMQCluster``).

The cluster (three ``rabbitmq-server`` nodes on loopback, joined with ``rabbitmqctl
join_cluster``) boots in about 30-60 s on two cores, once for this module. One node is then
SIGKILLed while producer processes publish with confirms and consumer processes ack: no job
whose ``enqueue`` returned may be lost (duplicates are allowed, and counted), and clients
move to a surviving node through ``alternates``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from unifiedq import connect
from unifiedq.testing.fixtures import require_binary
from unifiedq.testing.rabbitmq_cluster import RabbitMQCluster, failover_run


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitMQCluster]:
    for name in ("rabbitmq-server", "rabbitmqctl", "epmd"):
        require_binary(name)
    with RabbitMQCluster(3) as c:
        print(f"cluster booted in {c.boot_seconds:.1f} s")
        yield c


@pytest.mark.slow  # about 100 s: the cluster's boot alone takes 30-65 s on two cores
def test_node_killed_mid_run_loses_no_confirmed_job(cluster: RabbitMQCluster) -> None:
    """2 producers x 1,500 confirmed publishes, 2 consumers; the leader's node is SIGKILLed.

    Every client starts on that node, so the kill drops every connection and the quorum
    queue's leader at once.
    """
    assert len(cluster.running_nodes()) == 3
    queue = f"uqc-{uuid.uuid4().hex[:10]}"
    ledger = failover_run(cluster, queue=queue, producers=2, consumers=2, jobs=1500,
                          pace=0.002, kill_after=2.0)
    print(f"confirmed={len(ledger.confirmed)} uncertain={len(ledger.uncertain)} "
          f"consumed={len(ledger.consumed)} lost={len(ledger.lost)} "
          f"duplicates={ledger.duplicates} produce_gap={ledger.produce_gap:.2f}s "
          f"consume_gap={ledger.consume_gap:.2f}s errors={ledger.errors} "
          f"run={ledger.seconds:.1f}s")
    assert not ledger.lost, f"{len(ledger.lost)} confirmed jobs lost"
    assert len(ledger.confirmed) + len(ledger.uncertain) == 3000
    assert len(ledger.confirmed) >= 2900  # the kill costs at most a few publishes
    # Nothing consumed that nobody published; uncertain publishes may or may not be there.
    assert set(ledger.consumed) <= ledger.confirmed | ledger.uncertain
    # Both sides resumed on a surviving node within seconds (measured: about 0.5 s).
    assert ledger.produce_gap < 20 and ledger.consume_gap < 20
    # The killed node comes back as a member; the queue keeps working through it.
    cluster.nodes[0].restart()
    deadline = time.monotonic() + 60
    while len(cluster.running_nodes(via=1)) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(cluster.running_nodes(via=1)) == 3
    q = connect(f"{cluster.nodes[0].url}?queue={queue}&queue_type=quorum")
    try:
        q.enqueue(b"after")
        job = q.dequeue(timeout=10)
        assert job is not None and job.body == b"after"
        q.ack(job)
    finally:
        q.close()


@pytest.mark.slow  # shares the cluster above: about 25 s more
def test_bounded_quorum_queue_survives_a_node_kill(cluster: RabbitMQCluster) -> None:
    """With maxsize, a nack from a channel stuck after the failover is not read as QueueFull."""
    ledger = failover_run(cluster, queue=f"uqc-{uuid.uuid4().hex[:10]}", producers=2,
                          consumers=2, jobs=1000, kill=1, options="&maxsize=100000")
    print(f"bounded: confirmed={len(ledger.confirmed)} lost={len(ledger.lost)} "
          f"duplicates={ledger.duplicates} errors={ledger.errors}")
    assert not ledger.lost
    assert not any("QueueFull" in k for k in ledger.errors), ledger.errors
    assert len(ledger.confirmed) >= 1900
    cluster.nodes[1].restart()


def test_alternates_skip_a_node_that_refuses(amqp_url: str) -> None:
    """The URL's node refuses connections: the handle connects to the next one, fast."""
    from unifiedq.testing.servers import find_free_port

    live = amqp_url.split("@", 1)[1].split("/", 1)[0]  # 127.0.0.1:PORT of the session broker
    dead = f"amqp://guest:guest@127.0.0.1:{find_free_port()}//"
    q = connect(f"{dead}?queue=uqc-{uuid.uuid4().hex[:10]}&queue_type=quorum&alternates={live}")
    try:
        t = time.monotonic()
        q.enqueue(b"x")
        job = q.dequeue(timeout=5)
        assert job is not None and job.body == b"x"
        q.ack(job)
        assert time.monotonic() - t < 5
        assert q._port == int(live.rsplit(":", 1)[1])  # type: ignore[attr-defined]
    finally:
        q.purge()
        q.close()


def test_alternates_are_validated() -> None:
    from unifiedq import InvalidURL

    with pytest.raises(InvalidURL, match="alternates"):
        connect("amqp://h//?alternates=h2:notaport")
    q = connect("amqp://h//?alternates=h2:5673,amqp://u:p@h3//,[::1]:5674,h4")
    assert q._nodes == [("h", 5672), ("h2", 5673), ("h3", 5672), ("::1", 5674),  # type: ignore[attr-defined]
                        ("h4", 5672)]
    q.close()
