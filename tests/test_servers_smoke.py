"""Smoke tests of the real-server test rig (no mocks: real Redis, RabbitMQ, Faktory)."""

from __future__ import annotations

import importlib
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import redis

from unifiedq.testing.fixtures import RigServer, ServerFactory, require_binary
from unifiedq.testing.servers import (
    ExternalServer,
    FaktoryServer,
    ManagedServer,
    RedisServer,
    ServerBinaryMissing,
)

# kombu is only partially annotated (untyped calls under mypy --strict): use it as Any.
kombu: Any = importlib.import_module("kombu")

pytestmark = pytest.mark.timeout(120)


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes whose argv contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and text.encode() in cmdline:
            found.append(cmdline.decode(errors="replace"))
    return found


def _amqp_get(conn: Any, queue: Any, timeout: float = 10.0) -> Any:
    """Basic.get with a short retry loop (the message may take a moment to route)."""
    deadline = time.monotonic() + timeout
    while True:
        message = queue(conn.default_channel).get(no_ack=True)
        if message is not None or time.monotonic() > deadline:
            return message
        time.sleep(0.05)


def _faktory_hello(url: str) -> dict[str, object]:
    parsed = urlparse(url)
    assert parsed.hostname is not None and parsed.port is not None
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        line = reader.readline()
    assert line.startswith(b"+HI "), line
    greeting: dict[str, object] = json.loads(line[4:])
    return greeting


# ----------------------------------------------------------------------- Redis


