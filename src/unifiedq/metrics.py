"""Metrics for workers and the peak-load toolkit, with an optional Prometheus exporter.

Every component reports to a :class:`Metrics` object. The default, :class:`NullMetrics`,
does nothing; :class:`PrometheusMetrics` (needs the ``metrics`` extra, i.e.
``prometheus-client``) exports:

=========================================== ========= ====================================
name                                        type      labels
=========================================== ========= ====================================
``unifiedq_jobs_processed_total``           counter   queue, driver
``unifiedq_jobs_failed_total``              counter   queue, driver (every failed attempt)
``unifiedq_jobs_retried_total``             counter   queue, driver
``unifiedq_jobs_dead_total``                counter   queue, driver (dead-lettered/dropped)
``unifiedq_jobs_timed_out_total``           counter   queue, driver
``unifiedq_handler_duration_seconds``       histogram queue, driver
``unifiedq_jobs_in_flight``                 gauge     queue, driver
``unifiedq_queue_depth``                    gauge     queue, driver (waiting jobs)
``unifiedq_queue_oldest_age_seconds``       gauge     queue, driver (needs PEEK)
``unifiedq_jobs_shed_total``                counter   queue, driver, policy (bounded queues)
``unifiedq_jobs_expired_total``             counter   queue, driver (past deadline / CoDel)
=========================================== ========= ====================================

Usage::

    from unifiedq.metrics import PrometheusMetrics, start_metrics_server
    start_metrics_server(9100)
    Worker("redis://...", handler, metrics=PrometheusMetrics())
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from ._errors import DriverUnavailable

__all__ = ["Metrics", "NullMetrics", "PrometheusMetrics", "start_metrics_server"]


class Metrics:
    """What components report. Subclass and override what you need; every method is a no-op.

    Methods are called from worker threads (or the event loop) and must be fast and
    thread-safe.
    """

    def processed(self, queue: str, driver: str, duration: float) -> None:
        """A handler finished successfully after ``duration`` seconds."""

    def failed(self, queue: str, driver: str, duration: float) -> None:
        """A handler attempt raised (or timed out) after ``duration`` seconds."""

    def timed_out(self, queue: str, driver: str) -> None:
        """A handler ran past its timeout."""

    def retried(self, queue: str, driver: str) -> None:
        """A failed job was scheduled for another attempt."""

    def dead(self, queue: str, driver: str) -> None:
        """A job ran out of attempts and was dead-lettered (or dropped)."""

    def in_flight(self, queue: str, driver: str, delta: int) -> None:
        """The number of running handlers changed by ``delta``."""

    def depth(self, queue: str, driver: str, size: int, oldest_age: float | None) -> None:
        """A sample of the queue's waiting jobs and the age of the next one (if known)."""

    def shed(self, queue: str, driver: str, policy: str, n: int = 1) -> None:
        """A bounded queue shed ``n`` jobs under ``policy`` (reject, drop_oldest, spill...)."""

    def expired(self, queue: str, driver: str, n: int = 1) -> None:
        """``n`` jobs were settled as expired instead of run.

        Their deadline had passed, or an overload policy such as
        :class:`~unifiedq.deadlines.CoDel` shed them.
        """


class NullMetrics(Metrics):
    """Reports nothing (the default)."""


_registry_lock = threading.Lock()
# registry -> namespace -> collectors. Weak keys: a dropped registry takes its collectors with
# it (keyed by id() they stayed forever, and a new registry reusing the id got the old one's).
_collectors: weakref.WeakKeyDictionary[Any, dict[str, dict[str, Any]]] = \
    weakref.WeakKeyDictionary()


def _prom() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DriverUnavailable(
            "Prometheus metrics need prometheus-client: pip install 'unifiedq[metrics]'",
            extra="metrics",
        ) from exc
    return prometheus_client


