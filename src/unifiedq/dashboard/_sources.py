"""What the dashboard watches: one :class:`Source` per queue URL (or fair-queue template).

Every method here blocks (the app runs them in worker threads, one lock per source, so the
sampler and an action never share a handle at once). A source never raises out of
:meth:`Source.sample`: a backend error becomes the sample's ``error`` text, the handle is
closed and reopened at the next sample, and the other queues go on being sampled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from .._base import QueueBase
from .._capabilities import Capability
from .._connect import connect
from .._url import parse_url
from ..bench.inspection import STATS_KEYS, SupportsStats

__all__ = ["DeadLetter", "FairSource", "QueueSource", "Sample", "Source", "mask_url"]

# Query options whose values are secrets in some driver's URL.
_SECRET_KEYS = re.compile(r"pass|secret|token|key|auth|cred", re.IGNORECASE)
_TENANT = "{tenant}"
_TENANT_RE = r"([A-Za-z0-9_.\-]{1,64})"


def mask_url(url: str) -> str:
    """Return ``url`` with its password and secret-looking query values replaced by ``***``.

    Args:
        url: A queue URL (it may be invalid: then only its query is masked).
    """
    try:
        shown = parse_url(url).redacted()
    except Exception:  # an invalid URL is still shown (masked), with its error beside it
        shown = url
        parts = urllib.parse.urlsplit(url)
        if parts.password:
            shown = shown.replace(f":{parts.password}@", ":***@", 1)
    parts = urllib.parse.urlsplit(shown)
    if not parts.query:
        return shown
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if not any(_SECRET_KEYS.search(k) for k, _ in pairs):
        return shown  # as written (re-encoding would change how it looks)
    masked = [(k, "***" if _SECRET_KEYS.search(k) else v) for k, v in pairs]
    query = urllib.parse.urlencode(masked, safe="{}*,:/")
    return urllib.parse.urlunsplit(parts._replace(query=query))


def _scrub(text: str, url: str) -> str:
    """Remove ``url``'s password from an error message (drivers may echo their URL)."""
    with contextlib.suppress(Exception):
        secret = urllib.parse.urlsplit(url).password
        if secret:
            text = text.replace(urllib.parse.unquote(secret), "***").replace(secret, "***")
    return text


@dataclasses.dataclass
class Sample:
    """One reading of a queue.

    Attributes:
        t: Unix time of the reading (seconds).
        fields: The standard keys of ``unifiedq inspect`` (``depth``, ``oldest_age``,
            ``pending``, ``active``, ``scheduled``, ``retry``, ``dead``), None when unknown.
        counters: Cumulative ``processed`` and ``failed`` attempts where the backend keeps
            them (asynq's counters on redis), else None.
        error: The backend error of this reading (URL secrets removed), or None.
        tenants: Per-tenant readings of a fair queue (tenant -> Sample), else None.
    """

    t: float
    fields: dict[str, Any]
    counters: dict[str, int] | None = None
    error: str | None = None
    tenants: dict[str, Sample] | None = None


@dataclasses.dataclass
class DeadLetter:
    """A dead job as the dashboard lists it.

    Attributes:
        id: The job id.
        type: The job type (asynq task type), if any.
        error: The last error message, if the backend kept one.
        attempts: Attempts made (retries + 1), if known.
        died_at: Unix time it was dead-lettered (seconds), if known.
        size: Payload size in bytes.
        preview: The first bytes of the payload, decoded leniently.
    """

    id: str
    type: str | None
    error: str | None
    attempts: int | None
    died_at: float | None
    size: int
    preview: str


class Source:
    """A watched queue. Subclasses implement :meth:`_read`; every method blocks."""

    kind = "queue"

    def __init__(self, url: str) -> None:
        self.url = url  # never shown: see label
        self.label = mask_url(url)
        self.driver = parse_url(url).scheme if "://" in url else "?"
        self.lock = threading.Lock()

    def sample(self) -> Sample:
        """Read the queue now; a backend error is returned in the sample, never raised."""
        with self.lock:
            try:
                return self._read()
            except Exception as exc:
                self._drop()
                return Sample(time.time(), {k: None for k in STATS_KEYS},
                              error=_scrub(f"{type(exc).__name__}: {exc}", self.url))

    def _read(self) -> Sample:
        raise NotImplementedError

    def _drop(self) -> None:
        """Forget the handle(s) after an error (reopened at the next sample)."""

    def close(self) -> None:
        """Close every handle."""
        with self.lock:
            self._drop()

    # -- dead letters: None means "this backend keeps no dead letters the dashboard can read"
    def dead_letters(self, limit: int) -> list[DeadLetter] | None:
        """The newest ``limit`` dead jobs, or None when the backend keeps none to read."""
        return None

    def retry_dead(self, job_id: str) -> bool:
        """Put a dead job back as ready; False when it is no longer dead."""
        raise NotImplementedError

    def delete_dead(self, job_id: str) -> bool:
        """Delete a dead job for good; False when it is no longer dead."""
        raise NotImplementedError


def _close_quietly(q: QueueBase | None) -> None:
    if q is not None:
        with contextlib.suppress(Exception):
            q.close()


