"""Publishing: messages with priorities and delays, written in batches, publisher confirms.

A job becomes a persistent message whose ``message_id`` is the job id; its attempt count and
first enqueue time travel in the ``x-uq-*`` headers. A delayed job goes through the default
exchange to its delay queue (``Q.delay.<ms>``), which dead-letters it into ``Q`` when its TTL
runs out. Every publish is ``mandatory`` on a channel in confirm mode and returns only once the
broker confirmed it; a batch is written many messages per socket write (the frames are encoded
here, with py-amqp's encoders, see ``unifiedq/_compat/amqp.py``) and waits once for all its
confirms. A refused or unroutable message makes the driver declare the topology again and
republish it once; after a lost connection only the unconfirmed messages are published again.

Publishing has its own connection (see :mod:`.connection`). Every limit of the broker that
would otherwise close that connection (a content header larger than the negotiated
``frame_max``, a header name longer than a short string's 255 bytes, a delay past RabbitMQ's
timer range) is checked before the first byte is written, and raises ``LimitExceeded``;
a hard connection error the broker sends in answer to our own frames (``FRAME_ERROR``,
``SYNTAX_ERROR``, ...) is not retried. A connection the broker blocked (memory or disk
alarm) makes publishes raise ``BackendFull``.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import time
from typing import Any

import amqp
import amqp.exceptions as amqp_exc

from ..._compat import amqp as compat
from ..._errors import BackendError, BackendFull, InvalidArgument, LimitExceeded, QueueFull
from ..._job import EnqueueRequest
from .connection import ConnectionMixin
from .errors import CONN_ERRORS, retryable, translate
from .topology import DELAY_REDECLARE

__all__ = [
    "BROKER_HEADERS",
    "H_ATTEMPT",
    "H_DEADLINE",
    "H_ENQUEUED",
    "H_TIMEOUT",
    "MAX_DELAY_MS",
    "RESERVED_PREFIX",
    "Outgoing",
    "PublishingMixin",
    "QueueFullRefused",
    "content_frames",
    "content_header_size",
    "method_frame",
]

#: Header with the number of deliveries that happened before this copy was published.
H_ATTEMPT = "x-uq-attempt"
#: Header with the float Unix time of the first enqueue.
H_ENQUEUED = "x-uq-enqueued-at"
#: Header with ``Job.deadline`` (float Unix seconds); the broker also gets an ``expiration``.
H_DEADLINE = "x-uq-deadline"
#: Header with ``Job.timeout`` (float seconds).
H_TIMEOUT = "x-uq-timeout"
#: Prefix of the headers the driver writes itself (an application may not).
RESERVED_PREFIX = "x-uq-"
#: Headers RabbitMQ adds when it dead-letters a message (delay queues do so on every delay).
#: Quorum queues add ``x-delivery-count`` (returns so far) to every delivery.
BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")

#: Longest delay in milliseconds: a delay queue's ``x-expires`` (2·delay + 60 s) must stay
#: within RabbitMQ's timer range (2^32 - 1 ms), or the broker refuses to declare it.
MAX_DELAY_MS = (2**32 - 1 - 60_000) // 2
#: Longest AMQP short string (header names, message ids, names), in bytes.
_SHORTSTR = 255
# An upper bound of the content header's size without the application headers: the frame's
# class/weight/size (12), property flags (2), message_id (1 + 255), delivery_mode, priority,
# timestamp, the table's length and the two x-uq-* headers, with room to spare.
_FIXED_BOUND = 400
#: Most connection losses one publish call survives (a backstop: no input can make the
#: driver publish the same frames again and again).
_MAX_INTERRUPTS = 5

_PUMP_EVERY = 1000  # read pending confirms every this many publishes in a big batch
_FLUSH_BYTES = 128 * 1024  # write a batch's frames to the socket in pieces of about this size

# AMQP 0-9-1 framing (spec section 4.2.3): type, channel, payload size, payload, frame-end.
_FRAME_HEAD = struct.Struct(">BHI")
_FRAME_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3
# Content header payload: class id (60 = basic), weight (0), body size; the properties follow.
_CONTENT_HEAD = struct.Struct(">HHQ")
# basic.publish: class id 60 (basic), method id 40 (AMQP 0-9-1, section 1.8).
_PUBLISH_ID = struct.pack(">HH", 60, 40)


@dataclasses.dataclass(slots=True)
class Outgoing:
    """One message to publish."""

    msg: Any
    exchange: str
    routing_key: str
    delay_ms: int  # 0 = straight to the main queue
    bound: int = _FIXED_BOUND  # upper bound of the content header payload, in bytes


class QueueFullRefused(QueueFull):
    """The broker refused messages at the queue's ``maxsize``; ``refused`` were not queued.

    Attributes:
        job_ids: Ids of the jobs that were not queued (the others were).
    """

    def __init__(self, what: str, queue: str, maxsize: int, refused: list[Outgoing]) -> None:
        self.refused = refused
        self.job_ids = [str(o.msg.properties.get("message_id")) for o in refused]
        super().__init__(
            f"{what}: queue {queue!r} is full (maxsize={maxsize} ready jobs, enforced by the "
            f"broker): {len(refused)} job(s) refused and not queued"
            + (f" ({', '.join(self.job_ids[:3])}{', ...' if len(refused) > 3 else ''})"))


class _Interrupted(Exception):
    """The connection died during a publish; ``unconfirmed`` still need publishing."""

    def __init__(self, unconfirmed: list[Outgoing], cause: BaseException) -> None:
        super().__init__(str(cause))
        self.unconfirmed = unconfirmed
        self.cause = cause


def method_frame(channel_id: int, exchange: str, routing_key: str) -> bytes:
    """The ``basic.publish`` method frame of messages for ``exchange`` and ``routing_key``.

    With ``mandatory=True``: an unroutable message comes back (``basic.return``) instead of
    being confirmed and silently dropped.
    """
    payload = _PUBLISH_ID + compat.publish_arguments(
        exchange, routing_key, mandatory=True, immediate=False)
    return _FRAME_HEAD.pack(_METHOD, channel_id, len(payload)) + payload + _FRAME_END


def content_header_size(msg: Any) -> int:
    """The exact size in bytes of ``msg``'s content header frame payload (py-amqp encoding)."""
    return _CONTENT_HEAD.size + len(compat.serialize_properties(msg))


