r"""The ``quic://`` driver and ``unifiedq serve``: any backend, served over QUIC.

Features: a job server (:mod:`.server`) exposing any unifiedq backend over QUIC with TLS 1.3
and client certificates required, an optional bearer token, leases returned when a client
disconnects, graceful shutdown; a natively asyncio client (:mod:`.client`, the blocking face
is bridged by the core); a versioned, length-prefixed, size-limited wire format (:mod:`.wire`);
a development CA (:mod:`.certs`).

Connection string::

    quic://host:4433/<queue>?ca=ca.pem&cert=client.pem&key=client.key&capabilities=memory

Server::

    unifiedq serve --listen 127.0.0.1:4433 --backend memory:// \
        --cert server.pem --key server.key --client-ca ca.pem

The CLI (``unifiedq serve`` / ``unifiedq certs``) calls :func:`serve_main` and
:func:`certs_main`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .client import QuicOptions, QuicQueue

__all__ = ["QuicOptions", "QuicQueue", "async_class", "certs_main", "serve_main", "sync_class"]


def serve_main(argv: Sequence[str] | None = None) -> int:
    """Run ``unifiedq serve`` with ``argv`` (without the program name); return the exit code."""
    from .server import serve_main as run

    return run(list(argv) if argv is not None else None)


def certs_main(argv: Sequence[str] | None = None) -> int:
    """Run ``unifiedq certs init|issue`` with ``argv``; return the exit code."""
    from .certs import certs_main as run

    return run(list(argv) if argv is not None else None)


sync_class = None
async_class = QuicQueue
