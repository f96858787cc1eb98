"""Worker throughput: Worker / AsyncWorker vs a plain dequeue→ack loop, side by side in one run.

    python benchmarks/worker_throughput.py [--rounds 3] [--label after] [--only memory,redis]

Not run by CI. Two measurements, rounds interleaved (every variant once per round, in turn) so
machine noise hits all alike; medians and ranges are reported:

* ``memory://``: the worker's own per-job overhead. ``--memory-jobs`` no-op jobs are enqueued,
  then consumed by a ``Worker`` (concurrency 1), and by a plain ``dequeue(); ack()`` loop on one
  thread. µs/job = wall time / jobs; overhead = worker - loop. (``AsyncWorker`` too, for its
  rate: memory:// is blocking-only, so each of its calls crosses the asyncio bridge.)
* ``redis://`` (a private ``RedisServer`` from the test rig): ``--jobs`` no-op jobs with 64-byte
  bodies pre-enqueued, then consumed by ``Worker`` and ``AsyncWorker`` (``--concurrency``) and a
  plain one-thread ``dequeue_many(32)`` + ``ack_many`` loop, and the same loop taking
  ``--concurrency`` jobs per fetch on each face (``conc_loop``, ``async_conc_loop``): a worker
  fetches at most one job per idle slot, so that is the most its fetches can amount to.
  Reported: jobs/s end to end and the process's CPU seconds per 10k jobs
  (``time.process_time``: user + system of every thread).

Results go to ``benchmarks/results/worker_throughput.<label>.json``; the markdown
(``worker_throughput.md``) is re-rendered from every label's json found there.

Measure the code before a change from a worktree of that commit, with this script, and
interleave the labels one round at a time (how the committed results were made)::

    git worktree add /tmp/wt-before c085ab8           # the commit before the change
    git worktree add --detach /tmp/wt-after aa3f4bb    # the change
    git worktree add --detach /tmp/wt-oldworker aa3f4bb && (cd /tmp/wt-oldworker &&
        git checkout c085ab8 -- src/unifiedq/_async/worker.py src/unifiedq/_sync/worker.py \
        src/unifiedq/_worker_core.py)                  # the change's drivers, the old worker
    for r in 1 2 3; do for l in before oldworker after; do
        PYTHONPATH=/tmp/wt-$l/src python benchmarks/worker_throughput.py --rounds 1 --append \
            --label ${l/oldworker/old-worker} --note "..."
    done; done
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import unifiedq
from unifiedq import AsyncWorker, Worker
from unifiedq.testing.servers import RedisServer

RESULTS = Path(__file__).resolve().parent / "results"
BODY = b"x" * 64


def _wait_processed(w: Any, n: int, handled: threading.Event, limit: float = 300.0) -> None:
    # Block until the handler saw the last job (no polling thread competing for the
    # interpreter lock meanwhile), then until the worker counted it (its ack was sent).
    if not handled.wait(limit):
        raise RuntimeError(f"worker stuck at {w.stats()}")
    end = time.monotonic() + 10.0
    while w.stats().processed < n:
        if time.monotonic() > end:
            raise RuntimeError(f"worker stuck at {w.stats()}")
        time.sleep(0.0005)


def _counting(n: int) -> tuple[Callable[[Any], None], threading.Event]:
    """A no-op handler that sets the event when it has seen ``n`` jobs."""
    handled = threading.Event()
    count = itertools.count(1)

    def handler(job: Any) -> None:
        if next(count) >= n:
            handled.set()

    return handler, handled


def _fill(url: str, n: int) -> None:
    q = unifiedq.connect(url)
    try:
        for i in range(0, n, 1000):
            q.enqueue_many([BODY] * min(1000, n - i))
    finally:
        q.close()


def _measure(fn: Callable[[], None]) -> tuple[float, float]:
    """Run ``fn``; return (wall s, process CPU s)."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


