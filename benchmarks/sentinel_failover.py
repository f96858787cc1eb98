"""Jobs lost across Redis Sentinel failovers, with and without ``min_replicas`` (WAIT).

For each round: a fresh rig (master, one replica, three Sentinels), a producer thread that
enqueues ``--jobs`` jobs with known ids through ``redis+sentinel://`` at a steady rate
(retrying an enqueue that raised a connection error, as an application would; an id whose
enqueue *returned* is "acknowledged"), and a SIGKILL of the master once a third of the jobs
went out. With ``--lag S`` the replica is stalled (SIGSTOP) for S seconds before the kill and
thawed right after it, so it falls behind as a slow or partitioned replica does. After the
failover the old master is restarted as a replica of the new one and the queue is drained:
an acknowledged id that is not there is a lost job. Redis replication is asynchronous, so
without ``min_replicas`` a job acknowledged by the old master before it died can be lost;
with ``min_replicas=1`` every acknowledged job was on the replica before the enqueue returned.

    python benchmarks/sentinel_failover.py --rounds 5 --jobs 10000 --lag 1.0 \\
        --out benchmarks/results/sentinel_failover_lag.md
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

import unifiedq
from unifiedq.testing.sentinel import RedisSentinelRig


def one_round(jobs: int, min_replicas: int, lag: float, rate: float) -> dict[str, float]:
    with RedisSentinelRig() as rig:
        opts = {"queue": "fo", "socket_timeout": "2"}
        if min_replicas:
            opts["min_replicas"] = str(min_replicas)
        acked: list[str] = []
        errors = {"not_replicated": 0, "connection": 0}
        kill_at = jobs // 3
        reached = threading.Event()
        t_err = [0.0]
        t_back = [0.0]

        def failed() -> None:
            if not t_err[0]:
                t_err[0] = time.monotonic()

        def produce() -> None:
            with unifiedq.connect(rig.url(**opts)) as q:
                t0 = time.monotonic()
                for i in range(jobs):
                    jid = f"j{i}"
                    pause = t0 + i / rate - time.monotonic()  # a steady offered load
                    if pause > 0:
                        time.sleep(pause)
                    if i == kill_at:
                        reached.set()
                    while True:
                        try:
                            q.enqueue(b"x", job_id=jid)
                            acked.append(jid)
                            if t_err[0] and not t_back[0]:
                                t_back[0] = time.monotonic()
                            break
                        except unifiedq.DuplicateJob:  # an earlier try went through
                            acked.append(jid)
                            break
                        except unifiedq.NotReplicated:
                            # On the new master, which has no replica until the old one
                            # rejoins: the job is queued; count it acknowledged only if a
                            # later retry sees it replicated (DuplicateJob above).
                            errors["not_replicated"] += 1
                            failed()
                            time.sleep(0.05)
                        except unifiedq.BackendConnectionError:
                            errors["connection"] += 1
                            failed()
                            time.sleep(0.05)

        t = threading.Thread(target=produce)
        t.start()
        reached.wait()
        replica = rig.replicas[0]
        if lag:  # a stalled replica (SIGSTOP) falls behind; thawed right after the kill
            # (Toxiproxy on the replication link does not work here: Sentinel repoints a
            # replica whose master address differs from the one it monitors.)
            replica.freeze()
            time.sleep(lag)
        old, promoted = rig.fail_over(after_kill=replica.thaw if lag else None)
        rig.rejoin(old)
        t.join()
        with unifiedq.connect(rig.url(queue="fo")) as q:
            present: set[str] = set()
            while batch := q.dequeue_many(500, timeout=0.5):
                present.update(j.id for j in batch)
                q.ack_many(batch)
        lost = [j for j in acked if j not in present]
        return {"lost": len(lost), "acked": len(acked), "promoted_s": promoted,
                "outage_s": (t_back[0] - t_err[0]) if t_back[0] else 0.0,
                "connection_errors": errors["connection"],
                "not_replicated": errors["not_replicated"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--lag", type=float, default=0.0,
                    help="seconds the replica is stalled (SIGSTOP) before the master dies")
    ap.add_argument("--rate", type=float, default=1000.0, help="enqueues per second offered")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    rows: dict[int, list[dict[str, float]]] = {0: [], 1: []}
    for r in range(a.rounds):
        for mr in (0, 1):  # interleaved
            res = one_round(a.jobs, mr, a.lag, a.rate)
            rows[mr].append(res)
            print(f"round {r + 1} min_replicas={mr}: {res}", flush=True)
    lines = [
        "# Jobs lost across Redis Sentinel failovers",
        "",
        f"`python benchmarks/sentinel_failover.py --rounds {a.rounds} --jobs {a.jobs} "
        f"--lag {a.lag} --rate {a.rate:g}` (one master, one replica, three Sentinels on "
        f"loopback; SIGKILL of the master after a third of the jobs; the replica stalled "
        f"(SIGSTOP) {a.lag} s before the kill, thawed after it; "
        f"{time.strftime('%Y-%m-%d')}).",
        "",
        "| min_replicas | failovers | jobs acknowledged (sum) | jobs lost (sum) | lost per "
        "failover | promotion s (median) | producer outage s (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mr, rs in rows.items():
        lines.append(
            f"| {mr} | {len(rs)} | {sum(int(x['acked']) for x in rs)} | "
            f"{sum(int(x['lost']) for x in rs)} | {[int(x['lost']) for x in rs]} | "
            f"{statistics.median(x['promoted_s'] for x in rs):.2f} | "
            f"{statistics.median(x['outage_s'] for x in rs):.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
