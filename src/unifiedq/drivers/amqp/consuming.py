"""Consuming: prefetch and dequeue, leases, ack/nack/release/extend_lease.

A blocking dequeue, or any ``dequeue_many`` of more than one job, starts a consumer
(``basic.consume`` with ``basic.qos`` prefetch) whose deliveries wait in the handle's buffer;
a batch takes what is buffered without a round trip per job. A polling single dequeue, or
one on a saturated consumer, uses ``basic.get``. ``ack_many`` writes its acks in one socket
write, with ``multiple=True`` only where that is exact. A job handed out is *held* under its
delivery tag until it is settled.
Its receipt names the handle and the connection (epoch) it came on: an AMQP delivery can only
be acked on its channel, and a lost connection ends every lease.

Attempts are exact: a requeue publishes a copy whose ``x-uq-attempt`` header counts the
deliveries so far (and acks the original), rather than rejecting it back; a release's copy
counts one less, so its next delivery has the same attempt. With
``visibility_timeout`` a lease thread returns held jobs whose time ran out, and the prefetch
buffer of a handle whose application stopped asking for jobs; ``max_attempts`` dead-letters
a job instead of requeueing it.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import struct
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import amqp
import amqp.exceptions as amqp_exc

from ..._checks import not_leased_many
from ..._compat import amqp as compat
from ..._errors import (
    BackendError,
    BackendFull,
    JobNotLeased,
    LimitExceeded,
)
from ..._job import Job
from .errors import CONN_ERRORS, translate
from .publishing import (
    BROKER_HEADERS,
    H_ATTEMPT,
    H_DEADLINE,
    H_ENQUEUED,
    H_TIMEOUT,
    RESERVED_PREFIX,
    Outgoing,
    PublishingMixin,
    QueueFullRefused,
)
from .state import Held

__all__ = ["ConsumingMixin"]

_SLICE = 0.2  # longest a blocking read holds the handle's lock


# AMQP 0-9-1 framing (spec 4.2.3): a basic.ack method frame (class 60, method 80) with a
# 64-bit delivery tag and the ``multiple`` bit, as py-amqp's ``basic_ack`` encodes it.
_ACK_FRAME = struct.Struct(">BHIHHQBB")


def _ack_frame(channel_id: int, tag: int, multiple: bool) -> bytes:
    return _ACK_FRAME.pack(1, channel_id, 13, 60, 80, tag, multiple, 0xCE)


def _header_str(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None


class ConsumingMixin(PublishingMixin):
    """Hands out leased jobs, settles them, and expires leases."""

    # -- dequeue ---------------------------------------------------------------------------
    def _on_message(self, msg: Any) -> None:
        self._buffer.append(msg)

    def _start_consumer(self) -> None:
        if self._consumer_tag is None:
            self._consumer_tag = self._cch.basic_consume(
                self._q, no_ack=False, callback=self._on_message
            )

    def _get(self) -> bool:
        """basic.get one message into the buffer; True if one came.

        It is also a barrier: deliveries the broker pushed to our consumer before answering
        arrive (and are buffered) before the get's reply.
        """
        msg = self._cch.basic_get(self._q, no_ack=False)
        if msg is None:
            return False
        self._buffer.append(msg)
        return True

    def _to_job(self, msg: Any) -> Job:
        props = msg.properties
        raw = props.get("application_headers") or {}
        try:
            prior = max(0, int(raw.get(H_ATTEMPT, 0)))
        except (TypeError, ValueError):
            prior = 0
        returns = raw.get("x-delivery-count")
        if isinstance(returns, int) and returns >= 0:
            # A quorum queue counts the returns of this copy itself: exact.
            attempt = prior + 1 + returns
        else:
            # RabbitMQ's redelivered flag means "maybe delivered before" (the last consumer's
            # channel closed with it un-acked): we count it as one more attempt.
            attempt = prior + 1 + (1 if msg.delivery_info.get("redelivered") else 0)
        enq = raw.get(H_ENQUEUED)
        if not isinstance(enq, int | float):
            ts = props.get("timestamp")
            enq = ts.timestamp() if hasattr(ts, "timestamp") else ts
        headers: dict[str, str] = {}
        for key, value in raw.items():
            if key.startswith(RESERVED_PREFIX) or key.startswith(BROKER_HEADERS):
                continue
            text = _header_str(value)
            if text is not None:
                headers[key] = text
        body = msg.body
        if isinstance(body, str):  # py-amqp decodes bodies with a content_encoding
            body = body.encode(props.get("content_encoding") or "utf-8")
        jid = props.get("message_id") or f"amqp-{uuid.uuid4()}"
        props.setdefault("message_id", jid)  # so a republished copy keeps the id
        prio = props.get("priority")
        tag = msg.delivery_info["delivery_tag"]
        dl, to = raw.get(H_DEADLINE), raw.get(H_TIMEOUT)
        return Job(jid, self._q, bytes(body), attempt,
                   float(enq) if isinstance(enq, int | float) else time.time(), headers,
                   prio if isinstance(prio, int) else None, (self._handle, self._epoch, tag),
                   float(dl) if isinstance(dl, int | float) else None,
                   float(to) if isinstance(to, int | float) else None)

    def _fill(self, out: list[Job], n: int) -> None:
        """Move buffered messages to ``out`` as leased jobs."""
        vt = self.options.visibility_timeout
        limit = self.options.max_attempts
        while len(out) < n and self._buffer:
            msg = self._buffer.popleft()
            job = self._to_job(msg)
            tag = msg.delivery_info["delivery_tag"]
            if limit is not None and job.attempt > limit:
                # Redelivered past the limit (its consumers keep dying): dead-letter it.
                self._cch.basic_reject(tag, requeue=False)
                continue
            deadline = time.monotonic() + vt if vt is not None else math.inf
            self._held[tag] = Held(job, msg, deadline)
            out.append(job)
        if out and vt is not None:
            self._start_lease_thread()
            self._cond.notify_all()

    def _take(self, n: int, timeout: float | None) -> list[Job]:
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        # Round trips may run past the deadline by at most socket_timeout (a stalled broker
        # then raises BackendTimeout); reconnecting stops at the deadline itself.
        hard = math.inf if deadline is None else deadline + self.options.socket_timeout
        out: list[Job] = []
        self._last_take = start
        # An idle consumer hears nothing from a stalled broker either: a round trip every
        # socket_timeout of waiting tells the two apart (and takes a job if one is there).
        probe = [start + self.options.socket_timeout]
        while True:
            # One slice per lock acquisition, so other threads using this handle get a turn.
            def step() -> bool:
                if out and out[0].receipt[1] != self._epoch:
                    out.clear()  # taken on a connection that was lost since: leases void
                if n > 1 and self._consumer_tag is None:
                    # A batch taker is a consumer, even when it polls: the basic.get below
                    # (a barrier) then brings what the broker pushed ahead, up to prefetch,
                    # and later calls take from the buffer instead of a get per job.
                    self._start_consumer()
                self._fill(out, n)
                if not out and self._consumer_tag is not None:
                    self._pump()
                    self._fill(out, n)
                left = None if deadline is None else deadline - time.monotonic()
                if not out and left is not None and left <= 0:
                    self._get()  # polling: one round trip per job, and no prefetch buffer
                    self._fill(out, n)
                    while out and len(out) < n and self._consumer_tag is None and self._get():
                        self._fill(out, n)
                    return True
                if not out and len(self._held) >= self.options.prefetch:
                    # The consumer is saturated (the broker pushes nothing while we hold
                    # `prefetch` un-acked jobs): poll with basic.get, once per slice.
                    self._get()
                    self._fill(out, n)
                elif not out and time.monotonic() >= probe[0]:
                    self._get()
                    self._fill(out, n)
                    probe[0] = time.monotonic() + self.options.socket_timeout
                if not out:
                    self._start_consumer()
                    with contextlib.suppress(TimeoutError):
                        self._raw.drain_events(timeout=_SLICE if left is None
                                               else min(left, _SLICE))
                    self._fill(out, n)
                if out:
                    # Take what already arrived (a prefetching consumer's burst) without
                    # waiting. Round trips (basic.get, one job each) top a batch up only when
                    # nothing else can: no consumer (polling) or a saturated one.
                    self._pump()
                    self._fill(out, n)
                    if self._consumer_tag is None or len(self._held) >= self.options.prefetch:
                        while len(out) < n and self._get():
                            self._fill(out, n)
                    return True
                return False

            if self._call("dequeue", step, start=start, hard=hard,
                          until=math.inf if deadline is None else deadline):
                return out

    def _dequeue(self, timeout: float | None) -> Job | None:
        jobs = self._take(1, timeout)
        return jobs[0] if jobs else None

    def _dequeue_many(self, max_jobs: int, timeout: float | None) -> list[Job]:
        return self._take(max_jobs, timeout)

    # -- settling --------------------------------------------------------------------------
    def _held_for(self, job: Job) -> tuple[int, Held]:
        receipt = job.receipt
        ok = isinstance(receipt, tuple) and len(receipt) == 3
        if ok and receipt[0] != self._handle:
            raise JobNotLeased(
                f"job {job.id!r} was dequeued by another handle; an AMQP delivery can only be "
                "acked on the channel it came from"
            )
        h = self._held.get(receipt[2]) if ok and receipt[1] == self._epoch else None
        if h is None or h.job.id != job.id:
            raise JobNotLeased(
                f"job {job.id!r} is not leased by this handle any more: it was already acked "
                "or nacked, its visibility timeout ran out, or the connection was lost (the "
                "broker then returns it to the queue)"
            )
        return receipt[2], h

    def _settle(self, what: str, fn: Callable[[], None]) -> None:
        with self._lock:
            self._check_open()
            if self._conn is None:
                fn()  # no connection: _held_for raises JobNotLeased
                return
            try:
                self._arm(self._conn, math.inf)  # each wait: socket_timeout
                # Read what the broker already sent first: a connection.close it sent us means
                # the lease is gone, and an ack written now would vanish without an error.
                self._pump()
                self._expire()
                fn()
            except BackendError:
                # From publishing a nack's or release's copy (its own connection): the job is
                # back in the queue by basic.reject, and this connection and its leases are fine.
                raise
            except TimeoutError as exc:
                self._drop()  # the broker returns what we held when it notices
                raise self._timed_out(what, exc) from exc
            except CONN_ERRORS as exc:
                self._drop()
                raise JobNotLeased(
                    f"{what}: the connection to the broker was lost, which ends every lease; "
                    "the broker returns the job to the queue"
                ) from exc
            except amqp_exc.AMQPError as exc:
                self._drop()
                raise translate(exc, what) from exc

    def _ack(self, job: Job) -> None:
        def do() -> None:
            tag, _ = self._held_for(job)
            self._cch.basic_ack(tag)
            del self._held[tag]

        self._settle("ack", do)

    def _ack_many(self, jobs: list[Job]) -> None:
        lost: list[str] = []

        def do() -> None:
            tags: list[int] = []
            for job in jobs:
                try:
                    tags.append(self._held_for(job)[0])
                except JobNotLeased:
                    lost.append(job.id)
            if tags:
                self._ack_tags(tags)

        try:
            self._settle("ack_many", do)
        except JobNotLeased as exc:  # the connection was lost: every lease with it
            raise not_leased_many([j.id for j in jobs], len(jobs)) from exc
        if lost:
            raise not_leased_many(lost, len(jobs))

    def _ack_tags(self, tags: list[int]) -> None:
        """Ack held deliveries in as few frames as is exactly right, in one socket write.

        ``basic.ack(multiple=True)`` acks *every* unacked delivery of the channel up to its
        tag, so it covers only the sorted tags below the lowest unacked delivery that is not
        being acked (held by another caller, or prefetched and not handed out yet); the rest
        get one frame each. Deliveries not read yet have higher tags than any we hold (the
        broker numbers them in order), so they are never covered by mistake.
        """
        tags.sort()
        want = set(tags)
        top = tags[-1]
        keep = min((t for t in self._held if t <= top and t not in want), default=None)
        for msg in self._buffer:
            t = msg.delivery_info["delivery_tag"]
            if t <= top and (keep is None or t < keep):
                keep = t
        split = len(tags) if keep is None else bisect.bisect_left(tags, keep)
        frames: list[bytes] = []
        if split > 1:
            frames.append(_ack_frame(self._cch.channel_id, tags[split - 1], True))
            singles = tags[split:]
        else:
            singles = tags
        frames.extend(_ack_frame(self._cch.channel_id, t, False) for t in singles)
        compat.raw_writer(self._conn)(b"".join(frames))
        for t in tags:
            del self._held[t]

    def _nack(self, job: Job, requeue: bool, delay: float) -> None:
        self._delay_ms(delay)  # LimitExceeded before the lease is touched

        def do() -> None:
            tag, h = self._held_for(job)
            if requeue:
                self._return_held([(tag, h)], delay)
            else:
                del self._held[tag]
                self._cch.basic_reject(tag, requeue=False)  # to Q.dead via x-dead-letter-*

        self._settle("nack", do)

    def _release(self, job: Job) -> None:
        def do() -> None:
            tag, h = self._held_for(job)
            self._return_held([(tag, h)], 0.0, count=False)

        self._settle("release", do)

    def _return_held(self, items: list[tuple[int, Held]], delay: float, *,
                     count: bool = True, hard: float | None = None,
                     unseen: list[Any] | None = None) -> None:
        """Requeue held jobs (and ``unseen`` buffered messages) with exact attempt counts.

        Under the lock. Held jobs are requeued as a nack counts them (``count``), or without
        consuming an attempt (a release); with ``count``, jobs at ``max_attempts`` are
        dead-lettered instead. ``unseen`` are prefetched messages the application never got:
        they go back with their attempt unchanged, ahead of the held ones.
        """
        limit = self.options.max_attempts
        back: list[tuple[int, Any, int, float]] = []  # tag, message, attempts so far, enqueued
        for msg in unseen or ():
            job = self._to_job(msg)
            back.append((msg.delivery_info["delivery_tag"], msg, job.attempt - 1,
                         job.enqueued_at))
        for tag, h in items:
            del self._held[tag]
            if count and limit is not None and h.job.attempt >= limit:
                self._cch.basic_reject(tag, requeue=False)
                continue
            back.append((tag, h.msg, h.job.attempt if count else h.job.attempt - 1,
                         h.job.enqueued_at))
        self._republish(back, delay, "nack" if count else "release", hard)

    def _republish(self, back: list[tuple[int, Any, int, float]], delay: float, what: str,
                   hard: float | None) -> None:
        """Publish a copy of each message with its attempt header, then ack the originals.

        RabbitMQ's own requeue (``basic.reject(requeue=True)``) cannot carry a count, only
        its redelivered flag, so a copy whose ``x-uq-attempt`` says how many deliveries
        happened replaces the original once it is confirmed. If the copies cannot be
        published (a memory or disk alarm blocks publishing, a stalled or lost publish
        connection), the originals go back with ``basic.reject(requeue=True)`` instead:
        nothing is stranded, but the attempt count then rests on the redelivered flag (see
        the docs), and a copy whose confirm was lost may be queued too (at-least-once).
        """
        if not back:
            return
        outs: list[Outgoing] = []
        for _, msg, attempts, enqueued_at in back:
            props = dict(msg.properties)
            headers = {k: v for k, v in (props.get("application_headers") or {}).items()
                       if not k.startswith(BROKER_HEADERS)}
            headers[H_ATTEMPT] = attempts
            headers.setdefault(H_ENQUEUED, enqueued_at)
            props["application_headers"] = headers
            props["delivery_mode"] = 2
            props.pop("expiration", None)
            dl = headers.get(H_DEADLINE)
            if isinstance(dl, int | float):  # the copy keeps the broker-side expiry
                props["expiration"] = str(max(0, math.ceil((dl - time.time()) * 1000)))
            outs.append(self._route(amqp.Message(msg.body, **props), delay))
        start = time.monotonic()
        try:
            self._publish(what, outs, start=start,
                          hard=start + self.options.confirm_timeout if hard is None else hard)
        except QueueFullRefused as exc:
            # maxsize: the broker refused these copies; their originals go back instead
            # (a return is not a publish: the bound does not refuse it), the rest are done.
            refused = {id(o) for o in exc.refused}
            for (tag, *_), out in zip(back, outs, strict=True):
                if id(out) in refused:
                    self._cch.basic_reject(tag, requeue=True)
                else:
                    self._cch.basic_ack(tag)
            return
        except (BackendError, LimitExceeded) as exc:
            for tag, *_ in back:
                self._cch.basic_reject(tag, requeue=True)
            if not isinstance(exc, BackendFull | LimitExceeded):
                raise  # the jobs are back in the queue, but say why the copies failed
            return
        for tag, *_ in back:
            self._cch.basic_ack(tag)

    def _extend_lease(self, job: Job, seconds: float) -> None:
        def do() -> None:
            _, h = self._held_for(job)
            if self.options.visibility_timeout is not None:
                h.deadline = time.monotonic() + seconds
                self._cond.notify_all()
            # Without visibility_timeout the lease lasts as long as the connection: nothing to do.

        self._settle("extend_lease", do)

    # -- leases ----------------------------------------------------------------------------
    def _expire(self) -> None:
        """Return held jobs whose visibility timeout ran out (under the lock).

        The consumer is paused first: otherwise the broker would push the returned copies
        straight back into this handle's prefetch buffer, where they would wait for this
        (possibly stuck) handle instead of going to another consumer.
        """
        vt = self.options.visibility_timeout
        if vt is None or self._conn is None:
            return
        now = time.monotonic()
        due = [(tag, h) for tag, h in self._held.items() if h.deadline <= now]
        if due or (self._buffer and now - self._last_take >= vt):
            self._pause_consumer()
        if due:
            self._return_held(due, 0.0)

    def _pause_consumer(self) -> None:
        """Cancel the consumer and give back the prefetched jobs nobody took yet.

        A blocking dequeue starts it again. The returned jobs keep their attempt count
        (republished copies, at the back of the queue; see the docs).
        """
        if self._consumer_tag is not None:
            self._cch.basic_cancel(self._consumer_tag)
            self._consumer_tag = None
        unseen = list(self._buffer)
        self._buffer.clear()
        self._return_held([], 0.0, count=False, unseen=unseen)

    def _start_lease_thread(self) -> None:
        if self._lease_thread is None:
            self._lease_thread = threading.Thread(
                target=self._lease_loop, name=f"unifiedq-amqp-leases-{self._q}", daemon=True
            )
            self._lease_thread.start()

    def _lease_loop(self) -> None:
        """Expire leases while the application is busy elsewhere (it may never call us).

        It also returns the prefetch buffer of a handle whose application has not asked for a
        job for ``visibility_timeout`` seconds, so a stuck worker does not hoard jobs.
        """
        vt = self.options.visibility_timeout or 0.0
        with self._cond:
            while not self._closed:
                deadlines = [h.deadline for h in self._held.values()]
                if self._buffer:
                    deadlines.append(self._last_take + vt)
                wait = min(deadlines) - time.monotonic() if deadlines else 5.0
                if wait > 0:
                    self._cond.wait(min(wait, 5.0))
                    continue
                try:
                    if self._conn is not None:
                        self._arm(self._conn, time.monotonic() + self.options.socket_timeout)
                    self._expire()
                except Exception:
                    self._drop()  # the broker returns the held jobs itself
