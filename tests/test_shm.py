"""Tests of the shm:// driver: conformance, layout checks, processes, models and crashes."""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Callable, Iterator

import pytest

import unifiedq
from unifiedq.drivers import shm
from unifiedq.testing.suite import Harness, QueueConformance

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")

_FORK = multiprocessing.get_context("fork")


def _segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("uq-")}


@pytest.fixture(scope="module", autouse=True)
def _no_segment_left_behind() -> Iterator[None]:
    before = _segments()
    yield
    leaked = _segments() - before
    for n in leaked:
        shm.unlink(n)
    assert not leaked, f"tests left shm segments behind: {sorted(leaked)}"


@pytest.fixture
def name() -> Iterator[str]:
    n = f"uq-{uuid.uuid4().hex[:12]}"
    yield n
    shm.unlink(n)


class TestShm(QueueConformance):
    URL = "shm://{name}?capacity=4096&slot_size=256"
    BOUNDED_OPTIONS = {"capacity": 4, "overflow": "reject"}
    BOUNDED_SIZE = 4

    @pytest.fixture
    def harness(self, url_template: str, face: str) -> Iterator[Harness]:
        # The suite's harness, plus removal of the segments: a shm queue outlives its handles.
        name = f"uq-{uuid.uuid4().hex[:12]}"
        h = Harness(url_template.format(name=name), face, dict(self.OPTIONS))
        try:
            yield h
        finally:
            h.cleanup()
            shm.unlink(name)
            shm.unlink(name + "-other")

    @pytest.fixture
    def restart_backend(self, harness: Harness) -> Callable[[], None]:
        # A reboot is what clears a shm queue; removing the segment is the same for a reader.
        name = unifiedq.parse_url(harness.url).authority

        def restart() -> None:
            shm.unlink(name)

        return restart
