"""amqp:// with ``queue_type=quorum`` against a real RabbitMQ node started by the rig.

The whole conformance suite runs on quorum queues (one node is enough for the semantics; the
cluster tests are in ``test_amqp_cluster.py``), plus what only quorum queues do: no
priorities, attempts from the broker's ``x-delivery-count``, the broker's delivery limit as
the attempt cap, and a clear error for a queue declared with other arguments.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from unifiedq import Capability, UnsupportedOperation, connect
from unifiedq.drivers.amqp import AmqpQueue, QueueDeclarationMismatch
from unifiedq.testing.fixtures import RigServer, require_managed
from unifiedq.testing.suite import QueueConformance


class TestAmqpQuorumConformance(QueueConformance):
    LEASE_OPTIONS = {"visibility_timeout": 1.0}
    LEASE_SECONDS = 1.0
    DELAY_SLACK = 1.5
    CONCURRENT_JOBS = 1000

    @pytest.fixture
    def url_template(self, amqp_url: str) -> str:
        return amqp_url + "?queue={name}&queue_type=quorum"

    @pytest.fixture
    def restart_backend(self, rabbitmq_server: RigServer) -> Callable[[], None]:
        return require_managed(rabbitmq_server).restart


@pytest.fixture
def qname() -> str:
    return f"uqq-{uuid.uuid4().hex[:12]}"


def test_quorum_flags_are_honest(amqp_url: str, qname: str) -> None:
    q = connect(f"{amqp_url}?queue={qname}&queue_type=quorum")
    try:
        assert Capability.PRIORITY not in q.capabilities
        assert Capability.DELAY in q.capabilities and Capability.BOUNDED in q.capabilities
        with pytest.raises(UnsupportedOperation):
            q.enqueue(b"x", priority=5)
        # FIFO whatever the priority property says (the broker ignores it on quorum queues).
        q.enqueue(b"a")
        q.enqueue(b"b")
        got = [q.dequeue(timeout=5) for _ in range(2)]
        assert [j.body for j in got if j is not None] == [b"a", b"b"]
        for j in got:
            assert j is not None
            q.ack(j)
    finally:
        q.close()


def test_other_arguments_raise_a_typed_error(amqp_url: str, qname: str) -> None:
    classic = connect(f"{amqp_url}?queue={qname}")
    classic.enqueue(b"x")  # declares it classic
    quorum = connect(f"{amqp_url}?queue={qname}&queue_type=quorum")
    try:
        with pytest.raises(QueueDeclarationMismatch, match=r"x-queue-type|x-max-priority"):
            quorum.enqueue(b"y")
        with pytest.raises(QueueDeclarationMismatch):
            quorum.size()
        assert classic.size() == 1  # nothing else happened to the queue
    finally:
        quorum.close()
        classic.purge()
        classic.close()


def test_attempts_come_from_the_delivery_count(amqp_url: str, qname: str) -> None:
    """A consumer lost with the job leased: the broker counts the return (x-delivery-count).

    With ``max_attempts=3`` the broker's ``x-delivery-limit`` is 2: the third loss
    dead-letters the job (at-least-once) into ``Q.dead``, without any client seeing it again.
    """
    url = f"{amqp_url}?queue={qname}&queue_type=quorum&max_attempts=3"
    producer = connect(url)
    producer.enqueue(b"fragile", headers={"k": "v"})
    seen: list[int] = []
    for _ in range(3):
        q = connect(url)
        assert isinstance(q, AmqpQueue)
        job = q.dequeue(timeout=5)
        assert job is not None and job.body == b"fragile" and job.headers == {"k": "v"}
        seen.append(job.attempt)
        q._drop()  # the socket closes without a word: as a crashed consumer's would
        q.close()
    assert seen == [1, 2, 3]
    dead = connect(f"{amqp_url}?queue={qname}.dead&queue_type=quorum&max_attempts=3")
    try:
        job = dead.dequeue(timeout=10)
        assert job is not None and job.body == b"fragile"
        assert "x-delivery-count" not in job.headers
        dead.ack(job)
        assert producer.size() == 0
    finally:
        dead.close()
        producer.close()


def test_nack_counts_exactly_and_dead_letters(amqp_url: str, qname: str) -> None:
    q = connect(f"{amqp_url}?queue={qname}&queue_type=quorum&max_attempts=2")
    try:
        q.enqueue(b"j")
        first = q.dequeue(timeout=5)
        assert first is not None and first.attempt == 1
        q.nack(first)  # a copy with x-uq-attempt=1, and a fresh delivery count
        second = q.dequeue(timeout=5)
        assert second is not None and second.attempt == 2
        q.nack(second)  # at max_attempts: dead-lettered
        assert q.dequeue(timeout=0.5) is None
        dead = connect(f"{amqp_url}?queue={qname}.dead&queue_type=quorum&max_attempts=2")
        try:
            job = dead.dequeue(timeout=10)
            assert job is not None and job.body == b"j"
            dead.ack(job)
        finally:
            dead.close()
    finally:
        q.close()
