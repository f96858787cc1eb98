"""``?protocol=machinery``: its cost against the plain amqp driver and Go Machinery, one run.

One RabbitMQ broker; per task, the same small argument list ``[42, "ada@example.com",
2.5, ["a", "b"]]`` (task ``Add``), published one at a time, each waiting for its publisher
confirm (what Machinery's ``SendTask`` does):

* ``machinery``: ``TypedQueue(q).put(args, headers={"type": "Add"})`` on
  ``?protocol=machinery``: Signature JSON with typed Args.
* ``plain``: ``q.enqueue(json bytes, headers={"type": "Add"})`` on a plain ``amqp://`` queue
  (unifiedq's own format).
* ``go``: Machinery v1.10.8's ``server.SendTask`` (``tests/interop_machinery bench-send``),
  stock config but ``RESULT_BACKEND=eager``, so that only the broker work is timed (the
  stock AMQP result backend publishes a PENDING state per task as well), and its own
  binding key ``bench_go`` (so its tasks land in a queue of their own). Timed inside the Go
  process (the process start and its first send are not counted).

Then the consume side, ``machinery`` vs ``plain``: ``dequeue`` + decode + ``ack`` of the same
number of tasks (``task_of(job).args`` vs ``json.loads(job.body)``), in wall-clock time and
in this process's CPU time (``take_cpu``: less disturbed by other load on the machine).

The sides alternate (rotating order) every chunk of n/10 tasks; the warm-up chunk is
dropped. Reported: median µs per task, min..max of the chunks, and the median of per-chunk
ratios against ``plain``. Run: ``python benchmarks/machinery.py [--n 1000] [--rounds 3]``
(``--json PATH`` also writes the numbers). ``UNIFIEDQ_TEST_AMQP_URL`` uses an existing broker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp

import unifiedq
from unifiedq import TypedQueue
from unifiedq._url import parse_url
from unifiedq.drivers.amqp.machinery import task_of

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gobuild import built_go_program

ARGS = [42, "ada@example.com", 2.5, ["a", "b"]]
GO_ARGS = [{"Type": "int64", "Value": 42}, {"Type": "string", "Value": "ada@example.com"},
           {"Type": "float64", "Value": 2.5}, {"Type": "[]string", "Value": ["a", "b"]}]
HDR = {"type": "Add"}
PUT_SIDES = ("machinery", "plain", "go")
TAKE_SIDES = ("machinery", "plain")


def _purge(url: str, *queues: str) -> None:
    u = parse_url(url)
    conn = amqp.Connection(f"{u.host}:{u.port}", userid=u.username, password=u.password,
                           virtual_host="/")
    conn.connect()
    try:
        for name in queues:
            ch = conn.channel()
            with contextlib.suppress(amqp.exceptions.NotFound):
                ch.queue_purge(name)
    finally:
        conn.close()


def bench(url: str, n: int, rounds: int) -> dict[str, Any]:
    k = max(1, n // 10)
    go = built_go_program(Path(__file__).resolve().parent.parent / "tests" / "interop_machinery",
                          "machinery-interop", "Machinery benchmark")
    broker = url[:-1] if url.endswith("//") else url
    # Go publishes to its own queue (binding key bench_go), so the Python sides take only
    # their own tasks.
    env = dict(os.environ, BROKER=broker, RESULT_BACKEND="eager", AMQP_BINDING_KEY="bench_go")
    put: dict[str, list[float]] = {s: [] for s in PUT_SIDES}
    take: dict[str, list[float]] = {s: [] for s in TAKE_SIDES}
    take_cpu: dict[str, list[float]] = {s: [] for s in TAKE_SIDES}
    with unifiedq.connect(f"{url}?protocol=machinery") as mq, \
            unifiedq.connect(f"{url}?queue=bench-machinery-plain") as pq:
        tq: TypedQueue[Any] = TypedQueue(mq)
        plain_body = json.dumps(ARGS, separators=(",", ":")).encode()

        def m_put() -> None:
            for _ in range(k):
                tq.put(ARGS, headers=HDR)

        def p_put() -> None:
            for _ in range(k):
                pq.enqueue(plain_body, headers=HDR)

        def m_take() -> None:
            for _ in range(k):
                job = mq.dequeue(timeout=5)
                assert job is not None and task_of(job).args == ARGS
                mq.ack(job)

        def p_take() -> None:
            for _ in range(k):
                job = pq.dequeue(timeout=5)
                assert job is not None and json.loads(job.body) == ARGS
                pq.ack(job)

        def go_put() -> float:
            proc = subprocess.run(
                [str(go), "bench-send", "-name", "Add", "-args", json.dumps(GO_ARGS),
                 "-n", str(k)], env=env, capture_output=True, text=True, timeout=300,
                check=True)
            return float(json.loads(proc.stdout)["seconds"])

        mq.size()
        pq.size()
        _purge(url, "machinery_tasks", "bench_go")
        puts: dict[str, Callable[[], None]] = {"machinery": m_put, "plain": p_put}
        takes: dict[str, Callable[[], None]] = {"machinery": m_take, "plain": p_take}
        for r in range(rounds):
            for chunk in range(11):  # chunk 0 of each round warms up: dropped
                order = PUT_SIDES[chunk % 3:] + PUT_SIDES[:chunk % 3]
                for side in order:
                    if side == "go":
                        secs = go_put()
                    else:
                        t0 = time.perf_counter()
                        puts[side]()
                        secs = time.perf_counter() - t0
                    if chunk:
                        put[side].append(secs / k * 1e6)
                _purge(url, "bench_go")  # Go's tasks are not consumed here
                for side in TAKE_SIDES[chunk % 2:] + TAKE_SIDES[:chunk % 2]:
                    t0, c0 = time.perf_counter(), time.process_time()
                    takes[side]()
                    if chunk:
                        take[side].append((time.perf_counter() - t0) / k * 1e6)
                        take_cpu[side].append((time.process_time() - c0) / k * 1e6)
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    return {"n": n, "rounds": rounds, "chunk": k, "put": _summary(put), "take": _summary(take),
            "take_cpu": _summary(take_cpu)}


def _summary(samples: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side, xs in samples.items():
        ratios = [a / b for a, b in zip(xs, samples["plain"], strict=False)]
        out[side] = {"median_us": statistics.median(xs), "min_us": min(xs), "max_us": max(xs),
                     "chunks": len(xs), "ratio_vs_plain": statistics.median(ratios)}
    return out


def render(res: dict[str, Any]) -> str:
    lines = [f"n={res['n']} per round, {res['rounds']} rounds, chunks of {res['chunk']}", ""]
    for what in ("put", "take", "take_cpu"):
        unit = "CPU µs of this process" if what == "take_cpu" else "µs, wall clock"
        lines += [f"### {what} ({unit} per task)", "", "| side | median | min..max | x plain |",
                  "|---|---|---|---|"]
        for side, s in res[what].items():
            lines.append(f"| {side} | {s['median_us']:.0f} | {s['min_us']:.0f}.."
                         f"{s['max_us']:.0f} | {s['ratio_vs_plain']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="tasks per round and side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    url = os.environ.get("UNIFIEDQ_TEST_AMQP_URL", "").strip()
    if url:
        res = bench(url, args.n, args.rounds)
    else:
        from unifiedq.testing.servers import RabbitMQServer

        server = RabbitMQServer().start()
        try:
            res = bench(server.url, args.n, args.rounds)
        finally:
            server.stop()
    print(render(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
