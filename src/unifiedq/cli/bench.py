"""``unifiedq bench`` / ``python -m unifiedq.bench``: argument parsing, progress and output.

The benchmark engine (targets, runs, baselines, reports, plots) lives in :mod:`unifiedq.bench`;
this module turns a command line into a :func:`~unifiedq.bench.run_bench` call and prints
or writes what it returns.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

from .._errors import InvalidURL
from .._url import parse_url
from ..bench.matrix import PHASES, run_bench
from ..bench.report import load_report, render_compare, render_table, write_csv
from ..bench.runner import ALL_OPS, DEFAULT_LOADS, DEFAULT_OPS
from ..bench.targets import (
    NETWORKED,
    Target,
    embedded_targets,
    env_var,
    networked_targets,
    target_for_url,
)

__all__ = ["add_arguments", "bench_main", "build_parser"]


def _csv_ints(text: str) -> list[int]:
    try:
        vals = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError("loads must be integers >= 1")
    return vals


def _csv_ops(text: str) -> list[str]:
    ops = [x.strip() for x in text.split(",") if x.strip()]
    bad = [o for o in ops if o not in ALL_OPS]
    if bad or not ops:
        raise argparse.ArgumentTypeError(
            f"unknown op(s) {', '.join(bad) or '(none)'}; choose from {', '.join(ALL_OPS)}"
        )
    return list(dict.fromkeys(ops))


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the bench options to ``p`` (shared by ``unifiedq bench`` and ``-m unifiedq.bench``)."""
    p.add_argument("urls", nargs="*", metavar="URL",
                   help="queue URLs to benchmark (each is purged before and after every run); "
                        "default: the embedded drivers memory:// and shm://")
    p.add_argument("--loads", type=_csv_ints, default=list(DEFAULT_LOADS),
                   help="comma-separated numbers of operations per run "
                        "(default: 10,100,1000,10000)")
    p.add_argument("--ops", type=_csv_ops, default=list(DEFAULT_OPS),
                   help=f"operations to report, from {','.join(ALL_OPS)} "
                        "(default: enqueue,peek,dequeue); every run still fills, drains and "
                        "verifies the queue")
    p.add_argument("--producers", type=_positive, default=1, help="concurrent producers (1)")
    p.add_argument("--consumers", type=_positive, default=1,
                   help="concurrent peekers/consumers (1)")
    p.add_argument("--size", type=_positive, default=64, help="body size in bytes (64)")
    p.add_argument("--face", choices=("sync", "async"), default="sync",
                   help="sync: threads over unifiedq.connect; async: tasks over connect_async")
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON ('-' = stdout)")
    p.add_argument("--csv", metavar="PATH", help="write one CSV row per driver x load x op")
    p.add_argument("--plot", metavar="PATH", help="draw latency vs load to a PNG (matplotlib)")
    p.add_argument("--baseline", action="store_true",
                   help="also time the raw client calls each driver is built on and print "
                        "our overhead as a ratio")
    p.add_argument("--all", action="store_true",
                   help="add every networked driver (redis, amqp, faktory, quic) whose server "
                        "answers; URLs from --<driver>-url, UNIFIEDQ_BENCH_<DRIVER>_URL or the "
                        "usual local port")
    p.add_argument("--start-servers", action="store_true",
                   help="start private Redis, RabbitMQ, Faktory and QUIC (memory backend) "
                        "servers for the drivers that have no URL, stop them afterwards "
                        "(implies --all)")
    for d in NETWORKED:
        p.add_argument(f"--{d}-url", metavar="URL", default=None,
                       help=f"{d} URL for --all (else ${env_var(d)})")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"),
                   help="print the ratios between two JSON results and exit")
    p.add_argument("--drain-timeout", type=float, default=10.0,
                   help="seconds without a dequeued job before the rest count as lost (10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser(prog: str = "unifiedq bench") -> argparse.ArgumentParser:
    """Return the argument parser of the bench command."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Measure enqueue/peek/dequeue latency at several loads on unifiedq "
                    "drivers, verify no job was lost or reordered, and report.",
    )
    add_arguments(p)
    return p


def _redact_argv(argv: Sequence[str]) -> str:
    out = []
    for a in argv:
        if "://" in a:
            with contextlib.suppress(Exception):
                a = parse_url(a).redacted() if "=" not in a.split("://", 1)[0] else a
        out.append(a)
    return shlex.join(out)


class _Progress:
    """A rich progress bar on stderr, or nothing when rich is missing or it is turned off."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._p: Any = None
        self._task: Any = None
        if not enabled:
            return
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )
        except ImportError:
            return
        self._p = Progress(
            TextColumn("[bold]{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=Console(stderr=True), transient=True,
        )
        self._task = self._p.add_task("bench", total=total)

    def __enter__(self) -> _Progress:
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()

    def describe(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._task, description=text)

    def advance(self, n: int = 1) -> None:
        if self._p is not None:
            self._p.advance(self._task, n)

    def log(self, text: str) -> None:
        if self._p is not None:
            self._p.console.log(text)
        else:
            print(text, file=sys.stderr)


def _log(message: str) -> None:
    # One write per line: servers start on several threads at once.
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def bench_main(argv: Sequence[str] | None = None, *, prog: str = "unifiedq bench") -> int:
    """Run the bench command line; return the exit status.

    Exit status: 0 when every run verified, 1 when a run lost, duplicated or reordered jobs
    (or failed) or a URL given on the command line could not be benchmarked, 2 on bad
    arguments.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    args = parser.parse_args(args_list)

    if args.compare:
        try:
            old, new = load_report(args.compare[0]), load_report(args.compare[1])
        except (OSError, ValueError) as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
        render_compare(old, new)
        return 0

    for u in args.urls:
        try:
            parse_url(u)
        except InvalidURL as exc:
            parser.error(str(exc))
    if args.start_servers:
        args.all = True
    flag_urls = {d: getattr(args, f"{d}_url") for d in NETWORKED}
    for d, u in flag_urls.items():
        if u is not None:
            try:
                parse_url(u)
            except InvalidURL as exc:
                parser.error(f"--{d}-url: {exc}")

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        progress_enabled = not args.no_progress
        targets: list[Target] = []
        explicit: list[Target] = []
        if args.urls:
            explicit = [target_for_url(u) for u in args.urls]
            targets += explicit
        else:
            targets += embedded_targets(max(args.loads), args.size)
        if args.all:
            _log("looking for networked servers ...")
            targets += networked_targets(flag_urls, start_servers=args.start_servers,
                                         stack=stack, log=_log)
        runs = sum(len(args.loads) for t in targets if t.runnable)
        total = runs * (PHASES + (1 if args.baseline else 0))
        with _Progress(total, progress_enabled) as prog_bar:
            rep = run_bench(
                targets, loads=args.loads, ops=args.ops, producers=args.producers,
                consumers=args.consumers, size=args.size, face=args.face,
                baseline=args.baseline, drain_timeout=args.drain_timeout,
                on_step=prog_bar.describe, on_advance=prog_bar.advance,
            )
    rep.command = _redact_argv(["unifiedq", "bench", *args_list])
    rep.elapsed_s = time.perf_counter() - started

    # With --json - the document owns stdout; everything human goes to stderr.
    out = sys.stderr if args.json == "-" else sys.stdout
    render_table(rep, baseline=args.baseline, file=out)
    if args.json:
        rep.write_json(args.json)
    if args.csv:
        write_csv(rep, args.csv)
    if args.plot:
        from ..bench.plot import PlotUnavailable, plot_report

        try:
            plot_report(rep, args.plot)
        except PlotUnavailable as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 2
    skipped = [t for t in targets if not t.runnable]
    for t in skipped:
        print(f"not run: {t.driver}: {t.status}: {t.reason}", file=out)
    print(f"bench finished in {rep.elapsed_s:.1f} s "
          f"({len(rep.runs)} runs; {'all verified' if rep.ok else 'VERIFICATION FAILED'})",
          file=out)
    # A URL the user named that could not run is a failure; an embedded or --all driver that
    # is not installed or not reachable is only reported.
    if not rep.ok or any(not t.runnable for t in explicit):
        return 1
    return 0