def headers_bound(headers: Any) -> int:
    """An upper bound of the encoded size of an application headers table of strings.

    Raises:
        LimitExceeded: A header name is longer than an AMQP short string (255 bytes).
    """
    total = 0
    for key, value in headers.items():
        if len(key) > _SHORTSTR // 4:  # only a long name can pass 255 bytes in UTF-8
            n = len(key.encode())
            if n > _SHORTSTR:
                raise LimitExceeded(
                    f"header name of {n} bytes: AMQP table field names are short strings "
                    f"of at most {_SHORTSTR} bytes ({key[:40]!r}...)",
                    limit="shortstr", size=n, maximum=_SHORTSTR)
        # name: length byte + UTF-8 (at most 4 bytes a code point); value: type, length, UTF-8
        total += 1 + 4 * len(key) + 5 + 4 * len(value)
    return total


def content_frames(parts: list[bytes | memoryview], channel_id: int, msg: Any,
                   max_payload: int) -> int:
    """Append ``msg``'s content header and body frames to ``parts``; return their size.

    Body frames hold at most ``max_payload`` bytes each; an empty body has none. A ``str``
    body is encoded as py-amqp encodes it, and its encoding recorded in the properties.
    """
    body = msg.body
    if isinstance(body, str):  # as py-amqp: encode, and say how
        body = body.encode(msg.properties.setdefault("content_encoding", "utf-8"))
    head = _CONTENT_HEAD.pack(60, 0, len(body)) + compat.serialize_properties(msg)
    parts += (_FRAME_HEAD.pack(_HEADER, channel_id, len(head)), head, _FRAME_END)
    size = len(head) + 8
    view = memoryview(body)
    for i in range(0, len(body), max_payload):
        piece = view[i:i + max_payload]
        parts += (_FRAME_HEAD.pack(_BODY, channel_id, len(piece)), piece, _FRAME_END)
        size += len(piece) + 8
    return size


