"""Faktory driver: jobs on a Faktory work server (contribsys/faktory), through pyfaktory.

Features: leases (Faktory reservations, ``reserve_for``) with ack/nack and redelivery
(at-least-once), delays (the job's ``at``), priorities 0..9 (mapped onto sub-queues fetched in
order, because Faktory removed per-job priority), batch enqueue (``PUSHB``), blocking dequeue
(``FETCH``), headers, a heartbeat (``BEAT``) while a consumer connection is open, server-side
retries and the dead set, sizes from ``INFO`` and queue latency from ``QUEUE LATENCY``
(``stats()``, for ``unifiedq inspect``), and release (a job handed back without consuming an
attempt: a copy keeping the attempt number and Faktory's retry count is pushed, then the
original acked).
Durable, cross-process and distributed. Not supported: peek (Faktory has no command that shows
a job without taking it), extending a lease (no such command in Faktory OSS), caller-chosen job
ids (Faktory OSS does not detect duplicate ids) and bounded queues.

Connection string::

    faktory://[:password@]host[:port][?queue=default&jobtype=unifiedq&reserve_for=1800&...]
    faktory+tls://[:password@]host[:port]?tls_ca=/path/to/ca.pem

The port defaults to 7419. ``faktory+tls://`` verifies the server's certificate and host name
against the system trust store, or against ``tls_ca``.

Mapping onto Faktory (details in ``docs/drivers/faktory.md``):

* A job is ``{"jid", "jobtype": <header "type" or the jobtype option>, "args", "queue",
  "retry", "reserve_for", "at"?, "custom"?}``. A body enqueued with the header
  ``content-type: application/json`` (``TypedQueue`` with the JSON codec) is a native job:
  ``args`` is the body's JSON array (any other JSON value ``v`` as ``[v]``) and the other
  headers are top-level ``custom`` keys, so Go/Ruby workers for that jobtype run it. Any
  other body is ``args = [<body as standard base64>]``. ``custom.unifiedq`` carries what
  Faktory has no field for (``body``: where the body is, when not the old default; bytes
  headers, priority, our id and attempt for requeued copies) and is omitted when empty.
  Jobs pushed by other Faktory clients are delivered with ``body = JSON of their args``, the
  headers ``type`` and ``faktory.jobtype`` and their ``custom`` keys as headers.
* ``enqueue`` = ``PUSH``; ``enqueue_many`` = ``PUSHB``; ``dequeue`` = ``FETCH`` (the reservation
  is the lease); ``ack`` = ``ACK``; ``nack(requeue=False)`` = ``FAIL`` then
  ``MUTATE kill`` (straight into the dead set); ``nack(requeue=True)`` = push a copy (a new
  Faktory jid, same unifiedq id, attempt + 1) and then ``ACK`` the original, so the job comes back
  at once (``nack_mode=fail`` uses ``FAIL`` instead: Faktory's retry with its backoff).
* ``size()`` counts ready jobs (``INFO``); Faktory has no per-queue count of its scheduled and
  retry sets, so delayed and retrying jobs are not included.

Faults (``docs/drivers/faktory.md``, "Faults, deadlines and limits"): each verb has one
deadline (``timeout``; a dequeue's own timeout, at least 0.5 s) shared by connecting and all
its round trips, after which it raises ``BackendTimeout``; a reply that comes after its caller
gave up is read by the next call on that connection (a job in a late FETCH reply is kept for
the next dequeue), so a stalled server neither desyncs a connection nor strands a job. Jobs
over ``max_job`` raise ``LimitExceeded`` before anything is sent; Faktory's "OOM" refusals
(its Redis at ``maxmemory``) raise ``BackendFull``.

Workarounds for pyfaktory (0.2.x): its TLS does not verify certificates (we wrap the socket in
a verifying ``ssl`` context ourselves); its reply reader re-decodes the whole buffer after every
1 KiB (we read RESP replies with a buffered reader); its heartbeat thread is not a daemon and
sleeps 15 s before noticing a disconnect (we run our own daemon heartbeat thread); its HELLO
sends the server's host name as the worker's; it only lets consumer clients ACK (the server
accepts ACK/FAIL on any connection: we settle on the consumer connection when it is idle and
on the producer connection when another thread is in FETCH, so a settle never waits behind a
blocking FETCH); it has no asyncio face (``connect_async`` bridges this
driver through a thread pool); and it does not enforce ``reserve_for`` client-side (we track
each lease's deadline and refuse to settle a job whose reservation has run out).
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import itertools
import json
import logging
import math
import os
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, Self, TypeVar

from .._base import QueueBase
from .._capabilities import Capability
from .._compat import pyfaktory as _pf
from .._compat.pyfaktory import FaktroyWorkProtocolError, State
from .._errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendFull,
    BackendTimeout,
    InvalidArgument,
    InvalidURL,
    JobNotLeased,
    LimitExceeded,
    ProtocolError,
)
from .._job import EnqueueRequest, Job
from .._url import URL, parse_options
from ..codecs import CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE

__all__ = ["FaktoryOptions", "FaktoryQueue"]

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_PORT = 7419
#: FETCH blocks at most this long on the server (a BRPOP with a 2 s timeout).
_FETCH_BLOCK = 2.0
#: A blocking FETCH is sent only with this much time left, so its reply (due after 2 s) is
#: normally in before the dequeue's deadline.
_FETCH_MIN = _FETCH_BLOCK + 0.25
#: A reply this long past its due time means a stalled server: dequeue raises BackendTimeout
#: (before that, a dequeue whose deadline comes first returns None and reads the reply later).
_LATE = 1.0
#: Round trips of a short dequeue (an INFO probe, a FETCH of a ready job) get at least this
#: long, so dequeue(timeout=0) can still ask; it bounds how far a dequeue overruns its timeout.
_PROBE = 0.5
#: Longest single socket wait (``settimeout`` takes no infinity).
_MAX_SOCKET_WAIT = 3600.0
_PUSHB_CHUNK = 1000
#: Faktory (1.9) has no job size limit of its own: its Redis has, ``proto-max-bulk-len``
#: (512 MiB), for the job JSON (LPUSH) and for the reservation record written at FETCH
#: (the job JSON plus ~200 bytes; over the limit, Faktory pops the job and loses it).
_REDIS_BULK_MAX = 512 * 1024 * 1024
_MAX_JOB = _REDIS_BULK_MAX - 64 * 1024
# Faktory's own rules: queue names (storage/redis.go) and the reservation range (manager).
_QUEUE_RE = re.compile(r"\A[a-zA-Z0-9._-]+\Z")
_MIN_RESERVE, _MAX_RESERVE = 60, 86400
_SERVER_DEFAULT_RESERVE, _SERVER_DEFAULT_RETRY = 1800, 25
_META = "unifiedq"
#: ``custom.unifiedq.body``: where a job's body is. "args": the body is the JSON array that
#: is the job's ``args``; "args[0]": the body is the JSON value ``args[0]`` (a body that is
#: not an array, wrapped); "base64": ``args[0]`` is the body's bytes in standard base64.
#: Absent on bytes jobs of the default jobtype (the format every version writes and reads).
_BODY_ARGS, _BODY_ARG0, _BODY_B64 = "args", "args[0]", "base64"
#: The header whose value becomes the job's Faktory ``jobtype`` (asynq's task type is the same).
_TYPE = "type"


@dataclasses.dataclass(frozen=True, slots=True)
class FaktoryOptions:
    """Options of ``faktory://`` and ``faktory+tls://`` URLs.

    Attributes:
        queue: The Faktory queue (letters, digits, ``.``, ``_``, ``-``).
        jobtype: The ``jobtype`` of jobs we push without a ``type`` header; a fetched job of
            this type with one base64 string as args and no marker is an old-format job.
        reserve_for: Seconds a fetched job stays reserved (the lease), 60..86400.
        retry: Faktory's ``retry`` for our jobs: how often the server retries a job that failed
            or whose reservation expired before it goes to the dead set; 0 = discard on the
            first failure (a consumer crash then loses the job), -1 = dead set at once.
        nack_mode: ``"push"`` (default): ``nack(requeue=True)`` pushes a copy and ACKs the
            original, so the job is back at once. ``"fail"``: it sends ``FAIL`` and Faktory
            retries the job after its backoff (15 s and more) with the failure recorded.
        priorities: Map ``priority=1..9`` onto sub-queues ``<queue>.p1`` .. ``<queue>.p9``
            fetched before ``<queue>``. False: the driver lacks PRIORITY.
        timeout: Deadline in seconds of every verb without a timeout argument (enqueue,
            ack, nack, release, size, purge, close): connecting and all its round trips
            share it, and a server that does not answer in time raises BackendTimeout.
            Also how long ``dequeue(timeout=None)`` waits for an overdue FETCH reply.
            > 2 s, since FETCH blocks for 2 s on the server.
        beat_period: Seconds between heartbeats (``BEAT``) of a consumer connection, 5..60.
        poll_interval: Seconds between ``INFO`` probes while a dequeue waits less than 2 s.
        max_body: Largest body accepted, in bytes.
        max_job: Largest job accepted, in bytes of the JSON Faktory stores (the args,
            headers and metadata); larger ones raise LimitExceeded before anything is sent.
            At most 512 MiB - 64 KiB (Redis's ``proto-max-bulk-len``, which Faktory's
            reservation record must also fit in). Also the byte budget of one PUSHB.
        tls_ca: CA bundle (PEM) to verify the server with; default: the system store.
        tls_verify: Verify the server certificate and host name (keep it True).
        tls_server_name: Host name to expect in the certificate (default: the URL's host).
    """

    queue: str = "default"
    jobtype: str = "unifiedq"
    reserve_for: int = _SERVER_DEFAULT_RESERVE
    retry: int = _SERVER_DEFAULT_RETRY
    nack_mode: Literal["push", "fail"] = "push"
    priorities: bool = True
    timeout: float = 10.0
    beat_period: float = 15.0
    poll_interval: float = 0.05
    max_body: int = 16 * 1024 * 1024
    max_job: int = 32 * 1024 * 1024
    tls_ca: str | None = None
    tls_verify: bool = True
    tls_server_name: str | None = None

    def __post_init__(self) -> None:
        for name in (self.queue, *([f"{self.queue}.p9"] if self.priorities else [])):
            if not _QUEUE_RE.match(name):
                raise ValueError(
                    f"queue {self.queue!r}: Faktory queue names may only use letters, digits, "
                    "'.', '_' and '-'"
                )
        if not self.jobtype or any(c.isspace() for c in self.jobtype):
            raise ValueError(f"jobtype must be a non-empty word, not {self.jobtype!r}")
        if not _MIN_RESERVE <= self.reserve_for <= _MAX_RESERVE:
            raise ValueError(
                f"reserve_for must be {_MIN_RESERVE}..{_MAX_RESERVE} seconds (Faktory's range), "
                f"not {self.reserve_for}"
            )
        if self.retry < -1:
            raise ValueError(f"retry must be >= -1, not {self.retry}")
        if not (math.isfinite(self.timeout) and self.timeout > _FETCH_BLOCK):
            raise ValueError(f"timeout must be > {_FETCH_BLOCK} seconds, not {self.timeout}")
        if not 5 <= self.beat_period <= 60:
            raise ValueError(f"beat_period must be 5..60 seconds, not {self.beat_period}")
        if not 0 < self.poll_interval <= 1:
            raise ValueError(f"poll_interval must be in (0, 1] seconds, not {self.poll_interval}")
        if self.max_body < 0:
            raise ValueError(f"max_body must be >= 0, not {self.max_body}")
        if not 1024 <= self.max_job <= _MAX_JOB:
            raise ValueError(
                f"max_job must be 1024..{_MAX_JOB} bytes (Redis's 512 MiB bulk limit, less "
                f"room for Faktory's reservation record), not {self.max_job}"
            )


# -------------------------------------------------------------------------------- connection


class _Conn(_pf.Client):
    """A pyfaktory ``Client`` with the connection-level defects fixed (see module docstring).

    The command methods (``push``, ``push_batch``, ``fetch``, ``info``, ``mutate``, ...) and
    the state machine are pyfaktory's (reached through ``unifiedq._compat.pyfaktory``); this
    class replaces how the socket is opened (verified TLS, a correct HELLO), how replies are
    read, and the heartbeat thread.
    """

    state: State
    rlock: threading.RLock

    def __init__(
        self,
        *,
        host: str,
        port: int,
        password: str | None,
        role: str,
        timeout: float,
        beat_period: float,
        tls: ssl.SSLContext | None,
        server_name: str | None,
    ) -> None:
        wid = uuid.uuid4().hex if role != "producer" else None
        super().__init__(
            faktory_url=f"tcp://{_netloc(host, port)}", role=role, timeout=timeout,
            worker_id=wid, labels=["unifiedq", "python"], beat_period=int(beat_period),
        )
        self.host, self.port, self.password = host, port, password
        self._tls = tls
        self._server_name = server_name or host
        self._buf = bytearray()
        self._chunk = bytearray(1 << 16)
        self._chunk_view = memoryview(self._chunk)
        self._period = beat_period
        self._stop_beat = threading.Event()
        #: Monotonic time by which the current call's replies are due (set by :meth:`using`).
        self.deadline = math.inf
        #: (is FETCH, sent at) of the command whose reply is awaited.
        self._inflight: tuple[bool, float] | None = None
        #: The same for replies that calls stopped waiting for (read first by the next one).
        self._pending: collections.deque[tuple[bool, float]] = collections.deque()
        #: Called with a job a late FETCH reply brought, and the FETCH's send time.
        self.on_late_job: Callable[[dict[str, Any], float], None] | None = None
        #: A command was cut mid-send: the stream cannot be resynchronised.
        self.broken = False
        #: Seconds a late FETCH reply is still worth waiting for (the reservation).
        self.reserve_for = float(_SERVER_DEFAULT_RESERVE)
        self._sock_wait = -1.0  # the socket's timeout as last set (-1: unknown)

    # -- socket -------------------------------------------------------------------------
    def connect(self, deadline: float = math.inf) -> bool:
        """Open the socket (TLS verified when configured), read HI and send HELLO.

        Everything (TCP connect, TLS handshake, HI, HELLO) shares one ``deadline``
        (monotonic), so a stalled server cannot stretch a verb beyond it.
        """
        self.deadline = deadline
        left = min(self.timeout, deadline - time.monotonic())
        if left <= 0:
            raise _Overdue("no time left to connect", broken=True, late=True)
        try:
            raw = socket.create_connection((self.host, self.port), timeout=left)
        except TimeoutError as exc:
            raise _Overdue(f"no TCP connection within {left:.3g} s", broken=True,
                           late=True) from exc
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock: socket.socket = raw
            if self._tls is not None:
                raw.settimeout(max(1e-3, deadline - time.monotonic()))
                sock = self._tls.wrap_socket(raw, server_hostname=self._server_name)
        except TimeoutError as exc:
            raw.close()
            raise _Overdue("no TLS handshake before the deadline", broken=True,
                           late=True) from exc
        except BaseException:
            raw.close()
            raise
        self.sock = sock
        self._sock_wait = -1.0
        self._inflight = (False, time.monotonic())  # HI is the reply to connecting
        greeting = self.read_reply()
        self.check_reply(greeting)
        self.set_state(State.NOT_IDENTIFIED)
        hi = json.loads(greeting[3:])
        if int(hi.get("v", 0)) != 2:
            raise FaktroyWorkProtocolError(f"only FWP version 2 is supported, got {hi!r}")
        hello: dict[str, Any] = {"v": 2}
        if "s" in hi and "i" in hi:
            if not self.password:
                raise _PasswordNeeded("the Faktory server requires a password; put it in the URL")
            digest = (self.password + str(hi["s"])).encode()
            for _ in range(int(hi["i"])):
                digest = hashlib.sha256(digest).digest()
            hello["pwdhash"] = digest.hex()
        if self.role != "producer":
            # pyfaktory sends the *server's* host name here; Faktory wants the worker's.
            hello.update(hostname=socket.gethostname(), wid=self.worker_id, pid=os.getpid(),
                         labels=self.labels)
        reply = self.roundtrip(f"HELLO {json.dumps(hello)}\r\n")
        self.check_reply(reply)
        self.set_state(State.IDENTIFIED)
        self.deadline = math.inf
        if self.role != "producer":
            threading.Thread(target=self._beat_loop, name="unifiedq-faktory-beat",
                             daemon=True).start()
        return True

    def using(self, deadline: float) -> _Using:
        """``with conn.using(deadline):`` hold the connection (``rlock``) for one verb.

        Its replies are due by ``deadline`` (monotonic). Waiting for the lock counts against
        the deadline too (another thread's FETCH may hold it for up to 2 s).
        """
        return _Using(self, deadline)

    def send_command(self, command: str) -> None:
        # No debug logging of the command: HELLO carries the password hash.
        if self._pending:
            self.drain()  # replies of calls that gave up waiting come first: stay in sync
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Overdue("no time left to send", broken=False, late=False)
        self._wait_at_most(left)
        try:
            self.sock.sendall(command.encode("utf-8"))
        except TimeoutError as exc:  # part of a command may be out: the stream is lost
            self.broken = True
            raise _Overdue("the Faktory server stopped reading", broken=True,
                           late=True) from exc
        self._inflight = (command.startswith("FETCH "), time.monotonic())

    def read_reply(self) -> str:
        """Read the reply to the command just sent (pyfaktory's string form).

        If it is not in by the deadline, it stays pending (read and handled before the next
        command, see :meth:`drain`) and ``_Overdue`` is raised: the connection stays usable.
        """
        cur = self._inflight or (False, time.monotonic())
        self._inflight = None
        try:
            return self._read_one(*cur)
        except _Overdue:
            self._pending.append(cur)
            raise

    def drain(self) -> None:
        """Read the replies of earlier calls that stopped waiting for them.

        A late FETCH reply that carries a job goes to ``on_late_job`` (the queue keeps it for
        its next dequeue), so a FETCH the server answered after its caller gave up never
        strands a job.
        """
        while self._pending:
            is_fetch, sent = self._pending[0]
            try:
                reply = self._read_one(is_fetch, sent)
            except _Overdue as exc:
                # Give up on a reply that is long overdue (a proxy may have lost it): drop
                # the connection so the next call reconnects, instead of waiting forever.
                # For a FETCH, only once its reservation is over anyway (the job is
                # Faktory's to retry by then).
                stale = sent + (_FETCH_BLOCK + self.reserve_for if is_fetch else self.timeout)
                if time.monotonic() > stale:
                    self.broken = True
                    raise _Overdue(f"gave up on a reply overdue for {time.monotonic() - sent:.3g}"
                                   " s: the next call reconnects", broken=True,
                                   late=True) from exc
                raise
            self._pending.popleft()
            if reply.startswith("-"):
                # Nobody waits for this reply any more: say it, or an error is silent. For a
                # FETCH it means a lost job: Faktory 1.9 pops the job, then writes its
                # reservation within a 5 s context; a FETCH sent while the server was stalled
                # (seen after SIGSTOP/SIGCONT) or out of memory fails that write, and the
                # popped job is gone from the server (docs/drivers/faktory.md).
                log.warning("faktory: the late reply to an earlier %s was an error%s: %s",
                            "FETCH" if is_fetch else "command",
                            " (Faktory may have lost the job it popped for it)"
                            if is_fetch else "", reply)
            if is_fetch and reply.startswith("$") and reply != "$-1" and self.on_late_job:
                with contextlib.suppress(ValueError, IndexError):
                    self.on_late_job(json.loads(reply.split("\r\n", 1)[1]), sent)

    @property
    def pending(self) -> int:
        """Replies still owed by the server to calls that stopped waiting."""
        return len(self._pending)

    def _read_one(self, is_fetch: bool, sent: float) -> str:
        # A reply is due `expect` after its command (FETCH blocks 2 s on the server); we wait
        # until the call's deadline, and at most `timeout` past the due time (or past now,
        # for the reply of an earlier call).
        due = sent + (_FETCH_BLOCK if is_fetch else 0.0)
        limit = min(self.deadline, max(due, time.monotonic()) + self.timeout)
        while not self._buf or (reply := self._parse()) is None:
            left = limit - time.monotonic()
            if left <= 0:
                late = time.monotonic() >= due + _LATE
                raise _Overdue("no reply from the Faktory server before the deadline",
                               broken=False, late=late)
            self._wait_at_most(left)
            try:
                n = self.sock.recv_into(self._chunk)
            except TimeoutError:
                continue
            if not n:
                raise ConnectionResetError("the Faktory server closed the connection")
            self._buf += self._chunk_view[:n]
        return reply

    def _wait_at_most(self, left: float) -> None:
        """Make the next socket wait end by ``left`` s from now (5 ms tolerance).

        ``settimeout`` is a system call: skip it while the current value is close enough,
        and never so short that the wait would spin.
        """
        cur = self._sock_wait
        if cur > left + 0.005 or cur < left * 0.5:
            cur = self._sock_wait = min(left, _MAX_SOCKET_WAIT)
            self.sock.settimeout(cur)

    def _parse(self) -> str | None:
        """Take one complete RESP reply off the buffer, or None (nothing consumed) if partial.

        Linear time: recv_into a reusable buffer, and the header is only consumed together
        with its data, so a reply cut by a timeout is read whole later.
        """
        buf = self._buf
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        if buf[:1] != b"$" or buf[: end] == b"$-1":
            line = bytes(buf[:end])
            del buf[: end + 2]
            return line.decode("utf-8")
        try:
            n = int(buf[1:end])
        except ValueError:
            raise FaktroyWorkProtocolError(f"bad RESP bulk header {bytes(buf[:40])!r}") from None
        if len(buf) < end + 2 + n + 2:
            return None
        header = bytes(buf[:end]).decode()
        data = bytes(buf[end + 2 : end + 2 + n])
        del buf[: end + 2 + n + 2]
        return f"{header}\r\n{data.decode('utf-8')}"

    # -- heartbeat ----------------------------------------------------------------------
    def builtin_heartbeat(self) -> None:
        """Disable pyfaktory's non-daemon heartbeat thread (``_beat_loop`` replaces it)."""

    def _beat_loop(self) -> None:
        while not self._stop_beat.wait(self._period):
            try:
                with self.using(time.monotonic() + self.timeout):
                    if self.state not in (State.IDENTIFIED, State.QUIET) or self.broken:
                        return
                    self.rss_kb = _rss_kb()  # shown in the Web UI's Busy page
                    self.beat(self.rss_kb)
            except _Overdue as exc:  # a stalled server: its reply is read later; keep beating
                if exc.broken:
                    return
            except Exception as exc:  # the next FETCH reports the broken connection
                log.debug("faktory heartbeat stopped: %s", exc)
                return

    # -- settling on any connection -----------------------------------------------------
    def settle(self, verb: str, payload: Mapping[str, object]) -> None:
        """Send ACK or FAIL (the server accepts both on a producer connection)."""
        reply = self.roundtrip(f"{verb} {json.dumps(payload)}\r\n")
        self.check_reply(reply)

    def push_line(self, line: str) -> None:
        """``PUSH <job JSON>`` of a job the queue encoded (and size-checked) already."""
        reply = self.roundtrip(f"PUSH {line}\r\n")
        if reply != "+OK":
            self.check_reply(reply)

    def push_lines(self, lines: list[str]) -> str:
        """``PUSHB [<job JSON>, ...]``; the raw reply (``+OK`` or a bulk map of refusals)."""
        reply = self.roundtrip(f"PUSHB [{', '.join(lines)}]\r\n")
        self.check_reply(reply)
        return reply

    def ack_jid(self, jid: str) -> None:
        """``ACK {"jid": ...}``, formatted without a json.dumps of a dict (the hot path)."""
        with self.rlock:
            self.send_command(f'ACK {{"jid":{_json_str(jid)}}}\r\n')
            reply = self.read_reply()
        if reply != "+OK":
            self.check_reply(reply)

    def queue_latency(self, queues: list[str]) -> dict[str, float]:
        """``QUEUE LATENCY q...`` (pyfaktory has no method for it)."""
        reply = self.roundtrip(f"QUEUE LATENCY {' '.join(queues)}\r\n")
        self.check_reply(reply)
        n, data = reply.split("\r\n", 1) if reply.startswith("$") else ("$-1", "")
        result: dict[str, float] = json.loads(data) if n != "$-1" else {}
        return result

    def shutdown(self) -> None:
        """Stop the heartbeat and close the socket (END first when still identified)."""
        self._stop_beat.set()
        # END only on an idle, in-sync connection, and never wait long for the lock: a
        # stalled server must not hold up close() (closing the socket is enough for it).
        if self.rlock.acquire(timeout=0.5):
            try:
                if (self.state in (State.IDENTIFIED, State.QUIET, State.TERMINATING)
                        and not self._pending and not self.broken):
                    with contextlib.suppress(Exception):
                        self.sock.settimeout(0.5)
                        self.sock.sendall(b"END\r\n")
            finally:
                self.rlock.release()
        with contextlib.suppress(Exception):
            self.sock.close()
        self.state = State.DISCONNECTED


class _Using:
    """What :meth:`_Conn.using` returns (a class: it runs around every command)."""

    __slots__ = ("conn", "deadline", "outer")

    def __init__(self, conn: _Conn, deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self.outer = math.inf

    def __enter__(self) -> _Conn:
        conn = self.conn
        lock = conn.rlock
        if not lock.acquire(blocking=False):
            left = self.deadline - time.monotonic()
            if not lock.acquire(timeout=max(0.0, min(left, threading.TIMEOUT_MAX))):
                raise _Overdue("the connection stayed busy with another call until the "
                               "deadline", broken=False, late=True)
        self.outer = conn.deadline
        conn.deadline = min(self.outer, self.deadline)
        return conn

    def __exit__(self, et: object, exc: object, tb: object) -> None:
        self.conn.deadline = self.outer
        self.conn.rlock.release()


#: JSON string literal of a str (the C encoder json.dumps uses for strings).
_json_str: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _rss_kb() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return None


class _PasswordNeeded(Exception):
    pass


class _Overdue(TimeoutError):
    """The server did not answer (or read) before the call's deadline.

    Attributes:
        broken: The stream is out of sync (a command was cut mid-send): drop the connection.
            Otherwise the missing reply is pending on the connection and read later.
        late: The reply is more than ``_LATE`` s past the time it was due (a stalled server,
            not just a deadline that came first).
    """

    def __init__(self, message: str, *, broken: bool, late: bool) -> None:
        super().__init__(message)
        self.broken = broken
        self.late = late


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -------------------------------------------------------------------------------- error mapping


def _map_error(what: str, exc: BaseException) -> tuple[BackendError, bool] | None:
    """The unifiedq error for a pyfaktory/socket/TLS error, and whether the link is broken."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return AuthenticationError(
            f"{what}: the Faktory server's TLS certificate was refused: {exc.verify_message}"
        ), True
    if isinstance(exc, _PasswordNeeded):
        return AuthenticationError(f"{what}: {exc}"), True
    if isinstance(exc, FaktroyWorkProtocolError):
        msg = _pf.error_text(exc)
        if "OOM command not allowed" in msg:  # Faktory's Redis is at its maxmemory
            return BackendFull(f"{what}: Faktory's storage is full: {msg}"), False
        if "Invalid password" in msg:
            return AuthenticationError(f"{what}: the Faktory server refused the password"), True
        if _pf.connection_unusable(exc):
            return BackendConnectionError(f"{what}: {msg}"), True
        return BackendError(f"{what}: Faktory replied {msg}"), False
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError | KeyError | TypeError):
        return ProtocolError(f"{what}: unexpected reply from the Faktory server: {exc}"), True
    if isinstance(exc, _Overdue):
        return BackendTimeout(f"{what}: {exc}"), exc.broken
    if isinstance(exc, TimeoutError):
        return BackendTimeout(f"{what}: no answer from the Faktory server: {exc}"), True
    if isinstance(exc, OSError | EOFError):  # includes ssl.SSLError
        return BackendConnectionError(f"{what}: {type(exc).__name__}: {exc}"), True
    return None


class _translate:  # noqa: N801 - used like a function: ``with _translate(...):``
    """Map pyfaktory, socket and TLS errors onto the unifiedq error tree (the one place).

    A class rather than ``@contextmanager``: it wraps every command, and this is cheaper.
    """

    __slots__ = ("on_broken", "what")

    def __init__(self, what: str, on_broken: Callable[[], None]) -> None:
        self.what = what
        self.on_broken = on_broken

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None:
            return
        mapped = _map_error(self.what, exc)
        if mapped is None:
            return
        err, broken = mapped
        if broken:
            self.on_broken()
        raise err from exc


# -------------------------------------------------------------------------------- leases


@dataclasses.dataclass(frozen=True, slots=True)
class _Receipt:
    """What ack/nack need: the Faktory job as fetched and this delivery's lease."""

    fjid: str
    token: int
    deadline: float  # monotonic; conservative (measured from before FETCH was sent)
    raw: Mapping[str, Any]


# Jobs held by any handle of this process, keyed by (server, Faktory jid) -> delivery token,
# so a second ack, or an ack of a delivery whose reservation ran out, is refused.
_held_lock = threading.Lock()
_held: dict[tuple[str, str], int] = {}
_tokens = itertools.count(1)


#: The custom key of Faktory Enterprise's expiring jobs (RFC 3339); written with a deadline.
_EXPIRES_AT = "expires_at"


#: The custom key of Faktory Enterprise's expiring jobs (RFC 3339); written with a deadline.
_EXPIRES_AT = "expires_at"


def _now_rfc3339(offset: float = 0.0) -> str:
    t = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=offset)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return _dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


# -------------------------------------------------------------------------------- the queue


class FaktoryQueue(QueueBase):
    """A queue on a Faktory server (blocking face; ``connect_async`` bridges it).

    Thread-safe: each handle has one producer connection (PUSH, INFO, MUTATE, ...) and, from
    its first dequeue, one consumer connection (FETCH, BEAT; ACK/FAIL when it is idle).
    Calls on one connection take turns, so a dequeue may wait for another thread's FETCH
    (up to 2 s); give each concurrent consumer its own handle.
    """

    driver = "faktory"
    _BASE_CAPS = (
        Capability.ACK | Capability.DELAY | Capability.BATCH | Capability.BLOCKING_DEQUEUE
        | Capability.HEADERS | Capability.DURABLE | Capability.CROSS_PROCESS
        | Capability.DISTRIBUTED | Capability.NATIVE_SYNC | Capability.RELEASE
        | Capability.DEADLINE
    )
    capabilities = _BASE_CAPS | Capability.PRIORITY
    #: A body enqueued with ``content-type: application/json`` becomes Faktory's native
    #: ``args`` (``TypedQueue`` with the JSON codec adds that header when this is True).
    native_json = True

    def __init__(self, options: FaktoryOptions, url: URL) -> None:
        super().__init__(options.queue, url)
        self.options = options
        self.max_body = options.max_body
        if not options.priorities:
            self.capabilities = self._BASE_CAPS
        self._host = url.host or "localhost"
        self._port = url.port or DEFAULT_PORT
        self._server = _netloc(self._host, self._port)
        self._password = url.password
        self._tls_wanted = url.scheme == "faktory+tls"
        self._tls: ssl.SSLContext | None = None
        # Highest priority first: FETCH tries its queues in the order given.
        subs = [f"{options.queue}.p{p}" for p in range(9, 0, -1)] if options.priorities else []
        self._queues = [*subs, options.queue]
        self._plock = threading.Lock()  # guards creating/replacing the connections
        self._pconn: _Conn | None = None
        self._cconn: _Conn | None = None
        self._mine: dict[str, Job] = {}  # jobs this handle holds, by Faktory jid
        # Jobs of FETCH replies read after their dequeue gave up, for the next dequeue.
        self._stash: collections.deque[Job] = collections.deque()
        self._giving_back = False

    @classmethod
    def from_url(cls, url: URL, options: Mapping[str, object]) -> Self:
        """Build a handle from ``faktory[+tls]://[:password@]host[:port]?queue=...``."""
        if url.path:
            raise InvalidURL(
                f"faktory URLs name the queue with ?queue=..., not a path: {url.redacted()!r}"
            )
        if url.username:
            raise InvalidURL("Faktory has no user names; write faktory://:password@host:port")
        return cls(parse_options(FaktoryOptions, url.query, options, driver="faktory"), url)

    # -- connections --------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self._tls_wanted:
            return None
        if self._tls is None:
            o = self.options
            ctx = ssl.create_default_context(cafile=o.tls_ca)
            if not o.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._tls = ctx
        return self._tls

    def _open(self, role: str, deadline: float) -> _Conn:
        o = self.options
        conn = _Conn(host=self._host, port=self._port, password=self._password, role=role,
                     timeout=o.timeout, beat_period=o.beat_period, tls=self._ssl_context(),
                     server_name=o.tls_server_name)
        conn.reserve_for = o.reserve_for
        if role != "producer":
            conn.on_late_job = self._late_job
        try:
            conn.connect(deadline)
        except BaseException:
            conn.shutdown()
            raise
        return conn

    def _drop(self, consumer: bool) -> None:
        with self._plock:
            conn = self._cconn if consumer else self._pconn
            if consumer:
                self._cconn = None
            else:
                self._pconn = None
        if conn is not None:
            conn.shutdown()

    def _connection(self, consumer: bool, deadline: float) -> _Conn:
        conn = self._cconn if consumer else self._pconn
        if conn is not None:
            return conn
        # One connect at a time; waiting for another thread's connect counts too.
        left = deadline - time.monotonic()
        if not self._plock.acquire(timeout=max(0.0, min(left, threading.TIMEOUT_MAX))):
            raise _Overdue("another thread's connect did not finish before the deadline",
                           broken=False, late=True)
        try:
            if not (self._giving_back and not consumer):
                self._check_open()
            conn = self._cconn if consumer else self._pconn
            if conn is None:
                conn = self._open("consumer" if consumer else "producer", deadline)
                if consumer:
                    self._cconn = conn
                else:
                    self._pconn = conn
            return conn
        finally:
            self._plock.release()

    def _deadline(self) -> float:
        """The deadline of a verb without a timeout argument: ``timeout`` from now."""
        return time.monotonic() + self.options.timeout

    def _p(self, what: str, fn: Callable[[_Conn], T], deadline: float | None = None) -> T:
        """Run ``fn`` on the producer connection within ``deadline``, translating errors."""
        d = self._deadline() if deadline is None else deadline
        with _translate(what, lambda: self._drop(False)), \
                self._connection(False, d).using(d) as conn:
            return fn(conn)

    # -- enqueue ------------------------------------------------------------------------
    def _job_dict(self, req: EnqueueRequest) -> dict[str, Any]:
        o = self.options
        queue = o.queue if not req.priority or not o.priorities else f"{o.queue}.p{req.priority}"
        headers = dict(req.headers)
        if headers:
            _check_text(headers)
        jobtype = o.jobtype
        if (t := headers.get(_TYPE)) is not None:
            jobtype = _check_jobtype(t)
            if t != o.jobtype:  # read back from the jobtype; the default's must be kept
                del headers[_TYPE]
        meta: dict[str, Any] = {}
        custom: dict[str, Any] = {}
        if headers.get(CONTENT_TYPE_HEADER) == JSON_CONTENT_TYPE:
            # Native: the JSON body becomes Faktory's args and the headers its custom
            # keys, so a Go/Ruby/Node worker for this jobtype runs it with real arguments.
            del headers[CONTENT_TYPE_HEADER]
            value = _json_body(req.body)
            if isinstance(value, list):
                args, meta["body"] = value, _BODY_ARGS
            else:
                args, meta["body"] = [value], _BODY_ARG0
            if _META in headers:  # the one name custom cannot carry at its top level
                meta["headers"] = {_META: headers.pop(_META)}
            custom.update(headers)
        else:
            args = [base64.b64encode(req.body).decode("ascii")]
            if jobtype != o.jobtype:  # the jobtype no longer says "base64 in args[0]"
                meta["body"] = _BODY_B64
            if headers:
                meta["headers"] = headers
        d: dict[str, Any] = {"jid": req.job_id, "jobtype": jobtype, "queue": queue,
                             "args": args}
        if o.retry != _SERVER_DEFAULT_RETRY:
            d["retry"] = o.retry
        if o.reserve_for != _SERVER_DEFAULT_RESERVE:
            d["reserve_for"] = o.reserve_for
        if req.delay > 0:
            d["at"] = _now_rfc3339(req.delay)
        if req.priority is not None:
            meta["priority"] = req.priority
        if req.timeout is not None:
            meta["timeout"] = req.timeout
        if req.deadline is not None:
            # Ours (exact), and Faktory Enterprise's expiring-jobs key: its server drops the
            # job itself past that time. OSS Faktory ignores it; our dequeue sheds it.
            meta["deadline"] = req.deadline
            custom[_EXPIRES_AT] = _now_rfc3339(req.deadline - time.time())
        if meta:
            custom[_META] = meta
        if custom:
            d["custom"] = custom
        return d

    def _encode(self, job: Mapping[str, Any]) -> str:
        """The job as the JSON line Faktory stores; LimitExceeded over ``max_job``."""
        line = json.dumps(job)  # ASCII (ensure_ascii): its length is its size in bytes
        if len(line) > self.options.max_job:
            raise LimitExceeded(
                f"job of {len(line)} bytes (encoded: args, headers, metadata) is over "
                f"max_job={self.options.max_job}; nothing was sent",
                limit="max_job", size=len(line), maximum=self.options.max_job,
            )
        return line

    def _enqueue(self, req: EnqueueRequest) -> str:
        line = self._encode(self._job_dict(req))
        self._p("enqueue", _call("push_line", line))
        return req.job_id

    def _enqueue_many(self, reqs: list[EnqueueRequest]) -> list[str]:
        # Encode (and check) every job before the first byte goes out.
        lines = [self._encode(self._job_dict(r)) for r in reqs]
        deadline = self._deadline()  # one deadline for every chunk
        done = 0
        for chunk in _chunks(lines, _PUSHB_CHUNK, self.options.max_job):
            reply: str = self._p("enqueue_many", _call("push_lines", chunk), deadline)
            failed = _pushb_errors(reply)
            if failed:
                full = any("OOM command not allowed" in m for m in failed.values())
                raise (BackendFull if full else BackendError)(
                    f"enqueue_many: Faktory refused {len(failed)} of {len(chunk)} jobs in a "
                    f"batch (after {done} were enqueued): {dict(list(failed.items())[:3])}"
                )
            done += len(chunk)
        return [r.job_id for r in reqs]

    # -- dequeue ------------------------------------------------------------------------
    def _ready_count(self, deadline: float | None = None) -> int:
        info = self._p("size", lambda c: c.info(), deadline)
        sizes = info["faktory"]["queues"]
        return sum(int(sizes.get(q, 0)) for q in self._queues)

    def _fetch(self, deadline: float) -> Job | None:
        """One FETCH (blocks up to 2 s on the server); None if nothing came in time."""
        with _translate("dequeue", lambda: self._drop(True)), \
                self._connection(True, deadline).using(deadline) as conn:
            if conn.state != State.IDENTIFIED:
                # The operator quieted or stopped this worker (Web UI): no new jobs.
                time.sleep(max(0.0, min(deadline - time.monotonic(), _FETCH_BLOCK)))
                return None
            self._check_open()  # close() took the connection before us: no more FETCH
            if conn.pending:
                conn.drain()  # a late FETCH reply may bring a job: hand that out first
                if self._stash:
                    return None
            started = time.monotonic()
            raw = conn.fetch(self._queues)
            if raw is None:
                return None
            # Registered while the connection is held, so a concurrent close() (which takes
            # the connection first) sees the job and gives it back.
            return self._to_job(raw, started + self.options.reserve_for)

    def _late_job(self, raw: dict[str, Any], sent: float) -> None:
        """A FETCH reply that came after its dequeue gave up: keep the job for the next one."""
        self._stash.append(self._to_job(raw, sent + self.options.reserve_for))

    def _from_stash(self) -> Job | None:
        while self._stash:
            job = self._stash.popleft()
            r = job.receipt
            assert isinstance(r, _Receipt)
            if time.monotonic() < r.deadline:
                return job
            with _held_lock:  # its reservation ran out meanwhile: Faktory retries it
                _held.pop((self._server, r.fjid), None)
            self._mine.pop(r.fjid, None)
        return None

    def _dequeue(self, timeout: float | None) -> Job | None:
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while True:
            if self._stash and (job := self._from_stash()) is not None:
                return job
            remaining = deadline - time.monotonic()
            try:
                if remaining >= _FETCH_MIN:
                    job = self._fetch(deadline)
                    if job is not None:
                        return job
                    continue
                # FETCH cannot wait less than 2 s on the server: for shorter waits, FETCH
                # only when INFO shows a ready job (another consumer may still win it; its
                # reply is then read by the next call if it comes after our deadline),
                # otherwise poll until the deadline.
                probe = max(deadline, time.monotonic() + _PROBE)
                if self._ready_count(probe) > 0:
                    job = self._fetch(probe)
                    if job is not None:
                        return job
            except BackendTimeout as exc:
                # The deadline came before a reply that is not yet overdue: the reply is
                # pending and read by the next call (a job in it is kept for that call).
                cause = exc.__cause__
                if isinstance(cause, _Overdue) and not (cause.late or cause.broken):
                    return self._from_stash()
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._from_stash()
            time.sleep(min(self.options.poll_interval, remaining))

    def _dequeue_many(self, max_jobs: int, timeout: float | None) -> list[Job]:
        # No batch FETCH: one job at a time. If a later FETCH fails, return what was taken
        # (the next call reports the error): raising would strand those jobs, reserved
        # for this handle and seen by nobody, until reserve_for.
        first = self._dequeue(timeout)
        if first is None:
            return []
        jobs = [first]
        while len(jobs) < max_jobs:
            try:
                job = self._dequeue(0.0)
            except BackendError:
                break
            if job is None:
                break
            jobs.append(job)
        return jobs

    def _to_job(self, raw: Mapping[str, Any], deadline: float) -> Job:
        fjid = raw["jid"]
        custom = raw.get("custom")
        custom = custom if isinstance(custom, dict) else {}
        meta = custom.get(_META)
        meta = meta if isinstance(meta, dict) else {}
        args = raw.get("args")
        jobtype = raw.get("jobtype")
        kind = meta.get("body")
        body: bytes | None = None
        headers: dict[str, str] = {}
        if isinstance(args, list):
            if kind == _BODY_ARGS or (kind == _BODY_ARG0 and len(args) == 1):
                body = _json_bytes(args if kind == _BODY_ARGS else args[0])
                headers[CONTENT_TYPE_HEADER] = JSON_CONTENT_TYPE
            elif ((kind == _BODY_B64 or (kind is None and jobtype == self.options.jobtype))
                    and len(args) == 1 and isinstance(args[0], str)):
                # Ours (or an old-format job: default jobtype, no marker): base64 bytes.
                with contextlib.suppress(binascii.Error, ValueError):
                    body = binascii.a2b_base64(args[0], strict_mode=True)
        if body is None:  # a job pushed by another Faktory client: deliver its args as JSON
            body = _json_bytes(args)
            headers["faktory.jobtype"] = str(jobtype)
        # Faktory's custom keys are the headers of native jobs (non-strings as their JSON).
        for k, v in custom.items():
            if k != _META and not (k == _EXPIRES_AT and "deadline" in meta):
                headers[str(k)] = v if isinstance(v, str) else _json_bytes(v).decode()
        if isinstance(jobtype, str) and jobtype != self.options.jobtype:
            headers[_TYPE] = jobtype
        hdrs = meta.get("headers")
        if isinstance(hdrs, dict):
            headers.update({str(k): str(v) for k, v in hdrs.items()})
        attempt = int(meta.get("attempt", 1))
        failure = raw.get("failure")
        if isinstance(failure, dict):
            attempt += int(failure.get("retry_count", 0)) + 1
        enqueued = _parse_time(raw.get("created_at")) or _parse_time(raw.get("enqueued_at"))
        prio = meta.get("priority")
        dl, to = meta.get("deadline"), meta.get("timeout")
        if not isinstance(dl, int | float):  # a job from another client: expires_at only
            dl = _parse_time(custom.get(_EXPIRES_AT))
        token = next(_tokens)
        with _held_lock:
            _held[(self._server, fjid)] = token
        job = Job(
            id=str(meta.get("id", fjid)), queue=self._name, body=body, attempt=attempt,
            enqueued_at=enqueued if enqueued is not None else time.time(), headers=headers,
            priority=prio if isinstance(prio, int) else None,
            receipt=_Receipt(fjid, token, deadline, raw),
            deadline=float(dl) if isinstance(dl, int | float) else None,
            timeout=float(to) if isinstance(to, int | float) else None,
        )
        self._mine[fjid] = job
        return job

    # -- settle -------------------------------------------------------------------------
    def _claim(self, job: Job) -> _Receipt:
        r = job.receipt
        if not isinstance(r, _Receipt):
            raise InvalidArgument(f"job {job.id!r} was not dequeued from a Faktory queue")
        key = (self._server, r.fjid)
        with _held_lock:
            if _held.get(key) != r.token:
                raise JobNotLeased(
                    f"job {job.id!r} is not leased by this delivery: it was already acked or "
                    "nacked, or its reservation expired and it was handed out again"
                )
            del _held[key]
        self._mine.pop(r.fjid, None)
        if time.monotonic() >= r.deadline:
            raise JobNotLeased(
                f"job {job.id!r}: its Faktory reservation ({self.options.reserve_for} s) ran "
                "out; the server retries it (settle jobs within reserve_for)"
            )
        return r

    def _unclaim(self, job: Job, r: _Receipt) -> None:
        """Undo a claim when the settle never reached the server (so it may be retried)."""
        with _held_lock:
            _held.setdefault((self._server, r.fjid), r.token)
        self._mine[r.fjid] = job

    def _settle(self, what: str, job: Job, r: _Receipt, fn: Callable[[_Conn], None],
                deadline: float, idempotent: bool = False) -> None:
        try:
            try:
                cconn = self._cconn
                # Settle on the consumer connection when it is idle (one connection, as a
                # plain worker does); when another thread is blocked in FETCH on it, use the
                # producer connection, so a settle never waits behind a FETCH.
                if cconn is not None and cconn.rlock.acquire(blocking=False):
                    try:
                        with _translate(what, lambda: self._drop(True)), \
                                cconn.using(deadline):
                            fn(cconn)
                    finally:
                        cconn.rlock.release()
                else:
                    self._p(what, fn, deadline)
            except BackendConnectionError as exc:
                if (not idempotent or isinstance(exc, BackendTimeout)
                        or time.monotonic() >= deadline):
                    raise
                # The connection was closed or reset (e.g. a server restart; Faktory keeps
                # reservations across restarts). ACK is idempotent (Faktory answers OK for
                # a jid it no longer holds): again on a connection of its own (the handle's
                # others may be stale too) until it works or the same deadline passes.
                self._retry_on_fresh(what, fn, deadline)
        except BackendConnectionError:
            self._unclaim(job, r)
            raise
        except BackendError as exc:
            if "not found" in str(exc).lower():
                raise JobNotLeased(
                    f"{what}: Faktory no longer holds a reservation for job {r.fjid!r}"
                ) from exc
            raise

    def _retry_on_fresh(self, what: str, fn: Callable[[_Conn], None], deadline: float) -> None:
        """Run an idempotent ``fn`` on new connections until it works or ``deadline``."""
        while True:
            try:
                with _translate(what, lambda: None):
                    conn = self._open("producer", deadline)
                    try:
                        with conn.using(deadline):
                            fn(conn)
                        return
                    finally:
                        conn.shutdown()
            except BackendConnectionError as exc:
                # Refused while the server restarts: wait a little, within the deadline.
                if isinstance(exc, BackendTimeout) or time.monotonic() + 0.1 >= deadline:
                    raise
                time.sleep(0.1)

    def _ack(self, job: Job) -> None:
        r = self._claim(job)
        self._settle("ack", job, r, lambda c: c.ack_jid(r.fjid), self._deadline(), True)

    def _copy(self, job: Job, r: _Receipt, delay: float, counted: bool) -> dict[str, Any]:
        """The job as it should be pushed again: new Faktory jid, same unifiedq id.

        ``counted`` (a nack): the next attempt number, and Faktory's failure record dropped
        (the attempt number already includes its retry count). Not counted (a release): the
        attempt number and Faktory's failure record (its retry count) are kept as they were.
        """
        drop = ("failure", "enqueued_at", "at") if counted else ("enqueued_at", "at")
        d = {k: v for k, v in r.raw.items() if k not in drop}
        custom = dict(d.get("custom") or {})
        meta = dict(custom.get(_META) or {})
        meta["id"] = job.id
        if counted:
            meta["attempt"] = job.attempt + 1
        custom[_META] = meta
        d.update(jid=str(uuid.uuid4()), custom=custom)
        if delay > 0:
            d["at"] = _now_rfc3339(delay)
        return d

    def _push_back(self, what: str, job: Job, r: _Receipt, delay: float, counted: bool,
                   deadline: float) -> None:
        """PUSH a copy, then ACK the original (a crash in between duplicates, never loses)."""
        line = json.dumps(self._copy(job, r, delay, counted))
        try:
            self._p(what, _call("push_line", line), deadline)
        except BackendError:
            self._unclaim(job, r)
            raise
        self._settle(what, job, r, lambda c: c.ack_jid(r.fjid), deadline, True)

    def _nack(self, job: Job, requeue: bool, delay: float) -> None:
        self._nack_by(job, requeue, delay, self._deadline())

    def _settle_expired(self, job: Job) -> None:
        # Dead with the failure "unifiedq.Expired: expired" (what the Web UI's Dead tab shows).
        self._nack_by(job, False, 0.0, self._deadline(), why=("unifiedq.Expired", "expired"))

    def _nack_by(self, job: Job, requeue: bool, delay: float, deadline: float, *,
                 why: tuple[str, str] = ("unifiedq.DeadLetter", "nack(requeue=False)")) -> None:
        r = self._claim(job)
        if not requeue:
            fail = {"jid": r.fjid, "errtype": why[0], "message": why[1], "backtrace": []}
            self._settle("nack", job, r, lambda c: c.settle("FAIL", fail), deadline)
            # FAIL put it in the retry set (unless retry is 0 or -1): move it to the dead set.
            kill = _pf.mutate_operation("kill", "retries", jids=[r.fjid])
            self._p("nack", lambda c: c.mutate(kill), deadline)
            return
        if self.options.nack_mode == "fail" and delay == 0:
            fail = {"jid": r.fjid, "errtype": "unifiedq.Nack",
                    "message": "nack(requeue=True)", "backtrace": []}
            self._settle("nack", job, r, lambda c: c.settle("FAIL", fail), deadline)
            return
        self._push_back("nack", job, r, delay, True, deadline)

    def _release(self, job: Job) -> None:
        # Faktory has no command that requeues a reserved job without counting a retry (FAIL
        # and an expired reservation both count): push a copy that keeps the attempt number
        # and Faktory's retry count, then ACK the original.
        r = self._claim(job)
        self._push_back("release", job, r, 0.0, False, self._deadline())

    # -- inspection ---------------------------------------------------------------------
    def _size(self) -> int:
        return self._ready_count()

    def _purge(self) -> int:
        def remove(c: _Conn) -> int:
            # One connection, held back to back: as close to atomic as FWP allows.
            sizes = c.info()["faktory"]["queues"]
            n = sum(int(sizes.get(q, 0)) for q in self._queues)
            c.queue_remove(self._queues)
            return n

        deadline = self._deadline()  # one deadline for all its commands
        n = self._p("purge", remove, deadline)
        # Delayed and retrying jobs of this queue live in Faktory's global sorted sets;
        # MUTATE matches them with a Redis glob over the job JSON (Go writes the fields in a
        # fixed order: ..."jid":"…","queue":"<name>","jobtype":...).
        q = self.options.queue
        globs = [f'*","queue":"{q}","jobtype":"*']
        if self.options.priorities:
            globs.append(f'*","queue":"{q}.p[1-9]","jobtype":"*')
        for target in ("scheduled", "retries"):
            for g in globs:
                op = _pf.mutate_operation("discard", target, regexp=g)
                self._p("purge", _call("mutate", op), deadline)
        return n

    def latency(self) -> float:
        """Seconds since the oldest ready job of this queue was enqueued (0.0 when empty).

        Uses ``QUEUE LATENCY``; with priorities, the largest latency of the sub-queues.
        """
        self._check_open()
        lat = self._p("latency", lambda c: c.queue_latency(self._queues))
        return max((float(v) for v in lat.values()), default=0.0)

    def stats(self) -> Mapping[str, object]:
        """What Faktory can tell about this queue (``INFO`` and ``QUEUE LATENCY``).

        Per queue (summed over the priority sub-queues): ``depth`` = ``pending`` = ready jobs
        (as ``size()``) and ``oldest_age`` (as :meth:`latency`). Faktory keeps scheduled,
        retrying, dead and in-progress jobs in server-wide sets with no per-queue count, so
        ``active``, ``scheduled``, ``retry`` and ``dead`` are None (unknown) and the server's
        totals come as ``server_working``, ``server_scheduled``, ``server_retries`` and
        ``server_dead`` (every queue of the server), with ``server`` = its version.

        Raises:
            QueueClosed: The handle is closed.
            BackendConnectionError: Faktory did not answer.
        """
        self._check_open()

        def read(c: _Conn) -> tuple[dict[str, Any], dict[str, float]]:
            return c.info(), c.queue_latency(self._queues)

        info, lat = self._p("stats", read)
        fk = info["faktory"]
        ready = sum(int(fk["queues"].get(q, 0)) for q in self._queues)
        sets = fk.get("sets", {})
        out: dict[str, object] = {
            "depth": ready, "pending": ready,
            "oldest_age": max((float(v) for v in lat.values()), default=0.0),
            "active": None, "scheduled": None, "retry": None, "dead": None,
        }  # fmt: skip
        for key, name in (("working", "server_working"), ("scheduled", "server_scheduled"),
                          ("retries", "server_retries"), ("dead", "server_dead")):
            out[name] = int(sets[key]) if key in sets else None
        version = info.get("server", {}).get("faktory_version")
        out["server"] = f"Faktory {version}" if version else None
        return out

    def server_info(self) -> dict[str, Any]:
        """Return Faktory's ``INFO`` reply (server stats, queue sizes, set sizes)."""
        self._check_open()
        info: dict[str, Any] = self._p("info", lambda c: c.info())
        return info

    # -- close --------------------------------------------------------------------------
    def _close(self) -> None:
        # Give back what this handle still holds at once, without counting an attempt (as
        # release), instead of letting the reservations run out; best effort within one
        # `timeout` for everything: what fails comes back after reserve_for. Take the
        # consumer connection first: that waits for a FETCH another thread has in flight
        # (a cancelled async dequeue) and reads a reply that came late, so their jobs are
        # given back too.
        deadline = self._deadline()
        self._giving_back = True
        try:
            cconn = self._cconn
            if cconn is not None:
                with contextlib.suppress(Exception), cconn.using(deadline):
                    if cconn.pending:
                        cconn.drain()
            self._stash.clear()  # its jobs are in _mine too
            for job in list(self._mine.values()):
                if time.monotonic() >= deadline:
                    break
                with contextlib.suppress(Exception):
                    r = self._claim(job)
                    self._push_back("close", job, r, 0.0, False, deadline)
        finally:
            self._mine.clear()
            self._giving_back = False
            self._drop(True)
            self._drop(False)


def _call(method: str, *args: Any) -> Callable[[_Conn], Any]:
    """``conn.<method>(*args)`` as a function of the connection (binds args now)."""
    return lambda conn: getattr(conn, method)(*args)


def _chunks(lines: list[str], count: int, size: int) -> Iterator[list[str]]:
    """Split encoded jobs into PUSHB batches of at most ``count`` jobs and ~``size`` bytes.

    Small batches keep each PUSHB line within what Faktory holds in memory comfortably and
    within its 5 s per-command deadline (jobs past it are refused, the batch half-applied).
    """
    chunk: list[str] = []
    total = 0
    for line in lines:
        if chunk and (len(chunk) >= count or total + len(line) > size):
            yield chunk
            chunk, total = [], 0
        chunk.append(line)
        total += len(line) + 1
    if chunk:
        yield chunk


def _check_jobtype(jobtype: str) -> str:
    """A ``type`` header as a Faktory jobtype (the rule of the ``jobtype`` option)."""
    if not jobtype or any(c.isspace() for c in jobtype) or len(jobtype) > 1024:
        raise InvalidArgument(
            f"header 'type' is the Faktory jobtype: a non-empty word of at most 1024 "
            f"characters without spaces, not {jobtype[:80]!r}; nothing was sent"
        )
    return jobtype


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (Faktory's Go server cannot store it)")


#: Faktory's Go server decodes args into float64 and stores them re-encoded: integers beyond
#: +-2**53 would silently change, so they are refused instead.
_MAX_SAFE_INT = 2**53


def _safe_int(text: str) -> int:
    n = int(text)
    if abs(n) > _MAX_SAFE_INT:
        raise ValueError(
            f"integer {text[:40]} is beyond +-2**53: Faktory (Go float64) would change it; "
            "send it as a string"
        )
    return n


# Built once: json.loads with hooks would build a decoder per call.
_STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_safe_int)


def _json_body(body: bytes) -> Any:
    """The value of a body sent as ``content-type: application/json`` (strict JSON)."""
    try:
        return _STRICT_JSON.decode(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(
            f"the body is marked {CONTENT_TYPE_HEADER}: {JSON_CONTENT_TYPE} but is not "
            f"UTF-8 JSON ({exc}); nothing was sent"
        ) from None


def _json_bytes(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON, the form :class:`~unifiedq.JsonCodec` writes."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _check_text(headers: Mapping[str, str]) -> None:
    """Headers must be valid Unicode: Faktory (Go) turns a lone surrogate into U+FFFD."""
    for k, v in headers.items():
        try:
            k.encode("utf-8")
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(
                f"header {k!r}: Faktory stores JSON as UTF-8 and would change a lone "
                "surrogate; headers must be valid Unicode text"
            ) from None


def _pushb_errors(reply: str) -> dict[str, str]:
    if not reply.startswith("$") or reply.startswith("$-1"):
        return {}
    _, data = reply.split("\r\n", 1)
    errors: dict[str, str] = json.loads(data)
    return errors


sync_class = FaktoryQueue
async_class = None
