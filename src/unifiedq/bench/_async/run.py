# unasync: the blocking twin, _sync/run.py, is generated from this file.
"""One benchmark run on one face: open the handles, time every call, drain, verify.

Only the I/O lives here; the bookkeeping, the statistics and the verification are shared in
:mod:`unifiedq.bench.runner`, which drives this class through ``run_once``. The producers,
peekers and consumers run concurrently through the face's runtime (tasks on the asyncio face,
one thread each on the blocking face), lined up on a barrier so that starting them is not
timed. Every call is timed on its own with ``time.perf_counter_ns`` around the verb alone.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable

from ..._base import AsyncQueueBase
from ..._capabilities import Capability
from ..._concurrency import AsyncRuntime
from ..._connect import connect_async
from ..._errors import UnsupportedOperation
from ..runner import (
    _SWEEP_EXTRA,
    OpStats,
    RunConfig,
    Verification,
    _describe,
    _merge,
    _record,
    _split,
    _Worker,
    make_body,
    verify,
)

__all__ = ["AsyncRun"]


class AsyncRun:
    """One driver at one load on this face: ``run()`` then, whatever happened, ``close()``."""

    def __init__(self, url: str, cfg: RunConfig, on_phase: Callable[[str], None]) -> None:
        self.url = url
        self.cfg = cfg
        self.on_phase = on_phase
        self.handles: list[AsyncQueueBase] = []

    def _open(self, n: int) -> list[AsyncQueueBase]:
        hs = [connect_async(self.url) for _ in range(n)]
        self.handles.extend(hs)
        return hs

    async def run(self) -> tuple[dict[str, OpStats], Verification, bool]:
        """Time the enqueue, peek and dequeue phases; return the stats, the check, bridged."""
        cfg = self.cfg
        control = self._open(1)[0]
        prods = self._open(cfg.producers)
        cons = self._open(cfg.consumers)
        await control.purge()
        for h in (*prods, *cons):
            await h.size()  # connect now: lazy connection set-up must not be timed as an op
        caps = control.capabilities
        bridged = control.bridged

        # enqueue
        barrier = AsyncRuntime.Barrier(cfg.producers)
        pw = [_Worker() for _ in prods]

        async def producer(i: int, h: AsyncQueueBase, w: _Worker, n: int) -> None:
            await barrier.wait()
            w.start = time.perf_counter_ns()
            for seq in range(n):
                body = make_body(i, seq, cfg.size)
                t0 = time.perf_counter_ns()
                try:
                    await h.enqueue(body)
                except UnsupportedOperation as exc:  # pragma: no cover - enqueue is required
                    w.unsupported = str(exc)
                    return
                except Exception as exc:
                    w.fail(exc)
                    continue
                t1 = time.perf_counter_ns()
                w.samples.append(t1 - t0)
                w.end = t1
                w.sent.append(seq)

        counts = _split(cfg.load, cfg.producers)
        await AsyncRuntime.gather([
            functools.partial(producer, i, h, w, n)
            for i, (h, w, n) in enumerate(zip(prods, pw, counts, strict=True))
        ])
        ops = {"enqueue": _merge("enqueue", pw)}
        self.on_phase("enqueue")

        # peek
        if Capability.PEEK in caps:
            barrier_c = AsyncRuntime.Barrier(cfg.consumers)
            kw = [_Worker() for _ in cons]

            async def peeker(h: AsyncQueueBase, w: _Worker, n: int) -> None:
                await barrier_c.wait()
                w.start = time.perf_counter_ns()
                for _ in range(n):
                    t0 = time.perf_counter_ns()
                    try:
                        job = await h.peek()
                    except UnsupportedOperation as exc:
                        w.unsupported = str(exc)
                        return
                    except Exception as exc:
                        w.fail(exc)
                        continue
                    t1 = time.perf_counter_ns()
                    if job is None:
                        w.empty += 1
                        continue
                    w.samples.append(t1 - t0)
                    w.end = t1

            await AsyncRuntime.gather([
                functools.partial(peeker, h, w, n)
                for h, w, n in zip(cons, kw, _split(cfg.load, cfg.consumers), strict=True)
            ])
            ops["peek"] = _merge("peek", kw)
        else:
            ops["peek"] = await _probe_unsupported(control, "peek")
        self.on_phase("peek")

        # dequeue (+ ack)
        expected = sum(len(w.sent) for w in pw)
        cw = [_Worker() for _ in cons]
        # Every job taken, by any consumer: list.append is atomic on both faces, so counting
        # needs no lock (one would cost each job time) and the last taker sees the full count.
        taken: list[None] = []
        state = {"last": time.monotonic()}
        done = AsyncRuntime.Event()
        if expected == 0:
            done.set()
        has_ack = Capability.ACK in caps
        blocking = Capability.BLOCKING_DEQUEUE in caps
        barrier_d = AsyncRuntime.Barrier(cfg.consumers)

        async def consumer(h: AsyncQueueBase, w: _Worker) -> None:
            await barrier_d.wait()
            w.start = time.perf_counter_ns()
            wait = 0.0
            while not done.is_set():
                t0 = time.perf_counter_ns()
                try:
                    job = await h.dequeue(timeout=wait)
                except Exception as exc:
                    w.fail(exc)
                    if time.monotonic() - state["last"] > cfg.drain_timeout:
                        return
                    await AsyncRuntime.sleep(0.01)
                    continue
                t1 = time.perf_counter_ns()
                if job is None:
                    w.empty += 1
                    if time.monotonic() - state["last"] > cfg.drain_timeout:
                        return
                    if blocking:
                        wait = 0.2
                    else:
                        await AsyncRuntime.sleep(0.001)
                    continue
                wait = 0.0
                w.samples.append(t1 - t0)
                w.end = t1
                _record(job, cfg.size, w)
                if has_ack:
                    t2 = time.perf_counter_ns()
                    try:
                        await h.ack(job)
                        t3 = time.perf_counter_ns()
                        w.ack_samples.append(t3 - t2)
                        w.ack_end = t3
                    except Exception as exc:
                        w.ack_errors += 1
                        w.error = w.error or _describe(exc)
                taken.append(None)
                state["last"] = time.monotonic()
                if len(taken) >= expected:
                    done.set()

        await AsyncRuntime.gather([
            functools.partial(consumer, h, w) for h, w in zip(cons, cw, strict=True)
        ])
        ops["dequeue"] = _merge("dequeue", cw)
        if has_ack:
            ops["ack"] = _merge("ack", cw, ack=True)
        else:
            ops["ack"] = OpStats.unsupported("ack", f"the {control.driver!r} driver lacks ACK")
        self.on_phase("dequeue")

        # Sweep: anything still queued now is a duplicate or a stranger; take it so the
        # verification can say which (a driver that re-delivers must not hide behind counts).
        sweep = _Worker()
        leftover: int | None = 0
        try:
            for _ in range(cfg.load + _SWEEP_EXTRA):
                job = await control.dequeue(timeout=0.0)
                if job is None:
                    break
                _record(job, cfg.size, sweep)
                if has_ack:
                    await control.ack(job)
            leftover = len(sweep.got) + await control.size()
        except Exception:
            leftover = None
        return ops, verify(pw, [*cw, sweep], cfg.size, leftover), bridged

    async def close(self) -> None:
        """Best effort: leave the queue empty and every handle closed, whatever happened."""
        for i, h in enumerate(self.handles):
            with contextlib.suppress(Exception):
                if i == 0:
                    await h.purge()
            with contextlib.suppress(Exception):
                await h.aclose()


async def _probe_unsupported(q: AsyncQueueBase, op: str) -> OpStats:
    # The flag says no: confirm the verb raises, so the report never shows a made-up number.
    try:
        await q.peek()
    except UnsupportedOperation as exc:
        return OpStats.unsupported(op, str(exc))
    except Exception as exc:
        return OpStats(op, "error", errors=1, error=_describe(exc))
    return OpStats(op, "error", error="peek() worked although the driver lacks Capability.PEEK")
