"""The asynq TaskMessage decoder on arbitrary bytes: a TaskMessage or DecodeError, nothing else.

The decoder reads one-byte varints inline (it runs once per dequeued job); these tests pin
that the fast path agrees with the generic field reader and never escapes with another
exception (IndexError, ValueError from int parsing, ...) on truncated or hostile input.
"""

from __future__ import annotations

import random

import pytest

from unifiedq.drivers.redis import _proto


def _reference(data: bytes) -> _proto.TaskMessage:
    """Decode through the generic field list (the slower path the fast one replaced)."""
    msg = _proto.TaskMessage()
    try:
        for field, value in _proto._fields(data):
            if isinstance(value, bytes):
                if field == 2:
                    msg.payload = value
                elif field in _proto._STR:
                    setattr(msg, _proto._STR[field], value.decode())
                elif field == 15:
                    k = v = ""
                    for sub, sval in _proto._fields(value):
                        if isinstance(sval, bytes) and sub == 1:
                            k = sval.decode()
                        elif isinstance(sval, bytes) and sub == 2:
                            v = sval.decode()
                    msg.headers[k] = v
            elif field in _proto._I32:
                setattr(msg, _proto._I32[field], _proto._signed(value, 32))
            elif field in _proto._I64:
                setattr(msg, _proto._I64[field], _proto._signed(value, 64))
    except UnicodeDecodeError as exc:
        raise _proto.DecodeError(str(exc)) from exc
    return msg


def _random_msg(rng: random.Random) -> _proto.TaskMessage:
    def s() -> str:
        return "".join(rng.choice("abcé€\U0001f600") for _ in range(rng.choice((0, 1, 5, 200))))

    def i(bits: int) -> int:
        return rng.choice((0, 1, 127, 128, 300, 2**31 - 1, -1, -(2 ** (bits - 1)), 2**40)
                          if bits == 64 else (0, 1, 127, 128, 2**31 - 1, -1, -(2**31)))

    return _proto.TaskMessage(
        type=s(), payload=rng.randbytes(rng.choice((0, 64, 200))), id=s(), queue=s(),
        retry=i(32), retried=i(32), error_msg=s(), timeout=i(64), deadline=i(64),
        unique_key=s(), last_failed_at=i(64), retention=i(64), completed_at=i(64),
        group_key=s(), headers={s(): s() for _ in range(rng.choice((0, 1, 3)))})


def test_round_trip_of_random_messages() -> None:
    rng = random.Random(18)
    for _ in range(500):
        msg = _random_msg(rng)
        raw = _proto.encode(msg)
        assert _proto.decode(raw) == msg
        assert _reference(raw) == msg


@pytest.mark.parametrize("seed", range(4))
def test_mangled_bytes_decode_like_the_reference_or_raise_decode_error(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(1500):
        raw = bytearray(_proto.encode(_random_msg(rng)))
        how = rng.randrange(3)
        if how == 0 and raw:  # truncated anywhere
            raw = raw[: rng.randrange(len(raw))]
        elif how == 1 and raw:  # a few flipped bytes
            for _ in range(rng.randint(1, 3)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        else:  # noise
            raw = bytearray(rng.randbytes(rng.randrange(40)))
        data = bytes(raw)
        try:
            want: _proto.TaskMessage | None = _reference(data)
        except _proto.DecodeError:
            want = None
        if want is None:
            with pytest.raises(_proto.DecodeError):
                _proto.decode(data)
        else:
            assert _proto.decode(data) == want
