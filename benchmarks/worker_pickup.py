"""Idle-worker pickup latency on redis://, `Worker` and `AsyncWorker` alternating, per run.

    python benchmarks/worker_pickup.py [--runs 6] [--samples 250] [--gap 0.02]
        [--out benchmarks/results/worker_pickup]

Not run by CI. One private Redis (the test rig). Each run starts an idle worker
(concurrency 8, defaults) in this process, then a producer process sends ``--samples`` (+20 warm-up,
dropped) jobs ``--gap`` s apart, each stamped with ``time.time_ns()`` just before its enqueue;
pickup = handler start - stamp. Faces alternate run by run, so a busy moment of the shared
machine hits both. Reports p50 / p90 / p99 / max per run and the median p99 per face.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from unifiedq import AsyncWorker, Worker
from unifiedq.testing.servers import RedisServer

WARMUP = 20
PRODUCER = """
import sys, time
import unifiedq
url, n, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with unifiedq.connect(url) as q:
    q.size()  # connected before the first stamp
    for _ in range(n):
        q.enqueue(b"%d" % time.time_ns())
        time.sleep(gap)
"""


def one(url: str, face: str, samples: int, gap: float) -> list[float]:
    lat: list[int] = []

    def handler(job: Any) -> None:
        lat.append(time.time_ns() - int(job.body))

    loop: asyncio.AbstractEventLoop | None = None
    th: threading.Thread | None = None
    if face == "threads":
        w: Any = Worker(url, handler, concurrency=8)
        w.start()
    else:
        loop = asyncio.new_event_loop()

        async def ahandler(job: Any) -> None:
            handler(job)

        w = AsyncWorker(url, ahandler, concurrency=8)
        ready = threading.Event()

        async def amain() -> None:
            w.start()
            ready.set()
            await w.join()

        th = threading.Thread(target=lambda: loop.run_until_complete(amain()), daemon=True)
        th.start()
        ready.wait()
    time.sleep(0.5)
    # The producer is a process of its own, as in benchmarks/peers: in this process it would
    # share the worker's interpreter lock, and its wake-ups would land in the measurement.
    subprocess.run([sys.executable, "-c", PRODUCER, url, str(samples + WARMUP), str(gap)],
                   check=True, timeout=60 + (samples + WARMUP) * gap * 3)
    time.sleep(0.2)
    if loop is not None and th is not None:
        loop.call_soon_threadsafe(w.request_stop)
        th.join(10)
    else:
        w.stop()
    return sorted(x / 1e6 for x in lat[WARMUP:])


def q(vals: list[float], p: float) -> float:
    return vals[max(0, min(len(vals) - 1, int(p * len(vals) + 0.999999) - 1))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=6)
    p.add_argument("--samples", type=int, default=250)
    p.add_argument("--gap", type=float, default=0.02)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"
                                        / "worker_pickup"))
    a = p.parse_args()
    rows: list[dict[str, Any]] = []
    with RedisServer() as srv:
        for i in range(a.runs):
            for face in (("threads", "asyncio") if i % 2 == 0 else ("asyncio", "threads")):
                load = os.getloadavg()[0]
                lat = one(f"{srv.url}?queue=pk{i}{face}", face, a.samples, a.gap)
                row = {"run": i + 1, "face": face, "load_avg_1m": round(load, 2),
                       "n": len(lat), "p50": q(lat, 0.5), "p90": q(lat, 0.9),
                       "p99": q(lat, 0.99), "max": lat[-1]}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    cmd = "python benchmarks/worker_pickup.py " + " ".join(sys.argv[1:])
    lines = ["# Idle-worker pickup latency, redis://, concurrency 8 (ms)", "",
             f"Command: `{cmd}`  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {a.samples} "
             f"samples per run, {a.gap * 1e3:.0f} ms apart; 2 shared cores.", "",
             "| run | face | load 1m | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['face']} | {r['load_avg_1m']} | {r['p50']:.2f} | "
                     f"{r['p90']:.2f} | {r['p99']:.2f} | {r['max']:.2f} |")
    lines.append("")
    for face in ("threads", "asyncio"):
        p99 = [r["p99"] for r in rows if r["face"] == face]
        p50 = [r["p50"] for r in rows if r["face"] == face]
        lines.append(f"- {face}: median p50 {statistics.median(p50):.2f} ms, median p99 "
                     f"{statistics.median(p99):.2f} ms ({min(p99):.2f}-{max(p99):.2f}); "
                     f"p99 <= 3 ms in {sum(x <= 3 for x in p99)} of {len(p99)} runs")
    out = Path(a.out)
    out.parent.joinpath(out.name + ".json").write_text(json.dumps(
        {"command": cmd, "rows": rows}, indent=1) + "\n")
    out.parent.joinpath(out.name + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
