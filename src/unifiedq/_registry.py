"""Which driver serves which URL scheme, imported only when first used.

Built-in drivers are listed in :data:`_BUILTIN`. Third-party packages add drivers through
the ``unifiedq.drivers`` entry-point group: the entry point's name is the scheme and its value
the module path; the module defines ``sync_class`` and/or ``async_class`` (``None`` for a face
it lacks), like the built-in driver modules do.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import threading
from types import ModuleType

from ._base import AsyncQueueBase, QueueBase
from ._errors import DriverNotFound, DriverUnavailable

__all__ = ["DriverSpec", "available_drivers", "get_driver", "register_driver"]

ENTRY_POINT_GROUP = "unifiedq.drivers"


@dataclasses.dataclass(frozen=True, slots=True)
class DriverSpec:
    """Where a driver lives and what it needs.

    Attributes:
        scheme: The URL scheme, e.g. ``"redis"``.
        module: Dotted path of the module defining ``sync_class`` / ``async_class``.
        extra: The pip extra that installs its dependencies, or None.
        summary: One line for ``unifiedq drivers``.
    """

    scheme: str
    module: str
    extra: str | None = None
    summary: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class LoadedDriver:
    """A driver whose module was imported."""

    spec: DriverSpec
    sync_class: type[QueueBase] | None
    async_class: type[AsyncQueueBase] | None


_BUILTIN: tuple[DriverSpec, ...] = (
    DriverSpec("memory", "unifiedq.drivers.memory", None,
               "in-process reference driver (threads, no dependencies)"),
    DriverSpec("shm", "unifiedq.drivers.shm", "shm",
               "lock-free multi-process ring in shared memory (xsync MPMCQueue)"),
    DriverSpec("redis", "unifiedq.drivers.redis", "redis",
               "Redis task queue, wire-compatible with Go's asynq"),
    DriverSpec("rediss", "unifiedq.drivers.redis", "redis", "redis:// over TLS"),
    DriverSpec("redis+sentinel", "unifiedq.drivers.redis", "redis",
               "redis:// through Redis Sentinel (the master follows failovers)"),
    DriverSpec("redis+cluster", "unifiedq.drivers.redis", "redis",
               "redis:// on a Redis Cluster (slots routed per asynq queue, follows failovers)"),
    DriverSpec("amqp", "unifiedq.drivers.amqp", "amqp", "RabbitMQ through kombu (Machinery)"),
    DriverSpec("amqps", "unifiedq.drivers.amqp", "amqp", "amqp:// over TLS"),
    DriverSpec("faktory", "unifiedq.drivers.faktory", "faktory",
               "Faktory work server through pyfaktory"),
    DriverSpec("faktory+tls", "unifiedq.drivers.faktory", "faktory", "faktory:// over TLS"),
    DriverSpec("quic", "unifiedq.drivers.quic", "quic",
               "unifiedq job server over QUIC, TLS 1.3, mutual auth (goq)"),
)

_lock = threading.Lock()
_specs: dict[str, DriverSpec] = {s.scheme: s for s in _BUILTIN}
_entry_points_loaded = False


def register_driver(spec: DriverSpec, *, replace: bool = False) -> None:
    """Register a driver for a scheme (for plugins that do not use entry points).

    Args:
        spec: The driver's spec.
        replace: Allow replacing an existing scheme.

    Raises:
        ValueError: The scheme is taken and ``replace`` is False.
    """
    with _lock:
        if spec.scheme in _specs and not replace:
            raise ValueError(f"a driver for scheme {spec.scheme!r} is already registered")
        _specs[spec.scheme] = spec


def _load_entry_points() -> None:
    global _entry_points_loaded
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            _specs.setdefault(ep.name, DriverSpec(ep.name, ep.value, None, "third-party driver"))


def available_drivers() -> list[DriverSpec]:
    """Return every registered driver spec (built-in and entry points), by scheme."""
    _load_entry_points()
    with _lock:
        return sorted(_specs.values(), key=lambda s: s.scheme)


def get_driver(scheme: str) -> LoadedDriver:
    """Import and return the driver for ``scheme``.

    Raises:
        DriverNotFound: No driver is registered for the scheme.
        DriverUnavailable: The driver's dependencies are not installed.
    """
    _load_entry_points()
    with _lock:
        spec = _specs.get(scheme)
        known = sorted(_specs)
    if spec is None:
        close = difflib.get_close_matches(scheme, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DriverNotFound(
            f"no queue driver for scheme {scheme!r}{hint} (known: {', '.join(known)})"
        )
    module = _import(spec)
    sync_class = getattr(module, "sync_class", None)
    async_class = getattr(module, "async_class", None)
    if sync_class is None and async_class is None:
        raise DriverNotFound(f"module {spec.module!r} defines neither sync_class nor async_class")
    return LoadedDriver(spec, sync_class, async_class)


def _import(spec: DriverSpec) -> ModuleType:
    try:
        return importlib.import_module(spec.module)
    except ImportError as exc:
        if exc.name == spec.module:
            raise DriverNotFound(
                f"the {spec.scheme!r} driver module {spec.module!r} is not in this installation"
            ) from exc
        missing = exc.name or "a dependency"
        if spec.extra:
            how = f"pip install 'unifiedq[{spec.extra}]'"
        else:
            how = f"install the package that provides {spec.module!r}"
        raise DriverUnavailable(
            f"the {spec.scheme!r} driver needs {missing!r}, which is not installed: {how}",
            extra=spec.extra,
        ) from exc
