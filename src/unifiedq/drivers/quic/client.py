"""The ``quic://`` driver: a client of ``unifiedq serve``, natively asyncio over aioquic.

Features: every verb of the server's backend, one QUIC connection per handle (opened lazily
on first use), one bidirectional stream per request with many requests in flight, TLS 1.3 with
the server verified against ``ca`` and this client's certificate (``cert``/``key``) presented
to it, an optional bearer token, keepalive pings, reconnection after a lost connection. The
blocking face is the core's bridge. Closing a handle (or losing its connection) returns the jobs
it still holds to the queue.

Deadlines: every verb has one deadline that covers (re)connecting and the request — ``timeout``
for a verb that does not wait, a dequeue's own wait plus ``timeout`` for one that does — and
raises :class:`~unifiedq.BackendTimeout` when it passes (a frozen or unreachable server). A
dequeue cancelled or timed out after the server took its jobs hands them back with
``release`` (no attempt counted) when the server offers it. Frames are checked against the
smaller of both peers' ``max_frame`` before a byte is sent (:class:`~unifiedq.LimitExceeded`).

Connection string::

    quic://[:TOKEN@]host:port/<queue>?ca=ca.pem&cert=client.pem&key=client.key
        &capabilities=core|<backend scheme>|FLAG|FLAG...&token=...&backend_options=k%3Dv
        &timeout=30&connect_timeout=10&max_body=8388608&max_frame=16777216&server_name=...

``capabilities`` is how the handle knows, without I/O, what it may promise: ``core`` (the
default) is what the server guarantees over any backend (BATCH, BLOCKING_DEQUEUE,
CROSS_PROCESS, DISTRIBUTED); a backend scheme such as ``memory`` or ``redis`` adds that
driver's flags; or list flags (``PEEK|ACK|DELAY``). The first request checks the declaration
against the server's handshake and raises ConfigurationError if the server lacks a declared
flag, so a flag never promises what the server cannot do. See docs/drivers/quic.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import re
import socket
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Self

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from ... import __version__
from ..._base import AsyncQueueBase
from ..._capabilities import Capability
from ..._compat import aioquic as _aq
from ..._errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendTimeout,
    ConfigurationError,
    DriverNotFound,
    InvalidArgument,
    InvalidURL,
    LimitExceeded,
    ProtocolError,
    UnifiedQError,
)
from ..._job import EnqueueRequest, Job
from ..._registry import get_driver
from ..._url import URL, parse_options
from ._common import (
    ALPN,
    CARRIED,
    ERR_AUTH,
    ERR_CANCELLED,
    ERR_SHUTDOWN,
    ERR_SILENT,
    GUARANTEED,
    QUEUE_NAME,
    caps_from_names,
    error_from_wire,
    job_from_wire,
)
from .wire import (
    DEFAULT_MAX_FRAME,
    KIND_ERROR,
    KIND_OK,
    KIND_REQUEST,
    FrameReader,
    FrameTooLarge,
    WireError,
    decode_frame,
    encode_frame,
    encode_value,
)

__all__ = ["QuicOptions", "QuicQueue", "declared_capabilities"]

_DEFAULT_PORT = 4433
# Datagrams read in one go before answering (ACKs, new requests) is sent: see datagram_received.
_DRAIN = 32
# Seconds close() waits for the server to acknowledge the connection close (a frozen one never
# does: the handle is closed locally anyway, and the server returns its leases at its idle
# timeout).
_CLOSE_WAIT = 1.0
# Bytes of a frame besides the bodies of an enqueue_many (header, op, queue, options; the
# options' own encoded size is added per call).
_FRAME_OVERHEAD = 512


@dataclasses.dataclass(frozen=True, slots=True)
class QuicOptions:
    """Options of ``quic://`` URLs.

    Attributes:
        ca: PEM file of the CA that signed the server's certificate (default: system CAs).
        cert: PEM file with this client's certificate (and possibly its key).
        key: PEM file with the client's private key.
        token: Bearer token for servers started with ``--token`` (or put it in the URL's
            password: ``quic://:TOKEN@host:port/queue``).
        capabilities: ``core``, a backend scheme, or a ``|``-separated list of flags.
        backend_options: Backend options for this handle as a query string
            (``visibility_timeout=5``); the server must allow each one.
        server_name: Name to verify in the server's certificate (default: the URL's host).
        connect_timeout: Seconds to establish the connection and handshake (within the
            verb's deadline).
        timeout: The deadline in seconds of a verb that does not wait (enqueue, ack, size,
            ...), and the slack on top of a dequeue's own wait; connecting counts against it.
            Past it the verb raises :class:`~unifiedq.BackendTimeout`.
        max_frame: Largest frame payload this client sends or accepts, in bytes; the server's
            own limit (from its hello) applies too.
        max_body: Largest job body accepted by ``enqueue``, in bytes.
        idle_timeout: QUIC idle timeout in seconds (the smaller of both peers' applies): a
            connection that hears nothing for that long is dropped, failing the requests in
            flight (even a ``dequeue(timeout=None)``) with ``BackendTimeout``. The client pings
            every third of it.
    """

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    token: str | None = None
    capabilities: str = "core"
    backend_options: str = ""
    server_name: str | None = None
    connect_timeout: float = 10.0
    timeout: float = 10.0
    max_frame: int = DEFAULT_MAX_FRAME
    max_body: int = 8 * 1024 * 1024
    idle_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.key and not self.cert:
            raise ValueError("key= needs cert=")
        if not 1024 <= self.max_frame <= 1 << 30:
            raise ValueError("max_frame must be between 1 KiB and 1 GiB")
        if not 0 <= self.max_body <= self.max_frame - 4096:
            raise ValueError("max_body must be >= 0 and leave 4 KiB of max_frame for the rest")
        for name in ("connect_timeout", "timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")


def declared_capabilities(spec: str) -> Capability:
    """Turn a ``capabilities=`` option into the flags a quic handle promises.

    Raises:
        InvalidURL: Unknown flag or scheme.
    """
    base = GUARANTEED | Capability.NATIVE_ASYNC
    spec = spec.strip()
    if spec in ("", "core"):
        return base
    if re.fullmatch(r"[a-z][a-z0-9+.-]*", spec):
        if spec == "quic":
            raise InvalidURL("capabilities=quic makes no sense; name the server's backend")
        try:
            drv = get_driver(spec)
        except DriverNotFound as exc:
            raise InvalidURL(f"capabilities={spec!r}: {exc}") from exc
        cls = drv.sync_class or drv.async_class
        assert cls is not None
        return (cls.capabilities & CARRIED) | base
    out = base
    for name in filter(None, re.split(r"[|,+\s]+", spec)):
        flag = Capability.__members__.get(name.upper())
        if flag is None or not flag & (CARRIED | GUARANTEED):
            allowed = "|".join((CARRIED | GUARANTEED).names())
            raise InvalidURL(f"capabilities= got {name!r}; quic handles can have {allowed}, "
                             f"or say 'core' or a backend scheme such as 'memory'")
        out |= flag
    return out


@dataclasses.dataclass(slots=True)
class _Pending:
    fut: asyncio.Future[tuple[int, dict[str, Any]]]
    #: Created only when a response arrives in pieces (most arrive whole).
    reader: FrameReader | None = None
    #: Who takes a response that arrives after its caller gave up (see abandon()).
    on_late: Callable[[int, dict[str, Any]], None] | None = None
    #: A response that arrived after the future was failed but before its caller ran.
    late: tuple[int, dict[str, Any]] | None = None


class _Expired(Exception):
    """Set on a request's future when its timeout passes (never escapes the driver)."""


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(_Expired())


def _termination_error(ev: events.ConnectionTerminated | None) -> UnifiedQError:
    if ev is None:
        return BackendConnectionError("the QUIC connection closed")
    code, reason = ev.error_code, ev.reason_phrase or ""
    if reason == "Idle timeout" and code < 0x100:  # aioquic's own close: the peer went silent
        return BackendTimeout("the quic server did not answer for the QUIC idle timeout "
                              "(frozen, partitioned or gone); the connection was dropped")
    if 0x100 <= code <= 0x1FF:
        return AuthenticationError(
            f"the TLS handshake was refused (TLS alert {code - 0x100}{': ' if reason else ''}"
            f"{reason}); check ca=, cert= and key= against the server's CAs")
    if code == ERR_AUTH:
        return AuthenticationError(f"the server refused this client: {reason}")
    if code == ERR_SHUTDOWN:
        return BackendConnectionError("the server shut down")
    return BackendConnectionError(f"the QUIC connection closed: {reason or 'no reason'} "
                                  f"(code {code:#x})")


class _ClientProtocol(_aq.QuicProtocol):
    def __init__(self, quic: QuicConnection, *, max_frame: int, sock: socket.socket,
                 **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self.max_frame = max_frame
        self.sock = sock
        self.pending: dict[int, _Pending] = {}
        self.error: UnifiedQError | None = None
        self.keepalive: asyncio.Task[None] | None = None
        self.disposed = False
        #: Loop time of the last datagram from the server (see run_keepalive).
        self.heard = self.loop.time()

    def request(self, frame: bytes) -> tuple[int, _Pending]:
        if self.error is not None:
            raise self.error
        sid = self.quic.get_next_available_stream_id()
        p = _Pending(self.loop.create_future())
        self.pending[sid] = p
        self.quic.send_stream_data(sid, frame, end_stream=True)
        self.transmit_soon()  # coalesce the requests of one loop turn into few packets
        return sid, p

    def abandon(self, sid: int, p: _Pending,
                on_late: Callable[[int, dict[str, Any]], None] | None) -> None:
        """Stop waiting for a response; ``on_late`` still sees it if it arrives anyway.

        A response that is already here (its caller was cancelled or timed out in the same
        loop turn) goes to ``on_late`` at once: nothing it holds may be left behind.
        """
        late = p.late
        if late is None and p.fut.done() and not p.fut.cancelled() \
                and p.fut.exception() is None:
            late = p.fut.result()
        if late is not None:
            p.late = None
            if on_late is not None:
                on_late(*late)
            return
        if self.pending.get(sid) is not p:
            return  # reset, failed or the connection is gone: nothing will arrive
        if on_late is None:
            del self.pending[sid]
        else:
            p.on_late = on_late
        # STOP_SENDING: the server cancels the request if it still runs, and returns the
        # leases of a response it already sent (the stream reset may cut it off).
        with contextlib.suppress(Exception):
            self.quic.stop_stream(sid, ERR_CANCELLED)
            self.transmit_soon()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        # asyncio delivers one datagram per loop turn and aioquic answers each at once; with
        # many requests in flight, reading whatever else is queued first lets one transmit
        # carry the ACKs (and the requests the woken callers send next) for all of them.
        quic, loop = self.quic, self.loop
        self.heard = loop.time()
        quic.receive_datagram(data, addr, now=loop.time())  # type: ignore[arg-type]
        for _ in range(_DRAIN):
            try:
                data, addr = self.sock.recvfrom(65536)
            except OSError:  # nothing more queued (or an error the transport will see)
                break
            quic.receive_datagram(data, addr, now=loop.time())
        self.process_events()
        self.transmit()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            p = self.pending.get(event.stream_id)
            if p is None:
                return
            try:
                if p.reader is None and event.end_stream:  # the whole response at once
                    del self.pending[event.stream_id]
                    result = decode_frame(event.data, limit=self.max_frame)
                else:
                    if p.reader is None:
                        p.reader = FrameReader(self.max_frame)
                    p.reader.feed(event.data)
                    if not event.end_stream:
                        return
                    del self.pending[event.stream_id]
                    result = p.reader.finish()
            except WireError as exc:
                self.pending.pop(event.stream_id, None)
                if not p.fut.done():
                    p.fut.set_exception(ProtocolError(f"the server sent a bad frame: {exc}"))
                return
            if not p.fut.done():
                p.fut.set_result(result)
            elif p.on_late is not None:
                p.on_late(*result)
            else:  # its caller gave up in this loop turn and has not run yet: abandon() takes it
                p.late = result
        elif isinstance(event, events.StreamReset):
            p = self.pending.pop(event.stream_id, None)
            if p is not None and not p.fut.done():
                p.fut.set_exception(BackendConnectionError("the server reset the request"))
        elif isinstance(event, events.ConnectionTerminated):
            if self.error is None:
                self.error = _termination_error(event)
            self._fail_pending(self.error)
            if self.keepalive is not None:
                self.keepalive.cancel()

    def _fail_pending(self, error: UnifiedQError) -> None:
        for p in self.pending.values():
            if not p.fut.done():
                p.fut.set_exception(error)
        self.pending.clear()

    def transmit(self) -> None:
        if not self.disposed:
            super().transmit()

    def dispose(self, transport: asyncio.BaseTransport | None) -> None:
        """Stop every timer and close the socket (the connection is given up)."""
        self.disposed = True
        if self.keepalive is not None:
            self.keepalive.cancel()
        self.cancel_timers()
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()

    async def run_keepalive(self) -> None:
        while self.error is None:
            # Ping at a third of the idle timeout both peers agreed on, so a long blocking
            # dequeue or a quiet handle keeps its connection (and its leases).
            idle = _aq.idle_timeout(self.quic)
            woke = self.loop.time() + idle / 3
            await asyncio.sleep(idle / 3)
            now = self.loop.time()
            # Silent for 2/3 of the idle timeout (two pings unanswered): give up, unless this
            # loop itself was stalled (then the datagrams are unread, not missing).
            if self.error is None and now - self.heard >= idle * 0.6 and now - woke < idle / 6:
                self.give_up(now - self.heard)
                return
            self.quic.send_ping(0)
            self.transmit()

    def give_up(self, silent: float) -> None:
        """The server answered no ping for most of the idle timeout: close the connection.

        aioquic would drop it silently at the idle timeout; a frozen server that resumes
        later would then still run this connection's requests (a waiting dequeue taking jobs
        for nobody) until its own idle timer ran out. A CONNECTION_CLOSE, queued at the server
        behind those requests, makes it cancel them and release the leases at once.
        """
        self.error = BackendTimeout(
            f"the quic server sent nothing for {silent:.3g} s (frozen, partitioned or gone); "
            f"the connection was closed (idle_timeout sets how long to wait)")
        # STOP_SENDING first: a server acts on it as it reads it (cancels the request, returns
        # the leases of a response already sent), while it acts on a CONNECTION_CLOSE only
        # after its drain period (3 PTOs, seconds after a freeze).
        for sid in self.pending:
            with contextlib.suppress(Exception):
                self.quic.stop_stream(sid, ERR_CANCELLED)
        self._fail_pending(self.error)
        with contextlib.suppress(Exception):
            self.quic.close(error_code=ERR_SILENT, reason_phrase="the server went silent")
            self.transmit()


class QuicQueue(AsyncQueueBase):
    """An asyncio handle on a queue served by ``unifiedq serve``."""

    driver = "quic"

    def __init__(self, name: str, host: str, port: int, options: QuicOptions,
                 url: URL | None = None) -> None:
        super().__init__(name, url)
        self.options = options
        self.capabilities = declared_capabilities(options.capabilities)
        self.max_body = options.max_body
        self._host, self._port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._proto: _ClientProtocol | None = None
        self._transport: asyncio.DatagramTransport | None = None
        #: What the server said in its hello (after the first request).
        self.server_info: dict[str, Any] = {}
        #: The smaller of both peers' max_frame (ours until the hello tells the server's).
        self._frame_limit = options.max_frame
        #: The flags the server offered in its hello.
        self._server_caps = Capability(0)
        #: Jobs of abandoned dequeues on their way back to the queue (see _late_jobs).
        self._returns: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, url: URL, options: Mapping[str, object]) -> Self:
        """Build a handle from ``quic://[:token@]host:port/<queue>?...`` (no I/O)."""
        if not url.host:
            raise InvalidURL("quic:// URLs name the server: quic://host:port/<queue>")
        if url.username:
            raise InvalidURL("quic:// URLs take no user name; put a token as "
                             "quic://:TOKEN@host:port/queue or token=")
        name = url.path
        if not QUEUE_NAME.fullmatch(name):
            raise InvalidURL("quic:// URLs end with a queue name of 1..200 characters of "
                             "A-Z a-z 0-9 . _ : @ -, e.g. quic://127.0.0.1:4433/jobs")
        opts = parse_options(QuicOptions, url.query, options, driver="quic")
        if url.password is not None:
            if opts.token is not None:
                raise InvalidURL("give the token once: in the URL's password or as token=")
            opts = dataclasses.replace(opts, token=url.password)
        return cls(name, url.host, url.port or _DEFAULT_PORT, opts, _redact(url))

    # -- connection ---------------------------------------------------------------------------
    async def _connection(self, deadline: float | None) -> _ClientProtocol:
        """The open connection, or a new one opened within ``deadline`` (loop time)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or used from a new event loop
            self._forget_connection()
            self._loop, self._lock = loop, asyncio.Lock()
        proto = self._proto
        if proto is not None and proto.error is None:
            return proto
        assert self._lock is not None
        o = self.options
        limit = o.connect_timeout
        if deadline is not None:
            limit = min(limit, deadline - loop.time())
        stage = ["waiting for another connect"]
        try:
            # One bound for the lock, the handshake and the hello: a reconnect takes its time
            # from the caller's deadline, never adds to it.
            async with asyncio.timeout(max(0.0, limit)):
                async with self._lock:
                    self._check_open()
                    if self._proto is not None and self._proto.error is None:
                        return self._proto
                    self._forget_connection()
                    self._proto = await self._open(loop, stage)
                    return self._proto
        except TimeoutError:
            raise BackendTimeout(
                f"no answer from {self._host}:{self._port} within {limit:.3g} s while "
                f"{stage[0]} (is `unifiedq serve` running there, and not frozen?)") from None

    def _forget_connection(self) -> None:
        proto, transport = self._proto, self._transport
        self._proto = self._transport = None
        if proto is not None:
            proto.dispose(transport)
        elif transport is not None:
            transport.close()

    def _configuration(self) -> QuicConfiguration:
        o = self.options
        cfg = QuicConfiguration(
            is_client=True, alpn_protocols=[ALPN], server_name=o.server_name or self._host,
            idle_timeout=o.idle_timeout, max_data=max(4 * o.max_frame, 16 << 20),
            max_stream_data=o.max_frame + 1024,
        )
        try:
            if o.ca:
                cfg.load_verify_locations(cafile=o.ca)
            if o.cert:
                cfg.load_cert_chain(o.cert, o.key)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot load the quic:// client certificates: {exc}") \
                from exc
        return cfg

    async def _open(self, loop: asyncio.AbstractEventLoop, stage: list[str]) -> _ClientProtocol:
        """Connect, handshake and say hello; the caller bounds the time (see _connection)."""
        o = self.options
        cfg = self._configuration()
        stage[0] = "resolving the host"
        try:
            infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise BackendConnectionError(f"cannot resolve {self._host!r}: {exc}") from exc
        family, addr = infos[0][0], infos[0][4]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind(("::", 0, 0, 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
            sock.setblocking(False)
            transport, proto = await loop.create_datagram_endpoint(
                lambda: _ClientProtocol(QuicConnection(configuration=cfg),
                                        max_frame=o.max_frame, sock=sock),
                sock=sock)
        except OSError as exc:
            sock.close()
            raise BackendConnectionError(f"cannot open a UDP socket: {exc}") from exc
        try:
            proto.connect(addr)
            stage[0] = "waiting for the QUIC handshake"
            try:
                await proto.wait_connected()
            except ConnectionError as exc:
                raise (proto.error or _termination_error(None)) from exc
            stage[0] = "waiting for the hello"
            hello = await self._roundtrip(proto, {
                "op": "hello", "version": 1, "token": o.token,
                "client": f"unifiedq/{__version__}", "max_frame": o.max_frame,
            }, None)
            self._check_hello(hello)
        except BaseException:
            proto.dispose(transport)
            raise
        proto.keepalive = loop.create_task(proto.run_keepalive())
        self._transport = transport
        return proto

    def _check_hello(self, hello: dict[str, Any]) -> None:
        offered = caps_from_names(hello.get("capabilities"))
        missing = self.capabilities & CARRIED & ~offered
        if missing:
            backend = hello.get("backend")
            older = (" (a server older than this client does not offer RELEASE: upgrade it, "
                     "or declare the flags without RELEASE)"
                     if missing == Capability.RELEASE else "")
            raise ConfigurationError(
                f"this quic:// handle declares capabilities={self.options.capabilities!r} but "
                f"the server's backend ({backend!r}) lacks {'|'.join(missing.names())}{older}; "
                f"declare capabilities={backend} or a list of flags it has "
                f"({'|'.join((offered & CARRIED).names()) or 'core'})")
        limit = hello.get("max_frame")
        if type(limit) is int and limit >= 1024:
            self._frame_limit = min(self.options.max_frame, limit)
        self._server_caps = offered
        self.server_info = dict(hello)

    def _encode(self, payload: dict[str, Any]) -> bytes:
        """The request frame, or a typed error before anything is sent."""
        try:
            return encode_frame(KIND_REQUEST, payload, limit=self._frame_limit)
        except FrameTooLarge as exc:
            raise LimitExceeded(
                f"the {payload.get('op')} request is {exc.size} bytes encoded; the frame limit "
                f"is {exc.limit} (the smaller of this client's and the server's max_frame): "
                f"send smaller bodies or headers, or fewer jobs per call",
                limit="max_frame", size=exc.size, maximum=exc.limit) from None
        except WireError as exc:
            raise InvalidArgument(f"the {payload.get('op')} request cannot be encoded: "
                                  f"{exc}") from None

    async def _roundtrip(self, proto: _ClientProtocol, payload: dict[str, Any],
                         timeout: float | None, *,
                         on_late: Callable[[int, dict[str, Any]], None] | None = None,
                         ) -> dict[str, Any]:
        frame = self._encode(payload)
        sid, p = proto.request(frame)
        # A timer that fails the future, rather than asyncio.timeout(): the wait is for this
        # one future only, and this costs one timer handle instead of a Timeout per request.
        timer = None if timeout is None else proto.loop.call_later(timeout, _expire, p.fut)
        try:
            kind, resp = await p.fut
        except _Expired:
            proto.abandon(sid, p, on_late)
            raise BackendTimeout(
                f"the quic server did not answer {payload['op']} within {timeout:.3g} s "
                f"(frozen, partitioned or overloaded?); the connection stays up, and an "
                f"enqueue may still take effect") from None
        except asyncio.CancelledError:
            # The response may be here already (it arrived in the loop turn that cancelled
            # us): abandon() hands its jobs back instead of dropping them.
            proto.abandon(sid, p, on_late)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if kind == KIND_OK:
            return resp
        if kind == KIND_ERROR:
            err = error_from_wire(resp)
            if isinstance(err, AuthenticationError):
                proto.error = err
            raise err
        raise ProtocolError(f"the server answered with frame kind {kind}")

    async def _call(self, op: str, fields: dict[str, Any], *, wait: float | None = 0.0,
                    take: bool = False) -> dict[str, Any]:
        self._check_open()
        o = self.options
        loop = asyncio.get_running_loop()
        start = loop.time()
        # One deadline per call, for connecting and the request: the verb's own wait (a
        # dequeue's timeout) plus ``timeout``; None waits as long as the caller asked.
        deadline = None if wait is None else start + wait + o.timeout
        proto = await self._connection(deadline)
        if wait:
            # Time spent connecting comes off the server's wait, so that the answer still
            # comes by the caller's own deadline.
            fields["timeout"] = max(0.0, start + wait - loop.time())
        payload = {"op": op, "queue": self.name, "options": o.backend_options, **fields}
        timeout = None if deadline is None else max(0.001, deadline - loop.time())
        return await self._roundtrip(
            proto, payload, timeout,
            on_late=functools.partial(self._late_jobs, proto) if take else None)

    def _late_jobs(self, proto: _ClientProtocol, kind: int, resp: dict[str, Any]) -> None:
        """Jobs that arrive for a dequeue whose caller is gone go straight back to the queue."""
        if kind != KIND_OK or not isinstance(resp.get("jobs"), list):
            return
        for raw in resp["jobs"]:
            with contextlib.suppress(UnifiedQError):
                job = job_from_wire(raw, self.name)
                if job.receipt is not None and self._loop is not None:
                    task = self._loop.create_task(self._give_back(proto, job))
                    self._returns.add(task)
                    task.add_done_callback(self._returns.discard)

    async def _give_back(self, proto: _ClientProtocol, job: Job) -> None:
        # Nobody saw the job: release keeps its attempt count; a server without it (older)
        # can only nack, which counts an attempt. Straight on the connection, not _call():
        # close() waits for these, after the handle already counts as closed.
        if proto.error is not None or proto.disposed:
            return  # the connection is gone: the server returns its leases itself
        op = "release" if Capability.RELEASE in self._server_caps else "nack"
        with contextlib.suppress(UnifiedQError):
            await self._roundtrip(proto, {
                "op": op, "queue": self.name, "options": self.options.backend_options,
                "lease": job.receipt, "requeue": True}, self.options.timeout)

    # -- verbs --------------------------------------------------------------------------------
    @staticmethod
    def _options(req: EnqueueRequest) -> dict[str, Any]:
        return {"delay": req.delay or None, "priority": req.priority,
                "headers": dict(req.headers) or None}

    @staticmethod
    def _ids(resp: dict[str, Any], n: int) -> list[str]:
        ids = resp.get("ids")
        if not isinstance(ids, list) or len(ids) != n or not all(isinstance(i, str) for i in ids):
            raise ProtocolError("the server answered enqueue without the job ids")
        return ids

    async def _enqueue(self, req: EnqueueRequest) -> str:
        resp = await self._call("enqueue", {
            "body": req.body, "job_id": req.job_id if req.custom_id else None,
            **self._options(req)})
        return self._ids(resp, 1)[0]

    async def _enqueue_many(self, reqs: list[EnqueueRequest]) -> list[str]:
        # Every request of one call has the same options; only bodies differ. Split the batch
        # so that no frame exceeds the limit, after checking that every body fits one (so a
        # bad body fails the call before the first chunk is sent).
        opts, out = self._options(reqs[0]), []
        try:
            fixed = _FRAME_OVERHEAD + len(encode_value(opts)) + len(self.name) \
                + len(self.options.backend_options.encode())
        except WireError as exc:
            raise InvalidArgument(f"enqueue_many() options cannot be encoded: {exc}") from None
        budget = self._frame_limit - fixed
        biggest = max(len(r.body) for r in reqs) + 5
        if biggest > budget:
            raise LimitExceeded(
                f"a body of {biggest - 5} bytes with these headers makes a frame of more than "
                f"{self._frame_limit} bytes (the smaller of this client's and the server's "
                f"max_frame); nothing was sent", limit="max_frame", size=biggest + fixed,
                maximum=self._frame_limit)
        chunk: list[bytes] = []
        size = 0
        for r in reqs:
            cost = len(r.body) + 5
            if chunk and size + cost > budget:
                out += self._ids(await self._call("enqueue_many", {"bodies": chunk, **opts}),
                                 len(chunk))
                chunk, size = [], 0
            chunk.append(r.body)
            size += cost
        out += self._ids(await self._call("enqueue_many", {"bodies": chunk, **opts}), len(chunk))
        return out

    async def _take(self, n: int, timeout: float | None) -> list[Job]:
        resp = await self._call(
            "dequeue", {"timeout": timeout, "max": n,
                        "lease": Capability.ACK in self.capabilities},
            wait=timeout, take=True)
        jobs = resp.get("jobs")
        if not isinstance(jobs, list):
            raise ProtocolError("the server answered dequeue without a job list")
        return [job_from_wire(j, self.name) for j in jobs]

    async def _dequeue(self, timeout: float | None) -> Job | None:
        jobs = await self._take(1, timeout)
        return jobs[0] if jobs else None

    async def _dequeue_many(self, max_jobs: int, timeout: float | None) -> list[Job]:
        return await self._take(max_jobs, timeout)

    async def _peek(self) -> Job | None:
        raw = (await self._call("peek", {})).get("job")
        return None if raw is None else job_from_wire(raw, self.name)

    async def _ack(self, job: Job) -> None:
        await self._call("ack", {"lease": job.receipt})

    async def _nack(self, job: Job, requeue: bool, delay: float) -> None:
        await self._call("nack", {"lease": job.receipt, "requeue": requeue,
                                  "delay": delay or None})

    async def _release(self, job: Job) -> None:
        await self._call("release", {"lease": job.receipt})

    async def _extend_lease(self, job: Job, seconds: float) -> None:
        await self._call("extend_lease", {"lease": job.receipt, "seconds": seconds})

    async def _count(self, op: str) -> int:
        n = (await self._call(op, {})).get("n")
        if not isinstance(n, int) or isinstance(n, bool):
            raise ProtocolError(f"the server answered {op} without a count")
        return n

    async def _size(self) -> int:
        return await self._count("size")

    async def _purge(self) -> int:
        return await self._count("purge")

    async def _close(self) -> None:
        proto, transport, loop = self._proto, self._transport, self._loop
        self._proto = self._transport = None
        if proto is None or transport is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - _close is always awaited
            running = None
        if running is loop:
            # Bounded waits: a frozen server answers neither the give-backs nor the close.
            if self._returns:
                await asyncio.wait(list(self._returns), timeout=_CLOSE_WAIT)
            # Send what is queued first: a STOP_SENDING of a request given up on in this loop
            # turn would be dropped by the close (aioquic then sends only CONNECTION_CLOSE),
            # and the server would count the jobs it took for it as a failed attempt.
            proto.transmit()
            proto.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_WAIT):
                    await proto.wait_closed()
            proto.dispose(transport)
        elif loop is not None and not loop.is_closed():
            # Opened on another (still running) loop: close it there.
            def close_there() -> None:
                proto.close()
                proto.dispose(transport)

            loop.call_soon_threadsafe(close_there)


def _redact(url: URL) -> URL:
    """Hide the token from reprs and logs (``URL.redacted`` only knows passwords)."""
    if "token" not in url.query:
        return url
    parts = urllib.parse.urlsplit(url.raw)
    query = urllib.parse.urlencode(
        [(k, "***" if k == "token" else v) for k, v in url.query.items()], safe="*/")
    return dataclasses.replace(url, raw=urllib.parse.urlunsplit(parts._replace(query=query)))
