"""What client and server agree on above the frame codec: verbs, capabilities, jobs, errors."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from ... import _errors
from ..._capabilities import Capability
from ..._errors import ProtocolError, UnifiedQError
from ..._job import Job

__all__ = [
    "ALPN",
    "CARRIED",
    "ERR_AUTH",
    "ERR_CANCELLED",
    "ERR_PROTOCOL",
    "ERR_SHUTDOWN",
    "ERR_SILENT",
    "GUARANTEED",
    "OPS",
    "QUEUE_NAME",
    "caps_from_names",
    "error_from_wire",
    "error_to_wire",
    "exposed",
    "job_from_wire",
    "job_to_wire",
]

#: The ALPN protocol id: both peers refuse a QUIC connection that does not speak it.
ALPN = "unifiedq/1"

#: QUIC application error codes (stream resets, connection closes). Large values so they are
#: never mistaken for QUIC transport codes (0x0-0x1ff) in a ConnectionTerminated event.
ERR_PROTOCOL = 0x55510001
ERR_AUTH = 0x55510002
ERR_SHUTDOWN = 0x55510003
ERR_CANCELLED = 0x55510004
#: A client closes with this when the server went silent for most of the idle timeout: the
#: server (once it runs again) cancels that connection's requests and releases its leases.
ERR_SILENT = 0x55510005

#: Request verbs of wire version 1. ``release`` came later within version 1: a server that
#: offers it lists RELEASE in its hello; an older one answers it with a ProtocolError naming
#: the unknown verb (a client only sends it to a server that listed RELEASE).
OPS = frozenset({
    "hello", "enqueue", "enqueue_many", "dequeue", "peek", "ack", "nack", "release",
    "extend_lease", "size", "purge",
})

#: Flags the server provides for every backend: it loops for batches, polls for blocking
#: dequeues when the backend cannot wait, and is reachable from other processes and hosts.
GUARANTEED = (Capability.BATCH | Capability.BLOCKING_DEQUEUE | Capability.CROSS_PROCESS
              | Capability.DISTRIBUTED)

#: Flags passed through from the backend when it has them.
CARRIED = (Capability.PEEK | Capability.ACK | Capability.LEASE_EXTEND | Capability.DELAY
           | Capability.PRIORITY | Capability.CUSTOM_ID | Capability.HEADERS
           | Capability.DURABLE | Capability.RELEASE)

#: Queue names the server accepts: they are spliced into backend URLs, so no URL syntax.
QUEUE_NAME = re.compile(r"[A-Za-z0-9._:@-]{1,200}")


def exposed(backend: Capability) -> Capability:
    """Return what a server over a backend with ``backend`` flags offers its clients."""
    return (backend & CARRIED) | GUARANTEED


def caps_from_names(names: object) -> Capability:
    """Turn a list of flag names from the wire into flags; unknown names are ignored."""
    if not isinstance(names, list):
        raise ProtocolError("the server sent capabilities that are not a list")
    out = Capability(0)
    for n in names:
        if isinstance(n, str) and n in Capability.__members__:
            out |= Capability[n]
    return out


# -- jobs ---------------------------------------------------------------------------------------
def job_to_wire(job: Job, lease: str | None) -> dict[str, Any]:
    """Encode a backend's job for the wire; ``lease`` replaces its backend receipt."""
    return {
        "id": job.id, "body": job.body, "attempt": job.attempt, "at": job.enqueued_at,
        "headers": dict(job.headers), "priority": job.priority, "lease": lease,
    }


def _get(d: Mapping[str, Any], key: str, types: tuple[type, ...]) -> Any:
    v = d.get(key)
    # bool is an int subclass: a True where a number belongs is still a bad field.
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        raise ProtocolError(f"the peer sent a bad {key!r} field: {type(v).__name__}")
    return v


def job_from_wire(d: object, queue: str) -> Job:
    """Decode a job sent by the server, checking every field's type."""
    if not isinstance(d, dict):
        raise ProtocolError("the server sent a job that is not a map")
    headers = _get(d, "headers", (dict,))
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ProtocolError("the server sent non-string headers")
    at = _get(d, "at", (float, int))
    return Job(
        id=_get(d, "id", (str,)), queue=queue, body=_get(d, "body", (bytes,)),
        attempt=_get(d, "attempt", (int,)), enqueued_at=float(at) if math.isfinite(at) else 0.0,
        headers=headers, priority=_get(d, "priority", (int, type(None))),
        receipt=_get(d, "lease", (str, type(None))),
    )


# -- errors -------------------------------------------------------------------------------------
#: Exceptions a server may name in an error frame: exactly unifiedq's public error classes.
_ALLOWED: dict[str, type[UnifiedQError]] = {
    name: cls for name in _errors.__all__
    if isinstance(cls := getattr(_errors, name), type) and issubclass(cls, UnifiedQError)
}

_MAX_MESSAGE = 2000


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """Encode an exception raised while serving a request.

    Only unifiedq errors cross the wire by name; anything else becomes a ``BackendError``
    whose message names the exception type only (its text may hold server internals).
    """
    if isinstance(exc, UnifiedQError):
        name = next(c.__name__ for c in type(exc).__mro__ if c.__name__ in _ALLOWED
                    and issubclass(c, UnifiedQError))
        out: dict[str, Any] = {"type": name, "message": str(exc)[:_MAX_MESSAGE]}
        if isinstance(exc, _errors.UnsupportedOperation):
            out["capability"] = exc.capability
        elif isinstance(exc, _errors.LimitExceeded):
            out.update(limit=str(exc.limit)[:100], size=int(exc.size), maximum=int(exc.maximum))
        return out
    return {"type": "BackendError",
            "message": f"the server failed with {type(exc).__name__}; see its log"}


def error_from_wire(d: Mapping[str, Any]) -> UnifiedQError:
    """Rebuild the exception named by an error frame (unknown names become ProtocolError)."""
    name, message = d.get("type"), d.get("message")
    if not isinstance(message, str):
        message = "the server sent an error without a message"
    cls = _ALLOWED.get(name) if isinstance(name, str) else None
    if cls is None:
        return ProtocolError(f"the server sent an unknown error type {name!r}: {message}")
    if cls is _errors.UnsupportedOperation:
        cap = d.get("capability")
        return _errors.UnsupportedOperation(message, driver="quic",
                                            capability=cap if isinstance(cap, str) else "")
    if cls is _errors.DriverUnavailable:
        return _errors.DriverUnavailable(message)
    if issubclass(cls, _errors.LimitExceeded):
        limit, size, maximum = d.get("limit"), d.get("size"), d.get("maximum")
        return cls(message, limit=limit if isinstance(limit, str) else "",
                   size=size if type(size) is int else 0,
                   maximum=maximum if type(maximum) is int else 0)
    return cls(message)
