"""FairQueue dequeue rate vs the number of *known* tenants (issue 19's tenants table).

Setup per cell: ``K`` tenants declared (``tenants=``), 10 of them backlogged with ``J`` jobs
each (enqueued by a separate producer handle, as another process would), then ONE consumer
handle, created after the fill, runs dequeue + ack until the 10 x J jobs are drained.
Reported: jobs/s of that drain, its first scan included (the consumer's construction, which
opens a sub-queue handle per declared tenant under the local scheduler, is not).

Modes:

* ``memory`` / ``redis``: the in-process DRR (``scheduler="local"``);
* ``redis-server``: the server-side scheduler (``scheduler="server"``: one Lua script picks
  the tenant by weighted DRR over the Redis-kept set of backlogged tenants and leases its job).

Rounds are interleaved (every mode and tenant count once per round) and the table gives the
median over rounds, the range, and the ratio to the 10-tenant median of the same mode.

Usage::

    python benchmarks/fair_tenants.py                   # starts a private redis-server
    python benchmarks/fair_tenants.py --redis redis://127.0.0.1:6379/0 --rounds 5
    python benchmarks/fair_tenants.py --known 10,100,1000,10000 --md out.md --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from unifiedq.fair import FairQueue


def drain_rate(template: str, known: int, backlogged: int, jobs: int,
               scheduler: str) -> tuple[float, float]:
    """Fill ``backlogged`` of ``known`` tenants with ``jobs`` each; time one consumer's drain.

    Returns jobs per wall-clock second and jobs per CPU second of this (consumer) process.
    """
    tenants = [f"t{i:05d}" for i in range(known)]
    # The backlogged tenants are spread over the known ones (not the first few).
    step = max(1, known // backlogged)
    busy = tenants[::step][:backlogged]
    kw: dict[str, Any] = {"scheduler": scheduler} if scheduler != "local" else {}
    with FairQueue(template, **kw) as producer:
        for t in busy:
            producer.enqueue_many([b"x" * 16] * jobs, tenant=t)
    total = backlogged * jobs
    consumer = FairQueue(template, tenants=tenants, **kw)
    start = time.perf_counter()  # after the handles are opened: the drain, first scan included
    cpu = time.process_time()
    got = 0
    while got < total:
        j = consumer.dequeue(timeout=5)
        if j is None:
            raise RuntimeError(f"drained only {got} of {total} jobs")
        consumer.ack(j)
        got += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    assert consumer.dequeue() is None
    consumer.close()
    return total / elapsed, total / cpu


@contextlib.contextmanager
def redis_url(given: str | None) -> Iterator[str]:
    if given:
        yield given.split("?")[0]
        return
    from unifiedq.testing.servers import RedisServer
    with RedisServer() as srv:
        yield srv.url


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--redis", help="Redis URL (default: start a private redis-server)")
    p.add_argument("--known", default="10,100,1000,10000")
    p.add_argument("--backlogged", type=int, default=10)
    p.add_argument("--jobs", type=int, default=200, help="jobs per backlogged tenant")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", default="memory,redis,redis-server")
    p.add_argument("--local-redis-max", type=int, default=1000,
                   help="skip the local scheduler on redis above this many tenants (it opens "
                        "a connection per tenant handle: 10,000 exceed Redis' maxclients)")
    p.add_argument("--md", help="write the markdown table here")
    p.add_argument("--json", help="write the raw numbers here")
    args = p.parse_args()
    knowns = [int(k) for k in args.known.split(",")]
    modes = args.modes.split(",")
    rates: dict[tuple[str, int], list[float]] = {(m, k): [] for m in modes for k in knowns}
    cpus: dict[tuple[str, int], list[float]] = {(m, k): [] for m in modes for k in knowns}
    with redis_url(args.redis) as url:
        for r in range(args.rounds):
            for k in knowns:
                for m in modes:
                    if m == "redis" and k > args.local_redis_max:
                        continue
                    name = f"ft-{uuid.uuid4().hex[:6]}.{{tenant}}"
                    tpl = f"memory://{name}" if m == "memory" else f"{url}?queue={name}"
                    sched = "server" if m == "redis-server" else "local"
                    rate, per_cpu = drain_rate(tpl, k, args.backlogged, args.jobs, sched)
                    rates[(m, k)].append(rate)
                    cpus[(m, k)].append(per_cpu)
                    print(f"round {r + 1} {m:13} known={k:6} {rate:10.0f} jobs/s "
                          f"{per_cpu:10.0f} jobs/CPU-s", file=sys.stderr)
    lines = [
        f"Command: `python benchmarks/{' '.join(['fair_tenants.py', *sys.argv[1:]])}`",
        "",
        f"{args.backlogged} backlogged tenants x {args.jobs} jobs, one consumer, dequeue + ack "
        f"until drained; median of {args.rounds} interleaved rounds [min-max], ratio to the "
        "10-known median of the same mode. Wall-clock jobs/s, then jobs per CPU second of the "
        "consumer process (less sensitive to other load on the machine).",
    ]
    for label, table in (("jobs/s (wall clock)", rates), ("jobs per consumer CPU-second", cpus)):
        lines += ["", f"**{label}**", "",
                  "| tenants known | " + " | ".join(modes) + " |",
                  "|---|" + "---|" * len(modes)]
        for k in knowns:
            cells = []
            for m in modes:
                xs = table[(m, k)]
                if not xs:
                    cells.append("n/a (a connection per tenant handle)")
                    continue
                base = statistics.median(table[(m, knowns[0])])
                med = statistics.median(xs)
                cells.append(f"{med:,.0f} [{min(xs):,.0f}-{max(xs):,.0f}] ({med / base:.2f}x)")
            lines.append(f"| {k:,} | " + " | ".join(cells) + " |")
    out = "\n".join(lines)
    print(out)
    if args.md:
        with open(args.md, "w") as f:
            f.write(out + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"wall": {f"{m}/{k}": v for (m, k), v in rates.items()},
                       "cpu": {f"{m}/{k}": v for (m, k), v in cpus.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
