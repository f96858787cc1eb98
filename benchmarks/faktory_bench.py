"""faktory:// vs raw pyfaktory, side by side in one run against one real Faktory server.

Measures, on the same server and queue shape:

* enqueue: ``queue.enqueue(body)`` vs ``Producer(client).push(Job(...))``
* enqueue_many: ``queue.enqueue_many(bodies)`` vs ``Producer(client).push_bulk([...])``
* dequeue+ack: ``queue.dequeue(timeout=5)`` + ``queue.ack(job)`` vs
  ``client._fetch([queue])`` + ``client._ack(jid)`` (pyfaktory's own FETCH/ACK; its Consumer
  class runs handlers in a process pool and cannot be timed per job)

The two sides alternate every chunk of n/10 jobs (the machine is shared and noisy) and the
median chunk is reported. Run: ``python benchmarks/faktory_bench.py [--n 2000] [--rounds 5]``.
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
    k = max(1, n // 10)  # jobs per timed chunk: the sides alternate every chunk
    samples: dict[str, dict[str, list[float]]] = {}

    def timed(op: str, side: str, fn: Callable[[], None]) -> None:
        t = time.perf_counter()
        fn()
        samples.setdefault(op, {}).setdefault(side, []).append(
            (time.perf_counter() - t) / k * 1e6)

    raw_p = _raw_client(url, "producer")
    raw_c = _raw_client(url, "both")
    producer = Producer(raw_p)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    raw_name = name + "-raw"

    # priorities=false: raw pyfaktory FETCHes one queue, so we do the same here.
    with unifiedq.connect(f"{url}?queue={name}&priorities=false") as q:

        def ours_enqueue() -> None:
            for _ in range(k):
                q.enqueue(body)

        def ours_take() -> None:
            for _ in range(k):
                job = q.dequeue(timeout=5)
                assert job is not None
                q.ack(job)

        def ours_many() -> None:
            q.enqueue_many([body] * k)

        def raw_enqueue() -> None:
            for _ in range(k):
                producer.push(Job(jobtype="unifiedq", args=[b64], queue=raw_name))

        def raw_take() -> None:
            for _ in range(k):
                job = raw_c._fetch([raw_name])
                raw_c._ack(job["jid"])
                base64.b64decode(job["args"][0])  # the raw side gets its bytes back too

        def raw_many() -> None:
            producer.push_bulk(
                [Job(jobtype="unifiedq", args=[b64], queue=raw_name) for _ in range(k)])

        ops: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
            ("enqueue", ours_enqueue, raw_enqueue),
            ("dequeue+ack", ours_take, raw_take),
            ("enqueue_many", ours_many, raw_many),
        ]
        chunks = rounds * (n // k)
        for c in range(chunks + 1):  # chunk 0 warms both sides up and is dropped
            for op, ours, raw in ops:
                pairs = [("unifiedq", ours), ("pyfaktory", raw)]
                for side, fn in pairs if c % 2 == 0 else pairs[::-1]:
                    timed(op, side, fn)
            q.purge()
            raw_p.queue_remove([raw_name])
            if c == 0:
                samples.clear()
    raw_p.disconnect()
    raw_c.disconnect()

    print(f"\nfaktory:// vs raw pyfaktory: {rounds} x {n} jobs in chunks of {k}, sides "
          f"alternating every chunk, body {size} B (median µs per job)")
    print(f"{'operation':<14}{'unifiedq':>12}{'pyfaktory':>12}{'ratio':>9}")
    for op, sides in samples.items():
        ours_us = statistics.median(sides["unifiedq"])
        raw_us = statistics.median(sides["pyfaktory"])
        print(f"{op:<14}{ours_us:>12.1f}{raw_us:>12.1f}{ours_us / raw_us:>8.2f}x")


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
