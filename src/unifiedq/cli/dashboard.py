"""``unifiedq dashboard URL [URL ...]``: serve the web dashboard (the ``dashboard`` extra)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "dashboard_main", "read_token"]


def build_parser(prog: str = "unifiedq dashboard") -> argparse.ArgumentParser:
    """The parser of ``unifiedq dashboard``."""
    p = argparse.ArgumentParser(
        prog=prog, description="Serve a web dashboard over queues of any driver.")
    p.add_argument("urls", nargs="+", metavar="URL",
                   help="queue URL; a URL with {tenant} is a fair queue's template")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; a non-loopback address needs "
                        "a token for actions)")
    p.add_argument("--port", type=int, default=8089, help="port (default 8089; 0 = any free)")
    p.add_argument("--allow-actions", action="store_true",
                   help="serve the dead-letter retry and delete actions (default: read-only)")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--token-env", metavar="VAR",
                     help="read the API token from environment variable VAR")
    tok.add_argument("--token-file", metavar="PATH", help="read the API token from a file")
    p.add_argument("--tenant", action="append", default=[], metavar="NAME",
                   help="a tenant of the fair-queue template(s) (repeatable; redis finds "
                        "tenants by itself)")
    p.add_argument("--weight", action="append", default=[], metavar="TENANT=W",
                   help="a tenant's fair-queue weight (repeatable; default 1)")
    p.add_argument("--interval", type=float, default=2.0,
                   help="seconds between two readings of a queue (default 2)")
    p.add_argument("--history", type=int, default=300,
                   help="readings kept per queue for the chart (default 300)")
    p.add_argument("--log-level", default="warning", help="uvicorn's log level")
    return p


def read_token(env: str | None, path: str | None) -> str | None:
    """The token from ``$env`` or the file at ``path`` (stripped), or None.

    Raises:
        ValueError: The variable is unset, or the token is empty or shorter than 16 chars.
        OSError: The file cannot be read.
    """
    if env is None and path is None:
        return None
    if env is not None:
        if env not in os.environ:
            raise ValueError(f"environment variable {env} is not set")
        token = os.environ[env].strip()
    else:
        assert path is not None
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    if len(token) < 16:
        raise ValueError("the token must have at least 16 characters")
    return token


def dashboard_main(argv: Sequence[str], prog: str = "unifiedq dashboard") -> int:
    """Run ``unifiedq dashboard``; return the exit status (2: refused configuration)."""
    args = build_parser(prog).parse_args(list(argv))
    try:
        import uvicorn

        from ..dashboard import Settings, create_app, is_loopback, make_sources
    except ImportError as exc:
        print(f"{prog}: not available ({exc.name!r} is missing): "
              "pip install 'unifiedq[dashboard]'", file=sys.stderr)
        return 1
    try:
        token = read_token(args.token_env, args.token_file)
        weights = {}
        for w in args.weight:
            name, sep, val = w.partition("=")
            if not sep:
                raise ValueError(f"--weight {w!r}: expected TENANT=W")
            weights[name] = float(val)
    except (ValueError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    loopback = is_loopback(args.host)
    if not loopback and args.allow_actions and token is None:
        print(f"{prog}: refusing to serve actions on the non-loopback address {args.host} "
              "without a token (--token-env VAR or --token-file PATH)", file=sys.stderr)
        return 2
    if not loopback and token is None:
        print(f"{prog}: warning: serving read-only on {args.host} without a token: anyone "
              "who reaches it sees the queues' state", file=sys.stderr)
    settings = Settings(allow_actions=args.allow_actions, token=token, loopback_only=loopback,
                        interval=args.interval, history=args.history)
    dash = create_app(make_sources(args.urls, tenants=args.tenant, weights=weights), settings)
    for s in dash.sources:
        print(f"{prog}: watching {s.label}", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    mode = "actions allowed" if args.allow_actions else "read-only"
    print(f"{prog}: http://{shown}:{args.port}/ ({mode}{', token required' if token else ''})",
          file=sys.stderr)
    uvicorn.run(dash.app(), host=args.host, port=args.port, log_level=args.log_level,
                access_log=False, lifespan="on")
    return 0
