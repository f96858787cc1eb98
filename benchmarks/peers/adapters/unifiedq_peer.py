"""unifiedq on redis:// and amqp://: Worker (threads), AsyncWorker, and a plain dequeue/ack loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from importlib import metadata
from typing import Any

from adapters.common import Options, Recorder, body, emit, produce

SUPPORTS_BATCH = True


def _url(o: Options) -> str:
    base = o.amqp if o.extra.get("backend") == "amqp" else o.redis
    return f"{base}?queue={o.queue}"


def versions() -> dict[str, str]:
    names = ["unifiedq", "redis", "hiredis", "kombu", "amqp"]
    out = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    import unifiedq

    out["unifiedq_src"] = unifiedq.__file__.rsplit("/unifiedq/", 1)[0]
    return out


def enqueue(o: Options) -> float:
    import unifiedq

    with unifiedq.connect(_url(o)) as q:
        if o.batch > 1:
            payload = body(o.size, False).encode()
            q.size()  # connect before the clock starts
            t0 = time.perf_counter()
            for start in range(0, o.n, o.batch):
                q.enqueue_many([payload] * min(o.batch, o.n - start))
            return time.perf_counter() - t0
        return produce(lambda p: q.enqueue(p.encode()), o)


def work(o: Options, rec: Recorder) -> None:
    flavour = o.extra.get("flavour", "threads")
    url = _url(o)
    if flavour == "threads":
        from unifiedq.worker import Worker

        def handler(job: Any) -> None:
            rec.hit(job.body)

        worker = Worker(url, handler, concurrency=o.concurrency)
        emit({"ready": True})
        worker.run()
    elif flavour == "asyncio":
        from unifiedq.worker import AsyncWorker

        async def ahandler(job: Any) -> None:
            rec.hit(job.body)

        async def main() -> None:
            worker = AsyncWorker(url, ahandler, concurrency=o.concurrency)
            emit({"ready": True})
            await worker.run()

        asyncio.run(main())
    elif flavour == "loop":
        # The floor a worker is measured against: one thread, dequeue_many + ack_many.
        import unifiedq

        with unifiedq.connect(url) as q:
            emit({"ready": True})
            while True:
                jobs = q.dequeue_many(32, timeout=1.0)
                for job in jobs:
                    rec.hit(job.body)
                if jobs:
                    q.ack_many(jobs)
    else:
        raise SystemExit(f"unknown unifiedq flavour {flavour!r}")
