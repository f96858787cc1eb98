"""A Redis Sentinel test rig: one master, one replica and three Sentinels on loopback.

Every process is a ``redis-server`` from the installed binary (``redis-server --sentinel``
runs a Sentinel), started and stopped by the rig, so tests exercise the real failover:
kill the master and the Sentinels promote the replica (``down-after-milliseconds`` 1 s by
default, so a failover completes in about 2-4 s on this machine). See
docs/drivers/redis.md, "Redis Sentinel".

Example::

    with RedisSentinelRig() as rig:
        q = unifiedq.connect(rig.url(queue="jobs"))
        ...
        rig.fail_over()   # SIGKILL the master, wait until a Sentinel names the replica
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Self

from .redis_rig import RedisRig, info, wait_until
from .servers import (
    LOOPBACK,
    ManagedServer,
    RedisServer,
    ServerStartError,
    _read_line,
    _resp_command,
    _version_from_output,
)

__all__ = ["RedisSentinel", "RedisSentinelRig"]

MASTER_NAME = "uqmaster"


class RedisSentinel(ManagedServer):
    """One Sentinel (``redis-server sentinel.conf --sentinel``) watching ``master``.

    Args:
        master_port: The port of the master to monitor (on loopback).
        quorum: Sentinels that must agree the master is down.
        down_after: Seconds without a reply before a Sentinel thinks the master is down.
        failover_timeout: Sentinel's ``failover-timeout`` in seconds.
    """

    binary_name = "redis-server"
    kind = "redis-sentinel"
    default_startup_timeout = 30.0

    def __init__(self, master_port: int, *, quorum: int = 2, down_after: float = 1.0,
                 failover_timeout: float = 5.0) -> None:
        super().__init__()
        self.master_port = master_port
        self.quorum = quorum
        self.down_after = down_after
        self.failover_timeout = failover_timeout

    @property
    def url(self) -> str:
        """``LOOPBACK:PORT`` (a Sentinel address, as a redis+sentinel URL lists them)."""
        return f"{self.host}:{self.port}"

    def binary_version(self) -> str:
        return _version_from_output([self.binary_path(), "--version"], r"v=(\S+)")

    def _prepare(self) -> None:
        # A Sentinel rewrites its config file (known replicas, epochs): it must be writable.
        (self.tmpdir / "sentinel.conf").write_text(
            f"port {self.port}\n"
            f"bind {self.host}\n"
            f"dir {self.tmpdir}\n"
            f"sentinel monitor {MASTER_NAME} {LOOPBACK} {self.master_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {int(self.down_after * 1000)}\n"
            f"sentinel failover-timeout {MASTER_NAME} {int(self.failover_timeout * 1000)}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )

    def _command(self) -> list[str]:
        return [self.binary_path(), str(self.tmpdir / "sentinel.conf"), "--sentinel"]

    def _probe(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=2.0) as sock:
            sock.settimeout(2.0)
            sock.sendall(_resp_command("PING"))
            return _read_line(sock) == b"+PONG"

    def master_address(self) -> tuple[str, int] | None:
        """What this Sentinel names as the master now (None if it names none)."""
        with socket.create_connection((self.host, self.port), timeout=2.0) as sock:
            sock.settimeout(2.0)
            sock.sendall(_resp_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME))
            head = _read_line(sock)
            if not head.startswith(b"*2"):
                return None
            parts = []
            for _ in range(2):
                _read_line(sock)  # $len
                parts.append(_read_line(sock).decode())
            return parts[0], int(parts[1])


class RedisSentinelRig(RedisRig):
    """A master, ``replicas`` replicas and ``sentinels`` Sentinels, all on loopback.

    Args:
        replicas: Number of replicas of the master (>= 1 for a failover).
        sentinels: Number of Sentinels (quorum: a majority of them).
        down_after: Seconds of silence before a Sentinel thinks the master is down.
    """

    def __init__(self, *, replicas: int = 1, sentinels: int = 3, down_after: float = 1.0) -> None:
        self.master = RedisServer()
        self.replicas: list[RedisServer] = []
        self.sentinels: list[RedisSentinel] = []
        self._n_replicas = replicas
        self._n_sentinels = sentinels
        self._down_after = down_after
        #: Every data node ever started (the old master stays here after a failover).
        self.nodes: list[RedisServer] = []

    def start(self) -> Self:
        """Start every process and wait until the Sentinels see the replicas.

        Raises:
            ServerStartError: A process did not start, or replication did not come up.
        """
        self.master.start()
        self.nodes.append(self.master)
        for _ in range(self._n_replicas):
            r = RedisServer(extra_args=["--replicaof", LOOPBACK, str(self.master.port)])
            self.replicas.append(r.start())
            self.nodes.append(r)
        quorum = self._n_sentinels // 2 + 1
        for _ in range(self._n_sentinels):
            s = RedisSentinel(self.master.port, quorum=quorum, down_after=self._down_after)
            self.sentinels.append(s.start())
        wait_until(lambda: all(info(r.port, "replication").get("master_link_status") == "up"
                               for r in self.replicas), 30.0, "replicas to sync")
        wait_until(lambda: all(_sentinel_sees(s.port, len(self.replicas), len(self.sentinels))
                               for s in self.sentinels), 30.0, "Sentinels to find each other")
        return self

    def url(self, **query: str) -> str:
        """A ``redis+sentinel://`` URL for the rig, with ``query`` options."""
        hosts = ",".join(s.url for s in self.sentinels)
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0" + (f"?{qs}" if qs else "")

    def master_address(self) -> tuple[str, int] | None:
        """What the first answering Sentinel names as the master."""
        for s in self.sentinels:
            try:
                return s.master_address()
            except OSError:
                continue
        return None

    def current_master(self) -> RedisServer:
        """The data node the Sentinels name as master now."""
        addr = self.master_address()
        for n in self.nodes:
            if addr is not None and n.port == addr[1] and n.is_running:
                return n
        raise ServerStartError(f"no running node is the master the Sentinels name ({addr})")

    def fail_over(self, *, timeout: float = 30.0,
                  after_kill: Callable[[], None] | None = None) -> tuple[RedisServer, float]:
        """SIGKILL the current master; wait until a Sentinel names another and it accepts writes.

        Args:
            timeout: Seconds to wait for the promotion.
            after_kill: Called right after the kill (e.g. to thaw a replica frozen to make it
                lag behind the master).

        Returns:
            The killed node and the seconds from the kill until the new master took a write.

        Raises:
            ServerStartError: No new master within ``timeout``.
        """
        old = self.current_master()
        old.kill()
        t0 = time.monotonic()
        if after_kill is not None:
            after_kill()

        def promoted() -> bool:
            addr = self.master_address()
            if addr is None or addr[1] == old.port:
                return False
            return info(addr[1], "replication").get("role") == "master"

        wait_until(promoted, timeout, "a replica to be promoted")
        took = time.monotonic() - t0
        # Every Sentinel must agree before anything else happens: one with the old view could
        # take the old master back as master when it restarts (empty, without persistence)
        # and make the promoted node resync from it, wiping the data (Redis documents this).
        new = self.master_address()
        wait_until(lambda: all(s.master_address() == new for s in self.sentinels), timeout,
                   "every Sentinel to name the new master")
        return old, took

    def rejoin(self, old: RedisServer, *, timeout: float = 30.0) -> None:
        """Restart a killed former master as a replica of the current master.

        It comes back with ``--replicaof`` the new master, as an operator must restart a master
        without persistence: were it to come back as an (empty) master, a Sentinel could make
        the promoted node resync from it.

        Raises:
            ServerStartError: It did not come up, or did not finish syncing within ``timeout``.
        """
        master = self.current_master()
        if "--replicaof" in old.extra_args:
            i = old.extra_args.index("--replicaof")
            del old.extra_args[i:i + 3]
        old.extra_args += ["--replicaof", LOOPBACK, str(master.port)]
        old.restart()
        wait_until(lambda: info(old.port, "replication").get("master_link_status") == "up",
                   timeout, "the former master to sync as a replica")
        if old not in self.replicas:
            self.replicas.append(old)

    def processes(self) -> list[ManagedServer]:
        """The Sentinels first (so none starts a failover while the data nodes stop)."""
        return [*self.sentinels, *self.nodes]


def _sentinel_sees(port: int, replicas: int, sentinels: int) -> bool:
    line = info(port, "sentinel").get("master0", "")
    return (f"slaves={replicas}" in line and f"sentinels={sentinels}" in line
            and "status=ok" in line)
