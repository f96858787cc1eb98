"""RabbitMQ driver (``amqp://``, ``amqps://``) through kombu and py-amqp.

Features: a durable queue of persistent messages behind a durable direct exchange (routing
key equal to the queue name); publisher confirms on every publish, with ``enqueue_many``
confirming a whole batch in one wait; consumption with prefetch (``basic.qos``) and manual
acks; exact attempt counts across nacks and lease expiry; a dead-letter queue declared with
the queue (``nack(requeue=False)`` and exhausted ``max_attempts``); priorities 0..9 through
``x-max-priority``; delays through per-delay TTL queues that dead-letter into the main
queue; string headers; reconnection with backoff; TLS with certificate verification. No
peek (RabbitMQ has none that does not disturb the message) and no caller-chosen ids (the
broker cannot refuse a duplicate). Blocking face only; ``connect_async`` bridges it.

Connection string::

    amqp://user:password@host:5672/vhost?queue=emails&prefetch=32
    amqps://user:password@host:5671/vhost?queue=emails&ca_file=/etc/ssl/ca.pem

The path is the virtual host, as in kombu: ``//`` or an empty path is ``/``, ``/%2F`` is
``/`` too, ``/jobs`` is ``jobs``.

Topology for ``queue=Q`` and ``exchange=X`` (default ``unifiedq``):

* exchange ``X``: direct, durable;
* queue ``Q``: durable, ``x-max-priority=9``, dead-letters to ``X`` with key ``Q.dead``,
  bound to ``X`` with key ``Q``;
* queue ``Q.dead``: declared like a main queue (so ``?queue=Q.dead`` opens it), bound to
  ``X`` with key ``Q.dead``;
* queues ``Q.delay.<ms>``: durable, ``x-message-ttl=<ms>``, dead-letter to ``X`` with key
  ``Q``, ``x-expires=2*ms+60s`` (they vanish when unused).

Delivery semantics (at-least-once): a dequeued job is leased until it is acked or nacked,
until the handle's connection closes (crash, lost connection, ``close()``), or, with the
``visibility_timeout`` option, until that many seconds pass (enforced by this client:
RabbitMQ has no per-message lease). See ``docs/drivers/amqp.md``.

Thread safety: a handle serialises its verbs with a lock; give each worker thread its own
handle for parallelism.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import select
import ssl
import struct
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Self, TypeVar

import amqp
import amqp.exceptions as amqp_exc
import amqp.serialization
import amqp.spec
import kombu.connection

from .._base import QueueBase
from .._capabilities import Capability
from .._errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    InvalidArgument,
    InvalidURL,
    JobNotLeased,
    QueueTimeout,
)
from .._job import EnqueueRequest, Job
from .._url import URL, parse_options

__all__ = ["AmqpOptions", "AmqpQueue"]

T = TypeVar("T")

#: Header with the number of deliveries that happened before this copy was published.
H_ATTEMPT = "x-uq-attempt"
#: Header with the float Unix time of the first enqueue.
H_ENQUEUED = "x-uq-enqueued-at"
_RESERVED_PREFIX = "x-uq-"
# Headers RabbitMQ adds when it dead-letters a message (delay queues do so on every delay).
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-")

#: RabbitMQ's default ``max_message_size`` (128 MiB).
DEFAULT_MAX_BODY = 128 * 1024 * 1024
MAX_PRIORITY = 9

_PUBLISH = amqp.spec.Basic.Publish
_SLICE = 0.2  # longest a blocking read holds the handle's lock
_PUMP_EVERY = 1000  # read pending confirms every this many publishes in a big batch
_FLUSH_BYTES = 128 * 1024  # write a batch's frames to the socket in pieces of about this size

# AMQP 0-9-1 framing (spec section 4.2.3): type, channel, payload size, payload, frame-end.
_FRAME_HEAD = struct.Struct(">BHI")
_FRAME_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3
# Content header payload: class id (60 = basic), weight (0), body size; the properties follow.
_CONTENT_HEAD = struct.Struct(">HHQ")
_DELAY_REDECLARE = 30.0  # seconds a delay-queue declaration is trusted (x-expires >= 60 s)

# Errors after which the connection is unusable and a new one may succeed.
_CONN_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes socket.timeout/TimeoutError from a failed write or connect
    amqp_exc.RecoverableConnectionError,
    amqp_exc.IrrecoverableConnectionError,
)


# kombu ships no type information.
_KombuConnection: Any = kombu.connection.Connection

# A settle (ack/nack/extend) that loses the connection has lost its lease.
_SETTLE_ERRORS: tuple[type[BaseException], ...] = (*_CONN_ERRORS, BackendConnectionError)


@dataclasses.dataclass(frozen=True, slots=True)
class AmqpOptions:
    """Options of ``amqp://`` and ``amqps://`` URLs.

    Attributes:
        queue: Queue name (also the routing key).
        exchange: Durable direct exchange the queue is bound to; ``""`` uses the default
            exchange.
        prefetch: ``basic.qos`` prefetch count of a consuming handle: how many jobs the
            broker pushes ahead, and the most jobs one handle can hold un-acked.
        visibility_timeout: Seconds a dequeued job stays leased before this client returns
            it to the queue; None = until acked or the connection closes.
        max_attempts: Dead-letter a job instead of requeueing it once it has been delivered
            this many times; None = never.
        confirm_timeout: Seconds to wait for the broker to confirm a publish.
        connect_timeout: Seconds to wait for a TCP/TLS/AMQP connection.
        reconnect_timeout: Seconds to keep retrying (with backoff) after a lost connection.
        max_body: Largest body accepted, in bytes (RabbitMQ's default limit is 128 MiB).
        ca_file: CA bundle that verifies the broker's certificate (``amqps://`` only;
            default: the system's trust store).
        cert_file: Client certificate for mutual TLS (``amqps://`` only).
        key_file: Key of ``cert_file``.
        tls_hostname: Name to verify the broker's certificate against (default: the host).
    """

    queue: str = "default"
    exchange: str = "unifiedq"
    prefetch: int = 32
    visibility_timeout: float | None = None
    max_attempts: int | None = None
    confirm_timeout: float = 30.0
    connect_timeout: float = 10.0
    reconnect_timeout: float = 30.0
    max_body: int | None = DEFAULT_MAX_BODY
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_hostname: str | None = None

    def __post_init__(self) -> None:
        for name in (self.queue, self.exchange):
            if len(name.encode()) > 200 or not name.isprintable():
                raise ValueError(f"names must be at most 200 printable bytes, not {name!r}")
        if not self.queue:
            raise ValueError("queue must not be empty")
        if self.queue.startswith("amq.") or self.exchange.startswith("amq."):
            raise ValueError("names starting with 'amq.' are reserved by RabbitMQ")
        if not 1 <= self.prefetch <= 65535:
            raise ValueError(f"prefetch must be in 1..65535, not {self.prefetch}")
        if self.visibility_timeout is not None and not (
            math.isfinite(self.visibility_timeout) and self.visibility_timeout > 0
        ):
            raise ValueError(f"visibility_timeout must be > 0, not {self.visibility_timeout}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, not {self.max_attempts}")
        for key in ("confirm_timeout", "connect_timeout"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be > 0, not {value}")
        if not (math.isfinite(self.reconnect_timeout) and self.reconnect_timeout >= 0):
            raise ValueError(f"reconnect_timeout must be >= 0, not {self.reconnect_timeout}")
        if self.max_body is not None and not 0 <= self.max_body <= DEFAULT_MAX_BODY * 4:
            raise ValueError(f"max_body must be in 0..{DEFAULT_MAX_BODY * 4}")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")

    @property
    def tls_options_given(self) -> bool:
        """Whether any TLS option is set."""
        return any(
            v is not None for v in (self.ca_file, self.cert_file, self.key_file, self.tls_hostname)
        )


@dataclasses.dataclass(slots=True)
class _Held:
    """A job handed to the application and not settled yet."""

    job: Job
    msg: Any  # the amqp.Message, for republishing with the same properties
    deadline: float  # monotonic; inf without visibility_timeout


@dataclasses.dataclass(slots=True)
class _Out:
    """One message to publish."""

    msg: Any
    exchange: str
    routing_key: str
    delay_ms: int  # 0 = straight to the main queue


class _Interrupted(Exception):
    """The connection died during a publish; ``unconfirmed`` still need publishing."""

    def __init__(self, unconfirmed: list[_Out], cause: BaseException) -> None:
        super().__init__(str(cause))
        self.unconfirmed = unconfirmed
        self.cause = cause


def _translate(exc: BaseException, what: str) -> BaseException:
    """Map a kombu/py-amqp/socket error to the unifiedq error tree (the one place we do)."""
    if isinstance(exc, amqp_exc.AccessRefused):
        return AuthenticationError(f"{what}: the broker refused our credentials ({exc})")
    if isinstance(exc, amqp_exc.NotAllowed):
        return AuthenticationError(f"{what}: the broker does not allow this ({exc}); "
                                   "check the virtual host and the user's permissions")
    if isinstance(exc, ssl.SSLCertVerificationError):
        # The broker failed to authenticate itself (as the faktory driver reports it too).
        return AuthenticationError(
            f"{what}: TLS certificate verification failed ({exc.verify_message}); "
            "set ca_file to the CA that signed the broker's certificate"
        )
    if isinstance(exc, _CONN_ERRORS):
        return BackendConnectionError(f"{what}: connection to the broker failed or was lost "
                                      f"({type(exc).__name__}: {exc})")
    return BackendError(f"{what}: {type(exc).__name__}: {exc}")


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, _CONN_ERRORS) and not isinstance(
        exc, amqp_exc.NotAllowed | ssl.SSLCertVerificationError
    )


def _header_str(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None


def _vhost(raw: str) -> str:
    path = urllib.parse.urlsplit(raw).path
    if path in ("", "/"):
        return "/"
    return urllib.parse.unquote(path[1:])


_known_delays_lock = threading.Lock()
# (broker address, vhost, queue) -> {delay ms: monotonic time of the last declaration}; shared
# by the handles of this process so that size() and purge() see each other's delay queues.
_known_delays: dict[tuple[str, int, str, str], dict[int, float]] = {}


class AmqpQueue(QueueBase):
    """A RabbitMQ queue (see the module docstring for topology and semantics)."""

    driver = "amqp"
    capabilities = (
        Capability.ACK | Capability.LEASE_EXTEND | Capability.DELAY | Capability.PRIORITY
        | Capability.BATCH | Capability.BLOCKING_DEQUEUE | Capability.HEADERS
        | Capability.DURABLE | Capability.CROSS_PROCESS | Capability.DISTRIBUTED
        | Capability.NATIVE_SYNC
    )

    def __init__(
        self,
        *,
        host: str,
        port: int,
        vhost: str,
        username: str | None,
        password: str | None,
        tls: bool,
        options: AmqpOptions,
        url: URL | None = None,
    ) -> None:
        super().__init__(options.queue, url)
        self.options = options
        self.max_body = options.max_body
        self._host, self._port, self._vhost = host, port, vhost
        self._username, self._password, self._tls = username, password, tls
        self._q = options.queue
        self._x = options.exchange
        self._dead = f"{options.queue}.dead"
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._conn: Any = None  # kombu.Connection
        self._raw: Any = None  # its py-amqp connection
        self._pch: Any = None  # publish channel (confirm mode)
        self._cch: Any = None  # consume channel (qos, consume, get, ack)
        self._poller = select.poll()  # readability of the connection's socket
        self._epoch = 0
        self._handle = uuid.uuid4().hex  # receipts name the handle and connection they need
        self._ever_connected = False
        self._consumer_tag: str | None = None
        self._buffer: collections.deque[Any] = collections.deque()
        self._held: dict[int, _Held] = {}
        self._delays_key = (host, port, vhost, options.queue)
        self._declared_delays: dict[int, float] = {}  # on this connection
        # Confirms of the batch in flight: status per publish (0 pending, 1 ack, 2 nack).
        self._cbase = 0
        self._cstatus = bytearray()
        self._clow = 0
        self._pub_seq = 0
        self._returned: set[str] = set()
        self._lease_thread: threading.Thread | None = None
        self._last_take = 0.0  # monotonic time the application last asked for jobs

    @classmethod
    def from_url(cls, url: URL, options: Mapping[str, object]) -> Self:
        """Build a handle from ``amqp[s]://user:pass@host:port/vhost?queue=...`` (no I/O)."""
        opts = parse_options(AmqpOptions, url.query, options, driver="amqp")
        tls = url.scheme == "amqps"
        if opts.tls_options_given and not tls:
            raise InvalidURL("ca_file, cert_file, key_file and tls_hostname need an amqps:// "
                             f"URL, not {url.redacted()!r}")
        return cls(
            host=url.host or "localhost",
            port=url.port or (5671 if tls else 5672),
            vhost=_vhost(url.raw),
            username=url.username,
            password=url.password,
            tls=tls,
            options=opts,
            url=url,
        )

    # -- connection ------------------------------------------------------------------------
    def _ssl(self) -> dict[str, Any] | bool:
        if not self._tls:
            return False
        o = self.options
        opts: dict[str, Any] = {
            "cert_reqs": ssl.CERT_REQUIRED,
            "server_hostname": o.tls_hostname or self._host,  # enables the hostname check
        }
        if o.ca_file:
            opts["ca_certs"] = o.ca_file
        if o.cert_file:
            opts["certfile"] = o.cert_file
            opts["keyfile"] = o.key_file
        return opts

    def _connect_once(self) -> None:
        o = self.options
        conn = _KombuConnection(
            hostname=self._host, port=self._port, userid=self._username or "guest",
            password=self._password if self._password is not None else "guest",
            virtual_host=self._vhost, ssl=self._ssl(), connect_timeout=o.connect_timeout,
            heartbeat=0, transport="pyamqp",
        )
        try:
            conn.connect()
            raw = conn.connection
            pch, cch = raw.channel(), raw.channel()
            pch.confirm_select()
            pch.events["basic_ack"].add(self._on_ack)
            pch.events["basic_nack"].add(self._on_nack)
            pch.events["basic_return"].add(self._on_return)
            cch.basic_qos(0, o.prefetch, False)
            self._declare_main(pch)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.collect()
            raise
        self._conn, self._raw, self._pch, self._cch = conn, raw, pch, cch
        self._poller = select.poll()
        self._poller.register(raw.transport.sock, select.POLLIN)
        self._epoch += 1
        self._pub_seq = 0
        self._ever_connected = True

    def _queue_args(self, name: str) -> dict[str, Any]:
        return {
            "x-max-priority": MAX_PRIORITY,
            "x-dead-letter-exchange": self._x,
            "x-dead-letter-routing-key": f"{name}.dead",
        }

    def _declare_main(self, ch: Any) -> None:
        if self._x:
            ch.exchange_declare(self._x, "direct", durable=True, auto_delete=False)
        ch.queue_declare(self._q, durable=True, auto_delete=False,
                         arguments=self._queue_args(self._q))
        # The dead-letter queue gets the arguments of a main queue, so that a handle opened
        # on it (?queue=Q.dead, to inspect or replay dead jobs) declares it identically.
        ch.queue_declare(self._dead, durable=True, auto_delete=False,
                         arguments=self._queue_args(self._dead))
        if self._x:
            ch.queue_bind(self._q, self._x, routing_key=self._q)
            ch.queue_bind(self._dead, self._x, routing_key=self._dead)

    def _delay_queue(self, ms: int) -> str:
        return f"{self._q}.delay.{ms}"

    def _declare_delay(self, ms: int, ch: Any) -> int:
        """Declare ``Q.delay.<ms>`` (again: that restarts its ``x-expires``); return its size."""
        args = {
            "x-message-ttl": ms,
            "x-expires": 2 * ms + 60_000,
            "x-dead-letter-exchange": self._x,
            "x-dead-letter-routing-key": self._q,
        }
        ok = ch.queue_declare(self._delay_queue(ms), durable=True, auto_delete=False,
                              arguments=args)
        now = time.monotonic()
        self._declared_delays[ms] = now
        with _known_delays_lock:
            _known_delays.setdefault(self._delays_key, {})[ms] = now
        return int(ok.message_count)

    def _known_delay_ms(self) -> list[int]:
        now = time.monotonic()
        with _known_delays_lock:
            known = _known_delays.get(self._delays_key, {})
            # A delay queue unused for x-expires is gone; forget it rather than recreate it.
            for ms in [ms for ms, t in known.items() if now - t > (2 * ms + 60_000) / 1000]:
                del known[ms]
            return sorted(known)

    def _drop(self) -> None:
        """Forget the connection (already broken or about to be): its leases are void."""
        conn = self._conn
        self._conn = self._raw = self._pch = self._cch = None
        self._consumer_tag = None
        self._buffer.clear()
        self._held.clear()
        self._declared_delays.clear()
        self._cstatus = bytearray()
        self._clow = 0
        self._returned.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.collect()  # closes the socket without talking to the broker

    def _ensure(self) -> None:
        """Connect if needed; after a lost connection, retry with backoff."""
        if self._conn is not None:
            return
        budget = self.options.reconnect_timeout if self._ever_connected else 0.0
        deadline = time.monotonic() + budget
        pause = 0.1
        while True:
            try:
                self._connect_once()
                return
            except Exception as exc:
                if not _retryable(exc) or time.monotonic() + pause > deadline:
                    raise _translate(exc, f"cannot connect to {self._where()}") from exc
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _where(self) -> str:
        scheme = "amqps" if self._tls else "amqp"
        return f"{scheme}://{self._host}:{self._port} vhost {self._vhost!r}"

    def _call(self, what: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        """Run ``fn`` under the lock on a live connection; reconnect and retry on loss."""
        start = time.monotonic()
        with self._lock:
            while True:
                self._check_open()
                self._ensure()
                try:
                    self._expire()
                    return fn()
                except _CONN_ERRORS as exc:
                    self._drop()
                    late = time.monotonic() - start >= self.options.reconnect_timeout
                    if not retry or late or not _retryable(exc):
                        raise _translate(exc, what) from exc
                except amqp_exc.AMQPError as exc:
                    self._drop()  # a channel error closed a channel; start clean next time
                    raise _translate(exc, what) from exc

    # -- publishing ------------------------------------------------------------------------
    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._confirm(tag, multiple, 1)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._confirm(tag, multiple, 2)

    def _confirm(self, tag: int, multiple: bool, value: int) -> None:
        st, i = self._cstatus, tag - self._cbase - 1
        if not 0 <= i < len(st):
            return
        if multiple:
            for k in range(self._clow, i + 1):
                if not st[k]:
                    st[k] = value
        elif not st[i]:
            st[i] = value
        while self._clow < len(st) and st[self._clow]:
            self._clow += 1

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.add(str(message.properties.get("message_id", "")))

    def _publish_once(self, outs: list[_Out]) -> list[_Out]:
        """Publish ``outs`` and wait for every confirm; return those the broker refused."""
        ch = self._pch
        for ms in sorted({o.delay_ms for o in outs if o.delay_ms}):
            last = self._declared_delays.get(ms)
            if last is None or time.monotonic() - last > _DELAY_REDECLARE:
                self._declare_delay(ms, ch)
        self._cbase, self._cstatus, self._clow = self._pub_seq, bytearray(len(outs)), 0
        self._returned.clear()
        try:
            self._write_publishes(outs)
            self._wait_confirms()
        except _CONN_ERRORS as exc:
            st = self._cstatus
            raise _Interrupted([o for k, o in enumerate(outs) if st[k] != 1], exc) from exc
        st = self._cstatus
        return [o for k, o in enumerate(outs)
                if st[k] == 2 or o.msg.properties.get("message_id") in self._returned]

    def _write_publishes(self, outs: list[_Out]) -> None:
        """Write the basic.publish frames of ``outs`` to the socket, many per write.

        Each message is three frames (method, content header, body; more body frames past
        ``frame_max``). py-amqp's ``send_method`` would encode the constant method frame
        again and make one socket write per message, about half of the client's CPU time
        per message in a batch; here the method frame is encoded once per destination and
        the frames of many messages go out in one write. The properties are still
        serialised by py-amqp, so the bytes on the wire are the ones it would send. No
        per-publish read either (py-amqp's check for ``connection.blocked``): ``_pump``
        reads pending confirms between writes.
        """
        ch, raw = self._pch, self._raw
        if ch.connection is None:  # as send_method: the channel was closed under us
            raise amqp_exc.RecoverableConnectionError("connection already closed")
        cid, write = ch.channel_id, raw.transport.write
        max_payload = raw.frame_max - 8  # frame header (7) and frame-end (1) excluded
        methods: dict[tuple[str, str], bytes] = {}
        parts: list[bytes | memoryview] = []
        size = 0
        for k, o in enumerate(outs):
            method = methods.get((o.exchange, o.routing_key))
            if method is None:
                # mandatory=True: an unroutable message comes back (basic.return) instead
                # of being confirmed and silently dropped.
                payload = struct.pack(">HH", *_PUBLISH) + amqp.serialization.dumps(
                    "Bssbb", (0, o.exchange, o.routing_key, True, False))
                method = _FRAME_HEAD.pack(_METHOD, cid, len(payload)) + payload + _FRAME_END
                methods[(o.exchange, o.routing_key)] = method
            msg = o.msg
            body = msg.body
            if isinstance(body, str):  # as py-amqp: encode, and say how
                body = body.encode(msg.properties.setdefault("content_encoding", "utf-8"))
            head = _CONTENT_HEAD.pack(60, 0, len(body)) + msg._serialize_properties()
            parts += (method, _FRAME_HEAD.pack(_HEADER, cid, len(head)), head, _FRAME_END)
            size += len(method) + len(head) + 8
            view = memoryview(body)
            for i in range(0, len(body), max_payload):  # an empty body has no body frame
                piece = view[i:i + max_payload]
                parts += (_FRAME_HEAD.pack(_BODY, cid, len(piece)), piece, _FRAME_END)
                size += len(piece) + 8
            self._pub_seq += 1
            if size >= _FLUSH_BYTES or k % _PUMP_EVERY == _PUMP_EVERY - 1 or k == len(outs) - 1:
                write(b"".join(parts))
                raw.bytes_sent += 1  # py-amqp's heartbeat bookkeeping counts writes
                parts.clear()
                size = 0
                if k != len(outs) - 1:
                    self._pump()  # confirms so far; a connection.close the broker sent

    def _wait_confirms(self) -> None:
        deadline = time.monotonic() + self.options.confirm_timeout
        while self._clow < len(self._cstatus):
            left = deadline - time.monotonic()
            if left <= 0:
                n = len(self._cstatus) - self._clow
                self._drop()
                raise QueueTimeout(
                    f"the broker did not confirm {n} message(s) within "
                    f"{self.options.confirm_timeout}s; they may or may not be queued"
                )
            with contextlib.suppress(TimeoutError):
                self._raw.drain_events(timeout=left)

    def _pump(self) -> None:
        """Process frames that already arrived, without waiting."""
        raw = self._raw
        while True:
            # A poll() is far cheaper than py-amqp's timeout=0 read (which raises), and this
            # runs on every ack; bytes py-amqp or TLS already buffered are checked first.
            tr = raw.transport
            sock = tr.sock
            buffered = getattr(tr, "_read_buffer", b"") or (
                isinstance(sock, ssl.SSLSocket) and sock.pending()
            )
            if not buffered and not self._poller.poll(0):
                return
            try:
                raw.drain_events(timeout=0)
            except TimeoutError:
                return

    def _publish(self, what: str, outs: list[_Out], *, retry: bool = True) -> None:
        """Publish with confirms (under the lock); never returns before all are confirmed.

        After a lost connection, only the unconfirmed messages are published again on the new
        one (so a message whose confirm was lost may be queued twice: at-least-once).
        """
        start = time.monotonic()
        refused_once = False
        while outs:
            self._ensure()
            try:
                refused = self._publish_once(outs)
            except _Interrupted as exc:
                self._drop()
                late = time.monotonic() - start >= self.options.reconnect_timeout
                if not retry or late or not _retryable(exc.cause):
                    raise _translate(exc.cause, what) from exc.cause
                outs = exc.unconfirmed
                continue
            except amqp_exc.AMQPError as exc:
                self._drop()
                raise _translate(exc, what) from exc
            if refused and refused_once:
                raise BackendError(
                    f"{what}: the broker refused or could not route {len(refused)} message(s) "
                    f"to queue {self._q!r} (was it deleted, or declared elsewhere with other "
                    "arguments?); the others were queued"
                )
            if refused:  # e.g. a delay queue expired or the queue was deleted: declare, retry
                refused_once = True
                self._declared_delays.clear()
                self._declare_main(self._pch)
            outs = refused

    def _message(self, req: EnqueueRequest, now: float) -> _Out:
        for key in req.headers:
            if key.startswith(_RESERVED_PREFIX):
                raise InvalidArgument(f"header names starting with {_RESERVED_PREFIX!r} are "
                                      f"reserved by the amqp driver: {key!r}")
        headers: dict[str, Any] = dict(req.headers)
        headers[H_ATTEMPT] = 0
        headers[H_ENQUEUED] = now
        props: dict[str, Any] = {
            "delivery_mode": 2, "message_id": req.job_id, "timestamp": int(now),
            "application_headers": headers,
        }
        if req.priority is not None:
            props["priority"] = req.priority
        return self._route(amqp.Message(req.body, **props), req.delay)

    def _route(self, msg: Any, delay: float) -> _Out:
        ms = math.ceil(delay * 1000) if delay > 0 else 0
        if ms:  # via the default exchange, addressed by the delay queue's name
            return _Out(msg, "", self._delay_queue(ms), ms)
        return _Out(msg, self._x, self._q, 0)

    def _enqueue(self, req: EnqueueRequest) -> str:
        out = self._message(req, time.time())
        with self._lock:
            self._publish("enqueue", [out])
        return req.job_id

    def _enqueue_many(self, reqs: list[EnqueueRequest]) -> list[str]:
        now = time.time()
        outs = [self._message(r, now) for r in reqs]
        with self._lock:
            self._publish("enqueue_many", outs)
        return [r.job_id for r in reqs]

    # -- consuming -------------------------------------------------------------------------
    def _on_message(self, msg: Any) -> None:
        self._buffer.append(msg)

    def _start_consumer(self) -> None:
        if self._consumer_tag is None:
            self._consumer_tag = self._cch.basic_consume(
                self._q, no_ack=False, callback=self._on_message
            )

    def _get(self) -> bool:
        """basic.get one message into the buffer; True if one came.

        It is also a barrier: deliveries the broker pushed to our consumer before answering
        arrive (and are buffered) before the get's reply.
        """
        msg = self._cch.basic_get(self._q, no_ack=False)
        if msg is None:
            return False
        self._buffer.append(msg)
        return True

    def _to_job(self, msg: Any) -> Job:
        props = msg.properties
        raw = props.get("application_headers") or {}
        try:
            prior = max(0, int(raw.get(H_ATTEMPT, 0)))
        except (TypeError, ValueError):
            prior = 0
        # RabbitMQ's redelivered flag means "maybe delivered before" (the last consumer's
        # channel closed with it un-acked): we count it as one more attempt.
        attempt = prior + 1 + (1 if msg.delivery_info.get("redelivered") else 0)
        enq = raw.get(H_ENQUEUED)
        if not isinstance(enq, int | float):
            ts = props.get("timestamp")
            enq = ts.timestamp() if hasattr(ts, "timestamp") else ts
        headers: dict[str, str] = {}
        for key, value in raw.items():
            if key.startswith(_RESERVED_PREFIX) or key.startswith(_BROKER_HEADERS):
                continue
            text = _header_str(value)
            if text is not None:
                headers[key] = text
        body = msg.body
        if isinstance(body, str):  # py-amqp decodes bodies with a content_encoding
            body = body.encode(props.get("content_encoding") or "utf-8")
        jid = props.get("message_id") or f"amqp-{uuid.uuid4()}"
        props.setdefault("message_id", jid)  # so a republished copy keeps the id
        prio = props.get("priority")
        tag = msg.delivery_info["delivery_tag"]
        return Job(jid, self._q, bytes(body), attempt,
                   float(enq) if isinstance(enq, int | float) else time.time(), headers,
                   prio if isinstance(prio, int) else None, (self._handle, self._epoch, tag))

    def _fill(self, out: list[Job], n: int) -> None:
        """Move buffered messages to ``out`` as leased jobs."""
        vt = self.options.visibility_timeout
        limit = self.options.max_attempts
        while len(out) < n and self._buffer:
            msg = self._buffer.popleft()
            job = self._to_job(msg)
            tag = msg.delivery_info["delivery_tag"]
            if limit is not None and job.attempt > limit:
                # Redelivered past the limit (its consumers keep dying): dead-letter it.
                self._cch.basic_reject(tag, requeue=False)
                continue
            deadline = time.monotonic() + vt if vt is not None else math.inf
            self._held[tag] = _Held(job, msg, deadline)
            out.append(job)
        if out and vt is not None:
            self._start_lease_thread()
            self._cond.notify_all()

    def _take(self, n: int, timeout: float | None) -> list[Job]:
        deadline = None if timeout is None else time.monotonic() + timeout
        out: list[Job] = []
        self._last_take = time.monotonic()
        while True:
            # One slice per lock acquisition, so other threads using this handle get a turn.
            def step() -> bool:
                self._fill(out, n)
                if not out and self._consumer_tag is not None:
                    self._pump()
                    self._fill(out, n)
                left = None if deadline is None else deadline - time.monotonic()
                if not out and left is not None and left <= 0:
                    self._get()  # polling: one round trip, and no prefetch buffer
                    self._fill(out, n)
                    return True
                if not out and len(self._held) >= self.options.prefetch:
                    # The consumer is saturated (the broker pushes nothing while we hold
                    # `prefetch` un-acked jobs): poll with basic.get, once per slice.
                    self._get()
                    self._fill(out, n)
                if not out:
                    self._start_consumer()
                    with contextlib.suppress(TimeoutError):
                        self._raw.drain_events(timeout=_SLICE if left is None
                                               else min(left, _SLICE))
                    self._fill(out, n)
                if out:
                    while len(out) < n and self._get():  # top up a batch
                        self._fill(out, n)
                    self._fill(out, n)
                    return True
                return False

            if self._call("dequeue", step):
                return out

    def _dequeue(self, timeout: float | None) -> Job | None:
        jobs = self._take(1, timeout)
        return jobs[0] if jobs else None

    def _dequeue_many(self, max_jobs: int, timeout: float | None) -> list[Job]:
        return self._take(max_jobs, timeout)

    # -- settling --------------------------------------------------------------------------
    def _held_for(self, job: Job) -> tuple[int, _Held]:
        receipt = job.receipt
        ok = isinstance(receipt, tuple) and len(receipt) == 3
        if ok and receipt[0] != self._handle:
            raise JobNotLeased(
                f"job {job.id!r} was dequeued by another handle; an AMQP delivery can only be "
                "acked on the channel it came from"
            )
        h = self._held.get(receipt[2]) if ok and receipt[1] == self._epoch else None
        if h is None or h.job.id != job.id:
            raise JobNotLeased(
                f"job {job.id!r} is not leased by this handle any more: it was already acked "
                "or nacked, its visibility timeout ran out, or the connection was lost (the "
                "broker then returns it to the queue)"
            )
        return receipt[2], h

    def _settle(self, what: str, fn: Callable[[], None]) -> None:
        with self._lock:
            self._check_open()
            if self._conn is None:
                fn()  # no connection: _held_for raises JobNotLeased
                return
            try:
                # Read what the broker already sent first: a connection.close it sent us means
                # the lease is gone, and an ack written now would vanish without an error.
                self._pump()
                self._expire()
                fn()
            except _SETTLE_ERRORS as exc:
                self._drop()
                raise JobNotLeased(
                    f"{what}: the connection to the broker was lost, which ends every lease; "
                    "the broker returns the job to the queue"
                ) from exc
            except amqp_exc.AMQPError as exc:
                self._drop()
                raise _translate(exc, what) from exc

    def _ack(self, job: Job) -> None:
        def do() -> None:
            tag, _ = self._held_for(job)
            self._cch.basic_ack(tag)
            del self._held[tag]

        self._settle("ack", do)

    def _nack(self, job: Job, requeue: bool, delay: float) -> None:
        def do() -> None:
            tag, h = self._held_for(job)
            if requeue:
                self._return_held([(tag, h)], delay)
            else:
                del self._held[tag]
                self._cch.basic_reject(tag, requeue=False)  # to Q.dead via x-dead-letter-*

        self._settle("nack", do)

    def _return_held(self, items: list[tuple[int, _Held]], delay: float) -> None:
        """Requeue held jobs with exact attempt counts.

        Publishes copies whose attempt header is the number of deliveries so far, waits for
        their confirms, then acks the originals. Jobs past ``max_attempts`` are dead-lettered.
        """
        limit = self.options.max_attempts
        outs: list[_Out] = []
        again: list[int] = []
        for tag, h in items:
            del self._held[tag]
            if limit is not None and h.job.attempt >= limit:
                self._cch.basic_reject(tag, requeue=False)
                continue
            props = dict(h.msg.properties)
            headers = {k: v for k, v in (props.get("application_headers") or {}).items()
                       if not k.startswith(_BROKER_HEADERS)}
            headers[H_ATTEMPT] = h.job.attempt
            headers.setdefault(H_ENQUEUED, h.job.enqueued_at)
            props["application_headers"] = headers
            props["delivery_mode"] = 2
            props.pop("expiration", None)
            outs.append(self._route(amqp.Message(h.msg.body, **props), delay))
            again.append(tag)
        if outs:
            self._publish("nack", outs, retry=False)
        for tag in again:
            self._cch.basic_ack(tag)

    def _extend_lease(self, job: Job, seconds: float) -> None:
        def do() -> None:
            _, h = self._held_for(job)
            if self.options.visibility_timeout is not None:
                h.deadline = time.monotonic() + seconds
                self._cond.notify_all()
            # Without visibility_timeout the lease lasts as long as the connection: nothing to do.

        self._settle("extend_lease", do)

    def _expire(self) -> None:
        """Return held jobs whose visibility timeout ran out (under the lock).

        The consumer is paused first: otherwise the broker would push the returned copies
        straight back into this handle's prefetch buffer, where they would wait for this
        (possibly stuck) handle instead of going to another consumer.
        """
        vt = self.options.visibility_timeout
        if vt is None or self._conn is None:
            return
        now = time.monotonic()
        due = [(tag, h) for tag, h in self._held.items() if h.deadline <= now]
        if due or (self._buffer and now - self._last_take >= vt):
            self._pause_consumer()
        if due:
            self._return_held(due, 0.0)

    def _pause_consumer(self) -> None:
        """Cancel the consumer and give back the prefetched jobs nobody took yet.

        A blocking dequeue starts it again. The returned jobs carry RabbitMQ's redelivered
        flag, so their next attempt counts one more (see the docs).
        """
        if self._consumer_tag is not None:
            self._cch.basic_cancel(self._consumer_tag)
            self._consumer_tag = None
        while self._buffer:
            msg = self._buffer.popleft()
            self._cch.basic_reject(msg.delivery_info["delivery_tag"], requeue=True)

    def _start_lease_thread(self) -> None:
        if self._lease_thread is None:
            self._lease_thread = threading.Thread(
                target=self._lease_loop, name=f"unifiedq-amqp-leases-{self._q}", daemon=True
            )
            self._lease_thread.start()

    def _lease_loop(self) -> None:
        """Expire leases while the application is busy elsewhere (it may never call us).

        It also returns the prefetch buffer of a handle whose application has not asked for a
        job for ``visibility_timeout`` seconds, so a stuck worker does not hoard jobs.
        """
        vt = self.options.visibility_timeout or 0.0
        with self._cond:
            while not self._closed:
                deadlines = [h.deadline for h in self._held.values()]
                if self._buffer:
                    deadlines.append(self._last_take + vt)
                wait = min(deadlines) - time.monotonic() if deadlines else 5.0
                if wait > 0:
                    self._cond.wait(min(wait, 5.0))
                    continue
                try:
                    self._expire()
                except Exception:
                    self._drop()  # the broker returns the held jobs itself

    # -- inspection ------------------------------------------------------------------------
    def _size(self) -> int:
        def count() -> int:
            ready = self._pch.queue_declare(self._q, passive=True).message_count
            delayed = sum(self._declare_delay(ms, self._pch) for ms in self._known_delay_ms())
            return int(ready) + delayed + len(self._buffer)

        return self._call("size", count)

    def _purge(self) -> int:
        def purge() -> int:
            n = int(self._pch.queue_purge(self._q) or 0)
            for ms in self._known_delay_ms():
                self._declare_delay(ms, self._pch)
                n += int(self._pch.queue_purge(self._delay_queue(ms)) or 0)
            # Prefetched but not handed out: waiting jobs too, held by our channel.
            while self._buffer:
                msg = self._buffer.popleft()
                self._cch.basic_ack(msg.delivery_info["delivery_tag"])
                n += 1
            return n

        return self._call("purge", purge)

    # -- closing ---------------------------------------------------------------------------
    def _close(self) -> None:
        with self._lock:
            self._cond.notify_all()  # ends the lease thread
            if self._conn is None:
                return
            try:
                if self._consumer_tag is not None:
                    self._cch.basic_cancel(self._consumer_tag)
                    self._consumer_tag = None
                # Held jobs go back as if nacked (exact attempt count); prefetched ones that
                # the application never saw are rejected back to their place in the queue.
                self._return_held(list(self._held.items()), 0.0)
                for msg in self._buffer:
                    self._cch.basic_reject(msg.delivery_info["delivery_tag"], requeue=True)
                self._buffer.clear()
                self._conn.release()
            except Exception:
                pass  # the broker returns whatever we still hold when the connection goes
            finally:
                self._drop()


sync_class = AmqpQueue
async_class = None
