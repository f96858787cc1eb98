"""The non-I/O core shared by both faces: options, key names, script arguments, replies.

Both :class:`~unifiedq.drivers.redis.RedisQueue` (redis-py) and
:class:`~unifiedq.drivers.redis.AsyncRedisQueue` (redis.asyncio) are thin I/O shells around
:class:`Core`: it builds every script call as ``(script, keys, args)`` and turns every reply
into Jobs, so the two faces cannot drift apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

from redis import exceptions as rexc

from ..._capabilities import Capability
from ..._errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendFull,
    BackendTimeout,
    DuplicateJob,
    InvalidArgument,
    InvalidURL,
    JobNotLeased,
    LimitExceeded,
    NotReplicated,
    ProtocolError,
    UnifiedQError,
)
from ..._job import EnqueueRequest, Job
from ..._url import URL, parse_options
from . import _cluster, _proto, _scripts
from ._proto import TaskMessage

_hpack: Callable[[tuple[Any, ...]], Any] | None
try:
    from hiredis import pack_command as _hpack
except ImportError:  # pragma: no cover - hiredis is an optional speed-up
    _hpack = None

__all__ = ["CAPABILITIES", "Call", "Core", "Receipt", "RedisOptions", "pack", "translating"]

#: What both faces support. Not BOUNDED: asynq has no queue bound to honour.
CAPABILITIES = (
    Capability.PEEK | Capability.ACK | Capability.RELEASE | Capability.LEASE_EXTEND
    | Capability.PAUSE | Capability.RESULT | Capability.DEADLINE
    | Capability.DELAY
    | Capability.PRIORITY | Capability.BATCH | Capability.BLOCKING_DEQUEUE
    | Capability.CUSTOM_ID | Capability.HEADERS | Capability.DURABLE
    | Capability.CROSS_PROCESS | Capability.DISTRIBUTED | Capability.NATIVE_SYNC
    | Capability.NATIVE_ASYNC
)

#: A script invocation: the script, its KEYS and its ARGV.
Call = tuple[_scripts.Script, list[str], list[Any]]

_DAY = 86_400
_STATS_TTL = 90 * _DAY  # asynq keeps daily counters and archived tasks for 90 days
_WAKE_CAP = 64  # wake tokens kept at most; more would only cause spurious wake-ups
#: Seconds between the dequeue script's maintenance passes (forward due scheduled/retry tasks,
#: recover expired leases) while every call finds ready jobs; a call that comes up short
#: always runs one.
MAINTAIN_EVERY = 0.1
ALL_QUEUES = "asynq:queues"


@dataclasses.dataclass(frozen=True, slots=True)
class RedisOptions:
    """Options of ``redis://`` and ``rediss://`` URLs (query string or ``connect()`` keywords).

    Attributes:
        queue: asynq queue name. Priority N (1..9) goes to the asynq queue ``<queue>:p<N>``.
        task_type: asynq task type of enqueued jobs unless a ``type`` header gives one.
        visibility_timeout: Lease length in seconds (asynq: 30).
        heartbeat: Extend the leases of held jobs in the background, as asynq's heartbeater
            does, until the job's ``timeout`` has passed.
        timeout: asynq task timeout in seconds written into each task (asynq default 1800).
        max_retry: asynq MaxRetry of enqueued tasks; a task nacked or whose lease expired
            after that many retries is archived.
        backoff: ``"none"``: ``nack()`` without delay requeues at once; ``"asynq"``: it waits
            asynq's default backoff (n^4 + 15 + rand(30)·(n+1) seconds).
        retention: Seconds an acked task is kept as "completed" (asynq Retention); 0 deletes.
        unique_ttl: If > 0, asynq's uniqueness lock (type + payload) for this many seconds;
            a duplicate raises DuplicateJob.
        lease_grace: Seconds an expired lease is left alone before recovery (asynq waits 30 s
            against clock skew between machines).
        poll_interval: Longest idle wait between checks (covers producers, such as Go asynq
            clients, that do not push wake-up tokens).
        max_body: Largest body accepted in bytes (None: only ``proto_max_bulk_len`` applies).
        proto_max_bulk_len: The server's ``proto-max-bulk-len`` in bytes (Redis' default,
            512 MiB): an encoded task message larger than this raises LimitExceeded before
            anything is sent, instead of Redis dropping the connection.
        socket_timeout: Seconds a verb waits for Redis (finite): a verb that does not wait
            for jobs returns or raises BackendTimeout within this time, a waiting dequeue
            within its ``timeout`` plus this time. Connection retries share the deadline.
        socket_connect_timeout: Connect timeout in seconds (also capped by the verb's
            deadline).
        max_connections: Connection pool size (None: unbounded).
        client_name: CLIENT SETNAME value.
        ssl_ca_certs: CA bundle for ``rediss://``.
        ssl_certfile: Client certificate for ``rediss://``.
        ssl_keyfile: Client key for ``rediss://``.
        ssl_cert_reqs: Server certificate check for ``rediss://``.
        ssl_check_hostname: Check the server's host name for ``rediss://``.
        sentinel_username: ACL user name for the Sentinels of a ``redis+sentinel://`` URL
            (the URL's own credentials are the master's).
        sentinel_password: Password for the Sentinels of a ``redis+sentinel://`` URL.
        min_replicas: If > 0, every enqueue waits (Redis ``WAIT``) until this many replicas
            have its write, and raises NotReplicated if they do not within
            ``min_replicas_timeout``: with Sentinel, a job whose enqueue returned then survives
            the failover of its master (Redis replication is otherwise asynchronous).
        min_replicas_timeout: Seconds an enqueue waits for ``min_replicas`` (below
            ``socket_timeout``).
    """

    queue: str = "default"
    task_type: str = "unifiedq"
    visibility_timeout: float = 30.0
    heartbeat: bool = True
    timeout: int = 1800
    max_retry: int = 25
    backoff: Literal["none", "asynq"] = "none"
    retention: int = 0
    unique_ttl: int = 0
    lease_grace: float = 0.0
    poll_interval: float = 1.0
    max_body: int | None = None
    proto_max_bulk_len: int = 512 * 1024 * 1024
    socket_timeout: float = 5.0
    socket_connect_timeout: float = 5.0
    max_connections: int | None = None
    client_name: str | None = None
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["required", "optional", "none"] = "required"
    ssl_check_hostname: bool = True
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    min_replicas: int = 0
    min_replicas_timeout: float = 1.0

    def __post_init__(self) -> None:
        if not self.queue or "{" in self.queue or "}" in self.queue:
            raise ValueError(f"queue must be a non-empty name without braces, not {self.queue!r}")
        if not self.task_type:
            raise ValueError("task_type must not be empty (asynq rejects empty task types)")
        for name in ("visibility_timeout", "poll_interval", "socket_timeout",
                     "socket_connect_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)!r}")
        for name in ("timeout",):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 second, not {getattr(self, name)!r}")
        for name in ("max_retry", "retention", "unique_ttl"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        if self.lease_grace < 0:
            raise ValueError(f"lease_grace must be >= 0, not {self.lease_grace!r}")
        if self.max_body is not None and self.max_body < 0:
            raise ValueError(f"max_body must be >= 0, not {self.max_body}")
        if self.proto_max_bulk_len < 1:
            raise ValueError(f"proto_max_bulk_len must be >= 1, not {self.proto_max_bulk_len}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, not {self.max_connections}")
        if self.min_replicas < 0:
            raise ValueError(f"min_replicas must be >= 0, not {self.min_replicas}")
        if self.min_replicas and not 0 < self.min_replicas_timeout < self.socket_timeout:
            raise ValueError(f"min_replicas_timeout must be > 0 and below socket_timeout "
                             f"({self.socket_timeout} s), not {self.min_replicas_timeout!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class Receipt:
    """What ``ack``/``nack`` need: where the task lives and which delivery this is."""

    prefix: str
    level: int
    token: str
    msg: TaskMessage


def prefix(qname: str) -> str:
    """Return asynq's key prefix of queue ``qname`` (``asynq:{qname}:``)."""
    return f"asynq:{{{qname}}}:"


