"""unifiedq.otel: producer and consumer spans with the SDK's in-memory exporter, real servers."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:  # a dev dependency (pyproject's dev extra): its absence is a broken setup, not a skip
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
except ImportError as exc:  # pragma: no cover
    raise ImportError("tests/test_otel.py needs opentelemetry-sdk: pip install -e '.[dev]'") \
        from exc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from pyfaktory import Client

import unifiedq
from test_redis import _go, interop_bin  # noqa: F401  (interop_bin is a fixture)
from unifiedq import AsyncWorker, Job, Retry, Worker
from unifiedq.otel import (
    ATTEMPT,
    OUTCOME,
    AsyncTracedQueue,
    TracedQueue,
    TracingMiddleware,
    instrument,
    messaging_system,
)

ROOT = Path(__file__).resolve().parent.parent
FAST = Retry(max_attempts=2, backoff=0.05, jitter=0.0)


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _name() -> str:
    return f"otel-{uuid.uuid4().hex[:10]}"


def _url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "memory":
        return f"memory://{_name()}"
    if kind == "redis":
        return f"{request.getfixturevalue('redis_url')}?queue={_name()}"
    if kind == "amqp":
        return f"{request.getfixturevalue('amqp_url')}?queue={_name()}"
    assert kind == "faktory"
    return f"{request.getfixturevalue('faktory_url')}?queue={_name()}"


def _wait(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting for the worker"
        time.sleep(0.01)


def _by_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is kind]


def _traceparent(span: ReadableSpan) -> str:
    c = span.context
    assert c is not None
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}"


def _check_pair(producer: ReadableSpan, consumer: ReadableSpan, system: str, queue: str,
                job_id: str, attempt: int = 1) -> None:
    """The consumer span is the producer span's child (and links to it); semconv attributes."""
    assert producer.context is not None and consumer.context is not None
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    assert [lk.context.span_id for lk in consumer.links] == [producer.context.span_id]
    assert producer.name == f"{queue} publish" and consumer.name == f"{queue} process"
    assert dict(producer.attributes or {}) == {
        "messaging.system": system, "messaging.destination.name": queue,
        "messaging.operation.type": "publish", "messaging.operation.name": "publish",
        "messaging.message.id": job_id}
    ca = dict(consumer.attributes or {})
    assert ca["messaging.system"] == system and ca["messaging.destination.name"] == queue
    assert ca["messaging.operation.type"] == "process" and ca["messaging.message.id"] == job_id
    assert ca[ATTEMPT] == attempt


def _detach_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "detach" in r.getMessage().lower()]


