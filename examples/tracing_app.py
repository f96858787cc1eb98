"""OpenTelemetry traces across a queue: a producer span per enqueue, a consumer span per job.

Run: ``python examples/tracing_app.py`` (needs the ``otel`` extra and ``opentelemetry-sdk``).
A real application configures its SDK once (an OTLP exporter to its collector, say); this one
keeps the spans in memory and prints them as a tree.
"""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import unifiedq
from unifiedq.otel import TracingMiddleware, instrument

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)  # unifiedq.otel uses the global provider by default
tracer = trace.get_tracer("tracing_app")


def resize(job: unifiedq.Job) -> None:
    # The consumer span is current here: this span nests under it.
    with tracer.start_as_current_span("resize"):
        time.sleep(0.01)


def main() -> None:
    with instrument(unifiedq.connect("memory://jobs")) as q:
        with tracer.start_as_current_span("http request"):
            q.enqueue(b"photo.jpg", headers={"type": "resize"})  # "jobs publish"
        worker = unifiedq.Worker(q, resize, middleware=[TracingMiddleware(q)],
                                 poll_interval=0.05)
        worker.start()
        while worker.stats().processed < 1:
            time.sleep(0.01)
        worker.stop()

    done = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in done if s.context}

    def depth(s: ReadableSpan) -> int:
        n = 0
        while s.parent is not None and s.parent.span_id in by_id:
            s, n = by_id[s.parent.span_id], n + 1
        return n

    for s in sorted(done, key=lambda s: s.start_time or 0):
        attrs = dict(s.attributes or {})
        print(f"{'  ' * depth(s)}{s.name} [{s.kind.name}] "
              f"trace={s.context.trace_id:032x} "
              f"system={attrs.get('messaging.system', '-')}")
    print("same trace:", len({s.context.trace_id for s in done if s.context}) == 1)


if __name__ == "__main__":
    main()
