"""Dramatiq 2 on Redis or RabbitMQ, one in-process Worker with ``concurrency`` threads.

The same Worker the ``dramatiq`` command starts per process (``--processes 1 --threads 8``),
built directly so that this process is the one measured. Broker defaults are kept
(RabbitmqBroker: ``confirm_delivery=False``).
"""

# The peers live in benchmarks/peers/.venv only, not in the environment mypy runs in.
# mypy: disable-error-code="untyped-decorator"

from __future__ import annotations

import threading
from importlib import metadata
from typing import Any

from adapters.common import Options, Recorder, emit, produce

SUPPORTS_BATCH = False
RECORDER: Recorder | None = None


def versions() -> dict[str, str]:
    return {n: metadata.version(n) for n in ("dramatiq", "redis", "hiredis", "pika")}


def _setup(o: Options) -> tuple[Any, Any]:
    import dramatiq  # type: ignore[import-not-found]

    if o.extra.get("backend") == "amqp":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker  # type: ignore[import-not-found]

        # pika reads the kombu-style "//" path as vhost "", not "/".
        url = o.amqp[:-2] + "/%2F" if o.amqp.endswith("//") else o.amqp
        broker: Any = RabbitmqBroker(url=url)
    else:
        from dramatiq.brokers.redis import RedisBroker  # type: ignore[import-not-found]

        broker = RedisBroker(url=o.redis)
    dramatiq.set_broker(broker)

    @dramatiq.actor(actor_name="noop", queue_name=o.queue, max_retries=0)
    def noop(payload: str) -> None:
        assert RECORDER is not None
        RECORDER.hit(payload)

    return broker, noop


def enqueue(o: Options) -> float:
    broker, noop = _setup(o)
    try:
        return produce(noop.send, o)
    finally:
        broker.close()


def work(o: Options, rec: Recorder) -> None:
    global RECORDER
    RECORDER = rec
    from dramatiq import Worker

    broker, _ = _setup(o)
    worker = Worker(broker, worker_threads=o.concurrency)
    worker.start()
    emit({"ready": True})
    threading.Event().wait()
