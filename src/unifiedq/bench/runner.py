"""Run the enqueue / peek / dequeue benchmark on one queue URL and verify what came back.

One *run* is one driver at one load: the queue is purged, ``load`` jobs are enqueued by
``producers`` workers (the enqueue phase), ``peek()`` is called ``load`` times by ``consumers``
workers on the full queue (the peek phase), then ``consumers`` workers dequeue and ack every
job (the dequeue phase). Every call is timed on its own with ``time.perf_counter_ns``.

After the dequeue phase the run is verified, as the original Go evaluation did not:

* **no loss**: every job whose enqueue returned an id came back exactly once, with its body;
* **FIFO per producer**: each consumer saw each producer's jobs in the order they were sent
  (with one consumer this is plain FIFO; with several, each consumer's view must be ordered);
* **empty afterwards**: ``size()`` is 0 once everything was taken.

Bodies are ``b"<producer>:<seq>:"`` padded to ``size`` bytes, so the check needs no state in
the queue besides the jobs themselves.

This module holds what both faces share (stats, bodies, bookkeeping, verification); the run
itself, the only I/O, is written once in ``bench/_async/run.py`` and its blocking twin
``bench/_sync/run.py`` is generated from it (``scripts/generate_sync.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._job import Job
from .._url import parse_url

__all__ = [
    "ALL_OPS",
    "DEFAULT_LOADS",
    "DEFAULT_OPS",
    "OpStats",
    "RunConfig",
    "RunResult",
    "Verification",
    "make_body",
    "parse_body",
    "percentile",
    "run_once",
]

#: Operations the bench can time. ``ack`` is timed only when asked for (and when supported).
ALL_OPS: tuple[str, ...] = ("enqueue", "peek", "dequeue", "ack")
DEFAULT_OPS: tuple[str, ...] = ("enqueue", "peek", "dequeue")
#: The loads of the original comparison.
DEFAULT_LOADS: tuple[int, ...] = (10, 100, 1_000, 10_000)

_NS_PER_US = 1_000.0
# How many jobs beyond the load the post-run sweep takes at most (duplicates, strangers).
_SWEEP_EXTRA = 1_000


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of an ascending sequence (``q`` in 0..100).

    Args:
        sorted_values: Values sorted ascending; must not be empty.
        q: The percentile, e.g. 99.

    Returns:
        The smallest value such that at least ``q`` percent of the values are <= it.
    """
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil without floats for exact ranks
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


@dataclasses.dataclass(slots=True)
class OpStats:
    """Latency and throughput of one operation in one run.

    Attributes:
        op: ``"enqueue"``, ``"peek"``, ``"dequeue"`` or ``"ack"``.
        status: ``"ok"``, ``"unsupported"`` (the driver raised UnsupportedOperation),
            ``"error"`` (every call failed) or ``"skipped"`` (nothing to time).
        count: Successful calls timed.
        errors: Calls that raised.
        empty: Calls that returned nothing although jobs were expected (dequeue/peek).
        p50_us: Median latency in microseconds (None when nothing was timed).
        p95_us: 95th percentile latency.
        p99_us: 99th percentile latency.
        max_us: Slowest call.
        mean_us: Mean latency.
        total_s: Wall time of the phase, first call start to last successful call end.
        throughput: Successful calls per second over ``total_s``.
        error: The first error's message, if any.
    """

    op: str
    status: str = "ok"
    count: int = 0
    errors: int = 0
    empty: int = 0
    p50_us: float | None = None
    p95_us: float | None = None
    p99_us: float | None = None
    max_us: float | None = None
    mean_us: float | None = None
    total_s: float | None = None
    throughput: float | None = None
    error: str | None = None

    @classmethod
    def from_samples(
        cls,
        op: str,
        samples_ns: list[int],
        total_ns: int,
        *,
        errors: int = 0,
        empty: int = 0,
        error: str | None = None,
    ) -> OpStats:
        """Summarise per-call latencies (nanoseconds) of one phase."""
        if not samples_ns:
            return cls(op, "error" if errors else "skipped", 0, errors, empty, error=error)
        s = sorted(samples_ns)
        total_s = max(total_ns, 1) / 1e9
        return cls(
            op,
            "ok",
            len(s),
            errors,
            empty,
            p50_us=percentile(s, 50) / _NS_PER_US,
            p95_us=percentile(s, 95) / _NS_PER_US,
            p99_us=percentile(s, 99) / _NS_PER_US,
            max_us=s[-1] / _NS_PER_US,
            mean_us=sum(s) / len(s) / _NS_PER_US,
            total_s=total_s,
            throughput=len(s) / total_s,
            error=error,
        )

    @classmethod
    def unsupported(cls, op: str, message: str) -> OpStats:
        """Stats of an operation the driver does not have."""
        return cls(op, "unsupported", error=message)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpStats:
        """Rebuild from :meth:`to_dict` output (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass(slots=True)
class Verification:
    """What the dequeue phase got back compared with what was enqueued.

    Attributes:
        enqueued: Jobs whose enqueue returned an id.
        dequeued: Jobs taken in the dequeue phase (duplicates included).
        lost: Enqueued jobs that never came back.
        duplicated: Extra deliveries of a job already seen.
        unexpected: Jobs that were never (successfully) enqueued by this run, or whose body
            was altered.
        fifo_violations: Times a consumer saw a producer's job after a later one.
        leftover: Jobs still queued after the dequeue phase had everything: taken by a final
            sweep (and classified above) plus ``size()`` afterwards (None if unreadable).
        ok: True when nothing above indicates a problem.
        problems: Human-readable descriptions of each problem.
        lost_sample: A few lost jobs as ``"producer:seq"``.
    """

    enqueued: int = 0
    dequeued: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    fifo_violations: int = 0
    leftover: int | None = 0
    ok: bool = True
    problems: list[str] = dataclasses.field(default_factory=list)
    lost_sample: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verification:
        """Rebuild from :meth:`to_dict` output."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass(frozen=True, slots=True)
