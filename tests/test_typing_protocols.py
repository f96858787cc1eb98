"""Static and runtime check that every driver class satisfies its Protocol.

mypy checks the assignments below (attrs' typing_example habit): a driver whose verbs drift
from the Protocol fails type checking, not just at runtime.
"""

from __future__ import annotations

import importlib
import os

import pytest

from unifiedq import AsyncQueue, Queue, connect, connect_async
from unifiedq._bridge import AsyncToSync, SyncToAsync
from unifiedq._registry import available_drivers
from unifiedq.drivers.memory import MemoryOptions, MemoryQueue


def _static_checks() -> None:
    q: Queue = MemoryQueue("typing", MemoryOptions())
    aq: AsyncQueue = SyncToAsync(MemoryQueue("typing", MemoryOptions()))
    bq: Queue = AsyncToSync(SyncToAsync(MemoryQueue("typing", MemoryOptions())))
    cq: Queue = connect("memory://typing")
    caq: AsyncQueue = connect_async("memory://typing")
    del q, aq, bq, cq, caq  # only the annotations matter


def test_memory_satisfies_protocols() -> None:
    q = connect("memory://typing-rt")
    assert isinstance(q, Queue)
    assert isinstance(connect_async("memory://typing-rt"), AsyncQueue)
    q.close()


@pytest.mark.parametrize("scheme", sorted({s.scheme for s in available_drivers()}))
def test_every_importable_driver_class_satisfies_its_protocol(scheme: str) -> None:
    spec = next(s for s in available_drivers() if s.scheme == scheme)
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        if os.environ.get("CI", "").strip().lower() == "true":
            raise  # CI installs every extra: a driver that does not import is a failure
        pytest.skip(f"{scheme}: {exc}")
    sync_class = getattr(module, "sync_class", None)
    async_class = getattr(module, "async_class", None)
    assert sync_class is not None or async_class is not None
    for cls, proto in ((sync_class, Queue), (async_class, AsyncQueue)):
        if cls is None:
            continue
        wanted = [n for n in vars(proto) if not n.startswith("_") or n in ("__enter__",
                  "__exit__", "__aenter__", "__aexit__")]
        assert len(wanted) > 15
        missing = [name for name in wanted if not hasattr(cls, name)]
        assert not missing, f"{cls.__name__} lacks {missing}"
