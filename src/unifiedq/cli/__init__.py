"""The ``unifiedq`` command line.

Subcommands:

* ``unifiedq drivers [--json]``: every registered scheme, whether its extra is installed, the
  faces it implements natively and its capability flags.
* ``unifiedq bench [URL ...] [options]``: the benchmark (see :mod:`unifiedq.bench`).
* ``unifiedq inspect URL [--json]``: depth, oldest job age and per-state counts of a queue.
* ``unifiedq serve ...``: expose any backend over QUIC (from the ``quic`` extra).
* ``unifiedq certs ...``: make a CA and server/client certificates for ``serve``.
* ``unifiedq worker package.module:app --url URL ...``: run a worker (see :mod:`unifiedq.worker`).
* ``unifiedq dashboard URL [URL ...]``: a web dashboard (see :mod:`unifiedq.dashboard`).

Every subcommand returns an exit status: 0 success, 1 failure, 2 bad usage.

Layout: :mod:`~unifiedq.cli.dispatch` holds the top-level parser and the dispatch; one module per
subcommand holds its arguments and what it runs (:mod:`~unifiedq.cli.drivers`,
:mod:`~unifiedq.cli.inspect`, :mod:`~unifiedq.cli.bench`, :mod:`~unifiedq.cli.worker`).
``serve`` and ``certs`` are defined with the QUIC driver (``unifiedq.drivers.quic.server`` and
``unifiedq.drivers.quic.certs``) and only dispatched to from here.
"""

from .dispatch import main

__all__ = ["main"]
