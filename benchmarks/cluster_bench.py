"""redis+cluster:// throughput against redis-py's own cluster client, side by side in one run.

    python benchmarks/cluster_bench.py [--n 3000] [--rounds 5] \\
        [--out benchmarks/results/cluster_bench]

One ``RedisClusterRig`` (3 masters + 3 replicas) and one plain ``redis-server`` on loopback;
rounds interleave the variants, each phase's median over the rounds is reported with its
range, and the ratio to the raw cluster client. Variants (blocking clients, one thread):

* ``raw cluster``: the floor, redis-py's ``RedisCluster`` running a bare reliable queue on one
  hash tag (LPUSH / LMOVE into a processing list / LREM; pipelined for batches): no leases,
  no counters, not asynq-compatible;
* ``ours cluster``: ``redis+cluster://``, level 0 only;
* ``ours cluster 3 levels``: the same with jobs spread over priority levels 0, 3 and 7 on three
  different masters (a dequeue looks at up to three slots);
* ``ours single``: ``redis://`` on the plain server (what the cluster costs us).

Phases (``--n`` jobs each, 64-byte bodies): ``enqueue`` (one call per job), ``deq+ack`` (one
``dequeue`` and one ``ack`` per job), ``batch`` (``enqueue_many`` of 100, then
``dequeue_many(100)`` + ``ack_many``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

import unifiedq
from unifiedq.testing.cluster import RedisClusterRig
from unifiedq.testing.servers import RedisServer

BODY = b"x" * 64
Phase = Callable[[int], None]


def _spread(rig: RedisClusterRig) -> str:
    for i in range(200):
        name = f"b{i}"
        ports = {rig.node_of(f"asynq:{{{name if n == 0 else f'{name}:p{n}'}}}:x").port
                 for n in (0, 3, 7)}
        if len(ports) == 3:
            return name
    raise SystemExit("no queue name spreads over three masters")


def ours(url: str, prios: tuple[int | None, ...]) -> dict[str, Phase]:
    q = unifiedq.connect(url)

    def enqueue(n: int) -> None:
        for i in range(n):
            q.enqueue(BODY, priority=prios[i % len(prios)])

    def deq_ack(n: int) -> None:
        for _ in range(n):
            job = q.dequeue(timeout=1)
            assert job is not None
            q.ack(job)

    def batch(n: int) -> None:
        for i in range(0, n, 100):
            q.enqueue_many([BODY] * 100, priority=prios[(i // 100) % len(prios)])
        left = n
        while left:
            jobs = q.dequeue_many(100, timeout=1)
            assert jobs
            q.ack_many(jobs)
            left -= len(jobs)

    q.purge()
    return {"enqueue": enqueue, "deq+ack": deq_ack, "batch": batch}


def raw(rc: Any) -> dict[str, Phase]:
    tag = "{raw" + uuid.uuid4().hex[:6] + "}"
    pending, processing = f"{tag}:pending", f"{tag}:processing"

    def enqueue(n: int) -> None:
        for _ in range(n):
            rc.lpush(pending, BODY)

    def deq_ack(n: int) -> None:
        for _ in range(n):
            v = rc.lmove(pending, processing, "RIGHT", "LEFT")
            assert v is not None
            rc.lrem(processing, -1, v)

    def batch(n: int) -> None:
        for _ in range(0, n, 100):
            rc.lpush(pending, *([BODY] * 100))
        left = n
        while left:
            p = rc.pipeline()
            for _ in range(100):
                p.lmove(pending, processing, "RIGHT", "LEFT")
            got = [v for v in p.execute() if v is not None]
            p = rc.pipeline()
            for v in got:
                p.lrem(processing, -1, v)
            p.execute()
            left -= len(got)

    return {"enqueue": enqueue, "deq+ack": deq_ack, "batch": batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    with RedisClusterRig() as rig, RedisServer() as single:
        spread = _spread(rig)
        seed = rig.nodes[0]
        rc: Any = RedisCluster(startup_nodes=[ClusterNode(seed.host, seed.port)])  # type: ignore[no-untyped-call]
        variants: dict[str, dict[str, Phase]] = {
            "raw cluster": raw(rc),
            "ours cluster": ours(rig.url(queue="bench"), (None,)),
            "ours cluster 3 levels": ours(rig.url(queue=spread), (None, 3, 7)),
            "ours single": ours(f"{single.url}?queue=bench", (None,)),
        }
        for phases in variants.values():  # connections, slot maps, scripts: not measured
            for fn in phases.values():
                fn(100)
        times: dict[tuple[str, str], list[float]] = {}
        for r in range(a.rounds):
            for name, phases in variants.items():
                for phase, fn in phases.items():
                    t0 = time.perf_counter()
                    fn(a.n)
                    times.setdefault((name, phase), []).append(a.n / (time.perf_counter() - t0))
            print(f"round {r + 1} done", flush=True)
        rc.close()
        redis.Redis(port=single.port).flushall()
    floor = {ph: statistics.median(times[("raw cluster", ph)]) for ph in ("enqueue", "deq+ack",
                                                                         "batch")}
    lines = [
        "# redis+cluster:// throughput",
        "",
        f"`python benchmarks/cluster_bench.py --n {a.n} --rounds {a.rounds}` (3 masters + 3 "
        f"replicas and one plain redis-server on loopback, one blocking client thread, 64-byte "
        f"bodies, {time.strftime('%Y-%m-%d')}). jobs/s: median (min-max) of {a.rounds} "
        f"interleaved rounds; ratio: median over the raw cluster client's median.",
        "",
        "| variant | phase | jobs/s | ratio to raw cluster |",
        "|---|---|---|---|",
    ]
    out = {}
    for (name, phase), xs in times.items():
        m = statistics.median(xs)
        out[f"{name} / {phase}"] = {"median": m, "min": min(xs), "max": max(xs)}
        lines.append(f"| {name} | {phase} | {m:,.0f} ({min(xs):,.0f}-{max(xs):,.0f}) | "
                     f"{m / floor[phase]:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.with_suffix(".md").write_text(text)
        a.out.with_suffix(".json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
