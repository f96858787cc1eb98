"""pytest plugin with real Redis, RabbitMQ and Faktory servers.

Enable it in ``tests/conftest.py``::

    pytest_plugins = ["unifiedq.testing.fixtures"]

Session fixtures ``redis_server``, ``rabbitmq_server`` and ``faktory_server``
start one private server each (lazily, only when a test asks for it) on free
loopback ports and stop it at the end of the session. The string fixtures
``redis_url``, ``amqp_url`` and ``faktory_url`` give their URLs.

When ``UNIFIEDQ_TEST_REDIS_URL``, ``UNIFIEDQ_TEST_AMQP_URL`` or
``UNIFIEDQ_TEST_FAKTORY_URL`` is set, that URL is used instead and the fixture
returns an :class:`~unifiedq.testing.servers.ExternalServer` (no restart);
tests that need to restart or kill a server should call :func:`require_managed`
or use the function-scoped ``server_factory`` fixture.

A missing server binary skips the test locally, but fails it when the ``CI``
environment variable is ``true``, so that CI can never go green by skipping.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from unifiedq.testing.servers import (
    ExternalServer,
    FaktoryServer,
    ManagedServer,
    RabbitMQServer,
    RedisServer,
    ServerBinaryMissing,
    ServerHandle,
    find_binary,
)
from unifiedq.testing.toxiproxy import Proxy, ToxiproxyServer, proxied_url

__all__ = [
    "ENV_URL_VARS",
    "ProxyFactory",
    "RigServer",
    "ServerFactory",
    "amqp_url",
    "faktory_server",
    "faktory_url",
    "in_ci",
    "rabbitmq_server",
    "redis_server",
    "redis_url",
    "require_binary",
    "require_managed",
    "server_factory",
    "toxiproxy",
    "toxiproxy_server",
]

#: A server given to tests: started by the rig, or external (given by URL).
RigServer = ManagedServer | ExternalServer

#: Environment variables that replace a rig-started server by an external URL.
ENV_URL_VARS: dict[str, str] = {
    "redis": "UNIFIEDQ_TEST_REDIS_URL",
    "rabbitmq": "UNIFIEDQ_TEST_AMQP_URL",
    "faktory": "UNIFIEDQ_TEST_FAKTORY_URL",
}

_BINARIES: dict[str, tuple[str, ...]] = {
    "redis": ("redis-server",),
    "rabbitmq": ("rabbitmq-server", "rabbitmqctl"),
    "faktory": ("faktory", "redis-server"),
}

_S = TypeVar("_S", bound=ManagedServer)


def in_ci() -> bool:
    """Return True when running under CI (environment variable ``CI`` is ``true``)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def require_binary(name: str) -> str:
    """Return the path of executable ``name``, or skip (locally) / fail (in CI).

    Args:
        name: Executable name, e.g. ``"redis-server"``.

    Returns:
        Absolute path of the executable.
    """
    try:
        return find_binary(name)
    except ServerBinaryMissing as exc:
        message = str(exc)
        if in_ci():
            pytest.fail(f"CI=true and a required server binary is missing: {message}", False)
        pytest.skip(message)


def require_managed(server: RigServer) -> ManagedServer:
    """Skip the test unless ``server`` was started by the rig (so it can be restarted).

    Args:
        server: A server fixture value.

    Returns:
        The same server, typed as :class:`ManagedServer`.
    """
    if not isinstance(server, ManagedServer):
        pytest.skip(f"{server.name} server is external ({server.url}); cannot restart it")
    return server


def _session_server(kind: str, make: Callable[[], ManagedServer]) -> Iterator[RigServer]:
    url = os.environ.get(ENV_URL_VARS[kind], "").strip()
    if url:
        yield ExternalServer(name=kind, url=url)
        return
    for binary in _BINARIES[kind]:
        require_binary(binary)
    server = make()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RigServer]:
    """A Redis server for the whole session (or ``UNIFIEDQ_TEST_REDIS_URL``)."""
    yield from _session_server("redis", RedisServer)


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RigServer]:
    """A RabbitMQ broker for the whole session (or ``UNIFIEDQ_TEST_AMQP_URL``)."""
    yield from _session_server("rabbitmq", RabbitMQServer)


@pytest.fixture(scope="session")
def faktory_server() -> Iterator[RigServer]:
    """A Faktory server for the whole session (or ``UNIFIEDQ_TEST_FAKTORY_URL``)."""
    yield from _session_server("faktory", FaktoryServer)


@pytest.fixture(scope="session")
def redis_url(redis_server: RigServer) -> str:
    """URL of the session Redis server, ``redis://127.0.0.1:PORT/0``."""
    return redis_server.url


@pytest.fixture(scope="session")
def amqp_url(rabbitmq_server: RigServer) -> str:
    """URL of the session RabbitMQ broker, ``amqp://guest:guest@127.0.0.1:PORT//``."""
    return rabbitmq_server.url


@pytest.fixture(scope="session")
def faktory_url(faktory_server: RigServer) -> str:
    """URL of the session Faktory server, ``faktory://127.0.0.1:PORT``."""
    return faktory_server.url


