"""Client CPU per job of the redis:// driver, two source trees side by side (e.g. before and
after a change that must not slow the single-server path down).

    python benchmarks/redis_client_cpu.py --tree before=/tmp/uq_before/src --tree after=src \\
        [--n 5000] [--rounds 9] [--out benchmarks/results/redis_client_cpu]

Wall-clock rates on a shared 2-core machine swing by 2x between rounds; the client's own CPU
time (``time.process_time()`` of the process running the verbs) hardly depends on what else
runs, so it shows what a driver change costs the caller. Each measurement runs in a fresh
child process (``PYTHONPATH`` = the tree) against one private ``redis-server``; rounds
interleave the trees. Phases (``--n`` jobs, 64-byte bodies, blocking face): ``enqueue`` (one
call per job), ``deq+ack`` (``dequeue`` + ``ack`` per job), ``batch`` (``enqueue_many`` of 100,
``dequeue_many(100)`` + ``ack_many``). Reported: client CPU microseconds per job, median
(min-max) over the rounds, and each tree's ratio to the first.

``--instructions`` counts the client process's instructions under valgrind instead (run with
``--n`` jobs minus run with none, per job: deterministic); there ``deq+ack`` also enqueues
each job (enqueue + dequeue + ack).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(url: str, n: int, only: str | None = None) -> dict[str, float]:
    import unifiedq

    body = b"x" * 64
    q = unifiedq.connect(f"{url}?queue=cpu{uuid.uuid4().hex[:8]}&heartbeat=false")
    for _ in range(50):  # warm: connections and scripts
        q.enqueue(body)
        warm = q.dequeue(timeout=1)
        assert warm is not None
        q.ack(warm)
    out: dict[str, float] = {}

    def enqueue() -> None:
        for _ in range(n):
            q.enqueue(body)

    def deq_ack() -> None:
        for _ in range(n):
            if only is not None:  # counted whole: the jobs are made in the same loop
                q.enqueue(body)
            job = q.dequeue(timeout=1)
            assert job is not None
            q.ack(job)

    def batch() -> None:
        for _ in range(0, n, 100):
            q.enqueue_many([body] * 100)
        left = n
        while left:
            jobs = q.dequeue_many(100, timeout=1)
            q.ack_many(jobs)
            left -= len(jobs)

    for name, fn in (("enqueue", enqueue), ("deq+ack", deq_ack), ("batch", batch)):
        if only is not None and name != only:
            continue
        c0 = time.process_time()
        fn()
        out[name] = (time.process_time() - c0) / max(n, 1) * 1e6
    q.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--url")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--tree", action="append", default=[], help="NAME=PATH of a src folder")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--phase", help="child: run this phase only")
    ap.add_argument("--instructions", action="store_true",
                    help="count the client's instructions under valgrind (deterministic)")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.url, a.n, a.phase)))
        return
    if a.instructions:
        instructions(a)
        return
    from unifiedq.testing.servers import RedisServer

    trees = [t.split("=", 1) for t in (a.tree or [f"this={ROOT / 'src'}"])]
    got: dict[str, dict[str, list[float]]] = {name: {} for name, _ in trees}
    with RedisServer() as server:
        for r in range(a.rounds):
            for name, path in trees:
                env = dict(os.environ, PYTHONPATH=str(Path(path).resolve()))
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", "--url", server.url, "--n",
                     str(a.n)], env=env, capture_output=True, text=True, check=True,
                    cwd="/")
                for phase, v in json.loads(proc.stdout.splitlines()[-1]).items():
                    got[name].setdefault(phase, []).append(v)
            print(f"round {r + 1} done", flush=True)
    first = trees[0][0]
    lines = [
        "# redis:// client CPU per job",
        "",
        f"`python benchmarks/redis_client_cpu.py "
        f"{' '.join(f'--tree {n}={p}' for n, p in trees)} --n {a.n} --rounds {a.rounds}` "
        f"({time.strftime('%Y-%m-%d')}; one private redis-server, blocking face, 64-byte "
        f"bodies; client `process_time` per job, median (min-max) of {a.rounds} interleaved "
        f"rounds, each a fresh process).",
        "",
        "| tree | phase | client CPU us/job | ratio to " + first + " |",
        "|---|---|---|---|",
    ]
    for name, phases in got.items():
        for phase, xs in phases.items():
            m = statistics.median(xs)
            base = statistics.median(got[first][phase])
            lines.append(f"| {name} | {phase} | {m:.1f} ({min(xs):.1f}-{max(xs):.1f}) | "
                         f"{m / base:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.with_suffix(".md").write_text(text)
        a.out.with_suffix(".json").write_text(json.dumps(got, indent=1))


def instructions(a: argparse.Namespace) -> None:
    """Instructions per job of each phase, per tree: valgrind's count at n minus at 0."""
    import re
    import tempfile

    from unifiedq.testing.servers import RedisServer

    trees = [t.split("=", 1) for t in (a.tree or [f"this={ROOT / 'src'}"])]
    rows = []
    with RedisServer() as server:
        for phase in ("enqueue", "deq+ack", "batch"):
            for name, path in trees:
                counts = []
                for n in (a.n, 0):
                    with tempfile.TemporaryDirectory() as tmp:
                        env = dict(os.environ, PYTHONPATH=str(Path(path).resolve()))
                        r = subprocess.run(
                            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg",
                             sys.executable, __file__, "--child", "--url", server.url,
                             "--n", str(n), "--phase", phase],
                            env=env, capture_output=True, text=True, check=True, cwd=tmp)
                    m = re.search(r"Collected : (\d+)", r.stderr)
                    assert m is not None, r.stderr[-2000:]
                    counts.append(int(m.group(1)))
                rows.append((name, phase, (counts[0] - counts[1]) / a.n))
                print(rows[-1], flush=True)
    first = trees[0][0]
    lines = [
        "# redis:// client instructions per job (valgrind)",
        "",
        f"`python benchmarks/redis_client_cpu.py --instructions "
        f"{' '.join(f'--tree {n}={p}' for n, p in trees)} --n {a.n}` "
        f"({time.strftime('%Y-%m-%d')}; instructions of the client process counted by "
        f"callgrind, run with n jobs minus run with 0, per job; deterministic).",
        "",
        f"| tree | phase | instructions/job | ratio to {first} |",
        "|---|---|---|---|",
    ]
    base = {ph: v for n, ph, v in rows if n == first}
    for name, phase, v in rows:
        lines.append(f"| {name} | {phase} | {v:,.0f} | {v / base[phase]:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
