"""Native Faktory jobs: TypedQueue (native args) vs bytes (base64) vs raw pyfaktory, one run.

Per job, on one real Faktory server, three sides doing the same work with the same payload
(a small JSON object):

* ``typed``: ``TypedQueue(q).put(payload, headers={"type": "SendEmail"})``, then
  ``TypedQueue.get`` + ``ack``: a native job (``args = [payload]``).
* ``bytes``: ``q.enqueue(json bytes, headers={"type": ...})``, ``dequeue`` + ``json.loads`` +
  ``ack``: the base64 encoding (marked ``custom.unifiedq.body = "base64"``).
* ``pyfaktory``: ``Producer.push(Job(jobtype="SendEmail", args=[payload]))``, ``_fetch`` +
  ``_ack``: what a hand-written native client does.

The sides alternate (rotating order) every chunk of n/10 jobs; the warm-up chunk is dropped.
Reported: median µs per job, min..max of the chunks, and the median of per-chunk ratios
against pyfaktory. Run: ``python benchmarks/faktory_native.py [--n 1000] [--rounds 5]``
(``--json PATH`` also writes the numbers). ``UNIFIEDQ_TEST_FAKTORY_URL`` uses an existing
server instead of starting one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from pyfaktory import Client, Job, Producer

import unifiedq
from unifiedq import TypedQueue
from unifiedq.testing.servers import FaktoryServer

PAYLOAD = {"to": "ada@example.com", "subject": "Welcome", "n": 42, "tags": ["a", "b"]}
SIDES = ("typed", "bytes", "pyfaktory")


def _raw_client(url: str, role: str) -> Any:
    c = Client(faktory_url=url.replace("faktory://", "tcp://"), role=role, timeout=30,
               worker_id=uuid.uuid4().hex if role != "producer" else None)
    c.connect()
    return c


def bench(url: str, n: int, rounds: int) -> dict[str, Any]:
    k = max(1, n // 10)
    samples: dict[str, dict[str, list[float]]] = {}
    raw_p, raw_c = _raw_client(url, "producer"), _raw_client(url, "both")
    producer = Producer(raw_p)
    base = f"bench-native-{uuid.uuid4().hex[:8]}"
    hdr = {"type": "SendEmail"}
    with unifiedq.connect(f"{url}?queue={base}-t&priorities=false") as qt, \
            unifiedq.connect(f"{url}?queue={base}-b&priorities=false") as qb:
        tq: TypedQueue[Any] = TypedQueue(qt)

        def typed_put() -> None:
            for _ in range(k):
                tq.put(PAYLOAD, headers=hdr)

        def typed_take() -> None:
            for _ in range(k):
                got = tq.get(timeout=5)
                assert got is not None and got[1] == PAYLOAD
                qt.ack(got[0])

        def bytes_put() -> None:
            for _ in range(k):
                qb.enqueue(json.dumps(PAYLOAD, separators=(",", ":")).encode(), headers=hdr)

        def bytes_take() -> None:
            for _ in range(k):
                job = qb.dequeue(timeout=5)
                assert job is not None and json.loads(job.body) == PAYLOAD
                qb.ack(job)

        def raw_put() -> None:
            for _ in range(k):
                producer.push(Job(jobtype="SendEmail", args=[PAYLOAD], queue=f"{base}-r"))

        def raw_take() -> None:
            for _ in range(k):
                job = raw_c._fetch([f"{base}-r"])
                assert job["args"][0] == PAYLOAD
                raw_c._ack(job["jid"])

        ops: dict[str, dict[str, Callable[[], None]]] = {
            "enqueue": {"typed": typed_put, "bytes": bytes_put, "pyfaktory": raw_put},
            "dequeue+ack": {"typed": typed_take, "bytes": bytes_take, "pyfaktory": raw_take},
        }
        for c in range(rounds * 10 + 1):  # chunk 0 warms every side up and is dropped
            order = SIDES[c % 3:] + SIDES[:c % 3]
            for op, fns in ops.items():
                for side in order:
                    t = time.perf_counter()
                    fns[side]()
                    us = (time.perf_counter() - t) / k * 1e6
                    if c:
                        samples.setdefault(op, {}).setdefault(side, []).append(us)
    raw_p.disconnect()
    raw_c.disconnect()
    out: dict[str, Any] = {"n": n, "rounds": rounds, "chunk": k, "payload": PAYLOAD, "ops": {}}
    for op, sides in samples.items():
        row: dict[str, Any] = {}
        for side in SIDES:
            xs = sides[side]
            row[side] = {"median_us": statistics.median(xs), "min_us": min(xs),
                         "max_us": max(xs)}
            row[f"{side}/pyfaktory"] = statistics.median(
                a / b for a, b in zip(xs, sides["pyfaktory"], strict=True))
        out["ops"][op] = row
    return out


def render(res: dict[str, Any]) -> str:
    lines = [f"{res['rounds']} x {res['n']} jobs, chunks of {res['chunk']}, sides rotating "
             "every chunk; µs per job: median (min..max of chunks); ratio = median of "
             "per-chunk ratios to pyfaktory", "",
             "| operation | typed (native args) | bytes (base64) | raw pyfaktory (native) "
             "| typed/raw | bytes/raw |", "|---|---|---|---|---|---|"]
    for op, row in res["ops"].items():
        cells = [f"{row[s]['median_us']:.0f} ({row[s]['min_us']:.0f}..{row[s]['max_us']:.0f})"
                 for s in SIDES]
        lines.append(f"| {op} | {' | '.join(cells)} | {row['typed/pyfaktory']:.2f}x "
                     f"| {row['bytes/pyfaktory']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="jobs per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    url = os.environ.get("UNIFIEDQ_TEST_FAKTORY_URL", "").strip()
    if url:
        res = bench(url, args.n, args.rounds)
    else:
        with FaktoryServer() as server:
            print(f"Faktory {server.binary_version()} on {server.url}", file=sys.stderr)
            res = bench(server.url, args.n, args.rounds)
    print(render(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
