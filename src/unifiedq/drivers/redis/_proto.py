"""A hand-written proto3 codec for asynq's ``TaskMessage`` (no protoc, no generated code).

The wire format follows ``internal/proto/asynq.proto`` of hibiken/asynq (package ``asynq``):

====  ==============  ===========================================================
 #    field           type
====  ==============  ===========================================================
 1    type            string
 2    payload         bytes
 3    id              string
 4    queue           string
 5    retry           int32
 6    retried         int32
 7    error_msg       string
 8    timeout         int64 (seconds, 0 = none)
 9    deadline        int64 (Unix seconds, 0 = none)
 10   unique_key      string
 11   last_failed_at  int64 (Unix seconds)
 12   retention       int64 (seconds)
 13   completed_at    int64 (Unix seconds)
 14   group_key       string
 15   headers         map<string, string> (asynq >= 0.26)
====  ==============  ===========================================================

Fields are written in field-number order with proto3 defaults omitted, as Go's
``proto.Marshal`` does; the decoder accepts any order and skips unknown fields.
"""

from __future__ import annotations

import dataclasses

__all__ = ["DecodeError", "TaskMessage", "decode", "encode"]


class DecodeError(ValueError):
    """The bytes are not a valid TaskMessage."""


@dataclasses.dataclass(slots=True)
class TaskMessage:
    """asynq's task message (see the module docstring for field numbers)."""

    type: str = ""
    payload: bytes = b""
    id: str = ""
    queue: str = ""
    retry: int = 0
    retried: int = 0
    error_msg: str = ""
    timeout: int = 0
    deadline: int = 0
    unique_key: str = ""
    last_failed_at: int = 0
    retention: int = 0
    completed_at: int = 0
    group_key: str = ""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


_U64 = (1 << 64) - 1


def _varint(value: int) -> bytes:
    if value < 0:  # int32/int64 negatives are sign-extended to 64 bits (10 bytes)
        value &= _U64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(tag: int, data: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(data)) + data


def _header_entry(key: str, value: str) -> bytes:
    # Map entries always carry both fields, even empty ones (as Go and C++ write them).
    return _len_field(0x7A, _len_field(0x0A, key.encode()) + _len_field(0x12, value.encode()))


def encode(msg: TaskMessage) -> bytes:
    """Serialise ``msg`` exactly as Go's ``proto.Marshal`` would (field order, no defaults)."""
    parts: list[bytes] = []
    if msg.type:
        parts.append(_len_field(0x0A, msg.type.encode()))
    if msg.payload:
        parts.append(_len_field(0x12, msg.payload))
    if msg.id:
        parts.append(_len_field(0x1A, msg.id.encode()))
    if msg.queue:
        parts.append(_len_field(0x22, msg.queue.encode()))
    for tag, num in ((0x28, msg.retry), (0x30, msg.retried)):
        if num:
            parts.append(bytes((tag,)) + _varint(num))
    if msg.error_msg:
        parts.append(_len_field(0x3A, msg.error_msg.encode()))
    for tag, num in ((0x40, msg.timeout), (0x48, msg.deadline)):
        if num:
            parts.append(bytes((tag,)) + _varint(num))
    if msg.unique_key:
        parts.append(_len_field(0x52, msg.unique_key.encode()))
    for tag, num in ((0x58, msg.last_failed_at), (0x60, msg.retention), (0x68, msg.completed_at)):
        if num:
            parts.append(bytes((tag,)) + _varint(num))
    if msg.group_key:
        parts.append(_len_field(0x72, msg.group_key.encode()))
    # Go sorts map keys when marshalling deterministically; sorting keeps our bytes stable.
    for key in sorted(msg.headers):
        parts.append(_header_entry(key, msg.headers[key]))
    return b"".join(parts)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint too long")


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _varint_at(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it (one-byte varints inline)."""
    if pos >= end:
        raise DecodeError("truncated varint")
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    return _read_varint(data, pos)


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    out: list[tuple[int, int | bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint_at(data, pos, end)
        field, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint_at(data, pos, end)
        elif wire == 2:
            n, pos = _varint_at(data, pos, end)
            if pos + n > end:
                raise DecodeError("truncated length-delimited field")
            value, pos = data[pos : pos + n], pos + n
        elif wire == 1:
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        else:
            raise DecodeError(f"unsupported wire type {wire}")
        if pos > end or field == 0:
            raise DecodeError("malformed field")
        out.append((field, value))
    return out


_STR = {1: "type", 3: "id", 4: "queue", 7: "error_msg", 10: "unique_key", 14: "group_key"}
_I32 = {5: "retry", 6: "retried"}
_I64 = {8: "timeout", 9: "deadline", 11: "last_failed_at", 12: "retention", 13: "completed_at"}


def decode(data: bytes) -> TaskMessage:
    """Parse a serialised TaskMessage.

    Raises:
        DecodeError: The bytes are not a well-formed TaskMessage.
    """
    # One pass, no intermediate field list, one-byte keys and lengths read inline: this runs
    # once per dequeued job, and was a fifth of a worker's CPU per job (see docs/worker.md).
    msg = TaskMessage()
    pos, end = 0, len(data)
    try:
        while pos < end:
            key = data[pos]
            if key < 0x80:
                pos += 1
            else:
                key, pos = _read_varint(data, pos)
            field, wire = key >> 3, key & 7
            value: int
            if wire == 2:
                n, pos = _varint_at(data, pos, end)
                stop = pos + n
                if stop > end:
                    raise DecodeError("truncated length-delimited field")
                raw = data[pos:stop]
                pos = stop
                if field == 2:
                    msg.payload = raw
                elif field in _STR:
                    setattr(msg, _STR[field], raw.decode())
                elif field == 15:
                    k = v = ""
                    for sub, sval in _fields(raw):
                        if isinstance(sval, bytes) and sub == 1:
                            k = sval.decode()
                        elif isinstance(sval, bytes) and sub == 2:
                            v = sval.decode()
                    msg.headers[k] = v
                elif field == 0:
                    raise DecodeError("malformed field")
                continue
            if wire == 0:
                value, pos = _varint_at(data, pos, end)
            elif wire == 1:
                value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
            elif wire == 5:
                value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
            else:
                raise DecodeError(f"unsupported wire type {wire}")
            if pos > end or field == 0:
                raise DecodeError("malformed field")
            if field in _I32:
                setattr(msg, _I32[field], _signed(value, 32))
            elif field in _I64:
                setattr(msg, _I64[field], _signed(value, 64))
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid UTF-8 in a string field: {exc}") from exc
    return msg

