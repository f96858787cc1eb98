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
    """A frame announces (or carries) more payload than the receiver's limit.

    Attributes:
        size: The payload size in bytes.
        limit: The limit in bytes.
    """

    def __init__(self, message: str, *, size: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


# -- values -------------------------------------------------------------------------------------
# The codec runs twice per request on each side, so its hot paths are written flat: scalars
# inside maps and lists are handled in the container's loop instead of a call per value, map
# keys (a handful of field names) are encoded once and cached, and decoding slices ``bytes``
# directly (no memoryview hops, no copy of the payload out of the frame).

_pack_len = struct.Struct(">BI").pack
_pack_i64 = struct.Struct(">Bq").pack
_pack_f64 = struct.Struct(">Bd").pack
_unpack_u32 = _U32.unpack_from
_unpack_i64 = _I64.unpack_from
_unpack_f64 = _F64.unpack_from

#: Encoded map keys (tag, length, UTF-8); bounded so that peers' keys cannot grow it forever.
_KEYS: dict[str, bytes] = {}
_KEYS_MAX = 256


def encode_value(value: object) -> bytes:
    """Encode ``value`` (None, bool, int, float, str, bytes, list/tuple, str-keyed mapping).

    Raises:
        WireError: The value (or something inside it) cannot be encoded.
    """
    out = bytearray()
    _enc_into(value, out)
    return bytes(out)


def _enc_into(value: object, out: bytearray) -> None:
    try:
        if type(value) is dict:
            _enc_map(value, out, 0)
        else:
            _enc(value, out, 0)
    except UnicodeEncodeError as exc:  # a str with lone surrogates has no UTF-8 form
        raise WireError(f"a string cannot be encoded as UTF-8: {exc.reason}") from None


def _key(key: str) -> bytes:
    data = key.encode("utf-8")
    enc = _pack_len(_T_STR, len(data)) + data
    if len(_KEYS) < _KEYS_MAX and len(data) <= 64:
        _KEYS[key] = enc
    return enc


def _enc_map(m: Mapping[str, Any], out: bytearray, depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise WireError(f"values nest deeper than {MAX_DEPTH}")
    out += _pack_len(_T_MAP, len(m))
    keys = _KEYS
    for key, v in m.items():
        if type(key) is not str:
            raise WireError(f"map keys must be str, not {type(key).__name__}")
        out += keys.get(key) or _key(key)
        # The common scalars inline (exact types; bool before int); the rest via _enc.
        t = type(v)
        if t is str:
            data = v.encode("utf-8")
            out += _pack_len(_T_STR, len(data))
            out += data
        elif t is bytes:
            out += _pack_len(_T_BYTES, len(v))
            out += v
        elif v is None:
            out.append(_T_NONE)
        elif t is int and _I64_MIN <= v <= _I64_MAX:
            out += _pack_i64(_T_INT, v)
        else:
            _enc(v, out, depth + 1)


def _enc(v: object, out: bytearray, depth: int) -> None:
    # Exact-type checks first (the common case, and bool before int); subclasses and other
    # bytes-like or mapping types take the slower isinstance path below.
    t = type(v)
    if t is str:
        data = v.encode("utf-8")  # type: ignore[attr-defined]
        out += _pack_len(_T_STR, len(data))
        out += data
    elif t is bytes:
        out += _pack_len(_T_BYTES, len(v))  # type: ignore[arg-type]
        out += v  # type: ignore[arg-type]
    elif v is None:
        out.append(_T_NONE)
    elif t is bool:
        out.append(_T_TRUE if v else _T_FALSE)
    elif t is int:
        if not _I64_MIN <= v <= _I64_MAX:  # type: ignore[operator]
            raise WireError(f"integer {v} does not fit in 64 bits")
        out += _pack_i64(_T_INT, v)
    elif t is float:
        out += _pack_f64(_T_FLOAT, v)
    elif t is dict or isinstance(v, Mapping):
        _enc_map(v, out, depth)  # type: ignore[arg-type]
    elif t is list or isinstance(v, list | tuple):
        if depth >= MAX_DEPTH:
            raise WireError(f"values nest deeper than {MAX_DEPTH}")
        out += _pack_len(_T_LIST, len(v))  # type: ignore[arg-type]
        for item in v:  # type: ignore[attr-defined]
            if type(item) is str:
                data = item.encode("utf-8")
                out += _pack_len(_T_STR, len(data))
                out += data
            elif type(item) is bytes:
                out += _pack_len(_T_BYTES, len(item))
                out += item
            else:
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


def decode_value(data: bytes | bytearray | memoryview) -> Any:
    """Decode one value that spans all of ``data``.

    Raises:
        WireError: The bytes are not exactly one well-formed value.
    """
    if type(data) is not bytes:
        data = bytes(data)
    end = len(data)
    value, pos = _dec(data, 0, end, 0)
    if pos != end:
        raise WireError(f"{end - pos} trailing bytes after the value")
    return value


def _short(pos: int, n: int, have: int) -> WireError:
    return WireError(f"truncated value: need {n} bytes at offset {pos}, have {have}")


_CONSTANTS = (None, False, True)


def _dec(data: bytes, pos: int, end: int, depth: int) -> tuple[Any, int]:
    """Decode the value at ``pos`` of ``data[:end]``; return it and the offset after it."""
    if pos >= end:
        raise _short(pos, 1, 0)
    tag = data[pos]
    pos += 1
    if tag in (_T_STR, _T_BYTES):
        if pos + 4 > end:
            raise _short(pos, 4, end - pos)
        stop = pos + 4 + _unpack_u32(data, pos)[0]
        if stop > end:
            raise _short(pos + 4, stop - pos - 4, end - pos - 4)
        if tag == _T_BYTES:
            return data[pos + 4:stop], stop
        try:
            return data[pos + 4:stop].decode("utf-8"), stop
        except UnicodeDecodeError:
            raise WireError(f"invalid UTF-8 in a string at offset {pos + 4}") from None
    if tag <= _T_TRUE:
        return _CONSTANTS[tag], pos
    if tag in (_T_INT, _T_FLOAT):
        if pos + 8 > end:
            raise _short(pos, 8, end - pos)
        return (_unpack_i64 if tag == _T_INT else _unpack_f64)(data, pos)[0], pos + 8
    if tag != _T_LIST and tag != _T_MAP:
        raise WireError(f"unknown value tag 0x{tag:02x} at offset {pos - 1}")
    if depth >= MAX_DEPTH:
        raise WireError(f"values nest deeper than {MAX_DEPTH}")
    if pos + 4 > end:
        raise _short(pos, 4, end - pos)
    count = _unpack_u32(data, pos)[0]
    pos += 4
    # Every element takes at least one byte (six for a map entry: a key's tag and length):
    # a count larger than the bytes left is a lie, refused before any allocation.
    if count * (6 if tag == _T_MAP else 1) > end - pos:
        raise WireError(f"count {count} at offset {pos - 4} exceeds the bytes left")
    depth += 1
    if tag == _T_LIST:
        items = []
        for _ in range(count):
            item, pos = _dec(data, pos, end, depth)
            items.append(item)
        return items, pos
    mapping: dict[str, Any] = {}
    for _ in range(count):
        # The key, inline: always a string.
        if pos + 5 > end:
            raise _short(pos, 5, end - pos)
        if data[pos] != _T_STR:
            raise WireError(f"map keys must be strings (offset {pos})")
        stop = pos + 5 + _unpack_u32(data, pos + 1)[0]
        if stop > end:
            raise _short(pos + 5, stop - pos - 5, end - pos - 5)
        try:
            key = data[pos + 5:stop].decode("utf-8")
        except UnicodeDecodeError:
            raise WireError(f"invalid UTF-8 in a map key at offset {pos + 5}") from None
        if key in mapping:
            raise WireError(f"duplicate map key {key!r}")
        # The value: strings, bytes and None inline, the rest by recursion.
        if stop < end and ((vt := data[stop]) == _T_BYTES or vt == _T_STR):
            pos = stop + 5
            if pos > end:
                raise _short(stop + 1, 4, end - stop - 1)
            vstop = pos + _unpack_u32(data, stop + 1)[0]
            if vstop > end:
                raise _short(pos, vstop - pos, end - pos)
            if vt == _T_BYTES:
                mapping[key] = data[pos:vstop]
            else:
                try:
                    mapping[key] = data[pos:vstop].decode("utf-8")
                except UnicodeDecodeError:
                    raise WireError(f"invalid UTF-8 in a string at offset {pos}") from None
            pos = vstop
        elif stop < end and data[stop] == _T_NONE:
            mapping[key] = None
            pos = stop + 1
        else:
            mapping[key], pos = _dec(data, stop, end, depth)
    return mapping, pos


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
    # Encode after a placeholder header and patch the length in: one buffer, one copy out.
    out = bytearray(_HDR_PREFIX[kind])
    _enc_into(payload, out)
    n = len(out) - HEADER
    if n > limit:
        raise FrameTooLarge(f"frame payload is {n} bytes; the limit is {limit}", size=n,
                            limit=limit)
    _U32.pack_into(out, 4, n)
    return bytes(out)


_HDR_PREFIX = {k: _HDR.pack(MAGIC, VERSION, k, 0) for k in _KINDS}


def _parse_header(data: bytes | bytearray | memoryview, limit: int) -> tuple[int, int]:
    magic, version, kind, length = _HDR.unpack_from(data, 0)
    if magic != MAGIC:
        raise WireError("bad magic: not a unifiedq frame")
    if version != VERSION:
        raise WireError(f"unsupported wire version {version}; this peer speaks {VERSION}")
    if kind not in _KINDS:
        raise WireError(f"unknown frame kind {kind}")
    if length > limit:
        raise FrameTooLarge(f"frame announces {length} payload bytes; the limit is {limit}",
                            size=length, limit=limit)
    return kind, length


def decode_frame(data: bytes | bytearray | memoryview, *,
                 limit: int = DEFAULT_MAX_FRAME) -> tuple[int, dict[str, Any]]:
    """Decode one complete frame (header and payload, nothing more).

    Returns:
        ``(kind, payload)``; the payload is always a dict.

    Raises:
        FrameTooLarge: The announced length exceeds ``limit``.
        WireError: Anything else is malformed (truncated, trailing bytes, bad value).
    """
    if type(data) is not bytes:
        data = bytes(data)
    end = len(data)
    if end < HEADER:
        raise WireError(f"truncated frame: {end} bytes, the header alone is {HEADER}")
    kind, length = _parse_header(data, limit)
    if end - HEADER != length:
        raise WireError(f"frame announces {length} payload bytes but carries {end - HEADER}")
    if end == HEADER or data[HEADER] != _T_MAP:
        raise WireError("a frame's payload must be a map")
    payload, pos = _dec(data, HEADER, end, 0)
    if pos != end:
        raise WireError(f"{end - pos} trailing bytes after the payload")
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
        # The first chunk is kept as it came (usually it is the whole frame: no copy); a
        # second one turns the buffer into a bytearray.
        self._buf: bytes | bytearray = b""
        self._length: int | None = None

    def feed(self, data: bytes) -> None:
        """Add bytes received on the stream.

        Raises:
            WireError: The header is malformed or more bytes came than it announced.
        """
        buf = self._buf
        if not buf:
            self._buf = buf = bytes(data)
        else:
            if type(buf) is bytes:
                self._buf = buf = bytearray(buf)
            buf += data
        if self._length is None and len(buf) >= HEADER:
            self._length = _parse_header(buf, self.limit)[1]
        if self._length is not None and len(buf) > HEADER + self._length:
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
        return decode_frame(self._buf, limit=self.limit)
