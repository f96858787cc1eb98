"""Job results for drivers without a native place for them: result stores.

redis:// keeps a job's result natively (asynq's task ``result`` field) and memory:// in this
process. Any other driver whose blocking face is native (amqp://, faktory://) gets
``Capability.RESULT`` from a store named in its URL or given to ``connect``::

    q = connect("amqp://localhost/?queue=work&results=redis://localhost:6379/0")
    q = connect("faktory://localhost:7419", results="memory://shared")

The store keeps one outcome per (queue name, job id) for ``retention`` seconds: a result
(bytes) or a failure (the last error's text). ``result()`` waits for it without polling
where the store can notify (memory: a condition variable; redis: a per-job list that the
writer pushes to, read with ``BRPOPLPUSH`` so that every waiter sees the one token).

The stores are blocking; the asyncio face of a store-backed driver is the library's thread
bridge, which runs them in its thread pool. See docs/results.md.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from typing import Any, Protocol, TypeVar

from ._capabilities import Capability
from ._errors import (
    ConfigurationError,
    InvalidArgument,
    InvalidBody,
    InvalidURL,
    JobFailed,
)
from ._url import parse_url

__all__ = [
    "DEFAULT_RETENTION",
    "MemoryResultStore",
    "RedisResultStore",
    "ResultStore",
    "attach_results",
    "open_result_store",
]

#: Seconds a result is kept when neither the call nor the queue says otherwise (1 hour).
DEFAULT_RETENTION = 3600.0

_Q = TypeVar("_Q")

# An outcome is one byte of kind then the payload: the result, or the error's UTF-8 text.
_OK, _FAILED = b"\x01", b"\x00"


def unwrap(job_id: str, raw: bytes) -> bytes:
    """Return the result in a stored outcome, or raise JobFailed for a failure."""
    if raw[:1] == _OK:
        return raw[1:]
    raise JobFailed(job_id=job_id, error=raw[1:].decode("utf-8", "replace"))


def outcome(ok: bool, data: bytes) -> bytes:
    """Encode an outcome for :meth:`ResultStore.put`."""
    return (_OK if ok else _FAILED) + data


class ResultStore(Protocol):
    """Where a store-backed queue keeps job outcomes (blocking calls, thread-safe)."""

    def put(self, scope: str, job_id: str, raw: bytes, retention: float) -> None:
        """Store the outcome ``raw`` (see :func:`outcome`) for ``retention`` seconds."""
        ...

    def wait(self, scope: str, job_id: str, timeout: float | None) -> bytes | None:
        """Return the stored outcome, waiting up to ``timeout`` s (None: forever); None if none."""
        ...

    def close(self) -> None:
        """Release the store's connections (shared stores: a no-op)."""
        ...


class MemoryResultStore:
    """Outcomes in this process, shared by every handle that names the same store.

    ``wait`` sleeps on a condition variable that ``put`` notifies. Expired outcomes are
    dropped by later ``put`` calls (at most every second), so memory stays bounded by what
    ``retention`` keeps.
    """

    _named: weakref.WeakValueDictionary[str, MemoryResultStore] = weakref.WeakValueDictionary()
    _named_lock = threading.Lock()

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._data: dict[tuple[str, str], tuple[bytes, float]] = {}  # -> (raw, expires)
        self._swept = 0.0

    @classmethod
    def named(cls, name: str) -> MemoryResultStore:
        """The store every ``memory://<name>`` URL of this process refers to."""
        with cls._named_lock:
            store = cls._named.get(name)
            if store is None:
                store = cls._named[name] = cls()
            return store

    def put(self, scope: str, job_id: str, raw: bytes, retention: float) -> None:
        """Store ``raw`` for ``retention`` seconds and wake every waiter."""
        now = time.monotonic()
        with self._cond:
            self._data[(scope, job_id)] = (raw, now + retention)
            if now - self._swept >= 1.0:
                self._swept = now
                for k in [k for k, (_, exp) in self._data.items() if exp <= now]:
                    del self._data[k]
            self._cond.notify_all()

    def wait(self, scope: str, job_id: str, timeout: float | None) -> bytes | None:
        """Return the outcome of ``job_id``, waiting up to ``timeout`` seconds for it."""
        end = None if timeout is None else time.monotonic() + timeout
        key = (scope, job_id)
        with self._cond:
            while True:
                got = self._data.get(key)
                now = time.monotonic()
                if got is not None and got[1] > now:
                    return got[0]
                if end is not None and now >= end:
                    return None
                self._cond.wait(None if end is None else end - now)

    def close(self) -> None:
        """Nothing to release (the outcomes stay for other handles)."""


