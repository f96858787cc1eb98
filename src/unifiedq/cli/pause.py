"""``unifiedq pause|resume URL [URL ...]``: stop or restart handing out a queue's jobs.

The queue must have ``Capability.PAUSE`` (memory in-process only, so in practice redis:
asynq's own pause, which ``asynq queue pause`` and asynqmon show too). ``unifiedq pause
--status URL`` only prints the state.
"""

from __future__ import annotations

import argparse
import sys

from .._connect import connect
from .._errors import UnifiedQError
from .._url import parse_url

__all__ = ["add_arguments", "pause_command"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the arguments of ``unifiedq pause`` / ``unifiedq resume`` to ``p``."""
    p.add_argument("urls", metavar="URL", nargs="+",
                   help="queue URL, e.g. redis://localhost/0?queue=emails")
    p.add_argument("--status", action="store_true",
                   help="only print whether each queue is paused (changes nothing)")


def pause_command(args: argparse.Namespace) -> int:
    """Pause (``args.command == "pause"``) or resume each queue; print its state.

    Returns:
        0 when every queue was handled, 1 if any failed (each failure is printed).
    """
    status = 0
    for url in args.urls:
        try:
            shown = parse_url(url).redacted()  # never print a password
        except UnifiedQError:
            shown = "<unparsable URL>"
        try:
            with connect(url) as q:
                if args.status:
                    pass
                elif args.command == "pause":
                    q.pause()
                else:
                    q.resume()
                state = "paused" if q.is_paused() else "running"
        except UnifiedQError as exc:
            print(f"unifiedq {args.command}: {shown}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            status = 1
            continue
        print(f"{shown}: {state}")
    return status
