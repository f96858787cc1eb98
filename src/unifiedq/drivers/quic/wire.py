"""The unifiedq QUIC wire format: versioned, length-prefixed frames with hard size limits.

One request and one response travel on each client-initiated bidirectional QUIC stream. Each
direction carries exactly one frame and then ends the stream (FIN)::

    offset  size  field
    0       2     magic  b"UQ"
    2       1     version (1)
    3       1     kind: 1 = request, 2 = ok response, 3 = error response
    4       4     payload length N, unsigned big-endian; N <= the receiver's frame limit
    8       N     payload: one encoded *map* (see below)

Payload values use a small self-describing encoding (a strict subset of what msgpack can say,
written out here so the format is fully specified and fuzzable; nothing is ever unpickled)::

    0x00 None   0x01 False   0x02 True
    0x03 int    8 bytes, signed big-endian
    0x04 float  8 bytes, IEEE 754 binary64 big-endian
    0x05 str    u32 length + UTF-8 bytes
    0x06 bytes  u32 length + raw bytes
    0x07 list   u32 count + count values
    0x08 map    u32 count + count (str key, value) pairs; keys are unique

Limits enforced while decoding, before anything is allocated: the frame length against the
receiver's limit, every length and count against the bytes actually left, nesting depth
(:data:`MAX_DEPTH`), and no trailing bytes. Any violation raises :class:`WireError`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER",
    "KIND_ERROR",
    "KIND_OK",
    "KIND_REQUEST",
    "MAGIC",
    "MAX_DEPTH",
    "VERSION",
    "FrameReader",
    "FrameTooLarge",
    "WireError",
    "decode_frame",
    "decode_value",
    "encode_frame",
    "encode_value",
]

MAGIC = b"UQ"
VERSION = 1
KIND_REQUEST = 1
KIND_OK = 2
KIND_ERROR = 3
_KINDS = (KIND_REQUEST, KIND_OK, KIND_ERROR)

#: Size of the fixed frame header in bytes.
HEADER = 8
#: Default hard limit of a frame's payload (16 MiB); both peers enforce their own limit.
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
#: Deepest nesting of lists/maps accepted.
MAX_DEPTH = 8

_HDR = struct.Struct(">2sBBI")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")
_U32 = struct.Struct(">I")
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1

_T_NONE, _T_FALSE, _T_TRUE, _T_INT, _T_FLOAT, _T_STR, _T_BYTES, _T_LIST, _T_MAP = range(9)


class WireError(ValueError):
    """A frame or value violates the wire format."""


class FrameTooLarge(WireError):
    """A frame announces (or carries) more payload than the receiver's limit."""


# -- values -------------------------------------------------------------------------------------
def encode_value(value: object) -> bytes:
    """Encode ``value`` (None, bool, int, float, str, bytes, list/tuple, str-keyed mapping).

    Raises:
        WireError: The value (or something inside it) cannot be encoded.
    """
    out = bytearray()
    _enc(value, out, 0)
    return bytes(out)


def _enc(v: object, out: bytearray, depth: int) -> None:
    # Exact-type checks first (the common case, and bool before int); subclasses and other
    # bytes-like or mapping types take the slower isinstance path below.
    t = type(v)
    if t is str:
        data = v.encode("utf-8")  # type: ignore[attr-defined]
        out += _TAG_LEN_STR(len(data))
        out += data
    elif t is bytes:
        out += _TAG_LEN_BYTES(len(v))  # type: ignore[arg-type]
        out += v  # type: ignore[arg-type]
    elif v is None:
        out.append(_T_NONE)
    elif t is bool:
        out.append(_T_TRUE if v else _T_FALSE)
    elif t is int:
        if not _I64_MIN <= v <= _I64_MAX:  # type: ignore[operator]
            raise WireError(f"integer {v} does not fit in 64 bits")
        out += _TAG_I64(_T_INT, v)
    elif t is float:
        out += _TAG_F64(_T_FLOAT, v)
    elif isinstance(v, Mapping):
        if depth >= MAX_DEPTH:
            raise WireError(f"values nest deeper than {MAX_DEPTH}")
        out += _TAG_LEN(_T_MAP, len(v))
        for key, item in v.items():
            if type(key) is not str:
                raise WireError(f"map keys must be str, not {type(key).__name__}")
            _enc(key, out, depth + 1)
            _enc(item, out, depth + 1)
    elif isinstance(v, list | tuple):
        if depth >= MAX_DEPTH:
            raise WireError(f"values nest deeper than {MAX_DEPTH}")
        out += _TAG_LEN(_T_LIST, len(v))
        for item in v:
            _enc(item, out, depth + 1)
    elif isinstance(v, bool):  # pragma: no cover - bool cannot be subclassed
        out.append(_T_TRUE if v else _T_FALSE)
    elif isinstance(v, int):
        _enc(int(v), out, depth)
    elif isinstance(v, float):
        _enc(float(v), out, depth)
    elif isinstance(v, str):
        _enc(str(v), out, depth)
    elif isinstance(v, bytes | bytearray | memoryview):
        _enc(bytes(v), out, depth)
    else:
        raise WireError(f"cannot encode a {type(v).__name__}")