class RedisResultStore:
    """Outcomes in Redis: ``uq:result:{<scope>}:<id>`` with an expiry of ``retention``.

    ``put`` is one round trip (SET with EX, RPUSH of a token to ``...:<id>:n``, EXPIRE);
    ``wait`` reads the key and, while it is missing, blocks on the token list with
    ``BRPOPLPUSH`` (the list onto itself: the token stays for every other waiter).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS).
        socket_timeout: Seconds a call waits for Redis beyond its own wait.
    """

    def __init__(self, url: str, *, socket_timeout: float = 5.0) -> None:
        import redis  # the redis extra: imported only when a redis store is used

        self._st = socket_timeout
        self._client: Any = redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                                 socket_connect_timeout=socket_timeout)

    @staticmethod
    def _key(scope: str, job_id: str) -> str:
        return f"uq:result:{{{scope}}}:{job_id}"

    def put(self, scope: str, job_id: str, raw: bytes, retention: float) -> None:
        """Store ``raw`` for ``retention`` seconds (whole milliseconds) and wake waiters."""
        key, ms = self._key(scope, job_id), max(1, int(retention * 1000))
        pipe = self._client.pipeline(transaction=True)
        pipe.set(key, raw, px=ms)
        pipe.rpush(key + ":n", b"1")
        pipe.pexpire(key + ":n", ms)
        pipe.execute()

    def wait(self, scope: str, job_id: str, timeout: float | None) -> bytes | None:
        """Return the outcome of ``job_id``, waiting up to ``timeout`` seconds for it."""
        key = self._key(scope, job_id)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            raw = self._client.get(key)
            if raw is not None:
                return bytes(raw)
            left = 1.0 if end is None else end - time.monotonic()
            if left <= 0:
                return None
            # At most 1 s (well within socket_timeout), then the key is read again: covers a
            # token list that expired or was never pushed.
            self._client.brpoplpush(key + ":n", key + ":n", max(0.001, round(min(left, 1.0), 3)))

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def open_result_store(spec: str | ResultStore) -> ResultStore:
    """Open the store a ``results=`` option names.

    Args:
        spec: ``memory://<name>`` (this process; the same name is the same store),
            ``redis://...`` / ``rediss://...``, or a store object.

    Returns:
        The store.

    Raises:
        InvalidURL: Not a supported store URL.
    """
    if not isinstance(spec, str):
        if not all(callable(getattr(spec, m, None)) for m in ("put", "wait", "close")):
            raise ConfigurationError(f"results= must be a store URL or a ResultStore, "
                                     f"not {spec!r}")
        return spec
    url = parse_url(spec)
    if url.scheme == "memory":
        return MemoryResultStore.named(url.authority + url.path)
    if url.scheme in ("redis", "rediss"):
        return RedisResultStore(spec)
    raise InvalidURL(f"results= takes memory://<name> or redis://..., not {url.scheme}://")


def check_result(result: object) -> bytes:
    """Return a ``complete()`` result as bytes (bytes, bytearray or memoryview)."""
    if isinstance(result, bytes):
        return result
    if isinstance(result, bytearray | memoryview):
        return bytes(result)
    raise InvalidBody(f"a result must be bytes (encode it, e.g. with a codec), not "
                      f"{type(result).__name__}")


def check_error(error: object) -> str:
    """Return a ``fail()`` error text (a str)."""
    if not isinstance(error, str):
        raise InvalidArgument(f"error must be a str, not {type(error).__name__}")
    return error


def check_retention(retention: object) -> float | None:
    """Return ``retention`` as seconds > 0, or None (the queue's default)."""
    if retention is None:
        return None
    if (isinstance(retention, bool) or not isinstance(retention, int | float)
            or not 0 < retention < math.inf):
        raise InvalidArgument(f"retention must be finite seconds > 0 or None, not {retention!r}")
    return float(retention)


def attach_results(queue: _Q, spec: object) -> _Q:
    """Give a driver handle the result store ``spec`` names (``results=``); None: unchanged.

    Raises:
        InvalidURL: The driver keeps results natively (redis://), has no blocking face of
            its own (the stores are blocking), or lacks ACK; or ``spec`` is not a store.
    """
    if spec is None:
        return queue
    from ._base import AsyncQueueBase, QueueBase  # here: _base imports this module

    q: Any = queue
    cls = type(q)
    if isinstance(q, AsyncQueueBase):
        raise InvalidURL(f"results= needs a driver with a native blocking face; the "
                         f"{q.driver!r} driver is asyncio-only")
    if cls._result is not QueueBase._result:
        raise InvalidURL(f"the {q.driver!r} driver keeps job results natively; drop "
                         f"results=")
    if Capability.ACK not in q.capabilities:
        raise InvalidURL(f"results= needs a driver with ACK; {q.driver!r} has none")
    q._results = open_result_store(spec)  # type: ignore[arg-type]
    q._results_owned = isinstance(spec, str)  # a store object stays the caller's to close
    # The handle's own flags: a handle may have dropped some of its class's (an amqp quorum
    # queue has no PRIORITY), which a store must not bring back.
    q.capabilities = q.capabilities | Capability.RESULT
    return queue
