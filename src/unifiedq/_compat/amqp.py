"""The py-amqp internals that the ``amqp://`` driver uses, each behind one small function.

Verified range: py-amqp ``>=5.1.1,<5.5`` (:data:`VERSIONS`, the same cap as the ``amqp``
extra in ``pyproject.toml``). ``tests/test_compat_amqp.py`` pins every internal below with a
test that names the installed version when it fails; the full broker suite
(``tests/test_amqp.py``) ran on py-amqp 5.4.2 with kombu 5.7.0, and the pinning tests also on
py-amqp 5.1.1, 5.2.0 and 5.3.1 (internal 7 included). To allow a newer py-amqp, run both
test files on it, then raise the cap here and in ``pyproject.toml``.

Why the driver touches internals at all: it writes the ``basic.publish`` frames of a batch
itself, many messages per socket write, instead of one ``Channel.basic_publish`` (one
encode of the constant method frame and one write each) per message, which halves the
client's CPU time per message in a batch (``docs/drivers/amqp.md``, *Numbers*). The frame
layout comes from the AMQP 0-9-1 specification and stays in the driver
(``unifiedq/drivers/amqp/publishing.py``); what py-amqp must do for it is here.

Internals touched, exactly:

1. ``amqp.serialization.dumps(format, values)``: encodes the argument list of the
   ``basic.publish`` method frame (:func:`publish_arguments`), so the arguments are the bytes
   py-amqp's ``basic_publish`` sends.
2. ``amqp.Message._serialize_properties()``: encodes a message's properties for its content
   header frame (:func:`serialize_properties`), so the headers and properties on the wire are
   the ones py-amqp would send.
3. ``Connection.transport`` and its ``write(data)``: writes those frames to the socket,
   bypassing py-amqp's per-frame writer (:func:`raw_writer`).
4. ``Connection.bytes_sent``: the write counter behind py-amqp's heartbeat bookkeeping,
   which its own frame writer bumps once per write; :func:`raw_writer` does the same.
5. ``transport._read_buffer``: bytes py-amqp already read from the socket but has not parsed
   yet; :func:`input_pending` looks at it (and at TLS's own buffer) before the driver polls the
   socket, so a cheap ``poll()`` replaces py-amqp's raising ``drain_events(timeout=0)`` when
   nothing arrived.
6. ``Channel.events``: the callback sets through which py-amqp hands ``basic.ack``,
   ``basic.nack`` and ``basic.return`` to the application (kombu's ``Producer`` uses it
   too); :func:`on_publish_events` registers the driver's publisher-confirm callbacks there.
7. ``transport._quick_recv``: the socket read py-amqp's ``_read(n)`` calls until it has
   ``n`` bytes, keeping any surplus in ``_read_buffer`` (internal 5). py-amqp asks for
   exactly one frame part at a time (header, payload, end byte: nine ``recv`` system calls
   per delivered message); :func:`read_ahead` makes each call ask for a chunk instead, so a
   burst of prefetched deliveries costs one ``recv`` per chunk.

Everything else the driver uses is public API: py-amqp's ``Message`` (``properties``,
``delivery_info``, ``body``), its exceptions, ``Connection.drain_events``, ``frame_max`` and
``sock``, ``Connection(...)`` with its ``connect``, ``channel``, ``close``, ``collect`` and
``on_blocked``/``on_unblocked`` callbacks, and ``Channel``'s ``channel_id``, ``connection``,
``confirm_select``, ``basic_*``, ``exchange_declare``, ``queue_*``. The driver no longer
connects through kombu's ``Connection`` (its ``connect()`` retries once after a 2 s pause,
which doubled a deadline); no kombu internal is used, so there is no ``_compat/kombu.py``;
kombu is capped in ``pyproject.toml`` at the minors the broker suite ran on. The method id of
``basic.publish`` is the AMQP constant ``(60, 40)`` in the driver, no longer read from
``amqp.spec``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import amqp.serialization

__all__ = [
    "VERSIONS",
    "input_pending",
    "on_publish_events",
    "publish_arguments",
    "raw_writer",
    "read_ahead",
    "serialize_properties",
]

#: py-amqp versions this module is verified with (a PEP 440 specifier, as in pyproject.toml).
VERSIONS = ">=5.1.1,<5.5"


def publish_arguments(exchange: str, routing_key: str, *, mandatory: bool,
                      immediate: bool) -> bytes:
    """The argument list of a ``basic.publish`` method frame, as py-amqp encodes it.

    Internal 1: ``amqp.serialization.dumps`` with ``basic_publish``'s format ``"Bssbb"``
    (reserved short, exchange, routing key, mandatory and immediate bits).
    """
    return bytes(amqp.serialization.dumps(
        "Bssbb", (0, exchange, routing_key, mandatory, immediate)))


def serialize_properties(msg: Any) -> bytes:
    """The property flags and list of ``msg``'s content header frame (internal 2)."""
    return bytes(msg._serialize_properties())


def raw_writer(connection: Any) -> Callable[[bytes], None]:
    """A function writing bytes to ``connection``'s socket, as py-amqp's frame writer does.

    Internals 3 and 4: the transport's ``write`` (bound once, when this is called) and the
    ``bytes_sent`` counter, bumped once per write for py-amqp's heartbeat bookkeeping.
    """
    write = connection.transport.write

    def send(data: bytes) -> None:
        write(data)
        connection.bytes_sent += 1

    return send


def input_pending(connection: Any) -> bool:
    """Whether bytes already arrived that no ``poll()`` of the socket would report.

    Internal 5: py-amqp's ``transport._read_buffer`` (bytes read but not parsed yet); also
    a TLS socket's decrypted but unread bytes (public ``ssl`` API).
    """
    transport = connection.transport
    sock = transport.sock
    return bool(getattr(transport, "_read_buffer", b"") or (
        isinstance(sock, ssl.SSLSocket) and sock.pending()
    ))


def on_publish_events(
    channel: Any,
    *,
    on_ack: Callable[[int, bool], None],
    on_nack: Callable[[int, bool], None],
    on_return: Callable[[Any, str, str, Any], None],
) -> None:
    """Register publisher-confirm callbacks on a py-amqp channel (internal 6: ``events``).

    ``on_ack(delivery_tag, multiple)`` and ``on_nack(delivery_tag, multiple)`` get the
    broker's confirms; ``on_return(exc, exchange, routing_key, message)`` gets a message the
    broker could not route (``mandatory=True``).
    """
    events = channel.events
    events["basic_ack"].add(on_ack)
    events["basic_nack"].add(on_nack)
    events["basic_return"].add(on_return)


def read_ahead(connection: Any, chunk: int = 16384) -> None:
    """Make ``connection`` read its socket ``chunk`` bytes at a time (internal 7).

    py-amqp's ``_read(n)`` loops on ``_quick_recv(n - have)`` until it has ``n`` bytes and
    keeps whatever came beyond ``n`` in ``_read_buffer`` for the next read, so asking the
    socket for more is safe; a read still returns as soon as *some* bytes arrived. The chunk
    is kept small because py-amqp copies the rest of its buffer on every read.
    """
    transport = connection.transport
    recv = transport._quick_recv

    def recv_ahead(n: int) -> bytes:
        return bytes(recv(n if n > chunk else chunk))

    transport._quick_recv = recv_ahead
