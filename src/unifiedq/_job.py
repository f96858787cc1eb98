"""Jobs and enqueue requests: frozen, slotted value objects shared by every driver."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import math
import os
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ._errors import BodyTooLarge, InvalidArgument, InvalidBody

__all__ = [
    "PRIORITY_MAX", "PRIORITY_MIN", "Deadline", "Delay", "EnqueueRequest", "Job", "make_job",
    "new_job_id",
]

#: A delay: seconds or a timedelta.
Delay = float | _dt.timedelta

#: A deadline: Unix seconds or a timezone-aware datetime.
Deadline = float | _dt.datetime

#: Lowest and highest priority accepted by ``enqueue(priority=...)``; higher runs first.
PRIORITY_MIN = 0
PRIORITY_MAX = 9

_EMPTY: Mapping[str, str] = MappingProxyType({})

_MAX_ID_LEN = 200


def new_job_id() -> str:
    """Return a fresh job id, shaped like a version-4 UUID string (as asynq's ids are).

    Ids are unique, not secret and not unpredictable: the first 74 bits are random per
    process (drawn again after ``fork``), the last 48 count up from a random start. That makes
    an id about 3x cheaper than formatting 122 random bits per call (which cost 0.7 µs, a
    quarter of an ``shm://`` enqueue) while two processes still collide with probability
    2**-74. Do not use job ids as capabilities or secrets.
    """
    n = next(_id_counter)
    if n > _ID_COUNTER_MAX:  # 2**47 ids from one process: start a fresh prefix
        _reseed_ids()
        n = next(_id_counter)
    return f"{_id_prefix}{n:012x}"


_ID_COUNTER_MAX = (1 << 48) - 1
_id_prefix = ""
_id_counter = itertools.count()


def _reseed_ids() -> None:
    """Draw a new random id prefix and counter start (at import and in every forked child)."""
    global _id_prefix, _id_counter
    h = os.urandom(10).hex()  # 80 bits; 74 are used (version and variant bits are fixed)
    variant = "89ab"[int(h[15], 16) & 3]  # RFC 4122 variant: the top two bits are 10
    _id_prefix = f"{h[:8]}-{h[8:12]}-4{h[12:15]}-{variant}{h[16:19]}-"
    _id_counter = itertools.count(int.from_bytes(os.urandom(6)) >> 1)  # room for 2**47 ids


_reseed_ids()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_ids)


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """A job handed out by ``dequeue()`` or ``peek()``.

    Attributes:
        id: The job's id, unique within its queue.
        queue: The name of the queue the job was dequeued from.
        body: The payload, exactly as it was enqueued.
        attempt: 1 on the first delivery, incremented on each redelivery.
        enqueued_at: Unix time (seconds) when the job was first enqueued.
        headers: String headers given at enqueue time (read-only).
        priority: The priority it was enqueued with, if any.
        receipt: Driver-private data needed to ack the job (delivery tag, lease token...).
        deadline: Unix time (seconds) after which the job must not start, or None
            (``enqueue(deadline=...)`` / ``ttl=``; see docs/deadlines.md).
        timeout: Most seconds one attempt may run, or None (``enqueue(timeout=...)``).
    """

    id: str
    queue: str
    body: bytes
    attempt: int = 1
    enqueued_at: float = 0.0
    headers: Mapping[str, str] = dataclasses.field(default_factory=lambda: _EMPTY, hash=False)
    priority: int | None = None
    receipt: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    deadline: float | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.headers, MappingProxyType):
            object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))


@dataclasses.dataclass(frozen=True, slots=True)
class EnqueueRequest:
    """A validated enqueue call, built by :meth:`EnqueueRequest.build` before any I/O.

    Attributes:
        body: The payload bytes.
        delay: Seconds before the job becomes visible (0.0 = now).
        priority: 0..9 or None.
        job_id: The job id: caller-chosen, or freshly generated.
        custom_id: Whether the caller chose ``job_id`` (drivers check duplicates then).
        headers: String headers.
        deadline: Unix time (seconds) after which the job must not start, or None.
        timeout: Most seconds one attempt may run, or None.
    """

    body: bytes
    delay: float = 0.0
    priority: int | None = None
    job_id: str = ""
    custom_id: bool = False
    headers: Mapping[str, str] = dataclasses.field(default_factory=lambda: _EMPTY, hash=False)
    deadline: float | None = None
    timeout: float | None = None

    @classmethod
    def build(
        cls,
        body: object,
        *,
        delay: object = None,
        priority: object = None,
        job_id: object = None,
        headers: object = None,
        max_body: int | None = None,
        deadline: object = None,
        ttl: object = None,
        timeout: object = None,
    ) -> EnqueueRequest:
        """Validate the arguments of an enqueue call.

        Args:
            body: Must be ``bytes``, ``bytearray`` or ``memoryview``.
            delay: None, seconds (int/float >= 0), or a ``datetime.timedelta``.
            priority: None or an int in ``PRIORITY_MIN..PRIORITY_MAX``.
            job_id: None or a non-empty str of printable characters (at most 200).
            headers: None or a mapping of str to str.
            max_body: The driver's body size limit, if it has one.
            deadline: None, Unix seconds (int/float), or a timezone-aware ``datetime``.
            ttl: None or seconds > 0 from now (sets ``deadline``; not with ``deadline``).
            timeout: None or seconds > 0 one attempt may run.

        Returns:
            The normalised request.

        Raises:
            InvalidBody: ``body`` is not bytes-like.
            BodyTooLarge: ``body`` exceeds ``max_body``.
            InvalidArgument: any other argument is invalid.
        """
        data = _as_bytes(body)
        if max_body is not None and len(data) > max_body:
            raise BodyTooLarge(
                f"body is {len(data)} bytes but this queue accepts at most {max_body}; "
                "store large payloads elsewhere and enqueue a reference",
                limit="max_body", size=len(data), maximum=max_body,
            )
        hdrs = _check_headers(headers)
        d, p = check_delay(delay), check_priority(priority)
        dl, to = check_deadline(deadline, ttl), check_run_timeout(timeout)
        if job_id is None:
            return cls(data, d, p, new_job_id(), False, hdrs, dl, to)
        return cls(data, d, p, _check_id(job_id), True, hdrs, dl, to)


# -- fast constructors ---------------------------------------------------------------------
# A frozen dataclass's generated __init__ sets every field through object.__setattr__, which
# costs about twice as much as calling the slot descriptors directly. The hot paths (a plain
# enqueue, a driver building a Job) use these instead; the result is identical.
_JOB_FIELDS = ("id", "queue", "body", "attempt", "enqueued_at", "headers", "priority", "receipt",
               "deadline", "timeout")
_REQ_FIELDS = ("body", "delay", "priority", "job_id", "custom_id", "headers", "deadline",
               "timeout")
if (tuple(f.name for f in dataclasses.fields(Job)) != _JOB_FIELDS
        or tuple(f.name for f in dataclasses.fields(EnqueueRequest)) != _REQ_FIELDS):
    raise RuntimeError("update the fast constructors in unifiedq._job")  # pragma: no cover
_new = object.__new__
(_j_id, _j_queue, _j_body, _j_attempt, _j_at, _j_headers, _j_prio, _j_receipt, _j_deadline,
 _j_timeout) = (getattr(Job, f).__set__ for f in _JOB_FIELDS)
_r_body, _r_delay, _r_prio, _r_id, _r_custom, _r_headers, _r_deadline, _r_timeout = (
    getattr(EnqueueRequest, f).__set__ for f in _REQ_FIELDS
)


def make_job(id: str, queue: str, body: bytes, attempt: int = 1, enqueued_at: float = 0.0
             ) -> Job:
    """Return ``Job(id, queue, body, attempt, enqueued_at)`` (no headers, priority or receipt).

    For drivers' dequeue paths: about twice as fast as calling :class:`Job`. Arguments are
    trusted, as with the constructor.
    """
    j = _new(Job)
    _j_id(j, id)
    _j_queue(j, queue)
    _j_body(j, body)
    _j_attempt(j, attempt)
    _j_at(j, enqueued_at)
    _j_headers(j, _EMPTY)
    _j_prio(j, None)
    _j_receipt(j, None)
    _j_deadline(j, None)
    _j_timeout(j, None)
    return j


def _plain_request(body: bytes, job_id: str) -> EnqueueRequest:
    """``EnqueueRequest(body, 0.0, None, job_id, False, _EMPTY)``, built faster."""
    r = _new(EnqueueRequest)
    _r_body(r, body)
    _r_delay(r, 0.0)
    _r_prio(r, None)
    _r_id(r, job_id)
    _r_custom(r, False)
    _r_headers(r, _EMPTY)
    _r_deadline(r, None)
    _r_timeout(r, None)
    return r


def _as_bytes(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    hint = " (encode text with .encode() or use a codec)" if isinstance(body, str) else ""
    raise InvalidBody(f"job body must be bytes, not {type(body).__name__}{hint}")


def check_delay(delay: object, *, name: str = "delay") -> float:
    """Return ``delay`` as non-negative finite seconds (None -> 0.0)."""
    if delay is None:
        return 0.0
    if isinstance(delay, _dt.timedelta):
        delay = delay.total_seconds()
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise InvalidArgument(f"{name} must be seconds (int/float) or a timedelta, not {delay!r}")
    if not math.isfinite(delay) or delay < 0:
        raise InvalidArgument(f"{name} must be a finite number of seconds >= 0, not {delay!r}")
    return float(delay)


def check_priority(priority: object) -> int | None:
    """Return ``priority`` if it is None or an int in range, else raise InvalidArgument."""
    if priority is None:
        return None
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidArgument(f"priority must be an int, not {priority!r}")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidArgument(
            f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX} (higher runs first), "
            f"not {priority}"
        )
    return priority


def check_timeout(timeout: object, *, name: str = "timeout") -> float | None:
    """Return ``timeout`` as seconds >= 0, or None for "wait forever"."""
    if timeout is None:
        return None
    if type(timeout) is float and 0.0 <= timeout < math.inf:
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidArgument(f"{name} must be seconds (int/float) or None, not {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise InvalidArgument(f"{name} must be >= 0 seconds or None, not {timeout!r}")
    return None if math.isinf(timeout) else float(timeout)


def check_deadline(deadline: object, ttl: object) -> float | None:
    """Return the absolute deadline (Unix seconds) of ``deadline=``/``ttl=``, or None.

    Raises:
        InvalidArgument: both given; ``deadline`` not finite Unix seconds or an aware
            ``datetime`` (a naive one is ambiguous); ``ttl`` not finite seconds > 0.
    """
    if ttl is not None:
        if deadline is not None:
            raise InvalidArgument("give deadline= or ttl=, not both")
        if isinstance(ttl, _dt.timedelta):
            ttl = ttl.total_seconds()
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise InvalidArgument(f"ttl must be seconds (int/float) or a timedelta, not {ttl!r}")
        if not math.isfinite(ttl) or ttl <= 0:
            raise InvalidArgument(f"ttl must be a finite number of seconds > 0, not {ttl!r}")
        return time.time() + float(ttl)
    if deadline is None:
        return None
    if isinstance(deadline, _dt.datetime):
        if deadline.tzinfo is None or deadline.utcoffset() is None:
            raise InvalidArgument(
                "deadline must be a timezone-aware datetime (a naive one is ambiguous); "
                "use datetime.now(timezone.utc) + ... or Unix seconds")
        return deadline.timestamp()
    if isinstance(deadline, bool) or not isinstance(deadline, int | float):
        raise InvalidArgument(
            f"deadline must be Unix seconds (int/float) or an aware datetime, not {deadline!r}")
    if not math.isfinite(deadline) or deadline <= 0:
        raise InvalidArgument(f"deadline must be finite Unix seconds > 0, not {deadline!r}")
    return float(deadline)


def check_run_timeout(timeout: object) -> float | None:
    """Return ``enqueue(timeout=...)`` as seconds > 0, or None.

    Raises:
        InvalidArgument: not finite seconds > 0 (int/float or a timedelta).
    """
    if timeout is None:
        return None
    if isinstance(timeout, _dt.timedelta):
        timeout = timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidArgument(f"timeout must be seconds (int/float) or a timedelta, "
                              f"not {timeout!r}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise InvalidArgument(f"timeout must be a finite number of seconds > 0, not {timeout!r}")
    return float(timeout)


def _check_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not job_id:
        raise InvalidArgument(f"job_id must be a non-empty str, not {job_id!r}")
    if len(job_id) > _MAX_ID_LEN or not job_id.isprintable() or any(c.isspace() for c in job_id):
        raise InvalidArgument(
            f"job_id must be at most {_MAX_ID_LEN} printable characters without spaces"
        )
    return job_id


def _check_headers(headers: object) -> Mapping[str, str]:
    if headers is None:
        return _EMPTY
    if not isinstance(headers, Mapping):
        raise InvalidArgument(f"headers must be a mapping of str to str, not {headers!r}")
    for k, v in headers.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidArgument(f"headers must map str to str; got {k!r}: {v!r}")
    return MappingProxyType(dict(headers))
