"""Quickstart: enqueue, dequeue and ack on any driver (memory:// by default).

Run: python examples/quickstart.py [URL]
"""

from __future__ import annotations

import sys

import unifiedq
from unifiedq import Capability


def main(url: str = "memory://quickstart") -> int:
    with unifiedq.connect(url) as q:
        q.purge()
        for n in range(3):
            q.enqueue(f"job {n}".encode())
        print(f"{q.driver}: {q.size()} waiting; capabilities: {', '.join(q.capabilities.names())}")
        while (job := q.dequeue(timeout=1.0)) is not None:
            print(f"got {job.body.decode()!r} (attempt {job.attempt})")
            if Capability.ACK in q.capabilities:
                q.ack(job)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
