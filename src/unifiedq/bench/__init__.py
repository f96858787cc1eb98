"""The unifiedq benchmark: enqueue / peek / dequeue latency at several loads, verified.

Run it with ``unifiedq bench`` or ``python -m unifiedq.bench``; with no URL it covers the
embedded drivers (``memory://``, ``shm://``) and needs no server. From Python::

    from unifiedq.bench import run_bench, target_for_url

    report = run_bench([target_for_url("memory://x")], loads=[100], ops=["enqueue"])
    print(report.ok, report.runs[0].ops["enqueue"].p50_us)

Importing this package needs neither rich nor matplotlib; they are used only when a table
or a chart is drawn.

This package is the engine; the command line (argument parsing, progress bar, output files)
lives in :mod:`unifiedq.cli.bench`. ``bench_main`` and ``build_parser`` are still importable
from here: they load that module on first use, so importing the engine never imports the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .baselines import Baseline, BaselineResult, register_baseline, run_baseline
from .matrix import run_bench
from .report import BenchReport, load_report, validate_report, write_csv
from .runner import ALL_OPS, DEFAULT_LOADS, DEFAULT_OPS, OpStats, RunConfig, RunResult, run_once
from .targets import Target, describe_drivers, embedded_targets, target_for_url

if TYPE_CHECKING:
    from ..cli.bench import bench_main, build_parser

__all__ = [
    "ALL_OPS",
    "DEFAULT_LOADS",
    "DEFAULT_OPS",
    "Baseline",
    "BaselineResult",
    "BenchReport",
    "OpStats",
    "RunConfig",
    "RunResult",
    "Target",
    "bench_main",
    "build_parser",
    "describe_drivers",
    "embedded_targets",
    "load_report",
    "register_baseline",
    "run_baseline",
    "run_bench",
    "run_once",
    "target_for_url",
    "validate_report",
    "write_csv",
]


def __getattr__(name: str) -> Any:
    # The command-line names, loaded lazily: unifiedq.cli.bench imports this package.
    if name in ("bench_main", "build_parser"):
        from ..cli import bench as command

        return getattr(command, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
