"""RQ 2 with SimpleWorker: jobs run in the worker process, one at a time.

RQ has no in-process concurrency: its default ``Worker`` forks a child per job, and
``rq worker-pool`` runs several worker processes. The 8-way setting does not apply here.
"""

# The peers live in benchmarks/peers/.venv only, not in the environment mypy runs in.
# mypy: disable-error-code="untyped-decorator"

from __future__ import annotations

import time
from importlib import metadata
from typing import Any

from adapters.common import Options, Recorder, body, emit, produce

SUPPORTS_BATCH = True
RECORDER: Recorder | None = None


def versions() -> dict[str, str]:
    return {n: metadata.version(n) for n in ("rq", "redis", "hiredis")}


def noop(payload: str) -> None:
    assert RECORDER is not None
    RECORDER.hit(payload)


def _queue(o: Options) -> Any:
    from redis import Redis
    from rq import Queue  # type: ignore[import-not-found]

    return Queue(o.queue, connection=Redis.from_url(o.redis))


def enqueue(o: Options) -> float:
    from rq import Queue

    q = _queue(o)
    if o.batch > 1:
        payload = body(o.size, False)
        q.connection.ping()
        t0 = time.perf_counter()
        for start in range(0, o.n, o.batch):
            q.enqueue_many([Queue.prepare_data(noop, args=(payload,))
                            for _ in range(min(o.batch, o.n - start))])
        return time.perf_counter() - t0
    return produce(lambda p: q.enqueue(noop, p), o)


def work(o: Options, rec: Recorder) -> None:
    global RECORDER
    RECORDER = rec
    from rq import SimpleWorker

    q = _queue(o)
    worker = SimpleWorker([q], connection=q.connection)
    emit({"ready": True})
    worker.work(logging_level="WARNING")
