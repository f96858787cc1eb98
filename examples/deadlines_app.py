"""Deadlines that shed stale work: ``ttl=``, ``deadline=``, ``timeout=`` and CoDel.

Run it: ``python examples/deadlines_app.py [redis://127.0.0.1:6379/0]`` (memory:// by
default). It shows, on one queue:

1. A job whose requester gave up (its ``ttl`` passed while it waited) is never started:
   ``dequeue`` settles it as expired and hands out the next one.
2. The Worker caps an attempt at the job's own ``timeout``.
3. Under a burst, ``overload=CoDel(...)`` sheds the backlog the workers cannot drain in time,
   so the jobs that do run are fresh.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid

import unifiedq
from unifiedq.deadlines import CoDel


def url_for(base: str) -> str:
    name = f"deadlines-demo-{uuid.uuid4().hex[:6]}"
    return f"memory://{name}" if base.startswith("memory") else f"{base}?queue={name}"


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else "memory://"

    # 1. dequeue never hands out an expired job.
    with unifiedq.connect(url_for(base)) as q:
        q.enqueue(b"quote for a user who already left", deadline=time.time() - 1)
        q.enqueue(b"quote for a user still waiting", ttl=30)
        job = q.dequeue(timeout=5)
        assert job is not None
        print(f"dequeued: {job.body.decode()} (deadline in "
              f"{job.deadline - time.time():.0f} s)" if job.deadline else "no deadline")
        print(f"expired without running: {q.expired_count}")
        q.ack(job)

    # 2. The Worker enforces a job's own timeout (the worker default here is 60 s).
    with unifiedq.connect(url_for(base)) as q:
        q.enqueue(b"slow report", timeout=1)

        def slow(job: unifiedq.Job) -> None:
            time.sleep(5)

        t0 = time.monotonic()
        with unifiedq.Worker(q, slow, timeout=60, max_attempts=1, poll_interval=0.05) as w:
            while w.stats().timed_out == 0:
                time.sleep(0.02)
        print(f"timed out after {time.monotonic() - t0:.1f} s "
              f"(job timeout {w.stats().timed_out} x 1 s, not the worker's 60 s)")

    # 3. A burst 10x what one worker drains: CoDel keeps what runs fresh.
    with unifiedq.connect(url_for(base)) as q:
        waited: list[float] = []
        lock = threading.Lock()

        def handler(job: unifiedq.Job) -> None:
            with lock:
                waited.append(time.time() - job.enqueued_at)
            time.sleep(0.01)  # 100 jobs/s per thread

        codel = CoDel(target=0.05, interval=0.1)
        with unifiedq.Worker(q, handler, concurrency=2, overload=codel,
                             poll_interval=0.01) as w:
            for _ in range(20):  # 2000 jobs/s for 0.5 s against ~200 jobs/s
                q.enqueue_many([b"burst"] * 40)
                time.sleep(0.02)
            while w.stats().processed + w.stats().expired < 800:
                time.sleep(0.02)
        st = w.stats()
        worst = sorted(waited)[int(0.99 * (len(waited) - 1))]
        print(f"burst: 800 offered, {st.processed} ran, {st.expired} shed by CoDel; "
              f"p99 wait of those that ran {worst * 1000:.0f} ms")
        print(f"accounted: {st.processed + st.expired == 800}")


if __name__ == "__main__":
    main()
