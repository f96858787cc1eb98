"""Celery 5 on the Redis broker, threads pool (acks on receipt: Celery's default)."""

# The peers live in benchmarks/peers/.venv only, not in the environment mypy runs in.
# mypy: disable-error-code="untyped-decorator"

from __future__ import annotations

from importlib import metadata
from typing import Any

from adapters.common import Options, Recorder, emit, produce

SUPPORTS_BATCH = False
RECORDER: Recorder | None = None


def versions() -> dict[str, str]:
    return {n: metadata.version(n) for n in ("celery", "kombu", "redis", "hiredis")}


def _app(o: Options) -> Any:
    from celery import Celery  # type: ignore[import-not-found]

    app = Celery("peers", broker=o.redis)
    app.conf.update(
        task_default_queue=o.queue,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="bench.noop")
    def noop(payload: str) -> None:
        assert RECORDER is not None
        RECORDER.hit(payload)

    return app, noop


def enqueue(o: Options) -> float:
    _, noop = _app(o)
    return produce(noop.delay, o)


def work(o: Options, rec: Recorder) -> None:
    global RECORDER
    RECORDER = rec
    app, _ = _app(o)
    emit({"ready": True})
    app.worker_main([
        "worker", "--pool=threads", f"--concurrency={o.concurrency}", "--loglevel=WARNING",
        "-Q", o.queue, "--without-gossip", "--without-mingle", "--without-heartbeat",
    ])
