"""The amqp:// driver against a real RabbitMQ started by the rig (never a mock)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kombu.connection
import pytest

from unifiedq import connect
from unifiedq._base import QueueBase
from unifiedq._errors import (
    AuthenticationError,
    BackendConnectionError,
    InvalidArgument,
    InvalidURL,
    JobNotLeased,
)
from unifiedq._job import Job
from unifiedq.drivers.amqp import AmqpQueue
from unifiedq.testing.fixtures import RigServer, ServerFactory, require_managed
from unifiedq.testing.servers import find_free_port
from unifiedq.testing.suite import QueueConformance

# kombu ships no type information.
KombuConnection: Any = kombu.connection.Connection


class TestAmqpConformance(QueueConformance):
    LEASE_OPTIONS = {"visibility_timeout": 1.0}
    LEASE_SECONDS = 1.0
    DELAY_SLACK = 1.0
    CONCURRENT_JOBS = 1000

    @pytest.fixture
    def url_template(self, amqp_url: str) -> str:
        return amqp_url + "?queue={name}"

    @pytest.fixture
    def restart_backend(self, rabbitmq_server: RigServer) -> Callable[[], None]:
        return require_managed(rabbitmq_server).restart


# -- helpers ----------------------------------------------------------------------------------
@pytest.fixture
def qurl(amqp_url: str) -> str:
    """URL of a fresh queue on the session broker."""
    return f"{amqp_url}?queue=uqt-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def opened() -> Iterator[Callable[..., QueueBase]]:
    handles: list[QueueBase] = []

    def open_(url: str, **options: Any) -> QueueBase:
        q = connect(url, **options)
        handles.append(q)
        return q

    yield open_
    for q in handles:
        if not q.closed:
            try:
                q.purge()
            finally:
                q.close()


def _drain(q: QueueBase, *, idle: float = 2.0) -> list[Job]:
    """Dequeue and ack until nothing comes for ``idle`` seconds."""
    got: list[Job] = []
    while (job := q.dequeue(timeout=idle)) is not None:
        got.append(job)
        q.ack(job)
    return got


def _raw_get(amqp_url: str, queue: str) -> Any:
    """basic.get one message with plain kombu/py-amqp (auto-ack), or None."""
    with KombuConnection(amqp_url) as conn:
        return conn.default_channel.basic_get(queue, no_ack=True)


# -- URLs and options (no I/O) ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://h//", "/"), ("amqp://h", "/"), ("amqp://h/", "/"), ("amqp://h/%2F", "/"),
        ("amqp://h/jobs", "jobs"), ("amqp://h/a%2Fb", "a/b"),
    ],
)
def test_vhost_forms(url: str, vhost: str) -> None:
    q = connect(url)
    assert isinstance(q, AmqpQueue)
    assert q._vhost == vhost and q.name == "default"
    q.close()


def test_from_url_does_no_io_and_defaults() -> None:
    port = find_free_port()
    q = connect(f"amqps://u:secret@127.0.0.1:{port}/v?queue=jobs&prefetch=5")
    assert isinstance(q, AmqpQueue)
    assert (q._port, q._tls, q.options.prefetch, q.name) == (port, True, 5, "jobs")
    assert "secret" not in repr(q)
    assert connect("amqps://h")._port == 5671  # type: ignore[attr-defined]
    assert connect("amqp://h")._port == 5672  # type: ignore[attr-defined]
    with pytest.raises(BackendConnectionError):
        q.size()  # nothing listens there: first use fails fast, typed
    q.close()


@pytest.mark.parametrize(
    "query",
    ["prefetch=0", "prefetch=x", "visibility_timeout=0", "max_attempts=0", "queue=amq.x",
     "ca_file=/x.pem", "key_file=/k.pem", "confirm_timeout=-1", "queue="],
)
def test_bad_options_are_invalid_url(query: str) -> None:
    with pytest.raises(InvalidURL):
        connect(f"amqp://h//?{query}")


def test_wrong_password_is_authentication_error(amqp_url: str) -> None:
    bad = amqp_url.replace("guest:guest@", "guest:wrong@")
    with connect(bad + "?queue=x") as q, pytest.raises(AuthenticationError):
        q.enqueue(b"a")


# -- publishing -------------------------------------------------------------------------------
def test_reserved_header_rejected_before_io(opened: Callable[..., QueueBase], qurl: str) -> None:
    q = opened(qurl)
    with pytest.raises(InvalidArgument, match="reserved"):
        q.enqueue(b"a", headers={"x-uq-attempt": "5"})
    with pytest.raises(InvalidArgument):
        q.enqueue_many([b"a", b"b"], headers={"x-uq-x": "1"})
    assert q.size() == 0


def test_messages_are_persistent_with_id_and_priority(
    opened: Callable[..., QueueBase], qurl: str, amqp_url: str
) -> None:
    q = opened(qurl)
    jid = q.enqueue(b"p", priority=7, headers={"k": "v"})
    msg = _raw_get(amqp_url, q.name)
    assert msg is not None and msg.body == b"p"
    p = msg.properties
    assert (p["delivery_mode"], p["message_id"], p["priority"]) == (2, jid, 7)
    assert p["application_headers"]["k"] == "v"


def test_enqueue_many_with_priority_and_delay(opened: Callable[..., QueueBase], qurl: str) -> None:
    q = opened(qurl)
    q.enqueue_many([b"l1", b"l2"], priority=1)
    q.enqueue_many([b"h1", b"h2"], priority=9)
    later = q.enqueue_many([b"d1", b"d2"], delay=dt.timedelta(seconds=1))
    assert q.size() == 6
    assert [j.body for j in _drain(q, idle=0.2)] == [b"h1", b"h2", b"l1", b"l2"]
    assert q.size() == 2  # delayed jobs count as waiting
    jobs = _drain(q, idle=4.0)
    assert [(j.id, j.body) for j in jobs] == list(zip(later, [b"d1", b"d2"], strict=True))
    assert q.size() == 0


def test_batch_frames_round_trip(
    opened: Callable[..., QueueBase], qurl: str, amqp_url: str
) -> None:
    """The driver writes publish frames itself: bodies of every size come back intact.

    1,500 messages go out in several socket writes; one body is empty (no body frame),
    one is larger than ``frame_max`` (several body frames). A foreign message with a
    ``content_encoding`` comes back from py-amqp as ``str``; its requeued copy must be
    encoded again.
    """
    q = opened(qurl)
    big = bytes(range(256)) * 1200  # 300 KiB > frame_max (128 KiB)
    bodies = [f"m{i}".encode() for i in range(1500)]
    bodies[3], bodies[700] = b"", big
    ids = q.enqueue_many(bodies, headers={"tenant": "ünï", "k": "v"})
    msg = _raw_get(amqp_url, q.name)  # as plain py-amqp decodes it
    assert msg is not None and msg.body == b"m0"
    p = msg.properties
    assert (p["delivery_mode"], p["message_id"]) == (2, ids[0])
    assert p["application_headers"]["tenant"] == "ünï"
    jobs = _drain(q, idle=1.0)
    assert [(j.id, j.body) for j in jobs] == list(zip(ids[1:], bodies[1:], strict=True))
    assert all(j.headers == {"tenant": "ünï", "k": "v"} and j.attempt == 1 for j in jobs)

    with KombuConnection(amqp_url) as conn:
        ch = conn.default_channel
        ch.basic_publish(ch.prepare_message("héllo", content_type="text/plain",
                                            content_encoding="utf-8"),
                         exchange="", routing_key=q.name)
    job = q.dequeue(timeout=5)
    assert job is not None and job.body == "héllo".encode()
    q.nack(job)  # republished by the driver from the decoded str body
    again = q.dequeue(timeout=5)
    assert again is not None and (again.body, again.attempt) == ("héllo".encode(), 2)
    q.ack(again)


def test_purge_counts_delayed(opened: Callable[..., QueueBase], qurl: str) -> None:
    q = opened(qurl)
    q.enqueue(b"now")
    q.enqueue(b"later", delay=30)
    other = opened(qurl)  # another handle of this process knows the delay queue too
    assert other.size() == 2
    assert other.purge() == 2
    assert q.size() == 0


# -- attempts, nack, dead letters -------------------------------------------------------------
def test_attempts_are_exact_and_max_attempts_dead_letters(
    opened: Callable[..., QueueBase], qurl: str
) -> None:
    q = opened(qurl, max_attempts=3)
    jid = q.enqueue(b"poison", headers={"t": "x"})
    seen = []
    for _ in range(3):
        job = q.dequeue(timeout=5)
        assert job is not None and job.id == jid and job.headers["t"] == "x"
        seen.append(job.attempt)
        q.nack(job)  # the third nack exhausts max_attempts: dead-lettered
    assert seen == [1, 2, 3]
    assert q.dequeue(timeout=0.5) is None and q.size() == 0
    dead = opened(qurl + ".dead")
    job = dead.dequeue(timeout=5)
    assert job is not None and (job.id, job.body, job.headers["t"]) == (jid, b"poison", "x")
    dead.ack(job)


def test_nack_without_requeue_goes_to_dead_letter_queue(
    opened: Callable[..., QueueBase], qurl: str
) -> None:
    q = opened(qurl)
    jid = q.enqueue(b"bad")
    job = q.dequeue(timeout=5)
    assert job is not None
    q.nack(job, requeue=False)
    with pytest.raises(JobNotLeased):
        q.ack(job)
    dead = opened(qurl + ".dead")
    got = dead.dequeue(timeout=5)
    assert got is not None and got.id == jid and got.body == b"bad"
    dead.ack(got)


def test_close_returns_held_exactly_and_buffered_in_order(
    opened: Callable[..., QueueBase], qurl: str
) -> None:
    q = opened(qurl)
    ids = q.enqueue_many([b"%d" % i for i in range(6)])
    a = opened(qurl)
    first = a.dequeue(timeout=5)  # a blocking dequeue starts a consumer: the rest prefetched
    assert first is not None and first.id == ids[0]
    a.close()  # prefetched ones, then the held job, republished with their attempt unchanged
    b = opened(qurl)
    jobs = _drain(b, idle=1.0)
    assert [j.id for j in jobs] == ids[1:] + ids[:1]
    assert [j.attempt for j in jobs] == [1] * 6  # a close is not a failure (issue 20)


def test_lease_thread_expires_while_consumer_is_busy(
    opened: Callable[..., QueueBase], qurl: str
) -> None:
    q = opened(qurl, visibility_timeout=0.5)
    other = opened(qurl)
    jid = q.enqueue(b"slow")
    job = q.dequeue(timeout=5)
    assert job is not None
    # q is never called again until the job is back: its lease thread returns it.
    again = other.dequeue(timeout=10)
    assert again is not None and again.id == jid and again.attempt == 2
    with pytest.raises(JobNotLeased):
        q.ack(job)
    other.ack(again)


def test_foreign_message_without_id(
    opened: Callable[..., QueueBase], qurl: str, amqp_url: str
) -> None:
    q = opened(qurl)
    q.size()  # declares the topology
    body = b'{"UUID":"task_1","Name":"add","Args":[]}'
    with KombuConnection(amqp_url) as conn:
        ch = conn.default_channel
        ch.basic_publish(ch.prepare_message(body, content_type="application/json"),
                         exchange="", routing_key=q.name)
    job = q.dequeue(timeout=5)
    assert job is not None and job.body == body and job.attempt == 1 and job.id
    q.nack(job)
    again = q.dequeue(timeout=5)
    assert again is not None and (again.id, again.attempt) == (job.id, 2)
    q.ack(again)


# -- connection loss --------------------------------------------------------------------------
def test_reconnects_after_connections_are_closed(
    opened: Callable[..., QueueBase], qurl: str, rabbitmq_server: RigServer
) -> None:
    server = require_managed(rabbitmq_server)
    q = opened(qurl)
    producer = opened(qurl)
    jid = producer.enqueue(b"held")
    job = q.dequeue(timeout=5)
    assert job is not None and job.id == jid
    done = server.rabbitmqctl("close_all_connections", "unifiedq test")  # type: ignore[attr-defined]
    assert done.returncode == 0, done.stderr
    time.sleep(0.5)
    with pytest.raises(JobNotLeased):
        q.ack(job)  # the lease died with the connection ...
    assert producer.enqueue(b"next")  # ... publishing reconnects transparently
    jobs = _drain(q, idle=2.0)
    assert (jobs[0].id, jobs[0].attempt) == (jid, 2)  # redelivered, flagged
    assert [j.body for j in jobs] == [b"held", b"next"]


# -- crash: SIGKILL a consumer holding jobs ---------------------------------------------------
_CHILD = r"""
import sys
from unifiedq import connect
url, hold, ack = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
q = connect(url)
for i in range(hold + ack):
    job = q.dequeue(timeout=30)
    if i < ack:
        q.ack(job)
        print("acked", job.id, flush=True)
    else:
        print("held", job.id, flush=True)
