"""Periodic jobs: enqueue a job on a cron schedule or a fixed interval, exactly once.

Two faces with the same options and methods (``AsyncScheduler`` is the source, ``Scheduler`` is
generated from it; see docs/contributing.md)::

    from unifiedq.scheduler import Entry, Scheduler

    Scheduler([
        Entry("nightly-report", "redis://localhost:6379/0?queue=reports", b"{}",
              cron="30 2 * * *", tz="Europe/Berlin"),
        Entry("heartbeat", "redis://localhost:6379/0?queue=ops", b"ping", every=10, jitter=2),
    ]).run()

or from the command line: ``unifiedq scheduler myapp.schedule:scheduler``.

* **Ticks** are computed the same way by every scheduler process: cron expressions by croniter
  in the entry's time zone (zoneinfo), intervals on whole multiples of the interval since the
  Unix epoch. Each tick has a deterministic id, ``sched:<entry>:<epoch seconds>``.
* **Exactly once across processes**: on a driver with CUSTOM_ID the tick id is the job id, so
  the queue refuses a second copy; elsewhere each tick is claimed in a lease store
  (``lease="redis://..."``) before it is enqueued, and a claim whose holder died before the
  enqueue is redone by a survivor after ``lease_ttl``. Without CUSTOM_ID a lease is required
  unless ``single=True``.
* **Missed ticks** (the scheduler was down, stalled or late): ``skip`` (default), ``once``,
  ``catch_up`` (bounded by ``max_catch_up``).
* **DST**: a fixed-time cron job whose local time does not exist on a spring-forward day runs
  once, at the first valid time after the gap (croniter's rule); on a fall-back day it runs
  once (the repeated wall-clock time is not run twice). Wildcard-hour expressions follow real
  elapsed time.
* **Jitter** delays each tick by a deterministic pseudo-random offset (the same in every
  process).

Logging goes to the ``unifiedq.scheduler`` logger with structured fields (``event``,
``entry``, ``tick``, ``outcome``, ``queue`` (redacted), ``owner``, ``error``).
See docs/scheduler.md.
"""

from __future__ import annotations

from ._async.scheduler import AsyncScheduler
from ._scheduler_core import (
    MISSED_POLICIES,
    SCHEDULE_HEADER,
    TICK_HEADER,
    Entry,
    MissedPolicy,
    Plan,
    Tick,
    plan_ticks,
)
from ._sync.scheduler import Scheduler

__all__ = [
    "MISSED_POLICIES",
    "SCHEDULE_HEADER",
    "TICK_HEADER",
    "AsyncScheduler",
    "Entry",
    "MissedPolicy",
    "Plan",
    "Scheduler",
    "Tick",
    "plan_ticks",
]
