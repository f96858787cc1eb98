"""taskiq with taskiq-redis's RedisStreamBroker (consumer group, acks), run_receiver_task.

``max_async_tasks`` = concurrency; the handler is ``async``. The stream group is created by
the producer's ``startup()`` (its default start id ``$`` would skip jobs queued before it).
"""

# The peers live in benchmarks/peers/.venv only, not in the environment mypy runs in.
# mypy: disable-error-code="untyped-decorator"

from __future__ import annotations

import asyncio
import time
from importlib import metadata
from typing import Any

from adapters.common import Options, Recorder, body, emit

SUPPORTS_BATCH = False
RECORDER: Recorder | None = None


def versions() -> dict[str, str]:
    return {n: metadata.version(n) for n in ("taskiq", "taskiq-redis", "redis", "hiredis")}


def _setup(o: Options) -> tuple[Any, Any]:
    from taskiq_redis import RedisStreamBroker  # type: ignore[import-not-found]

    broker = RedisStreamBroker(url=o.redis, queue_name=o.queue)

    @broker.task(task_name="noop")
    async def noop(payload: str) -> None:
        assert RECORDER is not None
        RECORDER.hit(payload)

    return broker, noop


def enqueue(o: Options) -> float:
    broker, noop = _setup(o)

    async def main() -> float:
        await broker.startup()
        # Same protocol as common.produce (first call untimed), with awaits.
        payload = body(o.size, False)

        def one() -> str:
            return body(o.size, True) if o.stamp else payload

        await noop.kiq(one())
        t0 = time.perf_counter()
        for _ in range(o.n - 1):
            await noop.kiq(one())
            if o.gap:
                await asyncio.sleep(o.gap)
        elapsed = (time.perf_counter() - t0) * o.n / max(1, o.n - 1)
        await broker.shutdown()
        return elapsed

    return asyncio.run(main())


def work(o: Options, rec: Recorder) -> None:
    global RECORDER
    RECORDER = rec
    from taskiq.api import run_receiver_task  # type: ignore[import-not-found]

    broker, _ = _setup(o)
    broker.is_worker_process = True

    async def main() -> None:
        await broker.startup()
        emit({"ready": True})
        await run_receiver_task(broker, max_async_tasks=o.concurrency, run_startup=False)

    asyncio.run(main())