q.size()  # a round trip, so the broker has read our acks before we report ready
print("ready", flush=True)
import time
time.sleep(300)
"""


def _run_and_kill(url: str, hold: int, ack: int) -> tuple[set[str], set[str]]:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, url, str(hold), str(ack)],
                             stdout=subprocess.PIPE, text=True)
    acked: set[str] = set()
    held: set[str] = set()
    try:
        assert child.stdout is not None
        for line in child.stdout:
            kind, _, jid = line.strip().partition(" ")
            if kind == "ready":
                break
            (acked if kind == "acked" else held).add(jid)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
    return acked, held


def test_blocking_dequeue_beyond_prefetch(opened: Callable[..., QueueBase], qurl: str) -> None:
    q = opened(qurl, prefetch=2)
    q.enqueue_many([b"1", b"2", b"3"])
    held = [q.dequeue(timeout=5) for _ in range(3)]  # the third comes by basic.get
    assert [j.body for j in held if j is not None] == [b"1", b"2", b"3"]
    for j in held:
        assert j is not None
        q.ack(j)


def test_sigkilled_consumer_jobs_are_redelivered(
    opened: Callable[..., QueueBase], qurl: str
) -> None:
    q = opened(qurl)
    ids = set(q.enqueue_many([b"%d" % i for i in range(200)]))
    acked, held = _run_and_kill(qurl, hold=15, ack=10)
    assert len(acked) == 10 and len(held) == 15
    got = _drain(q, idle=2.0)
    got_ids = [j.id for j in got]
    # The ledger: nothing lost, nothing duplicated beyond what the child might have acked.
    assert set(got_ids) | acked == ids
    assert len(got_ids) == len(set(got_ids))
    assert held <= set(got_ids)
    assert all(j.attempt == 2 for j in got if j.id in held)  # the redelivered flag counts
    assert q.size() == 0


@pytest.mark.slow
def test_sigkill_soak(opened: Callable[..., QueueBase], qurl: str) -> None:
    q = opened(qurl)
    ids = set(q.enqueue_many([b"%d" % i for i in range(5000)]))
    acked_all: set[str] = set()
    for round_ in range(30):
        acked, _ = _run_and_kill(qurl, hold=20 + round_ % 25, ack=100)
        acked_all |= acked
    got = {j.id for j in _drain(q, idle=2.0)}
    assert got | acked_all == ids and not (got & acked_all)


# -- broker restart mid-run -------------------------------------------------------------------
def test_broker_restart_loses_no_confirmed_job(
    opened: Callable[..., QueueBase], qurl: str, rabbitmq_server: RigServer
) -> None:
    server = require_managed(rabbitmq_server)
    producer = opened(qurl, reconnect_timeout=120)
    confirmed: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        i = 0
        try:
            while not stop.is_set() or i < 300:
                if i % 10 == 0:
                    confirmed.extend(producer.enqueue_many([b"b%d" % i] * 5))
                else:
                    confirmed.append(producer.enqueue(b"%d" % i))
                i += 1
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=produce)
    t.start()
    try:
        deadline = time.monotonic() + 60
        while len(confirmed) < 100 and time.monotonic() < deadline and not errors:
            time.sleep(0.05)
        server.restart()
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(180)
    assert not errors, errors
    before = len(confirmed)
    assert before > 100
    consumer = opened(qurl)
    got = [j.id for j in _drain(consumer, idle=3.0)]
    assert set(confirmed) <= set(got)  # every confirmed job survived the restart
    # A publish whose confirm was lost in the restart may be queued twice (at-least-once).
    assert len(got) - len(set(got)) <= 10


# -- TLS --------------------------------------------------------------------------------------
def _make_certs(tmp: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    now = dt.datetime.now(dt.UTC)
    out: dict[str, Path] = {}
    for label in ("ca", "other_ca"):
        k = key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"uq test {label}")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(k.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(k, hashes.SHA256()))
        out[label] = tmp / f"{label}.pem"
        out[label].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if label == "ca":
            ca_key, ca_cert = k, cert
    sk = key()
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
              .issuer_name(ca_cert.subject).public_key(sk.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(days=1))
              .not_valid_after(now + dt.timedelta(days=2))
              .add_extension(x509.SubjectAlternativeName([
                  x509.DNSName("localhost"),
                  x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    out["cert"] = tmp / "server.pem"
    out["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    out["key"] = tmp / "server.key"
    out["key"].write_bytes(pem_key(sk))
    return out


def test_amqps_verifies_the_broker_certificate(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    certs = _make_certs(tmp_path)
    tls_port = find_free_port()
    server_factory.rabbitmq(config="\n".join([
        f"listeners.ssl.default = {tls_port}",
        f"ssl_options.cacertfile = {certs['ca']}",
        f"ssl_options.certfile = {certs['cert']}",
        f"ssl_options.keyfile = {certs['key']}",
        "ssl_options.verify = verify_none",
        "ssl_options.fail_if_no_peer_cert = false",
        "loopback_users = none",
    ]))
    base = f"amqps://guest:guest@127.0.0.1:{tls_port}//?queue=tls"
    with connect(base, ca_file=str(certs["ca"])) as q:
        q.enqueue(b"secret")
        job = q.dequeue(timeout=5)
        assert job is not None and job.body == b"secret"
        q.ack(job)
    with connect(base, ca_file=str(certs["other_ca"])) as q, \
            pytest.raises(AuthenticationError, match="verif"):
        q.size()
    with connect(base, ca_file=str(certs["ca"]), tls_hostname="not-the-broker") as q, \
            pytest.raises(AuthenticationError, match="verif"):
        q.size()
    with connect(base) as q, pytest.raises(AuthenticationError):
        q.size()  # the system trust store does not know our test CA
