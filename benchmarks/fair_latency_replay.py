"""Light tenants' waits under a fair scheduler, replayed in simulated time (no machine noise).

The cross-process noisy-neighbour benchmark (``noisy_neighbour.py --consumer-procs 8``) runs
on the machine's wall clock: on a shared 2-core machine its p99 moves by 2x between runs with
the load of other processes. This replay asks the scheduler alone: the same arrivals (Poisson,
the same seeds: 9 light tenants at ``r`` jobs/s, a heavy one at ``10 r``, ``r`` = 119% of the
capacity / 19), ``C`` consumers with ``S`` seconds of non-preemptible work per job, but time is
simulated: every enqueue and dequeue is a real call on the real queue (Redis server script,
local DRR, FIFO), made in event order, and a job's wait is the simulated time from its arrival
to the dequeue that returned it. What remains is the order the scheduler chose.

Columns: ``unloaded`` (light tenants only, one FIFO queue: the target's reference), ``fifo``
(everyone, one queue), ``local`` (FairQueue's in-process DRR), ``server B`` (the server
scheduler with ``burst=B``), ``priority`` (the oracle: light jobs strictly first, two FIFO
queues; no fair scheduler can do better for the light tenants).

Usage::

    python benchmarks/fair_latency_replay.py --redis redis://127.0.0.1:6379/0 \
        [--secs 10] [--consumers 8] [--service 0.05] [--bursts 0,1,4,16] [--seeds 5]
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import uuid
from collections.abc import Callable
from typing import Any

import unifiedq
from unifiedq.fair import FairQueue

TENANTS = ["heavy"] + [f"t{i}" for i in range(1, 10)]
LIGHT = TENANTS[1:]


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def arrivals(tenants: list[str], rate: float, secs: float, seed: int) -> list[tuple[float, str]]:
    """(time, tenant) of every arrival, Poisson per tenant, sorted."""
    out = []
    for t in tenants:
        # seed -1: noisy_neighbour.py's own sequence (seeded by the tenant name alone)
        rng = random.Random(t if seed < 0 else f"{t}/{seed}")
        r = rate * (10 if t == "heavy" else 1)
        at = rng.expovariate(r)
        while at < secs:
            out.append((at, t))
            at += rng.expovariate(r)
    return sorted(out)


def replay(put: Callable[[str, float], object], get: Callable[[], tuple[str, float] | None],
           arr: list[tuple[float, str]], consumers: int, service: float) -> dict[str, list[float]]:
    """Serve ``arr`` with ``consumers`` consumers in simulated time; waits per tenant."""
    waits: dict[str, list[float]] = {}
    free = [0.0] * consumers  # when each consumer is next free (a heap)
    i, n, left = 0, len(arr), len(arr)
    while left:
        now = free[0]
        while i < n and arr[i][0] <= now:  # everything that arrived by now is enqueued
            put(arr[i][1], arr[i][0])
            i += 1
        got = get()
        if got is None:  # idle until the next arrival
            heapq.heapreplace(free, arr[i][0])
            continue
        t, at = got
        waits.setdefault(t, []).append(now - at)
        heapq.heapreplace(free, now + service)
        left -= 1
    return waits


def run_fifo(url: str, arr: list[tuple[float, str]], c: int, s: float) -> dict[str, list[float]]:
    q = unifiedq.connect(url.replace("{tenant}", "all"))

    def get() -> tuple[str, float] | None:
        j = q.dequeue()
        if j is None:
            return None
        q.ack(j)
        t, _, at = j.body.partition(b"|")
        return t.decode(), float(at)

    try:
        return replay(lambda t, at: q.enqueue(b"%s|%r" % (t.encode(), at)), get, arr, c, s)
    finally:
        q.purge()
        q.close()


def run_priority(url: str, arr: list[tuple[float, str]], c: int, s: float
                 ) -> dict[str, list[float]]:
    ql, qh = (unifiedq.connect(url.replace("{tenant}", n)) for n in ("light", "heavy"))

    def get() -> tuple[str, float] | None:
        for q in (ql, qh):
            j = q.dequeue()
            if j is not None:
                q.ack(j)
                t, _, at = j.body.partition(b"|")
                return t.decode(), float(at)
        return None

    def put(t: str, at: float) -> None:
        (qh if t == "heavy" else ql).enqueue(b"%s|%r" % (t.encode(), at))

    try:
        return replay(put, get, arr, c, s)
    finally:
        for q in (ql, qh):
            q.purge()
            q.close()


def run_fair(url: str, arr: list[tuple[float, str]], c: int, s: float,
             **opts: Any) -> dict[str, list[float]]:
    fq = FairQueue(url, tenants=TENANTS, **opts)

    def get() -> tuple[str, float] | None:
        j = fq.dequeue()
        if j is None:
            return None
        fq.ack(j)
        return fq.tenant_of(j), float(j.body)

    try:
        return replay(lambda t, at: fq.enqueue(repr(at).encode(), tenant=t), get, arr, c, s)
    finally:
        fq.purge()
        fq.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--redis", required=True)
    p.add_argument("--secs", type=float, default=10.0)
    p.add_argument("--consumers", type=int, default=8)
    p.add_argument("--service", type=float, default=0.05)
    p.add_argument("--bursts", default="0,1,4,16",
                   help="server scheduler burst values; 'default' passes none (the library's "
                        "default; also for trees older than burst=)")
    p.add_argument("--seeds", type=int, default=5, help="arrival sequences (seeds 0..N-1)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="-1 starts with noisy_neighbour.py's own arrival sequence")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    base = a.redis.split("?")[0]
    cap = a.consumers / a.service
    rate = 1.19 * cap / 19
    bursts = [None if b == "default" else float(b) for b in a.bursts.split(",") if b]
    labels = {b: "server" if b is None else f"server {b:g}" for b in bursts}
    cols = ["unloaded", "fifo", "local", *labels.values(), "priority"]
    per: dict[str, list[dict[str, float]]] = {k: [] for k in cols}
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        every, light = arrivals(TENANTS, rate, a.secs, seed), arrivals(LIGHT, rate, a.secs, seed)

        def url() -> str:
            return f"{base}?queue=flr-{uuid.uuid4().hex[:6]}.{{tenant}}"

        res: dict[str, dict[str, list[float]]] = {
            "unloaded": run_fifo(url(), light, a.consumers, a.service),
            "fifo": run_fifo(url(), every, a.consumers, a.service),
            "local": run_fair(url(), every, a.consumers, a.service),
        }
        for b in bursts:
            opts: dict[str, Any] = {} if b is None else {"burst": b}
            res[labels[b]] = run_fair(url(), every, a.consumers, a.service,
                                      scheduler="server", **opts)
        res["priority"] = run_priority(url(), every, a.consumers, a.service)
        for k, w in res.items():
            lw = [x for t in LIGHT for x in w.get(t, [])]
            counts = [len(w.get(t, [])) for t in TENANTS]
            assert sum(counts) == len(every if k != "unloaded" else light)  # exact accounting
            per[k].append({"p50": pct(lw, 50), "p99": pct(lw, 99), "max": max(lw),
                           "heavy_p50": pct(w["heavy"], 50) if "heavy" in w else 0.0})
        print(f"seed {seed}: light p99 " + "  ".join(
            f"{k} {per[k][-1]['p99'] * 1e3:.1f}ms" for k in cols), flush=True)
    print(f"\n{a.consumers} consumers x {a.service * 1e3:g} ms jobs (capacity {cap:g}/s), light "
          f"{rate:.2f}/s each x 9, heavy {10 * rate:.1f}/s (offered 119%, light alone 56%), "
          f"{a.secs:g} s simulated, {a.seeds} arrival seeds")
    print(f"{'':12}" + "".join(f"{k:>12}" for k in cols))
    for m in ("p50", "p99", "max"):
        print(f"{'light ' + m:12}" + "".join(
            f"{statistics.median(r[m] for r in per[k]) * 1e3:10.1f}ms" for k in cols))
    ratio = {k: [r["p99"] / u["p99"] for r, u in zip(per[k], per["unloaded"], strict=True)]
             for k in cols}
    print(f"{'p99/unl.':12}" + "".join(f"{statistics.median(ratio[k]):11.2f}x" for k in cols)
          + "   (median over seeds)")
    print(f"{'range':12}" + "".join(
        f"{min(ratio[k]):.2f}-{max(ratio[k]):.2f}x".rjust(12) for k in cols))
    print(f"{'heavy p50':12}" + "".join(
        f"{statistics.median(r['heavy_p50'] for r in per[k]) * 1e3:10.0f}ms"
        if k != "unloaded" else f"{'-':>12}" for k in cols))
    if a.json:
        print(json.dumps({"per_seed": per, "ratio": ratio}))


if __name__ == "__main__":
    main()
