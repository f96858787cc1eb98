"""``unifiedq inspect URL [--json]``: depth, oldest job age and per-state counts of a queue."""

from __future__ import annotations

import argparse
import json
import sys

from .._errors import UnifiedQError

__all__ = ["add_arguments", "inspect_command"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the arguments of ``unifiedq inspect`` to ``p``."""
    p.add_argument("url", metavar="URL", help="queue URL, e.g. redis://localhost/0?queue=emails")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def inspect_command(args: argparse.Namespace) -> int:
    """Print what is known about the queue at ``args.url``; return the exit status."""
    from ..bench.inspection import STATS_KEYS, inspect_queue
    from ..bench.report import print_table

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
