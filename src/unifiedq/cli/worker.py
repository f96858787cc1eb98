"""``unifiedq worker package.module:app --url URL ...``: run handlers over a queue.

The command line of the worker runtime in :mod:`unifiedq.worker`: load APP (a
:class:`~unifiedq.worker.Router` or a callable taking a Job), build a
:class:`~unifiedq.worker.Worker` or :class:`~unifiedq.worker.AsyncWorker` from the options,
and run it until SIGTERM/SIGINT. With ``--processes N`` (N > 1) the command is a
:class:`~unifiedq.supervisor.Supervisor` of N such single-process workers instead.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from .._errors import ConfigurationError, InvalidArgument, UnifiedQError
from .._worker_core import _is_async
from ..limits import TokenBucket
from ..metrics import Metrics
from ..supervisor import SUPERVISOR_LOG_FIELDS, SUPERVISOR_PID_ENV, Supervisor
from ..worker import AsyncWorker, JsonLogFormatter, Retry, Router, Worker

__all__ = ["worker_main"]

# The runtime's logger: the command's own errors are logged where the worker logs.
log = logging.getLogger("unifiedq.worker")


def _load_target(spec: str) -> Any:
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise InvalidArgument(f"expected 'package.module:attribute', not {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(mod_name)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InvalidArgument(f"module {mod_name!r} has no attribute {attr!r}") from None
    return obj


def _prefetch(text: str) -> int | str:
    """``--prefetch``: "auto" or a whole number >= 0 (argparse reports anything else)."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"'auto' or a whole number >= 0, not {text!r}")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unifiedq worker",
        description="Run handlers from APP (package.module:attribute, a Router or a callable "
                    "taking a Job) over the queue at --url until SIGTERM/SIGINT.")
    p.add_argument("app", help="package.module:attribute")
    p.add_argument("--url", required=True, help="queue URL, e.g. redis://localhost/0?queue=q")
    p.add_argument("--concurrency", "-c", type=int, default=1)
    p.add_argument("--processes", "-p", type=int, default=1,
                   help="worker processes, each with --concurrency slots, under a supervisor "
                        "that restarts dead ones (default 1: no supervisor)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="per-attempt timeout in seconds (0 = none)")
    p.add_argument("--max-attempts", type=int, default=5)
    p.add_argument("--backoff", type=float, default=1.0, help="first retry delay, seconds")
    p.add_argument("--grace", type=float, default=30.0, help="shutdown grace period, seconds")
    p.add_argument("--dead-letter", default=None, help="URL of a dead-letter queue")
    p.add_argument("--lease-extend", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=None, help="max jobs per second (local)")
    p.add_argument("--prefetch", type=_prefetch, default="auto",
                   help="jobs a fetch may take beyond the idle slots: 'auto' (default: as "
                        "many as start within about one fetch round trip) or a number "
                        "(0: none; docs/worker.md)")
    p.add_argument("--flavour", choices=("auto", "threads", "asyncio"), default="auto",
                   help="auto = asyncio when every handler is async")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this port (needs unifiedq[metrics])")
    p.add_argument("--metrics-addr", default="127.0.0.1")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    return p


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point of ``unifiedq worker APP --url URL [--concurrency N] ...``.

    Args:
        argv: Arguments after ``worker`` (None = ``sys.argv[1:]``).

    Returns:
        The process exit code: 0 after a clean shutdown, 1 on error, 2 on bad arguments.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on errors
        return int(exc.code or 0)
    if args.processes < 1:
        parser.print_usage(sys.stderr)
        print(f"unifiedq worker: error: --processes must be >= 1, not {args.processes}",
              file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    if args.log_json:
        handler.setFormatter(_SupervisorJsonFormatter() if args.processes > 1
                             else JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                               "%(message)s [%(event)s]", defaults={"event": "-"}))
    root = logging.getLogger("unifiedq")
    root.addHandler(handler)
    root.setLevel(args.log_level.upper())
    try:
        if args.processes > 1:
            return _supervise(args, argv)
        _watch_supervisor()
        app = _load_target(args.app)
        if not isinstance(app, Router) and not callable(app):
            raise InvalidArgument(f"{args.app} is neither a Router nor a callable")
        metrics: Metrics | None = None
        if args.metrics_port is not None:
            from ..metrics import PrometheusMetrics, start_metrics_server
            metrics = PrometheusMetrics()
            start_metrics_server(args.metrics_port, args.metrics_addr)
        is_async = app.is_async if isinstance(app, Router) else _is_async(app)
        use_async = args.flavour == "asyncio" or (args.flavour == "auto" and is_async)
        kw: dict[str, Any] = dict(
            concurrency=args.concurrency, timeout=args.timeout or None,
            retry=Retry(max_attempts=args.max_attempts, backoff=args.backoff),
            dead_letter=args.dead_letter, lease_extend=args.lease_extend, grace=args.grace,
            metrics=metrics, prefetch=args.prefetch,
            rate_limit=TokenBucket(args.rate, max(1.0, args.rate)) if args.rate else None)
        if use_async:
            aw = AsyncWorker(args.url, app, **kw)
            asyncio.run(aw.run())
        else:
            Worker(args.url, app, **kw).run()
    except (UnifiedQError, ImportError) as exc:
        log.error("%s", exc, extra={"event": "worker_error"})
        bad_input = isinstance(exc, InvalidArgument | ConfigurationError | ImportError)
        return 2 if bad_input else 1
    except KeyboardInterrupt:
        return 130
    finally:
        root.removeHandler(handler)
    return 0


class _SupervisorJsonFormatter(JsonLogFormatter):
    """The worker's JSON lines plus the supervisor's fields (slot, pid, exit_code, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as JSON."""
        line = super().format(record)
        extra = {k: v for k in SUPERVISOR_LOG_FIELDS
                 if (v := record.__dict__.get(k)) is not None}
        if not extra:
            return line
        doc = json.loads(line)
        return json.dumps({**doc, **{k: v for k, v in extra.items() if k not in doc}},
                          default=str)


def _supervise(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``--processes`` copies of this command with ``--processes 1`` under a Supervisor."""
    base = [sys.executable, "-m", "unifiedq", "worker", *argv]

    def command(slot: int) -> list[str]:
        cmd = [*base, "--processes", "1"]  # argparse keeps the last value of an option
        if args.metrics_port is not None:  # one port per child: they cannot share one
            cmd += ["--metrics-port", str(args.metrics_port + slot)]
        return cmd

    # The supervisor imports nothing of the app: each child does, so a broken app is a
    # crash loop of children (reported as such), and the parent stays small.
    return Supervisor(command, args.processes, grace=args.grace, url=args.url).run()


def _watch_supervisor() -> None:
    """In a supervised child: stop gracefully, as on SIGTERM, once the supervisor is gone.

    Children run in their own session (so that a terminal's Ctrl-C reaches only the
    supervisor), so nothing else stops them if the supervisor is SIGKILLed.
    """
    raw = os.environ.pop(SUPERVISOR_PID_ENV, None)  # not inherited by the app's subprocesses
    if not raw or not raw.isdigit():
        return
    parent = int(raw)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        log.warning("the supervisor (pid %d) is gone: stopping", parent,
                    extra={"event": "supervisor_gone"})
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="unifiedq-supervisor-watch", daemon=True).start()
