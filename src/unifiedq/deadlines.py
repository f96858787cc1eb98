"""Overload shedding for workers: a CoDel-style policy (see docs/deadlines.md).

Per-job deadlines (``enqueue(deadline=..., ttl=..., timeout=...)``) need no object: the queue
and the Worker enforce them. :class:`CoDel` adds an *adaptive* rule for overload, after
Nichols and Jacobson's Controlled Delay (CoDel) as applied to server request queues: the time
a job spent waiting (its *sojourn*, ``now - job.enqueued_at``) is sampled as the Worker takes
it. When every job taken for a whole ``interval`` waited longer than ``target`` (the minimum
sojourn stayed above it), the queue has a standing backlog that the workers are not
draining: from then on, jobs that waited more than ``target`` are shed (settled as expired:
oldest first, since the queue hands them out in order) instead of run, until a job within
``target`` comes again (the backlog is gone) or no job comes for ten intervals.

Only first attempts are judged: a retried job's sojourn includes its backoff, so it always
looks late. A job enqueued with ``delay=`` counts its delay too on drivers whose
``enqueued_at`` is the enqueue time (memory, amqp): give such queues a ``target`` above their
delays, or no CoDel.
Work whose requester has likely given up is dropped, and the jobs that do run stay fresh.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from ._errors import InvalidArgument

__all__ = ["CoDel"]


class CoDel:
    """Shed the oldest jobs while the queue's minimum sojourn time stays above a target.

    Pass it to a Worker as ``overload=CoDel(target=..., interval=...)``. Thread-safe; one
    object per worker (its state is that worker's view of the queue).

    Args:
        target: Acceptable waiting time in seconds (the sojourn jobs that run should stay
            under). CoDel's rule of thumb: 5-10 % of ``interval``; for a task queue, the
            latency a caller still wants an answer within.
        interval: Seconds over which the minimum sojourn must stay above ``target`` before
            shedding starts (and the window after which it is re-evaluated): about the time
            a burst may take to drain without help.
        clock: Monotonic clock (tests).

    Attributes:
        shed_count: Jobs this policy refused so far.

    Raises:
        InvalidArgument: ``target`` or ``interval`` is not finite and > 0.
    """

    def __init__(self, target: float = 0.1, interval: float = 1.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        for name, v in (("target", target), ("interval", interval)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                    or v <= 0:
                raise InvalidArgument(f"CoDel {name} must be finite seconds > 0, not {v!r}")
        self.target = float(target)
        self.interval = float(interval)
        self._clock = clock
        self._lock = threading.Lock()
        self._first_above: float | None = None  # when the sojourn went above target, + interval
        self._last = -math.inf  # when the last job was sampled
        self._overloaded = False
        self.shed_count = 0

    @property
    def overloaded(self) -> bool:
        """Whether the policy is shedding: every job for an ``interval`` waited over ``target``."""
        return self._overloaded

    def admit(self, sojourn: float) -> bool:
        """Record a job's sojourn (seconds); return False if the job should be shed."""
        with self._lock:
            now = self._clock()
            if now - self._last > 10 * self.interval:
                # No job for ten intervals: an idle worker, not a backlog; start afresh. (Not
                # one interval: a worker busy shedding on a slow backend pauses that long, and
                # a reset there let a whole interval of stale jobs run.)
                self._first_above, self._overloaded = None, False
            self._last = now
            if sojourn <= self.target:
                # Fresh work: the queue drained down to the target; stop shedding at once.
                self._first_above, self._overloaded = None, False
                return True
            if self._first_above is None:
                self._first_above = now + self.interval
            elif now >= self._first_above:
                self._overloaded = True  # the minimum stayed above target for an interval
            if self._overloaded:
                self.shed_count += 1
                return False
            return True

    def __repr__(self) -> str:
        return (f"CoDel(target={self.target:g}, interval={self.interval:g}, "
                f"overloaded={self._overloaded}, shed={self.shed_count})")