# -- variants: each consumes ``n`` pre-enqueued jobs from ``url`` ----------------------------
def run_worker(url: str, n: int, conc: int) -> tuple[float, float]:
    q = unifiedq.connect(url)
    handler, handled = _counting(n)
    w = Worker(q, handler, concurrency=conc, poll_interval=0.05)

    def go() -> None:
        w.start()
        _wait_processed(w, n, handled)

    try:
        return _measure(go)
    finally:
        w.stop(grace=5)
        q.close()


def run_async_worker(url: str, n: int, conc: int) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        handled = asyncio.Event()
        count = itertools.count(1)

        async def noop(job: unifiedq.Job) -> None:
            if next(count) >= n:
                handled.set()

        q = unifiedq.connect_async(url)
        w = AsyncWorker(q, noop, concurrency=conc, poll_interval=0.05)
        c0, t0 = time.process_time(), time.perf_counter()
        w.start()
        await handled.wait()
        while w.stats().processed < n:
            await asyncio.sleep(0.0005)
        out = time.perf_counter() - t0, time.process_time() - c0
        await w.stop(grace=5)
        await q.aclose()
        return out

    return asyncio.run(main())


def run_loop(url: str, n: int, conc: int) -> tuple[float, float]:
    """One thread: ``dequeue(); ack()`` per job."""
    q = unifiedq.connect(url)

    def go() -> None:
        done = 0
        while done < n:
            job = q.dequeue(timeout=1.0)
            if job is None:
                raise RuntimeError(f"queue ran dry after {done} jobs")
            q.ack(job)
            done += 1

    try:
        return _measure(go)
    finally:
        q.close()


def run_batch_loop(url: str, n: int, conc: int) -> tuple[float, float]:
    """One thread: ``dequeue_many(32)`` then ``ack_many`` of those jobs."""
    q = unifiedq.connect(url)

    def go() -> None:
        done = 0
        while done < n:
            jobs = q.dequeue_many(32, timeout=1.0)
            if not jobs:
                raise RuntimeError(f"queue ran dry after {done} jobs")
            q.ack_many(jobs)
            done += len(jobs)

    try:
        return _measure(go)
    finally:
        q.close()


def run_conc_loop(url: str, n: int, conc: int) -> tuple[float, float]:
    """One thread: ``dequeue_many(concurrency)`` then ``ack_many`` (a worker's floor).

    A worker's fetch takes at most one job per idle slot: this is the most they amount to.
    """
    q = unifiedq.connect(url)

    def go() -> None:
        done = 0
        while done < n:
            jobs = q.dequeue_many(conc, timeout=1.0)
            if not jobs:
                raise RuntimeError(f"queue ran dry after {done} jobs")
            q.ack_many(jobs)
            done += len(jobs)

    try:
        return _measure(go)
    finally:
        q.close()


def run_async_conc_loop(url: str, n: int, conc: int) -> tuple[float, float]:
    """``run_conc_loop`` on the asyncio face (one task): the AsyncWorker's floor."""
    async def main() -> tuple[float, float]:
        q = unifiedq.connect_async(url)
        await q.size()  # connected before the clock starts, as the others' first call is cheap
        c0, t0 = time.process_time(), time.perf_counter()
        done = 0
        while done < n:
            jobs = await q.dequeue_many(conc, timeout=1.0)
            if not jobs:
                raise RuntimeError(f"queue ran dry after {done} jobs")
            await q.ack_many(jobs)
            done += len(jobs)
        out = time.perf_counter() - t0, time.process_time() - c0
        await q.aclose()
        return out

    return asyncio.run(main())


