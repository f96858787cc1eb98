"""The server fair scheduler on Redis Cluster vs one Redis server: dequeue cost, side by side.

One consumer process, ``FairQueue(scheduler="server")``, 10 tenants backlogged with ``--n`` jobs
each, dequeue + ack until drained; interleaved rounds of:

* ``single server``: ``redis://`` on one ``redis-server`` (one script picks and leases);
* ``cluster server``: ``redis+cluster://`` on a ``RedisClusterRig`` (a pick on the scheduler's
  slot, then the lease on the tenant's slot: see ``unifiedq.drivers.redis._fair_cluster``);
* ``cluster local``: the local scheduler on the same cluster (one DRR in the process);
* ``cluster plain``: one plain queue on the cluster holding the same jobs (no fairness: the
  floor of a dequeue + ack there).

Also the bound: ``BoundedQueue`` enqueues per second on the single server and the cluster,
against a plain enqueue on the cluster.

Usage::

    python benchmarks/cluster_fair.py --n 200 --rounds 3 [--json out.json]
    # noisy_neighbour.py's cross-process run (C) against a fresh cluster rig:
    python benchmarks/cluster_fair.py --noisy --consumer-procs 8 --producer-procs 4 ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import unifiedq
from unifiedq.bounded import BoundedQueue
from unifiedq.fair import FairQueue
from unifiedq.testing.cluster import RedisClusterRig
from unifiedq.testing.servers import RedisServer

TENANTS = [f"t{i}" for i in range(10)]


def fair_round(base: str, scheduler: str, n: int) -> float:
    tpl = f"{base}?queue=cf-{uuid.uuid4().hex[:6]}.{{tenant}}"
    with FairQueue(tpl, scheduler=scheduler, tenants=TENANTS) as fq:  # type: ignore[arg-type]
        for t in TENANTS:
            fq.enqueue_many([b"x"] * n, tenant=t)
        t0 = time.perf_counter()
        got = 0
        while got < n * len(TENANTS):
            job = fq.dequeue(timeout=5)
            assert job is not None
            fq.ack(job)
            got += 1
        dt = time.perf_counter() - t0
        fq.purge()
    return got / dt


def plain_round(base: str, n: int) -> float:
    q = unifiedq.connect(f"{base}?queue=cfp-{uuid.uuid4().hex[:6]}")
    with q:
        q.enqueue_many([b"x"] * (n * len(TENANTS)))
        t0 = time.perf_counter()
        for _ in range(n * len(TENANTS)):
            job = q.dequeue(timeout=5)
            assert job is not None
            q.ack(job)
        dt = time.perf_counter() - t0
        q.purge()
    return n * len(TENANTS) / dt


def enqueue_round(base: str, n: int, bounded: bool) -> float:
    url = f"{base}?queue=cfb-{uuid.uuid4().hex[:6]}"
    q: Any = BoundedQueue(url, maxsize=10 * n * len(TENANTS)) if bounded \
        else unifiedq.connect(url)
    with q:
        t0 = time.perf_counter()
        for _ in range(n * len(TENANTS)):
            q.enqueue(b"x")
        dt = time.perf_counter() - t0
        q.purge()
    return n * len(TENANTS) / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="jobs per tenant")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--noisy", action="store_true",
                    help="instead: run noisy_neighbour.py --redis <cluster URL> with the "
                         "arguments after --noisy")
    argv = sys.argv[1:]
    rest: list[str] = []
    if "--noisy" in argv:  # everything after it is noisy_neighbour.py's
        i = argv.index("--noisy")
        argv, rest = argv[:i + 1], [a for a in argv[i + 1:] if a != "--"]
    args = ap.parse_args(argv)
    if args.noisy:
        with RedisClusterRig() as rig:
            url = rig.url().split("?")[0]
            print(f"noisy_neighbour.py --redis {url} {' '.join(rest)}", flush=True)
            subprocess.run([sys.executable, "benchmarks/noisy_neighbour.py", "--redis", url,
                            *rest], check=True)
        return
    with RedisServer() as single, RedisClusterRig() as rig:
        s, c = single.url.split("?")[0], rig.url().split("?")[0]
        variants: dict[str, Callable[[], float]] = {
            "dequeue: single server": lambda: fair_round(s, "server", args.n),
            "dequeue: cluster server": lambda: fair_round(c, "server", args.n),
            "dequeue: cluster local": lambda: fair_round(c, "local", args.n),
            "dequeue: cluster plain queue": lambda: plain_round(c, args.n),
            "enqueue: single bounded": lambda: enqueue_round(s, args.n, True),
            "enqueue: cluster bounded": lambda: enqueue_round(c, args.n, True),
            "enqueue: cluster plain": lambda: enqueue_round(c, args.n, False),
        }
        for fn in variants.values():  # warm up: scripts loaded, slot maps read
            fn()
        runs: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, fn in variants.items():
                runs[k].append(fn())
    rows = []
    ref = {"dequeue": statistics.median(runs["dequeue: single server"]),
           "enqueue": statistics.median(runs["enqueue: cluster plain"])}
    print("| variant | jobs/s median (range) | ratio |\n|---|---|---|")
    for k, xs in runs.items():
        med = statistics.median(xs)
        ratio = med / ref[k.split(":")[0]]
        rows.append({"variant": k, "median": med, "min": min(xs), "max": max(xs),
                     "ratio": ratio, "runs": xs})
        print(f"| {k} | {med:,.0f} ({min(xs):,.0f}-{max(xs):,.0f}) | {ratio:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "rounds": args.rounds, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