class RunConfig:
    """Parameters of one run.

    Attributes:
        load: Number of jobs (and of peeks).
        producers: Concurrent enqueuing workers (threads or tasks).
        consumers: Concurrent peeking and dequeuing workers.
        size: Body size in bytes (at least the ``producer:seq:`` header).
        face: ``"sync"`` (threads, :func:`unifiedq.connect`) or ``"async"``
            (tasks, :func:`unifiedq.connect_async`).
        drain_timeout: Seconds without any dequeued job after which the dequeue phase gives
            up and counts the rest as lost.
    """

    load: int
    producers: int = 1
    consumers: int = 1
    size: int = 64
    face: str = "sync"
    drain_timeout: float = 10.0


@dataclasses.dataclass(slots=True)
class RunResult:
    """One driver at one load."""

    driver: str
    url: str
    load: int
    face: str
    bridged: bool
    ops: dict[str, OpStats]
    verify: Verification | None
    error: str | None = None
    elapsed_s: float = 0.0


# -- bodies ----------------------------------------------------------------------------------


def make_body(producer: int, seq: int, size: int) -> bytes:
    """Return the body of job ``seq`` of ``producer``, padded with ``x`` to ``size`` bytes."""
    head = b"%d:%d:" % (producer, seq)
    return head + b"x" * (size - len(head)) if size > len(head) else head


def parse_body(body: bytes) -> tuple[int, int] | None:
    """Return ``(producer, seq)`` from a bench body, or None if it is not one."""
    parts = body.split(b":", 2)
    if len(parts) != 3:
        return None
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return None


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


# -- per-worker bookkeeping --------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Worker:
    samples: list[int] = dataclasses.field(default_factory=list)
    ack_samples: list[int] = dataclasses.field(default_factory=list)
    errors: int = 0
    ack_errors: int = 0
    empty: int = 0
    error: str | None = None
    unsupported: str | None = None
    ack_unsupported: str | None = None
    start: int = 0
    end: int = 0
    ack_end: int = 0
    # producer -> seqs whose enqueue returned an id, in order (producers)
    sent: list[int] = dataclasses.field(default_factory=list)
    # (producer, seq) pairs or None for foreign bodies, in dequeue order (consumers)
    got: list[tuple[int, int] | None] = dataclasses.field(default_factory=list)

    def fail(self, exc: BaseException) -> None:
        self.errors += 1
        if self.error is None:
            self.error = _describe(exc)


