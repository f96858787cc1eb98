"""faktory:// vs raw pyfaktory, side by side in one run against one real Faktory server.

Measures, on the same server and queue shape:

* enqueue: ``queue.enqueue(body)`` vs ``Producer(client).push(Job(...))``
* enqueue_many: ``queue.enqueue_many(bodies)`` vs ``Producer(client).push_bulk([...])``
* dequeue+ack: ``queue.dequeue(timeout=5)`` + ``queue.ack(job)`` vs
  ``client._fetch([queue])`` + ``client._ack(jid)`` (pyfaktory's own FETCH/ACK; its Consumer
  class runs handlers in a process pool and cannot be timed per job)

Rounds alternate between the two sides (the machine is shared and noisy) and the median
round is reported. Run: ``python benchmarks/faktory_bench.py [--n 2000] [--rounds 5]``.
Set ``UNIFIEDQ_TEST_FAKTORY_URL`` to use an existing server instead of starting one.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from pyfaktory import Client, Job, Producer

import unifiedq
from unifiedq.testing.servers import FaktoryServer


def _raw_client(url: str, role: str) -> Any:
    c = Client(faktory_url=url.replace("faktory://", "tcp://"), role=role, timeout=30,
               worker_id=uuid.uuid4().hex if role != "producer" else None)
    c.connect()
    return c


def bench(url: str, n: int, rounds: int, size: int) -> None:
    body = os.urandom(size)
    b64 = base64.b64encode(body).decode()
    results: dict[str, dict[str, list[float]]] = {}

    def record(op: str, side: str, seconds: float) -> None:
        results.setdefault(op, {}).setdefault(side, []).append(seconds / n * 1e6)

    raw_p = _raw_client(url, "producer")
    raw_c = _raw_client(url, "both")
    producer = Producer(raw_p)

    def ours_round(q: Any) -> None:
        t = time.perf_counter()
        for _ in range(n):
            q.enqueue(body)
        record("enqueue", "unifiedq", time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(n):
            job = q.dequeue(timeout=5)
            q.ack(job)
        record("dequeue+ack", "unifiedq", time.perf_counter() - t)
        t = time.perf_counter()
        q.enqueue_many([body] * n)
        record("enqueue_many", "unifiedq", time.perf_counter() - t)
        q.purge()

    def raw_round(name: str) -> None:
        t = time.perf_counter()
        for _ in range(n):
            producer.push(Job(jobtype="unifiedq", args=[b64], queue=name))
        record("enqueue", "pyfaktory", time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(n):
            job = raw_c._fetch([name])
            raw_c._ack(job["jid"])
            base64.b64decode(job["args"][0])  # the raw side gets its bytes back too
        record("dequeue+ack", "pyfaktory", time.perf_counter() - t)
        t = time.perf_counter()
        producer.push_bulk([Job(jobtype="unifiedq", args=[b64], queue=name) for _ in range(n)])
        record("enqueue_many", "pyfaktory", time.perf_counter() - t)
        raw_p.queue_remove([name])

    name = f"bench-{uuid.uuid4().hex[:8]}"
    # priorities=false: raw pyfaktory FETCHes one queue, so we do the same here.
    with unifiedq.connect(f"{url}?queue={name}&priorities=false") as q:
        sides: list[Callable[[], None]] = [lambda: ours_round(q), lambda: raw_round(name)]
        ours_round(q)  # warm up both (connections, code paths)
        raw_round(name)
        results.clear()
        for r in range(rounds):
            for side in sides if r % 2 == 0 else sides[::-1]:
                side()
    raw_p.disconnect()
    raw_c.disconnect()

    print(f"\nfaktory:// vs raw pyfaktory: {n} jobs x {rounds} rounds, body {size} B "
          f"(median µs per job)")
    print(f"{'operation':<14}{'unifiedq':>12}{'pyfaktory':>12}{'ratio':>9}")
    for op, sides_ in results.items():
        ours = statistics.median(sides_["unifiedq"])
        raw = statistics.median(sides_["pyfaktory"])
        print(f"{op:<14}{ours:>12.1f}{raw:>12.1f}{ours / raw:>8.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="jobs per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=100, help="body size in bytes")
    args = ap.parse_args()
    url = os.environ.get("UNIFIEDQ_TEST_FAKTORY_URL", "").strip()
    if url:
        bench(url, args.n, args.rounds, args.size)
        return
    with FaktoryServer() as server:
        print(f"Faktory {server.binary_version()} on {server.url}")
        bench(server.url, args.n, args.rounds, args.size)


if __name__ == "__main__":
    main()
