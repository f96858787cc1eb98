"""Which queues a bench run covers, and what each driver is (installed? native faces? flags?).

A :class:`Target` is one driver to benchmark. Targets that cannot run (driver not installed,
server unreachable, server failed to start) are kept with a ``status`` and a ``reason`` so the
report shows them: nothing is ever silently dropped.

* Embedded drivers (``memory://``, ``shm://``) need no server and run by default.
* Networked drivers run with ``--all``. Their URLs come from a flag, else from the environment
  variable ``UNIFIEDQ_BENCH_<DRIVER>_URL``, else from the usual local port; a server that does
  not answer within a few seconds is reported as unreachable.
* ``--start-servers`` starts private Redis / RabbitMQ / Faktory servers with the test rig
  (:mod:`unifiedq.testing.servers`) and stops them afterwards.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import importlib
import itertools
import os
import threading
from collections.abc import Callable, Mapping

from .._capabilities import Capability
from .._connect import connect
from .._errors import DriverNotFound, DriverUnavailable
from .._registry import DriverSpec, available_drivers, get_driver
from .._url import parse_url

__all__ = [
    "EMBEDDED",
    "ENV_PREFIX",
    "NETWORKED",
    "DriverInfo",
    "Target",
    "default_url",
    "describe_driver",
    "describe_drivers",
    "embedded_targets",
    "env_var",
    "networked_targets",
    "probe",
    "target_for_url",
]

#: Drivers that need no server; the default bench covers them.
EMBEDDED: tuple[str, ...] = ("memory", "shm")
#: Drivers that talk to a server; ``--all`` adds them.
NETWORKED: tuple[str, ...] = ("redis", "amqp", "faktory", "quic")
ENV_PREFIX = "UNIFIEDQ_BENCH_"

#: The queue every networked bench run uses (purged before and after each run).
BENCH_QUEUE = "unifiedq-bench"

# Where each networked server usually listens, used when neither a flag nor the environment
# gives a URL. The query names the bench queue (every networked driver takes ``queue=``).
_LOCAL_DEFAULTS: Mapping[str, str] = {
    "redis": "redis://127.0.0.1:6379/0",
    "amqp": "amqp://guest:guest@127.0.0.1:5672//",
    "faktory": "faktory://127.0.0.1:7419",
    "quic": "quic://127.0.0.1:4433",
}

_counter = itertools.count()


def env_var(driver: str) -> str:
    """Return the environment variable that gives ``driver``'s bench URL."""
    return f"{ENV_PREFIX}{driver.upper()}_URL"


def default_url(driver: str) -> str:
    """Return the local URL tried for ``driver`` when no flag or env var gives one."""
    return with_queue(_LOCAL_DEFAULTS[driver], BENCH_QUEUE)


def with_queue(server_url: str, queue: str) -> str:
    """Add ``queue=<queue>`` to a server URL unless it already names a queue."""
    if "queue=" in server_url:
        return server_url
    sep = "&" if "?" in server_url else "?"
    return f"{server_url}{sep}queue={queue}"


@dataclasses.dataclass(slots=True)
class DriverInfo:
    """What ``unifiedq drivers`` prints for one scheme.

    Attributes:
        scheme: The URL scheme.
        module: The driver module.
        extra: The pip extra that installs its dependencies, if any.
        summary: One-line description.
        status: ``"installed"``, ``"missing extra"`` or ``"not available"``.
        reason: Why it is not installed, with the install command.
        native_sync: The blocking face is implemented natively.
        native_async: The asyncio face is implemented natively.
        capabilities: Flag names (from the driver class).
    """

    scheme: str
    module: str
    extra: str | None
    summary: str
    status: str
    reason: str | None = None
    native_sync: bool = False
    native_async: bool = False
    capabilities: list[str] = dataclasses.field(default_factory=list)

    @property
    def installed(self) -> bool:
        """True when the driver module and its dependencies import."""
        return self.status == "installed"

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["installed"] = self.installed
        return d


def describe_driver(spec: DriverSpec) -> DriverInfo:
    """Import one driver (if it can be) and describe it.

    Args:
        spec: The registered driver spec.

    Returns:
        Its :class:`DriverInfo`; import failures become a status, not an exception.
    """
    info = DriverInfo(spec.scheme, spec.module, spec.extra, spec.summary, "installed")
    try:
        drv = get_driver(spec.scheme)
    except DriverUnavailable as exc:
        info.status, info.reason = "missing extra", str(exc)
        return info
    except DriverNotFound as exc:
        info.status, info.reason = "not available", str(exc)
        return info
    except Exception as exc:  # a broken third-party driver must not break the listing
        info.status, info.reason = "not available", f"{type(exc).__name__}: {exc}"
        return info
    caps = Capability(0)
    for cls in (drv.sync_class, drv.async_class):
        if cls is not None:
            caps |= cls.capabilities
    info.native_sync = drv.sync_class is not None
    info.native_async = drv.async_class is not None
    info.capabilities = caps.names()
    return info