def _summary(walls: list[float], cpus: list[float], n: int) -> dict[str, Any]:
    rates = [n / w for w in walls]
    us = [w / n * 1e6 for w in walls]
    cpu10k = [c / n * 10_000 for c in cpus]
    return {
        "jobs": n,
        "rounds": len(walls),
        "jobs_per_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
        "us_per_job": {"median": statistics.median(us), "min": min(us), "max": max(us)},
        "cpu_s_per_10k": {"median": statistics.median(cpu10k), "min": min(cpu10k),
                          "max": max(cpu10k)},
        "raw_wall_s": walls,
        "raw_cpu_s": cpus,
    }


def bench(name: str, make_url: Callable[[], str], n: int, conc: int, rounds: int,
          variants: dict[str, Callable[[str, int, int], tuple[float, float]]],
          earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    raw: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in variants}
    for k, v in (earlier or {}).items():  # --append: rounds of an earlier run of this label
        if k in raw:
            raw[k][0].extend(v["raw_wall_s"])
            raw[k][1].extend(v["raw_cpu_s"])
    for r in range(rounds):
        for label, fn in variants.items():
            url = make_url()
            _fill(url, n)
            wall, cpu = fn(url, n, conc)
            raw[label][0].append(wall)
            raw[label][1].append(cpu)
            print(f"  {name} round {r + 1} {label:<14} {n / wall:9.0f} jobs/s "
                  f"{wall / n * 1e6:8.1f} µs/job {cpu / n * 10_000:6.2f} CPU s/10k", flush=True)
    return {k: _summary(w, c, n) for k, (w, c) in raw.items()}


def _version() -> str:
    src = Path(unifiedq.__file__).resolve().parent
    try:
        return subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip() + (
            " (dirty)" if subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--",
                                          "."], capture_output=True, text=True,
                                         check=True).stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def render() -> None:
    """Write worker_throughput.md from every worker_throughput.<label>.json in results/."""
    runs = {p.name.split(".")[1]: json.loads(p.read_text())
            for p in sorted(RESULTS.glob("worker_throughput.*.json"))}
    peers = runs.pop("peers", None)  # not a label: peer benchmark rounds, rendered last
    rank = {"before": 0, "old-worker": 1, "after": 2, "pass2-before": 3, "pass2-after": 4,
            "pass2-after-c32": 5}
    order = sorted(runs, key=lambda k: (rank.get(k, 3), k))
    lines = ["# Worker throughput", "",
             "Produced by `benchmarks/worker_throughput.py` (not run by CI). Each label's "
             "variants run interleaved within a round; with `--append` the labels were also "
             "interleaved, one round each in turn (below: 3 rounds, the loop in the script's "
             "docstring). Medians, ranges in brackets. The machine has 2 cores shared with other "
             "work (load average 5 to 7 during the first three labels' runs, 1 to 2 during the "
             "pass2 ones): compare ratios within a label.", ""]
    for label in order:
        res = runs[label]
        lines += [f"## {label}: commit {res['commit']}, {res['when']}", "",
                  f"Command: `{res['command']}`", ""]
        if res.get("note"):
            lines += [res["note"], ""]
        if "memory" in res:
            m = res["memory"]
            lines += [f"### memory://, {m['loop']['jobs']} no-op jobs, concurrency 1", "",
                      "| variant | µs/job | jobs/s | CPU s per 10k |", "|---|---|---|---|"]
            for k, v in m.items():
                lines.append(_row(k, v))
            w, lp = m["Worker"]["us_per_job"]["median"], m["loop"]["us_per_job"]["median"]
            wc = m["Worker"]["cpu_s_per_10k"]["median"] * 100  # CPU µs per job
            lc = m["loop"]["cpu_s_per_10k"]["median"] * 100
            lines += ["", f"Worker overhead over the plain loop: **{w - lp:.1f} µs/job** of wall "
                          f"time (medians: {w:.1f} - {lp:.1f}), **{wc - lc:.1f} µs/job** of CPU "
                          f"({wc:.1f} - {lc:.1f}).", ""]
        if "redis" in res:
            rd = res["redis"]
            lines += [f"### redis://, {rd['loop']['jobs']} no-op jobs, 64-byte bodies, "
                      f"concurrency {res['concurrency']}", "",
                      "| variant | µs/job | jobs/s | CPU s per 10k |", "|---|---|---|---|"]
            for k, v in rd.items():
                lines.append(_row(k, v))
            base = rd["batch_loop"]["jobs_per_s"]["median"]
            lines += ["", "Rate vs the dequeue_many(32)+ack_many loop: " + ", ".join(
                f"{k} {v['jobs_per_s']['median'] / base:.2f}x" for k, v in rd.items()), ""]
            if "conc_loop" in rd:  # the floor at this concurrency (one fetch per idle slots)
                lines += [f"Rate vs the same loop taking {res['concurrency']} jobs per fetch "
                          "(`conc_loop` for Worker, `async_conc_loop` for AsyncWorker): Worker "
                          f"{_ratio(rd, 'Worker', 'conc_loop'):.2f}x, AsyncWorker "
                          f"{_ratio(rd, 'AsyncWorker', 'async_conc_loop'):.2f}x", ""]
    if peers is not None:
        lines += peers["markdown"]
    (RESULTS / "worker_throughput.md").write_text("\n".join(lines) + "\n")


