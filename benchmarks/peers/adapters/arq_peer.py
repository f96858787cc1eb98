"""arq on Redis (asyncio), max_jobs = concurrency, default poll_delay (0.5 s)."""

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
    return {n: metadata.version(n) for n in ("arq", "redis", "hiredis")}


async def noop(ctx: Any, payload: str) -> None:
    assert RECORDER is not None
    RECORDER.hit(payload)


def enqueue(o: Options) -> float:
    from arq import create_pool  # type: ignore[import-not-found]
    from arq.connections import RedisSettings  # type: ignore[import-not-found]

    async def main() -> float:
        pool = await create_pool(RedisSettings.from_dsn(o.redis))
        # Same protocol as common.produce (first call untimed), with awaits.
        payload = body(o.size, False)

        def one() -> str:
            return body(o.size, True) if o.stamp else payload

        await pool.enqueue_job("noop", one(), _queue_name=o.queue)
        t0 = time.perf_counter()
        for _ in range(o.n - 1):
            await pool.enqueue_job("noop", one(), _queue_name=o.queue)
            if o.gap:
                await asyncio.sleep(o.gap)
        elapsed = (time.perf_counter() - t0) * o.n / max(1, o.n - 1)
        await pool.aclose()
        return elapsed

    return asyncio.run(main())


def work(o: Options, rec: Recorder) -> None:
    global RECORDER
    RECORDER = rec
    from arq.connections import RedisSettings
    from arq.worker import Worker  # type: ignore[import-not-found]

    async def main() -> None:
        worker = Worker(functions=[noop], redis_settings=RedisSettings.from_dsn(o.redis),
                        queue_name=o.queue, max_jobs=o.concurrency, handle_signals=False)
        emit({"ready": True})
        await worker.async_run()

    asyncio.run(main())

