"""Worker runtime: run handlers over any queue, with retries, timeouts and graceful shutdown.

Two faces with the same options and methods (``AsyncWorker`` is the source, ``Worker`` is
generated from it; see docs/contributing.md):

* :class:`Worker` runs blocking handlers on ``concurrency`` threads over a :class:`Queue`.
* :class:`AsyncWorker` runs coroutine handlers (and blocking ones, on daemon threads) as
  ``concurrency`` asyncio tasks over an :class:`AsyncQueue`.

Routing by job type::

    from unifiedq import Router, Worker

    app = Router()                      # routes on the "type" header

    @app.handler("email.send", timeout=30, max_attempts=5)
    def send_email(job):
        ...

    Worker("redis://localhost:6379/0?queue=emails", app, concurrency=8).run()

or from the command line: ``unifiedq worker myapp.tasks:app --url ... --concurrency 8``.

What the worker does for each job, and how it adapts to the driver's capabilities:

* **Success**: ``ack()`` (ACK drivers; with BATCH, ``ack_many()`` of up to ``ack_batch`` jobs,
  each sent within ``ack_window`` seconds). A handler's return value is ignored.
* **Fetching**: one slot at a time fetches, ``dequeue_many(k)`` with ``k`` = the idle slots
  (BATCH drivers), so no job is taken before a slot is free to run it.
* **Failure** (exception or timeout) with attempts left: retry after an exponential backoff
  with jitter (:class:`Retry`). With ACK and DELAY: ``nack(delay=backoff)``. With ACK but
  no DELAY: the worker holds the leased job (extending its lease) and ``nack()``s it when the
  backoff is over. Without ACK: the job is already gone from the queue, so a copy is
  re-enqueued with ``x-unifiedq-attempt`` and ``x-unifiedq-error`` headers (where the driver
  has HEADERS).
* **Last attempt failed** (or the handler raised :class:`SkipRetry`, or no handler matches the
  job type): dead-letter. With a ``dead_letter`` queue, a copy (with ``x-unifiedq-error``,
  ``x-unifiedq-attempts``, ``x-unifiedq-job-id`` and ``x-unifiedq-queue`` headers) is enqueued
  there and the original acked; otherwise ``nack(requeue=False)`` hands it to the driver's
  own dead set (asynq's archive, RabbitMQ's DLQ, Faktory's dead set; memory:// drops it).
* **Attempts** are counted by the driver (``job.attempt``), by the ``x-unifiedq-attempt``
  header for re-enqueued copies, whichever is higher.
* **Timeouts**: a handler running past ``timeout`` is failed and retried. A Python thread
  cannot be killed, so a hung *blocking* handler keeps its thread: the worker abandons that
  thread (it is a daemon), starts a fresh one for the slot, and settles the job itself; when
  the stuck call finally returns, its result is thrown away and it can never ack the job.
  Coroutine handlers are cancelled (one that ignores cancellation is abandoned likewise).
* **Leases**: while a handler runs (and while a job waits for its backoff), a housekeeping
  thread calls ``extend_lease(job, lease_extend)`` every ``lease_extend / 3`` seconds on
  drivers with LEASE_EXTEND, so slow jobs are not handed to a second worker. Drivers without
  it rely on their own lease length (set it above your longest handler).
* **Shutdown** (SIGTERM/SIGINT in :meth:`Worker.run`, or :meth:`Worker.stop`): stop fetching,
  let running handlers finish within ``grace`` seconds, then ``nack()`` what is still running
  (and any job waiting for its backoff) so another worker picks it up. A second signal skips
  the grace period.

Delivery semantics follow the driver. With ACK (memory, redis, amqp, faktory, quic) a job is
processed **at least once**: it is settled only after its handler returns, and a worker that
dies leaves it to come back after its lease. Without ACK (``shm://``) dequeue removes the job,
so a worker that dies mid-handler loses it: **at most once**; graceful shutdown still re-enqueues
jobs whose handler did not finish.

Logging goes to the ``unifiedq.worker`` logger with structured fields on each record
(``event``, ``job_id``, ``queue``, ``driver``, ``attempt``, ``job_type``, ``duration``,
``error``); :class:`JsonLogFormatter` renders them as one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any

from ._async.worker import AsyncWorker
from ._sync.worker import Worker
from ._worker_core import (
    ATTEMPT_HEADER,
    ERROR_HEADER,
    Middleware,
    NoHandler,
    Retry,
    RetryLater,
    Route,
    Router,
    SkipRetry,
    WorkerStats,
)

__all__ = [
    "ATTEMPT_HEADER",
    "ERROR_HEADER",
    "AsyncWorker",
    "JsonLogFormatter",
    "Middleware",
    "NoHandler",
    "Retry",
    "RetryLater",
    "Route",
    "Router",
    "SkipRetry",
    "Worker",
    "WorkerStats",
    "worker_main",
]


# -- logging -----------------------------------------------------------------------------------
_LOG_FIELDS = ("event", "queue", "driver", "job_id", "attempt", "job_type", "duration",
               "error", "delay", "signal", "concurrency", "processed", "failed", "retried",
               "dead", "returned", "timed_out", "lease_lost", "in_flight")


class JsonLogFormatter(logging.Formatter):
    """Formats records as one JSON object per line, with the worker's structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as JSON."""
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k in _LOG_FIELDS:
            v = record.__dict__.get(k)
            if v is not None:
                out[k] = v
        if record.exc_info and record.exc_info[0] is not None:
            out["exc"] = "".join(traceback.format_exception(*record.exc_info)).strip()
        return json.dumps(out, default=str)


def worker_main(argv: list[str] | None = None) -> int:
    """``unifiedq worker``: see :func:`unifiedq.cli.worker.worker_main`."""
    from .cli.worker import worker_main as main  # the CLI imports this module: import late

    return main(argv)