def _merge(op: str, workers: Sequence[_Worker], *, ack: bool = False) -> OpStats:
    unsupported = next(
        (w.ack_unsupported if ack else w.unsupported for w in workers
         if (w.ack_unsupported if ack else w.unsupported)), None
    )
    if unsupported is not None:
        return OpStats.unsupported(op, unsupported)
    samples = [s for w in workers for s in (w.ack_samples if ack else w.samples)]
    start = min((w.start for w in workers), default=0)
    end = max(((w.ack_end if ack else w.end) for w in workers), default=0)
    errors = sum((w.ack_errors if ack else w.errors) for w in workers)
    first = next((w.error for w in workers if w.error), None)
    empty = 0 if ack else sum(w.empty for w in workers)
    return OpStats.from_samples(op, samples, end - start, errors=errors, empty=empty, error=first)


def verify(
    producers: Sequence[_Worker], consumers: Sequence[_Worker], size: int, leftover: int | None
) -> Verification:
    """Compare what the consumers got with what the producers sent (see the module doc)."""
    expected: set[tuple[int, int]] = {(p, s) for p, w in enumerate(producers) for s in w.sent}
    seen: set[tuple[int, int]] = set()
    v = Verification(enqueued=len(expected), leftover=leftover)
    for c in consumers:
        last: dict[int, int] = {}
        for item in c.got:
            v.dequeued += 1
            if item is None or item not in expected:
                v.unexpected += 1
                continue
            if item in seen:
                v.duplicated += 1
                continue
            seen.add(item)
            p, s = item
            if s < last.get(p, -1):
                v.fifo_violations += 1
            last[p] = s
    lost = sorted(expected - seen)
    v.lost = len(lost)
    v.lost_sample = [f"{p}:{s}" for p, s in lost[:10]]
    if v.lost:
        v.problems.append(f"LOST {v.lost} of {v.enqueued} jobs (e.g. {', '.join(v.lost_sample)})")
    if v.duplicated:
        v.problems.append(f"{v.duplicated} jobs delivered more than once")
    if v.unexpected:
        v.problems.append(f"{v.unexpected} jobs that were not enqueued by this run or were altered")
    if v.fifo_violations:
        v.problems.append(f"FIFO broken {v.fifo_violations} times (per producer, per consumer)")
    if leftover:
        v.problems.append(f"{leftover} jobs were still queued after every job was taken")
    v.ok = not v.problems
    return v


def _record(job: Job, size: int, w: _Worker) -> None:
    parsed = parse_body(job.body)
    if parsed is not None and job.body != make_body(parsed[0], parsed[1], size):
        parsed = None  # altered body: count it as unexpected
    w.got.append(parsed)


def run_once(
    driver: str,
    url: str,
    cfg: RunConfig,
    *,
    on_phase: Callable[[str], None] | None = None,
) -> RunResult:
    """Benchmark and verify one queue URL at one load.

    Args:
        driver: Label for reports (usually the scheme).
        url: The queue URL; the queue is purged before and after the run.
        cfg: Load, concurrency, body size and face.
        on_phase: Called with ``"enqueue"``, ``"peek"``, ``"dequeue"`` as each phase ends.

    Returns:
        The run's stats for every op in :data:`ALL_OPS` and its verification. A failure to
        open or set up the queue is reported in ``error`` (with ``verify`` None), not raised.
    """
    if cfg.load < 1 or cfg.producers < 1 or cfg.consumers < 1:
        raise ValueError("load, producers and consumers must be >= 1")
    if cfg.face not in ("sync", "async"):
        raise ValueError(f"face must be 'sync' or 'async', not {cfg.face!r}")
    # The faces' runs import this module's shared parts, so they are imported here.
    from ._async.run import AsyncRun
    from ._sync.run import SyncRun

    cb = on_phase or (lambda _phase: None)
    redacted = parse_url(url).redacted()  # InvalidURL surfaces here, before any I/O
    started = time.perf_counter()
    try:
        if cfg.face == "async":
            arun = AsyncRun(url, cfg, cb)

            async def go() -> tuple[dict[str, OpStats], Verification, bool]:
                try:
                    return await arun.run()
                finally:
                    await arun.close()

            ops, ver, bridged = asyncio.run(go())
        else:
            srun = SyncRun(url, cfg, cb)
            try:
                ops, ver, bridged = srun.run()
            finally:
                srun.close()
    except Exception as exc:
        return RunResult(driver, redacted, cfg.load, cfg.face, False, {}, None,
                         error=_describe(exc), elapsed_s=time.perf_counter() - started)
    return RunResult(driver, redacted, cfg.load, cfg.face, bridged, ops, ver,
                     elapsed_s=time.perf_counter() - started)
