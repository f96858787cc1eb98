"""Machinery's wire protocol on ``amqp://``: ``amqp://host/vhost?protocol=machinery``.

A handle speaks `Machinery <https://github.com/RichardKnop/machinery>`_ v1's (and v2's: the
format is the same) AMQP protocol, so a Go Machinery worker with its stock configuration runs
tasks enqueued here, and a unifiedq ``Worker`` runs tasks sent by Machinery's ``SendTask``.

Topology (Machinery's ``config`` defaults; every name is an option): exchange
``machinery_exchange`` (direct, durable), queue ``machinery_tasks`` (durable, *no*
arguments, as Machinery declares it, so neither side gets ``PRECONDITION_FAILED``) bound with
the binding key ``machinery_task``, the routing key of every task published. Delays use
Machinery's own delay queues, ``delay.<ms>.<exchange>.<binding key>`` with its arguments
(``x-message-ttl=ms``, ``x-expires=2*ms``, dead-lettering to the exchange with the binding
key). Jobs dead-lettered here go to ``<queue>.dead``, declared as the plain ``amqp://``
driver declares a queue of that name (so ``amqp://...?queue=machinery_tasks.dead&exchange=
machinery_exchange`` reads it); Machinery itself never uses it.

Message: the body is a Machinery task Signature (JSON, Go field names), ``content-type:
application/json``, persistent, with ``Signature.Headers`` copied to the AMQP headers as
Machinery does.

* Enqueue: the ``type`` header is the task ``Name`` (required). The body is the task's
  arguments: a JSON array (``TypedQueue`` with the JSON codec marks it; any other JSON value
  is one argument) whose items become typed ``Args`` -- ``bool``, ``int64`` (``uint64`` past
  it), ``float64``, ``string``, and lists of one of those (``[]bool``, ``[]int64``,
  ``[]float64``, ``[]string``); an item ``{"Type": "int32", "Value": 5}`` (optionally with
  ``"Name"``) gives the Go type itself. A body that is not JSON is one ``[]byte`` argument
  (marked in ``Signature.Headers["unifiedq.body"]`` so that Python reads the bytes back).
  The job id is the ``UUID``; ``RetryCount``/``RetryTimeout`` come from the options
  ``retry_count``/``retry_timeout`` or the per-job headers ``machinery.retry_count``/
  ``machinery.retry_timeout``; a delay sets ``ETA``; other headers go to ``Headers``.
* Dequeue: a job's ``id`` is the ``UUID``, its ``type`` header the ``Name``, its body the JSON
  array of argument values (typed: integers as int, floats as float, ``[]byte`` as its base64
  string), with ``content-type: application/json``; ``machinery.types`` lists the Go types
  (comma-separated), ``machinery.retry_count``/``machinery.retry_timeout`` the retry state,
  and ``Signature.Headers`` are headers. :func:`task_of` reads all of it as a
  :class:`MachineryTask`. A message that is not a Signature is delivered as it is, with the
  header ``machinery.invalid`` and no ``type`` (a Worker dead-letters it: no handler).
* Retries follow Machinery's rules (``worker.taskRetry``): ``nack(requeue=True)`` of a task
  with ``RetryCount > 0`` publishes it again with ``RetryCount - 1``, ``RetryTimeout`` raised
  to the next Fibonacci number (0 -> 1 -> 2 -> 3 -> 5 -> 8 ...) and ``ETA`` that many seconds
  ahead, and that is the delay (the ``delay`` argument is ignored); with ``RetryCount == 0``
  the task has failed for good and is dead-lettered. ``release`` and an expired lease put it
  back unchanged. ``max_attempts`` is not an option here: ``RetryCount`` is the budget.

Results: Machinery's AMQP result backend (``ResultBackend: "amqp://..."``, its default) is
:class:`MachineryResultStore`, given as ``results=``: then ``complete``/``ack``/``fail`` write
the task's final state (SUCCESS with typed results, or FAILURE) where a Go
``AsyncResult.Get`` reads it, and ``result(uuid)`` reads what a Go worker stored. Without it
no state is written (a Go ``AsyncResult.Get`` on a task a Python worker ran never returns).
Other result backends (redis, memcache, mongo...) are not supported.

Not supported: workflows (``OnSuccess``/``OnError`` callbacks, groups, chords are carried
unchanged but not triggered), the intermediate states (RECEIVED, STARTED, RETRY),
priorities (Machinery's stock queue has no ``x-max-priority``), and exchange types other
than ``direct``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime as _dt
import json
import math
import threading
import time
from collections.abc import Mapping
from typing import Any

import amqp

from ..._capabilities import Capability
from ..._errors import BackendError, BackendFull, InvalidArgument, InvalidURL, LimitExceeded
from ..._job import EnqueueRequest, Job
from ..._url import URL
from ...results import outcome
from .options import AmqpOptions, vhost_of
from .publishing import (
    _FIXED_BOUND,
    H_ATTEMPT,
    H_ENQUEUED,
    RESERVED_PREFIX,
    Outgoing,
    headers_bound,
)
from .queue import AmqpQueue
from .topology import DELAY_REDECLARE

__all__ = [
    "GO_TYPES", "MachineryOptions", "MachineryQueue", "MachineryResultStore", "MachineryTask",
    "fibonacci_next",
    "open_with_protocol", "task_of",
]

#: The argument types Machinery v1 decodes (``tasks/reflect.go``).
GO_TYPES = frozenset({
    "bool", "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32",
    "uint64", "float32", "float64", "string",
    "[]bool", "[]int", "[]int8", "[]int16", "[]int32", "[]int64", "[]uint", "[]uint8",
    "[]uint16", "[]uint32", "[]uint64", "[]float32", "[]float64", "[]byte", "[]string",
})
#: The header whose value is the task ``Name`` (the Worker's job type).
TYPE_HEADER = "type"
_CONTENT_TYPE = "content-type"
_JSON = "application/json"
#: Headers of a delivered job (and per-job enqueue overrides) that carry the Signature's
#: fields; they are never copied into ``Signature.Headers``.
H_TYPES = "machinery.types"
H_RETRY_COUNT = "machinery.retry_count"
H_RETRY_TIMEOUT = "machinery.retry_timeout"
H_INVALID = "machinery.invalid"
_OURS = "machinery."
#: ``Signature.Headers`` key marking a raw-bytes body (one ``[]byte`` argument).
H_BODY = "unifiedq.body"
_INT64 = (-(2**63), 2**63 - 1)
_UINT64_MAX = 2**64 - 1


@dataclasses.dataclass(frozen=True, slots=True)
class MachineryOptions(AmqpOptions):
    """Options of ``amqp://...?protocol=machinery`` (those of ``amqp://`` and these).

    The defaults are Machinery's stock configuration (``config/config.go``).

    Attributes:
        protocol: ``"machinery"``.
        binding_key: The key ``queue`` is bound with, and the routing key of every task
            published (Machinery's ``AMQP.BindingKey``).
        retry_count: ``RetryCount`` of enqueued tasks: how many times a failing task is
            retried (Machinery's default 0: never).
        retry_timeout: ``RetryTimeout`` of enqueued tasks, in seconds: the delay before the
            first retry is the next Fibonacci number after it (0 gives 1 s).
    """

    queue: str = "machinery_tasks"
    exchange: str = "machinery_exchange"
    protocol: str = "machinery"
    binding_key: str = "machinery_task"
    retry_count: int = 0
    retry_timeout: int = 0

    def __post_init__(self) -> None:
        AmqpOptions.__post_init__(self)
        if self.protocol != "machinery":
            raise ValueError(f"protocol must be 'machinery', not {self.protocol!r}")
        if not self.exchange:
            raise ValueError("Machinery needs a named exchange (its default: machinery_exchange)")
        key = self.binding_key
        if not key or len(key.encode()) > 200 or not key.isprintable():
            raise ValueError(f"binding_key must be 1..200 printable bytes, not {key!r}")
        if self.max_attempts is not None:
            raise ValueError("max_attempts is not an option with protocol=machinery: a task's "
                             "RetryCount is its retry budget (see retry_count)")
        if self.queue_type != "classic" or self.maxsize is not None:
            raise ValueError("queue_type and maxsize add queue arguments that Machinery does "
                             "not declare (its queue would be refused): not with "
                             "protocol=machinery")
        for name in ("retry_count", "retry_timeout"):
            value = getattr(self, name)
            if not 0 <= value < 2**31:
                raise ValueError(f"{name} must be in 0..2**31-1, not {value}")


@dataclasses.dataclass(frozen=True, slots=True)
class MachineryTask:
    """A dequeued Machinery task, as :func:`task_of` reads it from a job.

    Attributes:
        uuid: The task's ``UUID`` (the job id).
        name: The task ``Name``.
        args: The argument values, in order.
        types: Their Go types (``"int64"``, ``"[]string"``...).
        retry_count: Retries left (``RetryCount``).
        retry_timeout: ``RetryTimeout`` in seconds.
        headers: The task's other headers.
    """

    uuid: str
    name: str
    args: list[Any]
    types: list[str]
    retry_count: int
    retry_timeout: int
    headers: Mapping[str, str]


def task_of(job: Job) -> MachineryTask:
    """The Machinery task a job of ``?protocol=machinery`` carries.

    Raises:
        InvalidArgument: The job is not a Machinery task (no ``type`` or types header, or a
            body that is not a JSON array of its arguments).
    """
    h = job.headers
    if TYPE_HEADER not in h or H_TYPES not in h:
        raise InvalidArgument(f"job {job.id!r} is not a Machinery task (no {TYPE_HEADER!r} "
                              f"or {H_TYPES!r} header)")
    try:
        args = json.loads(job.body)
    except ValueError as exc:
        raise InvalidArgument(f"job {job.id!r}: body is not JSON: {exc}") from None
    if not isinstance(args, list):
        raise InvalidArgument(f"job {job.id!r}: body is not the JSON array of its arguments")
    types = h[H_TYPES].split(",") if h[H_TYPES] else []
    other = {k: v for k, v in h.items()
             if k not in (TYPE_HEADER, _CONTENT_TYPE) and not k.startswith(_OURS)}
    return MachineryTask(job.id, h[TYPE_HEADER], args, types,
                         int(h.get(H_RETRY_COUNT, "0")), int(h.get(H_RETRY_TIMEOUT, "0")),
                         other)


def fibonacci_next(start: int) -> int:
    """The first Fibonacci number greater than ``start`` (Machinery's ``retry.FibonacciNext``).

    0 -> 1, 1 -> 2, 2 -> 3, 3 -> 5, 5 -> 8: a failed task's next ``RetryTimeout``.
    """
    a, b = 1, 2
    while a <= start:
        a, b = b, a + b
    return a


# -- arguments ---------------------------------------------------------------------------------
def _go_type(value: Any) -> str:
    """The Go type Machinery gets for a JSON value (see the module docstring)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return "int64"
        if 0 <= value <= _UINT64_MAX:
            return "uint64"
        raise InvalidArgument(f"integer argument {value} does not fit 64 bits")
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list) and value:
        kinds = {_go_type(v) for v in value} if all(
            isinstance(v, bool | int | float | str) for v in value) else {"?"}
        if len(kinds) == 1 and "?" not in kinds:
            return "[]" + kinds.pop()
        if kinds <= {"int64", "float64", "uint64"}:
            return "[]float64"
    raise InvalidArgument(
        f"argument {value!r:.80}: Machinery's arguments are bool, int, float, str or a "
        "non-empty list of one of those; give the Go type explicitly as "
        '{"Type": "<go type>", "Value": ...} for anything else (an empty list, int32...)')


def _typed_arg(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        keys = {k.lower(): k for k in value}
        if "type" in keys and "value" in keys and set(keys) <= {"name", "type", "value"}:
            t = value[keys["type"]]
            if t not in GO_TYPES:
                raise InvalidArgument(f"argument type {t!r} is not one Machinery decodes "
                                      f"({', '.join(sorted(GO_TYPES))})")
            return {"Name": str(value.get(keys.get("name", ""), "")), "Type": t,
                    "Value": value[keys["value"]]}
    return {"Name": "", "Type": _go_type(value), "Value": value}


def _arg_value(arg: Any) -> tuple[str, Any]:
    """(Go type, value) of one ``Args`` item; keys as Go reads them (case-insensitively)."""
    if not isinstance(arg, dict):
        raise ValueError("an argument is not an object")
    low = {str(k).lower(): v for k, v in arg.items()}
    t, v = low.get("type"), low.get("value")
    if not isinstance(t, str):
        raise ValueError("an argument has no type")
    if t in ("float32", "float64") and isinstance(v, int | float) and not isinstance(v, bool):
        v = float(v)
    elif t in ("[]float32", "[]float64") and isinstance(v, list):
        v = [float(x) if isinstance(x, int | float) and not isinstance(x, bool) else x
             for x in v]
    return t, v


def _rfc3339(unix: float) -> str:
    """Unix seconds as Go's ``time.Time`` JSON (RFC 3339, UTC, nanoseconds kept to µs)."""
    return _dt.datetime.fromtimestamp(unix, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Built once: json.dumps with any non-default option builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_FIELDS = ("UUID", "Name", "Args", "Headers", "RetryCount", "RetryTimeout", "ETA")


def _json(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def _decode(body: Any) -> dict[str, Any] | None:
    """The Signature of a message body, or None if it is not one."""
    if isinstance(body, str):
        body = body.encode()
    try:
        sig = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(sig, dict):
        return None
    if "Name" not in sig or "Args" not in sig:
        # Go's decoder matches field names case-insensitively: read them the same way
        # (Go itself always writes these exact names, which skips this).
        names = {k.lower(): k for k in sig}
        for field in _FIELDS:
            k = names.get(field.lower())
            if k is not None and k != field:
                sig[field] = sig.pop(k)
    if not isinstance(sig.get("Name"), str) or not sig["Name"]:
        return None
    if not isinstance(sig.get("Args") or [], list):
        return None
    return sig


# -- the queue ---------------------------------------------------------------------------------
class MachineryQueue(AmqpQueue):
    """An ``amqp://`` queue that speaks Machinery's task protocol (see the module docstring)."""

    options_class = MachineryOptions
    #: ``TypedQueue`` with the JSON codec marks its bodies, which become typed ``Args``.
    native_json = True

    # No PRIORITY: Machinery's stock queue has no x-max-priority (the broker ignores it);
    # no BOUNDED: maxsize is refused. A class attribute: results= extends the class's flags.
    capabilities = (
        Capability.ACK | Capability.LEASE_EXTEND | Capability.DELAY | Capability.BATCH
        | Capability.BLOCKING_DEQUEUE | Capability.HEADERS | Capability.DURABLE
        | Capability.CROSS_PROCESS | Capability.DISTRIBUTED | Capability.NATIVE_SYNC
        | Capability.RELEASE
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.capabilities = type(self).capabilities
        opts = self.options
        assert isinstance(opts, MachineryOptions)
        self.mopts = opts

    # -- topology: exactly Machinery's declarations ----------------------------------------
    def _declare_main(self, ch: Any) -> None:
        # brokers/amqp + common/amqp.go Connect(): exchange durable, not auto-deleted, not
        # internal, no arguments; queue durable, not auto-deleted, not exclusive, no
        # arguments (QueueDeclareArgs is empty by default), bound with the binding key.
        ch.exchange_declare(self._x, "direct", durable=True, auto_delete=False)
        ch.queue_declare(self._q, durable=True, auto_delete=False)
        ch.queue_bind(self._q, self._x, routing_key=self.mopts.binding_key)
        # Ours alone: declared as the plain driver declares a queue of this name.
        ch.queue_declare(self._dead, durable=True, auto_delete=False,
                         arguments=self._queue_args(self._dead))
        ch.queue_bind(self._dead, self._x, routing_key=self._dead)

    def _delay_queue(self, ms: int) -> str:
        return f"delay.{ms}.{self._x}.{self.mopts.binding_key}"

    def _declare_delay(self, ms: int, ch: Any) -> int:
        # brokers/amqp delay(): Machinery's name and arguments, so both sides can share one.
        args = {
            "x-dead-letter-exchange": self._x,
            "x-dead-letter-routing-key": self.mopts.binding_key,
            "x-message-ttl": ms,
            "x-expires": ms * 2,
        }
        name = self._delay_queue(ms)
        ok = ch.queue_declare(name, durable=True, auto_delete=False, arguments=args)
        ch.queue_bind(name, self._x, routing_key=name)
        # x-expires is only 2*ms: trust the declaration for at most half of it (the base
        # redeclares after DELAY_REDECLARE seconds), so a publish rarely finds it gone.
        now = time.monotonic()
        self._declared_delays[ms] = now - max(0.0, DELAY_REDECLARE - ms / 1000)
        return int(ok.message_count)

    def _known_delay_ms(self) -> list[int]:
        # Only this handle's: a Machinery delay queue is gone 2*ms after its last use.
        now = time.monotonic()
        return sorted(ms for ms, t in self._declared_delays.items() if now - t < 60.0)

    def _route(self, msg: Any, delay: float) -> Outgoing:
        ms = self._delay_ms(delay)
        if ms:
            return Outgoing(msg, "", self._delay_queue(ms), ms)
        return Outgoing(msg, self._x, self.mopts.binding_key, 0)

    # -- enqueue: a Signature ----------------------------------------------------------------
    def _signature(self, req: EnqueueRequest, now: float) -> tuple[dict[str, Any], dict[str,
                                                                                          str]]:
        headers = dict(req.headers)
        name = headers.pop(TYPE_HEADER, None)
        if not name:
            raise InvalidArgument(
                "protocol=machinery: the 'type' header names the task (Machinery's Name) and "
                "is required; nothing was sent")
        counts: dict[str, int] = {}
        for key, default in ((H_RETRY_COUNT, self.mopts.retry_count),
                             (H_RETRY_TIMEOUT, self.mopts.retry_timeout)):
            raw = headers.pop(key, None)
            if raw is not None and not (raw.isascii() and raw.isdigit() and int(raw) < 2**31):
                raise InvalidArgument(f"header {key!r} must be a whole number, not {raw!r}")
            counts[key] = default if raw is None else int(raw)
        for key in headers:
            if key.startswith(RESERVED_PREFIX) or key.startswith(_OURS) or key == H_BODY:
                raise InvalidArgument(f"header {key!r} is reserved by protocol=machinery")
        sig_headers: dict[str, str] = {}
        if headers.get(_CONTENT_TYPE) == _JSON:  # another content-type stays a header
            del headers[_CONTENT_TYPE]
            try:
                value = json.loads(req.body)
            except ValueError as exc:
                raise InvalidArgument(f"content-type is {_JSON} but the body is not JSON: "
                                      f"{exc}") from None
            args = [_typed_arg(v) for v in (value if isinstance(value, list) else [value])]
        else:  # opaque bytes: one []byte argument, base64 as Go's JSON writes []byte
            args = [{"Name": "", "Type": "[]byte",
                     "Value": base64.b64encode(req.body).decode("ascii")}]
            sig_headers[H_BODY] = "bytes"
        sig_headers.update(headers)
        sig: dict[str, Any] = {
            "UUID": req.job_id,
            "Name": name,
            "RoutingKey": self.mopts.binding_key,
            "ETA": _rfc3339(now + req.delay) if req.delay > 0 else None,
            "GroupUUID": "",
            "GroupTaskCount": 0,
            "Args": args,
            "Headers": sig_headers,
            "Priority": req.priority or 0,
            "Immutable": False,
            "RetryCount": counts[H_RETRY_COUNT],
            "RetryTimeout": counts[H_RETRY_TIMEOUT],
            "OnSuccess": None,
            "OnError": None,
            "ChordCallback": None,
            "BrokerMessageGroupId": "",
            "SQSReceiptHandle": "",
            "StopTaskDeletionOnError": False,
            "IgnoreWhenTaskNotRegistered": False,
        }
        return sig, sig_headers

    def _message(self, req: EnqueueRequest, now: float) -> Outgoing:
        sig, sig_headers = self._signature(req, now)
        try:
            body = _json(sig)
        except ValueError as exc:
            raise InvalidArgument(f"an argument is not JSON: {exc}") from None
        # The AMQP headers are Signature.Headers, as Machinery publishes them, plus ours.
        headers: dict[str, Any] = dict(sig_headers)
        headers[H_ATTEMPT] = 0
        headers[H_ENQUEUED] = now
        props: dict[str, Any] = {
            "content_type": _JSON, "delivery_mode": 2, "message_id": req.job_id,
            "timestamp": int(now), "application_headers": headers,
        }
        if req.priority:
            props["priority"] = req.priority
        out = self._route(amqp.Message(body, **props), req.delay)
        out.bound = _FIXED_BOUND + 32 + headers_bound(sig_headers)
        return out

    # -- dequeue: a job of the Signature -----------------------------------------------------
    def _to_job(self, msg: Any) -> Job:
        job = super()._to_job(msg)
        sig = _decode(msg.body)
        if sig is None:
            return dataclasses.replace(job, headers={
                **job.headers, H_INVALID: "the body is not a Machinery task signature"})
        values: list[Any] = []
        types: list[str] = []
        try:
            for arg in sig.get("Args") or []:
                t, v = _arg_value(arg)
                types.append(t)
                values.append(v)
        except ValueError as exc:
            return dataclasses.replace(job, headers={**job.headers, H_INVALID: str(exc)})
        sig_headers = sig.get("Headers")
        headers: dict[str, str] = {}
        if isinstance(sig_headers, dict):
            for k, v in sig_headers.items():
                headers[str(k)] = v if isinstance(v, str) else _json(v).decode()
        body: bytes | None = None
        if headers.pop(H_BODY, None) == "bytes" and types == ["[]byte"] and isinstance(
                values[0], str):
            try:
                body = base64.b64decode(values[0], validate=True)
            except (binascii.Error, ValueError):
                body = None
        if body is None:
            body = _json(values)
            headers[_CONTENT_TYPE] = _JSON
        headers[TYPE_HEADER] = sig["Name"]
        headers[H_TYPES] = ",".join(types)
        headers[H_RETRY_COUNT] = str(_int(sig.get("RetryCount")))
        headers[H_RETRY_TIMEOUT] = str(_int(sig.get("RetryTimeout")))
        uuid = sig.get("UUID")
        jid = uuid if isinstance(uuid, str) and uuid else job.id
        return dataclasses.replace(job, id=jid, body=body, headers=headers)

    # -- settling: task states, Machinery's retry rules -------------------------------------
    def _ack(self, job: Job) -> None:
        # With Machinery's result backend attached, a task that ends without a result is a
        # SUCCESS with no results (what a Go AsyncResult.Get waits for), stored first.
        if isinstance(self._results, MachineryResultStore):
            self._results.put(self.name, job.id, _OK_EMPTY, 0.0)
        super()._ack(job)

    def _ack_many(self, jobs: list[Job]) -> None:
        if isinstance(self._results, MachineryResultStore):
            for job in jobs:
                self._results.put(self.name, job.id, _OK_EMPTY, 0.0)
        super()._ack_many(jobs)

    def _complete(self, job: Job, result: bytes, retention: float | None) -> None:
        if not isinstance(self._results, MachineryResultStore):
            super()._complete(job, result, retention)
            return
        self._results.put(self.name, job.id, outcome(True, result), 0.0)
        AmqpQueue._ack(self, job)  # the plain ack: the state is written

    def _fail(self, job: Job, error: str, retention: float | None) -> None:
        if not isinstance(self._results, MachineryResultStore):
            super()._fail(job, error, retention)
            return
        self._results.put(self.name, job.id, outcome(False, error.encode()), 0.0)
        self._settle_nack(job, False, 0.0, state=False)

    def _nack(self, job: Job, requeue: bool, delay: float) -> None:
        self._settle_nack(job, requeue, delay, state=True)

    def _settle_nack(self, job: Job, requeue: bool, delay: float, *, state: bool) -> None:
        self._delay_ms(delay)  # LimitExceeded before the lease is touched

        def do() -> None:
            tag, h = self._held_for(job)
            sig = _decode(h.msg.body) if requeue else None
            if sig is None or _int(sig.get("RetryCount")) <= 0:
                # nack(requeue=False), RetryCount exhausted (Machinery: FAILURE), or not a
                # task at all: to <queue>.dead.
                if state and isinstance(self._results, MachineryResultStore):
                    why = "retries exhausted (RetryCount 0)" if requeue else "dead-lettered"
                    self._results.put(self.name, job.id, outcome(False, why.encode()), 0.0)
                del self._held[tag]
                self._dead_letter(tag, h.msg)
                return
            # worker.taskRetry: RetryCount - 1, RetryTimeout to the next Fibonacci number,
            # ETA that many seconds ahead; the copy replaces the delivery once confirmed.
            sig["RetryCount"] = _int(sig.get("RetryCount")) - 1
            sig["RetryTimeout"] = fibonacci_next(_int(sig.get("RetryTimeout")))
            sig["ETA"] = _rfc3339(time.time() + sig["RetryTimeout"])
            h.msg = amqp.Message(_json(sig), **dict(h.msg.properties))
            self._return_held([(tag, h)], float(sig["RetryTimeout"]))

        self._settle("nack", do)

    def _dead_letter(self, tag: int, msg: Any) -> None:
        """Publish a copy of ``msg`` to ``<queue>.dead``, then ack the delivery.

        If the copy cannot be published the delivery goes back to the queue instead
        (``basic.reject(requeue=True)``): nothing is lost, and the error is raised unless it
        is a blocked or refused publish.
        """
        props = dict(msg.properties)
        props["delivery_mode"] = 2
        props.pop("expiration", None)
        out = Outgoing(amqp.Message(msg.body, **props), self._x, self._dead, 0)
        start = time.monotonic()
        try:
            self._publish("nack", [out], start=start,
                          hard=start + self.options.confirm_timeout)
        except (BackendError, LimitExceeded) as exc:
            self._cch.basic_reject(tag, requeue=True)
            if not isinstance(exc, BackendFull | LimitExceeded):
                raise
            return
        self._cch.basic_ack(tag)


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return 0


def open_with_protocol(url: URL, options: Mapping[str, object]) -> AmqpQueue:
    """The handle of an ``amqp://`` URL with a ``protocol`` option.

    ``machinery`` opens a :class:`MachineryQueue`; ``unifiedq`` (the default) a plain one.

    Raises:
        InvalidURL: Another protocol, or an invalid option.
    """
    proto = options.get("protocol", url.query.get("protocol"))
    if proto == "machinery":
        return MachineryQueue.from_url(url, options)
    if proto == "unifiedq":
        query = {k: v for k, v in url.query.items() if k != "protocol"}
        rest = {k: v for k, v in options.items() if k != "protocol"}
        return AmqpQueue.from_url(dataclasses.replace(url, query=query), rest)
    raise InvalidURL(f"protocol must be 'machinery' or 'unifiedq', not {proto!r}")


# -- Machinery's AMQP result backend -----------------------------------------------------------
_OK_EMPTY = outcome(True, b"")
_FINAL = ("SUCCESS", "FAILURE")


def _task_results(data: bytes) -> list[dict[str, Any]]:
    """Machinery ``TaskResult`` items of a result's bytes.

    A JSON array is one result per item, any other JSON value one result, bytes that are
    not JSON one ``[]byte``; empty bytes none.
    """
    if not data:
        return []
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return [{"Type": "[]byte", "Value": base64.b64encode(data).decode("ascii")}]
    out = []
    for v in value if isinstance(value, list) else [value]:
        try:
            arg = _typed_arg(v)
            out.append({"Type": arg["Type"], "Value": arg["Value"]})
        except InvalidArgument:  # no Go type for it: its JSON text, as a string
            out.append({"Type": "string", "Value": _json(v).decode()})
    return out


class MachineryResultStore:
    """Machinery's AMQP result backend as a unifiedq result store (``results=``).

    ``connect("amqp://...?protocol=machinery", results=MachineryResultStore(url))`` makes
    the handle keep task states where Machinery's ``ResultBackend: "amqp://..."`` keeps them:
    one queue per task, named by its UUID (not durable, auto-deleted, ``x-message-ttl`` and
    ``x-expires`` of ``expires_in``), bound to the exchange with the UUID, holding
    ``TaskState`` messages. Then a Go ``AsyncResult.Get()`` returns what a Python handler
    returned (``complete``; a plain ``ack`` is a SUCCESS without results) or its error
    (``fail``), and ``result(uuid)`` returns what a Go worker's task returned, as the JSON
    array of its values. Reading a state consumes it, as Machinery's ``GetState`` does: one
    reader per task.

    Args:
        url: The broker's ``amqp://`` URL (its ``exchange`` option, default
            ``machinery_exchange``, is the one the states are published to).
        expires_in: Seconds a state is kept (Machinery's ``ResultsExpireIn``, default 3600).
        poll_interval: Seconds between reads while ``wait`` waits.
    """

    def __init__(self, url: str, *, expires_in: float = 3600.0, poll_interval: float = 0.05
                 ) -> None:
        from ..._url import parse_url

        u = parse_url(url)
        self._host = f"{u.host or 'localhost'}:{u.port or 5672}"
        self._user, self._password = u.username or "guest", u.password or "guest"
        self._vhost = vhost_of(u.raw)
        self._exchange = u.query.get("exchange", "machinery_exchange")
        if not 1 <= expires_in * 1000 < 2**31:
            raise InvalidArgument(f"expires_in must be in 0.001..2147483 s, not {expires_in}")
        self._ms = int(expires_in * 1000)
        self._poll = poll_interval
        self._lock = threading.Lock()
        self._conn: Any = None
        self._ch: Any = None

    def _channel(self, uuid: str) -> Any:
        if self._conn is None:
            conn = amqp.Connection(self._host, userid=self._user, password=self._password,
                                   virtual_host=self._vhost, connect_timeout=10)
            conn.connect()
            ch = conn.channel()
            ch.confirm_select()
            self._conn, self._ch = conn, ch
        # backends/amqp updateState/GetState: exactly Machinery's declaration.
        self._ch.exchange_declare(self._exchange, "direct", durable=True, auto_delete=False)
        self._ch.queue_declare(uuid, durable=False, auto_delete=True,
                               arguments={"x-message-ttl": self._ms, "x-expires": self._ms})
        self._ch.queue_bind(uuid, self._exchange, routing_key=uuid)
        return self._ch

    def _drop(self) -> None:
        conn, self._conn, self._ch = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.collect()

    def put(self, scope: str, job_id: str, raw: bytes, retention: float) -> None:
        """Publish the task's final state (SUCCESS with its results, or FAILURE).

        Raises:
            BackendError: The broker could not be reached or refused the state.
        """
        ok, data = raw[:1] == outcome(True, b""), raw[1:]
        state = {
            "TaskUUID": job_id, "TaskName": "", "State": "SUCCESS" if ok else "FAILURE",
            "Results": _task_results(data) if ok else None,
            "Error": "" if ok else data.decode("utf-8", "replace"),
            "CreatedAt": _rfc3339(time.time()), "TTL": 0,
        }
        with self._lock:
            try:
                ch = self._channel(job_id)
                ch.basic_publish(amqp.Message(_json(state), content_type=_JSON,
                                              delivery_mode=2),
                                 exchange=self._exchange, routing_key=job_id)
            except Exception as exc:
                self._drop()
                raise BackendError(f"could not store the Machinery state of task "
                                   f"{job_id!r}: {exc}") from exc

    def wait(self, scope: str, job_id: str, timeout: float | None) -> bytes | None:
        """The task's final outcome, reading (and consuming) its states up to ``timeout`` s.

        Raises:
            BackendError: The broker could not be reached.
        """
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                try:
                    ch = self._channel(job_id)
                    msg = ch.basic_get(job_id, no_ack=True)
                except Exception as exc:
                    self._drop()
                    raise BackendError(f"could not read the Machinery state of task "
                                       f"{job_id!r}: {exc}") from exc
            if msg is not None:
                got = _final_outcome(msg.body)
                if got is not None:
                    return got
                continue  # PENDING, RECEIVED, STARTED, RETRY: read on
            if end is not None and time.monotonic() >= end:
                return None
            time.sleep(self._poll if end is None else
                       max(0.0, min(self._poll, end - time.monotonic())))

    def close(self) -> None:
        """Close the store's connection."""
        with self._lock:
            conn, self._conn, self._ch = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def _final_outcome(body: Any) -> bytes | None:
    """The outcome of a final ``TaskState`` message; None for any other state."""
    try:
        state = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(state, dict) or state.get("State") not in _FINAL:
        return None
    if state["State"] == "FAILURE":
        return outcome(False, str(state.get("Error") or "").encode())
    values = []
    for r in state.get("Results") or []:
        try:
            values.append(_arg_value(r)[1])
        except ValueError:
            values.append(r)
    return outcome(True, _json(values))
