"""What a worker tells a queue that lists its consumers (asynq's server registry, for one).

A queue may offer ``open_consumer_registry(info)`` (a coroutine on the asyncio face): it
announces the worker described by ``info`` and returns a registration whose
``heartbeat(running, status=...)`` refreshes the announcement with the jobs running now, and
whose ``close()`` withdraws it. The worker calls ``heartbeat`` every ``interval`` seconds
(the registration's attribute) and ``close`` when it stops; a process that dies without
``close`` drops out once its last heartbeat expires. Queues without the method are simply not
announced: nothing else in the worker depends on it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from ._job import Job

__all__ = ["ConsumerInfo", "RunningJob", "registry_opener"]


@dataclasses.dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """A worker as a consumer registry shows it.

    Attributes:
        concurrency: Jobs the worker runs at once.
        queues: Queue names it consumes, each with its priority (higher = preferred).
        started_at: When the worker started (Unix seconds).
        host: Host name of the machine.
        pid: Process id.
    """

    concurrency: int
    queues: Mapping[str, int]
    started_at: float
    host: str = dataclasses.field(default_factory=socket.gethostname)
    pid: int = dataclasses.field(default_factory=os.getpid)


@dataclasses.dataclass(frozen=True, slots=True)
class RunningJob:
    """A job a worker's handler is running.

    Attributes:
        job: The job.
        started_at: When its handler started (Unix seconds).
        deadline: When its handler times out (Unix seconds), or None.
    """

    job: Job
    started_at: float
    deadline: float | None = None


def registry_opener(queue: object) -> Callable[[ConsumerInfo], Any] | None:
    """The ``open_consumer_registry`` of ``queue`` or of a queue it wraps (``.inner``), if any.

    Wrappers that forward every verb (``BoundedQueue``, ``TracedQueue``) settle jobs on the
    queue they wrap, so that queue's registry is the one that shows the worker.
    """
    seen = 0
    while queue is not None and seen < 8:  # a short chain of wrappers at most
        opener = getattr(queue, "open_consumer_registry", None)
        if callable(opener):
            return opener  # type: ignore[no-any-return]
        queue = getattr(queue, "inner", None)
        seen += 1
    return None
