"""Base classes for drivers: argument checking, capability gates and lifecycle, written once.

A driver subclasses :class:`QueueBase` (blocking) or :class:`AsyncQueueBase` (asyncio) and
implements the underscore methods (``_enqueue``, ``_dequeue``, ...). The public verbs validate
every argument and check capabilities (in :class:`~unifiedq._checks.QueueChecks`) *before*
calling the driver, so bad input never reaches a backend and every driver reports it the same
way. ``AsyncQueueBase`` is the source; ``QueueBase`` is generated from it.
"""

from __future__ import annotations

from ._async.base import AsyncQueueBase
from ._sync.base import QueueBase

__all__ = ["AsyncQueueBase", "QueueBase"]
