"""Raw-client baselines: the library calls each driver is built on, timed the same way.

``unifiedq bench --baseline`` runs, next to each driver and at each load, the closest raw
operations of the library underneath it (one producer, one consumer, same body size, same
process) and reports our latency as a ratio of theirs. A ratio of 1.3 means the driver costs
30 % more per call than the bare library calls it wraps.

=========== ============================ ==========================================================
scheme      library                      enqueue / peek / dequeue / ack
=========== ============================ ==========================================================
memory      ``queue.Queue`` (stdlib)     put / ``queue[0]`` under the mutex / get_nowait / -
shm         faster-fifo, then            put / - / get / -
            ``multiprocessing.Queue``
redis       redis-py                     LPUSH / LINDEX -1 / LMOVE to an active list / LREM
amqp        kombu (publisher confirms)   publish persistent / - / basic_get / basic_ack
faktory     pyfaktory                    PUSH / - / FETCH / ACK
quic        aioquic                      one request/response on a fresh bidirectional stream
                                         to an in-process echo server (the transport alone)
=========== ============================ ==========================================================

Baselines are pluggable: :func:`register_baseline` adds one for any scheme. A baseline whose
library is missing or whose server does not answer reports why (``status="unavailable"``)
instead of failing the run.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import importlib.metadata
import os
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from .runner import OpStats, make_body

__all__ = [
    "Baseline",
    "BaselineResult",
    "baselines_for",
    "register_baseline",
    "run_baseline",
    "server_version",
]

_OPS = ("enqueue", "peek", "dequeue", "ack")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _raw_url(url: str) -> str:
    # The driver's query options (queue=..., visibility_timeout=...) mean nothing to raw clients.
    return url.split("?", 1)[0]


class Baseline(abc.ABC):
    """A raw-client counterpart of one driver.

    Subclasses set :attr:`library` and implement :meth:`session`, a context manager yielding
    an object with ``enqueue(body)``, ``dequeue() -> token``, and optionally ``peek()`` and
    ``ack(token)`` (set :attr:`ops` to what is supported).
    """

    #: Human-readable library name and the calls timed.
    library: str = "?"
    #: Operations this baseline can time.
    ops: tuple[str, ...] = ("enqueue", "dequeue")

    def unavailable(self) -> str | None:
        """Return why this baseline cannot run here (library missing), or None."""
        return None

    @abc.abstractmethod
    def session(self, url: str | None) -> contextlib.AbstractContextManager[Any]:
        """Open the raw client (and a scratch queue) for one run; clean up on exit."""

    def run(self, url: str | None, load: int, size: int) -> dict[str, OpStats]:
        """Time ``load`` enqueues, peeks, dequeues and acks, in that order, one at a time."""
        out: dict[str, OpStats] = {}
        with self.session(url) as s:
            bodies = [make_body(0, i, size) for i in range(load)]
            out["enqueue"] = _time_each("enqueue", s.enqueue, bodies)
            if "peek" in self.ops:
                out["peek"] = _time_each("peek", lambda _b: s.peek(), bodies)
            else:
                out["peek"] = OpStats.unsupported("peek", f"{self.library} has no peek")
            tokens: list[Any] = []

            def take(_b: bytes) -> None:
                tokens.append(s.dequeue())

            out["dequeue"] = _time_each("dequeue", take, bodies)
            if "ack" in self.ops:
                out["ack"] = _time_each("ack", s.ack, tokens)
            else:
                out["ack"] = OpStats.unsupported("ack", f"{self.library} has no ack")
        return out


def _time_each(op: str, fn: Callable[[Any], Any], items: list[Any]) -> OpStats:
    samples: list[int] = []
    errors = 0
    first: str | None = None
    start = time.perf_counter_ns()
    end = start
    for item in items:
        t0 = time.perf_counter_ns()
        try:
            fn(item)
        except Exception as exc:
            errors += 1
            first = first or f"{type(exc).__name__}: {exc}"[:300]
            continue
        end = time.perf_counter_ns()
        samples.append(end - t0)
    return OpStats.from_samples(op, samples, end - start, errors=errors, error=first)


# -- memory ----------------------------------------------------------------------------------


class _StdlibQueue(Baseline):
    library = "queue.Queue (stdlib)"
    ops = ("enqueue", "peek", "dequeue")

    @contextlib.contextmanager
    def session(self, url: str | None) -> Iterator[Any]:
        q: queue.Queue[bytes] = queue.Queue()

        class S:
            enqueue = staticmethod(q.put)
            dequeue = staticmethod(q.get_nowait)

            @staticmethod
            def peek() -> bytes:
                with q.mutex:
                    head: bytes = q.queue[0]
                return head

        yield S()


# -- shm -------------------------------------------------------------------------------------


class _FasterFifo(Baseline):
    library = f"faster-fifo {_version('faster-fifo')}"

    def unavailable(self) -> str | None:
        try:
            import faster_fifo  # noqa: F401
        except ImportError:
            return "faster-fifo is not installed: pip install 'unifiedq[bench]'"
        return None

    @contextlib.contextmanager
    def session(self, url: str | None) -> Iterator[Any]:
        import faster_fifo

        # Identity (de)serialisers: bytes in, bytes out, no pickle.
        q = faster_fifo.Queue(max_size_bytes=64 * 1024 * 1024, loads=bytes, dumps=bytes)
        try:
            class S:
                @staticmethod
                def enqueue(b: bytes) -> None:
                    q.put(b, timeout=5.0)

                @staticmethod
                def dequeue() -> bytes:
                    return bytes(q.get(timeout=5.0))

            yield S()
        finally:
            q.close()


class _MpQueue(Baseline):
    library = "multiprocessing.Queue (stdlib)"

    @contextlib.contextmanager
    def session(self, url: str | None) -> Iterator[Any]:
        import multiprocessing

        q: multiprocessing.Queue[bytes] = multiprocessing.Queue()
        try:
            class S:
                @staticmethod
                def enqueue(b: bytes) -> None:
                    q.put(b)

                @staticmethod
                def dequeue() -> bytes:
                    item: bytes = q.get(timeout=5.0)
                    return item

            yield S()
        finally:
            q.close()
            q.join_thread()


# -- redis -----------------------------------------------------------------------------------


class _RedisPy(Baseline):
    library = f"redis-py {_version('redis')} (LPUSH/LINDEX/LMOVE/LREM)"
    ops = _OPS

    def unavailable(self) -> str | None:
        try:
            import redis  # noqa: F401
        except ImportError:
            return "redis-py is not installed: pip install 'unifiedq[redis]'"
        return None

    @contextlib.contextmanager
    def session(self, url: str | None) -> Iterator[Any]:
        import redis

        assert url is not None
        r = redis.Redis.from_url(_raw_url(url), socket_timeout=10, socket_connect_timeout=5)
        key = f"unifiedq-bench-baseline:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        pending, active = f"{key}:pending", f"{key}:active"
        try:
            r.delete(pending, active)

            class S:
                @staticmethod
                def enqueue(b: bytes) -> None:
                    r.lpush(pending, b)

                @staticmethod
                def peek() -> Any:
                    return r.lindex(pending, -1)

                @staticmethod
                def dequeue() -> Any:
                    return r.lmove(pending, active, "RIGHT", "LEFT")

                @staticmethod
                def ack(token: Any) -> None:
                    r.lrem(active, 1, token)

            yield S()
        finally:
            with contextlib.suppress(Exception):
                r.delete(pending, active)
            r.close()


# -- amqp ------------------------------------------------------------------------------------


class _Kombu(Baseline):
    library = f"kombu {_version('kombu')} (publish with confirms / basic_get / ack)"
    ops = ("enqueue", "dequeue", "ack")

    def unavailable(self) -> str | None:
        try:
            import kombu  # noqa: F401
        except ImportError:
            return "kombu is not installed: pip install 'unifiedq[amqp]'"
        return None

    @contextlib.contextmanager
    def session(self, url: str | None) -> Iterator[Any]:
        kombu: Any = importlib.import_module("kombu")  # untyped for mypy --strict

        assert url is not None
        name = f"unifiedq-bench-baseline-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        conn = kombu.Connection(_raw_url(url), connect_timeout=5,
                                transport_options={"confirm_publish": True})
        try:
            channel = conn.channel()
            q = kombu.Queue(name, exchange=kombu.Exchange(""), routing_key=name, durable=True,
                            auto_delete=False, channel=channel)
            q.declare()
            producer = kombu.Producer(channel, routing_key=name)

            class S:
                @staticmethod
                def enqueue(b: bytes) -> None:
                    producer.publish(b, routing_key=name, delivery_mode=2,
                                     content_type="application/octet-stream",
                                     content_encoding="binary")

                @staticmethod
                def dequeue() -> Any:
                    msg = None
                    deadline = time.monotonic() + 5.0
                    while msg is None and time.monotonic() < deadline:
                        msg = q.get(no_ack=False)
                    if msg is None:
                        raise TimeoutError("basic_get found no message within 5 s")
                    return msg

                @staticmethod
                def ack(msg: Any) -> None:
                    msg.ack()

            yield S()
        finally:
            with contextlib.suppress(Exception):
                q.delete()
            conn.release()


# -- faktory ---------------------------------------------------------------------------------


class _PyFaktory(Baseline):
    library = f"pyfaktory {_version('pyfaktory')} (PUSH / FETCH / ACK)"
    ops = ("enqueue", "dequeue", "ack")

    def unavailable(self) -> str | None:
        try:
            # pyfaktory's own Client, loaded without its package __init__ (which would install
            # a SIGTERM handler in the bench process): see unifiedq._compat.pyfaktory.
            from .._compat import pyfaktory  # noqa: F401
        except ImportError:
            return "pyfaktory is not installed: pip install 'unifiedq[faktory]'"
        return None

    @contextlib.contextmanager
    def session(self, url: str | None) -> Iterator[Any]:
        from .._compat import pyfaktory

        assert url is not None
        raw = _raw_url(url).replace("faktory://", "tcp://", 1)
        name = f"unifiedq-bench-baseline-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        client = pyfaktory.Client(faktory_url=raw, role="both", timeout=10,
                                  worker_id=uuid.uuid4().hex)
        client.connect()
        try:
            class S:
                @staticmethod
                def enqueue(b: bytes) -> None:
                    client.push({"jid": uuid.uuid4().hex, "jobtype": "bench", "queue": name,
                                 "args": [b.decode("ascii")]})

                @staticmethod
                def dequeue() -> Any:
                    job = client.fetch([name])
                    if job is None:
                        raise TimeoutError("FETCH returned no job")
                    return job["jid"]

                @staticmethod
                def ack(jid: Any) -> None:
                    client.ack(jid)

            yield S()
        finally:
            with contextlib.suppress(Exception):
                client.disconnect()


# -- registry --------------------------------------------------------------------------------


_BASELINES: dict[str, list[Callable[[], Baseline]]] = {
    "memory": [_StdlibQueue],
    "shm": [_FasterFifo, _MpQueue],
    "redis": [_RedisPy],
    "rediss": [_RedisPy],
    "amqp": [_Kombu],
    "amqps": [_Kombu],
    "faktory": [_PyFaktory],
}


def register_baseline(scheme: str, factory: Callable[[], Baseline], *, first: bool = False) -> None:
    """Add a baseline for ``scheme`` (the first available one is used for ratios).

    Args:
        scheme: The driver's URL scheme.
        factory: Builds the baseline (a class works).
        first: Put it before the existing ones.
    """
    lst = _BASELINES.setdefault(scheme, [])
    if first:
        lst.insert(0, factory)
    else:
        lst.append(factory)


def baselines_for(scheme: str) -> list[Baseline]:
    """Return the baselines registered for ``scheme``, in preference order."""
    if scheme == "quic" and "quic" not in _BASELINES:
        from .quic_baseline import QuicEcho

        _BASELINES["quic"] = [QuicEcho]
    return [f() for f in _BASELINES.get(scheme, [])]


class BaselineResult:
    """The outcome of one baseline at one load.

    Attributes:
        library: What was timed.
        status: ``"ok"``, ``"unavailable"`` or ``"error"``.
        reason: Why it is not ok.
        ops: Per-op stats (empty unless ok).
    """

    def __init__(self, library: str, status: str, reason: str | None,
                 ops: dict[str, OpStats]) -> None:
        self.library = library
        self.status = status
        self.reason = reason
        self.ops = ops

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"library": self.library, "status": self.status, "reason": self.reason,
                "ops": {k: v.to_dict() for k, v in self.ops.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BaselineResult:
        """Rebuild from :meth:`to_dict` output."""
        return cls(d.get("library", "?"), d.get("status", "error"), d.get("reason"),
                   {k: OpStats.from_dict(v) for k, v in (d.get("ops") or {}).items()})


def run_baseline(scheme: str, url: str | None, load: int, size: int) -> BaselineResult:
    """Run the first available baseline of ``scheme`` at ``load``; never raises.

    Args:
        scheme: The driver's scheme.
        url: The driver's URL (server address for networked baselines; query ignored).
        load: Operations per op.
        size: Body size in bytes.
    """
    candidates = baselines_for(scheme)
    if not candidates:
        return BaselineResult("-", "unavailable", f"no baseline registered for {scheme!r}", {})
    reasons = []
    for b in candidates:
        why = b.unavailable()
        if why is not None:
            reasons.append(why)
            continue
        try:
            return BaselineResult(b.library, "ok", None, b.run(url, load, size))
        except Exception as exc:
            return BaselineResult(b.library, "error", f"{type(exc).__name__}: {exc}"[:300], {})
    return BaselineResult(candidates[0].library, "unavailable", "; ".join(reasons), {})


def _text(x: object) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def server_version(scheme: str, url: str) -> str | None:
    """Ask the server behind ``url`` for its version with the raw client; None if unknown."""
    try:
        if scheme in ("redis", "rediss"):
            import redis

            r = redis.Redis.from_url(_raw_url(url), socket_timeout=5, socket_connect_timeout=5)
            try:
                return f"Redis {r.info('server')['redis_version']}"
            finally:
                r.close()
        if scheme in ("amqp", "amqps"):
            kombu: Any = importlib.import_module("kombu")

            with kombu.Connection(_raw_url(url), connect_timeout=5) as conn:
                conn.connect()
                props = conn.connection.server_properties
                v, product = props.get("version", "?"), props.get("product", "AMQP")
                return f"{_text(product)} {_text(v)}"
        if scheme == "faktory":
            from .._compat import pyfaktory

            raw = _raw_url(url).replace("faktory://", "tcp://", 1)
            c = pyfaktory.Client(faktory_url=raw, role="producer", timeout=5,
                                 worker_id=uuid.uuid4().hex)
            c.connect()
            try:
                info = c.info()
                return f"Faktory {info.get('server', {}).get('faktory_version', '?')}"
            finally:
                c.disconnect()
    except Exception:
        return None
    return None
