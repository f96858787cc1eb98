r"""``unifiedq serve``: expose any unifiedq backend to remote clients over QUIC.

Features: TLS 1.3 (QUIC has no other), client certificates required and verified against
``--client-ca`` by default, an optional bearer token on top, one request per bidirectional
stream with many in flight, leases of a client that disconnects returned to the queue, and a
graceful shutdown (SIGTERM/SIGINT) that drains requests in flight.

Run it::

    unifiedq serve --listen 127.0.0.1:4433 --backend memory:// \
        --cert pki/server.pem --key pki/server.key --client-ca pki/ca.pem [--token T]
    python -m unifiedq.drivers.quic.server ...   # the same, without the CLI

The backend URL names the queue with ``{queue}`` (``redis://host:6379/0?queue={queue}``); a URL
without it gets the queue as its authority when that is empty (``memory://`` ->
``memory://<queue>``) and as a ``queue=`` option otherwise. Wire format and security model:
docs/drivers/quic.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import functools
import hmac
import logging
import os
import secrets
import signal
import socket
import sys
import urllib.parse
from collections.abc import Coroutine
from typing import Any, cast

from aioquic import tls
from aioquic.asyncio.server import QuicServer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ... import __version__
from ..._base import AsyncQueueBase, QueueBase
from ..._capabilities import Capability
from ..._checks import MAX_BATCH
from ..._compat import aioquic as _aq
from ..._connect import connect_async
from ..._errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    ConfigurationError,
    InvalidArgument,
    InvalidURL,
    JobNotLeased,
    LimitExceeded,
    ProtocolError,
    UnifiedQError,
    WrongQueue,
)
from ..._job import Job, check_timeout
from ..._url import parse_url
from ._common import (
    ALPN,
    ERR_AUTH,
    ERR_PROTOCOL,
    ERR_SHUTDOWN,
    ERR_SILENT,
    OPS,
    QUEUE_NAME,
    error_to_wire,
    exposed,
    job_to_wire,
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
)

__all__ = ["JobServer", "ServeConfig", "backend_url", "serve_main"]

log = logging.getLogger("unifiedq.quic.server")

# Distinct raw (queue, options) pairs remembered as validated; more are checked every time.
_MAX_VALIDATED = 10_000
# Datagrams read in one go before the replies to all of them are sent (see _Listener).
_DRAIN = 32
# Most responses one connection holds back while its batch is read (see _ServerProtocol._reply).
_FLUSH_MAX = 16
# Streams remembered as stopped by the client before their request arrived (see _stopped).
_EARLY_STOPS = 4096
# Encoded bytes of a job besides its body, id and headers (field names, numbers, lease
# token: 146 counted, rounded up), and of a dequeue response besides its jobs.
_JOB_OVERHEAD = 160
_RESPONSE_OVERHEAD = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class ServeConfig:
    """Settings of a :class:`JobServer`.

    Attributes:
        host: Address to bind.
        port: UDP port (0 = any free port; see :attr:`JobServer.address`).
        backend: Backend URL template (see the module docstring).
        cert: PEM file with the server's certificate (chain).
        key: PEM file with its private key.
        client_ca: PEM file of the CA(s) that sign client certificates; None only together
            with ``require_client_cert=False``.
        require_client_cert: Refuse clients without a valid certificate (the default).
        token: Bearer token every client must present in its hello, or None.
        max_frame: Largest frame payload accepted or sent, in bytes.
        allow_client_options: Backend options clients may set per handle
            (``backend_options=``), e.g. ``{"visibility_timeout"}``; others are refused.
        drain_timeout: Seconds a graceful shutdown waits for requests in flight.
        idle_timeout: QUIC idle timeout in seconds.
        max_connection_buffer: Bytes of unfinished requests one connection may have buffered.
        max_streams: Request streams one client may have open at once (QUIC MAX_STREAMS).
            aioquic's fixed 128 throttles a client with 64 requests in flight: a stream
            counts until the client acknowledges its response, so the client stalls on
            stream credit about half of the time.
        max_queues: Backend handles (one per queue and option set) kept open at once. The
            least recently used idle one is closed to make room (its jobs stay in the
            backend); when every one is busy (a request in flight or a job leased through
            it), a request for another queue is refused with ``BackendError``. Without a
            bound, clients naming ever new queues would open handles (and, for networked
            backends, connections) until the server runs out.
    """

    host: str = "127.0.0.1"
    port: int = 4433
    backend: str = "memory://"
    cert: str = ""
    key: str = ""
    client_ca: str | None = None
    require_client_cert: bool = True
    token: str | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    allow_client_options: frozenset[str] = frozenset()
    drain_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connection_buffer: int = 64 * 1024 * 1024
    max_streams: int = 1024
    max_queues: int = 1024

    def __post_init__(self) -> None:
        if self.require_client_cert and not self.client_ca:
            raise ConfigurationError(
                "client certificates are required: give --client-ca (or, for local development "
                "only, --insecure-no-client-cert-i-know-what-i-am-doing)")
        if not self.cert or not self.key:
            raise ConfigurationError("the server needs --cert and --key")
        if not 1024 <= self.max_frame <= 1 << 30:
            raise ConfigurationError("max_frame must be between 1 KiB and 1 GiB")
        if not 1 <= self.max_streams <= 1 << 16:
            raise ConfigurationError("max_streams must be between 1 and 65536")
        if self.max_queues < 1:
            raise ConfigurationError("max_queues must be at least 1")


def backend_url(template: str, queue: str, options: str = "") -> str:
    """Build the backend URL of ``queue`` from the server's template.

    Args:
        template: The ``--backend`` URL, optionally with a ``{queue}`` placeholder.
        queue: A validated queue name.
        options: Extra query options (already validated), ``k=v&k2=v2``.
    """
    quoted = urllib.parse.quote(queue, safe="")
    if "{queue}" in template:
        url = template.replace("{queue}", quoted)
    else:
        parts = urllib.parse.urlsplit(template)
        if not parts.netloc:
            url = urllib.parse.urlunsplit(parts._replace(netloc=quoted))
            if "://" not in url:  # urlunsplit drops '//' for an empty netloc
                url = f"{parts.scheme}://{quoted}{url.partition(':')[2]}"
        else:
            q = f"{parts.query}&queue={quoted}" if parts.query else f"queue={quoted}"
            url = urllib.parse.urlunsplit(parts._replace(query=q))
    if options:
        url += ("&" if "?" in url else "?") + options
    return url


class _CertificateRequired(tls.Alert):
    description = tls.AlertDescription.certificate_required


def _check_client_certificate(certificate: x509.Certificate | None,
                              chain: list[x509.Certificate], *, client_ca: str) -> None:
    """Refuse a missing, expired, foreign or non-client certificate with a TLS alert.

    aioquic can request a client certificate but never checks one; every connection of a
    server that requires them runs this as soon as the client's certificate arrives (see
    ``unifiedq._compat.aioquic.check_client_certificates``), so the handshake fails before any
    stream opens.
    """
    if certificate is None:
        raise _CertificateRequired("a client certificate is required")
    tls.verify_certificate(certificate=certificate, chain=chain, cafile=client_ca)
    try:
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise tls.AlertBadCertificate("the certificate is not for client authentication")


#: In-process drivers whose verbs (other than a waiting dequeue) never wait on I/O: the server
#: calls their blocking face inline instead of hopping to the bridge's thread pool per request.
_INLINE_DRIVERS = frozenset({"memory"})


def _start_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` now, up to its first real suspension; wrap the rest in a task.

    Most requests never suspend (in-process backends answer at once); finishing them inside
    the QUIC event handler puts the response in the same packet as the ACK of the request,
    saving a loop turn and a datagram per request (what Python 3.12's eager tasks do).

    Returns:
        None if the coroutine finished, else the task that continues it.
    """
    try:
        first = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(
        cast("Coroutine[Any, Any, None]", _Resumed(coro, first)))


