"""A RabbitMQ cluster of private nodes on loopback, for quorum-queue and failover tests.

:class:`RabbitMQCluster` starts ``size`` (default 3) ``rabbitmq-server`` nodes from the
installed binaries, each a :class:`~unifiedq.testing.servers.RabbitMQServer` with its own
node name (``uq<amqp port>@localhost``), AMQP and distribution ports and data directory;
they share one Erlang cookie and one ``epmd`` (on a private port, so nothing else on the
machine is touched), and the second and later nodes join the first with
``rabbitmqctl join_cluster``. The nodes boot in parallel (about 10-20 s on two cores) and
the joins take a few seconds each; each node needs about 100-150 MB of memory.

Example::

    with RabbitMQCluster() as cluster:
        url = cluster.url + "?queue=jobs&queue_type=quorum&alternates=" + cluster.alternates(0)
        ...
        cluster.nodes[0].kill()      # SIGKILL: the others elect new quorum leaders
        cluster.nodes[0].restart()   # it comes back as a member, with its data
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import threading
import time
from types import TracebackType
from typing import Self

from .servers import (
    RabbitMQServer,
    ServerStartError,
    _free_ports,
    _pids_with_env,
    find_binary,
)

__all__ = ["RabbitMQCluster", "RabbitMQClusterNode"]


class RabbitMQClusterNode(RabbitMQServer):
    """One node of a :class:`RabbitMQCluster`: a shared cookie and a shared ``epmd``.

    Args:
        cookie: The cluster's Erlang cookie.
        epmd_port: The port of the cluster's ``epmd`` (every node must register there to
            find the others).
        **kwargs: See :class:`~unifiedq.testing.servers.RabbitMQServer`.
    """

    def __init__(self, *, cookie: str, epmd_port: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.cookie = cookie
        self._shared_epmd = epmd_port
        self.epmd_port = epmd_port

    def _allocate_ports(self) -> None:
        self.epmd_port = self._shared_epmd
        super()._allocate_ports()

    def _release_ports(self) -> None:
        super()._release_ports()
        self.epmd_port = self._shared_epmd

    def _prepare(self) -> None:
        super()._prepare()
        cookie = self.tmpdir / ".erlang.cookie"  # HOME is the temp dir: server and CLI read it
        if not cookie.exists():
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)

    def _after_stop(self) -> None:
        pass  # the epmd is the cluster's: the other nodes still need it


class RabbitMQCluster:
    """``size`` RabbitMQ nodes on loopback, clustered (see the module docstring).

    Args:
        size: Number of nodes (>= 1).
        config: Extra ``rabbitmq.conf`` lines for every node.
        startup_timeout: Seconds each node may take to boot.
        stop_timeout: Seconds each node may take to stop.

    Attributes:
        nodes: The nodes, the first being the one the others joined.
        boot_seconds: Seconds the last :meth:`start` took (boot and joins).
    """

    def __init__(self, size: int = 3, *, config: str = "", startup_timeout: float = 120.0,
                 stop_timeout: float = 30.0) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, not {size}")
        self.size = size
        self.config = config
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.nodes: list[RabbitMQClusterNode] = []
        self.boot_seconds: float | None = None
        self._epmd_port: int | None = None

    # -- URLs ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The first node's URL, ``amqp://guest:guest@127.0.0.1:PORT//``."""
        return self.nodes[0].url

    def urls(self) -> list[str]:
        """Every node's URL, in order."""
        return [n.url for n in self.nodes]

    def alternates(self, first: int = 0) -> str:
        """The ``alternates`` option value naming every node but ``nodes[first]``."""
        return ",".join(f"{n.host}:{n.port}" for i, n in enumerate(self.nodes) if i != first)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Self:
        """Start every node (in parallel) and join them into one cluster.

        Raises:
            ServerBinaryMissing: ``rabbitmq-server``, ``rabbitmqctl`` or ``epmd`` is missing.
            ServerStartError: A node does not boot or does not join.
        """
        started = time.monotonic()
        self._epmd_port = _free_ports(1)[0]
        self._start_epmd()
        cookie = secrets.token_hex(16).upper()
        self.nodes = [
            RabbitMQClusterNode(cookie=cookie, epmd_port=self._epmd_port, config=self.config,
                                startup_timeout=self.startup_timeout,
                                stop_timeout=self.stop_timeout)
            for _ in range(self.size)
        ]
        try:
            errors: list[BaseException] = []

            def boot(node: RabbitMQClusterNode) -> None:
                try:
                    node.start()
                except BaseException as exc:  # reported below, on the caller's thread
                    errors.append(exc)

            threads = [threading.Thread(target=boot, args=(n,)) for n in self.nodes]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            for node in self.nodes[1:]:
                self._join(node, self.nodes[0])
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - started
        return self

    def _start_epmd(self) -> None:
        env = dict(os.environ, ERL_EPMD_PORT=str(self._epmd_port), ERL_EPMD_ADDRESS="127.0.0.1")
        subprocess.run([find_binary("epmd"), "-daemon"], env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=10, check=True)

    def _join(self, node: RabbitMQClusterNode, seed: RabbitMQClusterNode) -> None:
        for args in (("stop_app",), ("join_cluster", seed.nodename), ("start_app",),
                     ("await_startup", "--timeout", "60")):
            done = node.rabbitmqctl(*args, timeout=90)
            if done.returncode != 0:
                raise ServerStartError(
                    f"rabbitmqctl {' '.join(args)} on {node.nodename} failed: "
                    f"{done.stdout}{done.stderr}")

    def running_nodes(self, via: int = 0) -> list[str]:
        """The names of the running cluster members, as node ``via`` sees them."""
        done = self.nodes[via].rabbitmqctl("eval", "rabbit_nodes:all_running().")
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl eval failed: {done.stderr}")
        return sorted(part.strip(" []'\n") for part in done.stdout.split(",") if "@" in part)

    def stop(self) -> None:
        """Stop every node, delete their data, and end the cluster's ``epmd``."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
        if self._epmd_port is not None:
            port = str(self._epmd_port)
            with contextlib.suppress(Exception):
                subprocess.run([find_binary("epmd"), "-kill"], stdin=subprocess.DEVNULL,
                               env=dict(os.environ, ERL_EPMD_PORT=port), capture_output=True,
                               timeout=10, check=False)
            for pid in _pids_with_env("epmd", "ERL_EPMD_PORT", port):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            self._epmd_port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RabbitMQCluster {[n.nodename for n in self.nodes if n._port]}>"
