"""Deadline helpers shared by ``connect()``, the Worker and the drivers (no I/O here).

A job enqueued with ``deadline=``/``ttl=`` must never start after that time; one enqueued with
``timeout=`` may run at most that long per attempt. See docs/deadlines.md.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, TypeVar

from ._errors import InvalidURL
from ._job import Job
from ._url import URL

__all__ = ["EXPIRED_REASON", "ON_EXPIRED", "attempt_limit", "is_expired", "pop_on_expired",
           "set_on_expired"]

#: What ``dequeue`` may do with a job past its deadline (``connect(..., on_expired=...)``).
ON_EXPIRED = ("dead", "drop", "keep")

#: The reason recorded with a job settled as expired (asynq's error message, amqp's
#: ``x-death`` reason where the broker expired it, the Faktory failure message).
EXPIRED_REASON = "expired"

Q = TypeVar("Q")


def pop_on_expired(parsed: URL, options: dict[str, Any]) -> tuple[URL, str]:
    """Take ``on_expired`` out of the URL query and the keyword options (keyword wins).

    Raises:
        InvalidURL: The value is not one of :data:`ON_EXPIRED`.
    """
    value = options.pop("on_expired", None)
    if "on_expired" in parsed.query:
        value = value if value is not None else parsed.query["on_expired"]
        parsed = dataclasses.replace(
            parsed, query={k: v for k, v in parsed.query.items() if k != "on_expired"})
    if value is None:
        return parsed, "dead"
    if value not in ON_EXPIRED:
        raise InvalidURL(f"on_expired must be one of {', '.join(ON_EXPIRED)}, not {value!r}")
    return parsed, str(value)


def set_on_expired(handle: Q, policy: str) -> Q:
    """Set the handle's expired-job policy (only when it differs from the class default)."""
    if policy != "dead":
        handle.on_expired = policy  # type: ignore[attr-defined]
    return handle


def is_expired(job: Job, now: float | None = None) -> bool:
    """Whether ``job`` is past its deadline (``now``: Unix seconds, default the clock)."""
    dl = job.deadline
    return dl is not None and dl <= (time.time() if now is None else now)


def attempt_limit(limit: float | None, job: Job, now: float | None = None) -> float | None:
    """The seconds one attempt of ``job`` may run, or None if nothing limits it.

    The least of ``limit`` (the route's or worker's timeout), ``job.timeout`` and the time
    left to ``job.deadline`` (asynq's rule: a task's context ends at min(now + timeout,
    deadline)).
    """
    out = limit if limit is not None else math.inf
    if job.timeout is not None:
        out = min(out, job.timeout)
    if job.deadline is not None:
        out = min(out, max(0.0, job.deadline - (time.time() if now is None else now)))
    return None if math.isinf(out) else out
