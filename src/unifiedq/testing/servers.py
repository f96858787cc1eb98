"""Real Redis, RabbitMQ and Faktory servers for tests, started on free loopback ports.

Each server class launches the real server binary as a subprocess in its own
process group and temporary directory, waits until the server really answers
(a RESP ``PING`` for Redis, an AMQP ``Connection.Start`` for RabbitMQ, the
``+HI`` greeting for Faktory) and tears everything down again, including any
children the server spawned (Faktory's private ``redis-server``, RabbitMQ's
``epmd``).

Example:
    >>> with RedisServer() as server:  # doctest: +SKIP
    ...     print(server.url)
    redis://127.0.0.1:40123/0

Only the standard library is used here; client libraries are the tests' business.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Protocol, Self, runtime_checkable
from urllib.parse import quote

__all__ = [
    "INSTALL_HINTS",
    "ExternalServer",
    "FaktoryServer",
    "Freezable",
    "ManagedServer",
    "RabbitMQServer",
    "RedisServer",
    "ServerBinaryMissing",
    "ServerHandle",
    "ServerStartError",
    "find_binary",
    "find_free_port",
    "install_hint",
    "iter_running",
]

LOOPBACK = "127.0.0.1"

INSTALL_HINTS: Mapping[str, str] = {
    "redis-server": (
        "run `bash scripts/install.sh` from the repository root, or `apt-get install redis-server`"
    ),
    "rabbitmq-server": (
        "run `bash scripts/install.sh` from the repository root, "
        "or `apt-get install rabbitmq-server`"
    ),
    "rabbitmqctl": (
        "run `bash scripts/install.sh` from the repository root, "
        "or `apt-get install rabbitmq-server`"
    ),
    "faktory": (
        "run `bash scripts/install.sh` from the repository root (builds Faktory v1.9.3 "
        "with Go into /usr/local/bin/faktory); Faktory also needs redis-server on PATH"
    ),
    "epmd": (
        "run `bash scripts/install.sh` from the repository root, or `apt-get install erlang-base`"
    ),
    "toxiproxy-server": (
        "run `bash scripts/install.sh` from the repository root (builds Toxiproxy v2.5.0 "
        "with Go into /usr/local/bin/toxiproxy-server)"
    ),
}

# Directories searched after PATH: Debian puts the RabbitMQ tools in /usr/sbin,
# which is not on PATH for ordinary users.
_EXTRA_BIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/lib/rabbitmq/bin")

_RUNNING: set[ManagedServer] = set()
_RUNNING_LOCK = threading.Lock()


def install_hint(binary: str) -> str:
    """Return the human-readable hint on how to install ``binary``.

    Args:
        binary: Executable name such as ``"redis-server"``.

    Returns:
        A sentence naming the install command.
    """
    return INSTALL_HINTS.get(binary, "run `bash scripts/install.sh` from the repository root")


class ServerBinaryMissing(RuntimeError):
    """Raised when a server executable cannot be found.

    Attributes:
        binary: Name of the missing executable.
        hint: How to install it.
    """

    def __init__(self, binary: str, hint: str | None = None) -> None:
        self.binary = binary
        self.hint = hint if hint is not None else install_hint(binary)
        super().__init__(f"{binary!r} was not found on PATH; to install it, {self.hint}")


class ServerStartError(RuntimeError):
    """Raised when a server process exits early or does not become ready in time."""


def find_binary(name: str) -> str:
    """Locate an executable on ``PATH`` (plus the usual sbin directories).

    Args:
        name: Executable name.

    Returns:
        Absolute path of the executable.

    Raises:
        ServerBinaryMissing: If it is not installed.
    """
    found = shutil.which(name)
    if found is None:
        extra = os.pathsep.join(_EXTRA_BIN_DIRS)
        found = shutil.which(name, path=extra)
    if found is None:
        raise ServerBinaryMissing(name)
    return os.path.abspath(found)


def find_free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is currently free on ``host``.

    The port is found by binding port 0 and letting the kernel choose; there is a
    short window in which another process could take it.

    Args:
        host: Address to bind.

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(host: str, port: int) -> bool:
    """Return True if nothing listens on ``host:port`` (TIME_WAIT sockets are fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Return ``count`` distinct free ports (all held open while choosing)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


@runtime_checkable
class ServerHandle(Protocol):
    """What every test server offers: at least a connection URL."""

    @property
    def url(self) -> str:
        """Connection URL of the server."""
        ...


@dataclasses.dataclass(frozen=True)
class ExternalServer:
    """A server that the test rig did not start (given by URL, e.g. from the environment).

    It cannot be stopped or restarted; tests that need that should skip.

    Attributes:
        name: Kind of server (``"redis"``, ``"rabbitmq"``, ``"faktory"``).
        url: Connection URL.
    """

    name: str
    url: str

    @property
    def managed(self) -> bool:
        """Always ``False``: the rig does not control this server's process."""
        return False


# --------------------------------------------------------------------------- processes


def _proc_state(pid: int) -> tuple[str, int] | None:
    """Return ``(state, pgid)`` of a live process from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may contain spaces and parentheses; split after the last ")".
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[2])


def _group_members(pgid: int) -> list[int]:
    """Return the non-zombie processes in process group ``pgid``."""
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        info = _proc_state(int(entry))
        if info is not None and info[1] == pgid and info[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not _group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _pids_with_env(comm: str, key: str, value: str) -> list[int]:
    """Find processes named ``comm`` whose environment has ``key=value``."""
    wanted = f"{key}={value}".encode()
    found: list[int] = []
    if not os.path.isdir("/proc"):
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() != comm:
                continue
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in env:
            found.append(int(entry))
    return found


def _atexit_stop_all() -> None:
    with _RUNNING_LOCK:
        servers = list(_RUNNING)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(_atexit_stop_all)


# --------------------------------------------------------------------------- base class


class Freezable:
    """``frozen()`` for a server rig that can ``freeze()`` (SIGSTOP) and ``thaw()`` (SIGCONT)."""

    def freeze(self) -> None:
        """Stop the server process from running (a stalled or partitioned host)."""
        raise NotImplementedError

    def thaw(self) -> None:
        """Let a frozen server run again."""
        raise NotImplementedError

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """``with server.frozen(): ...`` freezes the server for the block, then thaws it."""
        self.freeze()
        try:
            yield
        finally:
            self.thaw()


class ManagedServer(Freezable, abc.ABC):
    """Base class: a server process owned by the test rig.

    Subclasses describe the command line, environment and readiness probe; this
    class handles ports, the temporary directory, logging, start/stop/restart
    and process-group cleanup.

    Args:
        port: Port to listen on; a free one is chosen when omitted.
        startup_timeout: Seconds to wait for the server to become ready.
        stop_timeout: Seconds to wait after SIGTERM before using SIGKILL.
        base_dir: Parent directory for the temporary directory (default: the
            system temp dir).
    """

    #: Executable started by this class.
    binary_name: ClassVar[str]
    #: Short name used in messages and temp dir names.
    kind: ClassVar[str]
    default_startup_timeout: ClassVar[float] = 30.0

    def __init__(
        self,
        *,
        port: int | None = None,
        startup_timeout: float | None = None,
        stop_timeout: float = 10.0,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = LOOPBACK
        self._requested_port = port
        self._port: int | None = port
        self.startup_timeout = (
            startup_timeout if startup_timeout is not None else self.default_startup_timeout
        )
        self.stop_timeout = stop_timeout
        self._base_dir = os.fspath(base_dir) if base_dir is not None else None
        self._tmpdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: int | None = None
        self._lock = threading.RLock()
        #: Seconds the last start/restart took until the server was ready.
        self.boot_seconds: float | None = None

    # ----------------------------------------------------------------- public API

    @property
    def managed(self) -> bool:
        """Always ``True``: this object controls the server process."""
        return True

    @property
    def port(self) -> int:
        """The listening port (allocated on first start)."""
        if self._port is None:
            raise RuntimeError(f"{self.kind} server has not been started")
        return self._port

    @property
    def tmpdir(self) -> Path:
        """The private temporary directory of this server."""
        if self._tmpdir is None:
            raise RuntimeError(f"{self.kind} server has not been started")
        return self._tmpdir

    @property
    def log_path(self) -> Path:
        """Path of the file receiving the server's stdout and stderr."""
        return self.tmpdir / f"{self.kind}.log"

    @property
    def pid(self) -> int | None:
        """PID of the server process, or None when it is not running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """Connection URL for clients."""

    def binary_path(self) -> str:
        """Return the absolute path of the server executable.

        Raises:
            ServerBinaryMissing: If it is not installed.
        """
        return find_binary(self.binary_name)

    @abc.abstractmethod
    def binary_version(self) -> str:
        """Return the version of the installed server binary, e.g. ``"7.0.15"``.

        Raises:
            ServerBinaryMissing: If it is not installed.
        """

    def start(self) -> Self:
        """Start the server and wait until it is ready.

        Returns:
            ``self``, so that ``server = RedisServer().start()`` works.

        Raises:
            ServerBinaryMissing: If the server executable is not installed.
            ServerStartError: If the server exits early or is not ready in time.
        """
        with self._lock:
            if self.is_running:
                return self
            self._check_binaries()
            if self._tmpdir is None:
                self._tmpdir = Path(tempfile.mkdtemp(prefix=f"uq-{self.kind}-", dir=self._base_dir))
            self._allocate_ports()
            self._prepare()
            self._launch()
            return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and delete its temporary directory.

        Safe to call more than once. A later :meth:`start` begins afresh with a new
        temporary directory (and new ports unless a port was given explicitly).
        """
        with self._lock:
            self._terminate()
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None
            self._port = self._requested_port
            self._release_ports()

    def restart(self) -> None:
        """Stop the process and start it again on the same port with the same data.

        Raises:
            ServerStartError: If the server does not come back.
        """
        with self._lock:
            if self._tmpdir is None:
                raise RuntimeError(f"{self.kind} server has not been started")
            self._terminate()
            self._launch()

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL to its process group), keeping its data.

        Useful for crash tests; call :meth:`restart` (or :meth:`start`) afterwards
        to bring it back on the same port with the same data directory.
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self.stop_timeout)
            self._after_stop()
            self._finish_process()

    def freeze(self) -> None:
        """Freeze the server: SIGSTOP its whole process group (a stalled or partitioned host).

        Connections stay open and nothing answers; the kernel still accepts new TCP
        connections into the listen backlog. Call :meth:`thaw` (stop/kill also thaw).
        """
        with self._lock:
            if self._proc is not None:
                _signal_group(self._proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Resume a server frozen by :meth:`freeze` (SIGCONT to its process group)."""
        with self._lock:
            if self._proc is not None:
                _signal_group(self._proc.pid, signal.SIGCONT)

    def read_log(self) -> str:
        """Return the server log so far (empty if there is none)."""
        if self._tmpdir is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        where = f" {self.url}" if self._port is not None else ""
        return f"<{type(self).__name__}{where} {state}>"

    # ----------------------------------------------------------------- subclass hooks

    def _check_binaries(self) -> None:
        self.binary_path()

    def _allocate_ports(self) -> None:
        """Choose free ports for every port that is not fixed yet."""
        if self._port is None:
            self._port = find_free_port(self.host)

    def _release_ports(self) -> None:
        """Forget automatically allocated auxiliary ports (called by stop())."""

    def _prepare(self) -> None:
        """Write config files etc. into the temp dir before every launch."""

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """Return the argv of the server process."""

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    @abc.abstractmethod
    def _probe(self) -> bool:
        """Return True once the server answers like a ready server."""

    def _before_terminate(self) -> None:
        """Ask the server to shut down gracefully before signals are sent."""

    def _after_stop(self) -> None:
        """Clean up helpers that left the process group (e.g. epmd)."""

    # ----------------------------------------------------------------- internals

    def _log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def _ports(self) -> list[int]:
        """All ports this server listens on (checked to be free before each launch)."""
        return [self.port]

    def _wait_ports_free(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for port in self._ports():
            while not _port_is_free(self.host, port):
                if time.monotonic() >= deadline:
                    raise ServerStartError(
                        f"cannot start {self.kind} server: port {port} on {self.host} is in use"
                    )
                time.sleep(0.1)

    def _launch(self) -> None:
        self._wait_ports_free()
        argv = self._command()
        started = time.monotonic()
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(log_fd, f"\n==== uq-test-rig: launching {argv!r}\n".encode())
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd=self.tmpdir,
                env=self._env(),
                start_new_session=True,
            )
        except BaseException:
            os.close(log_fd)
            raise
        self._log_file = log_fd
        with _RUNNING_LOCK:
            _RUNNING.add(self)
        try:
            self._wait_ready(started)
        except BaseException:
            self._terminate()
            raise
        self.boot_seconds = time.monotonic() - started

    def _wait_ready(self, started: float) -> None:
        deadline = started + self.startup_timeout
        proc = self._proc
        assert proc is not None
        delay = 0.05
        while True:
            code = proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"{self.kind} server exited with code {code} during startup "
                    f"(log {self.log_path}):\n{self._log_tail()}"
                )
            try:
                if self._probe() and proc.poll() is None:
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"{self.kind} server on port {self._port} was not ready after "
                    f"{self.startup_timeout:.0f}s (log {self.log_path}):\n{self._log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session=True: the pid is also the pgid
        _signal_group(pgid, signal.SIGCONT)  # a frozen server cannot act on SIGTERM
        try:
            if proc.poll() is None:
                with contextlib.suppress(Exception):
                    self._before_terminate()
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(pgid, signal.SIGKILL)
                    proc.wait(timeout=self.stop_timeout)
            # Children left in the group (e.g. Faktory's redis-server): TERM, then KILL.
            if _group_members(pgid):
                _signal_group(pgid, signal.SIGTERM)
                if not _wait_group_gone(pgid, self.stop_timeout):
                    _signal_group(pgid, signal.SIGKILL)
                    _wait_group_gone(pgid, 5.0)
        finally:
            self._after_stop()
            self._finish_process()

    def _finish_process(self) -> None:
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                os.close(self._log_file)
            self._log_file = None
        self._proc = None
        with _RUNNING_LOCK:
            _RUNNING.discard(self)


def _version_from_output(argv: list[str], pattern: str) -> str:
    out = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    text = (out.stdout + out.stderr).decode(errors="replace")
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"cannot parse version from {argv!r}: {text.strip()!r}")
    return match.group(1)


def _resp_command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_line(sock: socket.socket, limit: int = 65536) -> bytes:
    buf = bytearray()
    while not buf.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
        if len(buf) > limit:
            raise ConnectionError("line too long")
    return bytes(buf[:-2])


# --------------------------------------------------------------------------- Redis


class RedisServer(ManagedServer):
    """A private ``redis-server`` on a free loopback port.

    Args:
        password: If set, passed as ``--requirepass`` and included in :attr:`url`.
        persistent: Enable the append-only file with ``appendfsync always`` so that
            :meth:`restart` keeps the data (default: no persistence at all).
        extra_args: Additional ``redis-server`` command-line arguments.
        **kwargs: See :class:`ManagedServer`.
    """

    binary_name = "redis-server"
    kind = "redis"
    default_startup_timeout = 30.0

    def __init__(
        self,
        *,
        password: str | None = None,
        persistent: bool = False,
        extra_args: list[str] | None = None,
        port: int | None = None,
        startup_timeout: float | None = None,
        stop_timeout: float = 10.0,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            port=port,
            startup_timeout=startup_timeout,
            stop_timeout=stop_timeout,
            base_dir=base_dir,
        )
        self.password = password
        self.persistent = persistent
        self.extra_args = list(extra_args or [])

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT/0``."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        """Redis working directory (``--dir``), kept across :meth:`restart`."""
        return self.tmpdir / "data"

    def binary_version(self) -> str:
        return _version_from_output([self.binary_path(), "--version"], r"v=(\S+)")

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        argv = [
            self.binary_path(),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "notice",
        ]  # fmt: skip
        if self.persistent:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv + self.extra_args

    def _probe(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=2.0) as sock:
            sock.settimeout(2.0)
            if self.password:
                sock.sendall(_resp_command("AUTH", self.password))
                reply = _read_line(sock)
                if not reply.startswith(b"+OK"):
                    if reply.startswith(b"-LOADING"):
                        return False
                    raise ServerStartError(f"redis AUTH failed: {reply!r}")
            sock.sendall(_resp_command("PING"))
            return _read_line(sock) == b"+PONG"


# --------------------------------------------------------------------------- RabbitMQ


_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


class RabbitMQServer(ManagedServer):
    """A private RabbitMQ node on free loopback ports.

    The node gets a unique name (``uq<port>@localhost``), its own distribution
    port and its own ``epmd`` port, and keeps mnesia, logs, config and the Erlang
    cookie in its temporary directory. No plugins are enabled.

    Args:
        config: Extra lines appended to the generated ``rabbitmq.conf``.
        **kwargs: See :class:`ManagedServer`.
    """

    binary_name = "rabbitmq-server"
    kind = "rabbitmq"
    default_startup_timeout = 90.0

    def __init__(
        self,
        *,
        config: str = "",
        port: int | None = None,
        startup_timeout: float | None = None,
        stop_timeout: float = 30.0,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            port=port,
            startup_timeout=startup_timeout,
            stop_timeout=stop_timeout,
            base_dir=base_dir,
        )
        self.extra_config = config
        self.dist_port: int | None = None
        self.epmd_port: int | None = None

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:PORT//``."""
        return f"amqp://guest:guest@{self.host}:{self.port}//"

    @property
    def nodename(self) -> str:
        """Erlang node name of this broker."""
        return f"uq{self.port}@localhost"

    @property
    def mnesia_base(self) -> Path:
        """Directory holding the node's database (kept across :meth:`restart`)."""
        return self.tmpdir / "mnesia"

    @staticmethod
    def _script(name: str) -> str:
        """Resolve a RabbitMQ script, bypassing Debian's ``su rabbitmq`` wrapper."""
        path = os.path.realpath(find_binary(name))
        if os.path.basename(path) == "rabbitmq-script-wrapper":
            real = os.path.join(os.path.dirname(path), name)
            if not os.path.exists(real):
                raise ServerBinaryMissing(name)
            path = os.path.realpath(real)
        return path

    def binary_path(self) -> str:
        return self._script(self.binary_name)

    def binary_version(self) -> str:
        # Never run `rabbitmq-server --version`: it boots a broker.
        home = Path(self.binary_path()).parent.parent
        match = re.search(r"rabbitmq_server-(\d[\w.\-+]*)$", home.name)
        if match:
            return match.group(1)
        plugins = home / "plugins"
        if plugins.is_dir():
            for entry in sorted(plugins.iterdir()):
                found = re.fullmatch(r"rabbit-(\d[\w.\-+]*?)(\.ez)?", entry.name)
                if found:
                    return found.group(1)
        raise RuntimeError(f"cannot determine the RabbitMQ version from {home}")

    def _check_binaries(self) -> None:
        self._script("rabbitmq-server")
        self._script("rabbitmqctl")

    def _allocate_ports(self) -> None:
        taken = {self._port, self.dist_port, self.epmd_port}
        fresh = iter(p for p in _free_ports(4, self.host) if p not in taken)
        if self._port is None:
            self._port = next(fresh)
        if self.dist_port is None:
            self.dist_port = next(fresh)
        if self.epmd_port is None:
            self.epmd_port = next(fresh)

    def _release_ports(self) -> None:
        self.dist_port = None
        self.epmd_port = None

    def _ports(self) -> list[int]:
        assert self.dist_port is not None
        return [self.port, self.dist_port]

    def _prepare(self) -> None:
        assert self.dist_port is not None and self.epmd_port is not None
        tmp = self.tmpdir
        (tmp / "log").mkdir(exist_ok=True)
        self.mnesia_base.mkdir(exist_ok=True)
        (tmp / "enabled_plugins").write_text("[].\n")
        conf = [
            "loopback_users.guest = true",
            "log.console = false",
            "log.file.level = info",
            "disk_free_limit.absolute = 50MB",
            self.extra_config,
        ]
        (tmp / "rabbitmq.conf").write_text("\n".join(conf) + "\n")

    def _env(self) -> dict[str, str]:
        assert self.dist_port is not None and self.epmd_port is not None
        tmp = self.tmpdir
        env = dict(os.environ)
        for key in list(env):
            if key.startswith("RABBITMQ_") or key in ("ERL_EPMD_PORT", "ERL_EPMD_ADDRESS"):
                del env[key]
        env.update(
            {
                "HOME": str(tmp),
                "RABBITMQ_NODENAME": self.nodename,
                "RABBITMQ_USE_LONGNAME": "false",
                "RABBITMQ_NODE_IP_ADDRESS": self.host,
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": self.host,
                "RABBITMQ_MNESIA_BASE": str(self.mnesia_base),
                "RABBITMQ_LOG_BASE": str(tmp / "log"),
                "RABBITMQ_CONFIG_FILE": str(tmp / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(tmp / "advanced.config"),
                "RABBITMQ_CONF_ENV_FILE": str(tmp / "rabbitmq-env.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(tmp / "enabled_plugins"),
                "RABBITMQ_PID_FILE": str(tmp / "rabbitmq.pid"),
            }
        )
        return env

    def _command(self) -> list[str]:
        return [self.binary_path()]

    def _probe(self) -> bool:
        if not self._amqp_handshake():
            return False
        # Listeners open a few ms before the boot finishes; confirm with the node itself.
        return self.rabbitmqctl("await_startup", "--timeout", "30", timeout=45).returncode == 0

    def _amqp_handshake(self) -> bool:
        """Check that the AMQP listener answers the protocol header with Connection.Start."""
        with socket.create_connection((self.host, self.port), timeout=2.0) as sock:
            sock.settimeout(5.0)
            sock.sendall(_AMQP_HEADER)
            data = b""
            while len(data) < 11:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                data += chunk
            # Method frame (type 1) carrying connection.start (class 10, method 10).
            return data[0] == 1 and data[7:11] == b"\x00\x0a\x00\x0a"

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n <node> ARGS`` against this node.

        Args:
            *args: Command and arguments, e.g. ``"list_queues"``.
            timeout: Seconds before the call is abandoned.

        Returns:
            The completed process (stdout and stderr captured as text).
        """
        env = self._env()
        cli_port = find_free_port(self.host)
        env["RABBITMQ_CTL_DIST_PORT_MIN"] = str(cli_port)
        env["RABBITMQ_CTL_DIST_PORT_MAX"] = str(cli_port)
        return subprocess.run(
            [self._script("rabbitmqctl"), "-n", self.nodename, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=self.tmpdir,
            timeout=timeout,
            check=False,
        )

    def set_alarm(self, kind: str, on: bool) -> None:
        """Raise or clear one of the node's resource alarms (RabbitMQ then blocks publishers).

        ``"memory"`` sets the memory high watermark to a millionth of RAM (always exceeded)
        or back to RabbitMQ's default of 0.4; ``"disk"`` sets the free disk limit to an
        exabyte or back to the rig's 50 MB. Both take effect at once.

        Args:
            kind: ``"memory"`` or ``"disk"``.
            on: True raises the alarm, False clears it.

        Raises:
            ValueError: Another ``kind``.
            RuntimeError: ``rabbitmqctl`` failed.
        """
        if kind == "memory":
            args = ("set_vm_memory_high_watermark", "0.000001" if on else "0.4")
        elif kind == "disk":
            args = ("set_disk_free_limit", str(10**18) if on else "50MB")
        else:
            raise ValueError(f"kind must be 'memory' or 'disk', not {kind!r}")
        done = self.rabbitmqctl(*args)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {args[0]} failed: {done.stderr}")

    @contextlib.contextmanager
    def alarm(self, kind: str = "memory") -> Iterator[None]:
        """``with server.alarm("disk"): ...`` raises a resource alarm for the block."""
        self.set_alarm(kind, True)
        try:
            yield
        finally:
            self.set_alarm(kind, False)

    def _before_terminate(self) -> None:
        self.rabbitmqctl("stop", timeout=self.stop_timeout)

    def _after_stop(self) -> None:
        if self.epmd_port is None:
            return
        port = str(self.epmd_port)
        with contextlib.suppress(Exception):
            epmd = find_binary("epmd")
            env = dict(os.environ, ERL_EPMD_PORT=port)
            subprocess.run(
                [epmd, "-kill"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=env,
                timeout=10,
                check=False,
            )
        for pid in _pids_with_env("epmd", "ERL_EPMD_PORT", port):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- Faktory


class FaktoryServer(ManagedServer):
    """A private Faktory server (which runs its own ``redis-server`` child).

    Args:
        password: If set, exported as ``FAKTORY_PASSWORD`` and included in :attr:`url`.
            Required by Faktory when ``environment`` is not ``"development"``.
        environment: Faktory environment (``-e``).
        **kwargs: See :class:`ManagedServer`.
    """

    binary_name = "faktory"
    kind = "faktory"
    default_startup_timeout = 30.0

    def __init__(
        self,
        *,
        password: str | None = None,
        environment: str = "development",
        port: int | None = None,
        web_port: int | None = None,
        startup_timeout: float | None = None,
        stop_timeout: float = 15.0,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            port=port,
            startup_timeout=startup_timeout,
            stop_timeout=stop_timeout,
            base_dir=base_dir,
        )
        self.password = password
        self.environment = environment
        self._requested_web_port = web_port
        self.web_port: int | None = web_port

    @property
    def url(self) -> str:
        """``faktory://[:password@]127.0.0.1:PORT``."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"faktory://{auth}{self.host}:{self.port}"

    @property
    def web_url(self) -> str:
        """URL of the Faktory Web UI."""
        if self.web_port is None:
            raise RuntimeError("faktory server has not been started")
        return f"http://{self.host}:{self.web_port}"

    @property
    def data_dir(self) -> Path:
        """Faktory storage directory (``-d``), kept across :meth:`restart`."""
        return self.tmpdir / "data"

    def binary_version(self) -> str:
        return _version_from_output([self.binary_path(), "-v"], r"Faktory\s+v?(\d[\w.\-+]*)")

    def _check_binaries(self) -> None:
        self.binary_path()
        find_binary("redis-server")  # Faktory runs its own redis-server from PATH

    def _allocate_ports(self) -> None:
        taken = {self._port, self.web_port}
        fresh = iter(p for p in _free_ports(3, self.host) if p not in taken)
        if self._port is None:
            self._port = next(fresh)
        if self.web_port is None:
            self.web_port = next(fresh)

    def _release_ports(self) -> None:
        self.web_port = self._requested_web_port

    def _ports(self) -> list[int]:
        assert self.web_port is not None
        return [self.port, self.web_port]

    def _prepare(self) -> None:
        self.data_dir.mkdir(exist_ok=True)
        (self.tmpdir / "conf" / "conf.d").mkdir(parents=True, exist_ok=True)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("FAKTORY_PASSWORD", None)
        env.pop("FAKTORY_ENV", None)
        env["HOME"] = str(self.tmpdir)
        # Faktory looks redis-server up on PATH; make sure the sbin dirs are there.
        redis_dir = os.path.dirname(find_binary("redis-server"))
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), redis_dir]).strip(os.pathsep)
        if self.password:
            env["FAKTORY_PASSWORD"] = self.password
        return env

    def _command(self) -> list[str]:
        return [
            self.binary_path(),
            "-b", f"{self.host}:{self.port}",
            "-w", f"{self.host}:{self.web_port}",
            "-d", str(self.data_dir),
            "-c", str(self.tmpdir / "conf"),
            "-e", self.environment,
            "-l", "info",
        ]  # fmt: skip

    def _probe(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=2.0) as sock:
            sock.settimeout(5.0)
            return _read_line(sock).startswith(b"+HI ")


def iter_running() -> Iterator[ManagedServer]:
    """Yield the servers started by this process that are still running."""
    with _RUNNING_LOCK:
        servers = list(_RUNNING)
    yield from servers
