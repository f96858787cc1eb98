"""The aioquic internals that ``quic://`` and ``unifiedq serve`` use, each behind one small name.

Verified range: aioquic ``>=1.6,<1.8`` (:data:`VERSIONS`, the same cap as the ``quic`` extra in
``pyproject.toml``). ``tests/test_compat.py`` pins every internal below (the ``test_aioquic_*``
tests), each failing with the installed version in its message; they and the QUIC suites
(``tests/test_quic.py``, ``tests/test_quic_wire.py``) pass on aioquic 1.7.2 and 1.6.0. Before
1.6, ``tls.Context._server_handle_certificate`` also took ``output_buf``: 1.2.0 and 1.5.0 fail
the pinning tests, and every handshake that sends a client certificate would fail there. To
allow a newer aioquic, run those tests on it, then raise the cap here and in
``pyproject.toml``.

Why internals at all: aioquic has no setting for the number of streams a peer may open, no
public way to have a server check client certificates (it can only request one, "for test
purposes"), and its protocol class processes and answers each datagram on its own, where the
driver reads every queued datagram first and answers them in one go.

Internals touched, exactly:

1. ``QuicConnectionProtocol._process_events()`` (:meth:`QuicProtocol.process_events`): hands
   the connection's pending events to the protocol (its waiters, its connection-id callbacks
   and ``quic_event_received``); called after reading a batch of datagrams.
2. ``QuicConnectionProtocol._timer`` and ``._transmit_task`` (:meth:`QuicProtocol.cancel_timers`):
   the loop handles of aioquic's loss/idle timer and of its deferred transmit, cancelled when
   the client gives a connection up, so that nothing runs on its closed socket.
3. ``QuicConnection._idle_timeout()`` (:func:`idle_timeout`): the idle timeout both peers
   agreed on (the smaller one); the client pings at a third of it.
4. ``QuicConnection._local_max_streams_bidi``, a ``Limit`` whose ``value`` and ``sent`` the
   server raises before the handshake (:func:`set_max_streams_bidi`), so its transport
   parameters grant that many streams instead of aioquic's fixed 128.
5. ``QuicConnection._initialize(peer_cid)``, wrapped on one connection
   (:func:`check_client_certificates`) to reach the ``tls.Context`` it creates before the
   context handles any handshake message.
6. That context's class, swapped for :class:`_ClientCertificateContext`, a subclass of
   ``tls.Context`` with the same state that overrides
   ``tls.Context._server_handle_certificate(input_buf)`` to run the server's check right
   after aioquic parsed the client's Certificate message, so a bad certificate aborts the
   handshake with a TLS alert before any stream opens.
7. ``tls.Context._request_client_certificate``, set True on that context: the server sends a
   CertificateRequest.
8. ``tls.Context._peer_certificate`` and ``._peer_certificate_chain``: the client's
   certificate and chain as parsed, given to the check, and read after the handshake
   (:func:`peer_certificate`) to name the client in logs.
9. ``QuicConnection._close_event`` and ``._state`` (:func:`peer_closed`): the peer's
   CONNECTION_CLOSE as soon as it arrives. aioquic reports it (``ConnectionTerminated``) only
   after the draining period of 3 PTOs, which a server thawed after a freeze computes from an
   RTT sample that includes the freeze (tens of seconds); the server returns the client's
   leases at once instead. Pinned in ``tests/test_faults_quic.py``.

Public API used where internals were used before: the protocols keep the ``QuicConnection``
they are constructed with (:attr:`QuicProtocol.quic`, was ``_quic``) and the running loop
(:attr:`QuicProtocol.loop`, was ``_loop``), and schedule their own deferred transmit with
``loop.call_soon`` (:meth:`QuicProtocol.transmit_soon`, was ``_transmit_soon()``); the bench's
raw aioquic server is a ``QuicServer`` opened with ``loop.create_datagram_endpoint``, whose
transport tells its port (was ``QuicServer._transport``). Everything else is public:
``QuicConfiguration``, ``QuicConnection``'s stream and datagram methods, ``QuicServer``,
``aioquic.quic.events``, ``tls.verify_certificate`` and the ``tls.Alert`` classes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from aioquic import tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from cryptography import x509

__all__ = [
    "VERSIONS",
    "CertificateCheck",
    "QuicProtocol",
    "check_client_certificates",
    "idle_timeout",
    "peer_certificate",
    "set_max_streams_bidi",
]

#: aioquic versions this module is verified with (a PEP 440 specifier, as in pyproject.toml).
VERSIONS = ">=1.6,<1.8"

#: ``check(certificate, chain)``: raise a ``tls.Alert`` to refuse the client's certificate
#: (``certificate`` is None when the client sent none).
CertificateCheck = Callable[[x509.Certificate | None, list[x509.Certificate]], None]


class QuicProtocol(QuicConnectionProtocol):
    """aioquic's connection protocol, with the members our protocols need under public names."""

    def __init__(self, quic: QuicConnection, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        #: The connection this protocol drives (the one given to the constructor).
        self.quic = quic
        #: The event loop it runs on (aioquic's constructor requires a running loop).
        self.loop = asyncio.get_running_loop()
        self._deferred_transmit: asyncio.Handle | None = None

    def transmit(self) -> None:
        """Send what is pending and re-arm the timer (aioquic's ``transmit``)."""
        self._deferred_transmit = None
        super().transmit()

    def transmit_soon(self) -> None:
        """Transmit at the next loop turn, once for all calls until then (public API only)."""
        if self._deferred_transmit is None:
            self._deferred_transmit = self.loop.call_soon(self.transmit)

    def process_events(self) -> None:
        """Dispatch the connection's pending events (internal 1)."""
        self._process_events()

    def cancel_timers(self) -> None:
        """Cancel every pending timer and deferred transmit of this protocol (internal 2)."""
        for handle in (self._timer, self._transmit_task, self._deferred_transmit):
            if handle is not None:
                handle.cancel()
        self._timer = None
        self._transmit_task = self._deferred_transmit = None


def idle_timeout(quic: QuicConnection) -> float:
    """The idle timeout both peers agreed on, in seconds (internal 3)."""
    return quic._idle_timeout()


def set_max_streams_bidi(quic: QuicConnection, streams: int) -> None:
    """Let the peer open ``streams`` bidirectional streams at once (internal 4).

    Call it before the handshake, so the transport parameters announce it.
    """
    limit = quic._local_max_streams_bidi
    limit.value = limit.sent = streams


class _ClientCertificateContext(tls.Context):
    """aioquic's TLS context, running a check on the client's certificate (internal 6)."""

    check_client_certificate: CertificateCheck

    def _server_handle_certificate(self, input_buf: Any) -> None:
        super()._server_handle_certificate(input_buf)
        self.check_client_certificate(self._peer_certificate, self._peer_certificate_chain)


def check_client_certificates(quic: QuicConnection, check: CertificateCheck) -> None:
    """Make the server connection ``quic`` request a client certificate and ``check`` it.

    Call it before the handshake (when the protocol is created). ``check`` runs as soon as the
    client's Certificate message is parsed, also when it carries no certificate; an alert it
    raises aborts the handshake (internals 5-8).
    """
    original = quic._initialize

    def initialize(peer_cid: bytes) -> None:
        original(peer_cid)
        ctx = quic.tls
        ctx.__class__ = _ClientCertificateContext  # same state, stricter certificate handling
        checking = cast(_ClientCertificateContext, ctx)
        checking.check_client_certificate = check
        checking._request_client_certificate = True

    quic._initialize = initialize  # type: ignore[method-assign]


def peer_certificate(quic: QuicConnection) -> x509.Certificate | None:
    """The certificate the peer presented (after the handshake), or None (internal 8)."""
    return quic.tls._peer_certificate


def peer_closed(quic: QuicConnection) -> events.ConnectionTerminated | None:
    """The peer's CONNECTION_CLOSE if one arrived (draining), else None (internal 9)."""
    if quic._state is not QuicConnectionState.DRAINING:
        return None
    return quic._close_event
