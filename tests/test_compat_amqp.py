"""Pins each py-amqp internal that ``unifiedq/_compat/amqp.py`` uses, and the version caps.

One test per internal (numbered as in that module's docstring); each fails naming the
installed py-amqp version. No broker needed: py-amqp objects are built without connecting.
"""

from __future__ import annotations

import collections
import importlib.metadata
import inspect
import socket
import struct
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import amqp
import amqp.method_framing
import amqp.serialization
import amqp.transport
from packaging.requirements import Requirement

from unifiedq._compat import amqp as compat
from unifiedq.drivers.amqp.consuming import _ack_frame
from unifiedq.drivers.amqp.publishing import content_frames, method_frame

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def changed(what: str) -> str:
    return f"amqp {amqp.__version__}: {what} changed; update unifiedq/_compat/amqp.py"


def params(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


# -- the declared range -----------------------------------------------------------------------
def test_installed_versions_inside_declared_range() -> None:
    extra = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["amqp"]
    reqs = {r.name: r for r in map(Requirement, extra)}
    assert str(reqs["amqp"].specifier) == str(Requirement(f"amqp{compat.VERSIONS}").specifier), (
        f"pyproject's amqp extra {extra} and unifiedq/_compat/amqp.py's VERSIONS "
        f"{compat.VERSIONS!r} must declare the same py-amqp range"
    )
    assert reqs["kombu"].specifier, "cap kombu in pyproject's amqp extra"
    for name, req in reqs.items():
        version = importlib.metadata.version(name)
        assert req.specifier.contains(version, prereleases=True), (
            f"{name} {version} is outside the verified range {req}; run tests/test_amqp.py and "
            "tests/test_compat_amqp.py on it, then widen the range in pyproject.toml (and, "
            "for amqp, VERSIONS in unifiedq/_compat/amqp.py)"
        )


# -- 1. amqp.serialization.dumps --------------------------------------------------------------
def test_serialization_dumps_encodes_publish_arguments() -> None:
    assert callable(getattr(amqp.serialization, "dumps", None)), changed("serialization.dumps")
    assert params(amqp.serialization.dumps) == ["format", "values"], changed(
        "the signature of serialization.dumps(format, values)")
    # The format py-amqp's own basic_publish sends its arguments with.
    assert "'Bssbb'" in inspect.getsource(amqp.Channel), changed("basic.publish's format")
    # AMQP 0-9-1: reserved short 0, shortstr exchange, shortstr routing key, one bit octet.
    got = compat.publish_arguments("x", "q", mandatory=True, immediate=False)
    assert got == b"\x00\x00\x01x\x01q\x01", changed("the encoding of serialization.dumps")


# -- 2. Message._serialize_properties ---------------------------------------------------------
def test_message_serialize_properties() -> None:
    fn = getattr(amqp.Message, "_serialize_properties", None)
    assert callable(fn), changed("Message._serialize_properties")
    assert params(fn) == ["self"], changed("the signature of Message._serialize_properties()")
    # Flags delivery_mode (bit 12) and message_id (bit 7), then octet 2 and shortstr "m".
    got = compat.serialize_properties(amqp.Message(b"", delivery_mode=2, message_id="m"))
    assert got == b"\x10\x80\x02\x01m", changed("the encoding of Message._serialize_properties")


# -- 3. Connection.transport and transport.write ----------------------------------------------
def test_connection_transport_write() -> None:
    prop = inspect.getattr_static(amqp.Connection, "transport", None)
    assert isinstance(prop, property), changed("Connection.transport")
    for cls in (amqp.transport.TCPTransport, amqp.transport.SSLTransport):
        assert params(cls.write) == ["self", "s"], changed(f"{cls.__name__}.write(s)")
    written: list[bytes] = []
    conn = SimpleNamespace(transport=SimpleNamespace(write=written.append), bytes_sent=0)
    compat.raw_writer(conn)(b"frames")
    assert written == [b"frames"] and conn.bytes_sent == 1


# -- 4. Connection.bytes_sent -----------------------------------------------------------------
def test_bytes_sent_counts_writes_for_heartbeats() -> None:
    assert inspect.getattr_static(amqp.Connection, "bytes_sent", None) == 0, changed(
        "Connection.bytes_sent")
    assert "bytes_sent" in inspect.getsource(amqp.Connection.heartbeat_tick), changed(
        "heartbeat_tick's use of bytes_sent")
    # py-amqp's own frame writer counts one per write, as compat.raw_writer does.
    conn = SimpleNamespace(frame_max=4096, bytes_sent=0)
    transport = SimpleNamespace(write=lambda data: None)
    write_frame = amqp.method_framing.frame_writer(conn, transport)
    write_frame(1, 1, (60, 40), compat.publish_arguments("", "q", mandatory=True,
                                                         immediate=False), amqp.Message(b"x"))
    assert conn.bytes_sent == 1, changed("the frame writer's bytes_sent bookkeeping")


# -- 5. transport._read_buffer ----------------------------------------------------------------
def test_transport_read_buffer() -> None:
    transport = amqp.transport.TCPTransport("127.0.0.1:5672")  # no I/O before connect()
    assert getattr(transport, "_read_buffer", None) == b"", changed("transport._read_buffer")
    assert "_read_buffer" in inspect.getsource(amqp.transport.TCPTransport._read), changed(
        "TCPTransport._read's use of _read_buffer")
    assert "_read_buffer" in inspect.getsource(amqp.transport.SSLTransport._read), changed(
        "SSLTransport._read's use of _read_buffer")
    conn = SimpleNamespace(transport=transport)
    assert not compat.input_pending(conn)
    transport._read_buffer = b"\x01"
    assert compat.input_pending(conn)


# -- 6. Channel.events ------------------------------------------------------------------------
def test_channel_events_dispatch_confirms_and_returns() -> None:
    channel = amqp.Channel(amqp.Connection(), 1)  # no I/O before open()
    assert isinstance(getattr(channel, "events", None), collections.defaultdict), changed(
        "Channel.events")
    seen: list[tuple[Any, ...]] = []
    compat.on_publish_events(
        channel,
        on_ack=lambda tag, multiple: seen.append(("ack", tag, multiple)),
        on_nack=lambda tag, multiple: seen.append(("nack", tag, multiple)),
        on_return=lambda exc, x, rk, msg: seen.append(("return", x, rk, msg.body)),
    )
    # py-amqp's handlers of basic.ack, basic.nack and basic.return call them.
    channel._on_basic_ack(5, False)
    channel._on_basic_nack(6, True)
    channel._on_basic_return(312, "NO_ROUTE", "x", "q", amqp.Message(b"b"))
    assert seen == [("ack", 5, False), ("nack", 6, True), ("return", "x", "q", b"b")], changed(
        "the dispatch of Channel.events")


# -- 7. transport._quick_recv -----------------------------------------------------------------
def test_quick_recv_read_ahead_keeps_the_surplus() -> None:
    for cls, attr in ((amqp.transport.TCPTransport, "recv"), (amqp.transport.SSLTransport, "read")):
        assert f"self._quick_recv = self.sock.{attr}" in inspect.getsource(
            cls._setup_transport), changed(f"{cls.__name__}._setup_transport's _quick_recv")
        assert "recv = self._quick_recv" in inspect.getsource(cls._read), changed(
            f"{cls.__name__}._read's use of _quick_recv")
    a, b = socket.socketpair()
    with a, b:
        transport = amqp.transport.TCPTransport("127.0.0.1:5672")  # no I/O before connect()
        transport.sock = a
        transport._quick_recv = a.recv  # as _setup_transport does
        asked: list[int] = []
        real = a.recv

        def counting(n: int) -> bytes:
            asked.append(n)
            return real(n)

        transport._quick_recv = counting
        compat.read_ahead(SimpleNamespace(transport=transport), chunk=64)
        frames = [(1, 1, b"m" * 5), (2, 1, b"h" * 20), (3, 1, b"b" * 100)]
        b.sendall(b"".join(struct.pack(">BHI", t, c, len(p)) + p + b"\xce"
                           for t, c, p in frames))
        time.sleep(0.05)
        assert transport.read_frame() == frames[0], changed("read_frame with read-ahead")
        assert asked == [64], changed("_read's request size")  # one recv for several frames
        assert len(transport._read_buffer) == 64 - 13, changed("_read's surplus buffer")
        assert [transport.read_frame() for _ in range(2)] == frames[1:], changed(
            "read_frame with read-ahead")
        # Nine frame parts in three reads: the rest of the 100-byte payload (84 > 64 bytes
        # were missing), then a chunk for the end byte.
        assert asked == [64, 84, 64] and transport._read_buffer == b"", changed(
            "_read's surplus buffer")


def test_ack_frame_equals_py_amqp_basic_ack() -> None:
    for tag, multiple in ((1, False), (2**40 + 7, True)):
        written: list[bytes] = []
        conn = SimpleNamespace(frame_max=4096, bytes_sent=0)
        write_frame = amqp.method_framing.frame_writer(
            conn, SimpleNamespace(write=lambda data, out=written: out.append(bytes(data))))
        write_frame(1, 3, (60, 80), amqp.serialization.dumps("Lb", (tag, multiple)), None)
        assert _ack_frame(3, tag, multiple) == b"".join(written), changed("basic.ack frames")


# -- all of them: the driver's batch frames are the bytes py-amqp would write ------------------
def py_amqp_frames(frame_max: int, channel_id: int, args: bytes, msg: Any) -> bytes:
    written: list[bytes] = []
    conn = SimpleNamespace(frame_max=frame_max, bytes_sent=0)
    write_frame = amqp.method_framing.frame_writer(
        conn, SimpleNamespace(write=lambda data: written.append(bytes(data))))
    write_frame(1, channel_id, (60, 40), args, msg)
    return b"".join(written)


def test_publish_frames_equal_py_amqp_frames() -> None:
    frame_max = 4096
    bodies: list[bytes | str] = [b"", b"small", "h\u00e9llo", b"x" * (2 * frame_max + 5)]
    for body in bodies:
        def message(body: bytes | str = body) -> Any:
            return amqp.Message(body, delivery_mode=2, message_id="id-1", priority=3,
                                application_headers={"x-uq-attempt": 0, "k": "v"})

        args = compat.publish_arguments("ex", "q", mandatory=True, immediate=False)
        parts: list[bytes | memoryview] = [method_frame(7, "ex", "q")]
        content_frames(parts, 7, message(), frame_max - 8)
        assert b"".join(parts) == py_amqp_frames(frame_max, 7, args, message()), changed(
            f"the frames of basic.publish (body of {len(body)} chars)")
