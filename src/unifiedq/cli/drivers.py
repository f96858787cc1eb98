"""``unifiedq drivers [--json] [-v]``: every registered scheme and what it can do.

One row per scheme: whether its extra is installed, the faces it implements natively and its
capability flags.
"""

from __future__ import annotations

import argparse
import json
import sys

from .. import __version__

__all__ = ["add_arguments", "drivers_command"]

_ABBREV = {
    "BLOCKING_DEQUEUE": "BLOCKING", "LEASE_EXTEND": "LEASE_EXT", "CROSS_PROCESS": "X_PROC",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``unifiedq drivers`` to ``p``."""
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say why each missing driver is missing")


def drivers_command(args: argparse.Namespace) -> int:
    """Print the drivers as a table (or JSON with ``--json``); return the exit status."""
    from ..bench.report import print_table
    from ..bench.targets import describe_drivers

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