def _read_queue(q: QueueBase) -> tuple[dict[str, Any], dict[str, int] | None]:
    """Standard fields (and asynq's counters on redis) of an open blocking handle."""
    from . import _redis

    raw: dict[str, Any] = dict(q.stats()) if isinstance(q, SupportsStats) else {}
    fields = {k: raw.get(k) for k in STATS_KEYS}
    if fields["depth"] is None:
        fields["depth"] = q.size()
    if fields["oldest_age"] is None and Capability.PEEK in q.capabilities:
        job = q.peek()
        fields["oldest_age"] = (max(0.0, time.time() - job.enqueued_at)
                                if job is not None and job.enqueued_at else
                                0.0 if job is None else None)
    for k in ("server_dead", "completed", "paused"):  # driver extras worth a column
        if raw.get(k) is not None:
            fields[k] = raw[k]
    counters = _redis.counters(q) if _redis.is_redis(q) else None
    return fields, counters


class QueueSource(Source):
    """One queue URL."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._q: QueueBase | None = None

    def handle(self) -> QueueBase:
        """The open handle (opened on first use, or again after an error)."""
        if self._q is None:
            self._q = connect(self.url)
            self.driver = self._q.driver
        return self._q

    def _drop(self) -> None:
        q, self._q = self._q, None
        _close_quietly(q)

    def _read(self) -> Sample:
        fields, counters = _read_queue(self.handle())
        return Sample(time.time(), fields, counters)

    def _redis_handle(self) -> Any | None:
        from . import _redis

        q = self.handle()
        return q if _redis.is_redis(q) else None

    def dead_letters(self, limit: int) -> list[DeadLetter] | None:
        """The newest ``limit`` dead jobs (redis: asynq's archived set), else None."""
        from . import _redis

        with self.lock:
            q = self._redis_handle()
            return None if q is None else _redis.dead_letters(q, limit)

    def retry_dead(self, job_id: str) -> bool:
        """Move a dead job back to pending (redis: as asynq's Inspector ``RunTask``)."""
        from . import _redis

        with self.lock:
            q = self._redis_handle()
            if q is None:
                raise NotImplementedError(f"{self.driver}: no dead letters to retry")
            return _redis.retry_dead(q, job_id)

    def delete_dead(self, job_id: str) -> bool:
        """Delete a dead job (redis: its archived entry and task hash)."""
        from . import _redis

        with self.lock:
            q = self._redis_handle()
            if q is None:
                raise NotImplementedError(f"{self.driver}: no dead letters to delete")
            return _redis.delete_dead(q, job_id)


class FairSource(Source):
    """A fair queue's URL template (``...{tenant}...``): one sub-queue per tenant.

    Tenants are the ones named (``tenants``, ``weights``) plus, on redis, every asynq queue
    whose name matches the template (read from ``asynq:queues`` at each sample).
    """

    kind = "fair"

    def __init__(self, template: str, *, tenants: list[str] | None = None,
                 weights: Mapping[str, float] | None = None, default_weight: float = 1.0,
                 max_tenants: int = 50) -> None:
        super().__init__(template)
        self.weights = dict(weights or {})
        self.default_weight = default_weight
        self.max_tenants = max_tenants
        # FairQueue's own default tenant when none is named (jobs enqueued without one).
        self.named = sorted(set(tenants or ()) | set(self.weights)) or ["default"]
        self._subs: dict[str, QueueBase] = {}

    def weight(self, tenant: str) -> float:
        """The tenant's configured weight."""
        return self.weights.get(tenant, self.default_weight)

    def _sub(self, tenant: str) -> QueueBase:
        q = self._subs.get(tenant)
        if q is None:
            q = self._subs[tenant] = connect(self.url.replace(_TENANT, tenant))
            self.driver = f"fair+{q.driver}"
        return q

    def _discover(self) -> list[str]:
        from . import _redis

        found = set(self.named)
        probe = self._sub(self.named[0]) if self.named else None
        if probe is not None and _redis.is_redis(probe):
            qname = parse_url(self.url).query.get("queue", "")
            if _TENANT in qname:
                head, tail = qname.split(_TENANT, 1)
                pat = re.compile(re.escape(head) + _TENANT_RE + re.escape(tail) + "$")
                found.update(_redis.matching_queues(probe, pat))
        return sorted(found)[: self.max_tenants]

    def _drop(self) -> None:
        subs, self._subs = self._subs, {}
        for q in subs.values():
            _close_quietly(q)

    def _read(self) -> Sample:
        per: dict[str, Sample] = {}
        for tenant in self._discover():
            fields, counters = _read_queue(self._sub(tenant))
            per[tenant] = Sample(time.time(), fields, counters)
        total: dict[str, Any] = {}
        for k in STATS_KEYS:
            vals = [s.fields.get(k) for s in per.values()]
            known = [v for v in vals if v is not None]
            if k == "oldest_age":
                total[k] = max(known, default=None) if len(known) == len(vals) else None
            else:
                total[k] = sum(known) if len(known) == len(vals) and vals else (
                    0 if not vals and k == "depth" else None)
        counts = [s.counters for s in per.values()]
        summed: dict[str, int] | None = None
        if counts and all(c is not None for c in counts):
            summed = {k: sum(c[k] for c in counts if c is not None)
                      for k in ("processed", "failed")}
        return Sample(time.time(), total, summed, tenants=per)