class _Resumed:
    """The rest of a started coroutine, for a task: re-yields what it waits on, relays the rest.

    Not a generator: a task cancelled before its first step throws ``CancelledError`` into
    its coroutine, and a generator that has not started yet raises it without running a line
    (the started coroutine would never see it). A request stopped by the client (or its
    connection closed) in the very datagram batch that started it is cancelled like that: a
    bridged dequeue then never ran its cancellation handler, and the job its thread took
    stayed leased to nobody until the lease expired. ``throw`` here goes straight to the
    coroutine at the point where it waits.
    """

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, None], first: Any) -> None:
        self._coro = coro
        self._first = first

    def send(self, value: Any) -> Any:
        first, self._first = self._first, None
        if first is not None:
            return first  # the task's first step: wait for what the coroutine waits on
        return self._coro.send(value)

    def throw(self, exc: BaseException, *_: Any) -> Any:
        first, self._first = self._first, None
        if first is not None and isinstance(first, asyncio.Future):
            first.cancel()  # nobody else waits for it (the task never did)
        return self._coro.throw(exc)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> _Resumed:
        return self

    def __iter__(self) -> _Resumed:
        return self

    def __next__(self) -> Any:
        return self.send(None)


Coroutine.register(_Resumed)  # what asyncio.iscoroutine() (and so create_task) accepts


class _Inline:
    """The async verbs of an in-process blocking driver, run inline on the event loop."""

    def __init__(self, q: QueueBase) -> None:
        self._q = q
        self.name = q.name

    def __getattr__(self, verb: str) -> Any:
        fn = getattr(self._q, verb)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        setattr(self, verb, call)  # found directly from now on (__getattr__ is the miss path)
        return call


