"""What the multi-process Redis rigs share (``RedisSentinelRig``, ``RedisClusterRig``).

Plain-socket admin commands to loopback nodes (independent of the driver under test, so a rig
can check a node the driver cannot reach), a bounded wait, and the context-manager lifecycle.
"""

from __future__ import annotations

import abc
import socket
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Self

from .servers import LOOPBACK, ManagedServer, ServerStartError, _read_line, _resp_command

__all__ = ["RedisRig", "command", "info", "wait_until"]


def command(port: int, *args: str) -> bytes:
    """One command to a loopback Redis or Sentinel; the raw reply (bulk body or status line).

    Raises:
        OSError: The node is not reachable within 2 s.
    """
    with socket.create_connection((LOOPBACK, port), timeout=2.0) as sock:
        sock.settimeout(2.0)
        sock.sendall(_resp_command(*args))
        head = _read_line(sock)
        if not head.startswith(b"$"):
            return head
        size = int(head[1:])
        buf = b""
        while len(buf) < size + 2:
            chunk = sock.recv(size + 2 - len(buf))
            if not chunk:
                break
            buf += chunk
        return buf[:size]


def info(port: int, section: str) -> dict[str, str]:
    """``INFO <section>`` of a loopback node as a dict of its ``key:value`` lines."""
    text = command(port, "INFO", section).decode(errors="replace")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def wait_until(cond: Callable[[], bool], timeout: float, what: str,
               ignore: tuple[type[BaseException], ...] = (OSError,)) -> None:
    """Poll ``cond`` every 0.1 s until it is true (exceptions in ``ignore`` count as false).

    Raises:
        ServerStartError: Not true within ``timeout`` seconds (the message names ``what``).
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return
        except ignore:
            pass
        time.sleep(0.1)
    raise ServerStartError(f"timed out after {timeout} s waiting for {what}")


class RedisRig(abc.ABC):
    """A group of server processes started and stopped together (``with Rig() as rig:``)."""

    @abc.abstractmethod
    def start(self) -> Self:
        """Start every process and wait until the group is ready."""

    @abc.abstractmethod
    def processes(self) -> Iterable[ManagedServer]:
        """Every process the rig started (stopped in this order)."""

    def stop(self) -> None:
        """Stop every process the rig started."""
        for p in self.processes():
            p.stop()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