class ServerFactory:
    """Starts private servers for one test and stops them all at its end.

    Use it for tests that restart, kill or reconfigure a server, so the shared
    session servers stay untouched.
    """

    def __init__(self) -> None:
        self._servers: list[ManagedServer] = []

    def _start(self, kind: str, server: _S) -> _S:
        for binary in _BINARIES[kind]:
            require_binary(binary)
        self._servers.append(server)
        server.start()
        return server

    def redis(self, *, password: str | None = None, persistent: bool = False) -> RedisServer:
        """Start a private Redis server.

        Args:
            password: Optional ``requirepass`` password.
            persistent: Keep data across :meth:`ManagedServer.restart` (AOF, fsync always).

        Returns:
            The started server.
        """
        return self._start("redis", RedisServer(password=password, persistent=persistent))

    def rabbitmq(self, *, config: str = "") -> RabbitMQServer:
        """Start a private RabbitMQ broker.

        Args:
            config: Extra ``rabbitmq.conf`` lines.

        Returns:
            The started server.
        """
        return self._start("rabbitmq", RabbitMQServer(config=config))

    def faktory(
        self, *, password: str | None = None, environment: str = "development"
    ) -> FaktoryServer:
        """Start a private Faktory server.

        Args:
            password: Optional password (required by Faktory outside development).
            environment: Faktory environment.

        Returns:
            The started server.
        """
        return self._start("faktory", FaktoryServer(password=password, environment=environment))

    def close(self) -> None:
        """Stop every server started by this factory."""
        while self._servers:
            server = self._servers.pop()
            with contextlib.suppress(Exception):
                server.stop()


@pytest.fixture
def server_factory() -> Iterator[ServerFactory]:
    """Function-scoped factory of private servers, stopped when the test ends."""
    factory = ServerFactory()
    try:
        yield factory
    finally:
        factory.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Show which server binaries the rig will use."""
    parts = []
    probes: list[tuple[str, Callable[[], str]]] = [
        ("redis-server", lambda: RedisServer().binary_version()),
        ("rabbitmq-server", lambda: RabbitMQServer().binary_version()),
        ("faktory", lambda: FaktoryServer().binary_version()),
        ("toxiproxy-server", lambda: ToxiproxyServer().binary_version()),
    ]
    for name, probe in probes:
        try:
            parts.append(f"{name} {probe()}")
        except ServerBinaryMissing:
            parts.append(f"{name} MISSING")
        except Exception as exc:
            parts.append(f"{name} ? ({exc})")
    overrides = [var for var in ENV_URL_VARS.values() if os.environ.get(var)]
    line = "unifiedq test servers: " + ", ".join(parts)
    if overrides:
        line += " (external: " + ", ".join(overrides) + ")"
    return [line]


# --------------------------------------------------------------------------- Toxiproxy (issue 20)


@pytest.fixture(scope="session")
def toxiproxy_server() -> Iterator[ToxiproxyServer]:
    """A Toxiproxy server for the whole session (its HTTP API on a free loopback port).

    Skips locally when ``toxiproxy-server`` is missing (with an install hint), fails under
    ``CI=true``.
    """
    server = ToxiproxyServer()
    try:
        server.binary_path()
    except ServerBinaryMissing as exc:
        if in_ci():
            pytest.fail(f"CI=true and a required server binary is missing: {exc}", False)
        pytest.skip(str(exc))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class ProxyFactory:
    """Creates Toxiproxy proxies for one test and deletes them all at its end.

    Args:
        server: The Toxiproxy server to use.
    """

    def __init__(self, server: ToxiproxyServer) -> None:
        self.server = server
        self.client = server.client
        self._proxies: list[Proxy] = []

    def __call__(self, upstream: str | ServerHandle, *, name: str | None = None) -> Proxy:
        """Create a proxy in front of ``upstream``.

        Args:
            upstream: A server (anything with a ``url``, e.g. a rig server) or a URL such as
                ``redis://127.0.0.1:6379/0``; its host and port become the proxy's upstream.
            name: Proxy name (default: a unique one).

        Returns:
            The proxy; :func:`~unifiedq.testing.toxiproxy.proxied_url` gives a driver URL
            through it.
        """
        url = upstream if isinstance(upstream, str) else upstream.url
        parts = urllib.parse.urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"cannot proxy {url!r}: it names no host and port")
        proxy = self.client.create_proxy(
            name or f"uq-{parts.scheme}-{uuid.uuid4().hex[:8]}", parts.hostname, parts.port
        )
        self._proxies.append(proxy)
        return proxy

    def url(self, url: str, *, name: str | None = None) -> tuple[str, Proxy]:
        """Create a proxy in front of ``url``'s server; return the proxied URL and the proxy."""
        proxy = self(url, name=name)
        return proxied_url(url, proxy), proxy

    def close(self) -> None:
        """Delete every proxy created by this factory."""
        while self._proxies:
            self._proxies.pop().delete()


@pytest.fixture
def toxiproxy(toxiproxy_server: ToxiproxyServer) -> Iterator[ProxyFactory]:
    """Function-scoped factory of Toxiproxy proxies, deleted when the test ends.

    Example::

        def test_dequeue_under_drop(toxiproxy, redis_url):
            url, proxy = toxiproxy.url(redis_url)
            with proxy.toxic("timeout", timeout=0):
                ...
    """
    factory = ProxyFactory(toxiproxy_server)
    try:
        yield factory
    finally:
        factory.close()
