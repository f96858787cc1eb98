"""faktory:// against a real Faktory server started by the rig (never a fake)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import multiprocessing
import os
import signal
import socket
import ssl
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyfaktory import Client
from pyfaktory import Job as FaktoryJob
from pyfaktory import Producer as FaktoryProducer

import unifiedq
from unifiedq import (
    AuthenticationError,
    BackendConnectionError,
    Capability,
    InvalidURL,
    JobNotLeased,
    UnsupportedOperation,
)
from unifiedq.drivers.faktory import FaktoryQueue
from unifiedq.testing.fixtures import RigServer, ServerFactory, require_binary
from unifiedq.testing.servers import FaktoryServer, ManagedServer
from unifiedq.testing.suite import Harness, QueueConformance, requires

pytestmark = pytest.mark.timeout(400)


def _queue() -> str:
    return f"uq-{uuid.uuid4().hex[:12]}"


def _info(url: str) -> dict[str, Any]:
    with unifiedq.connect(url) as q:
        assert isinstance(q, FaktoryQueue)
        return q.server_info()


# ----------------------------------------------------------------------------- conformance


class TestFaktoryConformance(QueueConformance):
    # Faktory's scheduler moves due jobs every 5 s, so a delayed job is up to 5 s late.
    DELAY_SLACK = 6.0
    # Faktory clamps reservations to >= 60 s, reaps them every 15 s and then retries the job
    # after its backoff (15..44 s on the first retry): redelivery takes 75..125 s.
    LEASE_OPTIONS = {"reserve_for": 60}
    LEASE_SECONDS = 60.0

    @pytest.fixture
    def url_template(self, faktory_url: str) -> str:
        return faktory_url + "?queue={name}"

    @pytest.fixture
    def restart_backend(self, faktory_server: RigServer) -> Callable[[], None] | None:
        if not isinstance(faktory_server, ManagedServer):
            return None
        return faktory_server.restart

    @pytest.mark.slow
    @requires(Capability.ACK)
    def test_lease_expiry_redelivers(self, harness: Harness) -> None:
        super().test_lease_expiry_redelivers(harness)

    @requires(Capability.DELAY)
    def test_delay(self, harness: Harness) -> None:
        """The suite's test_delay, except that size() does not count delayed jobs.

        Faktory keeps scheduled jobs in one global sorted set and has no per-queue count of
        it, so the driver's size() counts ready jobs only (documented).
        """
        q = harness.open()
        q.enqueue(b"later", delay=1.0)
        q.enqueue(b"now")
        first = q.dequeue(timeout=5)
        assert first is not None and first.body == b"now"
        q.ack(first)
        assert q.dequeue(timeout=0.3) is None
        assert q.size() == 0  # the delayed job is in Faktory's scheduled set, not the queue
        start = time.monotonic()
        job = q.dequeue(timeout=3 + self.DELAY_SLACK)
        assert job is not None and job.body == b"later"
        assert time.monotonic() - start < 2 + self.DELAY_SLACK
        q.ack(job)
