"""The redis-py client module of each face, under the names the sync generator swaps.

The asyncio source ``_async/queue.py`` imports ``aredis`` and ``disconnect_async`` from here;
``scripts/generate_sync.py`` renames them to ``redis`` and ``disconnect`` in the generated
``_sync/queue.py``. Everything else the two faces call on redis-py has the same name and
arguments, so these are the only client differences.
"""

from __future__ import annotations

import redis
from redis import asyncio as aredis

__all__ = ["aredis", "disconnect", "disconnect_async", "redis"]


async def disconnect_async(conn: aredis.connection.AbstractConnection) -> None:
    """Drop a connection that may be out of step, without waiting for the close handshake."""
    await conn.disconnect(nowait=True)


def disconnect(conn: redis.connection.AbstractConnection) -> None:
    """Drop a connection that may be out of step."""
    conn.disconnect()  # type: ignore[no-untyped-call]
