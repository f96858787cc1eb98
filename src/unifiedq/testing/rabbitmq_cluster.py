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
import dataclasses
import math
import multiprocessing
import os
import secrets
import signal
import subprocess
import threading
import time
from types import TracebackType
from typing import Any, Self

from .._connect import connect
from .servers import (
    RabbitMQServer,
    ServerStartError,
    _free_ports,
    _pids_with_env,
    find_binary,
)

__all__ = ["FailoverLedger", "RabbitMQCluster", "RabbitMQClusterNode", "failover_run"]


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


# -- a failover run with an exact ledger (used by tests/test_amqp_cluster.py and
# benchmarks/amqp_cluster_failover.py) ---------------------------------------------------------
@dataclasses.dataclass
class FailoverLedger:
    """What a :func:`failover_run` saw.

    Attributes:
        confirmed: Bodies whose ``enqueue`` returned (the broker confirmed them).
        uncertain: Bodies whose ``enqueue`` raised (they may or may not be queued).
        consumed: Every body a consumer dequeued, duplicates included.
        lost: Confirmed bodies no consumer ever saw (must be empty).
        duplicates: Deliveries beyond the first of a body (at-least-once allows them).
        produce_gap: Seconds from the kill to the first confirmed enqueue after it (the
            slowest producer).
        consume_gap: Seconds from the kill to the first dequeue after it (the slowest
            consumer).
        errors: Errors producers and consumers saw, by type name.
        seconds: Length of the whole run.
    """

    confirmed: set[bytes]
    uncertain: set[bytes]
    consumed: list[bytes]
    lost: set[bytes]
    duplicates: int
    produce_gap: float
    consume_gap: float
    errors: dict[str, int]
    seconds: float


def _produce(url: str, proc: int, jobs: int, pace: float, out: Any) -> None:
    q = connect(url)
    events: list[tuple[float, bytes, bool]] = []
    errors: dict[str, int] = {}
    for i in range(jobs):
        body = b"p%d-%d" % (proc, i)
        try:
            q.enqueue(body)
        except Exception as exc:  # the ledger records every failure
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            events.append((time.time(), body, False))
        else:
            events.append((time.time(), body, True))
        time.sleep(pace)
    with contextlib.suppress(Exception):
        q.close()
    out.put(("produced", events, errors))


def _consume(url: str, stop: Any, out: Any) -> None:
    q = connect(url)
    seen: list[tuple[float, bytes]] = []
    errors: dict[str, int] = {}
    idle_since: float | None = None
    while True:
        try:
            jobs = q.dequeue_many(50, timeout=0.5)
        except Exception as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            time.sleep(0.1)
            continue
        now = time.time()
        seen += [(now, j.body) for j in jobs]
        if jobs:
            idle_since = None
            try:
                q.ack_many(jobs)
            except Exception as exc:  # redelivered later: a duplicate
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        elif stop.is_set():
            idle_since = idle_since or now
            if now - idle_since >= 3.0:  # producers done, nothing for 3 s: drained
                break
    with contextlib.suppress(Exception):
        q.close()
    out.put(("consumed", seen, errors))


def failover_run(cluster: RabbitMQCluster, *, queue: str, producers: int = 2,
                 consumers: int = 2, jobs: int = 1000, pace: float = 0.002,
                 kill_after: float = 2.0, kill: int = 0, options: str = "") -> FailoverLedger:
    """Producers and consumers in processes on a quorum queue; SIGKILL one node mid-run.

    Every client starts on ``nodes[kill]`` (so the kill drops all their connections and
    the queue's leader) and has the other nodes as ``alternates``. Producers enqueue
    ``jobs`` jobs each, one confirmed publish at a time, ``pace`` seconds apart; consumers
    dequeue in batches and ack until the producers are done and the queue stays empty.

    Args:
        cluster: A started cluster.
        queue: The queue's name (declared ``queue_type=quorum``).
        producers: Producer processes.
        consumers: Consumer processes.
        jobs: Jobs per producer.
        pace: Seconds a producer sleeps between publishes.
        kill_after: Seconds after the start that ``nodes[kill]`` is killed (SIGKILL).
        kill: Index of the node to kill.
        options: Extra URL options (``&k=v...``).

    Returns:
        The ledger.
    """
    node = cluster.nodes[kill]
    url = (f"{node.url}?queue={queue}&queue_type=quorum&reconnect_timeout=60"
           f"&alternates={cluster.alternates(kill)}{options}")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    stop = ctx.Event()
    connect(url).close()  # nothing declared yet: the first publish declares
    started = time.time()
    procs = [ctx.Process(target=_consume, args=(url, stop, out)) for _ in range(consumers)]
    procs += [ctx.Process(target=_produce, args=(url, p, jobs, pace, out))
              for p in range(producers)]
    for p in procs:
        p.start()
    time.sleep(kill_after)
    killed_at = time.time()
    node.kill()
    results: list[tuple[str, Any, dict[str, int]]] = []
    for _ in range(producers):
        results.append(out.get(timeout=600))
    stop.set()
    for _ in range(consumers):
        results.append(out.get(timeout=600))
    for p in procs:
        p.join(timeout=30)
    confirmed: set[bytes] = set()
    uncertain: set[bytes] = set()
    consumed: list[bytes] = []
    errors: dict[str, int] = {}
    produce_gap = consume_gap = 0.0
    for kind, events, errs in results:
        for k, v in errs.items():
            errors[f"{kind}:{k}"] = errors.get(f"{kind}:{k}", 0) + v
        if kind == "produced":
            confirmed |= {b for _, b, ok in events if ok}
            uncertain |= {b for _, b, ok in events if not ok}
            after = [t for t, _, ok in events if ok and t > killed_at]
            produce_gap = max(produce_gap, (after[0] - killed_at) if after else math.inf)
        else:
            consumed += [b for _, b in events]
            after = [t for t, _ in events if t > killed_at]
            consume_gap = max(consume_gap, (after[0] - killed_at) if after else math.inf)
    return FailoverLedger(
        confirmed=confirmed, uncertain=uncertain, consumed=consumed,
        lost=confirmed - set(consumed), duplicates=len(consumed) - len(set(consumed)),
        produce_gap=produce_gap, consume_gap=consume_gap, errors=errors,
        seconds=time.time() - started)
