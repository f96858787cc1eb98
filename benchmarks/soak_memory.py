"""Memory soak of every in-process path: RSS must stay flat at full speed (issue 20).

    python benchmarks/soak_memory.py [--seconds 300] [--path NAME ...] [--tree DIR]

Each path runs alone in a fresh subprocess at full speed for ``--seconds`` (300 by default;
``--seconds 20`` is a quick run) while this process samples the child's RSS every second
(``/proc/<pid>/status``, so the child does no measuring of its own). Printed as a markdown
table per path: RSS at start, at steady state (the sample at 10% of the run, at least 3 s in),
the largest sample, at the end, growth after steady state (end minus steady; a leak shows as
growth proportional to the run) and its least-squares slope in MB per minute, and jobs per
second.

Paths (``--path`` picks some; default all):

- ``memory``: the issue's loop, ``enqueue_many`` 1,000 / ``dequeue_many`` / ``ack`` each.
- ``memory-async``: the same loop on memory's bridged asyncio face (``connect_async``).
- ``shm``: ``enqueue_many`` 1,000 / ``dequeue_many`` on a ring (at-most-once: no ack).
- ``fair``: ``FairQueue`` over memory; tenants come and go (a new one every 5 rounds,
  forgotten after ``idle_ttl=1``), each with a per-tenant token bucket (``KeyedLimiter``).
- ``bounded``: ``BoundedQueue`` over memory (a native bound of 1,200, ``drop_oldest``:
  every round overflows and sheds 200 jobs one by one).
- ``worker`` / ``aworker``: ``Worker`` (4 threads) / ``AsyncWorker`` (4 tasks, a coroutine
  handler) over memory with Prometheus metrics; 1 job in 10 fails its first attempt and is
  retried after 1 ms; a producer keeps about 5,000 jobs waiting.

``--tree DIR`` runs the children against another checkout's ``src`` (e.g. the commit before
a fix: ``git worktree add /tmp/old <rev>``) to show a leak and its fix side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

PATHS = ("memory", "memory-async", "shm", "fair", "bounded", "worker", "aworker")
BATCH = [b"x" * 64] * 1000


# -- children: each runs one path until its deadline and prints {"jobs": n} ------------------
def _memory(deadline: float) -> int:
    import unifiedq
    q = unifiedq.connect(f"memory://soak-{os.getpid()}")
    n = 0
    while time.monotonic() < deadline:
        q.enqueue_many(BATCH)
        for j in q.dequeue_many(1000):
            q.ack(j)
        n += 1000
    q.close()
    return n


def _memory_async(deadline: float) -> int:
    import asyncio

    import unifiedq

    async def main() -> int:
        q = unifiedq.connect_async(f"memory://soak-{os.getpid()}")
        n = 0
        while time.monotonic() < deadline:
            await q.enqueue_many(BATCH)
            for j in await q.dequeue_many(1000):
                await q.ack(j)
            n += 1000
        await q.aclose()
        return n
    return asyncio.run(main())


def _shm(deadline: float) -> int:
    import unifiedq
    from unifiedq.drivers import shm
    name = f"soak-{os.getpid()}"
    q = unifiedq.connect(f"shm://{name}?capacity=4096&slot_size=128")
    n = 0
    try:
        while time.monotonic() < deadline:
            q.enqueue_many(BATCH)
            n += len(q.dequeue_many(1000))
    finally:
        q.close()
        shm.unlink(name)
    return n


def _fair(deadline: float) -> int:
    from unifiedq.fair import FairQueue
    from unifiedq.limits import KeyedLimiter
    fq = FairQueue(f"memory://soak-{os.getpid()}.{{tenant}}", idle_ttl=1.0,
                   rate_limit=KeyedLimiter(rate=1e9, burst=1e6))
    n = rnd = 0
    while time.monotonic() < deadline:
        # 4 live tenants, sliding: a new one every 5 rounds, the oldest goes idle.
        for k in range(4):
            fq.enqueue_many(BATCH[:250], tenant=f"t{rnd // 5 + k}")
        for j in fq.dequeue_many(1000):
            fq.ack(j)
        n += 1000
        rnd += 1
    fq.close()
    return n


def _bounded(deadline: float) -> int:
    from unifiedq.bounded import BoundedQueue
    bq = BoundedQueue(f"memory://soak-{os.getpid()}", maxsize=1200, overflow="drop_oldest")
    n = 0
    while time.monotonic() < deadline:
        for _ in range(10):  # 1,000 more: drop_oldest sheds 200+ per round (dequeue + ack)
            bq.enqueue_many(BATCH[:100])
        jobs = bq.dequeue_many(1000)
        for j in jobs:
            bq.ack(j)
        n += len(jobs)
    bq.close()
    return n


def _metrics() -> object:
    try:
        from prometheus_client import CollectorRegistry

        from unifiedq.metrics import PrometheusMetrics
    except ImportError:
        return None
    return PrometheusMetrics(CollectorRegistry())


def _handler_fails(job: object) -> bool:
    j = job  # a Job: fail 1 in 10 on its first attempt
    return j.attempt == 1 and hash(j.id) % 10 == 0  # type: ignore[attr-defined]


def _worker(deadline: float) -> int:
    import unifiedq
    from unifiedq.worker import Retry, Worker
    url = f"memory://soak-{os.getpid()}"
    q = unifiedq.connect(url)

    def handler(job: object) -> None:
        if _handler_fails(job):
            raise RuntimeError("first attempt fails")

    w = Worker(q, handler, concurrency=4, poll_interval=0.05, depth_interval=0.5,
               retry=Retry(max_attempts=3, backoff=0.001), metrics=_metrics())  # type: ignore[arg-type]
    w.start()
    while time.monotonic() < deadline:
        if q.size() < 5000:
            q.enqueue_many(BATCH)
        else:
            time.sleep(0.001)
    w.stop(grace=5.0)
    q.close()
    return w.stats().processed


def _aworker(deadline: float) -> int:
    import asyncio

    import unifiedq
    from unifiedq.worker import AsyncWorker, Retry

    async def handler(job: object) -> None:
        if _handler_fails(job):
            raise RuntimeError("first attempt fails")

    async def main() -> int:
        q = unifiedq.connect_async(f"memory://soak-{os.getpid()}")
        w = AsyncWorker(q, handler, concurrency=4, poll_interval=0.05, depth_interval=0.5,
                        retry=Retry(max_attempts=3, backoff=0.001),
                        metrics=_metrics())  # type: ignore[arg-type]
        w.start()
        while time.monotonic() < deadline:
            if await q.size() < 5000:
                await q.enqueue_many(BATCH)
            else:
                await asyncio.sleep(0.001)
        await w.stop(grace=5.0)
        await q.aclose()
        return w.stats().processed
    return asyncio.run(main())


_RUN = {"memory": _memory, "memory-async": _memory_async, "shm": _shm, "fair": _fair,
        "bounded": _bounded, "worker": _worker, "aworker": _aworker}


def child(path: str, seconds: float) -> None:
    import unifiedq  # noqa: F401  (imported before "ready": the start sample includes it)
    print("ready", flush=True)
    sys.stdin.readline()  # the parent has taken its first sample
    t0 = time.monotonic()
    n = _RUN[path](t0 + seconds)
    print(json.dumps({"jobs": n, "seconds": time.monotonic() - t0}), flush=True)


# -- parent: run each child, sample its RSS ------------------------------------------------------
def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def slope_per_min(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var \
        else 0.0


def soak(path: str, seconds: float, tree: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tree / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    p = subprocess.Popen([sys.executable, __file__, "--child", path, "--seconds", str(seconds)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdin is not None and p.stdout is not None
    if p.stdout.readline().strip() != "ready":
        raise SystemExit(f"{path}: the child did not start")
    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()
    first = rss_mb(p.pid)
    p.stdin.write("go\n")
    p.stdin.flush()
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(p.stdout.readlines()))  # type: ignore[union-attr]
    reader.start()
    while p.poll() is None:
        r = rss_mb(p.pid)
        if r is not None and reader.is_alive():
            samples.append((time.monotonic() - t0, r))
        time.sleep(1.0 - (time.monotonic() - t0) % 1.0)
    reader.join()
    if p.returncode != 0 or not out:
        raise SystemExit(f"{path}: the child failed (exit {p.returncode})")
    res = json.loads(out[-1])
    steady_t = max(3.0, 0.1 * seconds)
    after = [(t, r) for t, r in samples if t >= steady_t] or samples[-1:]
    steady, end = after[0][1], samples[-1][1]
    return {"start": first or samples[0][1], "steady": steady,
            "max": max(r for _, r in samples), "end": end, "growth": end - steady,
            "slope": slope_per_min([t for t, _ in after], [r for _, r in after]),
            "rate": res["jobs"] / res["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--path", action="append", choices=PATHS, default=[])
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.seconds)
        return
    print(f"RSS in MB, {a.seconds:g} s per path, tree {a.tree}\n")
    print("| path | start | steady | max | end | growth after steady | slope MB/min | jobs/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for path in a.path or PATHS:
        r = soak(path, a.seconds, a.tree)
        print(f"| {path} | {r['start']:.1f} | {r['steady']:.1f} | {r['max']:.1f} | "
              f"{r['end']:.1f} | {r['growth']:+.1f} | {r['slope']:+.2f} | {r['rate']:,.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
