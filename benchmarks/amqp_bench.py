"""amqp:// driver vs raw kombu, side by side in one run against one real RabbitMQ.

Usage::

    python benchmarks/amqp_bench.py [--url amqp://guest:guest@127.0.0.1:5672//] [--rounds 6]

Without ``--url`` (or ``UNIFIEDQ_TEST_AMQP_URL``) a private broker is started with the test
rig. Both sides use the same queue (declared by the driver: durable, x-max-priority, DLX),
persistent 100-byte messages and, for consuming, the same prefetch. Rounds alternate ours and
raw; each row reports the median. Targets (issue 4): per call <= 1.2x raw kombu; consume
throughput >= 0.9x raw kombu's; batch-confirmed publish >= 10x single-confirm.

The batch speed-up is measured per round, single-confirm and batch publishes back to back
(which one goes first alternates), and reported as the median over the rounds with its range:
a ratio of two medians taken minutes apart mixes in the machine's changing load. The
``client CPU`` column is this process's CPU time per operation; the rest of the wall time is
the broker's (and the network's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import amqp
import kombu
import kombu.connection

from unifiedq import connect
from unifiedq.drivers.amqp import AmqpQueue

# kombu ships no type information.
KombuConnection: Any = kombu.connection.Connection
K: Any = kombu
BODY = b"x" * 100
PREFETCH = 64


def timed(fn: Callable[[], int], cpu: dict[str, list[float]] | None = None,
          key: str = "") -> float:
    """Run ``fn`` (which returns how many operations it did); return seconds per operation.

    With ``cpu``, also append this process's CPU seconds per operation to ``cpu[key]``.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    n = fn()
    if cpu is not None:
        cpu.setdefault(key, []).append((time.process_time() - start_cpu) / n)
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
        # Pipelined confirms with plain py-amqp: publish a whole batch, then wait once. The
        # best a client of this broker can do, so the reference for enqueue_many.
        self.pipe_conn = KombuConnection(url)
        self.pipe_conn.connect()
        self.pipe = self.pipe_conn.connection.channel()
        self.pipe.confirm_select()
        self.pipe_sent = self.pipe_acked = 0

        def on_ack(tag: int, multiple: bool) -> None:
            self.pipe_acked = max(self.pipe_acked, tag)

        self.pipe.events["basic_ack"].add(on_ack)

    def close(self) -> None:
        self.q.purge()
        self.q.close()
        self.conn.release()
        self.pipe_conn.release()

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

    def raw_publish_many(self) -> int:
        size = 1000
        for _ in range(self.n_batch // size):
            for _ in range(size):
                msg = amqp.Message(BODY, delivery_mode=2, message_id=str(uuid.uuid4()))
                self.pipe.basic_publish(msg, "unifiedq", self.qname, mandatory=True)
            self.pipe_sent += size
            while self.pipe_acked < self.pipe_sent:
                self.pipe_conn.connection.drain_events(timeout=30)
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
    cpu: dict[str, list[float]] = {}
    speedups: list[float] = []
    single, batch = "enqueue (confirmed) ours", "enqueue_many (1 confirm wait/1000) ours"
    raw_batch = "enqueue_many (1 confirm wait/1000) raw"

    def add(key: str, fn: Callable[[], int]) -> None:
        rows.setdefault(key, []).append(timed(fn, cpu, key))

    try:
        for r in range(args.rounds):
            # Alternate which side goes first: the machine is shared and noisy. Our single
            # and batch publishes run back to back, so each round gives one speed-up.
            steps = [(single, b.ours_enqueue), (batch, b.ours_enqueue_many),
                     ("enqueue (confirmed) raw", b.raw_publish)]
            for key, fn in steps if r % 2 == 0 else steps[::-1]:
                add(key, fn)
            speedups.append(rows[single][-1] / rows[batch][-1])
            add(raw_batch, b.raw_publish_many)
            b.q.purge()
            b.fill(args.single)
            add("dequeue+ack (basic.get) ours", b.ours_get_ack)
            b.fill(args.single)
            add("dequeue+ack (basic.get) raw", b.raw_get_ack)
            b.fill(args.consume)
            add("consume+ack (prefetch) raw", b.raw_consume)
            b.fill(args.consume)
            add("consume+ack (prefetch) ours", b.ours_consume)
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
    print(f"{'operation':44} {'us/op':>9} {'ops/s':>10} {'client CPU us/op':>17}")
    for k, v in med.items():
        print(f"{k:44} {v * 1e6:9.1f} {1 / v:10.0f} {statistics.median(cpu[k]) * 1e6:17.1f}")
    pairs = [("enqueue (confirmed)", "per call, target <= 1.2"),
             ("enqueue_many (1 confirm wait/1000)", "per job, vs pipelined py-amqp"),
             ("dequeue+ack (basic.get)", "per call, target <= 1.2"),
             ("consume+ack (prefetch)", "time per job; throughput ratio = 1/x, target >= 0.9")]
    print()
    for name, note in pairs:
        ratio = med[f"{name} ours"] / med[f"{name} raw"]
        print(f"{name:30} ours/raw time = {ratio:5.2f}  ({note})")
    speedup = statistics.median(speedups)
    print(f"{'batch-confirmed publish':30} speed-up over single-confirm = {speedup:5.1f}x "
          f"(median of {len(speedups)} rounds, range {min(speedups):.1f}-{max(speedups):.1f}; "
          "target >= 10)")


if __name__ == "__main__":
    main()