def asynq_backoff(retried: int) -> float:
    """Return asynq's DefaultRetryDelayFunc delay: n^4 + 15 + rand(0..29)·(n+1) seconds."""
    return float(retried**4 + 15 + random.randrange(30) * (retried + 1))


def _len_field(tag: int, data: bytes) -> bytes:
    return bytes((tag,)) + _proto._varint(len(data)) + data


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


def pack(args: Sequence[Any]) -> bytes:
    """Encode one command in RESP, byte for byte as redis-py sends ``execute_command(*args)``.

    Args are bytes, str (UTF-8) or int (Core formats floats itself, with ``repr``). hiredis
    packs in C when installed; the pure-Python packer writes the same bytes.
    """
    if _hpack is not None:
        out: bytes = _hpack(tuple(args))
        return out
    return _pack_py(args)


def _pack_py(args: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        elif isinstance(a, int) and not isinstance(a, bool):
            b = b"%d" % a
        elif isinstance(a, float):
            b = repr(a).encode()
        else:  # never built by Core; a loud failure beats a silently wrong command
            raise TypeError(f"cannot send {a!r} to Redis")
        out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


# Varints of 0..127 are one byte: a lookup beats a call per field on the enqueue path.
_SMALL = tuple(bytes((i,)) for i in range(128))
_ZERO = _bulk(b"0")


@dataclasses.dataclass(frozen=True, slots=True)
class _Level:
    """One asynq queue backing a priority level, with its precomputed key names."""

    level: int
    qname: str
    prefix: str
    pending: str
    scheduled: str
    lease: str
    tail: bytes  # encoded queue, retry and timeout fields (4, 5, 8)
    head: bytes  # RESP of a plain enqueue up to KEYS[1]: EVALSHA, sha, numkeys (4)
    tkey: bytes  # task key prefix "asynq:{q}:t:", encoded
    keys: bytes  # RESP of KEYS[2..4]: pending, scheduled, wake


def _translate(exc: rexc.RedisError) -> UnifiedQError:
    text = str(exc)
    if isinstance(exc, rexc.AuthenticationError) or text.startswith(
        ("NOAUTH", "WRONGPASS", "NOPERM", "invalid username-password")
    ):
        return AuthenticationError(f"Redis refused our credentials: {text}")
    if isinstance(exc, rexc.TimeoutError):
        return BackendTimeout(f"Redis did not answer in time (the connection was dropped): "
                              f"{text}")
    if isinstance(exc, rexc.ConnectionError):
        return BackendConnectionError(f"cannot talk to Redis: {text}")
    # Redis at maxmemory with noeviction: "OOM command not allowed ..." (also from inside a
    # script, where the error keeps its code).
    if isinstance(exc, rexc.OutOfMemoryError) or text.startswith("OOM") or " OOM " in text:
        return BackendFull(f"Redis is out of memory (maxmemory) and refuses new data: {text}")
    if isinstance(exc, rexc.ResponseError) and "NOT LEASED" in text:
        return JobNotLeased(
            "the job is not leased by this delivery: it was already acked or nacked, or its "
            "lease expired and it was handed out again"
        )
    return BackendError(f"Redis error: {text}")


@contextlib.contextmanager
def translating() -> Iterator[None]:
    """Translate redis-py exceptions into unifiedq errors (the one place that does it)."""
    try:
        yield
    except rexc.RedisError as exc:
        raise _translate(exc) from exc


class Core:
    """Everything both faces share; performs no I/O."""

    def __init__(self, url: URL, options: RedisOptions) -> None:
        self.options = options
        self.qname = options.queue
        base = prefix(options.queue)
        self.levels_key = base + "uq:levels"
        self.wake_key = base + "uq:wake"
        self.stamp_key = base + "uq:maintained"
        o = options
        #: The slot map of a ``redis+cluster://`` URL (None otherwise).
        self.cluster = (_cluster.SlotMap(_cluster.cluster_spec(url.authority))
                        if url.scheme == "redis+cluster" else None)
        self._levels: list[_Level] = []
        #: Each level's wake list for enqueue/nack scripts: the base one, except in cluster
        #: mode, where a level's script may only touch its own slot (see ``_cluster``).
        self.wakes: list[str] = []
        # A plain enqueue is 13 RESP bulks: EVALSHA sha 4 KEYS[1..4] ARGV[1..6].
        head = b"*13\r\n" + _bulk(b"EVALSHA") + _bulk(_scripts.ENQUEUE.sha.encode()) + _bulk(b"4")
        wake = self.wake_key
        for n in range(10):
            q = o.queue if n == 0 else f"{o.queue}:p{n}"
            p = prefix(q)
            if n and self.cluster is not None:
                wake = p + "uq:wake"
            self.wakes.append(wake)
            tail = _len_field(0x22, q.encode())
            if o.max_retry:
                tail += b"\x28" + _proto._varint(o.max_retry)
            tail += b"\x40" + _proto._varint(o.timeout)
            keys = b"".join(_bulk(k.encode()) for k in (p + "pending", p + "scheduled", wake))
            self._levels.append(
                _Level(n, q, p, p + "pending", p + "scheduled", p + "lease", tail, head,
                       (p + "t:").encode(), keys)
            )
        self._type_field = _len_field(0x0A, o.task_type.encode())
        self._retention_field = b"\x60" + _proto._varint(o.retention) if o.retention else b""
        self._argv_end = _ZERO + _bulk(b"%d" % _WAKE_CAP)  # ARGV[5..6] of a plain enqueue
        self.published: set[int] = set()  # levels already registered in asynq:queues
        self._held: dict[tuple[str, str], tuple[str, float]] = {}  # (prefix, id) -> token, end
        self._held_lock = threading.Lock()
        self.connection_kwargs = _connection_kwargs(url, options)
        self.ssl = url.scheme == "rediss"
        self.sentinel = _sentinel_spec(url, options)

    # -- pause ------------------------------------------------------------------------------
    @property
    def paused_key(self) -> str:
        """The pause key asynq reads for the base queue (what ``asynq queue pause <name>`` sets)."""
        return self._levels[0].prefix + "paused"

    def pause_calls(self) -> list[tuple[str, ...]]:
        """Set asynq's pause key (Unix seconds, as asynq writes it) on every level.

        Every level, so Go asynq servers consuming a level's asynq queue stop too; NX keeps
        the time of the first pause, as asynq's SETNX does.
        """
        now = str(int(time.time()))
        return [("SET", lv.prefix + "paused", now, "NX") for lv in self._levels]

    def resume_calls(self) -> list[tuple[str, ...]]:
        """Delete every level's pause key; LLEN of each pending list (who to wake)."""
        return [("DEL", *(lv.prefix + "paused" for lv in self._levels)),
                *(("LLEN", lv.pending) for lv in self._levels)]

    def wake_calls(self, ready: int) -> list[tuple[str, ...]]:
        """Wake-up tokens for up to ``ready`` waiting consumers (capped like enqueue's)."""
        n = min(ready, _WAKE_CAP)
        return [("LPUSH", self.wake_key, *(["1"] * n)), ("LTRIM", self.wake_key, "0",
                                                          str(_WAKE_CAP - 1))] if n else []

    # -- enqueue ---------------------------------------------------------------------------
    def publish_calls(self, level: int) -> list[tuple[str, str, str]]:
        """SADDs that make a level's asynq queue visible to asynq (once per handle)."""
        calls = [("SADD", ALL_QUEUES, self._levels[level].qname)]
        if level:
            calls.append(("SADD", self.levels_key, str(level)))
        return calls

    def check_headers(self, headers: Mapping[str, str]) -> None:
        """Reject a ``type`` header asynq cannot take, before any I/O."""
        if "type" in headers and not headers["type"]:
            raise InvalidArgument("the 'type' header (the asynq task type) must not be empty")

    def enqueue_call(self, req: EnqueueRequest, now_ns: int) -> tuple[int, list[Any]]:
        """Return the level and the EVALSHA argument list of one enqueue."""
        lv = self._levels[req.priority or 0]
        type_field, hdr, ttype = self._type_field, b"", self.options.task_type
        if req.headers:
            headers = dict(req.headers)
            if "type" in headers:
                ttype = headers.pop("type")
                type_field = _len_field(0x0A, ttype.encode())
            hdr = b"".join(_proto._header_entry(k, headers[k]) for k in sorted(headers))
        body = req.body
        jid = req.job_id
        msg = type_field
        if body:
            msg += b"\x12" + _proto._varint(len(body)) + body
        msg += _len_field(0x1A, jid.encode())
        msg += lv.tail if req.deadline is None and req.timeout is None else self._tail(lv, req)
        ttl = self.options.unique_ttl
        keys_tail: tuple[str, ...] = ()
        if ttl:
            # asynq's UniqueKey: md5 of the payload; a nil payload gives an empty checksum.
            digest = hashlib.md5(body).hexdigest() if body else ""
            ukey = f"{lv.prefix}unique:{ttype}:{digest}"
            msg += _len_field(0x52, ukey.encode())
            keys_tail = (ukey,)
        msg += self._retention_field + hdr
        if len(msg) > self.options.proto_max_bulk_len:
            self._too_large(len(msg))
        at = "0" if not req.delay else repr(now_ns / 1e9 + req.delay)
        args: list[Any] = [
            "EVALSHA", _scripts.ENQUEUE.sha, 4 + len(keys_tail),
            lv.prefix + "t:" + jid, lv.pending, lv.scheduled, self.wakes[lv.level], *keys_tail,
            msg, jid, now_ns, at, ttl, _WAKE_CAP,
        ]  # fmt: skip
        return lv.level, args

    def enqueue_commands(
        self, reqs: Sequence[EnqueueRequest], now_ns: int
    ) -> tuple[set[int], bytes]:
        """Return the levels touched and the RESP of every enqueue's EVALSHA, in order.

        The bytes equal ``pack()`` of :meth:`enqueue_call`'s arguments. Plain requests (no
        headers, no uniqueness lock) take a fast path: for a given level only the id, body
        and delay vary, so the TaskMessage and the command are cached fragments around them
        (fields stay in number order, so the message is still canonical protobuf).
        """
        levels: set[int] = set()
        parts: list[bytes] = []
        add = parts.append
        plain = not self.options.unique_ttl
        lvls, small, varint = self._levels, _SMALL, _proto._varint
        type_field, retention, end = self._type_field, self._retention_field, self._argv_end
        limit = self.options.proto_max_bulk_len
        now = _bulk(b"%d" % now_ns)
        for req in reqs:
            if req.headers or not plain or req.deadline is not None or req.timeout is not None:
                level, args = self.enqueue_call(req, now_ns)
                levels.add(level)
                add(pack(args))
                continue
            lv = lvls[req.priority or 0]
            levels.add(lv.level)
            jid = req.job_id.encode()
            body = req.body
            n, k = len(body), len(jid)
            msg = b"%b\x12%b%b\x1a%b%b%b%b" % (
                type_field, small[n] if n < 128 else varint(n), body,
                small[k] if k < 128 else varint(k), jid, lv.tail, retention,
            ) if body else b"%b\x1a%b%b%b%b" % (
                type_field, small[k] if k < 128 else varint(k), jid, lv.tail, retention,
            )  # fmt: skip
            if len(msg) > limit:
                self._too_large(len(msg))
            at = _ZERO if not req.delay else _bulk(repr(now_ns / 1e9 + req.delay).encode())
            add(b"%b$%d\r\n%b%b\r\n%b$%d\r\n%b\r\n$%d\r\n%b\r\n%b%b%b" % (
                lv.head, len(lv.tkey) + k, lv.tkey, jid, lv.keys, len(msg), msg, k, jid,
                now, at, end,
            ))  # fmt: skip
        return levels, b"".join(parts)

    def _tail(self, lv: _Level, req: EnqueueRequest) -> bytes:
        """Fields 4, 5, 8 and 9 (queue, retry, timeout, deadline) of a job with either.

        In asynq's units: whole seconds, rounded up (never shorter or earlier than asked;
        asynq reads a timeout of 0 as none). A deadline without a timeout writes no timeout,
        as asynq's client does (the task then runs until its deadline).
        """
        tail = _len_field(0x22, lv.qname.encode())
        if self.options.max_retry:
            tail += b"\x28" + _proto._varint(self.options.max_retry)
        if req.timeout is not None:
            tail += b"\x40" + _proto._varint(max(1, math.ceil(req.timeout)))
        elif req.deadline is None:
            tail += b"\x40" + _proto._varint(self.options.timeout)
        if req.deadline is not None:
            tail += b"\x48" + _proto._varint(max(1, math.ceil(req.deadline)))
        return tail

    def _too_large(self, size: int) -> None:
        # Redis drops the connection on a bulk string over proto-max-bulk-len; a resend
        # would fail the same way, so refuse before the first byte.
        limit = self.options.proto_max_bulk_len
        raise LimitExceeded(
            f"the encoded asynq task message is {size} bytes, more than Redis accepts in one "
            f"bulk string (proto-max-bulk-len = {limit} bytes; body and headers both count)",
            limit="proto-max-bulk-len", size=size, maximum=limit)

    def wait_command(self) -> bytes:
        """``WAIT min_replicas ms`` to send behind an enqueue's writes (b"" when not asked for)."""
        o = self.options
        if not o.min_replicas:
            return b""
        return pack(("WAIT", str(o.min_replicas), str(max(1, int(o.min_replicas_timeout * 1000)))))

    def check_replicated(self, acked: object, job_ids: list[str]) -> None:
        """Raise NotReplicated unless ``WAIT``'s reply counts ``min_replicas`` replicas."""
        if isinstance(acked, Exception):
            raise _translate(acked) if isinstance(acked, rexc.RedisError) else acked
        n = int(acked) if isinstance(acked, int | bytes | str) else 0
        if n < self.options.min_replicas:
            raise NotReplicated(
                f"{n} of {self.options.min_replicas} replicas confirmed the enqueue within "
                f"{self.options.min_replicas_timeout} s; the jobs are on the master and run "
                f"unless it fails before they replicate (retry with the same job_id is safe)",
                job_ids=tuple(job_ids), replicas=n, wanted=self.options.min_replicas)

    def enqueue_result(self, code: object, jid: str, *, resent: bool = False) -> str:
        """Check an enqueue script's reply and return the job id.

        ``resent``: the command went out again after a connection failure, so an "id exists"
        reply for an id we generated means our first attempt landed (not a duplicate).
        """
        if code == 1 or (code == 0 and resent):
            return jid
        if code == 0:
            raise DuplicateJob(f"job id {jid!r} already exists in queue {self.qname!r}")
        if code == -1:
            raise DuplicateJob(
                f"a task with the same type and payload holds the uniqueness lock of queue "
                f"{self.qname!r} (unique_ttl={self.options.unique_ttl})"
            )
        raise ProtocolError(f"unexpected reply from the enqueue script: {code!r}")

    # -- dequeue ---------------------------------------------------------------------------
    def dequeue_call(self, max_jobs: int, wait: float = 0.0) -> tuple[Call, str]:
        """Return the dequeue script call and the lease token it hands out.

        ``wait``: seconds the call may wait in Redis before it runs (pipelined behind a
        BLPOP); its lease is lengthened by that much, so it is never shorter than
        ``visibility_timeout``.
        """
        o = self.options
        now = time.time()
        token = os.urandom(8).hex()
        args = [
            self.qname, repr(now), time.time_ns(), repr(now + wait + o.visibility_timeout),
            token,
            max_jobs, repr(now - o.lease_grace), *self._stats(now), "0", repr(MAINTAIN_EVERY),
        ]  # fmt: skip
        return (_scripts.DEQUEUE, [self.levels_key, self.stamp_key], args), token

    @staticmethod
    def dequeue_resend(call: Call) -> Call:
        """The same dequeue, sent again after a lost reply: it also returns what it took."""
        script, keys, args = call
        return script, keys, [*args[:10], "1", *args[11:]]

    def untake_call(self, call: Call) -> Call:
        """Give back what the dequeue ``call`` took, if it ran and its reply was lost."""
        keys, args = call[1], call[2]
        if self.cluster is not None:  # one level's call (see _cluster.level_call)
            lv = next(lv for lv in self._levels if lv.qname == args[0])
            return (_scripts.UNTAKE, [keys[0], self.wakes[lv.level]],
                    [args[0], args[3], args[4], time.time_ns(), _WAKE_CAP])
        return (_scripts.UNTAKE, [self.levels_key, self.wake_key],
                [self.qname, args[3], args[4], time.time_ns(), _WAKE_CAP])

    @staticmethod
    def untake_expired(call: Call) -> bool:
        """Whether the lease of that dequeue's jobs ran out (lease recovery took over)."""
        return float(call[2][3]) < time.time()

    def _stats(self, now: float) -> tuple[str, int, int]:
        date = time.strftime("%Y-%m-%d", time.gmtime(now))
        return date, int(now) + _STATS_TTL, int(now) - _STATS_TTL

    def dequeue_result(self, reply: Sequence[Any], token: str) -> tuple[list[Job], float | None]:
        """Turn the dequeue reply into leased Jobs (registered as held) and the next due time."""
        n = int(reply[0])
        next_due = float(reply[1]) if reply[1] else None
        jobs: list[Job] = []
        held: list[tuple[tuple[str, str], tuple[str, float]]] = []
        end = time.monotonic()
        for i in range(n):
            lvl, _id, raw, enq, since = reply[2 + 5 * i : 7 + 5 * i]
            level = int(lvl)
            msg = self._decode(raw)
            receipt = Receipt(self._levels[level].prefix, level, token, msg)
            jobs.append(self._job(msg, level, enq, since, receipt))
            held.append(((receipt.prefix, msg.id), (token, end + (msg.timeout or 1800))))
        with self._held_lock:  # once per batch, not per job
            self._held.update(held)
        return jobs, next_due

    def _decode(self, raw: bytes) -> TaskMessage:
        try:
            return _proto.decode(raw)
        except _proto.DecodeError as exc:
            raise ProtocolError(
                f"queue {self.qname!r} holds a malformed asynq task: {exc}"
            ) from exc

    def _job(
        self, msg: TaskMessage, level: int, enq: bytes | None, since: bytes | None,
        receipt: Receipt | None,
    ) -> Job:
        headers = dict(msg.headers)
        headers["type"] = msg.type
        stamp = enq or since
        enqueued_at = int(stamp) / 1e9 if stamp else time.time()
        # A read-only view of our own fresh copy: Job keeps it as is instead of copying again.
        return Job(msg.id, self.qname, msg.payload, msg.retried + 1, enqueued_at,
                   MappingProxyType(headers), level or None, receipt,
                   float(msg.deadline) if msg.deadline else None,
                   float(msg.timeout) if msg.timeout else None)

    def peek_call(self) -> Call:
        """The read-only peek script call."""
        return _scripts.PEEK, [self.levels_key], [self.qname, repr(time.time())]

    def peek_result(self, reply: Sequence[Any] | None) -> Job | None:
        """Turn the peek reply into an un-ackable Job."""
        if not reply:
            return None
        lvl, _id, raw, enq, since = reply
        return self._job(self._decode(raw), int(lvl), enq, since, None)

    def size_call(self) -> Call:
        """The size script call."""
        return _scripts.SIZE, [self.levels_key], [self.qname]

    def stats_call(self) -> Call:
        """The read-only stats script call (per-state counts over every priority level)."""
        return _scripts.STATS, [self.levels_key], [self.qname]

    def stats_result(self, reply: Sequence[Any]) -> dict[str, object]:
        """Turn the stats reply into ``stats()``'s mapping (see ``unifiedq inspect``).

        ``oldest_age`` is asynq's queue latency: seconds since the task that ``dequeue()``
        takes next became pending (0.0 when nothing is ready); ``dead`` is asynq's archived set.
        """
        pending, active, scheduled, retry, archived, completed, paused = map(int, reply[:7])
        since = reply[7]
        age = max(0.0, time.time() - int(since) / 1e9) if since else 0.0
        return {
            "depth": pending + scheduled + retry, "oldest_age": age, "pending": pending,
            "active": active, "scheduled": scheduled, "retry": retry, "dead": archived,
            "completed": completed, "paused": paused > 0,
        }  # fmt: skip

    def purge_call(self) -> Call:
        """The purge script call."""
        return _scripts.PURGE, [self.levels_key], [self.qname]

    def wait_seconds(self, next_due: float | None, deadline: float | None) -> float | None:
        """How long an idle consumer blocks on the wake list; None when the wait is over."""
        wait = self.options.poll_interval
        if next_due is not None:
            wait = min(wait, next_due + self.options.lease_grace - time.time())
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            wait = min(wait, left)
        return max(wait, 0.001)  # BLPOP 0 would mean "forever"

    # -- settle ----------------------------------------------------------------------------
    def receipt(self, job: Job) -> Receipt:
        """The job's receipt, checked."""
        r = job.receipt
        if not isinstance(r, Receipt):
            raise InvalidArgument(f"job {job.id!r} was not dequeued by the redis driver")
        return r

    def release(self, r: Receipt, jid: str) -> None:
        """Forget a held job (after ack/nack, or when its lease was lost)."""
        with self._held_lock:
            cur = self._held.get((r.prefix, jid))
            if cur is not None and cur[0] == r.token:
                del self._held[(r.prefix, jid)]

    def ack_call(self, job: Job) -> Call:
        """The ack script call: asynq's done, or mark-as-complete when retention is set."""
        r = self.receipt(job)
        now = time.time()
        date, expire, _ = self._stats(now)
        msg = r.msg
        done_msg, score = b"", 0
        if msg.retention:
            done_msg = _proto.encode(dataclasses.replace(msg, completed_at=int(now)))
            score = int(now) + msg.retention
        args = [r.prefix, msg.id, r.token, date, expire, msg.retention, score, done_msg,
                msg.unique_key]
        return _scripts.ACK, [r.prefix + "t:" + msg.id], args

    def ack_many_calls(self, jobs: Sequence[Job]) -> list[Call]:
        """The ack_many script calls: one per asynq queue (priority level) the jobs came from.

        Each call does what :meth:`ack_call` does for every job of one level; a script never
        touches the keys of two queues (asynq's keys of one queue share a hash tag).
        """
        now = time.time()
        date, expire, _ = self._stats(now)
        calls: dict[str, Call] = {}
        for job in jobs:
            r = self.receipt(job)
            msg = r.msg
            call = calls.get(r.prefix)
            if call is None:
                call = calls[r.prefix] = (_scripts.ACK_MANY, [], [r.prefix, date, expire])
            done_msg, score = b"", 0
            if msg.retention:
                done_msg = _proto.encode(dataclasses.replace(msg, completed_at=int(now)))
                score = int(now) + msg.retention
            call[1].append(r.prefix + "t:" + msg.id)
            call[2].extend((msg.id, r.token, msg.retention, score, done_msg, msg.unique_key))
        return list(calls.values())

    def nack_call(self, job: Job, requeue: bool, delay: float, *, shutdown: bool = False,
                  expired: bool = False) -> Call:
        """The nack script call: retry (pending or retry set), archive, or plain requeue.

        ``expired``: archive a job past its deadline with the error message
        ``unifiedq: expired`` (what asynqmon and the Inspector show as its last error).
        """
        r = self.receipt(job)
        msg = r.msg
        now = time.time()
        at = 0.0
        if shutdown:
            mode, new = "requeue", msg
        elif not requeue or msg.retried >= msg.retry:
            why = ("expired" if expired else "nack(requeue=False)" if not requeue
                   else "retries exhausted")
            mode = "archive"
            new = dataclasses.replace(msg, error_msg=f"unifiedq: {why}", last_failed_at=int(now))
        else:
            new = dataclasses.replace(msg, retried=msg.retried + 1, error_msg="unifiedq: nack",
                                      last_failed_at=int(now))
            if not delay and self.options.backoff == "asynq":
                delay = asynq_backoff(msg.retried)
            mode, at = ("retry", now + delay) if delay else ("pending", 0.0)
        date, expire, cutoff = self._stats(now)
        args = [r.prefix, msg.id, r.token, mode, b"" if mode == "requeue" else _proto.encode(new),
                repr(at), repr(now), time.time_ns(), date, expire, cutoff, _WAKE_CAP]
        return _scripts.NACK, [r.prefix + "t:" + msg.id, self.wakes[r.level]], args

    def extend_call(self, job: Job, seconds: float) -> Call:
        """The extend script call for ``extend_lease``."""
        r = self.receipt(job)
        args = [r.prefix, repr(time.time() + seconds), "", r.msg.id, r.token]
        return _scripts.EXTEND, [r.prefix + "lease"], args

    def heartbeat_calls(self) -> list[Call]:
        """Extend every held lease whose job is still within its timeout (asynq's heartbeater)."""
        mono = time.monotonic()
        until = repr(time.time() + self.options.visibility_timeout)
        groups: dict[str, list[str]] = {}
        with self._held_lock:
            for (pfx, jid), (token, end) in list(self._held.items()):
                if end <= mono:  # past its timeout: let the lease lapse, as asynq does
                    del self._held[(pfx, jid)]
                    continue
                groups.setdefault(pfx, []).extend((jid, token))
        return [(_scripts.EXTEND, [p + "lease"], [p, until, "GT", *pairs])
                for p, pairs in groups.items()]

    def lost(self, call: Call, ids: Sequence[bytes]) -> None:
        """Forget held jobs whose lease the heartbeat found taken over."""
        pfx = call[2][0]
        with self._held_lock:
            for raw in ids:
                self._held.pop((pfx, raw.decode()), None)

    def held_jobs_calls(self) -> list[Call]:
        """Requeue calls for every job this handle still holds (used by close)."""
        with self._held_lock:
            held = list(self._held.items())
            self._held.clear()
        calls = []
        for (pfx, jid), (token, _) in held:
            level = next(lv.level for lv in self._levels if lv.prefix == pfx)
            receipt = Receipt(pfx, level, token, TaskMessage(id=jid))
            stub = Job(jid, self.qname, b"", receipt=receipt)
            calls.append(self.nack_call(stub, True, 0.0, shutdown=True))
        return calls

    @property
    def holding(self) -> bool:
        """Whether this handle holds leased jobs."""
        return bool(self._held)

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between lease extensions (asynq: 5 s for a 30 s lease)."""
        return min(5.0, self.options.visibility_timeout / 3)


@dataclasses.dataclass(frozen=True, slots=True)
class SentinelSpec:
    """Where a ``redis+sentinel://`` URL's master is found.

    Attributes:
        master: The master's name, as configured in the Sentinels (``sentinel monitor``).
        addresses: ``(host, port)`` of each Sentinel, asked in order.
        kwargs: Connection keyword arguments for a Sentinel (timeouts, credentials).
    """

    master: str
    addresses: tuple[tuple[str, int], ...]
    kwargs: dict[str, Any]


def _sentinel_spec(url: URL, o: RedisOptions) -> SentinelSpec | None:
    if url.scheme != "redis+sentinel":
        if o.sentinel_password is not None or o.sentinel_username is not None:
            raise InvalidURL("sentinel_* options need a redis+sentinel:// URL")
        return None
    addresses = []
    for part in url.authority.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep:
            host, port = part.strip(), "26379"
        try:
            addresses.append((host.strip("[]") or "localhost", int(port)))
        except ValueError:
            raise InvalidURL(f"bad Sentinel address {part!r} in a redis+sentinel URL; "
                             f"expected host:port") from None
    kw: dict[str, Any] = {
        "socket_timeout": o.socket_timeout, "socket_connect_timeout": o.socket_connect_timeout,
        "username": o.sentinel_username, "password": o.sentinel_password,
    }  # fmt: skip
    return SentinelSpec(url.path.strip("/").partition("/")[0], tuple(addresses), kw)


def _connection_kwargs(url: URL, o: RedisOptions) -> dict[str, Any]:
    """Keyword arguments of one redis-py connection (the faces pool connections themselves)."""
    path = url.path.strip("/")
    if url.scheme == "redis+sentinel":  # /<master name>[/<db>]
        name, _, path = path.partition("/")
        if not name:
            raise InvalidURL("a redis+sentinel URL names its master: "
                             "redis+sentinel://host:26379[,host:26379...]/<master>[/<db>]")
    if path:
        try:
            db = int(path)
        except ValueError:
            raise InvalidURL(f"the path of a redis URL is a database number, not "
                             f"{path!r}") from None
    else:
        db = 0
    if url.scheme == "redis+cluster" and db:
        raise InvalidURL(f"Redis Cluster has database 0 only, not {db}")
    kw: dict[str, Any] = {
        "host": url.host or "localhost", "port": url.port or 6379, "db": db,
        "username": url.username or None, "password": url.password,
        "socket_timeout": o.socket_timeout, "socket_connect_timeout": o.socket_connect_timeout,
        "client_name": o.client_name,
    }  # fmt: skip
    if url.scheme == "rediss":
        kw.update(ssl_ca_certs=o.ssl_ca_certs, ssl_certfile=o.ssl_certfile,
                  ssl_keyfile=o.ssl_keyfile, ssl_cert_reqs=o.ssl_cert_reqs,
                  ssl_check_hostname=o.ssl_check_hostname)
    elif any((o.ssl_ca_certs, o.ssl_certfile, o.ssl_keyfile)):
        raise InvalidURL("ssl_* options need a rediss:// URL")
    return kw


def parse(url: URL, options: Mapping[str, object]) -> tuple[URL, RedisOptions]:
    """Parse the URL's options (no I/O)."""
    if url.scheme not in ("redis", "rediss", "redis+sentinel", "redis+cluster"):
        raise InvalidURL(f"the redis driver takes redis://, rediss://, redis+sentinel:// or "
                         f"redis+cluster:// URLs, not {url.scheme!r}")
    return url, parse_options(RedisOptions, url.query, options, driver="redis")
