"""huey 3 (RedisHuey, blocking pop) with a consumer of ``concurrency`` thread workers."""

# The peers live in benchmarks/peers/.venv only, not in the environment mypy runs in.
# mypy: disable-error-code="untyped-decorator"

from __future__ import annotations

from importlib import metadata
from typing import Any

from adapters.common import Options, Recorder, emit, produce

SUPPORTS_BATCH = False
RECORDER: Recorder | None = None


def versions() -> dict[str, str]:
    return {n: metadata.version(n) for n in ("huey", "redis", "hiredis")}


def _setup(o: Options) -> tuple[Any, Any]:
    from huey import RedisHuey  # type: ignore[import-not-found]

    huey = RedisHuey(o.queue, url=o.redis)

    @huey.task(name="noop")
    def noop(payload: str) -> None:
        assert RECORDER is not None
        RECORDER.hit(payload)

    return huey, noop


def enqueue(o: Options) -> float:
    _, noop = _setup(o)
    return produce(noop, o)


def work(o: Options, rec: Recorder) -> None:
    global RECORDER
    RECORDER = rec
    huey, _ = _setup(o)
    consumer = huey.create_consumer(workers=o.concurrency, worker_type="thread",
                                    periodic=False)
    emit({"ready": True})
    consumer.run()
