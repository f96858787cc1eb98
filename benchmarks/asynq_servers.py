"""What registering in asynq's server list costs: one heartbeat, and a Worker's throughput.

    python benchmarks/asynq_servers.py [--rounds 5] [--jobs 5000] [--concurrency 8]

Not run by CI. Against a private ``RedisServer`` from the test rig, side by side in one run:

* **heartbeat**: ``SyncServerRegistration.heartbeat`` with 0, 8 and 64 running jobs, against
  the same commands sent raw with a redis-py pipeline (``SMEMBERS``, then
  ``MULTI``..``EXEC`` with the protobufs encoded beforehand): the rate of each, as µs per call
  (median of ``--calls`` per round).
* **worker**: ``--jobs`` no-op jobs consumed by a ``Worker`` (``--concurrency``) with the
  registry off (the hook hidden), on at asynq's 5 s period, and on at 0.05 s (100x asynq's
  rate, to make any cost visible): jobs/s.

Rounds interleave every variant (machine noise hits all alike); medians, ranges and ratios
are reported. Results: ``benchmarks/results/asynq_servers.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

import unifiedq
from unifiedq import Job, Worker
from unifiedq._async import worker as async_worker_mod
from unifiedq._consumers import ConsumerInfo, RunningJob, registry_opener
from unifiedq._sync import worker as sync_worker_mod
from unifiedq.drivers.redis import RedisQueue, _servers
from unifiedq.drivers.redis._sync.registry import SyncServerRegistration
from unifiedq.testing.servers import RedisServer

RESULTS = Path(__file__).parent / "results"


def running_jobs(n: int) -> list[RunningJob]:
    now = time.time()
    return [RunningJob(Job(id=str(uuid.uuid4()), queue="hb", body=b"x" * 64,
                           headers={"type": "bench:job"}), now, now + 60) for _ in range(n)]


def bench_heartbeat(url: str, n: int, calls: int) -> tuple[float, float]:
    """µs per heartbeat: ours, and the same commands raw through redis-py."""
    q = unifiedq.connect(f"{url}?queue=hb")
    assert isinstance(q, RedisQueue)
    reg = q.open_consumer_registry(ConsumerInfo(concurrency=8, queues={}, started_at=time.time()))
    jobs = running_jobs(n)
    r = redis.Redis.from_url(url)
    info = _servers.ServerInfo("host", 1, reg.server_id + "-raw", 8, {"hb": 1}, "active",
                               time.time(), active_worker_count=n)
    workers = [(j.job.id, _servers.encode_worker("host", 1, reg.server_id + "-raw",
                                                 _servers.WorkerInfo(j.job.id, "bench:job",
                                                                     j.job.body, "hb",
                                                                     j.started_at, j.deadline)))
               for j in jobs]
    try:
        t0 = time.perf_counter()
        for _ in range(calls):
            reg.heartbeat(jobs)
        ours = (time.perf_counter() - t0) / calls * 1e6
        cmds = _servers.write_commands(info, workers, 10, time.time())  # encoded once

        def raw_beat() -> None:
            r.smembers("asynq:{hb}:uq:levels")
            p = r.pipeline(transaction=True)
            for cmd in cmds:
                p.execute_command(*cmd)  # type: ignore[no-untyped-call]
            p.execute()

        # Batches of 10 calls, alternating ours and raw: the median batch of each.
        mine: list[float] = []
        theirs: list[float] = []
        for _ in range(max(1, calls // 10)):
            t0 = time.perf_counter()
            for _ in range(10):
                reg.heartbeat(jobs)
            t1 = time.perf_counter()
            for _ in range(10):
                raw_beat()
            t2 = time.perf_counter()
            mine.append((t1 - t0) / 10 * 1e6)
            theirs.append((t2 - t1) / 10 * 1e6)
        ours, raw = statistics.median(mine), statistics.median(theirs)
    finally:
        reg.close()
        q.close()
        r.delete(_servers.server_key("host", 1, reg.server_id + "-raw"),
                 _servers.workers_key("host", 1, reg.server_id + "-raw"))
        r.close()
    return ours, raw


def bench_worker(url: str, variant: str, jobs: int, concurrency: int) -> tuple[float, float]:
    """jobs/s of a Worker draining ``jobs`` pre-enqueued no-op jobs, and its CPU s per 10k."""
    qname = f"wk-{uuid.uuid4().hex[:8]}"
    qurl = f"{url}?queue={qname}"
    with unifiedq.connect(qurl) as q:
        for i in range(0, jobs, 1000):
            q.enqueue_many([b"x" * 64] * min(1000, jobs - i))
    saved = getattr(sync_worker_mod, "registry_opener")  # noqa: B009
    if variant == "off":  # the worker looks the hook up through this name at start()
        setattr(sync_worker_mod, "registry_opener", lambda queue: None)  # noqa: B010
    SyncServerRegistration.INTERVAL = 0.05 if variant == "on-0.05s" else 5.0
    done = 0

    def handler(job: Job) -> None:
        nonlocal done
        done += 1

    try:
        w = Worker(qurl, handler, concurrency=concurrency)
        t0, c0 = time.perf_counter(), time.process_time()
        w.start()
        while done < jobs:
            time.sleep(0.005)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        w.stop()
    finally:
        setattr(sync_worker_mod, "registry_opener", saved)  # noqa: B010
        SyncServerRegistration.INTERVAL = 5.0
    return jobs / elapsed, cpu / jobs * 10_000


def fmt_ratio(s: dict[str, float]) -> str:
    return f"{s['median']:.2f}x [{s['min']:.2f}..{s['max']:.2f}]"


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    assert getattr(async_worker_mod, "registry_opener") is registry_opener  # noqa: B009
    hb: dict[str, list[float]] = {}
    wk: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    with RedisServer() as server:
        url = server.url
        for rnd in range(args.rounds):
            for n in (0, 8, 64):
                ours, raw = bench_heartbeat(url, n, args.calls)
                hb.setdefault(f"ours/{n}", []).append(ours)
                hb.setdefault(f"raw/{n}", []).append(raw)
            variants = ["off", "on-5s", "on-0.05s"]
            for v in variants[rnd % 3:] + variants[:rnd % 3]:  # rotate the order
                rate, cpu10k = bench_worker(url, v, args.jobs, args.concurrency)
                wk.setdefault(v, []).append(rate)
                cpu.setdefault(v, []).append(cpu10k)
            print(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in
                                                   {**hb, **wk}.items()), file=sys.stderr)
    out: dict[str, Any] = {
        "command": "python benchmarks/asynq_servers.py " + " ".join(sys.argv[1:]),
        "python": platform.python_version(), "machine": platform.machine(),
        "rounds": args.rounds, "jobs": args.jobs, "concurrency": args.concurrency,
        "heartbeat_us": {k: summary(v) for k, v in hb.items()},
        "worker_jobs_per_s": {k: summary(v) for k, v in wk.items()},
        "worker_cpu_s_per_10k": {k: summary(v) for k, v in cpu.items()},
        # Ratios within each round (the same seconds of machine load), then their median.
        "paired_ratio": {
            **{f"heartbeat/{n}": summary([o / r for o, r in zip(hb[f"ours/{n}"],
                                                                hb[f"raw/{n}"], strict=True)])
               for n in (0, 8, 64)},
            **{f"worker/{v}": summary([a / b for a, b in zip(wk[v], wk["off"], strict=True)])
               for v in ("on-5s", "on-0.05s")},
            **{f"cpu/{v}": summary([a / b for a, b in zip(cpu[v], cpu["off"], strict=True)])
               for v in ("on-5s", "on-0.05s")},
        },
        "raw": {"heartbeat_us": hb, "worker_jobs_per_s": wk, "worker_cpu_s_per_10k": cpu},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "asynq_servers.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# asynq server registry: cost",
        "",
        f"`{out['command']}` — {args.rounds} interleaved rounds, private redis-server, "
        "shared 2-core machine; median [min..max].",
        "",
        "## One heartbeat (µs per call)",
        "",
        "| running jobs | ours | raw redis-py (same commands, pre-encoded) | ours / raw, "
        "per round |",
        "|---|---|---|---|",
    ]
    for n in (0, 8, 64):
        o, r = out["heartbeat_us"][f"ours/{n}"], out["heartbeat_us"][f"raw/{n}"]
        lines.append(f"| {n} | {o['median']:.0f} [{o['min']:.0f}..{o['max']:.0f}] | "
                     f"{r['median']:.0f} [{r['min']:.0f}..{r['max']:.0f}] | "
                     f"{fmt_ratio(out['paired_ratio'][f'heartbeat/{n}'])} |")
    lines += ["", f"## Worker throughput (jobs/s, {args.jobs} no-op jobs, concurrency "
              f"{args.concurrency})", "",
              "| registry | jobs/s | on / off, per round | CPU s per 10k jobs "
              "| on / off, per round |",
              "|---|---|---|---|---|"]
    for v in ("off", "on-5s", "on-0.05s"):
        s = out["worker_jobs_per_s"][v]
        c = out["worker_cpu_s_per_10k"][v]
        ratio = "1" if v == "off" else fmt_ratio(out["paired_ratio"][f"worker/{v}"])
        cratio = "1" if v == "off" else fmt_ratio(out["paired_ratio"][f"cpu/{v}"])
        lines.append(f"| {v} | {s['median']:.0f} [{s['min']:.0f}..{s['max']:.0f}] | {ratio} | "
                     f"{c['median']:.2f} [{c['min']:.2f}..{c['max']:.2f}] | {cratio} |")
    (RESULTS / "asynq_servers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