# -- both faces on memory, redis and amqp ------------------------------------------------------
@pytest.mark.parametrize("kind", ["memory", "redis", "amqp"])
def test_sync_worker_links_producer_and_consumer(
        kind: str, request: pytest.FixtureRequest, spans: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("app")
    seen: list[tuple[str, int]] = []

    def handler(job: Job) -> None:
        with tracer.start_as_current_span("handler-work"):
            seen.append((job.id, threading.get_ident()))

    with unifiedq.connect(_url(kind, request)) as raw:
        q = instrument(raw, tracer_provider=provider)
        assert isinstance(q, TracedQueue)
        with tracer.start_as_current_span("request") as outer:
            jid = q.enqueue(b"hello", headers={"type": "greet"})
        mw = TracingMiddleware(raw, tracer_provider=provider)
        w = Worker(q, handler, middleware=[mw], poll_interval=0.05)
        w.start()
        _wait(lambda: w.stats().processed == 1)
        w.stop()
    (prod,) = _by_kind(exporter, SpanKind.PRODUCER)
    (cons,) = _by_kind(exporter, SpanKind.CONSUMER)
    system = {"memory": "memory", "redis": "redis", "amqp": "rabbitmq"}[kind]
    _check_pair(prod, cons, system, raw.name, jid)
    assert prod.parent is not None and prod.parent.span_id == outer.get_span_context().span_id
    assert cons.attributes is not None and cons.attributes["unifiedq.job.type"] == "greet"
    assert cons.attributes[OUTCOME] == "success" and cons.status.status_code is StatusCode.UNSET
    (work,) = [s for s in exporter.get_finished_spans() if s.name == "handler-work"]
    assert work.parent is not None and cons.context is not None
    assert work.parent.span_id == cons.context.span_id  # the handler's spans nest
    assert seen and seen[0][0] == jid
    assert not _detach_errors(caplog)


@pytest.mark.parametrize("kind", ["memory", "redis", "amqp"])
@pytest.mark.parametrize("blocking", [False, True], ids=["async-handler", "blocking-handler"])
def test_async_worker_links_producer_and_consumer(
        kind: str, blocking: bool, request: pytest.FixtureRequest, spans: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("app")
    url = _url(kind, request)
    n = 3

    async def main() -> tuple[list[str], str]:
        async with unifiedq.connect_async(url) as raw:
            q = instrument(raw, tracer_provider=provider)
            assert isinstance(q, AsyncTracedQueue)
            ids = [await q.enqueue(b"job-%d" % i) for i in range(n)]

            async def ahandler(job: Job) -> None:
                with tracer.start_as_current_span("handler-work"):
                    await asyncio.sleep(0)

            def bhandler(job: Job) -> None:
                with tracer.start_as_current_span("handler-work"):
                    pass

            mw = TracingMiddleware(url, tracer_provider=provider)
            w = AsyncWorker(q, bhandler if blocking else ahandler, middleware=[mw],
                            concurrency=2, poll_interval=0.05)
            w.start()
            end = time.monotonic() + 15
            while w.stats().processed < n:
                assert time.monotonic() < end
                await asyncio.sleep(0.01)
            await w.stop()
            # Nothing of a finished job stays current here (the worker's own task context).
            assert not trace.get_current_span().get_span_context().is_valid
            return ids, raw.name

    ids, name = asyncio.run(main())
    prods = {dict(s.attributes or {})["messaging.message.id"]: s
             for s in _by_kind(exporter, SpanKind.PRODUCER)}
    conss = {dict(s.attributes or {})["messaging.message.id"]: s
             for s in _by_kind(exporter, SpanKind.CONSUMER)}
    assert set(prods) == set(conss) == set(ids)
    system = {"memory": "memory", "redis": "redis", "amqp": "rabbitmq"}[kind]
    for jid in ids:
        _check_pair(prods[jid], conss[jid], system, name, jid)
    works = [s for s in exporter.get_finished_spans() if s.name == "handler-work"]
    assert len(works) == n
    assert {w.parent.span_id for w in works if w.parent} == {
        s.context.span_id for s in conss.values() if s.context}
    # A blocking handler's span is attached on its thread and ended from the worker's task:
    # the middleware must not try to detach it there (OpenTelemetry would log an error).
    assert not _detach_errors(caplog)


# -- failures: retry, then dead-letter ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["memory", "redis", "amqp"])
def test_failing_handler_records_error_retry_and_dead_letter(
        kind: str, request: pytest.FixtureRequest, spans: Any) -> None:
    provider, exporter = spans

    def handler(job: Job) -> None:
        raise ValueError(f"boom on attempt {job.attempt}")

    with unifiedq.connect(_url(kind, request)) as raw:
        q = instrument(raw, tracer_provider=provider)
        jid = q.enqueue(b"bad")
        w = Worker(q, handler, middleware=[TracingMiddleware(raw, tracer_provider=provider)],
                   retry=FAST, poll_interval=0.05)
        w.start()
        _wait(lambda: w.stats().dead == 1)
        w.stop()
        st = w.stats()
        assert (st.failed, st.retried, st.dead) == (2, 1, 1)
    (prod,) = _by_kind(exporter, SpanKind.PRODUCER)
    conss = sorted(_by_kind(exporter, SpanKind.CONSUMER),
                   key=lambda s: int(dict(s.attributes or {})[ATTEMPT]))  # type: ignore[arg-type]
    assert [dict(s.attributes or {})[ATTEMPT] for s in conss] == [1, 2]
    for s, outcome in zip(conss, ["retry", "dead_letter"], strict=True):
        attrs = dict(s.attributes or {})
        # The retry is the same trace: both attempts are children of the one producer span.
        assert s.parent is not None and prod.context is not None
        assert s.parent.span_id == prod.context.span_id
        assert attrs["messaging.message.id"] == jid
        assert s.status.status_code is StatusCode.ERROR
        assert s.status.description is not None and "boom on attempt" in s.status.description
        assert attrs[OUTCOME] == outcome and attrs["error.type"] == "ValueError"
        names = [e.name for e in s.events]
        assert "exception" in names and f"unifiedq.{outcome}" in names
        (exc_ev,) = [e for e in s.events if e.name == "exception"]
        assert dict(exc_ev.attributes or {})["exception.type"] == "ValueError"


def test_no_handler_and_timeout_still_end_a_span(spans: Any,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    provider, exporter = spans
    router = unifiedq.Router()

    @router.handler("slow", timeout=0.2, max_attempts=1)
    def slow(job: Job) -> None:
        time.sleep(1.0)

    with unifiedq.connect(f"memory://{_name()}") as raw:
        q = instrument(raw, tracer_provider=provider)
        q.enqueue(b"x", headers={"type": "unknown"})
        q.enqueue(b"y", headers={"type": "slow"})
        w = Worker(q, router, middleware=[TracingMiddleware(raw, tracer_provider=provider)],
                   max_attempts=1, poll_interval=0.05)
        w.start()
        _wait(lambda: w.stats().dead == 2)
        w.stop(grace=2)
    conss = {dict(s.attributes or {}).get("unifiedq.job.type"): s
             for s in _by_kind(exporter, SpanKind.CONSUMER)}
    assert set(conss) == {"unknown", "slow"}
    for s in conss.values():
        assert s.status.status_code is StatusCode.ERROR
        assert dict(s.attributes or {})[OUTCOME] == "dead_letter"
    assert dict(conss["unknown"].attributes or {})["error.type"] == "NoHandler"
    assert dict(conss["slow"].attributes or {})["error.type"] == "TimeoutError"
    assert not _detach_errors(caplog)


# -- batches, drivers without HEADERS, close() -------------------------------------------------
def test_enqueue_many_is_one_batch_span(spans: Any) -> None:
    provider, exporter = spans
    with unifiedq.connect(f"memory://{_name()}") as raw:
        q = instrument(raw, tracer_provider=provider)
        ids = q.enqueue_many([b"a", b"b", b"c"], headers={"k": "v"})
        jobs = [raw.dequeue(timeout=1) for _ in ids]
    (prod,) = _by_kind(exporter, SpanKind.PRODUCER)
    attrs = dict(prod.attributes or {})
    assert attrs["messaging.batch.message_count"] == 3 and "messaging.message.id" not in attrs
    for j in jobs:
        assert j is not None and j.headers["k"] == "v"
        assert j.headers["traceparent"] == _traceparent(prod)


def test_without_headers_capability_no_context_travels(spans: Any) -> None:
    provider, exporter = spans
    name = _name()
    with unifiedq.connect(f"shm://{name}") as raw:
        assert unifiedq.Capability.HEADERS not in raw.capabilities
        q = instrument(raw, tracer_provider=provider)
        q.enqueue(b"x")
        w = Worker(q, lambda job: None,
                   middleware=[TracingMiddleware(raw, tracer_provider=provider)],
                   poll_interval=0.05)
        w.start()
        _wait(lambda: w.stats().processed == 1)
        w.stop()
        raw.purge()
    (prod,) = _by_kind(exporter, SpanKind.PRODUCER)
    (cons,) = _by_kind(exporter, SpanKind.CONSUMER)
    assert prod.context is not None and cons.context is not None
    assert cons.parent is None and not cons.links  # a trace of its own
    assert cons.context.trace_id != prod.context.trace_id
    assert dict(cons.attributes or {})["messaging.system"] == "shm"


def test_close_ends_spans_of_jobs_handed_back(spans: Any) -> None:
    provider, exporter = spans
    mw = TracingMiddleware("faktory", tracer_provider=provider, max_open=2)
    jobs = [Job(id=f"j{i}", queue="q", body=b"") for i in range(3)]
    for j in jobs:
        mw.before(j)  # the third pushes the first out: abandoned
    assert [dict(s.attributes or {})[OUTCOME] for s in exporter.get_finished_spans()] == \
        ["abandoned"]
    mw.close()
    assert len(exporter.get_finished_spans()) == 3
    assert {dict(s.attributes or {})["messaging.system"] for s in
            exporter.get_finished_spans()} == {"faktory"}


def test_system_names() -> None:
    assert messaging_system("amqp") == "rabbitmq" and messaging_system("redis") == "redis"
    assert TracingMiddleware("amqps://u:p@h/v?queue=x").system == "rabbitmq"
    assert TracingMiddleware().system == "unifiedq"
    with pytest.raises(unifiedq.InvalidArgument):
        instrument(object())


def test_unused_costs_nothing_and_headers_are_copied(spans: Any) -> None:
    # Zero cost when not used: unifiedq itself never imports opentelemetry.
    code = "import sys, unifiedq, unifiedq.worker; print('opentelemetry' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "False"
    provider, _ = spans
    mine = {"k": "v"}
    with unifiedq.connect(f"memory://{_name()}") as raw:
        instrument(raw, tracer_provider=provider).enqueue(b"x", headers=mine)
        job = raw.dequeue(timeout=1)
    assert mine == {"k": "v"}  # the caller's dict is not written to
    assert job is not None and set(job.headers) == {"k", "traceparent"}


# -- interop: the headers survive Go asynq and Faktory untouched -------------------------------
def test_trace_context_reaches_go_asynq_untouched(
        interop_bin: Path, redis_url: str, spans: Any) -> None:  # noqa: F811
    provider, exporter = spans
    name = _name()
    with unifiedq.connect(f"{redis_url}?queue={name}") as raw:
        q = instrument(raw, tracer_provider=provider)
        jid = q.enqueue(b"traced", headers={"type": "interop:ok", "k": "v"})
        events = _go(interop_bin, redis_url, "consume", name, "-count", "1", "-timeout", "60s")
    (prod,) = _by_kind(exporter, SpanKind.PRODUCER)
    (run,) = [e for e in events if e["event"] == "run"]
    assert run["id"] == jid
    assert run["headers"] == {"k": "v", "traceparent": _traceparent(prod)}


def test_trace_context_round_trips_faktory(faktory_url: str, spans: Any) -> None:
    provider, exporter = spans
    name = _name()
    with unifiedq.connect(f"{faktory_url}?queue={name}") as raw:
        q = instrument(raw, tracer_provider=provider)
        first = q.enqueue(b"raw")
        # What Faktory stores: the context in the job's custom hash, as any Faktory client sees.
        consumer = Client(faktory_url=faktory_url.replace("faktory://", "tcp://"),
                          role="both", timeout=10, worker_id=uuid.uuid4().hex)
        consumer.connect()
        try:
            job = consumer._fetch([name])
            assert base64.b64decode(job["args"][0]) == b"raw"
            (p1,) = _by_kind(exporter, SpanKind.PRODUCER)
            assert job["custom"]["unifiedq"]["headers"]["traceparent"] == _traceparent(p1)
            consumer._ack(job["jid"])
        finally:
            consumer.disconnect()
        jid = q.enqueue(b"worked")
        w = Worker(q, lambda job: None,
                   middleware=[TracingMiddleware(raw, tracer_provider=provider)],
                   poll_interval=0.05)
        w.start()
        _wait(lambda: w.stats().processed == 1)
        w.stop()
    assert first != jid
    p2 = [s for s in _by_kind(exporter, SpanKind.PRODUCER)
          if dict(s.attributes or {})["messaging.message.id"] == jid]
    (cons,) = _by_kind(exporter, SpanKind.CONSUMER)
    _check_pair(p2[0], cons, "faktory", name, jid)


# -- the documented example --------------------------------------------------------------------
def test_tracing_example_runs() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "tracing_app.py")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "jobs publish" in out and "jobs process" in out and "resize" in out
    assert "same trace: True" in out

