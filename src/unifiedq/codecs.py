"""Codecs turn typed payloads into job bodies and back. JSON by default; never pickle.

Drivers move bytes. When an application wants to enqueue objects, it wraps a queue in
:class:`TypedQueue` with a codec::

    q = TypedQueue(connect("memory://emails"), JsonCodec())
    q.put({"to": "ada@example.com"})
    job, payload = q.get(timeout=1)
    q.queue.ack(job)
"""

from __future__ import annotations

import json
from typing import Any, Generic, Protocol, TypeVar

from ._errors import SerializationError
from ._job import Job
from ._protocol import Queue

__all__ = [
    "CONTENT_TYPE_HEADER", "JSON_CONTENT_TYPE", "Codec", "JsonCodec", "MsgpackCodec",
    "TypedQueue", "get_codec",
]

T = TypeVar("T")

#: Header that tells a driver what a body is. With the value :data:`JSON_CONTENT_TYPE`, a
#: driver whose queue has ``native_json = True`` (Faktory) stores the body as native data
#: (Faktory's ``args``) instead of opaque bytes; other drivers keep it as an ordinary header.
CONTENT_TYPE_HEADER = "content-type"
#: The :data:`CONTENT_TYPE_HEADER` value of a body that is UTF-8 JSON.
JSON_CONTENT_TYPE = "application/json"


class Codec(Protocol):
    """Encodes payloads to bytes and back."""

    #: Short name, stored in the ``content-type`` header by :class:`TypedQueue`.
    name: str

    def encode(self, obj: Any) -> bytes:
        """Return ``obj`` as bytes; raise SerializationError if it cannot be encoded."""
        ...

    def decode(self, data: bytes) -> Any:
        """Return the object encoded in ``data``; raise SerializationError if malformed."""
        ...


class JsonCodec:
    """UTF-8 JSON, compact separators. Only JSON types round-trip."""

    name = "json"

    def encode(self, obj: Any) -> bytes:
        """Encode ``obj`` as compact UTF-8 JSON."""
        try:
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"cannot encode {type(obj).__name__} as JSON: {exc}") \
                from exc

    def decode(self, data: bytes) -> Any:
        """Decode UTF-8 JSON."""
        try:
            return json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise SerializationError(f"job body is not valid JSON: {exc}") from exc


class MsgpackCodec:
    """MessagePack (needs the ``msgpack`` extra). Compact and fast; bytes round-trip."""

    name = "msgpack"

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError as exc:
            from ._errors import DriverUnavailable

            raise DriverUnavailable("MsgpackCodec needs msgpack: pip install "
                                    "'unifiedq[msgpack]'", extra="msgpack") from exc
        self._m = msgpack

    def encode(self, obj: Any) -> bytes:
        """Encode ``obj`` with msgpack."""
        try:
            return bytes(self._m.packb(obj, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"cannot encode {type(obj).__name__} as msgpack: {exc}") \
                from exc

    def decode(self, data: bytes) -> Any:
        """Decode msgpack data."""
        try:
            return self._m.unpackb(data, raw=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise SerializationError(f"job body is not valid msgpack: {exc}") from exc


def get_codec(name: str) -> Codec:
    """Return a codec by name: ``"json"`` or ``"msgpack"``."""
    if name == "json":
        return JsonCodec()
    if name == "msgpack":
        return MsgpackCodec()
    raise SerializationError(f"unknown codec {name!r}; use 'json' or 'msgpack'")


class TypedQueue(Generic[T]):
    """A queue of typed payloads over any blocking queue.

    Args:
        queue: The underlying queue.
        codec: How payloads become bytes (default JSON).
    """

    def __init__(self, queue: Queue, codec: Codec | None = None) -> None:
        self.queue = queue
        self.codec: Codec = codec or JsonCodec()

    def put(self, payload: T, **options: Any) -> str:
        """Encode and enqueue ``payload``; ``options`` are passed to ``enqueue``.

        With the JSON codec on a queue that stores JSON natively (``native_json`` is True:
        Faktory, where the payload becomes the job's ``args``), the header
        ``content-type: application/json`` is added unless ``headers`` already has a
        ``content-type``; on every other queue the call is passed through unchanged.

        Raises:
            SerializationError: ``payload`` cannot be encoded by the codec.
        """
        body = self.codec.encode(payload)
        if self.codec.name == "json" and getattr(self.queue, "native_json", False) is True:
            headers = dict(options.get("headers") or {})
            headers.setdefault(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE)
            options["headers"] = headers
        return self.queue.enqueue(body, **options)

    def get(self, *, timeout: float | None = 0.0) -> tuple[Job, T] | None:
        """Dequeue and decode the next job; return ``(job, payload)`` or None."""
        job = self.queue.dequeue(timeout=timeout)
        if job is None:
            return None
        payload: T = self.codec.decode(job.body)
        return job, payload

    def result(self, job_id: str, *, timeout: float | None = 0.0) -> Any:
        """Wait for job ``job_id``'s result (RESULT) and decode it with this codec.

        For results stored by a Worker given ``result_codec=`` with the same codec.

        Raises:
            JobFailed: The job failed for good.
            ResultTimeout: No result within ``timeout`` seconds.
            SerializationError: The result is not valid for the codec.
        """
        return self.codec.decode(self.queue.result(job_id, timeout=timeout))
