"""The ``unifiedq`` command line.

Subcommands:

* ``unifiedq drivers [--json]``: every registered scheme, whether its extra is installed, the
  faces it implements natively and its capability flags.
* ``unifiedq bench [URL ...] [options]``: the benchmark (see :mod:`unifiedq.bench`).
* ``unifiedq inspect URL [--json]``: depth, oldest job age and per-state counts of a queue.
* ``unifiedq serve ...``: expose any backend over QUIC (from the ``quic`` extra).
* ``unifiedq certs ...``: make a CA and server/client certificates for ``serve``.
* ``unifiedq worker package.module:app --url URL ...``: run a worker (see :mod:`unifiedq.worker`).

Every subcommand returns an exit status: 0 success, 1 failure, 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence

from . import __version__
from ._errors import UnifiedQError

__all__ = ["main"]

_ABBREV = {
    "BLOCKING_DEQUEUE": "BLOCKING", "LEASE_EXTEND": "LEASE_EXT", "CROSS_PROCESS": "X_PROC",
}


def _cmd_drivers(args: argparse.Namespace) -> int:
    from .bench.report import print_table
    from .bench.targets import describe_drivers

    infos = describe_drivers()
    if args.json:
        json.dump([i.to_dict() for i in infos], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    rows = []
    for i in infos:
        faces = "/".join(f for f, ok in (("sync", i.native_sync), ("async", i.native_async))
                         if ok) or "-"
        if i.installed:
            status = "installed"
        elif i.status == "missing extra":
            status = f"missing: pip install 'unifiedq[{i.extra}]'"
        else:
            status = "not available"
        caps = " ".join(_ABBREV.get(c, c) for c in i.capabilities
                        if c not in ("NATIVE_SYNC", "NATIVE_ASYNC"))
        if i.installed and not i.capabilities:
            # e.g. quic://: the flags depend on the server's backend, declared in the URL.
            caps = "(declared per URL)"
        rows.append([i.scheme, i.extra or "-", status, faces, caps or "-", i.summary])
    print_table(f"unifiedq {__version__} drivers",
                ["scheme", "extra", "status", "native", "capabilities", "summary"], rows)
    for i in infos:
        if not i.installed and i.reason and args.verbose:
            print(f"{i.scheme}: {i.reason}")
    return 0


def _cmd_bench(argv: Sequence[str]) -> int:
    from .bench.command import bench_main

    return bench_main(argv, prog="unifiedq bench")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .bench.inspection import STATS_KEYS, inspect_queue
    from .bench.report import print_table

    try:
        info = inspect_queue(args.url)
    except UnifiedQError as exc:
        print(f"unifiedq inspect: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(info, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    rows = []
    for k, v in info["fields"].items():
        if isinstance(v, float):
            shown = f"{v:.3f} s" if k == "oldest_age" else f"{v:g}"
        else:
            shown = "unknown" if v is None else str(v)
        src = info["source"].get(k, "" if v is None else "stats()")
        rows.append([k, shown, src])
    print_table(f"{info['driver']} queue {info['queue']!r} at {info['url']}",
                ["field", "value", "from"], rows)
    if not info["stats_hook"]:
        print(f"the {info['driver']!r} driver has no stats() hook; per-state counts "
              f"({', '.join(k for k in info['unknown'] if k in STATS_KEYS)}) are unknown")
    return 0


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
_worker = _delegate("unifiedq.worker", "worker_main", "worker")

# Subcommands whose own parser takes every argument after the name.
_PASSTHROUGH: dict[str, Callable[[Sequence[str]], int]] = {
    "bench": _cmd_bench, "serve": _serve, "certs": _certs, "worker": _worker,
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
    d.add_argument("--json", action="store_true", help="print JSON instead of a table")
    d.add_argument("-v", "--verbose", action="store_true",
                   help="say why each missing driver is missing")
    sub.add_parser("bench", help="benchmark drivers (see 'unifiedq bench --help')",
                   add_help=False)
    i = sub.add_parser("inspect", help="show depth, oldest job age and per-state counts")
    i.add_argument("url", metavar="URL", help="queue URL, e.g. redis://localhost/0?queue=emails")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub.add_parser("serve", help="serve a backend over QUIC (see 'unifiedq serve --help')",
                   add_help=False)
    sub.add_parser("certs", help="make a CA and certificates for serve (see 'unifiedq certs "
                                 "--help')", add_help=False)
    sub.add_parser("worker", help="run handlers over a queue (see 'unifiedq worker --help')",
                   add_help=False)
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
        return _cmd_drivers(args)
    if args.command == "inspect":
        return _cmd_inspect(args)
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