def test_redis_answers_ping(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        key = f"uq-smoke-{uuid.uuid4().hex}"
        client.set(key, b"v", ex=60)
        assert client.get(key) == b"v"
    finally:
        client.close()


def test_redis_password(server_factory: ServerFactory) -> None:
    server = server_factory.redis(password="s3cret")
    assert server.url.startswith("redis://:s3cret@127.0.0.1:")
    client = redis.Redis.from_url(server.url)
    try:
        assert client.ping() is True
    finally:
        client.close()
    # Without AUTH the server refuses commands (raw RESP: redis-py would retry for seconds).
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert sock.makefile("rb").readline().startswith(b"-NOAUTH")


def test_redis_restart_keeps_data_when_persistent(server_factory: ServerFactory) -> None:
    server = server_factory.redis(persistent=True)
    port, pid = server.port, server.pid
    client = redis.Redis.from_url(server.url)
    try:
        client.rpush("uq-smoke-list", b"a", b"b")
    finally:
        client.close()
    server.restart()
    assert server.port == port and server.pid != pid
    client = redis.Redis.from_url(server.url)
    try:
        assert client.lrange("uq-smoke-list", 0, -1) == [b"a", b"b"]
    finally:
        client.close()


def test_redis_stop_cleans_up() -> None:
    require_binary("redis-server")
    server = RedisServer()
    with server:
        tmpdir = server.tmpdir
        assert server.is_running
        assert server.binary_version()[0].isdigit()
    assert not server.is_running
    assert not tmpdir.exists()
    assert not _processes_mentioning(str(tmpdir))


# ----------------------------------------------------------------------- RabbitMQ


def test_rabbitmq_kombu_publish_get(amqp_url: str) -> None:
    name = f"uq-smoke-{uuid.uuid4().hex}"
    queue = kombu.Queue(name, routing_key=name, durable=False, auto_delete=False)
    with kombu.Connection(amqp_url, connect_timeout=10) as conn:
        conn.connect()
        bound = queue(conn.default_channel)
        bound.declare()
        try:
            kombu.Producer(conn.default_channel).publish(
                {"hello": "world"}, routing_key=name, serializer="json"
            )
            message = _amqp_get(conn, queue)
            assert message is not None
            assert message.payload == {"hello": "world"}
        finally:
            bound.delete()


def test_rabbitmq_restart_keeps_durable_queue(server_factory: ServerFactory) -> None:
    server = server_factory.rabbitmq()
    port, mnesia = server.port, server.mnesia_base
    name = f"uq-durable-{uuid.uuid4().hex}"
    queue = kombu.Queue(name, routing_key=name, durable=True, auto_delete=False)
    with kombu.Connection(server.url, connect_timeout=10) as conn:
        conn.connect()
        queue(conn.default_channel).declare()
        kombu.Producer(conn.default_channel).publish(
            b"survivor", routing_key=name, delivery_mode=2, content_type="application/data"
        )
    server.restart()
    assert server.port == port and server.mnesia_base == mnesia and mnesia.exists()
    with kombu.Connection(server.url, connect_timeout=10) as conn:
        conn.connect()
        message = _amqp_get(conn, queue)
        assert message is not None
        assert message.body == b"survivor"


# ----------------------------------------------------------------------- Faktory


def test_faktory_says_hi(faktory_url: str) -> None:
    greeting = _faktory_hello(faktory_url)
    assert greeting["v"] == 2


def test_faktory_pyfaktory_client(faktory_server: RigServer) -> None:
    from pyfaktory import Client

    client = Client(faktory_url=faktory_server.url, role="producer", timeout=10)
    assert client.connect() is True
    try:
        info = client.info()
        assert "faktory" in info
    finally:
        client.disconnect()
    if isinstance(faktory_server, FaktoryServer):
        assert faktory_server.web_url.startswith("http://127.0.0.1:")


def test_faktory_password_and_restart(server_factory: ServerFactory) -> None:
    from pyfaktory import Client, Job
    from pyfaktory import Producer as FaktoryProducer

    server = server_factory.faktory(password="pw-123")
    assert server.url.startswith("faktory://:pw-123@127.0.0.1:")
    greeting = _faktory_hello(server.url)
    assert "s" in greeting and "i" in greeting  # password challenge
    queue = f"uq{uuid.uuid4().hex[:12]}"

    client = Client(faktory_url=server.url, role="producer", timeout=10)
    client.connect()
    try:
        assert FaktoryProducer(client).push(Job(jobtype="smoke", args=[1], queue=queue))
    finally:
        client.disconnect()

    data_dir = server.data_dir
    server.restart()
    assert server.data_dir == data_dir
    client = Client(faktory_url=server.url, role="producer", timeout=10)
    client.connect()
    try:
        assert client.info()["faktory"]["queues"].get(queue) == 1
    finally:
        client.disconnect()

    tmpdir = server.tmpdir
    server.stop()
    # Faktory's private redis-server child must be gone too.
    assert not _processes_mentioning(str(tmpdir))


# ----------------------------------------------------------------------- rig behaviour


def test_external_server_type() -> None:
    external = ExternalServer(name="redis", url="redis://127.0.0.1:1/0")
    assert external.url == "redis://127.0.0.1:1/0"
    assert not external.managed
    assert not isinstance(external, ManagedServer)


@pytest.mark.parametrize("ci_value", [None, "", "false", "0"])
def test_require_binary_skips_locally(
    monkeypatch: pytest.MonkeyPatch, ci_value: str | None
) -> None:
    if ci_value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci_value)
    with pytest.raises(pytest.skip.Exception) as info:
        require_binary("uq-no-such-server-binary")
    assert "uq-no-such-server-binary" in str(info.value)
    assert "scripts/install.sh" in str(info.value)


@pytest.mark.parametrize("ci_value", ["true", "TRUE", " True "])
def test_require_binary_fails_in_ci(monkeypatch: pytest.MonkeyPatch, ci_value: str) -> None:
    monkeypatch.setenv("CI", ci_value)
    with pytest.raises(pytest.fail.Exception) as info:
        require_binary("uq-no-such-server-binary")
    assert "uq-no-such-server-binary" in str(info.value)


def test_missing_binary_raises_server_binary_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RedisServer, "binary_name", "uq-no-such-redis-server")
    with pytest.raises(ServerBinaryMissing) as info:
        RedisServer().start()
    assert isinstance(info.value, RuntimeError)
    assert "uq-no-such-redis-server" in str(info.value)
    assert "install" in str(info.value)
