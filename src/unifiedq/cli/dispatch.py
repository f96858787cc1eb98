"""The ``unifiedq`` command: the top-level parser and the dispatch to each subcommand.

Each subcommand lives in its own module of :mod:`unifiedq.cli` (``drivers``, ``inspect``,
``bench``, ``worker``, ``scheduler``); ``serve`` and ``certs`` come from the ``quic`` extra.
Subcommands that parse their own arguments (bench, serve, certs, worker, scheduler) get
everything after their name, and
their modules are imported only when they run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from . import drivers as _drivers
from . import inspect as _inspect
from . import pause as _pause

__all__ = ["build_parser", "main"]


def _cmd_bench(argv: Sequence[str]) -> int:
    from .bench import bench_main

    return bench_main(argv, prog="unifiedq bench")


def _delegate(module: str, func: str, what: str) -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or "a dependency"
            hint = ("pip install 'unifiedq[quic]'" if missing != module
                    else "this installation of unifiedq does not include it")
            print(f"unifiedq {what}: not available ({missing!r} could not be imported): {hint}",
                  file=sys.stderr)
            return 1
        fn = getattr(mod, func, None)
        if not callable(fn):
            print(f"unifiedq {what}: {module}.{func} is missing in this installation",
                  file=sys.stderr)
            return 1
        result = fn(list(argv))
        return int(result) if result is not None else 0

    return run


_serve = _delegate("unifiedq.drivers.quic.server", "serve_main", "serve")
_certs = _delegate("unifiedq.drivers.quic.certs", "certs_main", "certs")
_worker = _delegate("unifiedq.cli.worker", "worker_main", "worker")
_scheduler = _delegate("unifiedq.cli.scheduler", "scheduler_main", "scheduler")
_dashboard = _delegate("unifiedq.cli.dashboard", "dashboard_main", "dashboard")

# Subcommands whose own parser takes every argument after the name.
_PASSTHROUGH: dict[str, Callable[[Sequence[str]], int]] = {
    "bench": _cmd_bench, "serve": _serve, "certs": _certs, "worker": _worker,
    "scheduler": _scheduler, "dashboard": _dashboard,
}


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser (passthrough subcommands parse their own arguments)."""
    p = argparse.ArgumentParser(
        prog="unifiedq",
        description="One typed queue API over memory, shared memory, Redis, RabbitMQ, "
                    "Faktory and QUIC.",
    )
    p.add_argument("--version", action="version", version=f"unifiedq {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("drivers", help="list drivers, their extras, faces and capabilities")
    _drivers.add_arguments(d)
    sub.add_parser("bench", help="benchmark drivers (see 'unifiedq bench --help')",
                   add_help=False)
    i = sub.add_parser("inspect", help="show depth, oldest job age and per-state counts")
    _inspect.add_arguments(i)
    for verb, what in (("pause", "stop handing out a queue's jobs (producers unaffected)"),
                       ("resume", "hand out a paused queue's jobs again")):
        _pause.add_arguments(sub.add_parser(verb, help=what))
    sub.add_parser("serve", help="serve a backend over QUIC (see 'unifiedq serve --help')",
                   add_help=False)
    sub.add_parser("certs", help="make a CA and certificates for serve (see 'unifiedq certs "
                                 "--help')", add_help=False)
    sub.add_parser("worker", help="run handlers over a queue (see 'unifiedq worker --help')",
                   add_help=False)
    sub.add_parser("scheduler", help="enqueue periodic jobs (see 'unifiedq scheduler --help')",
                   add_help=False)
    sub.add_parser("dashboard", help="serve a web dashboard over queues (see 'unifiedq "
                                     "dashboard --help')", add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``unifiedq`` command; return its exit status.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).
    """
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        # `unifiedq drivers --json | head`: the reader left; that is not an error.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the exit-time flush
        return 0


def _main(args_list: list[str]) -> int:
    if args_list and args_list[0] in _PASSTHROUGH:
        try:
            return _PASSTHROUGH[args_list[0]](args_list[1:])
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "drivers":
        return _drivers.drivers_command(args)
    if args.command == "inspect":
        return _inspect.inspect_command(args)
    if args.command in ("pause", "resume"):
        return _pause.pause_command(args)
    parser.print_help()
    return 2
