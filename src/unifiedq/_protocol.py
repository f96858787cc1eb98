"""The two faces every queue offers: :class:`Queue` (blocking) and :class:`AsyncQueue`.

Both are ``typing.Protocol`` classes with the same verbs. Drivers implement the face their
library has natively by subclassing :class:`~unifiedq.QueueBase` or
:class:`~unifiedq.AsyncQueueBase`; ``connect()`` / ``connect_async()`` bridge the other one.

Delivery semantics: ``dequeue()`` hands out a *leased* job. ``ack()`` settles it;
``nack(requeue=True)`` returns it; ``nack(requeue=False)`` dead-letters it (or drops it where
the backend has no dead set). A job whose consumer never settles it comes back after its lease
(drivers with ``Capability.ACK``: at-least-once). Drivers without ``ACK`` remove a job when it
is dequeued (at-most-once).
"""

from __future__ import annotations

from ._async.protocol import AsyncQueue
from ._job import Deadline, Delay
from ._sync.protocol import Queue

__all__ = ["AsyncQueue", "Deadline", "Delay", "Queue"]
