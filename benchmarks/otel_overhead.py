"""What unifiedq.otel costs per job: traced vs plain, side by side in one run.

    python benchmarks/otel_overhead.py [--rounds 5] [--jobs 5000] [--out PATH_WITHOUT_SUFFIX]

Not run by CI. On ``memory://`` (so the queue itself costs little and the tracing shows),
rounds interleaved (every variant once per round, in turn); medians and ranges reported:

* enqueue: ``--jobs`` ``q.enqueue(b"x")`` on the plain queue, on ``instrument(q)`` with the
  SDK (``BatchSpanProcessor`` to an exporter that drops spans) and with OpenTelemetry's no-op
  provider (the API installed, no SDK configured). µs/op.
* worker: ``--jobs`` jobs (enqueued by an instrumented queue, so all carry ``traceparent``)
  consumed by a ``Worker`` (concurrency 1, no-op handler) without middleware, with
  ``TracingMiddleware`` on the SDK, and on the no-op provider. µs/job, wall time / jobs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import unifiedq
from unifiedq.otel import TracingMiddleware, instrument


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _sdk() -> TracerProvider:
    p = TracerProvider()
    p.add_span_processor(BatchSpanProcessor(_Drop()))
    return p


def enqueue_us(variant: str, n: int, provider: trace.TracerProvider) -> float:
    with unifiedq.connect(f"memory://bench-{uuid.uuid4().hex[:8]}") as raw:
        q = raw if variant == "plain" else instrument(raw, tracer_provider=provider)
        t = time.perf_counter()
        for _ in range(n):
            q.enqueue(b"x")
        return (time.perf_counter() - t) / n * 1e6


def worker_us(variant: str, n: int, provider: trace.TracerProvider) -> float:
    with unifiedq.connect(f"memory://bench-{uuid.uuid4().hex[:8]}") as raw:
        instrument(raw, tracer_provider=provider).enqueue_many([b"x"] * n)
        mw = [] if variant == "plain" else [TracingMiddleware(raw, tracer_provider=provider)]
        w = unifiedq.Worker(raw, lambda job: None, middleware=mw, poll_interval=0.05)
        t = time.perf_counter()
        w.start()
        while w.stats().processed < n:
            time.sleep(0.001)
        dt = time.perf_counter() - t
        w.stop()
        return dt / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--out", default="benchmarks/results/otel_overhead")
    a = ap.parse_args()
    sdk, noop = _sdk(), trace.NoOpTracerProvider()
    variants: dict[str, tuple[Callable[[str, int, Any], float], str, Any]] = {
        "enqueue plain": (enqueue_us, "plain", sdk),
        "enqueue traced (SDK)": (enqueue_us, "traced", sdk),
        "enqueue traced (no SDK)": (enqueue_us, "traced", noop),
        "worker plain": (worker_us, "plain", sdk),
        "worker traced (SDK)": (worker_us, "traced", sdk),
        "worker traced (no SDK)": (worker_us, "traced", noop),
    }
    res: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for k, (fn, v, p) in variants.items():
            res[k].append(fn(v, a.jobs, p))
    sdk.shutdown()
    lines = [f"# unifiedq.otel overhead (memory://, {a.jobs} jobs, {a.rounds} interleaved rounds)",
             "", f"Command: `python benchmarks/otel_overhead.py --rounds {a.rounds} "
             f"--jobs {a.jobs}`", "",
             "| variant | µs/op median | range | vs plain (median of per-round ratios) |",
             "|---|---|---|---|"]
    for k, xs in res.items():
        base = res["enqueue plain" if k.startswith("enqueue") else "worker plain"]
        ratio = statistics.median(x / b for x, b in zip(xs, base, strict=True))
        lines.append(f"| {k} | {statistics.median(xs):.1f} | {min(xs):.1f}-{max(xs):.1f} | "
                     f"{ratio:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out + ".md").write_text(text)
    Path(a.out + ".json").write_text(json.dumps({"jobs": a.jobs, "rounds": a.rounds,
                                                 "us_per_op": res}, indent=1) + "\n")


if __name__ == "__main__":
    main()
