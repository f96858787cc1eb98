"""asynq's server registry: how a unifiedq worker shows up in ``asynq server ls`` and asynqmon.

An asynq server's heartbeater (every 5 s) writes, as ``internal/rdb`` ``WriteServerState``:

==================================  ======  ===================================================
key                                 type    content
==================================  ======  ===================================================
``asynq:servers``                   ZSET    member ``asynq:servers:{host:pid:sid}``, score =
                                            expiry (whole Unix seconds, now + TTL)
``asynq:servers:{host:pid:sid}``    STRING  ``ServerInfo`` protobuf, TTL = 2 x heartbeat
``asynq:workers``                   ZSET    member ``asynq:workers:{host:pid:sid}``, same score
``asynq:workers:{host:pid:sid}``    HASH    task id -> ``WorkerInfo`` protobuf, same TTL
==================================  ======  ===================================================

Readers (``Inspector.Servers``, asynqmon) list the ZSET members scored from now on, and
``ClearServerState`` removes all four at shutdown. The protobufs (``internal/proto/asynq.proto``)
are hand-encoded here, as ``_proto`` does for ``TaskMessage``:

``ServerInfo``: 1 host, 2 pid (int32), 3 server_id, 4 concurrency (int32), 5 queues
(map<string, int32>), 6 strict_priority (bool), 7 status, 8 start_time (Timestamp),
9 active_worker_count (int32).

``WorkerInfo``: 1 host, 2 pid, 3 server_id, 4 task_id, 5 task_type, 6 task_payload (bytes),
7 queue, 8 start_time (Timestamp), 9 deadline (Timestamp).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

from ._proto import _len_field, _varint

__all__ = ["ALL_SERVERS", "ALL_WORKERS", "ServerInfo", "WorkerInfo", "clear_commands",
           "encode_server", "encode_worker", "server_key", "workers_key", "write_commands"]

ALL_SERVERS = "asynq:servers"
ALL_WORKERS = "asynq:workers"


def server_key(host: str, pid: int, server_id: str) -> str:
    """``asynq:servers:{host:pid:sid}`` (the braces are asynq's, a Redis Cluster hash tag)."""
    return f"asynq:servers:{{{host}:{pid}:{server_id}}}"


def workers_key(host: str, pid: int, server_id: str) -> str:
    """``asynq:workers:{host:pid:sid}``."""
    return f"asynq:workers:{{{host}:{pid}:{server_id}}}"


@dataclasses.dataclass(slots=True)
class ServerInfo:
    """asynq's ``ServerInfo`` (times in Unix seconds)."""

    host: str
    pid: int
    server_id: str
    concurrency: int
    queues: Mapping[str, int]
    status: str
    start_time: float
    strict_priority: bool = False
    active_worker_count: int = 0


@dataclasses.dataclass(slots=True)
class WorkerInfo:
    """asynq's ``WorkerInfo``: one task a server is running (times in Unix seconds)."""

    task_id: str
    task_type: str
    task_payload: bytes
    queue: str
    start_time: float
    deadline: float | None = None


def _timestamp(t: float) -> bytes:
    """A ``google.protobuf.Timestamp`` (1 seconds, 2 nanos), defaults omitted."""
    sec = math.floor(t)
    nanos = min(round((t - sec) * 1e9), 999_999_999)
    out = b""
    if sec:
        out += b"\x08" + _varint(sec)
    if nanos:
        out += b"\x10" + _varint(nanos)
    return out


def _str(tag: int, s: str) -> bytes:
    return _len_field(tag, s.encode()) if s else b""


def _int(tag: int, n: int) -> bytes:
    return bytes((tag,)) + _varint(n) if n else b""


def encode_server(info: ServerInfo) -> bytes:
    """Serialise ``info`` as Go's ``proto.Marshal`` would (field order, no defaults)."""
    parts = [_str(0x0A, info.host), _int(0x10, info.pid), _str(0x1A, info.server_id),
             _int(0x20, info.concurrency)]
    for name in sorted(info.queues):  # map entries carry both fields, as Go writes them
        parts.append(_len_field(0x2A, _len_field(0x0A, name.encode())
                                + b"\x10" + _varint(info.queues[name])))
    parts += [_int(0x30, int(info.strict_priority)), _str(0x3A, info.status),
              _len_field(0x42, _timestamp(info.start_time)),
              _int(0x48, info.active_worker_count)]
    return b"".join(parts)


def encode_worker(host: str, pid: int, server_id: str, w: WorkerInfo) -> bytes:
    """Serialise one ``WorkerInfo`` of server ``host:pid:server_id``."""
    parts = [_str(0x0A, host), _int(0x10, pid), _str(0x1A, server_id), _str(0x22, w.task_id),
             _str(0x2A, w.task_type), _len_field(0x32, w.task_payload) if w.task_payload else b"",
             _str(0x3A, w.queue), _len_field(0x42, _timestamp(w.start_time))]
    if w.deadline is not None:
        parts.append(_len_field(0x4A, _timestamp(w.deadline)))
    return b"".join(parts)


def write_commands(info: ServerInfo, workers: Iterable[tuple[str, bytes]], ttl: int,
                   now: float) -> list[tuple[str | bytes | int, ...]]:
    """The commands of one heartbeat (``WriteServerState``), to run in one MULTI/EXEC.

    ``workers``: (task id, encoded ``WorkerInfo``) pairs. Scores are whole seconds
    (``exp.Unix()`` in Go): readers compare them with their own ``now.Unix()``. The first
    two commands update the registries; the rest touch only the server's own two keys (one
    Redis Cluster slot: the ``{host:pid:sid}`` hash tag).
    """
    skey = server_key(info.host, info.pid, info.server_id)
    wkey = workers_key(info.host, info.pid, info.server_id)
    expiry = int(now + ttl)
    fields: list[str | bytes] = []
    for task_id, data in workers:
        fields += [task_id, data]
    cmds: list[tuple[str | bytes | int, ...]] = [
        ("ZADD", ALL_SERVERS, expiry, skey),
        ("ZADD", ALL_WORKERS, expiry, wkey),
        ("SETEX", skey, ttl, encode_server(info)),
        ("DEL", wkey),
    ]
    if fields:
        cmds.append(("HSET", wkey, *fields))
    cmds.append(("EXPIRE", wkey, ttl))
    return cmds


def clear_commands(host: str, pid: int, server_id: str) -> list[tuple[str, ...]]:
    """The commands of ``ClearServerState``: the two registries, then the server's own keys."""
    skey = server_key(host, pid, server_id)
    wkey = workers_key(host, pid, server_id)
    return [("ZREM", ALL_SERVERS, skey), ("ZREM", ALL_WORKERS, wkey), ("DEL", skey, wkey)]
