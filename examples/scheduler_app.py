"""Periodic jobs: a cron entry and an interval entry, enqueued exactly once per tick.

Run it directly (it schedules into memory:// for about two seconds and prints what came out)::

    python examples/scheduler_app.py

or run the same ``schedule`` with the CLI in as many processes as you like (each tick is
enqueued once: redis has CUSTOM_ID, so the tick id is the job id)::

    UNIFIEDQ_URL=redis://localhost:6379/0?queue=periodic \\
        unifiedq scheduler examples.scheduler_app:schedule
"""

from __future__ import annotations

import json
import os
import threading
import time

import unifiedq
from unifiedq.scheduler import Entry, Scheduler, Tick

URL = os.environ.get("UNIFIEDQ_URL", "memory://periodic")


def report_body(tick: Tick) -> bytes:
    """The body is computed per tick: here, the tick's own time in its time zone."""
    return json.dumps({"report": "status", "for": tick.at.isoformat()}).encode()


schedule = [
    # Every second, on the second (6-field cron: the last field is seconds), Berlin time.
    Entry("report", URL, report_body, cron="* * * * * *", tz="Europe/Berlin",
          headers={"type": "report.build"}),
    # Every half second, each tick up to 0.1 s late (the same offset in every process).
    Entry("heartbeat", URL, b"ping", every=0.5, jitter=0.1, missed="once",
          headers={"type": "ops.heartbeat"}),
]


def main() -> None:
    """Schedule into memory:// for about two seconds, then print the jobs in tick order."""
    q = unifiedq.connect(URL)
    sched = Scheduler(schedule)
    runner = threading.Thread(target=sched.run, kwargs={"install_signals": False})
    runner.start()
    time.sleep(2.2)
    sched.request_stop()
    runner.join()
    jobs = []
    while (job := q.dequeue(timeout=0)) is not None:
        jobs.append(job)
        q.ack(job)
    for job in sorted(jobs, key=lambda j: j.id.rsplit(":", 1)[1]):
        print(f"{job.id:32} {job.headers['type']:14} {job.body.decode()}")
    counts = sched.stats()
    print(f"enqueued={counts['enqueued']} duplicate={counts['duplicate']} "
          f"skipped={counts['skipped']} jobs={len(jobs)}")


if __name__ == "__main__":
    main()
