"""amqp:// driver vs raw kombu, side by side in one run against one real RabbitMQ.

Usage::

    python benchmarks/amqp_bench.py [--url amqp://guest:guest@127.0.0.1:5672//] [--rounds 6]

Without ``--url`` (or ``UNIFIEDQ_TEST_AMQP_URL``) a private broker is started with the test
rig. Both sides use the same queue (declared by the driver: durable, x-max-priority, DLX),
persistent 100-byte messages and, for consuming, the same prefetch. Rounds alternate ours and
raw; each row reports the median. Targets (issue 4): per call <= 1.2x raw kombu; consume
throughput >= 0.9x raw kombu's; batch-confirmed publish >= 10x single-confirm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import kombu
import kombu.connection

from unifiedq import connect
from unifiedq.drivers.amqp import AmqpQueue

# kombu ships no type information.
KombuConnection: Any = kombu.connection.Connection
K: Any = kombu
BODY = b"x" * 100
PREFETCH = 64


def timed(fn: Callable[[], int]) -> float:
    """Run ``fn`` (which returns how many operations it did); return seconds per operation."""
    start = time.perf_counter()
    n = fn()
    return (time.perf_counter() - start) / n


class Bench:
    def __init__(self, url: str, n_single: int, n_batch: int, n_consume: int) -> None:
        self.url = url
        self.n_single, self.n_batch, self.n_consume = n_single, n_batch, n_consume
        self.qname = f"bench-{uuid.uuid4().hex[:8]}"
        q = connect(f"{url}?queue={self.qname}&prefetch={PREFETCH}")
        assert isinstance(q, AmqpQueue)
        self.q = q
        q.purge()  # connects and declares the topology both sides use
        self.conn = KombuConnection(url, transport_options={"confirm_publish": True})
        self.conn.connect()
        self.exchange = K.Exchange("unifiedq", "direct", durable=True)
        self.producer = K.Producer(self.conn.channel(), exchange=self.exchange,
                                       routing_key=self.qname, auto_declare=False)
        # no_declare: use the driver's queue as it is (its arguments differ from kombu's).
        self.kqueue = K.Queue(self.qname, self.exchange, routing_key=self.qname,
                                  no_declare=True)
        self.get_channel = self.conn.channel()

    def close(self) -> None:
        self.q.purge()
        self.q.close()
        self.conn.release()

    # -- publish ---------------------------------------------------------------------------
    def ours_enqueue(self) -> int:
        for _ in range(self.n_single):
            self.q.enqueue(BODY)
        return self.n_single

    def raw_publish(self) -> int:
        for _ in range(self.n_single):
            self.producer.publish(BODY, delivery_mode=2, message_id=str(uuid.uuid4()))
        return self.n_single

    def ours_enqueue_many(self) -> int:
        size = 1000
        for _ in range(self.n_batch // size):
            self.q.enqueue_many([BODY] * size)
        return self.n_batch

    # -- dequeue + ack (one call per job, basic.get) ------------------------------------------
    def ours_get_ack(self) -> int:
        n = 0
        while (job := self.q.dequeue(timeout=0)) is not None:
            self.q.ack(job)
            n += 1
        return n

    def raw_get_ack(self) -> int:
        bound = self.kqueue(self.get_channel)
        n = 0
        while (msg := bound.get(no_ack=False)) is not None:
            msg.ack()
            n += 1
        return n

    # -- consume (prefetch) ----------------------------------------------------------------
    def ours_consume(self) -> int:
        n = 0
        while n < self.n_consume and (job := self.q.dequeue(timeout=5)) is not None:
            self.q.ack(job)
            n += 1
        return n

    def raw_consume(self) -> int:
        n = 0

        def on_message(body: Any, message: Any) -> None:
            nonlocal n
            message.ack()
            n += 1

        channel = self.conn.channel()
        with K.Consumer(channel, [self.kqueue], callbacks=[on_message],
                            prefetch_count=PREFETCH, accept=None):
            while n < self.n_consume:
                self.conn.drain_events(timeout=5)
        channel.close()
        return n

    def fill(self, n: int) -> None:
        for i in range(0, n, 1000):
            self.q.enqueue_many([BODY] * min(1000, n - i))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("UNIFIEDQ_TEST_AMQP_URL", ""))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--single", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=20000)
    parser.add_argument("--consume", type=int, default=20000)
    args = parser.parse_args()

    server = None
    url = args.url
    if not url:
        from unifiedq.testing.servers import RabbitMQServer

        server = RabbitMQServer().start()
        url = server.url
    b = Bench(url, args.single, args.batch, args.consume)
    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    try:
        for r in range(args.rounds):
            # Alternate which side goes first: the machine is shared and noisy.
            pair = [("enqueue (confirmed) ours", b.ours_enqueue),
                    ("enqueue (confirmed) raw", b.raw_publish)]
            for key, fn in pair if r % 2 == 0 else pair[::-1]:
                add(key, timed(fn))
            add("enqueue_many (1 confirm wait/1000) ours", timed(b.ours_enqueue_many))
            b.q.purge()
            b.fill(args.single)
            add("dequeue+ack (basic.get) ours", timed(b.ours_get_ack))
            b.fill(args.single)
            add("dequeue+ack (basic.get) raw", timed(b.raw_get_ack))
            b.fill(args.consume)
            add("consume+ack (prefetch) raw", timed(b.raw_consume))
            b.fill(args.consume)
            add("consume+ack (prefetch) ours", timed(b.ours_consume))
            b.q.close()  # drop the consumer's prefetch buffer between rounds
            q = connect(f"{url}?queue={b.qname}&prefetch={PREFETCH}")
            assert isinstance(q, AmqpQueue)
            b.q = q
            b.q.purge()
    finally:
        b.close()
        if server is not None:
            server.stop()

    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"amqp bench: {url.split('@')[-1]}  rounds={args.rounds}  body={len(BODY)}B  "
          f"prefetch={PREFETCH}")
    print(f"{'operation':44} {'us/op':>9} {'ops/s':>10}")
    for k, v in med.items():
        print(f"{k:44} {v * 1e6:9.1f} {1 / v:10.0f}")
    pairs = [("enqueue (confirmed)", "per call, target <= 1.2"),
             ("dequeue+ack (basic.get)", "per call, target <= 1.2"),
             ("consume+ack (prefetch)", "time per job; throughput ratio = 1/x, target >= 0.9")]
    print()
    for name, note in pairs:
        ratio = med[f"{name} ours"] / med[f"{name} raw"]
        print(f"{name:30} ours/raw time = {ratio:5.2f}  ({note})")
    speedup = med["enqueue (confirmed) ours"] / med["enqueue_many (1 confirm wait/1000) ours"]
    print(f"{'batch-confirmed publish':30} speedup over single-confirm = {speedup:5.1f}x "
          "(target >= 10)")


if __name__ == "__main__":
    main()
