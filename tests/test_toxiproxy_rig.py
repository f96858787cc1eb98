"""The Toxiproxy rig itself: server, REST client, toxics on a real TCP link, URL rewriting."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

import unifiedq
from unifiedq.testing.fixtures import ProxyFactory
from unifiedq.testing.servers import ServerBinaryMissing
from unifiedq.testing.toxiproxy import (
    TOXIPROXY_HINT,
    Proxy,
    ToxiproxyError,
    ToxiproxyServer,
    proxied_url,
)


class EchoServer:
    """A TCP echo server on a free loopback port (one thread per connection)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"  # only host and port matter
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                try:
                    conn.sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    srv = EchoServer()
    yield srv
    srv.close()


def _connect(proxy: Proxy) -> socket.socket:
    sock = socket.create_connection((proxy.listen_host, proxy.listen_port), timeout=5)
    sock.settimeout(5)
    return sock


def _roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_server_answers_and_is_stamped(toxiproxy_server: ToxiproxyServer) -> None:
    version = toxiproxy_server.client.version()
    assert version == toxiproxy_server.binary_version()
    assert version.lstrip("v").startswith("2.5.") or version == "git"


def test_proxy_lifecycle_and_errors(toxiproxy: ProxyFactory, echo: EchoServer) -> None:
    proxy = toxiproxy(echo.url, name="uq-rig-lifecycle")
    assert proxy.upstream == f"127.0.0.1:{echo.port}"
    assert toxiproxy.client.get_proxy("uq-rig-lifecycle").listen_port == proxy.listen_port
    assert "uq-rig-lifecycle" in toxiproxy.client.proxies()
    with pytest.raises(ToxiproxyError) as taken:
        toxiproxy.client.create_proxy("uq-rig-lifecycle", "127.0.0.1", echo.port)
    assert taken.value.status == 409
    with pytest.raises(ToxiproxyError) as unknown:
        proxy.add_toxic("no_such_toxic")  # type: ignore[arg-type]
    assert unknown.value.status == 400
    with _connect(proxy) as sock:
        assert _roundtrip(sock, b"hello") == b"hello"
    proxy.disable()
    assert not proxy.enabled
    # refused, or accepted by nobody and closed
    with pytest.raises(OSError), _connect(proxy) as sock:
        if _roundtrip(sock, b"x") == b"":
            raise ConnectionError("closed")
    proxy.enable()
    with _connect(proxy) as sock:
        assert _roundtrip(sock, b"again") == b"again"
    toxiproxy.close()
    assert "uq-rig-lifecycle" not in toxiproxy.client.proxies()


def test_latency_toxic_delays_and_is_removed(toxiproxy: ProxyFactory, echo: EchoServer) -> None:
    proxy = toxiproxy(echo.url)
    with _connect(proxy) as sock:
        with proxy.toxic("latency", latency=1000) as name:
            assert [t.name for t in proxy.toxics()] == [name]
            assert proxy.toxics()[0].attributes["latency"] == 1000
            t0 = time.monotonic()
            assert _roundtrip(sock, b"slow") == b"slow"
            assert time.monotonic() - t0 >= 0.98
        assert proxy.toxics() == []
        t0 = time.monotonic()
        assert _roundtrip(sock, b"fast") == b"fast"
        assert time.monotonic() - t0 < 0.8  # generous: a loaded CI machine, not the toxic


def test_timeout_toxic_stalls_an_open_connection(toxiproxy: ProxyFactory,
                                                  echo: EchoServer) -> None:
    proxy = toxiproxy(echo.url)
    with _connect(proxy) as sock:
        assert _roundtrip(sock, b"up") == b"up"
        with proxy.toxic("timeout", timeout=0):
            sock.settimeout(0.5)
            sock.sendall(b"dropped")
            with pytest.raises(TimeoutError):
                sock.recv(100)


def test_limit_data_cuts_the_reply_after_n_bytes(toxiproxy: ProxyFactory,
                                                 echo: EchoServer) -> None:
    proxy = toxiproxy(echo.url)
    with _connect(proxy) as sock:
        assert _roundtrip(sock, b"warm") == b"warm"
        proxy.add_toxic("limit_data", bytes=100)
        sock.sendall(b"x" * 1000)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        assert len(got) == 100  # then EOF: a reply cut in the middle


def test_reset_peer_resets(toxiproxy: ProxyFactory, echo: EchoServer) -> None:
    proxy = toxiproxy(echo.url)
    proxy.add_toxic("reset_peer", timeout=0)
    with _connect(proxy) as sock, pytest.raises((ConnectionResetError, ConnectionError)):
        sock.sendall(b"x")
        if sock.recv(10) == b"":
            raise ConnectionError("closed without reset")


def test_bandwidth_and_slicer(toxiproxy: ProxyFactory, echo: EchoServer) -> None:
    proxy = toxiproxy(echo.url)
    with _connect(proxy) as sock:
        with proxy.toxic("bandwidth", rate=100):  # KB/s: 50 KB take about 0.5 s
            t0 = time.monotonic()
            assert _roundtrip(sock, b"b" * 50_000) == b"b" * 50_000
            assert time.monotonic() - t0 >= 0.3
        with proxy.toxic("slicer", average_size=10, size_variation=5, delay=100):
            assert _roundtrip(sock, b"s" * 500) == b"s" * 500


def test_proxied_url_keeps_credentials_path_and_query() -> None:
    class P:
        listen_host, listen_port = "127.0.0.1", 4242

    proxy: Proxy = P()  # type: ignore[assignment]
    assert proxied_url("redis://:pw@127.0.0.1:6379/3?queue=q", proxy) == (
        "redis://:pw@127.0.0.1:4242/3?queue=q")
    assert proxied_url("amqp://guest:guest@127.0.0.1:5672//?queue=a", proxy) == (
        "amqp://guest:guest@127.0.0.1:4242//?queue=a")
    assert proxied_url("faktory://127.0.0.1:7419?queue=f", proxy) == (
        "faktory://127.0.0.1:4242?queue=f")
    for url in ("quic://127.0.0.1:4433/jobs", "memory://jobs", "shm://ring"):
        with pytest.raises(ValueError, match="TCP only"):
            proxied_url(url, proxy)


def test_missing_binary_names_the_install_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ServerBinaryMissing) as missing:
        ToxiproxyServer().start()
    assert missing.value.binary == "toxiproxy-server"
    assert missing.value.hint == TOXIPROXY_HINT
    assert "scripts/install.sh" in str(missing.value)


def test_a_driver_through_the_proxy(toxiproxy: ProxyFactory, redis_url: str) -> None:
    url, proxy = toxiproxy.url(redis_url + "?queue=uq-rig-through")
    with unifiedq.connect(url) as q:
        q.purge()
        q.enqueue(b"via toxiproxy")
        with proxy.toxic("latency", latency=100):
            t0 = time.monotonic()
            job = q.dequeue(timeout=5)
            assert time.monotonic() - t0 >= 0.09
        assert job is not None and job.body == b"via toxiproxy"
        q.ack(job)
