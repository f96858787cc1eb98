"""The peak-load wrappers are queues too: FairQueue and BoundedQueue run the conformance suite.

Both wrap memory:// sub-queues here, on both faces (the asyncio objects through the suite's
``BlockingView``), so every capability flag they report is checked in both directions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from unifiedq import Queue
from unifiedq.bounded import AsyncBoundedQueue, BoundedQueue
from unifiedq.drivers import memory
from unifiedq.fair import AsyncFairQueue, FairQueue
from unifiedq.testing.suite import BlockingView, QueueConformance


def _tenant_template(url: str) -> str:
    base, sep, query = url.partition("?")
    return f"{base}.{{tenant}}{sep}{query}"


class _OverMemory(QueueConformance):
    """Timings and restart of memory://, as in tests/test_memory.py."""

    URL = "memory://{name}"
    LEASE_OPTIONS = {"visibility_timeout": 0.5}
    LEASE_SECONDS = 0.5
    DELAY_SLACK = 0.2

    @pytest.fixture
    def restart_backend(self) -> Callable[[], None]:
        return memory.reset


class TestFairQueueOverMemory(_OverMemory):
    """A FairQueue over ``memory://<name>.{tenant}``, named ``<name>``.

    The suite's own headers use "tenant" as an ordinary header, so it routes on another one.
    """

    JOB_QUEUE_IS_HANDLE_NAME = False  # jobs name their tenant's sub-queue: <name>.<tenant>

    def open_queue(self, url: str, face: str, options: dict[str, Any]) -> Queue:
        tpl = _tenant_template(url)
        name = url.partition("://")[2].partition("?")[0]
        if face == "sync":
            return FairQueue(tpl, connect_options=options, tenant_header="x-tenant", name=name)
        return BlockingView(AsyncFairQueue(
            tpl, connect_options=options, tenant_header="x-tenant", name=name))


class TestBoundedQueueOverMemory(_OverMemory):
    MAXSIZE = 100_000

    def open_queue(self, url: str, face: str, options: dict[str, Any]) -> Queue:
        if face == "sync":
            return BoundedQueue(url, self.MAXSIZE, connect_options=options)
        return BlockingView(
            AsyncBoundedQueue(url, self.MAXSIZE, connect_options=options))
