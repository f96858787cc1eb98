"""A Redis Cluster master killed mid-run: recovery time and the job ledger, with and without
``min_replicas`` (WAIT).

For each round: a fresh ``RedisClusterRig`` (3 masters + 3 replicas, ``cluster-node-timeout``
1 s), a producer thread that enqueues ``--jobs`` jobs with known ids through
``redis+cluster://`` at a steady rate (retrying an enqueue that raised, as an application
would; an id whose enqueue *returned* is "acknowledged"), a consumer thread that dequeues and
acks batches the whole time, and a SIGKILL of the master serving the queue's slot once a third
of the jobs went out. The old master is then restarted (it rejoins as a replica) and the queue
drained. Reported per round: the promotion time (kill until the replica took a write), the
producer's and the consumer's outage (the longest time without a successful verb), acknowledged
jobs never processed (lost: replication is asynchronous) and jobs processed twice (a lease
or an ack lost with the old master: at-least-once).

    python benchmarks/cluster_failover.py --rounds 5 --jobs 10000 \\
        --out benchmarks/results/cluster_failover.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import unifiedq
from unifiedq.testing.cluster import RedisClusterRig


class _Outage:
    """The longest time one thread went without a successful verb."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.longest = 0.0

    def failed(self) -> None:
        pass

    def ok(self) -> None:
        now = time.monotonic()
        self.longest = max(self.longest, now - self.last)
        self.last = now

    @property
    def seconds(self) -> float:
        return self.longest


def one_round(jobs: int, min_replicas: int, rate: float, lag: float) -> dict[str, float]:
    with RedisClusterRig() as rig:
        opts = {"queue": "fo", "socket_timeout": "2", "visibility_timeout": "5"}
        if min_replicas:
            opts["min_replicas"] = str(min_replicas)
        url = rig.url(**opts)
        acked: list[str] = []
        processed: list[str] = []
        prod, cons = _Outage(), _Outage()
        errors = Counter[str]()
        reached = threading.Event()
        done = threading.Event()

        def produce() -> None:
            with unifiedq.connect(url) as q:
                t0 = time.monotonic()
                for i in range(jobs):
                    jid = f"j{i}"
                    pause = t0 + i / rate - time.monotonic()  # a steady offered load
                    if pause > 0:
                        time.sleep(pause)
                    if i == jobs // 3:
                        reached.set()
                    while True:
                        try:
                            q.enqueue(b"x", job_id=jid)
                        except unifiedq.DuplicateJob:  # an earlier try went through
                            pass
                        except unifiedq.NotReplicated:
                            # On the promoted master, which has no replica until the old one
                            # rejoins: counted acknowledged only once a retry says it is in.
                            errors["not_replicated"] += 1
                            prod.failed()
                            time.sleep(0.05)
                            continue
                        except unifiedq.BackendError as exc:
                            errors[type(exc).__name__] += 1
                            prod.failed()
                            time.sleep(0.05)
                            continue
                        acked.append(jid)
                        prod.ok()
                        break
            done.set()

        def consume() -> None:
            with unifiedq.connect(url) as q:
                while not done.is_set():
                    try:
                        batch = q.dequeue_many(100, timeout=0.2)
                        if batch:
                            q.ack_many(batch)
                            processed.extend(j.id for j in batch)
                        cons.ok()
                    except (unifiedq.BackendError, unifiedq.JobNotLeased) as exc:
                        errors[f"consumer {type(exc).__name__}"] += 1
                        cons.failed()
                        time.sleep(0.05)

        threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
        for t in threads:
            t.start()
        reached.wait()
        thaw = None
        if lag:  # a stalled replica (SIGSTOP) falls behind its master; thawed after the kill
            (replica,) = rig.replicas_of(rig.node_of("asynq:{fo}:x"))
            replica.freeze()
            thaw = replica.thaw
            time.sleep(lag)
        old, promoted = rig.kill_master_of("fo", after_kill=thaw)
        rig.rejoin(old)
        for t in threads:
            t.join()
        q: Any
        with unifiedq.connect(rig.url(queue="fo", visibility_timeout="5")) as q:
            deadline = time.monotonic() + 30  # leases lost with the old master expire first
            while time.monotonic() < deadline:
                batch = q.dequeue_many(500, timeout=0.5)
                processed.extend(j.id for j in batch)
                q.ack_many(batch) if batch else None
                if not batch and q.stats()["active"] == 0 and q.size() == 0:
                    break
        seen = Counter(processed)
        lost = [j for j in acked if j not in seen]
        return {"acked": len(acked), "lost": len(lost),
                "twice": sum(1 for n in seen.values() if n > 1),
                "promoted_s": promoted, "producer_outage_s": prod.seconds,
                "consumer_outage_s": cons.seconds, "errors": dict(errors)}  # type: ignore[dict-item]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=1000.0, help="enqueues per second offered")
    ap.add_argument("--lag", type=float, default=0.0,
                    help="seconds the queue's replica is stalled (SIGSTOP) before the kill "
                         "(below cluster-node-timeout, 1 s, so it is still promoted)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    rows: dict[int, list[dict[str, float]]] = {0: [], 1: []}
    for r in range(a.rounds):
        for mr in (0, 1):  # interleaved
            res = one_round(a.jobs, mr, a.rate, a.lag)
            rows[mr].append(res)
            print(f"round {r + 1} min_replicas={mr}: {res}", flush=True)

    def med(rs: list[dict[str, float]], k: str) -> str:
        xs = [x[k] for x in rs]
        return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"

    lines = [
        "# A Redis Cluster master killed mid-run",
        "",
        f"`python benchmarks/cluster_failover.py --rounds {a.rounds} --jobs {a.jobs} "
        f"--rate {a.rate:g} --lag {a.lag:g}` (3 masters + 3 replicas on loopback, "
        f"cluster-node-timeout 1 s; "
        f"a producer at {a.rate:g} jobs/s and a consumer (dequeue_many/ack_many of 100) run "
        f"the whole time; SIGKILL of the queue's master after a third of the jobs, then the "
        f"old master restarted as a replica; socket_timeout 2 s; the queue's replica stalled "
        f"(SIGSTOP) {a.lag:g} s before the kill, thawed after it; "
        f"{time.strftime('%Y-%m-%d')}).",
        "Times: median (min-max) over the rounds; an outage is the longest time a thread went "
        "without a successful verb (a verb retries within its deadline, so most of the "
        "promotion is spent inside one or two verbs).",
        "",
        "| min_replicas | failovers | jobs acknowledged (sum) | jobs lost per failover | "
        "processed twice (sum) | promotion s | producer outage s | consumer outage s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mr, rs in rows.items():
        lines.append(
            f"| {mr} | {len(rs)} | {sum(int(x['acked']) for x in rs)} | "
            f"{[int(x['lost']) for x in rs]} | {sum(int(x['twice']) for x in rs)} | "
            f"{med(rs, 'promoted_s')} | {med(rs, 'producer_outage_s')} | "
            f"{med(rs, 'consumer_outage_s')} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)
        a.out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
