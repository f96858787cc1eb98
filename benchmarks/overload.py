"""Overload: a 10x burst against a worker, with and without deadline / CoDel shedding.

One Worker (``C`` threads, each job takes ``S`` seconds: capacity ``C / S`` jobs/s) serves an
open-loop producer that offers half the capacity, then 10x that (5x capacity) for ``B``
seconds, then half again until the backlog is gone. Three policies, run side by side in
interleaved rounds on fresh queues:

* ``none``: every job runs, however long it waited.
* ``deadline``: every job is enqueued with ``ttl=T`` (its requester gives up after ``T`` s);
  the queue and the Worker settle jobs past it as expired instead of running them.
* ``codel``: no per-job deadline; the Worker has ``overload=CoDel(target, interval)``.

Reported per policy (median over rounds, and the range): sojourn p50/p99/max of the jobs that
ran (enqueue -> handler start, seconds), jobs run and shed, and how long after the burst's
start the last job started (the time to drain). Every job is accounted for: ran + shed ==
offered, checked each round.

Usage::

    python benchmarks/overload.py                         # memory://
    python benchmarks/overload.py --url redis://127.0.0.1:6379/0 --rounds 3
    python benchmarks/overload.py --json benchmarks/results/overload.json \\
        --md benchmarks/results/overload.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from typing import Any

import unifiedq
from unifiedq.deadlines import CoDel


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def one_run(url: str, policy: str, a: argparse.Namespace) -> dict[str, Any]:
    capacity = a.concurrency / a.service
    base, burst = capacity * 0.5, capacity * 5.0
    q = unifiedq.connect(url)
    starts: list[float] = []
    lock = threading.Lock()

    def handler(job: unifiedq.Job) -> None:
        t = time.time()
        with lock:
            starts.append(t - job.enqueued_at)
        time.sleep(a.service)

    opts: dict[str, Any] = {"ttl": a.ttl} if policy == "deadline" else {}
    overload = CoDel(a.target, a.interval) if policy == "codel" else None
    offered = 0
    w = unifiedq.Worker(q, handler, concurrency=a.concurrency, overload=overload,
                        poll_interval=0.01)
    w.start()
    t0 = time.monotonic()
    tick = 0.01
    owed = 0.0
    end_burst = a.warmup + a.burst
    total = end_burst + a.after
    burst_start_wall = 0.0
    while True:
        el = time.monotonic() - t0
        if el >= total:
            break
        if a.warmup <= el and not burst_start_wall:
            burst_start_wall = time.time()
        rate = burst if a.warmup <= el < end_burst else base
        owed += rate * tick
        n = int(owed)
        if n:
            owed -= n
            if n == 1:
                q.enqueue(b"x", **opts)
            else:
                q.enqueue_many([b"x"] * n, **opts)
            offered += n
        nxt = t0 + (int(el / tick) + 1) * tick
        time.sleep(max(0.0, nxt - time.monotonic()))
    # Drain: wait until every job is settled for good (done, expired or dead).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = w.stats()
        if st.processed + st.expired + st.dead >= offered and st.in_flight == 0:
            break
        time.sleep(0.02)
    drain = time.time() - burst_start_wall
    w.stop(grace=10)
    st = w.stats()
    q.close()
    ok = st.processed + st.expired + st.dead == offered
    return {
        "policy": policy, "offered": offered, "ran": st.processed, "shed": st.expired,
        "cut": st.timed_out, "dead": st.dead, "accounted": ok,
        "p50": pct(starts, 50), "p99": pct(starts, 99),
        "max": max(starts) if starts else float("nan"), "drain": drain,
    }


def fresh_url(base: str) -> str:
    name = f"overload-{uuid.uuid4().hex[:8]}"
    if base.startswith("memory://"):
        return f"memory://{name}"
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}queue={name}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="memory://")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--service", type=float, default=0.01, help="seconds per job")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--burst", type=float, default=2.0)
    ap.add_argument("--after", type=float, default=3.0)
    ap.add_argument("--ttl", type=float, default=0.5, help="deadline policy: ttl per job")
    ap.add_argument("--target", type=float, default=0.1, help="CoDel target sojourn")
    ap.add_argument("--interval", type=float, default=0.5, help="CoDel interval")
    ap.add_argument("--json")
    ap.add_argument("--md")
    a = ap.parse_args()
    policies = ["none", "deadline", "codel"]
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in policies}
    for r in range(a.rounds):
        order = policies[r % 3:] + policies[:r % 3]  # rotate: no policy always runs first
        for p in order:
            res = one_run(fresh_url(a.url), p, a)
            runs[p].append(res)
            print(f"round {r + 1} {p:8s} offered={res['offered']} ran={res['ran']} "
                  f"shed={res['shed']} cut={res['cut']} p50={res['p50']:.3f} p99={res['p99']:.3f} "
                  f"max={res['max']:.3f} drain={res['drain']:.2f} ok={res['accounted']}",
                  file=sys.stderr)
    cmd = "python " + " ".join(sys.argv)
    summary: dict[str, Any] = {"command": cmd, "params": vars(a), "runs": runs, "median": {}}
    keys = ("offered", "ran", "shed", "cut", "p50", "p99", "max", "drain")
    for p in policies:
        summary["median"][p] = {k: statistics.median(x[k] for x in runs[p]) for k in keys}
        summary["median"][p]["range_p99"] = [min(x["p99"] for x in runs[p]),
                                             max(x["p99"] for x in runs[p])]
        summary["median"][p]["all_accounted"] = all(x["accounted"] for x in runs[p])
    cap = a.concurrency / a.service
    lines = [
        f"# Overload: 10x burst, with and without shedding ({a.url.split('://')[0]}://)",
        "",
        f"Command: `{cmd}`",
        "",
        f"Worker capacity {cap:g} jobs/s ({a.concurrency} threads x {a.service * 1000:g} ms); "
        f"offered {cap * 0.5:g} jobs/s, then {cap * 5:g} jobs/s (10x) for {a.burst:g} s, then "
        f"{cap * 0.5:g} jobs/s. Sojourn = enqueue -> handler start, over every attempt started. "
        "`cut at deadline`: attempts started so close to their deadline that the Worker "
        "failed them as timed out at the deadline (each then expired on its retry). "
        f"Median of {a.rounds} interleaved rounds (p99 range in brackets). `deadline`: "
        f"`ttl={a.ttl:g}` per job; `codel`: `CoDel(target={a.target:g}, "
        f"interval={a.interval:g})`.",
        "",
        "| policy | offered | done | shed (expired) | cut at deadline | sojourn p50 (s) "
        "| p99 (s) [range] | max (s) | drain (s) | done + shed + dead == offered |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in policies:
        m = summary["median"][p]
        lo, hi = m["range_p99"]
        lines.append(
            f"| {p} | {m['offered']:.0f} | {m['ran']:.0f} | {m['shed']:.0f} | {m['cut']:.0f} "
            f"| {m['p50']:.3f} "
            f"| {m['p99']:.3f} [{lo:.3f}-{hi:.3f}] | {m['max']:.3f} | {m['drain']:.2f} "
            f"| {'yes' if m['all_accounted'] else 'NO'} |")
    base = summary["median"]["none"]["p99"]
    for p in ("deadline", "codel"):
        r = summary["median"][p]["p99"]
        lines.append("")
        lines.append(f"p99 sojourn, {p} vs none: {r:.3f} s vs {base:.3f} s "
                     f"({base / r:.1f}x lower)" if r > 0 else "")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=2)
    if a.md:
        with open(a.md, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
