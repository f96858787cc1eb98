"""Peak load: a burst of user requests from several tenants, buffered and drained fairly.

Tenant ``bulk`` bursts 10x the others. Requests go into a FairQueue whose per-tenant
sub-queues are bounded (``maxsize_per_tenant``, overflow ``reject``: the API would answer
429). The burst arrives before any worker has capacity (the peak), so ``bulk`` is shed at
its own bound while the small tenants lose nothing; then a Worker drains the backlog, fairly
across tenants, with a token bucket capping ``bulk``'s drain rate. At the end it prints a
per-tenant table: accepted, shed, processed, and queue-wait p50/p99.

    python examples/peak_load.py                   # memory://
    python examples/peak_load.py redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import collections
import sys
import threading
import time
import uuid

import unifiedq
from unifiedq import Job
from unifiedq.fair import FairQueue
from unifiedq.limits import TokenBucket
from unifiedq.worker import Worker

TENANTS = {"bulk": 600, "acme": 60, "globex": 60, "initech": 60, "umbrella": 60}
MAXSIZE = 400  # per tenant


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


def main(base: str | None = None) -> int:
    run = uuid.uuid4().hex[:6]
    tpl = (f"{base.split('?')[0]}?queue=peak-{run}.{{tenant}}" if base
           else f"memory://peak-{run}.{{tenant}}")
    fq = FairQueue(tpl, tenants=list(TENANTS), maxsize_per_tenant=MAXSIZE, overflow="reject",
                   rate_limit={"bulk": TokenBucket(rate=400, burst=50)})
    accepted: collections.Counter[str] = collections.Counter()
    shed: collections.Counter[str] = collections.Counter()
    waits: dict[str, list[float]] = collections.defaultdict(list)
    lock = threading.Lock()

    def handle(job: Job) -> None:
        waited = time.time() - float(job.body)
        time.sleep(0.002)  # the request's work
        with lock:
            waits[job.headers["tenant"]].append(waited)

    def burst(tenant: str, n: int) -> None:  # one producer per tenant, all at once
        for _ in range(n):
            try:
                fq.enqueue(repr(time.time()).encode(), tenant=tenant)
                accepted[tenant] += 1
            except unifiedq.QueueFull:
                shed[tenant] += 1  # would be an HTTP 429 for this tenant only

    producers = [threading.Thread(target=burst, args=item) for item in TENANTS.items()]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    # The worker starts after the burst: which requests are shed then depends only on the
    # bounds, not on how fast this machine drains while producers still run.
    worker = Worker(fq, handle, concurrency=4, poll_interval=0.05)
    worker.start()
    total = sum(accepted.values())
    deadline = time.monotonic() + 120
    while worker.stats().processed < total and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop()
    fq.close()

    print(f"{'tenant':10} {'sent':>6} {'accepted':>9} {'shed':>6} {'done':>6} "
          f"{'wait p50 ms':>12} {'wait p99 ms':>12}")
    for t, n in TENANTS.items():
        w = waits[t]
        print(f"{t:10} {n:6} {accepted[t]:9} {shed[t]:6} {len(w):6} "
              f"{pct(w, 50) * 1e3:12.1f} {pct(w, 99) * 1e3:12.1f}")
    lost = total - sum(len(w) for w in waits.values())
    print(f"accepted {total}, shed {sum(shed.values())}, processed "
          f"{worker.stats().processed}, lost {lost}")
    return 0 if lost == 0 and sum(accepted.values()) + sum(shed.values()) == sum(
        TENANTS.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
