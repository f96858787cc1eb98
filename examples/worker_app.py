"""A worker app: handlers routed by job type, retries, a dead-letter queue, graceful stop.

Run it directly (it enqueues a few jobs into memory:// and processes them)::

    python examples/worker_app.py

or point the CLI at the same ``app`` with any queue URL::

    unifiedq worker examples.worker_app:app --url redis://localhost:6379/0?queue=emails -c 8
"""

from __future__ import annotations

import json
import logging
import sys
import time

import unifiedq
from unifiedq import Job
from unifiedq.worker import JsonLogFormatter, Middleware, Router, SkipRetry, Worker

app = Router()  # routes on the "type" header


@app.handler("email.send", timeout=10, max_attempts=3)
def send_email(job: Job) -> None:
    msg = json.loads(job.body)
    if "@" not in msg["to"]:
        raise SkipRetry(f"bad address {msg['to']!r}")  # retrying would not help
    if msg.get("flaky") and job.attempt < 2:
        raise ConnectionError("SMTP server hiccup")  # retried with backoff
    print(f"sent email to {msg['to']} (attempt {job.attempt})")


@app.handler("report.build", timeout=30)
def build_report(job: Job) -> None:
    print(f"built report {json.loads(job.body)['id']}")


class Timing(Middleware):
    """Example middleware: report slow jobs."""

    def after(self, job: Job, duration: float) -> None:
        if duration > 1.0:
            print(f"slow job {job.id}: {duration:.1f}s")


def main() -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    logging.getLogger("unifiedq").addHandler(handler)
    logging.getLogger("unifiedq").setLevel(logging.WARNING)

    q = unifiedq.connect("memory://emails")
    dead = unifiedq.connect("memory://emails-dead")
    jobs = [
        ("email.send", {"to": "ada@example.com"}),
        ("email.send", {"to": "bob@example.com", "flaky": True}),
        ("email.send", {"to": "not-an-address"}),
        ("report.build", {"id": 42}),
        ("unknown.type", {}),
    ]
    for job_type, payload in jobs:
        q.enqueue(json.dumps(payload).encode(), headers={"type": job_type})

    worker = Worker(q, app, concurrency=2, dead_letter=dead, middleware=[Timing()],
                    poll_interval=0.05)
    worker.start()
    deadline = time.monotonic() + 30
    while worker.stats().processed + worker.stats().dead < len(jobs):
        if time.monotonic() > deadline:
            print("timed out", file=sys.stderr)
            return 1
        time.sleep(0.02)
    worker.stop()  # graceful: nothing is running now, so it returns at once
    st = worker.stats()
    print(f"processed={st.processed} retried={st.retried} dead={st.dead}")
    while (j := dead.dequeue()) is not None:
        print(f"dead-lettered: type={j.headers.get('type')} error={j.headers['x-unifiedq-error']}")
        dead.ack(j)
    return 0


if __name__ == "__main__":
    sys.exit(main())
