"""Run a benchmark matrix: every target at every load, collected into one report.

:func:`run_bench` is the engine behind ``unifiedq bench`` (whose argument parsing and output
live in :mod:`unifiedq.cli.bench`); call it directly to benchmark from Python.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from .baselines import run_baseline
from .report import BenchReport
from .runner import RunConfig, run_once
from .targets import Target

__all__ = ["PHASES", "run_bench"]

#: Progress steps each run reports (enqueue, peek, dequeue); a baseline adds one more.
PHASES = 3


def run_bench(
    targets: Sequence[Target],
    *,
    loads: Sequence[int],
    ops: Sequence[str],
    producers: int = 1,
    consumers: int = 1,
    size: int = 64,
    face: str = "sync",
    baseline: bool = False,
    drain_timeout: float = 10.0,
    on_step: Callable[[str], None] | None = None,
    on_advance: Callable[[int], None] | None = None,
) -> BenchReport:
    """Run every runnable target at every load and collect a report.

    Args:
        targets: Drivers to cover; non-runnable ones are recorded with their reason.
        loads: Operations per run.
        ops: Operations to report.
        producers: Concurrent producers.
        consumers: Concurrent consumers.
        size: Body size in bytes.
        face: ``"sync"`` or ``"async"``.
        baseline: Also run the raw-client baseline of each driver at each load.
        drain_timeout: See :class:`~unifiedq.bench.runner.RunConfig`.
        on_step: Called with a description before each run.
        on_advance: Called with the number of finished steps.

    Returns:
        The report (``report.ok`` is False if any run lost or reordered jobs).
    """
    config: dict[str, Any] = {
        "loads": list(loads), "ops": list(ops), "producers": producers, "consumers": consumers,
        "size": size, "face": face, "baseline": baseline, "drain_timeout": drain_timeout,
    }
    rep = BenchReport(config=config, targets=[t.to_dict() for t in targets])
    started = time.perf_counter()
    step = on_step or (lambda _s: None)
    adv = on_advance or (lambda _n: None)
    try:
        for t in targets:
            if not t.runnable:
                continue
            assert t.make_url is not None
            for n, load in enumerate(loads):
                step(f"{t.driver} x {load:,}")
                cfg = RunConfig(load=load, producers=producers, consumers=consumers,
                                size=size, face=face, drain_timeout=drain_timeout)
                rep.runs.append(run_once(t.driver, t.make_url(n), cfg,
                                         on_phase=lambda _p: adv(1)))
                if rep.runs[-1].error is not None:
                    adv(PHASES)  # the run's phases will never report
                if baseline:
                    step(f"{t.driver} x {load:,} (raw client)")
                    rep.baselines[(t.driver, load)] = run_baseline(t.scheme, t.raw_url, load, size)
                    adv(1)
    finally:
        for t in targets:
            if t.cleanup is not None:
                with contextlib.suppress(Exception):
                    t.cleanup()
    rep.elapsed_s = time.perf_counter() - started
    return rep