def describe_drivers() -> list[DriverInfo]:
    """Describe every registered driver (built-in and third-party), sorted by scheme."""
    return [describe_driver(s) for s in available_drivers()]


@dataclasses.dataclass(slots=True)
class Target:
    """One driver the bench covers.

    Attributes:
        driver: Label in reports (the driver's name, e.g. ``"redis"``).
        scheme: URL scheme.
        url: The URL (redacted) shown in reports, or None when there is none.
        status: ``"ok"``, ``"unavailable"`` (driver not installed), ``"unreachable"``
            (server did not answer) or ``"error"``.
        reason: Why it is not ``"ok"``.
        server_version: The backend's version when known.
        capabilities: Flag names of the driver.
        make_url: Returns the URL for the n-th run (embedded drivers get a fresh queue per
            run; networked ones reuse the bench queue, purged between runs).
        cleanup: Called once after all runs (e.g. to unlink shared memory).
    """

    driver: str
    scheme: str
    url: str | None
    status: str = "ok"
    reason: str | None = None
    server_version: str | None = None
    capabilities: list[str] = dataclasses.field(default_factory=list)
    make_url: Callable[[int], str] | None = None
    raw_url: str | None = dataclasses.field(default=None, repr=False)
    cleanup: Callable[[], None] | None = None

    @property
    def runnable(self) -> bool:
        """True when the bench should run this target."""
        return self.status == "ok" and self.make_url is not None

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict (no callables, URL redacted)."""
        return {
            "driver": self.driver,
            "scheme": self.scheme,
            "url": self.url,
            "status": self.status,
            "reason": self.reason,
            "server_version": self.server_version,
            "capabilities": self.capabilities,
        }


def _unavailable(driver: str, scheme: str, exc: BaseException) -> Target:
    status = "unavailable" if isinstance(exc, DriverUnavailable | DriverNotFound) else "error"
    return Target(driver, scheme, None, status, f"{type(exc).__name__}: {exc}")


def _memory_target() -> Target:
    info = describe_driver(_spec("memory"))
    pid = os.getpid()
    return Target(
        "memory", "memory", "memory://unifiedq-bench-<run>", capabilities=info.capabilities,
        make_url=lambda n: f"memory://unifiedq-bench-{pid}-{n}-{next(_counter)}",
    )


def _shm_target(load_max: int, size: int) -> Target:
    try:
        get_driver("shm")
    except Exception as exc:
        return _unavailable("shm", "shm", exc)
    info = describe_driver(_spec("shm"))
    pid = os.getpid()
    # The ring is bounded: give it room for the largest load and slots for the body size.
    capacity = 1 << max(4, (load_max - 1).bit_length())
    query = f"capacity={capacity}&slot_size={max(size, 64)}"
    made: list[str] = []

    def make(n: int) -> str:
        url = f"shm://ubench-{pid}-{n}-{next(_counter)}?{query}"
        made.append(url)
        return url

    def cleanup() -> None:
        # Unlink every segment the runs created, even if a run failed half-way: shared
        # memory outlives the process otherwise.
        module = importlib.import_module(get_driver("shm").spec.module)
        unlink = getattr(module, "unlink", None)
        if not callable(unlink):
            return
        for url in made:
            with contextlib.suppress(Exception):
                unlink(parse_url(url).authority)

    return Target("shm", "shm", f"shm://ubench-<run>?{query}", capabilities=info.capabilities,
                  make_url=make, cleanup=cleanup)


def _spec(scheme: str) -> DriverSpec:
    for s in available_drivers():
        if s.scheme == scheme:
            return s
    raise DriverNotFound(f"no driver for scheme {scheme!r}")


def embedded_targets(load_max: int, size: int) -> list[Target]:
    """Targets for ``memory://`` and ``shm://`` (shm reported as unavailable if it is)."""
    return [_memory_target(), _shm_target(load_max, size)]


def probe(url: str, timeout: float = 5.0) -> str | None:
    """Open ``url`` and call ``size()``; return None if that worked, else the reason.

    Runs in a daemon thread so a server that never answers cannot hang the bench.
    """
    result: list[str | None] = []

    def go() -> None:
        try:
            with connect(url) as q:
                q.size()
            result.append(None)
        except Exception as exc:
            result.append(f"{type(exc).__name__}: {exc}")

    t = threading.Thread(target=go, daemon=True, name="unifiedq-bench-probe")
    t.start()
    t.join(timeout)
    if not result:
        return f"no answer within {timeout:g} s"
    return result[0]


