"""Quorum queues on a 3-node RabbitMQ cluster: node failover ledger, and the broker-side bound.

Two measurements, on servers this script starts (``unifiedq.testing``):

* ``failover``: a 3-node :class:`~unifiedq.testing.rabbitmq_cluster.RabbitMQCluster`; per
  round, producers and consumers (processes) on a fresh quorum queue, all starting on one
  node, which is SIGKILLed ``--kill-after`` seconds in and restarted after the round (the
  next round kills the next node). Reported per round: confirmed / uncertain publishes,
  confirmed jobs lost (must be 0), duplicate deliveries, and the seconds from the kill to the
  first confirmed publish (slowest producer) and the first dequeue (slowest consumer).
* ``bound``: one node; per round and queue type, ``--producers`` processes each publish
  ``--per`` jobs one by one against ``maxsize=--bound``, no consumer: jobs accepted (the
  overshoot past the bound) and refusals reported.

Run: ``python benchmarks/amqp_cluster.py [failover|bound|all] [--rounds 5] [--json PATH]``.
Results: ``benchmarks/results/amqp_cluster.md`` (written by hand from the printed output).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
import uuid
from typing import Any

from unifiedq import QueueFull, connect
from unifiedq.testing.rabbitmq_cluster import RabbitMQCluster, failover_run
from unifiedq.testing.servers import RabbitMQServer


def failover(rounds: int, producers: int, consumers: int, jobs: int,
             kill_after: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with RabbitMQCluster(3) as cluster:
        print(f"cluster booted in {cluster.boot_seconds:.1f} s", flush=True)
        for r in range(rounds):
            kill = r % 3
            led = failover_run(cluster, queue=f"fo-{uuid.uuid4().hex[:8]}",
                               producers=producers, consumers=consumers, jobs=jobs,
                               kill_after=kill_after, kill=kill)
            row = {
                "round": r, "killed": cluster.nodes[kill].nodename,
                "confirmed": len(led.confirmed), "uncertain": len(led.uncertain),
                "lost": len(led.lost), "duplicates": led.duplicates,
                "produce_gap_s": round(led.produce_gap, 3),
                "consume_gap_s": round(led.consume_gap, 3), "errors": led.errors,
                "run_s": round(led.seconds, 1),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
            t = time.monotonic()
            cluster.nodes[kill].restart()
            while len(cluster.running_nodes(via=(kill + 1) % 3)) < 3:
                time.sleep(0.5)
            print(f"node back in {time.monotonic() - t:.1f} s", flush=True)
    return rows


def _produce(url: str, proc: int, per: int, start: Any, out: Any) -> None:
    q = connect(url)
    accepted = refused = 0
    start.wait()
    for i in range(per):
        try:
            q.enqueue(b"%d-%d" % (proc, i))
        except QueueFull:
            refused += 1
        else:
            accepted += 1
    q.close()
    out.put((accepted, refused))


def bound(rounds: int, producers: int, per: int, size: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    ctx = multiprocessing.get_context("fork")
    with RabbitMQServer() as server:
        for r in range(rounds):
            for qtype in ("classic", "quorum"):
                url = (f"{server.url}?queue=b-{uuid.uuid4().hex[:8]}&queue_type={qtype}"
                       f"&maxsize={size}")
                q = connect(url)
                q.size()
                start, out = ctx.Event(), ctx.Queue()
                procs = [ctx.Process(target=_produce, args=(url, p, per, start, out))
                         for p in range(producers)]
                for p in procs:
                    p.start()
                t = time.monotonic()
                start.set()
                res = [out.get(timeout=300) for _ in procs]
                took = time.monotonic() - t
                for p in procs:
                    p.join()
                accepted = sum(a for a, _ in res)
                row = {"round": r, "queue_type": qtype, "bound": size,
                       "attempts": producers * per, "accepted": accepted,
                       "refused": sum(b for _, b in res), "size": q.size(),
                       "overshoot": accepted - size, "seconds": round(took, 2)}
                print(json.dumps(row), flush=True)
                rows.append(row)
                q.purge()
                q.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["failover", "bound", "all"], nargs="?", default="all")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--producers", type=int, default=2, help="failover producers")
    ap.add_argument("--consumers", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=1500, help="failover jobs per producer")
    ap.add_argument("--kill-after", type=float, default=2.0)
    ap.add_argument("--bound-producers", type=int, default=16)
    ap.add_argument("--per", type=int, default=100)
    ap.add_argument("--bound", type=int, default=1000)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    result: dict[str, Any] = {"command": " ".join(["python", *sys.argv])}
    if args.what in ("bound", "all"):
        rows = bound(args.rounds, args.bound_producers, args.per, args.bound)
        result["bound"] = rows
        for qtype in ("classic", "quorum"):
            over = [r["overshoot"] for r in rows if r["queue_type"] == qtype]
            print(f"bound {qtype}: overshoot median {statistics.median(over)} "
                  f"range {min(over)}..{max(over)}")
    if args.what in ("failover", "all"):
        rows = failover(args.rounds, args.producers, args.consumers, args.jobs,
                        args.kill_after)
        result["failover"] = rows
        gaps = [r["produce_gap_s"] for r in rows]
        cgaps = [r["consume_gap_s"] for r in rows]
        print(f"failover: lost {sum(r['lost'] for r in rows)} of "
              f"{sum(r['confirmed'] for r in rows)} confirmed; duplicates "
              f"{sum(r['duplicates'] for r in rows)}; produce gap median "
              f"{statistics.median(gaps):.2f} s ({min(gaps):.2f}..{max(gaps):.2f}); consume gap "
              f"median {statistics.median(cgaps):.2f} s ({min(cgaps):.2f}..{max(cgaps):.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
