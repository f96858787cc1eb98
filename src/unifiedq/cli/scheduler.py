"""``unifiedq scheduler package.module:schedule``: enqueue periodic jobs until SIGTERM/SIGINT.

SCHEDULE is a :class:`~unifiedq.scheduler.Scheduler` (run as is), an
:class:`~unifiedq.scheduler.AsyncScheduler` (run on asyncio), or a list of
:class:`~unifiedq.scheduler.Entry` (run by a Scheduler built from ``--lease``, ``--single``
and ``--lease-ttl``). Run it in several processes for availability: each tick is enqueued once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from .._errors import ConfigurationError, InvalidArgument, UnifiedQError
from ..scheduler import AsyncScheduler, Entry, Scheduler
from ..worker import JsonLogFormatter
from .worker import _load_target

__all__ = ["scheduler_main"]

log = logging.getLogger("unifiedq.scheduler")

# The scheduler's structured fields, on top of the worker's (event, queue, error, ...).
_FIELDS = ("entry", "tick", "outcome", "owner", "lease", "enqueued", "recovered", "duplicate",
           "claimed_elsewhere", "skipped", "failed", "lost")


class _JsonFormatter(JsonLogFormatter):
    """The worker's JSON lines plus the scheduler's fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as JSON."""
        doc = json.loads(super().format(record))
        for k in _FIELDS:
            v = record.__dict__.get(k)
            if v is not None and k not in doc:
                doc[k] = v
        return json.dumps(doc, default=str)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unifiedq scheduler",
        description="Enqueue the periodic jobs of SCHEDULE (package.module:attribute: a "
                    "Scheduler, an AsyncScheduler or a list of Entry) until SIGTERM/SIGINT.")
    p.add_argument("schedule", help="package.module:attribute")
    p.add_argument("--lease", default=None,
                   help="lease store URL (redis://... or memory://NAME) for a list of entries")
    p.add_argument("--single", action="store_true",
                   help="exactly one scheduler runs: targets without CUSTOM_ID need no lease")
    p.add_argument("--lease-ttl", type=float, default=30.0, help="claim lifetime, seconds")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    return p


def _build(obj: Any, args: argparse.Namespace) -> Scheduler | AsyncScheduler:
    if isinstance(obj, Scheduler | AsyncScheduler):
        if args.lease is not None or args.single:
            raise InvalidArgument("--lease/--single apply to a list of entries; a Scheduler "
                                  "object has its own")
        return obj
    if isinstance(obj, list | tuple) and all(isinstance(e, Entry) for e in obj):
        return Scheduler(obj, lease=args.lease, single=args.single, lease_ttl=args.lease_ttl)
    raise InvalidArgument(f"{args.schedule} is neither a Scheduler, an AsyncScheduler nor a "
                          f"list of Entry (got {type(obj).__name__})")


def scheduler_main(argv: list[str] | None = None) -> int:
    """Entry point of ``unifiedq scheduler SCHEDULE [--lease URL] [--single] ...``.

    Args:
        argv: Arguments after ``scheduler`` (None = ``sys.argv[1:]``).

    Returns:
        The process exit code: 0 after SIGTERM/SIGINT, 1 on a runtime error, 2 on bad
        arguments or a schedule that cannot be loaded.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on errors
        return int(exc.code or 0)
    handler = logging.StreamHandler()
    if args.log_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                               "%(message)s [%(event)s]", defaults={"event": "-"}))
    root = logging.getLogger("unifiedq")
    root.addHandler(handler)
    root.setLevel(args.log_level.upper())
    try:
        sched = _build(_load_target(args.schedule), args)
        if isinstance(sched, AsyncScheduler):
            asyncio.run(sched.run())
        else:
            sched.run()
    except (UnifiedQError, ImportError) as exc:
        log.error("%s", exc, extra={"event": "scheduler_error"})
        bad_input = isinstance(exc, InvalidArgument | ConfigurationError | ImportError)
        return 2 if bad_input else 1
    except KeyboardInterrupt:
        return 130
    finally:
        root.removeHandler(handler)
    return 0
