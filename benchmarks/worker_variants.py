"""Worker options side by side on redis://: ``prefetch=0``, the default (``prefetch="auto"``),
``prefetch=8``, ``ack_with_fetch``.

    python benchmarks/worker_variants.py [--rounds 6] [--jobs 10000] [--concurrency 8]
        [--variants prefetch0,default,prefetch8,ack_with_fetch]
        [--out benchmarks/results/worker_variants]

Not run by CI. One private Redis (the test rig); each round runs every variant on both faces
(``Worker``, ``AsyncWorker``), the variants' order rotated every round so that no variant
always runs first. Each run drains ``--jobs`` pre-enqueued 64-byte no-op jobs in this process;
rate = jobs / (last handler end - first handler start), CPU = ``time.process_time`` over the
same window per 10k jobs. Ratios are medians of per-round ratios against the first variant.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import unifiedq
from unifiedq import AsyncWorker, Worker
from unifiedq.testing.servers import RedisServer

OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},  # prefetch="auto"
    "prefetch0": {"kwargs": {"prefetch": 0}},
    "ack_with_fetch": {"attrs": {"ack_with_fetch": True}},
    "prefetch8": {"kwargs": {"prefetch": 8}},
    "prefetch8_ack_with_fetch": {"kwargs": {"prefetch": 8}, "attrs": {"ack_with_fetch": True}},
}


def run(url: str, face: str, variant: str, n: int, conc: int) -> tuple[float, float]:
    cnt = [0]
    t: dict[str, float] = {}
    lock = threading.Lock()
    done = threading.Event()
    opt = OPTIONS[variant]

    def mark() -> bool:
        cnt[0] += 1
        if cnt[0] == 1:
            t["first"], t["cpu"] = time.perf_counter(), time.process_time()
        if cnt[0] == n:
            t["last"], t["cpu1"] = time.perf_counter(), time.process_time()
            return True
        return False

    def make(handler: Any) -> Any:
        cls: Any = Worker if face == "threads" else AsyncWorker
        w = cls(url, handler, concurrency=conc, **opt.get("kwargs", {}))
        for k, v in opt.get("attrs", {}).items():
            setattr(w, k, v)
        return w

    if face == "threads":
        def handler(job: Any) -> None:
            with lock:
                if mark():
                    done.set()

        w = make(handler)
        w.start()
        done.wait(300)
        w.stop()
    else:
        async def main() -> None:
            ev = asyncio.Event()

            async def ahandler(job: Any) -> None:
                if mark():
                    ev.set()

            aw = make(ahandler)
            aw.start()
            await asyncio.wait_for(ev.wait(), 300)
            await aw.stop()

        asyncio.run(main())
    return n / (t["last"] - t["first"]), (t["cpu1"] - t["cpu"]) * 1e4 / n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--variants", default="prefetch0,default,prefetch8,ack_with_fetch")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"
                                        / "worker_variants"))
    a = p.parse_args()
    variants = a.variants.split(",")
    res: dict[str, dict[str, list[tuple[float, float]]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    loads = []
    with RedisServer() as srv:
        i = 0
        for r in range(a.rounds):
            loads.append(os.getloadavg()[0])
            for face in ("threads", "asyncio"):
                order = variants[r % len(variants):] + variants[:r % len(variants)]
                for v in order:
                    i += 1
                    url = f"{srv.url}?queue=wv{i}"
                    with unifiedq.connect(url) as q:
                        for s in range(0, a.jobs, 500):
                            q.enqueue_many([b"x" * 64] * min(500, a.jobs - s))
                    res[face][v].append(run(url, face, v, a.jobs, a.concurrency))
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(
                f"{f}/{v} {res[f][v][-1][0]:,.0f}" for f in res for v in variants),
                file=sys.stderr, flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    cmd = "python benchmarks/worker_variants.py " + " ".join(sys.argv[1:])
    lines = ["# Worker options on redis:// (default vs ack_with_fetch vs prefetch)", "",
             f"Command: `{cmd}`  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {commit}; "
             f"{a.rounds} rounds, order rotated; {a.jobs:,} no-op jobs, concurrency "
             f"{a.concurrency}; 2 shared cores, 1-minute load average "
             f"{min(loads):.1f}-{max(loads):.1f} at round starts.", "",
             f"| face | variant | jobs/s median (min-max) | x {variants[0]} (per-round, median, "
             "min-max) | CPU s / 10k |", "|---|---|---|---|---|"]
    summary: dict[str, Any] = {}
    for face in res:
        for v in variants:
            rates = [x[0] for x in res[face][v]]
            cpus = [x[1] for x in res[face][v]]
            ratios = [x[0] / y[0] for x, y in zip(res[face][v], res[face][variants[0]],
                                                    strict=True)]
            summary[f"{face}/{v}"] = {"rates": rates, "cpu_per_10k": cpus, "ratios": ratios}
            rel = "—" if v == variants[0] else (
                f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
            lines.append(f"| {face} | {v} | {statistics.median(rates):,.0f} "
                         f"({min(rates):,.0f}-{max(rates):,.0f}) | {rel} | "
                         f"{statistics.median(cpus):.2f} |")
    out = Path(a.out)
    out.parent.joinpath(out.name + ".json").write_text(json.dumps(
        {"command": cmd, "commit": commit, "loads": loads, "summary": summary}, indent=1) + "\n")
    out.parent.joinpath(out.name + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
