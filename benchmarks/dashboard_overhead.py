"""What watching a redis queue with the dashboard costs: one reading, and a consumer's rate.

    python benchmarks/dashboard_overhead.py [--rounds 7] [--jobs 20000] [--readings 500]
                                            [--interval 0.1] [--out PATH_WITHOUT_SUFFIX]

Not run by CI. On a private Redis (the test rig), in interleaved rounds, medians and ranges:

* reading: one dashboard reading of a queue (``QueueSource.sample()``: the stats script and
  asynq's counters) and one dead-letter listing (``dead_letters(50)``), against the raw
  client (redis-py) reading the same keys in one pipeline (LLEN pending/active, ZCARD
  scheduled/retry/archived/completed, EXISTS paused, the head's pending_since, GET
  processed/failed) and ZREVRANGE + HGET of 50 archived tasks. µs per reading.
* consumer: ``--jobs`` jobs drained by ``dequeue_many(50)`` + ``ack_many`` with nothing else
  running, and while another process reads the queue the way the dashboard does (a reading
  and a dead-letter listing every ``--interval`` seconds: 20x the default rate with a page
  open). Jobs/s, and the per-round ratio watched/alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

import unifiedq
from unifiedq.dashboard import QueueSource
from unifiedq.testing.servers import RedisServer

_WATCHER = r"""
import sys, time
from unifiedq.dashboard import QueueSource
src, interval = QueueSource(sys.argv[1]), float(sys.argv[2])
print("ready", flush=True)
while True:
    t = time.monotonic()
    s = src.sample()
    assert s.error is None, s.error
    src.dead_letters(50)
    time.sleep(max(0.0, interval - (time.monotonic() - t)))
"""


def _fill(q: Any, n: int, dead: int) -> None:
    for i in range(0, n, 500):
        q.enqueue_many([b"x" * 64] * min(500, n - i))
    for job in q.dequeue_many(dead, timeout=1):
        q.nack(job, requeue=False)


def reading_us(base: str, n: int) -> dict[str, float]:
    name = f"dash-{uuid.uuid4().hex[:8]}"
    url = f"{base}?queue={name}"
    out: dict[str, float] = {}
    with unifiedq.connect(url) as q:
        _fill(q, 1000, 60)
        src = QueueSource(url)
        raw: Any = redis.Redis.from_url(base)  # redis-py's stubs type pipelines loosely
        p = f"asynq:{{{name}}}:"
        try:
            src.sample()  # open the handle, load the scripts
            t = time.perf_counter()
            for _ in range(n):
                src.sample()
            out["reading, dashboard"] = (time.perf_counter() - t) / n * 1e6
            t = time.perf_counter()
            for _ in range(n):
                with raw.pipeline(transaction=False) as pl:
                    pl.llen(p + "pending").llen(p + "active").zcard(p + "scheduled")
                    pl.zcard(p + "retry").zcard(p + "archived").zcard(p + "completed")
                    pl.exists(p + "paused").lindex(p + "pending", -1)
                    pl.get(p + "processed").get(p + "failed")
                    head = pl.execute()[7]
                if head is not None:
                    raw.hget(p + "t:" + head.decode(), "pending_since")
            out["reading, raw redis-py"] = (time.perf_counter() - t) / n * 1e6
            t = time.perf_counter()
            for _ in range(n // 5):
                src.dead_letters(50)
            out["dead list (50), dashboard"] = (time.perf_counter() - t) / (n // 5) * 1e6
            t = time.perf_counter()
            for _ in range(n // 5):
                ids = raw.zrevrange(p + "archived", 0, 49, withscores=True)
                with raw.pipeline(transaction=False) as pl:
                    for jid, _score in ids:
                        pl.hget(p + "t:" + jid.decode(), "msg")
                    pl.execute()
            out["dead list (50), raw redis-py"] = (time.perf_counter() - t) / (n // 5) * 1e6
        finally:
            src.close()
            raw.close()
            q.purge()
    return out


def drain_rate(base: str, jobs: int, watched: bool, interval: float) -> float:
    url = f"{base}?queue=dash-{uuid.uuid4().hex[:8]}"
    with unifiedq.connect(url) as q:
        _fill(q, jobs, 50)
        proc = None
        if watched:
            proc = subprocess.Popen([sys.executable, "-c", _WATCHER, url, str(interval)],
                                    stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(2 * interval)
        try:
            done, t = 0, time.perf_counter()
            while done < jobs - 50:
                got = q.dequeue_many(50, timeout=1)
                q.ack_many(got)
                done += len(got)
            rate = done / (time.perf_counter() - t)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
            q.purge()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--readings", type=int, default=500)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--out", default="benchmarks/results/dashboard_overhead")
    a = ap.parse_args()
    reads: dict[str, list[float]] = {}
    rates: dict[str, list[float]] = {"alone": [], "watched": []}
    with RedisServer() as rs:
        for r in range(a.rounds):
            for k, v in reading_us(rs.url, a.readings).items():
                reads.setdefault(k, []).append(v)
            order = ("alone", "watched") if r % 2 == 0 else ("watched", "alone")
            for mode in order:
                rates[mode].append(drain_rate(rs.url, a.jobs, mode == "watched", a.interval))
    cmd = (f"python benchmarks/dashboard_overhead.py --rounds {a.rounds} --jobs {a.jobs} "
           f"--readings {a.readings} --interval {a.interval}")
    lines = [f"# Dashboard overhead on redis ({a.rounds} interleaved rounds)", "",
             f"Command: `{cmd}`", "",
             "2-core machine shared with other work: absolute numbers are noisy, ratios less so.",
             "", "| reading | µs median | range | vs raw redis-py (median of per-round ratios) |",
             "|---|---|---|---|"]
    for k, xs in reads.items():
        base = reads[k.split(",")[0] + ", raw redis-py"]
        ratio = statistics.median(x / b for x, b in zip(xs, base, strict=True))
        lines.append(f"| {k} | {statistics.median(xs):.0f} | {min(xs):.0f}-{max(xs):.0f} | "
                     f"{ratio:.2f}x |")
    ratios = [w / s for w, s in zip(rates["watched"], rates["alone"], strict=True)]
    lines += ["", f"| consumer ({a.jobs} jobs, dequeue_many(50) + ack_many) | jobs/s median "
              "| range |", "|---|---|---|"]
    for k, xs in rates.items():
        lines.append(f"| {k} | {statistics.median(xs):,.0f} | {min(xs):,.0f}-{max(xs):,.0f} |")
    med = statistics.median(ratios)
    lines += ["", f"Watched/alone, median of per-round ratios: **{med:.3f}x** "
              f"(range {min(ratios):.3f}-{max(ratios):.3f}); the watcher reads every "
              f"{a.interval} s (a reading and a dead-letter listing)."]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out + ".md").write_text(text)
    Path(a.out + ".json").write_text(json.dumps(
        {"rounds": a.rounds, "jobs": a.jobs, "interval": a.interval, "reading_us": reads,
         "jobs_per_s": rates, "watched_over_alone": ratios}, indent=1) + "\n")


if __name__ == "__main__":
    main()
