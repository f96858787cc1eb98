"""The redis-py connection layer of each face, under the names the sync generator swaps.

The asyncio source ``_async/queue.py`` uses ``AsyncWire`` and ``disconnect_async`` from here;
``scripts/generate_sync.py`` renames them to ``SyncWire`` and ``disconnect`` in the generated
``_sync/queue.py``. The driver keeps its own small pool of redis-py *connections* (not
clients), so that every byte it sends and every reply it waits for is bounded by the verb's
deadline and nothing retries behind its back. The one real difference between the faces is
how a read is bounded:

* asyncio: one ``asyncio.timeout`` around the whole round trip (connect, write, every reply).
  The connections' own ``socket_timeout`` is off: redis.asyncio would otherwise start a
  timeout per reply (and a task per write), which costs more than the rest of a batch;
* redis-py (blocking): the socket's timeout is set when it connects (bounding writes) and
  each read takes what is left of the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis
from redis import asyncio as aredis
from redis.backoff import NoBackoff

__all__ = ["AsyncWire", "SyncWire", "aredis", "disconnect", "disconnect_async", "redis"]


async def disconnect_async(conn: Any) -> None:
    """Drop a connection that may be out of step, without waiting for the close handshake."""
    await conn.disconnect(nowait=True)


def disconnect(conn: Any) -> None:
    """Drop a connection that may be out of step."""
    conn.disconnect()


@contextlib.asynccontextmanager
async def _within(timeout: float) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError as exc:  # the block was cancelled; its connection dropped itself
        raise redis.exceptions.TimeoutError(f"no reply within {timeout:.3f} s") from exc


class AsyncWire:
    """Bounded I/O on one redis.asyncio connection."""

    @staticmethod
    def connection(kwargs: dict[str, Any], ssl: bool) -> Any:
        """A new, unconnected connection that never retries on its own."""
        cls = aredis.SSLConnection if ssl else aredis.Connection
        kw = {**kwargs, "socket_timeout": None}  # within() bounds each round trip
        return cls(**kw, retry=aredis.retry.Retry(NoBackoff(), 0))

    @staticmethod
    def within(timeout: float) -> contextlib.AbstractAsyncContextManager[None]:
        """Bound a round trip: redis' TimeoutError once ``timeout`` seconds have passed."""
        return _within(timeout)

    @staticmethod
    async def connect(conn: Any, timeout: float) -> None:
        """Connect (TCP/TLS, handshake) unless connected."""
        conn.socket_connect_timeout = timeout
        await conn.connect()

    @staticmethod
    async def send(conn: Any, data: bytes, timeout: float) -> None:
        """Write pre-packed commands (bounded by :meth:`within`)."""
        await conn.send_packed_command([data], check_health=False)

    @staticmethod
    async def read(conn: Any, timeout: float) -> Any:
        """Read one reply (bounded by :meth:`within`)."""
        return await conn.read_response()


class SyncWire:
    """Bounded I/O on one redis-py (blocking) connection."""

    @staticmethod
    def within(timeout: float) -> contextlib.AbstractContextManager[None]:
        """Nothing to do: each step below is bounded by its own socket timeout."""
        return contextlib.nullcontext()

    @staticmethod
    def connection(kwargs: dict[str, Any], ssl: bool) -> Any:
        """A new, unconnected connection that never retries on its own."""
        cls = redis.SSLConnection if ssl else redis.Connection
        return cls(**kwargs, retry=redis.retry.Retry(NoBackoff(), 0))

    @staticmethod
    def connect(conn: Any, timeout: float) -> None:
        """Connect (TCP/TLS, redis-py's handshake) unless connected; each step within ``timeout``.

        The socket keeps this timeout for writes: a verb's first write therefore ends within
        its deadline.
        """
        conn.socket_connect_timeout = timeout
        conn.socket_timeout = timeout
        conn.connect()

    @staticmethod
    def send(conn: Any, data: bytes, timeout: float) -> None:
        """Write pre-packed commands (bounded by the socket timeout set at connect)."""
        conn.send_packed_command([data], check_health=False)

    @staticmethod
    def read(conn: Any, timeout: float) -> Any:
        """Read one reply within ``timeout`` seconds (redis' TimeoutError after it)."""
        return conn.read_response(timeout=timeout)