def target_for_url(url: str, *, check: bool = True, label: str | None = None) -> Target:
    """A target for a URL given by the user (used as is for every run, purged in between).

    Args:
        url: The queue URL.
        check: Probe the server first and mark the target unreachable if it does not answer.
        label: Report label; defaults to the scheme.
    """
    parsed = parse_url(url)
    driver = label or parsed.scheme
    try:
        drv = get_driver(parsed.scheme)
    except Exception as exc:
        t = _unavailable(driver, parsed.scheme, exc)
        t.url = parsed.redacted()
        return t
    info = describe_driver(drv.spec)
    t = Target(driver, parsed.scheme, parsed.redacted(), capabilities=info.capabilities,
               make_url=lambda _n: url, raw_url=url)
    if check:
        reason = probe(url)
        if reason is not None:
            t.status, t.reason, t.make_url = "unreachable", reason, None
    if t.status == "ok":
        from .baselines import server_version

        t.server_version = server_version(parsed.scheme, url)
    return t


def networked_targets(
    urls: Mapping[str, str | None],
    *,
    start_servers: bool = False,
    stack: contextlib.ExitStack | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> list[Target]:
    """Targets for every networked driver.

    Args:
        urls: Driver name -> URL given by a flag (None = use env var or local default).
        start_servers: Start private servers with the test rig for drivers without a URL.
        stack: Where started servers are registered for stopping (required to start any).
        log: Progress messages ("starting redis-server ...").

    Returns:
        One target per driver in :data:`NETWORKED`, runnable or with the reason it is not.
    """
    out: list[Target] = []
    for d in NETWORKED:
        # Import drivers here, on the calling thread, before the pool: an import error is
        # then reported once, and the threads below find the modules already loaded.
        with contextlib.suppress(Exception):
            get_driver(d)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(NETWORKED)) as pool:
        futs = {d: pool.submit(_networked_one, d, urls.get(d), start_servers, stack, log)
                for d in NETWORKED}
        for d in NETWORKED:
            out.append(futs[d].result())
    return out


def _networked_one(
    driver: str,
    flag_url: str | None,
    start_servers: bool,
    stack: contextlib.ExitStack | None,
    log: Callable[[str], None],
) -> Target:
    try:
        get_driver(driver)
    except Exception as exc:
        return _unavailable(driver, driver, exc)
    url = flag_url or os.environ.get(env_var(driver))
    version: str | None = None
    if url is None and start_servers:
        if stack is None:
            raise ValueError("start_servers needs an ExitStack to stop the servers")
        try:
            url, version = _start_server(driver, stack, log)
        except Exception as exc:
            t = Target(driver, driver, None, "unreachable",
                       f"could not start a local server: {type(exc).__name__}: {exc}")
            return t
    if url is None and driver == "quic":
        # A quic:// URL needs certificate paths; there is no useful local default.
        return Target(driver, driver, None, "unreachable",
                      f"no server given: pass --quic-url or set {env_var(driver)} "
                      f"(quic://host:port/<queue>?ca=...&cert=...&key=...), "
                      f"or use --start-servers")
    if url is None:
        url = default_url(driver)
    t = target_for_url(url, label=driver)
    if version and not t.server_version:
        t.server_version = version
    return t


def _start_quic(
    stack: contextlib.ExitStack, log: Callable[[str], None]
) -> tuple[str, str | None]:
    import tempfile
    from pathlib import Path

    from ..testing.quic import Pki, ServerProcess

    log("starting a local quic server (unifiedq serve --backend memory://) ...")
    root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="unifiedq-bench-quic-")))
    server = ServerProcess(Pki(root / "pki"), backend="memory://").start()
    stack.callback(server.stop)
    # capabilities=memory: the client may use every verb of the memory backend (PEEK, ACK...).
    return server.url(BENCH_QUEUE, capabilities="memory"), "unifiedq serve (memory backend)"


def _start_server(
    driver: str, stack: contextlib.ExitStack, log: Callable[[str], None]
) -> tuple[str, str | None]:
    from ..testing import servers

    server: servers.ManagedServer
    if driver == "redis":
        server = servers.RedisServer()
    elif driver == "amqp":
        server = servers.RabbitMQServer()
    elif driver == "faktory":
        server = servers.FaktoryServer()
    elif driver == "quic":
        return _start_quic(stack, log)
    else:
        raise RuntimeError(f"--start-servers does not know how to start a {driver} server")
    log(f"starting a local {driver} server ({type(server).__name__}) ...")
    server.start()
    stack.callback(server.stop)
    try:
        version: str | None = server.binary_version()
    except Exception:
        version = None
    return with_queue(server.url, BENCH_QUEUE), version