class PublishingMixin(ConnectionMixin):
    """Builds messages from enqueue requests and publishes them with confirms."""

    # -- publisher confirms ----------------------------------------------------------------
    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._confirm(tag, multiple, 1)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._confirm(tag, multiple, 2)

    def _confirm(self, tag: int, multiple: bool, value: int) -> None:
        st, i = self._cstatus, tag - self._cbase - 1
        if not 0 <= i < len(st):
            return
        if multiple:
            for k in range(self._clow, i + 1):
                if not st[k]:
                    st[k] = value
        elif not st[i]:
            st[i] = value
        while self._clow < len(st) and st[self._clow]:
            self._clow += 1

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.add(str(message.properties.get("message_id", "")))

    # -- limits ----------------------------------------------------------------------------
    def _check_limits(self, outs: list[Outgoing]) -> None:
        """Refuse what the broker would answer by closing the connection (nothing is sent).

        A content header must fit one frame of the negotiated ``frame_max``.
        """
        frame_max = int(self._pconn.frame_max)
        room = frame_max - 8  # frame header (7) and frame-end (1)
        for o in outs:
            if o.bound <= room:
                continue  # the cheap bound fits: no need to encode the properties twice
            size = content_header_size(o.msg)
            if size > room:
                raise LimitExceeded(
                    f"the message's content header (properties and headers) is {size + 8} "
                    f"bytes, more than the negotiated frame_max of {frame_max} bytes: AMQP "
                    "sends it as one frame, and the broker would close the connection; "
                    "send large data in the body",
                    limit="frame_max", size=size + 8, maximum=frame_max)

    def _blocked(self, what: str, written: int) -> BackendFull:
        tail = (f"; {written} message(s) already written may still be queued when it ends"
                if written else "; nothing was sent")
        return BackendFull(
            f"{what}: the broker blocks publishing ({self._pub_blocked}): a memory or disk "
            f"alarm is in effect; consumers can still dequeue, ack and nack{tail}")

    # -- one attempt -----------------------------------------------------------------------
    def _publish_once(self, what: str, outs: list[Outgoing], hard: float) -> list[Outgoing]:
        """Publish ``outs`` and wait for every confirm; return those the broker refused."""
        conn, ch = self._pconn, self._pch
        self._cbase, self._cstatus, self._clow = self._pub_seq, bytearray(len(outs)), 0
        self._returned.clear()
        try:
            self._arm(conn, hard)
            self._pump_conn(conn, self._ppoller)  # a connection.blocked/unblocked that came
            if self._pub_blocked is not None:
                raise self._blocked(what, 0)
            self._check_limits(outs)
            for ms in sorted({o.delay_ms for o in outs if o.delay_ms}):
                last = self._declared_delays.get(ms)
                if last is None or time.monotonic() - last > DELAY_REDECLARE:
                    self._declare_delay(ms, ch)
            self._write_publishes(what, outs)
            self._wait_confirms(what, hard)
        except TimeoutError:
            raise
        except CONN_ERRORS as exc:
            st = self._cstatus
            raise _Interrupted([o for k, o in enumerate(outs) if st[k] != 1], exc) from exc
        st = self._cstatus
        return [o for k, o in enumerate(outs)
                if st[k] == 2 or o.msg.properties.get("message_id") in self._returned]

    def _write_publishes(self, what: str, outs: list[Outgoing]) -> None:
        """Write the basic.publish frames of ``outs`` to the socket, many per write.

        Each message is three frames (method, content header, body; more body frames past
        ``frame_max``). py-amqp's ``send_method`` would encode the constant method frame
        again and make one socket write per message, about half of the client's CPU time
        per message in a batch; here the method frame is encoded once per destination and
        the frames of many messages go out in one write. The properties are still
        serialised by py-amqp, so the bytes on the wire are the ones it would send. No
        per-publish read either (py-amqp's check for ``connection.blocked``): ``_pump_conn``
        reads pending confirms, and a ``connection.blocked``, between writes.
        """
        ch, raw = self._pch, self._pconn
        if ch.connection is None:  # as send_method: the channel was closed under us
            raise amqp_exc.RecoverableConnectionError("connection already closed")
        cid, write = ch.channel_id, compat.raw_writer(raw)
        max_payload = raw.frame_max - 8  # frame header (7) and frame-end (1) excluded
        methods: dict[tuple[str, str], bytes] = {}
        parts: list[bytes | memoryview] = []
        size = 0
        for k, o in enumerate(outs):
            method = methods.get((o.exchange, o.routing_key))
            if method is None:
                method = method_frame(cid, o.exchange, o.routing_key)
                methods[(o.exchange, o.routing_key)] = method
            parts.append(method)
            size += len(method) + content_frames(parts, cid, o.msg, max_payload)
            self._pub_seq += 1
            if size >= _FLUSH_BYTES or k % _PUMP_EVERY == _PUMP_EVERY - 1 or k == len(outs) - 1:
                write(b"".join(parts))  # counted for py-amqp's heartbeat bookkeeping
                parts.clear()
                size = 0
                if k != len(outs) - 1:
                    # Confirms so far; a connection.close or connection.blocked the broker sent.
                    self._pump_conn(raw, self._ppoller)
                    if self._pub_blocked is not None:
                        raise self._blocked(what, k + 1)

    def _wait_confirms(self, what: str, hard: float) -> None:
        """Wait for the confirms of the batch in flight, at most until ``hard``.

        A stalled broker (no frame for ``socket_timeout``) or the deadline raises
        ``TimeoutError``; a ``connection.blocked`` raises ``BackendFull``.
        """
        raw, stall = self._pconn, self.options.socket_timeout
        while self._clow < len(self._cstatus):
            if self._pub_blocked is not None:
                raise self._blocked(what, len(self._cstatus) - self._clow)
            left = hard - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no confirm for {len(self._cstatus) - self._clow} "
                                   "message(s) by the deadline")
            raw.drain_events(timeout=min(left, stall))  # TimeoutError: nothing came

    # -- with retries ----------------------------------------------------------------------
    def _publish(self, what: str, outs: list[Outgoing], *, hard: float,
                 start: float | None = None) -> None:
        """Publish with confirms (under the lock); never returns before all are confirmed.

        ``hard`` is the deadline (monotonic) of the whole call, reconnects included. After a
        lost connection, only the unconfirmed messages are published again on a new one (so
        a message whose confirm was lost may be queued twice: at-least-once).

        Raises:
            LimitExceeded: A message breaks a limit of the broker; nothing was sent.
            BackendFull: The broker blocks publishing (memory or disk alarm).
            QueueFullRefused: ``maxsize`` is set and the broker refused messages at the
                bound (a ``QueueFull``); the others were queued.
            BackendTimeout: No answer within ``socket_timeout`` or by ``hard``; the
                messages may or may not be queued.
        """
        start = time.monotonic() if start is None else start
        refused_once = False
        interrupts = 0
        pause = 0.1
        while outs:
            self._ensure_pub(what, start, hard)
            try:
                refused = self._publish_once(what, outs, hard)
            except TimeoutError as exc:
                self._drop_pub()
                raise self._timed_out(
                    f"{what} (the message(s) may or may not be queued)", exc) from exc
            except _Interrupted as exc:
                self._drop_pub()
                interrupts += 1
                late = time.monotonic() - start >= self.options.reconnect_timeout
                if (late or time.monotonic() >= hard or interrupts >= _MAX_INTERRUPTS
                        or not retryable(exc.cause)):
                    raise translate(exc.cause, what) from exc.cause
                outs = exc.unconfirmed
                continue
            except amqp_exc.AMQPError as exc:
                self._drop_pub()
                raise translate(exc, what) from exc
            if refused and self.options.maxsize is not None:
                full = [o for o in refused if o.routing_key == self._q
                        and o.msg.properties.get("message_id") not in self._returned]
                if full and self.options.queue_type == "quorum" and (
                        time.monotonic() + pause < hard) and not self._looks_full():
                    # A quorum queue with room that nacks: a channel stuck after a failover
                    # (below), not the bound. A new connection, as below.
                    self._drop_pub()
                    time.sleep(pause)
                    pause = min(pause * 2, 1.0)
                    outs = refused
                    continue
                if full:  # x-overflow=reject-publish: the broker nacked them, queued nothing
                    raise QueueFullRefused(what, self._q, self.options.maxsize, refused)
            if refused and self.options.queue_type == "quorum" and (
                    time.monotonic() + pause < hard):
                # After a failover, a channel that published to the old leader can nack
                # every publish to the queue for many seconds (RabbitMQ 3.10, measured); a
                # new connection publishes at once. Until the deadline, then as below.
                self._drop_pub()
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
                outs = refused
                continue
            if refused and refused_once:
                raise BackendError(
                    f"{what}: the broker refused or could not route {len(refused)} message(s) "
                    f"to queue {self._q!r} (was it deleted, or declared elsewhere with other "
                    "arguments?); the others were queued"
                )
            if refused:  # e.g. a delay queue expired or the queue was deleted: declare, retry
                refused_once = True
                self._declared_delays.clear()
                try:
                    self._declare_main(self._pch)
                except (*CONN_ERRORS, amqp_exc.AMQPError) as exc:
                    self._drop_pub()
                    raise translate(exc, what) from exc
            outs = refused

    def _looks_full(self) -> bool:
        """Whether the main queue holds ``maxsize - 1`` ready jobs or more (False: unknown).

        A quorum queue refuses a publish once it holds more than its ``x-max-length``
        (``maxsize - 1``); below that, a nack was not the bound's.
        """
        assert self.options.maxsize is not None
        try:
            ok = self._pch.queue_declare(self._q, passive=True)
        except (*CONN_ERRORS, amqp_exc.AMQPError):
            return False  # the caller drops this connection and tries a new one
        return int(ok.message_count) >= self.options.maxsize - 1

    # -- messages --------------------------------------------------------------------------
    def _message(self, req: EnqueueRequest, now: float) -> Outgoing:
        for key in req.headers:
            if key.startswith(RESERVED_PREFIX):
                raise InvalidArgument(f"header names starting with {RESERVED_PREFIX!r} are "
                                      f"reserved by the amqp driver: {key!r}")
        bound = _FIXED_BOUND + headers_bound(req.headers) if req.headers else _FIXED_BOUND
        headers: dict[str, Any] = dict(req.headers)
        headers[H_ATTEMPT] = 0
        headers[H_ENQUEUED] = now
        props: dict[str, Any] = {
            "delivery_mode": 2, "message_id": req.job_id, "timestamp": int(now),
            "application_headers": headers,
        }
        if req.priority is not None:
            props["priority"] = req.priority
        if req.deadline is not None or req.timeout is not None:
            self._deadline_props(props, headers, req.deadline, req.timeout, now)
        out = self._route(amqp.Message(req.body, **props), req.delay)
        out.bound = bound
        return out

    @staticmethod
    def _deadline_props(props: dict[str, Any], headers: dict[str, Any], deadline: float | None,
                        timeout: float | None, now: float) -> None:
        """Write a job's deadline and timeout into its properties.

        Headers for the consumer, and the deadline as a per-message TTL (``expiration``,
        whole ms, rounded up) so that the broker itself
        dead-letters the job with reason ``expired`` once it is at the head of the queue past
        its deadline (RabbitMQ expires messages there only; ``dequeue`` sheds the others).
        """
        if timeout is not None:
            headers[H_TIMEOUT] = timeout
        if deadline is not None:
            headers[H_DEADLINE] = deadline
            props["expiration"] = str(max(0, math.ceil((deadline - now) * 1000)))

    @staticmethod
    def _delay_ms(delay: float) -> int:
        """A delay in whole milliseconds (rounded up), checked against RabbitMQ's timers.

        Raises:
            LimitExceeded: Past :data:`MAX_DELAY_MS`.
        """
        ms = math.ceil(delay * 1000) if delay > 0 else 0
        if ms > MAX_DELAY_MS:
            raise LimitExceeded(
                f"delay of {delay}s: RabbitMQ's timers allow at most {MAX_DELAY_MS / 1000:.0f}s "
                "(a delay queue expires 2·delay + 60 s after its last use, within 2^32-1 ms)",
                limit="delay", size=0, maximum=0)
        return ms

    def _route(self, msg: Any, delay: float) -> Outgoing:
        ms = self._delay_ms(delay)
        if ms:  # via the default exchange, addressed by the delay queue's name
            return Outgoing(msg, "", self._delay_queue(ms), ms)
        return Outgoing(msg, self._x, self._q, 0)

    def _enqueue(self, req: EnqueueRequest) -> str:
        out = self._message(req, time.time())
        start = time.monotonic()
        with self._lock:
            self._check_open()
            self._publish("enqueue", [out], start=start,
                          hard=start + self.options.confirm_timeout)
        return req.job_id

    def _enqueue_many(self, reqs: list[EnqueueRequest]) -> list[str]:
        now = time.time()
        outs = [self._message(r, now) for r in reqs]
        start = time.monotonic()
        with self._lock:
            self._check_open()
            self._publish("enqueue_many", outs, start=start,
                          hard=start + self.options.confirm_timeout)
        return [r.job_id for r in reqs]
