"""quic:// and `unifiedq serve`: conformance through a real server process, security, robustness,
lease release on disconnect, graceful shutdown."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import unifiedq
from unifiedq import (
    AuthenticationError,
    BackendConnectionError,
    Capability,
    ConfigurationError,
    InvalidArgument,
    InvalidURL,
    JobNotLeased,
    ProtocolError,
    UnsupportedOperation,
)
from unifiedq.drivers.quic._testing import Pki, ServerProcess
from unifiedq.testing.suite import QueueConformance

pytest.importorskip("aioquic")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("quic-pki"))


def _server(pki: Pki, backend: str, *extra: str, name: str = "server") -> Iterator[ServerProcess]:
    srv = ServerProcess(pki, backend, list(extra), log=pki.root / f"{name}-{uuid.uuid4().hex[:6]}.log")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


LEASE_ARGS = ("--allow-client-option", "visibility_timeout", "--allow-client-option", "heartbeat")


@pytest.fixture(scope="session")
def memory_server(pki: Pki) -> Iterator[ServerProcess]:
    yield from _server(pki, "memory://", *LEASE_ARGS, name="memory")


@pytest.fixture(scope="session")
def redis_quic_server(pki: Pki, redis_url: str) -> Iterator[ServerProcess]:
    yield from _server(pki, redis_url, *LEASE_ARGS, name="redis")


# -- conformance ----------------------------------------------------------------------------------
class TestQuicMemory(QueueConformance):
    """memory:// behind the server, with the full set of the memory driver's flags."""

    LEASE_OPTIONS = {"backend_options": "visibility_timeout=1"}
    LEASE_SECONDS = 1.0
    DELAY_SLACK = 0.5
    CONCURRENT_JOBS = 1000

    @pytest.fixture
    def url_template(self, memory_server: ServerProcess) -> str:
        return memory_server.url("{name}", capabilities="memory")

    @pytest.fixture
    def restart_backend(self, memory_server: ServerProcess) -> Callable[[], None]:
        return memory_server.restart  # the jobs die with the server: not DURABLE


class TestQuicMemoryCore(TestQuicMemory):
    """The default capabilities=core over the same server: every lacks() test must hold."""

    CONCURRENT_JOBS = 400

    @pytest.fixture
    def url_template(self, memory_server: ServerProcess) -> str:
        return memory_server.url("{name}")

    @pytest.fixture
    def restart_backend(self) -> None:
        return None  # TestQuicMemory covers it; each run waits 10 s for nothing


class TestQuicRedis(QueueConformance):
    """redis:// (asynq) behind the server."""

    LEASE_OPTIONS = {"backend_options": "visibility_timeout=1&heartbeat=false"}
    LEASE_SECONDS = 1.0
    DELAY_SLACK = 0.5
    CONCURRENT_JOBS = 1000

    @pytest.fixture
    def url_template(self, redis_quic_server: ServerProcess) -> str:
        return redis_quic_server.url("{name}", capabilities="redis")

    @pytest.fixture
    def restart_backend(self, redis_quic_server: ServerProcess) -> Callable[[], None]:
        return redis_quic_server.restart  # Redis keeps the jobs: DURABLE
