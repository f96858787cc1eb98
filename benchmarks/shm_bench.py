"""shm:// against multiprocessing.Queue and faster-fifo, side by side in one run.

Usage::

    python benchmarks/shm_bench.py [--messages 100000] [--size 64] [--pings 5000]

Measures, for each system:

* stream: 1 producer process -> 1 consumer process, ``--messages`` bodies of ``--size`` bytes
  (single put/get per message; and a batched variant where the system has one);
* N:M: 2 producers -> 2 consumers, same total;
* ping-pong: two queues between two processes, mean round trip;
* pair: one process, enqueue then dequeue, mean per pair.

``shm`` goes through the public unifiedq verbs (which validate the call, generate a job id per
enqueue and build a Job per dequeue): ``stream 1:1`` uses ``enqueue``/``dequeue`` per
message, ``stream 1:1 batched`` uses ``enqueue_many``/``dequeue_many`` (256 per call, as
faster-fifo's ``put_many``/``get_many``). ``shm-ring`` is the bare ring underneath, without the
public layer, to show that layer's cost. The last lines compare with the targets of issue 3.
The first line says which atomics path ran (``c-ext`` is the compiled one users get; set
``UNIFIEDQ_SHM_ATOMICS=cffi`` to measure the pure-Python fallback).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import faster_fifo

import unifiedq
from unifiedq.drivers import _shm_atomics, shm

CTX = multiprocessing.get_context("fork")
N_SHM = f"uq-bench-{os.getpid()}"


# -- uniform adapters: make(role) -> (put, get, put_many, get_many) per process -----------------
class System:
    name = ""
    batch = False

    def setup(self) -> None: ...
    def teardown(self) -> None: ...
    def put(self, b: bytes) -> None: ...
    def get(self) -> bytes:
        raise NotImplementedError
    def put_many(self, bs: list[bytes]) -> None: ...
    def get_many(self) -> list[bytes]:
        raise NotImplementedError

    def reopen(self) -> None: ...  # called in the child after fork


class Shm(System):
    batch = True

    def __init__(self, qname: str, cap: int = 4096) -> None:
        self.name = "shm"
        self.url = f"shm://{qname}?capacity={cap}&slot_size=64&enqueue_timeout=60"
        self.qname = qname
        self.q: Any = None

    def setup(self) -> None:
        shm.unlink(self.qname)

    def reopen(self) -> None:
        self.q = unifiedq.connect(self.url)

    def teardown(self) -> None:
        shm.unlink(self.qname)

    def put(self, b: bytes) -> None:
        self.q.enqueue(b)

    def get(self) -> bytes:
        job = self.q.dequeue(timeout=None)
        return bytes(job.body)

    def put_many(self, bs: list[bytes]) -> None:
        self.q.enqueue_many(bs)

    def get_many(self) -> list[bytes]:
        return [j.body for j in self.q.dequeue_many(256, timeout=None)]


class ShmRing(Shm):
    def __init__(self, qname: str, cap: int = 4096) -> None:
        super().__init__(qname, cap)
        self.name = "shm-ring"
        self.batch = False
        self.jid = str(uuid.uuid4())

    def reopen(self) -> None:
        super().reopen()
        self.r = self.q._attach()

    def put(self, b: bytes) -> None:
        r, jid = self.r, self.jid
        if not r.put(b, jid, 0.0):
            while not r.put(b, jid, 0.0):
                os.sched_yield()

    def get(self) -> bytes:
        r = self.r
        item = r.get()
        while item is None:
            os.sched_yield()
            item = r.get()
        return bytes(item[0])


class MpQueue(System):
    name = "mp.Queue"

    def setup(self) -> None:
        self.q: Any = CTX.Queue(4096)

    def put(self, b: bytes) -> None:
        self.q.put(b)

    def get(self) -> bytes:
        return bytes(self.q.get())


class FasterFifo(System):
    name = "faster-fifo"
    batch = True

    def setup(self) -> None:
        self.q: Any = faster_fifo.Queue(max_size_bytes=4096 * 200)

    def put(self, b: bytes) -> None:
        self.q.put(b, timeout=60)

    def get(self) -> bytes:
        return bytes(self.q.get(timeout=60))

    def put_many(self, bs: list[bytes]) -> None:
        self.q.put_many(bs, timeout=60)

    def get_many(self) -> list[bytes]:
        return list(self.q.get_many(max_messages_to_get=256, timeout=60))


# -- scenarios ----------------------------------------------------------------------------------
def _producer(sys_: System, n: int, size: int, batched: bool, go: Any) -> None:
    sys_.reopen()
    body = b"x" * size
    go.wait()
    if batched:
        for i in range(0, n, 256):
            sys_.put_many([body] * min(256, n - i))
    else:
        for _ in range(n):
            sys_.put(body)


def _consumer(sys_: System, n: int, batched: bool, go: Any, out: Any) -> None:
    sys_.reopen()
    go.wait()
    got = 0
    while got < n:
        if batched:
            got += len(sys_.get_many())
        else:
            sys_.get()
            got += 1
    out.put(time.perf_counter())


def stream(sys_: System, n: int, size: int, producers: int, consumers: int,
           batched: bool) -> float:
    """Return messages per second for producers -> consumers."""
    sys_.setup()
    try:
        go = CTX.Barrier(producers + consumers + 1)
        out = CTX.Queue()
        # daemon: a failed run must not leave the parent waiting on a child at exit
        procs = [CTX.Process(target=_consumer, args=(sys_, n // consumers, batched, go, out),
                             daemon=True) for _ in range(consumers)]
        procs += [CTX.Process(target=_producer, args=(sys_, n // producers, size, batched, go),
                              daemon=True) for _ in range(producers)]
        for p in procs:
            p.start()
        go.wait()
        t0 = time.perf_counter()
        end = float(max(out.get(timeout=300) for _ in range(consumers)))
        for p in procs:
            p.join(60)
        return n / (end - t0)
    finally:
        sys_.teardown()


def _ponger(a: System, b: System, n: int) -> None:
    a.reopen()
    b.reopen()
    for _ in range(n):
        b.put(a.get())


def pingpong(make: Callable[[str], System], n: int, size: int) -> float:
    """Return the mean round trip in microseconds."""
    a, b = make(N_SHM + "-a"), make(N_SHM + "-b")
    a.setup()
    b.setup()
    try:
        child = CTX.Process(target=_ponger, args=(a, b, n + 200), daemon=True)
        child.start()
        a.reopen()
        b.reopen()
        body = b"x" * size
        for _ in range(200):  # warm up
            a.put(body)
            b.get()
        t0 = time.perf_counter()
        for _ in range(n):
            a.put(body)
            b.get()
        dt = time.perf_counter() - t0
        child.join(60)
        return dt / n * 1e6
    finally:
        a.teardown()
        b.teardown()


def pair(sys_: System, n: int, size: int) -> float:
    """Return microseconds per enqueue+dequeue pair in one process."""
    sys_.setup()
    try:
        sys_.reopen()
        body = b"x" * size
        for _ in range(1000):
            sys_.put(body)
            sys_.get()
        t0 = time.perf_counter()
        for _ in range(n):
            sys_.put(body)
            sys_.get()
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        sys_.teardown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--pings", type=int, default=5000)
    args = ap.parse_args()
    n, size = args.messages, args.size
    makers: dict[str, Callable[[str], System]] = {
        "shm": Shm, "shm-ring": ShmRing,
        "faster-fifo": lambda _n: FasterFifo(), "mp.Queue": lambda _n: MpQueue(),
    }
    print(f"atomics path: {_shm_atomics.IMPL}; {os.cpu_count()} CPUs; {n} x {size} B\n")
    rows: dict[str, dict[str, float]] = {k: {} for k in makers}
    for name, make in makers.items():
        s = make(N_SHM)
        rows[name]["stream 1:1"] = stream(s, n, size, 1, 1, batched=False)
        if s.batch:
            rows[name]["stream 1:1 batched"] = stream(s, n, size, 1, 1, batched=True)
        if name != "shm-ring":
            rows[name]["stream 2:2"] = stream(s, n, size, 2, 2, batched=False)
        rows[name]["ping-pong RTT us"] = pingpong(make, args.pings, size)
        rows[name]["pair us"] = pair(make(N_SHM), min(n, 50_000), size)
        print(f"{name:12s} " + "  ".join(f"{k}={v:,.1f}" for k, v in rows[name].items()),
              flush=True)
    print()
    ff = rows["faster-fifo"]
    for name in ("shm", "shm-ring", "mp.Queue"):
        r = rows[name]
        parts = []
        for k, v in r.items():
            if k in ff:
                ratio = v / ff[k]
                parts.append(f"{k}: {ratio:.2f}x")
        print(f"{name} vs faster-fifo (msgs/s: higher is better; us: lower is better): "
              + ", ".join(parts))
    pub = rows["shm"]
    print("\ntargets (public verbs):")
    for k in ("stream 1:1", "stream 1:1 batched"):
        x = pub[k] / ff[k]
        print(f"  {k:20s} {x:5.2f}x faster-fifo (target >= 2.5x): "
              f"{'met' if x >= 2.5 else 'NOT met'}")
    x = pub["ping-pong RTT us"] / ff["ping-pong RTT us"]
    print(f"  {'ping-pong RTT':20s} {x:5.2f}x faster-fifo's (target <= 0.12x): "
          f"{'met' if x <= 0.12 else 'NOT met'}")
    print(f"  {'pair':20s} {pub['pair us']:5.2f} us (target <= 3 us): "
          f"{'met' if pub['pair us'] <= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
