"""Lock-free multi-process ring in POSIX shared memory (Vyukov's bounded MPMC queue).

Features: a bounded FIFO shared by every process of one user on one machine; lock-free
enqueue and dequeue with one compare-and-swap each (through ``atomics``/patomic); batches that
share the bookkeeping; blocking dequeue that spins briefly and then backs off to short sleeps;
a native asyncio face that awaits instead of blocking the loop; best-effort ``peek``; an
overflow policy for a full ring (``block`` with a timeout, ``reject`` or ``drop_oldest``); and
crash repair: a process SIGKILLed in the middle of an operation loses at most the one job it was
moving, and never wedges the ring for the others.

Delivery is at-most-once: a dequeued job is gone (no ACK, leases, delays, priorities, custom ids
or headers). Jobs live as long as the segment: closing handles keeps them; :func:`unlink` (or
:meth:`ShmQueue.unlink`) removes the segment, and a reboot clears it (not DURABLE).

Connection string::

    shm://<name>?capacity=4096&slot_size=256&overflow=block&enqueue_timeout=10

``name`` is the POSIX shared-memory object (``/dev/shm/<name>`` on Linux): letters, digits,
``.``, ``_`` and ``-``. The first handle that touches the queue creates the segment with the
given ``capacity`` (jobs) and ``slot_size`` (largest body, bytes); later handles attach and must
ask for the same layout, or get :class:`~unifiedq.InvalidURL` naming both.

See ``docs/drivers/shm.md`` for the segment layout, the algorithm and the crash story.
"""

from __future__ import annotations

import sys

# The ``X as X`` names (segment layout, /proc reader) are for tests and tools that inspect a ring.
from ._async.queue import AsyncShmQueue
from ._core import _OWNERS as _OWNERS
from ._core import _SLOTS_OFF as _SLOTS_OFF
from ._core import _TMASK as _TMASK
from ._core import _W_HEAD as _W_HEAD
from ._core import _W_INIT as _W_INIT
from ._core import _W_OWNER0 as _W_OWNER0
from ._core import _W_TAIL as _W_TAIL
from ._core import CapacityExceeded, EnqueueTimeout, ShmOptions, exists, unlink
from ._core import _proc_stat as _proc_stat
from ._sync.queue import ShmQueue

__all__ = [
    "AsyncShmQueue",
    "CapacityExceeded",
    "EnqueueTimeout",
    "ShmOptions",
    "ShmQueue",
    "exists",
    "unlink",
]

sync_class = ShmQueue
async_class = AsyncShmQueue

if sys.platform == "win32":  # pragma: no cover
    sync_class = None  # type: ignore[assignment]
    async_class = None  # type: ignore[assignment]
