"""Every sync/async pair offers the same public API: same names, signatures and defaults.

Most pairs are generated one from the other (scripts/generate_sync.py), so they agree by
construction; this test also covers the pairs that are not (bridges, drivers with one native
face per library) and catches a rename table that maps a name to the wrong twin.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest

#: (blocking, asyncio) pairs, as "module:Class".
PAIRS = [
    ("unifiedq:Queue", "unifiedq:AsyncQueue"),
    ("unifiedq:QueueBase", "unifiedq:AsyncQueueBase"),
    ("unifiedq.worker:Worker", "unifiedq.worker:AsyncWorker"),
    ("unifiedq.fair:FairQueue", "unifiedq.fair:AsyncFairQueue"),
    ("unifiedq.bounded:BoundedQueue", "unifiedq.bounded:AsyncBoundedQueue"),
    ("unifiedq._bridge:AsyncToSync", "unifiedq._bridge:SyncToAsync"),  # bridges: see EXEMPT
    ("unifiedq.drivers.redis:RedisQueue", "unifiedq.drivers.redis:AsyncRedisQueue"),
    ("unifiedq.drivers.shm:ShmQueue", "unifiedq.drivers.shm:AsyncShmQueue"),
    ("unifiedq.bench._sync.run:SyncRun", "unifiedq.bench._async.run:AsyncRun"),
]

#: Methods of one class that are each other's twin (limits: one object serves both faces).
SAME_CLASS_TWINS = [
    ("unifiedq.limits:TokenBucket", "acquire", "acquire_async"),
    ("unifiedq.limits:KeyedLimiter", "acquire", "acquire_async"),
]

#: Async name -> blocking name, beyond the async/await keywords.
RENAME = {"aclose": "close", "__aenter__": "__enter__", "__aexit__": "__exit__"}
#: Type names in annotations that differ between the faces.
TYPE_RENAME = {
    r"\bAsyncQueueBase\b": "QueueBase", r"\bAsyncQueue\b": "Queue",
    r"\bAsyncWorker\b": "Worker", r"\bAsyncFairQueue\b": "FairQueue",
    r"\bAsyncBoundedQueue\b": "BoundedQueue", r"\bAsyncRedisQueue\b": "RedisQueue",
    r"\bAsyncShmQueue\b": "ShmQueue", r"\bSyncToAsync\b": "AsyncToSync",
    r"\bAsyncRun\b": "SyncRun", r"\bAwaitable\[(.*)\]": r"\1",
    # The generator's rule for every other name: AsyncX becomes SyncX.
    r"\bAsync(\w+)\b": r"Sync\1",
}
#: Members of one pair that differ on purpose (blocking class -> member -> the reason).
EXEMPT: dict[str, dict[str, str]] = {
    "unifiedq._bridge:AsyncToSync": {
        "__init__": "the sync->async bridge sizes its thread pool (max_threads); the "
                    "async->sync one runs on one loop thread",
    },
}


def _load(spec: str) -> Any:
    mod, _, name = spec.partition(":")
    try:
        module = importlib.import_module(mod)
    except ImportError as exc:  # an optional extra: the pair cannot be compared here
        pytest.fail(f"{mod} does not import: {exc}")
    return getattr(module, name)


def _public(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in dir(cls):
        if name.startswith("_") and name not in ("__enter__", "__exit__", "__aenter__",
                                                  "__aexit__", "__init__"):
            continue
        if name in dir(object) and name != "__init__":
            continue
        out[RENAME.get(name, name)] = inspect.getattr_static(cls, name)
    return out


def _norm_annotation(a: object) -> str:
    text = a if isinstance(a, str) else inspect.formatannotation(a)
    for pat, rep in TYPE_RENAME.items():
        text = re.sub(pat, rep, text)
    return text.replace("unifiedq.", "").replace("typing.", "").replace(" ", "")


def _signature(fn: Callable[..., Any]) -> list[tuple[str, str, str, str]]:
    sig = inspect.signature(fn)
    return [(p.name, str(p.kind), repr(p.default), _norm_annotation(p.annotation))
            for p in sig.parameters.values()] + [
        ("->", "", "", _norm_annotation(sig.return_annotation))]


def _func(member: Any) -> Callable[..., Any] | None:
    if isinstance(member, staticmethod | classmethod):
        return member.__func__
    if isinstance(member, property):
        return None
    return member if callable(member) else None


@pytest.mark.parametrize(("sync_spec", "async_spec"), PAIRS, ids=[p[0] for p in PAIRS])
def test_pair_has_the_same_public_api(sync_spec: str, async_spec: str) -> None:
    sync_cls, async_cls = _load(sync_spec), _load(async_spec)
    s, a = _public(sync_cls), _public(async_cls)
    exempt = EXEMPT.get(sync_spec, {})
    missing_async = sorted(set(s) - set(a) - set(exempt))
    missing_sync = sorted(set(a) - set(s) - set(exempt))
    assert not missing_async and not missing_sync, (
        f"{async_spec} lacks {missing_async}; {sync_spec} lacks {missing_sync}")
    problems = []
    for name in sorted(s):
        if name in exempt:
            continue
        sm, am = s[name], a[name]
        if isinstance(sm, property) != isinstance(am, property):
            problems.append(f"{name}: property on one face only")
            continue
        sf, af = _func(sm), _func(am)
        if sf is None or af is None:
            continue
        if inspect.iscoroutinefunction(sf):
            problems.append(f"{name}: a coroutine on the blocking face")
        if _signature(sf) != _signature(af):
            problems.append(f"{name}: {_signature(sf)} != {_signature(af)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("spec", "sync_name", "async_name"), SAME_CLASS_TWINS,
                         ids=[f"{c}.{s}" for c, s, _ in SAME_CLASS_TWINS])
def test_same_class_twins_agree(spec: str, sync_name: str, async_name: str) -> None:
    cls = _load(spec)
    sf, af = getattr(cls, sync_name), getattr(cls, async_name)
    assert not inspect.iscoroutinefunction(sf) and inspect.iscoroutinefunction(af)
    assert _signature(sf) == _signature(af)


def test_parity_check_has_teeth() -> None:
    # A drifted pair (a missing method, a different default) must be caught.
    class Blocking:
        def get(self, timeout: float = 1.0) -> int:
            return 0

        def sizes(self) -> int:
            return 0

    class Asyncio:
        async def get(self, timeout: float = 2.0) -> int:
            return 0

    s, a = _public(Blocking), _public(Asyncio)
    assert set(s) - set(a) == {"sizes"}
    sf, af = _func(s["get"]), _func(a["get"])
    assert sf is not None and af is not None
    assert _signature(sf) != _signature(af)
