"""The quic:// frame codec: round trips, and hostile bytes only ever raise WireError."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest

pytest.importorskip("aioquic")

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from unifiedq import Job, JobNotLeased, ProtocolError, UnsupportedOperation
from unifiedq.drivers.quic._common import (
    error_from_wire,
    error_to_wire,
    job_from_wire,
    job_to_wire,
)
from unifiedq.drivers.quic.wire import (
    HEADER,
    KIND_ERROR,
    KIND_OK,
    KIND_REQUEST,
    MAX_DEPTH,
    FrameReader,
    FrameTooLarge,
    WireError,
    decode_frame,
    decode_value,
    encode_frame,
    encode_value,
)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1),
    st.floats(allow_nan=False), st.text(), st.binary(),
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=10), c, max_size=5),
    max_leaves=30,
)
payloads = st.dictionaries(st.text(max_size=10), values, max_size=8)


@given(values)
def test_value_roundtrip(v: Any) -> None:
    assert decode_value(encode_value(v)) == v


@given(st.floats(allow_nan=True))
def test_nan_roundtrip(x: float) -> None:
    y = decode_value(encode_value(x))
    assert (math.isnan(x) and math.isnan(y)) or x == y


@given(st.sampled_from([KIND_REQUEST, KIND_OK, KIND_ERROR]), payloads)
def test_frame_roundtrip_and_incremental_reader(kind: int, payload: dict[str, Any]) -> None:
    frame = encode_frame(kind, payload)
    assert decode_frame(frame) == (kind, payload)
    reader = FrameReader()
    for i in range(0, len(frame), 7):  # arbitrary chunking, as QUIC delivers it
        reader.feed(frame[i:i + 7])
    assert reader.complete
    assert reader.finish() == (kind, payload)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_wire_error(data: bytes) -> None:
    for decode in (decode_value, decode_frame):
        with contextlib.suppress(WireError):
            decode(data)
    reader = FrameReader(limit=1000)
    try:
        reader.feed(data)
        reader.finish()
    except WireError:
        pass


@given(payloads, st.data())
def test_every_truncation_is_refused(payload: dict[str, Any], data: st.DataObject) -> None:
    frame = encode_frame(KIND_REQUEST, payload)
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(WireError):
        decode_frame(frame[:cut])


@given(payloads, st.binary(min_size=1, max_size=20))
def test_trailing_bytes_are_refused(payload: dict[str, Any], extra: bytes) -> None:
    frame = encode_frame(KIND_REQUEST, payload)
    with pytest.raises(WireError):
        decode_frame(frame + extra)
    reader = FrameReader()
    with pytest.raises(WireError):
        reader.feed(frame + extra)


@given(payloads, st.data())
def test_single_byte_corruption_never_escapes(payload: dict[str, Any], data: st.DataObject) -> None:
    frame = bytearray(encode_frame(KIND_REQUEST, payload))
    pos = data.draw(st.integers(0, len(frame) - 1))
    frame[pos] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(WireError):
        decode_frame(bytes(frame))


def test_limit_is_enforced_from_the_header() -> None:
    reader = FrameReader(limit=100)
    with pytest.raises(FrameTooLarge):
        reader.feed(struct.pack(">2sBBI", b"UQ", 1, 1, 101))  # refused before any payload
    with pytest.raises(FrameTooLarge):
        encode_frame(KIND_OK, {"b": b"x" * 200}, limit=100)
    with pytest.raises(FrameTooLarge):
        decode_frame(struct.pack(">2sBBI", b"UQ", 1, 1, 1 << 31), limit=1 << 20)


def test_lying_counts_and_lengths_allocate_nothing() -> None:
    for body in (b"\x07\xff\xff\xff\xff", b"\x08\xff\xff\xff\xff", b"\x05\xff\xff\xff\xff",
                 b"\x06\x00\x00\x10\x00abc"):
        with pytest.raises(WireError):
            decode_value(body)


def test_map_running_out_of_bytes_midway() -> None:
    # The count passes the up-front check, but the first entry eats every byte.
    entry = b"\x05\x00\x00\x00\x01a" + b"\x06\x00\x00\x00\x01z"
    with pytest.raises(WireError):
        decode_value(b"\x08\x00\x00\x00\x02" + entry)
    for cut in range(len(entry)):
        with pytest.raises(WireError):
            decode_value(b"\x08\x00\x00\x00\x01" + entry[:cut])


def test_depth_and_types() -> None:
    deep: Any = []
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(WireError):
        encode_value(deep)
    nested = b"\x07\x00\x00\x00\x01" * (MAX_DEPTH + 1) + b"\x00"
    with pytest.raises(WireError):
        decode_value(nested)
    for bad in (object(), {1: 2}, 1 << 64, {"a": {1.5}}):
        with pytest.raises(WireError):
            encode_value(bad)
    with pytest.raises(WireError):  # duplicate key
        decode_value(b"\x08\x00\x00\x00\x02" + (b"\x05\x00\x00\x00\x01a\x00") * 2)
    with pytest.raises(WireError):  # bad UTF-8
        decode_value(b"\x05\x00\x00\x00\x01\xff")
    with pytest.raises(WireError):  # bad UTF-8 in a key, and in a map's string value
        decode_value(b"\x08\x00\x00\x00\x01\x05\x00\x00\x00\x01\xff\x00")
    with pytest.raises(WireError):
        decode_value(b"\x08\x00\x00\x00\x01\x05\x00\x00\x00\x01a\x05\x00\x00\x00\x01\xff")
    with pytest.raises(WireError):  # a key that is not a string
        decode_value(b"\x08\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00")
    with pytest.raises(WireError):  # lone surrogates have no UTF-8 form
        encode_value({"a": "\ud800"})
    with pytest.raises(WireError):  # payload must be a map
        decode_frame(struct.pack(">2sBBI", b"UQ", 1, 1, 1) + b"\x00")
    assert HEADER == 8


def test_errors_cross_by_name_only() -> None:
    err = error_from_wire(error_to_wire(JobNotLeased("gone")))
    assert type(err) is JobNotLeased and str(err) == "gone"
    err = error_from_wire(error_to_wire(UnsupportedOperation("no", capability="PEEK")))
    assert isinstance(err, UnsupportedOperation) and err.capability == "PEEK"
    # Not on the allow-list: never instantiated, whatever the peer says.
    for name in ("SystemExit", "os.system", "KeyboardInterrupt", "Exception", None, 5):
        assert type(error_from_wire({"type": name, "message": "x"})) is ProtocolError
    leaked = error_to_wire(RuntimeError("password=hunter2"))
    assert leaked["type"] == "BackendError" and "hunter2" not in leaked["message"]


@given(st.binary(), st.dictionaries(st.text(), st.text(), max_size=3),
       st.one_of(st.none(), st.integers(0, 9)), st.one_of(st.none(), st.text(min_size=1)))
def test_job_roundtrip(body: bytes, headers: dict[str, str], priority: int | None,
                       lease: str | None) -> None:
    job = Job("id-1", "q", body, 3, 1700000000.5, headers, priority, receipt=object())
    back = job_from_wire(decode_value(encode_value(job_to_wire(job, lease))), "q")
    assert back == job and back.receipt == lease


@given(values)
def test_job_from_garbage_is_protocol_error(v: Any) -> None:
    with contextlib.suppress(ProtocolError):
        job_from_wire(v, "q")