def _make(registry: Any, namespace: str) -> dict[str, Any]:
    p = _prom()
    lab = ("queue", "driver")
    kw: dict[str, Any] = {"namespace": namespace, "registry": registry}
    return {
        "processed": p.Counter("jobs_processed", "Jobs whose handler succeeded", lab, **kw),
        "failed": p.Counter("jobs_failed", "Handler attempts that raised or timed out", lab,
                            **kw),
        "retried": p.Counter("jobs_retried", "Failed jobs scheduled for another attempt", lab,
                             **kw),
        "dead": p.Counter("jobs_dead", "Jobs dead-lettered or dropped after their last attempt",
                          lab, **kw),
        "timed_out": p.Counter("jobs_timed_out", "Handler attempts that ran past the timeout",
                               lab, **kw),
        "duration": p.Histogram(
            "handler_duration_seconds", "Handler run time", lab,
            buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300),
            **kw),
        "in_flight": p.Gauge("jobs_in_flight", "Handlers running now", lab, **kw),
        "depth": p.Gauge("queue_depth", "Jobs waiting in the queue", lab, **kw),
        "oldest": p.Gauge("queue_oldest_age_seconds", "Age of the next waiting job", lab, **kw),
        "shed": p.Counter("jobs_shed", "Jobs shed by a bounded queue's overflow policy",
                          (*lab, "policy"), **kw),
        "expired": p.Counter("jobs_expired", "Jobs settled as expired instead of run", lab,
                             **kw),
    }


class PrometheusMetrics(Metrics):
    """Prometheus collectors, labelled by queue and driver.

    Creating several instances on one registry shares the collectors (Prometheus forbids
    registering a name twice).

    Args:
        registry: A ``prometheus_client.CollectorRegistry``; None uses the default one.
        namespace: Metric name prefix.

    Raises:
        DriverUnavailable: ``prometheus-client`` is not installed.
    """

    def __init__(self, registry: Any = None, *, namespace: str = "unifiedq") -> None:
        p = _prom()
        reg = p.REGISTRY if registry is None else registry
        with _registry_lock:
            by_ns = _collectors.setdefault(reg, {})
            if namespace not in by_ns:
                by_ns[namespace] = _make(reg, namespace)
            self._c = by_ns[namespace]
        self.registry = reg

    def processed(self, queue: str, driver: str, duration: float) -> None:
        """Count a success and observe its duration."""
        self._c["processed"].labels(queue, driver).inc()
        self._c["duration"].labels(queue, driver).observe(duration)

    def failed(self, queue: str, driver: str, duration: float) -> None:
        """Count a failed attempt and observe its duration."""
        self._c["failed"].labels(queue, driver).inc()
        self._c["duration"].labels(queue, driver).observe(duration)

    def timed_out(self, queue: str, driver: str) -> None:
        """Count a timeout."""
        self._c["timed_out"].labels(queue, driver).inc()

    def retried(self, queue: str, driver: str) -> None:
        """Count a retry."""
        self._c["retried"].labels(queue, driver).inc()

    def dead(self, queue: str, driver: str) -> None:
        """Count a dead-lettered job."""
        self._c["dead"].labels(queue, driver).inc()

    def in_flight(self, queue: str, driver: str, delta: int) -> None:
        """Move the in-flight gauge."""
        self._c["in_flight"].labels(queue, driver).inc(delta)

    def depth(self, queue: str, driver: str, size: int, oldest_age: float | None) -> None:
        """Set the depth (and oldest-age) gauges."""
        self._c["depth"].labels(queue, driver).set(size)
        if oldest_age is not None:
            self._c["oldest"].labels(queue, driver).set(oldest_age)

    def shed(self, queue: str, driver: str, policy: str, n: int = 1) -> None:
        """Count shed jobs."""
        self._c["shed"].labels(queue, driver, policy).inc(n)

    def expired(self, queue: str, driver: str, n: int = 1) -> None:
        """Count expired jobs."""
        self._c["expired"].labels(queue, driver).inc(n)


def start_metrics_server(port: int, addr: str = "127.0.0.1", registry: Any = None) -> None:
    """Serve ``/metrics`` over HTTP on ``addr:port`` from a daemon thread.

    Args:
        port: TCP port.
        addr: Address to bind (loopback by default; metrics can reveal queue names).
        registry: Registry to serve; None serves the default one.
    """
    p = _prom()
    if registry is None:
        p.start_http_server(port, addr)
    else:
        p.start_http_server(port, addr, registry=registry)