_TAG_LEN = struct.Struct(">BI").pack
_TAG_I64 = struct.Struct(">Bq").pack
_TAG_F64 = struct.Struct(">Bd").pack


def _TAG_LEN_STR(n: int) -> bytes:  # noqa: N802 - reads like the constants above
    return _TAG_LEN(_T_STR, n)


def _TAG_LEN_BYTES(n: int) -> bytes:  # noqa: N802
    return _TAG_LEN(_T_BYTES, n)


def decode_value(data: bytes) -> Any:
    """Decode one value that spans all of ``data``.

    Raises:
        WireError: The bytes are not exactly one well-formed value.
    """
    view = memoryview(data)
    value, pos = _dec(view, 0, 0)
    if pos != len(view):
        raise WireError(f"{len(view) - pos} trailing bytes after the value")
    return value


def _short(pos: int, n: int, have: int) -> WireError:
    return WireError(f"truncated value: need {n} bytes at offset {pos}, have {have}")


def _dec(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    end = len(view)
    if pos >= end:
        raise _short(pos, 1, 0)
    tag = view[pos]
    pos += 1
    if tag in (_T_STR, _T_BYTES):
        if pos + 4 > end:
            raise _short(pos, 4, end - pos)
        (n,) = _U32.unpack_from(view, pos)
        pos += 4
        if pos + n > end:
            raise _short(pos, n, end - pos)
        raw = bytes(view[pos:pos + n])
        if tag == _T_BYTES:
            return raw, pos + n
        try:
            return raw.decode("utf-8"), pos + n
        except UnicodeDecodeError as exc:
            raise WireError(f"invalid UTF-8 in a string at offset {pos}") from exc
    if tag == _T_NONE:
        return None, pos
    if tag == _T_FALSE:
        return False, pos
    if tag == _T_TRUE:
        return True, pos
    if tag in (_T_INT, _T_FLOAT):
        if pos + 8 > end:
            raise _short(pos, 8, end - pos)
        return (_I64 if tag == _T_INT else _F64).unpack_from(view, pos)[0], pos + 8
    if tag in (_T_LIST, _T_MAP):
        if depth >= MAX_DEPTH:
            raise WireError(f"values nest deeper than {MAX_DEPTH}")
        if pos + 4 > end:
            raise _short(pos, 4, end - pos)
        (count,) = _U32.unpack_from(view, pos)
        pos += 4
        # Every element takes at least one byte (two for a map entry): a count larger than
        # the bytes left is a lie, refused before any allocation.
        if count * (2 if tag == _T_MAP else 1) > end - pos:
            raise WireError(f"count {count} at offset {pos - 4} exceeds the bytes left")
        if tag == _T_LIST:
            items = []
            for _ in range(count):
                item, pos = _dec(view, pos, depth + 1)
                items.append(item)
            return items, pos
        mapping: dict[str, Any] = {}
        for _ in range(count):
            key, pos = _dec(view, pos, depth + 1)
            if type(key) is not str:
                raise WireError("map keys must be strings")
            if key in mapping:
                raise WireError(f"duplicate map key {key!r}")
            mapping[key], pos = _dec(view, pos, depth + 1)
        return mapping, pos
    raise WireError(f"unknown value tag 0x{tag:02x} at offset {pos - 1}")


# -- frames -------------------------------------------------------------------------------------
def encode_frame(kind: int, payload: Mapping[str, Any], *, limit: int = DEFAULT_MAX_FRAME) -> bytes:
    """Encode one frame.

    Args:
        kind: :data:`KIND_REQUEST`, :data:`KIND_OK` or :data:`KIND_ERROR`.
        payload: A str-keyed mapping.
        limit: Refuse to build a payload larger than this.

    Raises:
        FrameTooLarge: The encoded payload exceeds ``limit``.
        WireError: The payload cannot be encoded.
    """
    if kind not in _KINDS:
        raise WireError(f"unknown frame kind {kind}")
    body = encode_value(payload)
    if len(body) > limit:
        raise FrameTooLarge(f"frame payload is {len(body)} bytes; the limit is {limit}")
    return _HDR.pack(MAGIC, VERSION, kind, len(body)) + body


def _parse_header(data: bytes | bytearray | memoryview, limit: int) -> tuple[int, int]:
    magic, version, kind, length = _HDR.unpack_from(data, 0)
    if magic != MAGIC:
        raise WireError("bad magic: not a unifiedq frame")
    if version != VERSION:
        raise WireError(f"unsupported wire version {version}; this peer speaks {VERSION}")
    if kind not in _KINDS:
        raise WireError(f"unknown frame kind {kind}")
    if length > limit:
        raise FrameTooLarge(f"frame announces {length} payload bytes; the limit is {limit}")
    return kind, length


def decode_frame(data: bytes, *, limit: int = DEFAULT_MAX_FRAME) -> tuple[int, dict[str, Any]]:
    """Decode one complete frame (header and payload, nothing more).

    Returns:
        ``(kind, payload)``; the payload is always a dict.

    Raises:
        FrameTooLarge: The announced length exceeds ``limit``.
        WireError: Anything else is malformed (truncated, trailing bytes, bad value).
    """
    if len(data) < HEADER:
        raise WireError(f"truncated frame: {len(data)} bytes, the header alone is {HEADER}")
    kind, length = _parse_header(data, limit)
    if len(data) - HEADER != length:
        raise WireError(f"frame announces {length} payload bytes but carries "
                        f"{len(data) - HEADER}")
    payload = decode_value(bytes(memoryview(data)[HEADER:]))
    if not isinstance(payload, dict):
        raise WireError("a frame's payload must be a map")
    return kind, payload


class FrameReader:
    """Accumulates one stream's bytes and checks the limit as soon as the header is in.

    Feed data as it arrives; :meth:`feed` raises :class:`FrameTooLarge` the moment the header
    announces too much (or more bytes arrive than announced), so a peer cannot make us buffer
    more than ``limit + HEADER`` bytes.
    """

    __slots__ = ("_buf", "_length", "limit")

    def __init__(self, limit: int = DEFAULT_MAX_FRAME) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._length: int | None = None

    def feed(self, data: bytes) -> None:
        """Add bytes received on the stream.

        Raises:
            WireError: The header is malformed or more bytes came than it announced.
        """
        self._buf += data
        if self._length is None and len(self._buf) >= HEADER:
            self._length = _parse_header(self._buf, self.limit)[1]
        if self._length is not None and len(self._buf) > HEADER + self._length:
            raise WireError("more bytes on the stream than the frame announced")

    @property
    def buffered(self) -> int:
        """Bytes held so far."""
        return len(self._buf)

    @property
    def complete(self) -> bool:
        """True once the whole announced frame has arrived."""
        return self._length is not None and len(self._buf) == HEADER + self._length

    def finish(self) -> tuple[int, dict[str, Any]]:
        """Decode the frame once the stream ended.

        Raises:
            WireError: The stream ended before the frame was complete, or it is malformed.
        """
        return decode_frame(bytes(self._buf), limit=self.limit)
