"""A Redis Cluster test rig: 3 masters and 3 replicas of ``redis-server`` on loopback.

Every node is a ``redis-server --cluster-enabled yes`` from the installed binary; the rig
joins them with ``redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`` (the
tool ships with the ``redis-tools``/``redis-server`` apt packages) and stops them all at the
end. ``cluster-node-timeout`` is 1 s by default, so killing a master promotes its replica in
about 2-3 s on this machine. See docs/drivers/redis.md, "Redis Cluster".

Example::

    with RedisClusterRig() as rig:
        q = unifiedq.connect(rig.url(queue="jobs"))
        ...
        rig.kill_master_of("jobs")   # SIGKILL the master of {jobs}'s slot, wait for promotion
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Callable
from typing import Self

from redis.crc import key_slot

from .redis_rig import RedisRig, wait_until
from .redis_rig import command as _command
from .redis_rig import info as _info
from .servers import LOOPBACK, RedisServer, ServerStartError, _free_ports, find_binary

__all__ = ["ClusterNode", "RedisClusterRig", "cluster_nodes"]


@dataclasses.dataclass(frozen=True)
class ClusterNode:
    """One line of ``CLUSTER NODES``."""

    id: str
    port: int
    flags: frozenset[str]
    master: str
    connected: bool
    slots: tuple[tuple[int, int], ...]

    def serves(self, slot: int) -> bool:
        """Whether this node is a live master holding ``slot``."""
        return ("master" in self.flags and "fail" not in self.flags
                and any(lo <= slot <= hi for lo, hi in self.slots))


def cluster_nodes(port: int) -> list[ClusterNode]:
    """``CLUSTER NODES`` of the node on ``port``, parsed."""
    text = _command(port, "CLUSTER", "NODES").decode(errors="replace")
    out: list[ClusterNode] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        addr = parts[1].split("@")[0]
        slots: list[tuple[int, int]] = []
        for s in parts[8:]:
            if s.startswith("["):  # a slot being migrated
                continue
            lo, _, hi = s.partition("-")
            slots.append((int(lo), int(hi or lo)))
        out.append(ClusterNode(parts[0], int(addr.rpartition(":")[2] or 0),
                               frozenset(parts[2].split(",")), parts[3],
                               parts[7] == "connected", tuple(slots)))
    return out


class RedisClusterRig(RedisRig):
    """``masters`` masters with ``replicas`` replicas each, all on loopback.

    Args:
        masters: Number of masters (Redis Cluster needs at least 3).
        replicas: Replicas per master (>= 1 for a failover).
        node_timeout: ``cluster-node-timeout`` in seconds: how long a master may be silent
            before its replicas take over.
    """

    def __init__(self, *, masters: int = 3, replicas: int = 1, node_timeout: float = 1.0) -> None:
        self._masters = masters
        self._replicas = replicas
        self._node_timeout = node_timeout
        #: Every node started (killed ones stay listed).
        self.nodes: list[RedisServer] = []

    def start(self) -> Self:
        """Start every node, create the cluster and wait until every node reports it ok.

        Raises:
            ServerStartError: A node did not start, or the cluster did not form in time.
        """
        n = self._masters * (1 + self._replicas)
        ports = _free_ports(2 * n)
        for i in range(n):
            # The bus port is chosen too: the default (port + 10000) may be taken or > 65535.
            node = RedisServer(port=ports[2 * i], extra_args=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(int(self._node_timeout * 1000)),
                "--cluster-port", str(ports[2 * i + 1]),
                "--repl-diskless-sync-delay", "0",  # replicas sync at once, not after 5 s
            ])
            self.nodes.append(node)
            node.start()
        cli = find_binary("redis-cli")
        argv = [cli, "--cluster", "create", *(f"{LOOPBACK}:{s.port}" for s in self.nodes),
                "--cluster-replicas", str(self._replicas), "--cluster-yes"]
        proc = subprocess.run(argv, capture_output=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise ServerStartError(f"redis-cli --cluster create failed: "
                                   f"{proc.stdout.decode(errors='replace')[-2000:]}"
                                   f"{proc.stderr.decode(errors='replace')[-2000:]}")
        _wait(self._healthy, 60.0, "the cluster to form")
        return self

    def _healthy(self, expect: int | None = None) -> bool:
        live = [s for s in self.nodes if s.is_running]
        for s in live:
            if _info(s.port, "cluster").get("cluster_enabled") != "1":
                return False
            state = _command(s.port, "CLUSTER", "INFO").decode()
            if "cluster_state:ok" not in state:
                return False
            view = cluster_nodes(s.port)
            if sum(1 for v in view if v.connected or "myself" in v.flags) < len(live):
                return False
            masters = [v for v in view if "master" in v.flags and "fail" not in v.flags
                       and v.slots]
            if len(masters) != (expect or self._masters):
                return False
            # A replica that never synced cannot take over: wait for every link.
            repl = _info(s.port, "replication")
            if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                return False
        return True

    @property
    def seeds(self) -> str:
        """``host:port,host:port,...`` of every node started (what a URL lists)."""
        return ",".join(f"{s.host}:{s.port}" for s in self.nodes)

    def url(self, **query: str) -> str:
        """A ``redis+cluster://`` URL for the rig, with ``query`` options."""
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"redis+cluster://{self.seeds}/0" + (f"?{qs}" if qs else "")

    def node_of(self, key: str) -> RedisServer:
        """The running master that serves ``key``'s slot now."""
        slot = key_slot(key.encode())
        for s in self.nodes:
            if not s.is_running:
                continue
            for v in cluster_nodes(s.port):
                if v.serves(slot):
                    return next(n for n in self.nodes if n.port == v.port)
            break
        raise ServerStartError(f"no running master serves slot {slot} of {key!r}")

    def is_master(self, port: int) -> bool:
        """Whether the running node on ``port`` is a master holding slots now."""
        for s in self.nodes:
            if s.is_running:
                return any(v.port == port and "master" in v.flags and v.slots
                           for v in cluster_nodes(s.port))
        return False

    def replicas_of(self, node: RedisServer) -> list[RedisServer]:
        """The running replicas of master ``node``."""
        view = cluster_nodes(node.port)
        me = next(v.id for v in view if "myself" in v.flags)
        ports = {v.port for v in view if v.master == me}
        return [n for n in self.nodes if n.port in ports and n.is_running]

    def kill_master_of(self, queue: str, *, timeout: float = 30.0,
                       after_kill: Callable[[], None] | None = None,
                       ) -> tuple[RedisServer, float]:
        """SIGKILL the master of asynq queue ``queue``'s slot; wait until a replica serves it.

        Args:
            queue: The asynq queue name (its keys' hash tag is ``{queue}``).
            timeout: Seconds to wait for the promotion.
            after_kill: Called right after the kill (e.g. to thaw a replica frozen to make
                it lag behind its master).

        Returns:
            The killed node and the seconds from the kill until a promoted replica took a
            write to that slot.

        Raises:
            ServerStartError: No replica took over within ``timeout``.
        """
        key = f"asynq:{{{queue}}}:uq:probe"
        old = self.node_of(key)
        old.kill()
        t0 = time.monotonic()
        if after_kill is not None:
            after_kill()

        def promoted() -> bool:
            node = self.node_of(key)
            if node is old:
                return False
            return _command(node.port, "SET", key, "1").startswith(b"+OK")

        _wait(promoted, timeout, "a replica to be promoted")
        return old, time.monotonic() - t0

    def rejoin(self, node: RedisServer, *, timeout: float = 30.0) -> float:
        """Restart a killed node: it rejoins as a replica of the master that replaced it.

        Its ``nodes.conf`` survives in its data directory; its data does not (no persistence),
        so it resyncs from its new master.

        Returns:
            Seconds until every node reports the cluster ok with all replica links up.

        Raises:
            ServerStartError: The cluster did not become healthy within ``timeout``.
        """
        t0 = time.monotonic()
        node.restart()
        _wait(self._healthy, timeout, "the node to rejoin as a replica")
        return time.monotonic() - t0

    def processes(self) -> list[RedisServer]:
        """Every node started (killed ones included)."""
        return self.nodes


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    # A node may be mid-restart (OSError), a slot without a master yet (StopIteration).
    wait_until(cond, timeout, what, ignore=(OSError, ServerStartError, StopIteration))
