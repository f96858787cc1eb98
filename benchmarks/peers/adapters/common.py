"""What every peer process shares: payloads, the handled-job recorder, JSON lines out.

Stdlib only: this module is imported under each system's own interpreter (the main
environment, ``.venv`` or ``.venv-arq``).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Options:
    """What run.py passes to an agent process (see agent.py for the flags)."""

    redis: str
    amqp: str
    queue: str
    n: int
    size: int
    concurrency: int
    batch: int
    gap: float
    warmup: int
    stamp: bool
    extra: dict[str, Any] = field(default_factory=dict)


def body(size: int, stamp: bool) -> str:
    """A ``size``-character ASCII payload; with ``stamp`` it starts with the time (Unix ns)."""
    if not stamp:
        return "x" * size
    head = f"{time.time_ns()} "
    return head + "x" * max(0, size - len(head))


_OUT: Any = None


def own_stdout() -> None:
    """Keep stdout for :func:`emit` alone: what libraries print goes to stderr (the log)."""
    global _OUT
    _OUT = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def emit(obj: dict[str, Any]) -> None:
    """Write one JSON line on stdout (the harness reads them in order)."""
    out = _OUT or sys.stdout
    out.write(json.dumps(obj) + "\n")
    out.flush()


class Recorder:
    """Counts handler calls; on the last one prints the result and ends the process.

    Rate window: first handler start to last handler end, measured here, so interpreter
    start-up and imports are not counted. CPU: ``time.process_time()`` (user + system of
    every thread of this process, i.e. rusage) over the same window. Latency: the handler
    start minus the stamp the producer put in the payload (wall clock, same host).
    """

    def __init__(self, n: int, warmup: int = 0, latency: bool = False) -> None:
        self.n = n
        self.warmup = warmup
        self.latency = latency
        self.handled = 0
        self.first = 0.0
        self.last = 0.0
        self.cpu0 = 0.0
        self.cpu1 = 0.0
        self.samples: list[float] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        threading.Thread(target=self._finish, name="recorder", daemon=True).start()

    def hit(self, payload: str | bytes) -> None:
        """Record one handled job (call first thing in the no-op handler)."""
        now_ns = time.time_ns()
        now = time.perf_counter()
        lat = 0.0
        if self.latency:
            text = payload.decode() if isinstance(payload, bytes) else payload
            lat = (now_ns - int(text.split(" ", 1)[0])) / 1e9
        with self._lock:
            if self.handled == 0:
                self.first = now
                self.cpu0 = time.process_time()
            self.handled += 1
            if self.latency and self.handled > self.warmup:
                self.samples.append(lat)
            if self.handled == self.n + self.warmup:
                self.last = time.perf_counter()
                self.cpu1 = time.process_time()
                self._done.set()

    def _finish(self) -> None:
        self._done.wait()
        out: dict[str, Any] = {
            "handled": self.handled,
            "seconds": self.last - self.first,
            "cpu_seconds": self.cpu1 - self.cpu0,
        }
        if self.latency:
            out["latencies"] = self.samples
        emit(out)
        # Workers run their loops in the main thread with their own signal handling; the
        # measurement is over, so end the process without waiting for their shutdown.
        os._exit(0)


def timed(fn: Any, *args: Any) -> float:
    """Seconds one call of ``fn(*args)`` took."""
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def produce(send: Any, o: Options) -> float:
    """Call ``send(payload)`` ``o.n`` times, one job each; seconds for all ``o.n``.

    The first call (which opens the connection in most clients) is not timed; the time of
    the other ``n - 1`` is scaled to ``n``. With ``o.stamp`` every payload carries its send
    time; ``o.gap`` sleeps after each send (latency runs: the worker is idle in between).
    """
    payload = body(o.size, False)

    def one() -> None:
        send(body(o.size, True) if o.stamp else payload)
        if o.gap:
            time.sleep(o.gap)

    one()
    t0 = time.perf_counter()
    for _ in range(o.n - 1):
        one()
    return (time.perf_counter() - t0) * o.n / max(1, o.n - 1)