def _ratio(rd: dict[str, Any], a: str, b: str) -> float:
    return float(rd[a]["jobs_per_s"]["median"] / rd[b]["jobs_per_s"]["median"])


def _row(k: str, v: dict[str, Any]) -> str:
    def f(d: dict[str, float], fmt: str) -> str:
        return f"{d['median']:{fmt}} [{d['min']:{fmt}}-{d['max']:{fmt}}]"
    return (f"| {k} | {f(v['us_per_job'], '.1f')} | {f(v['jobs_per_s'], '.0f')} | "
            f"{f(v['cpu_s_per_10k'], '.2f')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=10_000, help="redis jobs per round")
    ap.add_argument("--memory-jobs", type=int, default=30_000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--only", default="memory,redis")
    ap.add_argument("--label", default="after")
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--note", default="", help="what this label's code is (in the report)")
    ap.add_argument("--append", action="store_true",
                    help="add these rounds to the label's earlier ones (to interleave labels: "
                         "run each label for one round, in turn, several times)")
    a = ap.parse_args()
    if a.render_only:
        render()
        return
    only = set(a.only.split(","))
    path = RESULTS / f"worker_throughput.{a.label}.json"
    prev: dict[str, Any] = json.loads(path.read_text()) if a.append and path.exists() else {}
    out: dict[str, Any] = {
        "commit": _version(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]) + (
            f"  (PYTHONPATH={os.environ['PYTHONPATH']})" if os.environ.get("PYTHONPATH")
            else ""),
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "concurrency": a.concurrency, "rounds": a.rounds, "note": a.note,
    }
    if "memory" in only:
        out["memory"] = bench("memory", lambda: f"memory://wt-{uuid.uuid4().hex[:8]}",
                              a.memory_jobs, 1, a.rounds,
                              {"loop": run_loop, "Worker": run_worker,
                               "AsyncWorker": run_async_worker}, prev.get("memory"))
    if "redis" in only:
        server = RedisServer().start()
        try:
            out["redis"] = bench(
                "redis", lambda: f"{server.url}?queue=wt-{uuid.uuid4().hex[:8]}", a.jobs,
                a.concurrency, a.rounds,
                {"loop": run_loop, "batch_loop": run_batch_loop, "conc_loop": run_conc_loop,
                 "async_conc_loop": run_async_conc_loop, "Worker": run_worker,
                 "AsyncWorker": run_async_worker}, prev.get("redis"))
        finally:
            server.stop()
    if prev:
        out["rounds"] += prev.get("rounds", 0)
        out["when"] = f"{prev['when'].split(' to ')[0]} to {out['when']}"
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    render()


if __name__ == "__main__":
    main()
