"""redis:// driver vs the raw redis-py calls it is made of, side by side in one run.

    python benchmarks/redis_bench.py [--url redis://127.0.0.1:6379/0] [--n 5000]

Without ``--url`` a private redis-server is started (the test rig's RedisServer). Measures:

* enqueue:       ``q.enqueue(body)``      vs raw ``EVALSHA`` of the same enqueue script with a
                                             pre-encoded message (the floor our call sits on)
* enqueue_many:  ``q.enqueue_many(1000)`` vs raw pipelined ``EVALSHA`` of the same script, and
                 vs the same commands packed once (``hiredis.pack_command``) and written with
                 ``Connection.send_packed_command`` (how our driver sends; the true floor)
* dequeue+ack:   ``q.dequeue(); q.ack()`` vs raw ``EVALSHA`` dequeue + ``EVALSHA`` ack
* peek:          ``q.peek()``             vs raw ``EVALSHA`` of the peek script
* pickup latency: an idle consumer blocked in ``dequeue(timeout=...)``; time from just before
  ``enqueue`` to the consumer holding the job (p50 / p90 / p99).

Rounds alternate ours/raw so machine noise hits both alike; the median round is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from unifiedq import QueueBase, connect
from unifiedq.drivers.redis import _proto, _scripts
from unifiedq.testing.servers import RedisServer

ROUNDS = 5


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(label: str, ours: Callable[[], None], raw: Callable[[], None], ops: int,
            *, higher_is_better: bool = False) -> None:
    t_ours, t_raw = [], []
    for _ in range(ROUNDS):
        t_ours.append(timed(ours))
        t_raw.append(timed(raw))
    o, r = statistics.median(t_ours), statistics.median(t_raw)
    ratio = o / r
    print(f"{label:<14} ours {o / ops * 1e6:8.1f} us/op ({ops / o:9.0f} ops/s)   "
          f"raw {r / ops * 1e6:8.1f} us/op ({ops / r:9.0f} ops/s)   "
          f"time ratio ours/raw {ratio:5.2f}x   throughput ratio {r / o:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=None)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--pickups", type=int, default=300)
    a = ap.parse_args()
    server = None
    url = a.url
    if url is None:
        server = RedisServer().start()
        url = server.url
    try:
        run(url, a.n, a.pickups)
    finally:
        if server is not None:
            server.stop()


def run(url: str, n: int, pickups: int) -> None:
    client = redis.Redis.from_url(url)
    execute: Callable[..., Any] = client.execute_command
    for s in _scripts.ALL:
        client.script_load(s.source)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    rawq = f"{name}-raw"
    q = connect(f"{url}?queue={name}")
    body = b"x" * 100
    print(f"redis-py {redis.__version__}, hiredis: {_has_hiredis()}, n={n}, rounds={ROUNDS}")

    # The raw baseline: the same script, keys and arguments, message encoded once up front.
    p = f"asynq:{{{rawq}}}:"
    wake = p + "uq:wake"

    def raw_args(jid: str) -> list[object]:
        msg = _proto.encode(_proto.TaskMessage(type="unifiedq", payload=body, id=jid, queue=rawq,
                                               retry=25, timeout=1800))
        return ["EVALSHA", _scripts.ENQUEUE.sha, 4, p + "t:" + jid, p + "pending",
                p + "scheduled", wake, msg, jid, time.time_ns(), "0", 0, 64]

    def ours_enqueue() -> None:
        for _ in range(n):
            q.enqueue(body)

    def raw_enqueue() -> None:
        batch = [raw_args(str(uuid.uuid4())) for _ in range(n)]
        t0 = time.perf_counter()
        for args in batch:
            execute(*args)
        raw_enqueue.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]

    # What a hand-written asynq producer does per task: a UUID, the message bytes (one
    # template concatenation, the cheapest possible), one EVALSHA.
    head = _proto.encode(_proto.TaskMessage(type="unifiedq", payload=body))
    tail = _proto.encode(_proto.TaskMessage(queue=rawq, retry=25, timeout=1800))

    def raw_enqueue_inline() -> None:
        for _ in range(n):
            jid = str(uuid.uuid4())
            msg = head + b"\x1a\x24" + jid.encode() + tail
            execute("EVALSHA", _scripts.ENQUEUE.sha, 4, p + "t:" + jid,
                                   p + "pending", p + "scheduled", wake, msg, jid,
                                   time.time_ns(), "0", 0, 64)

    # Baseline 1 excludes argument building from the raw time (the strict floor); baseline 2
    # includes the id and message a hand-written producer must make too.
    t_ours, t_raw, t_inline = [], [], []
    for _ in range(ROUNDS):
        t_ours.append(timed(ours_enqueue))
        raw_enqueue()
        t_raw.append(raw_enqueue.elapsed)  # type: ignore[attr-defined]
        t_inline.append(timed(raw_enqueue_inline))
    _report("enqueue", t_ours, t_raw, n, "raw EVALSHA, args prebuilt")
    _report("enqueue", t_ours, t_inline, n, "raw EVALSHA + uuid4 + message")
    q.purge()
    client.delete(*client.keys(f"asynq:{{{rawq}}}:*") or ["_"])

    batch_n = 1000

    def ours_many() -> None:
        q.enqueue_many([body] * batch_n)

    def raw_many() -> None:
        batch = [raw_args(str(uuid.uuid4())) for _ in range(batch_n)]
        t0 = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for args in batch:
            pipe.execute_command(*args)  # type: ignore[no-untyped-call]
        pipe.execute()
        raw_many.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]

    def raw_many_inline() -> None:
        pipe = client.pipeline(transaction=False)
        for _ in range(batch_n):
            jid = str(uuid.uuid4())
            msg = head + b"\x1a\x24" + jid.encode() + tail
            pipe.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", _scripts.ENQUEUE.sha, 4, p + "t:" + jid, p + "pending",
                p + "scheduled", wake, msg, jid, time.time_ns(), "0", 0, 64)
        pipe.execute()

    def raw_many_packed() -> None:
        import hiredis

        batch = [tuple(raw_args(str(uuid.uuid4()))) for _ in range(batch_n)]
        t0 = time.perf_counter()
        pack: Callable[[tuple[object, ...]], bytes] = hiredis.pack_command  # type: ignore[assignment]
        data = b"".join([pack(args) for args in batch])
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([data])  # type: ignore[no-untyped-call]
            for _ in batch:
                conn.read_response()
        finally:
            pool.release(conn)
        raw_many_packed.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]

    t_ours, t_raw, t_inline, t_packed = [], [], [], []
    for _ in range(ROUNDS):
        t_ours.append(timed(ours_many))
        raw_many()
        t_raw.append(raw_many.elapsed)  # type: ignore[attr-defined]
        t_inline.append(timed(raw_many_inline))
        raw_many_packed()
        t_packed.append(raw_many_packed.elapsed)  # type: ignore[attr-defined]
    _report("enqueue_many", t_ours, t_raw, batch_n, "raw pipelined EVALSHA, args prebuilt")
    _report("enqueue_many", t_ours, t_inline, batch_n, "raw pipelined EVALSHA + uuid4 + msg")
    _report("enqueue_many", t_ours, t_packed, batch_n,
            "raw packed write, args prebuilt (our method)")

    # dequeue + ack: both queues hold ROUNDS * batch_n jobs now.
    m = 1000

    def ours_deq_ack() -> None:
        for _ in range(m):
            job = q.dequeue()
            assert job is not None
            q.ack(job)

    def raw_deq_ack() -> None:
        for _ in range(m):
            now = time.time()
            res = execute(
                "EVALSHA", _scripts.DEQUEUE.sha, 1, p + "uq:levels", rawq, repr(now),
                time.time_ns(), repr(now + 30), "tok", 1, repr(now), "2024-01-01",
                int(now) + 86400, 0)
            jid = res[3]
            execute(
                "EVALSHA", _scripts.ACK.sha, 1, p + "t:" + jid.decode(), p, jid, "tok",
                "2024-01-01", int(now) + 86400, 0, 0, b"", "")

    compare("dequeue+ack", ours_deq_ack, raw_deq_ack, m)  # raw: EVALSHA dequeue + EVALSHA ack

    def ours_peek() -> None:
        for _ in range(m):
            q.peek()

    def raw_peek() -> None:
        for _ in range(m):
            execute("EVALSHA", _scripts.PEEK.sha, 1, p + "uq:levels", rawq,
                                   repr(time.time()))

    compare("peek", ours_peek, raw_peek, m)
    q.purge()
    client.delete(*client.keys(f"asynq:{{{rawq}}}:*") or ["_"])
    pickup(url, name + "-pickup", pickups)
    q.close()
    client.close()


def _report(label: str, t_ours: list[float], t_raw: list[float], ops: int,
            baseline: str) -> None:
    o, r = statistics.median(t_ours), statistics.median(t_raw)
    print(f"{label:<14} [vs {baseline}]")
    print(f"{'':<14} ours {o / ops * 1e6:8.1f} us/op ({ops / o:9.0f} ops/s)   "
          f"raw {r / ops * 1e6:8.1f} us/op ({ops / r:9.0f} ops/s)   "
          f"time ratio ours/raw {o / r:5.2f}x   throughput ratio {r / o:5.2f}x")


def pickup(url: str, name: str, count: int) -> None:
    for face in ("sync", "async"):
        _pickup(url, name, count, face)


def _pickup(url: str, name: str, count: int, face: str) -> None:
    lat: list[float] = []
    consumer: QueueBase
    if face == "sync":
        consumer = connect(f"{url}?queue={name}-{face}")
        producer = connect(f"{url}?queue={name}-{face}")
    else:
        from unifiedq import connect_async
        from unifiedq._bridge import AsyncToSync

        consumer = AsyncToSync(connect_async(f"{url}?queue={name}-{face}"))
        producer = connect(f"{url}?queue={name}-{face}")
    got = threading.Event()
    stamp: list[float] = [0.0]
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            job = consumer.dequeue(timeout=2)
            if job is not None:
                stamp[0] = time.perf_counter()
                consumer.ack(job)
                got.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    time.sleep(0.3)
    for _ in range(count):
        got.clear()
        time.sleep(0.01)  # the consumer is idle, blocked in BLPOP
        t0 = time.perf_counter()
        producer.enqueue(b"ping")
        assert got.wait(5)
        lat.append(stamp[0] - t0)
    stop.set()
    t.join(5)
    lat.sort()
    q = statistics.quantiles(lat, n=100)
    print(f"pickup ({face:5}) p50 {q[49] * 1e3:6.3f} ms   p90 {q[89] * 1e3:6.3f} ms   "
          f"p99 {q[98] * 1e3:6.3f} ms   (n={count}; includes the enqueue call)")
    consumer.close()
    producer.close()


def _has_hiredis() -> bool:
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