@dataclasses.dataclass(slots=True, eq=False)
class _Backend:
    key: tuple[str, str]
    handle: AsyncQueueBase
    caps: Capability
    #: What runs the verbs that do not wait: ``handle`` or an :class:`_Inline` over its driver.
    fast: Any
    #: Requests in flight plus jobs leased through this handle: it may be closed only at 0.
    users: int = 0
    #: Raw (queue, options) strings of the validation cache that point here.
    raw_keys: list[tuple[str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class _Lease:
    job: Job
    backend: _Backend
    conn: _ServerProtocol
    #: The stream whose response carried the job (see _ServerProtocol._stopped).
    sid: int


def _too_large(what: str, size: int, limit: int) -> LimitExceeded:
    return LimitExceeded(f"{what} is {size} bytes; the frame limit is {limit} (the smaller of "
                         f"the server's and this client's max_frame)", limit="max_frame",
                         size=size, maximum=limit)


class _Listener(QuicServer):
    """aioquic's server, reading the datagrams queued on its socket before it answers.

    asyncio hands a datagram protocol one datagram per loop turn, and aioquic answers each at
    once: with many requests in flight that is a packet (and a pass over every open stream)
    per datagram, carrying two or three responses. Reading what else is queued first (up to
    :data:`_DRAIN`) and sending after it puts many responses and ACKs in each packet; the
    busier the server, the larger the batches. Sending only at the end would make client and
    server take turns, though (all requests in flight become one batch, and each side idles
    while the other works), so a connection sends as soon as it holds half as many responses
    as its previous batch had (at least 2, at most :data:`_FLUSH_MAX`): the client gets to work
    on the first half while the server answers the second.
    """

    def __init__(self, *, sock: socket.socket, server: JobServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sock = sock
        self._server = server

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        dirty = self._server._dirty = {}
        try:
            super().datagram_received(data, addr)
            for _ in range(_DRAIN):
                try:
                    data, addr = self._sock.recvfrom(65536)
                except OSError:  # nothing more queued (or an error the transport will see)
                    break
                super().datagram_received(data, addr)
        finally:
            self._server._dirty = None
            for proto in dirty:
                proto._flush_at = max(2, min(_FLUSH_MAX, proto._batch // 2))
                proto._batch = 0
                proto.transmit()


class _ServerProtocol(_aq.QuicProtocol):
    """One client connection: reads request frames, runs them, writes responses."""

    def __init__(self, quic: QuicConnection, *, server: JobServer, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self.server = server
        self.authenticated = False
        self.closed = False
        #: The client closed because we went silent (frozen): it never saw what we owe it.
        self.gave_up = False
        self.peer = "?"
        self.leases: set[str] = set()
        self._readers: dict[int, FrameReader] = {}
        self._aborted: set[int] = set()
        #: Streams the client stopped before their request arrived (oldest first, bounded).
        self._early_stops: dict[int, None] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._waiting: set[int] = set()
        self._buffered = 0
        #: Responses written since the last transmit, and in the listener's current batch.
        self._unsent = self._batch = 0
        self._flush_at = _FLUSH_MAX
        cfg = server.config
        #: Largest response frame for this client: the smaller of both limits (set by hello).
        self.max_frame = cfg.max_frame
        # Before the handshake, so the transport parameters announce it (aioquic has no
        # setting for it). Buffered bytes stay capped by max_connection_buffer.
        _aq.set_max_streams_bidi(quic, cfg.max_streams)
        if cfg.require_client_cert:
            assert cfg.client_ca is not None  # ServeConfig requires it with client certificates
            _aq.check_client_certificates(quic, functools.partial(
                _check_client_certificate, client_ca=cfg.client_ca))

    # -- events -------------------------------------------------------------------------------
    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        """Handle a datagram; send now, or after the listener's batch (see _Listener)."""
        self.quic.receive_datagram(data, addr, now=self.loop.time())  # type: ignore[arg-type]
        self.process_events()
        if not self.closed:
            # The client closed: act now, not when aioquic reports it after its draining
            # period (3 PTOs: tens of seconds after a freeze, whose length inflates the RTT
            # sample), or a request it gave up on would hold its job leased that long.
            closed = _aq.peer_closed(self.quic)
            if closed is not None:
                self._on_terminated(closed)
        dirty = self.server._dirty
        if dirty is None:
            self.transmit()
        else:
            dirty[self] = None

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self._on_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, events.StopSendingReceived):
            self._drop_stream(event.stream_id)
            self._stopped(event.stream_id)
        elif isinstance(event, events.StreamReset):
            self._drop_stream(event.stream_id)
        elif isinstance(event, events.HandshakeCompleted):
            cert = _aq.peer_certificate(self.quic)
            if cert is not None:
                names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
                self.peer = str(names[0].value) if names else "?"
            log.info("client %s connected", self.peer)
        elif isinstance(event, events.ConnectionTerminated):
            self._on_terminated(event)

    def _on_data(self, sid: int, data: bytes, end: bool) -> None:
        if sid % 4 != 0:
            return  # only client-initiated bidirectional streams carry requests
        if sid in self._aborted:
            if end:
                self._aborted.discard(sid)
            return
        reader = self._readers.get(sid)
        if reader is None:
            if sid in self._tasks:
                return  # data after FIN would be a QUIC error; aioquic rejects it first
            if self._early_stops and sid in self._early_stops:
                # The client gave up on this request before it got here (its packet was
                # lost and resent after the STOP_SENDING): do not run it, not even a dequeue
                # that would take jobs for nobody.
                if end:
                    del self._early_stops[sid]
                else:
                    self._aborted.add(sid)
                return
            if end:  # the whole request in one piece: no buffering, no reader
                try:
                    kind, payload = decode_frame(data, limit=self.server.config.max_frame)
                except WireError as exc:
                    self._reply(sid, KIND_ERROR, error_to_wire(_bad_frame(exc)))
                    return
                self._start(sid, kind, payload)
                return
            reader = self._readers[sid] = FrameReader(self.server.config.max_frame)
        self._buffered += len(data)
        limit = self.server.config.max_connection_buffer
        if self._buffered > limit:
            # Refuse this request only: the connection and its other requests carry on.
            log.warning("client %s buffered too much; refusing one request", self.peer)
            self._refuse(sid, end, LimitExceeded(
                f"this connection has more than {limit} bytes of unfinished requests; "
                f"send fewer large requests at once", limit="max_connection_buffer",
                size=self._buffered, maximum=limit))
            return
        try:
            reader.feed(data)
        except WireError as exc:
            self._refuse(sid, end, _bad_frame(exc))
            return
        if not end:
            return
        self._forget_reader(sid)
        try:
            kind, payload = reader.finish()
        except WireError as exc:
            self._reply(sid, KIND_ERROR, error_to_wire(ProtocolError(f"bad frame: {exc}")))
            return
        self._start(sid, kind, payload)

    def _refuse(self, sid: int, end: bool, exc: UnifiedQError) -> None:
        """Answer a request that cannot be read with an error and stop reading its stream."""
        self._forget_reader(sid)
        self._aborted.add(sid)
        self._reply(sid, KIND_ERROR, error_to_wire(exc))
        with contextlib.suppress(Exception):
            self.quic.stop_stream(sid, ERR_PROTOCOL)
        if end:
            self._aborted.discard(sid)

    def _stopped(self, sid: int) -> None:
        """The client stopped reading ``sid`` (STOP_SENDING): it gave up on the response.

        If a dequeue's response already left, the stream reset that STOP_SENDING causes may
        cut it off before it all arrives, so the client may never learn its leases: return
        them now (a client that did get them releases them too; the second one is a no-op).
        """
        if self.leases:
            self.server._return_stream(self, sid)
        if sid not in self._tasks and sid not in self._readers:
            # Answered already, or its request has not arrived yet (lost, resent later):
            # remember it so that a late request is not run (see _on_data).
            self._early_stops[sid] = None
            if len(self._early_stops) > _EARLY_STOPS:
                del self._early_stops[next(iter(self._early_stops))]

    def _start(self, sid: int, kind: int, payload: dict[str, Any]) -> None:
        coro = self._serve(sid, kind, payload)
        # Only for in-process backends: other drivers' code may need to run inside a task
        # (asyncio.timeout() does), which the eager first step is not.
        task = (_start_eagerly(coro) if self.server.eager
                else asyncio.get_running_loop().create_task(coro))
        if task is not None:
            self._tasks[sid] = task

    def _forget_reader(self, sid: int) -> None:
        reader = self._readers.pop(sid, None)
        if reader is not None:
            self._buffered -= reader.buffered

    def _drop_stream(self, sid: int) -> None:
        self._forget_reader(sid)
        self._aborted.discard(sid)
        task = self._tasks.get(sid)
        if task is not None:
            task.cancel()

    def _on_terminated(self, event: events.ConnectionTerminated) -> None:
        if self.closed:
            return
        self.closed = True
        self.gave_up = event.error_code == ERR_SILENT
        for sid in list(self._readers):
            self._forget_reader(sid)
        for task in self._tasks.values():
            task.cancel()
        if self.authenticated or self.peer != "?":
            log.info("client %s disconnected (%s)", self.peer, event.reason_phrase or
                     f"code {event.error_code:#x}")
        elif event.error_code:
            log.info("refused a connection: %s (code %#x)", event.reason_phrase,
                     event.error_code)
        self.server._release_soon(self)

    # -- requests -----------------------------------------------------------------------------
    async def _serve(self, sid: int, kind: int, payload: dict[str, Any]) -> None:
        refuse = False
        try:
            if kind != KIND_REQUEST:
                raise ProtocolError("expected a request frame")
            op = payload.get("op")
            if op not in OPS:
                raise ProtocolError(f"unknown verb {str(op)[:40]!r}")
            if op == "dequeue" and payload.get("timeout", 0) != 0:
                self._waiting.add(sid)
            result = await self.server._dispatch(self, sid, str(op), payload)
            reply: tuple[int, dict[str, Any]] = (KIND_OK, result)
        except asyncio.CancelledError:
            if not (self.server.closing and not self.closed):
                raise
            reply = (KIND_ERROR, error_to_wire(
                BackendConnectionError("the server is shutting down")))
        except Exception as exc:
            if not isinstance(exc, UnifiedQError):
                log.exception("request from %s failed", self.peer)
            refuse = isinstance(exc, AuthenticationError)
            reply = (KIND_ERROR, error_to_wire(exc))
        finally:
            self._tasks.pop(sid, None)
            self._waiting.discard(sid)
        self._reply(sid, *reply)
        if refuse:
            # Let the error frame leave before the connection closes.
            asyncio.get_running_loop().call_later(
                0.2, functools.partial(self.close, ERR_AUTH, "authentication failed"))

    def _reply(self, sid: int, kind: int, payload: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            frame = encode_frame(kind, payload, limit=self.max_frame)
        except FrameTooLarge as exc:
            frame = encode_frame(KIND_ERROR, error_to_wire(
                _too_large("the response", exc.size, exc.limit)))
        # The peer may have reset the stream meanwhile (try/except: no suppress() per reply).
        try:  # noqa: SIM105
            self.quic.send_stream_data(sid, frame, end_stream=True)
        except Exception:
            pass
        self._unsent += 1
        self._batch += 1
        if self._unsent >= self._flush_at and self.server._dirty is not None:
            self.transmit()  # enough for the client to work on (see _Listener)
        else:
            self.transmit_soon()

    def transmit(self) -> None:
        """Send what is pending (aioquic's transmit) and restart the count of held responses."""
        self._unsent = 0
        super().transmit()

    def interrupt_waits(self) -> None:
        """Cancel requests that wait for jobs (used by a graceful shutdown)."""
        for sid in list(self._waiting):
            task = self._tasks.get(sid)
            if task is not None:
                task.cancel()

    def tasks(self) -> list[asyncio.Task[None]]:
        """Requests in flight."""
        return list(self._tasks.values())


def _job_cost(job: Job) -> int:
    """Encoded bytes of a job in a dequeue response (exact up to the fixed overhead)."""
    cost = len(job.body) + len(job.id.encode()) + _JOB_OVERHEAD
    for k, v in job.headers.items():
        cost += len(k.encode()) + len(v.encode()) + 10
    return cost


def _fitting(jobs: list[Job], limit: int) -> int:
    """How many of ``jobs``, in order, fit one response frame of ``limit`` bytes."""
    budget, keep = limit - _RESPONSE_OVERHEAD, 0
    for job in jobs:
        budget -= _job_cost(job)
        if budget < 0:
            break
        keep += 1
    return keep


def _bad_frame(exc: WireError) -> UnifiedQError:
    if isinstance(exc, FrameTooLarge):
        return _too_large("the request", exc.size, exc.limit)
    return ProtocolError(f"bad frame: {exc}")


def _field(p: dict[str, Any], key: str, types: tuple[type, ...], default: Any = ...) -> Any:
    if key not in p:
        if default is ...:
            raise ProtocolError(f"the request lacks the {key!r} field")
        return default
    v = p[key]
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        raise ProtocolError(f"the request's {key!r} field has a bad type {type(v).__name__}")
    return v


class JobServer:
    """A QUIC job server over one backend; start with :meth:`start`, stop with :meth:`shutdown`.

    Args:
        config: The server's settings.
    """

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.closing = False
        self.capabilities = Capability(0)
        self.backend_scheme = parse_url(config.backend).scheme
        self.eager = self.backend_scheme in _INLINE_DRIVERS
        #: Open backend handles, least recently used first (bounded by config.max_queues).
        self._backends: collections.OrderedDict[tuple[str, str], _Backend] = (
            collections.OrderedDict())
        self._closing: set[asyncio.Task[None]] = set()
        #: Raw (queue, options) strings of requests already checked, and their backend.
        self._validated: dict[tuple[str, str], _Backend] = {}
        self._leases: dict[str, _Lease] = {}
        self._protocols: set[_ServerProtocol] = set()
        self._releases: set[asyncio.Task[None]] = set()
        self._listeners: list[_Listener] = []
        #: Connections with something to send once the listener's current batch is read.
        self._dirty: dict[_ServerProtocol, None] | None = None
        self._address: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)`` (the first, when the host resolved to several)."""
        if self._address is None:
            raise RuntimeError("the server is not started")
        return self._address

    async def start(self) -> tuple[str, int]:
        """Probe the backend's capabilities and start listening; return the bound address."""
        cfg = self.config
        probe = connect_async(backend_url(cfg.backend, "unifiedq-probe"))
        self.capabilities = exposed(probe.capabilities)
        await probe.aclose()
        qc = QuicConfiguration(
            is_client=False, alpn_protocols=[ALPN], idle_timeout=cfg.idle_timeout,
            max_data=max(4 * cfg.max_frame, 16 << 20), max_stream_data=cfg.max_frame + 1024,
        )
        qc.load_cert_chain(cfg.cert, cfg.key)

        def make(quic: QuicConnection, **kwargs: Any) -> _ServerProtocol:
            proto = _ServerProtocol(quic, server=self, **kwargs)
            self._protocols.add(proto)
            return proto

        # aioquic's serve(), with our listener on a socket we keep (it reads ahead). No
        # session tickets: a resumed (PSK) handshake would skip the client certificate.
        # Every address the host resolves to (``localhost`` is often ::1 and 127.0.0.1), on
        # one port: with port 0, the one the first bind got.
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(cfg.host or None, cfg.port, type=socket.SOCK_DGRAM,
                                       flags=socket.AI_PASSIVE)
        if not infos:
            raise OSError(f"cannot resolve {cfg.host!r}")
        port, seen = cfg.port, set()
        # Both families on one port: the IPv6 socket must not also take IPv4's (Linux would).
        dual = {info[0] for info in infos} >= {socket.AF_INET, socket.AF_INET6}
        try:
            for family, _, proto, _, addr in infos:
                if (family, addr[0]) in seen:
                    continue
                seen.add((family, addr[0]))
                sock = socket.socket(family, socket.SOCK_DGRAM, proto)
                try:
                    if dual and family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.setblocking(False)
                    sock.bind((addr[0], port, *addr[2:]))
                    _, listener = await loop.create_datagram_endpoint(
                        functools.partial(_Listener, sock=sock, server=self,
                                          configuration=qc, create_protocol=make),
                        sock=sock)
                except BaseException:
                    sock.close()
                    raise
                self._listeners.append(listener)
                if self._address is None:
                    name = sock.getsockname()
                    self._address = (str(name[0]), int(name[1]))
                    port = self._address[1]
        except BaseException:
            for listener in self._listeners:
                listener.close()
            self._listeners.clear()
            self._address = None
            raise
        return self.address

    # -- dispatch -----------------------------------------------------------------------------
    def _backend(self, p: dict[str, Any]) -> _Backend:
        queue, options = p.get("queue"), p.get("options", "")
        if type(queue) is str and type(options) is str:
            b = self._validated.get((queue, options))
            if b is not None:
                self._backends.move_to_end(b.key)
                return b
        b = self._new_backend(p)
        if len(self._validated) < _MAX_VALIDATED:
            self._validated[(queue, options)] = b  # type: ignore[index]
            b.raw_keys.append((queue, options))  # type: ignore[arg-type]
        return b

    def _new_backend(self, p: dict[str, Any]) -> _Backend:
        queue = _field(p, "queue", (str,))
        if not QUEUE_NAME.fullmatch(queue):
            raise InvalidArgument("queue names are 1..200 characters of A-Z a-z 0-9 . _ : @ -")
        options = _field(p, "options", (str,), "")
        if options:
            try:
                pairs = urllib.parse.parse_qsl(options, keep_blank_values=True,
                                               strict_parsing=True, max_num_fields=32)
            except ValueError as exc:
                raise InvalidURL(f"backend_options is not a query string: {exc}") from None
            allowed = self.config.allow_client_options
            for k, _ in pairs:
                if k not in allowed:
                    raise InvalidURL(
                        f"this server does not let clients set the backend option {k[:40]!r} "
                        f"(allowed: {', '.join(sorted(allowed)) or 'none'})")
            options = urllib.parse.urlencode(sorted(pairs))
        key = (queue, options)
        b = self._backends.get(key)
        if b is None:
            self._make_room()
            handle = connect_async(backend_url(self.config.backend, queue, options))
            inner = getattr(handle, "inner", None)
            fast = (_Inline(inner) if isinstance(inner, QueueBase)
                    and handle.driver in _INLINE_DRIVERS else handle)
            b = self._backends[key] = _Backend(key, handle, handle.capabilities, fast)
        else:
            self._backends.move_to_end(key)
        return b

    def _make_room(self) -> None:
        """Close the least recently used idle handles until one more fits."""
        limit = self.config.max_queues
        while len(self._backends) >= limit:
            victim = next((b for b in self._backends.values() if b.users == 0), None)
            if victim is None:
                raise BackendError(
                    f"this server has {limit} queues open and every one is in use (requests "
                    f"in flight or jobs leased); try again later, or start it with a larger "
                    f"--max-queues")
            del self._backends[victim.key]
            for raw in victim.raw_keys:
                self._validated.pop(raw, None)
            task = asyncio.get_running_loop().create_task(self._close_backend(victim))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_backend(b: _Backend) -> None:
        try:
            await b.handle.aclose()
        except Exception as exc:  # a backend that fails to close must not hurt the server
            log.warning("closing the idle handle of queue %r failed: %s", b.key[0], exc)

    async def _dispatch(self, conn: _ServerProtocol, sid: int, op: str,
                        p: dict[str, Any]) -> dict[str, Any]:
        if op == "hello":
            return self._hello(conn, p)
        if not conn.authenticated:
            raise AuthenticationError("the first request on a connection must be hello")
        if self.closing:
            raise BackendConnectionError("the server is shutting down")
        b = self._backend(p)
        b.users += 1  # keeps the handle open while the request runs
        try:
            return await self._run(conn, sid, op, b, p)
        finally:
            b.users -= 1

    async def _run(self, conn: _ServerProtocol, sid: int, op: str, b: _Backend,
                   p: dict[str, Any]) -> dict[str, Any]:
        h = b.fast
        if op == "enqueue":
            kwargs = self._enqueue_options(p)
            job_id = _field(p, "job_id", (str, type(None)), None)
            if job_id is not None:
                kwargs["job_id"] = job_id
            return {"ids": [await h.enqueue(_field(p, "body", (bytes,)), **kwargs)]}
        if op == "enqueue_many":
            bodies = _field(p, "bodies", (list,))
            kwargs = self._enqueue_options(p)
            if Capability.BATCH in b.caps:
                return {"ids": await h.enqueue_many(bodies, **kwargs)}
            for body in bodies:  # validate all before the first enqueue, as enqueue_many does
                if not isinstance(body, bytes):
                    raise InvalidArgument("enqueue_many() bodies must be bytes")
            return {"ids": [await h.enqueue(body, **kwargs) for body in bodies]}
        if op == "dequeue":
            return await self._dequeue(conn, sid, b, p)
        if op == "peek":
            job = await h.peek()
            return {"job": None if job is None else job_to_wire(job, None)}
        if op in ("ack", "nack", "release", "extend_lease"):
            return await self._settle(op, b, p)
        if op == "size":
            return {"n": await h.size()}
        return {"n": await h.purge()}

    def _hello(self, conn: _ServerProtocol, p: dict[str, Any]) -> dict[str, Any]:
        if p.get("version") != 1:
            raise ProtocolError("this server speaks wire version 1")
        expected = self.config.token
        if expected is not None:
            given = p.get("token")
            if not isinstance(given, str) or not hmac.compare_digest(
                    given.encode(), expected.encode()):
                log.warning("client %s presented a wrong or missing token", conn.peer)
                raise AuthenticationError("the server refused the token")
        if self.closing:
            raise BackendConnectionError("the server is shutting down")
        conn.authenticated = True
        limit = p.get("max_frame")  # clients older than the field accept the server's limit
        if type(limit) is int and limit >= 1024:
            conn.max_frame = min(self.config.max_frame, limit)
        return {
            "server": f"unifiedq/{__version__}", "backend": self.backend_scheme,
            "capabilities": self.capabilities.names(), "max_frame": self.config.max_frame,
        }

    @staticmethod
    def _enqueue_options(p: dict[str, Any]) -> dict[str, Any]:
        # Only options actually given are passed on: the backend's own verbs gate them by
        # capability and validate them again (the client is not trusted).
        kwargs: dict[str, Any] = {}
        for key in ("delay", "priority", "headers"):
            if p.get(key) is not None:
                kwargs[key] = p[key]
        return kwargs

    async def _take(self, b: _Backend, n: int, timeout: float | None) -> list[Job]:
        h = b.fast if timeout == 0.0 else b.handle
        if timeout != 0.0 and Capability.BLOCKING_DEQUEUE not in b.caps:
            # The backend cannot wait: poll with a backoff capped at 100 ms.
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            pause = 0.005
            while True:
                jobs = await self._take(b, n, 0.0)
                left = None if deadline is None else deadline - loop.time()
                if jobs or (left is not None and left <= 0):
                    return jobs
                await asyncio.sleep(pause if left is None else min(pause, left))
                pause = min(pause * 2, 0.1)
        if n == 1:
            job = await h.dequeue(timeout=timeout)
            return [] if job is None else [job]
        if Capability.BATCH in b.caps:
            return await h.dequeue_many(n, timeout=timeout)
        first = await h.dequeue(timeout=timeout)
        out = [] if first is None else [first]
        try:
            while out and len(out) < n and (job := await h.dequeue()) is not None:
                out.append(job)
        except asyncio.CancelledError:  # what we hold already must not be lost with us
            for job in out:
                await asyncio.shield(self._give_back(b, job))
            raise
        return out

    async def _dequeue(self, conn: _ServerProtocol, sid: int, b: _Backend,
                       p: dict[str, Any]) -> dict[str, Any]:
        timeout = check_timeout(_field(p, "timeout", (int, float, type(None))))
        n = _field(p, "max", (int,), 1)
        if not 1 <= n <= MAX_BATCH:
            raise InvalidArgument(f"max must be between 1 and {MAX_BATCH}")
        want_lease = _field(p, "lease", (bool,), True)
        jobs = await self._take(b, n, timeout)
        if not jobs:
            return {"jobs": []}
        keep = _fitting(jobs, conn.max_frame)
        if keep == len(jobs) and not conn.closed and (
                want_lease or Capability.ACK not in b.caps):
            # The common case never awaits from here, so it cannot be cancelled half-way.
            return {"jobs": [self._lease(conn, sid, b, job, want_lease) for job in jobs]}
        # Once taken, the jobs must reach the client or go back: a cancellation from here on
        # (the client's STOP_SENDING, a shutdown) lets this step finish, then returns the
        # leases of the response that will never be sent.
        step = asyncio.ensure_future(self._hand_out(conn, sid, b, jobs, keep, want_lease))
        try:
            return await asyncio.shield(step)
        except asyncio.CancelledError:
            step.add_done_callback(functools.partial(self._unsent_leases, conn))
            raise

    def _unsent_leases(self, conn: _ServerProtocol, step: asyncio.Future[dict[str, Any]]) -> None:
        if step.cancelled() or step.exception() is not None:
            return
        tokens = [j["lease"] for j in step.result()["jobs"] if j["lease"] is not None]
        if tokens:
            self._spawn(self._return_leases(conn, tokens, True))

    def _lease(self, conn: _ServerProtocol, sid: int, b: _Backend, job: Job,
               want_lease: bool) -> dict[str, Any]:
        token = None
        if want_lease and Capability.ACK in b.caps:
            token = secrets.token_urlsafe(18)
            self._leases[token] = _Lease(job, b, conn, sid)
            conn.leases.add(token)
            b.users += 1  # until the lease is settled or returned
        return job_to_wire(job, token)

    async def _hand_out(self, conn: _ServerProtocol, sid: int, b: _Backend, jobs: list[Job],
                        keep: int, want_lease: bool) -> dict[str, Any]:
        # Jobs beyond ``keep`` do not fit the client's frame limit: they go back.
        spare, jobs = jobs[keep:], jobs[:keep]
        if conn.closed:  # the client left while we waited: nothing may stay leased to it
            spare, jobs = spare + jobs, []
        for job in spare:
            await self._give_back(b, job)
        if not jobs and spare and not conn.closed:
            # Even the first job alone is too large for this client: say so (it stays queued).
            raise _too_large(f"the next job ({len(spare[0].body)}-byte body)",
                             _job_cost(spare[0]) + _RESPONSE_OVERHEAD, conn.max_frame)
        out = []
        for job in jobs:
            if not want_lease and Capability.ACK in b.caps:
                # The client declared no ACK: it gets at-most-once delivery.
                await b.fast.ack(job)
            out.append(self._lease(conn, sid, b, job, want_lease))
        return {"jobs": out}

    async def _give_back(self, b: _Backend, job: Job) -> None:
        """Return a job no client saw: without counting an attempt where the backend can."""
        with contextlib.suppress(UnifiedQError):
            if Capability.RELEASE in b.caps:
                await b.handle.release(job)
            elif Capability.ACK in b.caps:
                await b.handle.nack(job)
            else:  # already removed by the backend: put an equal job back
                await b.handle.enqueue(job.body, priority=job.priority,
                                       headers=dict(job.headers) or None)

    async def _settle(self, op: str, b: _Backend, p: dict[str, Any]) -> dict[str, Any]:
        token = _field(p, "lease", (str,))
        lease = self._leases.get(token)
        if lease is None:
            raise JobNotLeased("the job is not leased: it was settled already, its holder "
                               "disconnected, or the server restarted")
        if lease.job.queue != b.handle.name:
            raise WrongQueue(f"the job came from queue {lease.job.queue!r}")
        h, job = lease.backend.fast, lease.job
        try:
            if op == "extend_lease":
                await h.extend_lease(job, _field(p, "seconds", (int, float)))
                return {}
            if op == "ack":
                await h.ack(job)
            elif op == "release":
                # The backend's own gate answers UnsupportedOperation when it lacks RELEASE
                # (the hello did not offer it); the lease stays.
                await h.release(job)
            else:
                requeue = _field(p, "requeue", (bool,), True)
                delay = _field(p, "delay", (int, float, type(None)), None)
                await h.nack(job, requeue=requeue, delay=delay if delay else None)
        except JobNotLeased:
            self._forget(token)
            raise
        self._forget(token)
        return {}

    def _forget(self, token: str) -> _Lease | None:
        lease = self._leases.pop(token, None)
        if lease is not None:
            lease.conn.leases.discard(token)
            lease.backend.users -= 1
        return lease

    # -- leases of departed clients -----------------------------------------------------------
    def _release_soon(self, conn: _ServerProtocol) -> None:
        self._protocols.discard(conn)
        if conn.leases:
            # A departed client may have crashed on its jobs: they come back counted (nack),
            # as a lost lease would. A server shutdown, or a client that gave up on us while
            # we were frozen, is no job's failure: released.
            self._spawn(self._return_leases(conn, list(conn.leases),
                                            self.closing or conn.gave_up))

    def _return_stream(self, conn: _ServerProtocol, sid: int) -> None:
        tokens = [t for t in conn.leases
                  if (lease := self._leases.get(t)) is not None and lease.sid == sid]
        if tokens:  # the client never saw these jobs: back without counting an attempt
            self._spawn(self._return_leases(conn, tokens, True))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _return_leases(self, conn: _ServerProtocol, tokens: list[str],
                             release: bool) -> None:
        """Return the jobs of ``tokens``: released if ``release`` (and possible), else nacked."""
        for token in tokens:
            lease = self._leases.get(token)
            if lease is None:
                conn.leases.discard(token)
                continue
            try:
                h = lease.backend.handle
                if release and Capability.RELEASE in lease.backend.caps:
                    await h.release(lease.job)
                else:
                    await h.nack(lease.job)
            except JobNotLeased:
                pass  # expired and redelivered meanwhile: nothing to return
            except UnifiedQError as exc:
                log.warning("could not return job %s of %s: %s", lease.job.id, conn.peer, exc)
            finally:
                self._forget(token)  # only now may its handle be closed
        if tokens:
            log.info("returned %d leased job(s) of %s to their queues", len(tokens), conn.peer)

    # -- shutdown -----------------------------------------------------------------------------
    async def shutdown(self, drain_timeout: float | None = None) -> None:
        """Stop gracefully: refuse new requests, drain those in flight, return leases, close.

        Args:
            drain_timeout: Seconds to wait for requests in flight (default: the config's).
        """
        if self.closing:
            return
        self.closing = True
        wait = self.config.drain_timeout if drain_timeout is None else drain_timeout
        protos = list(self._protocols)
        for conn in protos:
            conn.interrupt_waits()  # a wait for jobs may be endless: end it with an error
        tasks = [t for conn in protos for t in conn.tasks()]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=wait)
            for t in pending:
                t.cancel()
            log.info("drained %d request(s) in flight, cancelled %d", len(done), len(pending))
        await asyncio.sleep(0.05)  # let the last responses leave
        for conn in protos:
            conn.close(ERR_SHUTDOWN, "server shutting down")
            self._release_soon(conn)
            conn.closed = True
        if self._releases:
            await asyncio.wait(list(self._releases), timeout=max(wait, 1.0))
        await asyncio.sleep(0.05)
        for listener in self._listeners:
            listener.close()
        for b in list(self._backends.values()):
            with contextlib.suppress(Exception):
                await b.handle.aclose()
        self._backends.clear()
        self._validated.clear()
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=max(wait, 1.0))


# -- command line -------------------------------------------------------------------------------
def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"--listen takes HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)  # no host: every interface, IPv4 and IPv6


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unifiedq serve",
        description="Serve a unifiedq backend over QUIC (TLS 1.3, client certificates).",
    )
    p.add_argument("--listen", type=_listen, default=("127.0.0.1", 4433), metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:4433; port 0 = any; ':PORT' = "
                        "every interface; a name is bound on every address it resolves to)")
    p.add_argument("--backend", default="memory://",
                   help="backend URL; {queue} marks where the queue name goes")
    p.add_argument("--cert", required=True, help="server certificate (PEM)")
    p.add_argument("--key", required=True, help="server private key (PEM)")
    p.add_argument("--client-ca", help="CA certificate(s) that sign client certificates (PEM)")
    p.add_argument("--token", help="bearer token clients must present (or UNIFIEDQ_TOKEN env)")
    p.add_argument("--insecure-no-client-cert-i-know-what-i-am-doing", action="store_true",
                   dest="no_client_cert",
                   help="accept clients without a certificate (local development only)")
    p.add_argument("--allow-client-option", action="append", default=[], metavar="NAME",
                   help="backend option clients may set with backend_options= (repeatable)")
    p.add_argument("--max-frame", type=int, default=DEFAULT_MAX_FRAME,
                   help="largest frame payload in bytes (default 16 MiB)")
    p.add_argument("--max-streams", type=int, default=1024,
                   help="requests one client may have open at once (default 1024)")
    p.add_argument("--max-queues", type=int, default=1024,
                   help="backend handles kept open at once; the least recently used idle one "
                        "is closed to make room (default 1024)")
    p.add_argument("--drain-timeout", type=float, default=10.0,
                   help="seconds to drain requests in flight on shutdown (default 10)")
    p.add_argument("--idle-timeout", type=float, default=60.0,
                   help="seconds of silence before a client counts as gone (default 60)")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return p


async def _amain(cfg: ServeConfig) -> int:
    server = JobServer(cfg)
    try:
        host, port = await server.start()
    except (UnifiedQError, OSError) as exc:
        print(f"unifiedq serve: cannot start: {exc}", file=sys.stderr)
        return 1
    mode = ("client certificates REQUIRED" if cfg.require_client_cert
            else "WARNING: client certificates NOT required")
    # Tests and scripts read this first line to learn the port.
    print(f"unifiedq serve: listening on quic://{host}:{port} backend={server.backend_scheme} "
          f"capabilities={'|'.join(server.capabilities.names())} ({mode})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (draining for up to %.1f s)", cfg.drain_timeout)
    await server.shutdown()
    print("unifiedq serve: stopped", flush=True)
    return 0


def serve_main(argv: list[str] | None = None) -> int:
    """Entry point of ``unifiedq serve``; returns the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("quic").setLevel(logging.WARNING)  # aioquic logs every handshake
    if args.no_client_cert:
        print("*" * 78 + "\nWARNING: --insecure-no-client-cert-i-know-what-i-am-doing: ANY client "
              "that can reach\nthis port may use the queues (only the token, if any, stands "
              "in the way).\n" + "*" * 78, file=sys.stderr, flush=True)
    try:
        cfg = ServeConfig(
            host=args.listen[0], port=args.listen[1], backend=args.backend, cert=args.cert,
            key=args.key, client_ca=args.client_ca, require_client_cert=not args.no_client_cert,
            token=args.token or os.environ.get("UNIFIEDQ_TOKEN") or None,
            max_frame=args.max_frame, max_streams=args.max_streams, max_queues=args.max_queues,
            allow_client_options=frozenset(args.allow_client_option),
            drain_timeout=args.drain_timeout, idle_timeout=args.idle_timeout,
        )
        parse_url(cfg.backend)
    except UnifiedQError as exc:
        print(f"unifiedq serve: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_amain(cfg))


if __name__ == "__main__":
    raise SystemExit(serve_main(sys.argv[1:]))
