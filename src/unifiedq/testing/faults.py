"""Reusable fault cases: run one fault against any driver URL and measure what happened.

Each function takes a queue URL (of any driver, including a third-party one), injects one
fault while a verb runs, and returns a :class:`FaultOutcome`: how long the call took against
its deadline, which error it raised, and a ledger of the jobs involved (lost, duplicated,
stranded, attempt counts). Nothing here asserts; a test decides what it requires, e.g.::

    from unifiedq.testing.faults import verb_deadline_under_stall

    def test_dequeue_keeps_its_deadline_when_the_server_freezes(my_server):
        out = verb_deadline_under_stall(my_server.url + "?queue=t1", my_server.frozen,
                                        verb="dequeue", timeout=1.0, face="async")
        assert out.ok, out.describe()

Faults are *context managers* that start the fault on entry and end it on exit, so any tool
fits: ``ManagedServer.frozen`` (``SIGSTOP``/``SIGCONT`` of the server), a Toxiproxy toxic
(``proxy.toxic("timeout", timeout=0)`` drops every byte, ``proxy.toxic("limit_data",
bytes=N)`` cuts the connection mid-reply), or your own.

Both faces are covered by one code path: on the ``"async"`` face every verb runs as a
coroutine on a private event loop thread (:class:`FaceHandle`); a verb that never returns is
abandoned after ``hard_cap`` seconds and reported as hung (``elapsed=None``) instead of
wedging the test.

Terms used in the outcomes:

* **deadline**: the verb's own timeout (``dequeue(timeout=)``) or the driver's configured
  one (``enqueue``), plus ``slack``; ``ok`` needs ``elapsed <= deadline``.
* **typed**: the error (if any) is a :class:`~unifiedq.UnifiedQError`; a library's own
  exception leaking out is not.
* **stranded**: a job whose enqueue returned but that nobody can dequeue within
  ``drain_window`` seconds after the fault ended (e.g. taken by a reply that never arrived
  and held by a lease until its visibility timeout).
* **lost**: still not back after ``drain_window + lease_wait`` seconds.
* **duplicated**: deliveries of a job beyond its first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterator
from contextlib import AbstractContextManager
from typing import Any, Literal, TypeVar

from .._capabilities import Capability
from .._connect import connect, connect_async
from .._errors import BackendFull, LimitExceeded, UnifiedQError, UnsupportedOperation
from .._job import Job

__all__ = [
    "DEFAULT_SLACK",
    "CallResult",
    "Face",
    "FaceHandle",
    "Fault",
    "FaultOutcome",
    "backend_full",
    "cancellation_ledger",
    "drain",
    "no_fault",
    "oversized_input",
    "release_on_shutdown",
    "reset_mid_reply",
    "restart_ledger",
    "verb_deadline_under_stall",
    "verb_under_fault",
]

#: Which face of the API a case drives.
Face = Literal["sync", "async"]

#: A fault: a function returning a context manager that holds the fault for its block.
Fault = Callable[[], AbstractContextManager[Any]]

#: Seconds a verb may overrun its timeout by default (scheduling on a loaded 2-core CI box,
#: one reconnect attempt); drivers document their own bound in their page.
DEFAULT_SLACK = 1.5

T = TypeVar("T")


@dataclasses.dataclass
class FaultOutcome:
    """What one fault case measured.

    Attributes:
        case: Name of the case, e.g. ``"verb_under_fault"``.
        driver: URL scheme of the queue.
        face: ``"sync"`` or ``"async"``.
        verb: The verb that ran under the fault.
        deadline: Seconds the verb was allowed (timeout + slack); None when not timed.
        elapsed: Seconds until it returned or raised; None if it hung past ``hard_cap``.
        error: Class name of the exception raised, or None if it returned.
        typed: False when the error is not a :class:`~unifiedq.UnifiedQError`.
        returned: Short description of the return value.
        enqueued: Jobs whose enqueue returned.
        delivered: Distinct jobs delivered (to the verb, or to the drain afterwards).
        lost: Jobs not delivered within ``drain_window + lease_wait`` of the fault's end.
        duplicated: Deliveries beyond the first per job.
        stranded: Jobs not deliverable within ``drain_window`` of the fault's end.
        attempt_bumped: Jobs delivered with a higher attempt than the case allows.
        allowed_duplicates: Duplicates explained by the at-least-once window (restarts).
        ok: The verdict of the case (see each function).
        note: Extra facts, e.g. ``"hung; returned 14.8 s after the fault ended"``.
    """

    case: str
    driver: str
    face: str
    verb: str
    deadline: float | None = None
    elapsed: float | None = None
    error: str | None = None
    typed: bool = True
    returned: str = ""
    enqueued: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    stranded: int = 0
    attempt_bumped: int = 0
    allowed_duplicates: int = 0
    ok: bool = False
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return the outcome as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """Return a one-line human summary (for assertion messages and tables)."""
        took = "hung" if self.elapsed is None else f"{self.elapsed:.2f}s"
        if self.deadline is not None:
            took += f"/{self.deadline:.2f}s"
        what = self.error or (self.returned or "returned")
        parts = [f"{'OK' if self.ok else 'FAIL'} {took} {what}"]
        if not self.typed:
            parts.append("untyped error")
        for key in ("lost", "duplicated", "stranded", "attempt_bumped"):
            value = getattr(self, key)
            if value:
                parts.append(f"{key}={value}")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


# --------------------------------------------------------------------------- a face handle


@dataclasses.dataclass
class CallResult:
    """One verb call: its value or exception and how long it took.

    Attributes:
        value: What the verb returned (None when it raised or hung).
        error: The exception it raised, if any.
        elapsed: Seconds until it finished; None if it was still running at the cap.
        pending: The still-running call, when it hung (wait on it after ending the fault).
    """

    value: Any = None
    error: BaseException | None = None
    elapsed: float | None = None
    pending: concurrent.futures.Future[Any] | None = None

    @property
    def hung(self) -> bool:
        """True when the call had not finished at the cap."""
        return self.elapsed is None


class FaceHandle:
    """A queue handle on either face, driven from blocking code with a cap on every call.

    On the ``"sync"`` face each call runs on a helper thread; on the ``"async"`` face the
    handle lives on a private event loop thread and each call is a coroutine there. Either
    way :meth:`call` returns after at most ``cap`` seconds, so a wedged driver cannot wedge
    the test.

    Args:
        url: Queue URL.
        face: ``"sync"`` or ``"async"``.
        open_cap: Seconds allowed for connecting.
        **options: Driver options for ``connect``/``connect_async``.

    Raises:
        TimeoutError: Connecting took longer than ``open_cap``.
    """

    def __init__(self, url: str, face: Face = "sync", *, open_cap: float = 30.0,
                 **options: Any) -> None:
        self.url = url
        self.face = face
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=32, thread_name_prefix="uq-fault")
        self.q: Any
        if face == "async":
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._thread = threading.Thread(target=loop.run_forever, daemon=True,
                                            name="uq-fault-loop")
            self._thread.start()

            async def open_() -> Any:
                q = connect_async(url, **options)
                return await q.__aenter__()

            self.q = asyncio.run_coroutine_threadsafe(open_(), loop).result(open_cap)
        else:
            self.q = self._pool.submit(connect, url, **options).result(open_cap)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The private event loop (async face only)."""
        assert self._loop is not None, "the sync face has no event loop"
        return self._loop

    def submit(self, verb: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Start ``q.<verb>(*args, **kwargs)`` and return its future."""
        if self._loop is not None:
            async def run() -> Any:
                return await getattr(self.q, verb)(*args, **kwargs)
            return asyncio.run_coroutine_threadsafe(run(), self._loop)
        return self._pool.submit(getattr(self.q, verb), *args, **kwargs)

    def run_coroutine(self, factory: Callable[[], Coroutine[Any, Any, T]],
                      cap: float | None = None) -> T:
        """Run ``factory()`` on the private loop (async face) and return its result.

        Raises:
            TimeoutError: It did not finish within ``cap`` seconds.
        """
        return asyncio.run_coroutine_threadsafe(factory(), self.loop).result(cap)

    def call(self, verb: str, *args: Any, cap: float | None = 60.0, **kwargs: Any) -> CallResult:
        """Call ``q.<verb>(*args, **kwargs)`` and wait at most ``cap`` seconds for it.

        Returns:
            The value or the exception, and the elapsed time (None when it hung).
        """
        started = time.monotonic()
        fut = self.submit(verb, *args, **kwargs)
        done = threading.Event()
        finished: list[float] = []

        def mark(_: object) -> None:  # time at completion, not when we look
            finished.append(time.monotonic())
            done.set()

        fut.add_done_callback(mark)
        if not done.wait(cap):
            return CallResult(pending=fut)
        elapsed = finished[0] - started
        error = fut.exception()
        if error is not None:
            return CallResult(error=error, elapsed=elapsed)
        return CallResult(value=fut.result(), elapsed=elapsed)

    def __call__(self, verb: str, *args: Any, cap: float | None = 60.0, **kwargs: Any) -> Any:
        """Call a verb and return its value, re-raising its error (``TimeoutError`` if hung)."""
        res = self.call(verb, *args, cap=cap, **kwargs)
        if res.hung:
            raise TimeoutError(f"{verb} did not return within {cap} s")
        if res.error is not None:
            raise res.error
        return res.value

    def close(self, cap: float = 15.0) -> None:
        """Close the handle (waiting at most ``cap`` s) and stop the helper threads."""
        with contextlib.suppress(BaseException):
            self.call("aclose" if self._loop is not None else "close", cap=cap)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(cap)
            if not self._loop.is_running():
                self._loop.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> FaceHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- helpers


def _driver(url: str) -> str:
    return url.split(":", 1)[0]


def _err_name(error: BaseException | None) -> str | None:
    return None if error is None else type(error).__name__


def _typed(error: BaseException | None) -> bool:
    return error is None or isinstance(error, UnifiedQError)


def _jobs_of(value: Any) -> list[Job]:
    if isinstance(value, Job):
        return [value]
    if isinstance(value, list):
        return [j for j in value if isinstance(j, Job)]
    return []


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    jobs = _jobs_of(value)
    if jobs or isinstance(value, list):
        return f"{len(jobs)} job(s)"
    if isinstance(value, str):
        return "id"
    return type(value).__name__


def drain(url: str, *, window: float, expect: Collection[str] | None = None,
          face: Face = "sync", ack: bool = True, batch: int = 100,
          options: dict[str, Any] | None = None,
          match: Callable[[Job], str] | None = None) -> list[Job]:
    """Dequeue (and ack) what becomes available within ``window`` seconds.

    Keeps polling for the whole window (a stranded job may come back late), unless every id
    in ``expect`` has been delivered: then one short extra dequeue looks for duplicates.

    Args:
        url: Queue URL.
        window: Longest total time to keep trying, in seconds.
        expect: Job ids the caller still waits for.
        face: Face used for the drain.
        ack: Ack each job (jobs of drivers without ACK are consumed anyway).
        batch: ``dequeue_many`` size.
        options: Driver options.
        match: What ``expect`` holds for a job (default: its id; e.g. the body, for drivers
            that re-enqueue a returned job under a new id).

    Returns:
        The jobs delivered, in order.
    """
    key = match or (lambda job: job.id)
    got: list[Job] = []
    missing = set(expect) if expect is not None else None
    end = time.monotonic() + window
    with FaceHandle(url, face, **(options or {})) as h:
        acks = ack and Capability.ACK in h.q.capabilities
        while (left := end - time.monotonic()) > 0:
            last = missing is not None and not missing
            wait = 0.3 if last else min(left, 1.0)
            res = h.call("dequeue_many", batch, timeout=wait, cap=left + 30)
            jobs = _jobs_of(res.value)
            if res.error is not None or res.hung:
                time.sleep(0.1)
                continue
            for job in jobs:
                got.append(job)
                if missing is not None:
                    missing.discard(key(job))
                if acks:
                    h.call("ack", job, cap=30)
            if last and not jobs:
                break
    return got


def _ledger(out: FaultOutcome, enqueued: list[str], first: list[Job], later: list[Job],
            late: list[Job]) -> None:
    """Fill the ledger fields of ``out``.

    ``first`` were seen by the case, ``later`` by the drain within its window, ``late`` by
    the drain after ``lease_wait``.
    """
    wanted = set(enqueued)
    seen = Counter(j.id for j in [*first, *later, *late])
    out.enqueued = len(wanted)
    out.delivered = sum(1 for i in wanted if seen[i])
    out.duplicated = sum(n - 1 for i, n in seen.items() if i in wanted and n > 1)
    on_time = {j.id for j in [*first, *later]}
    out.stranded = len(wanted - on_time)
    out.lost = sum(1 for i in wanted if not seen[i])


# --------------------------------------------------------------------------- deadlines


def verb_under_fault(
    url: str,
    fault: Fault,
    *,
    verb: Literal["dequeue", "dequeue_many", "enqueue", "size", "ack"] = "dequeue",
    timeout: float = 1.0,
    face: Face = "sync",
    slack: float = DEFAULT_SLACK,
    jobs: int = 1,
    body_size: int = 16,
    hard_cap: float = 30.0,
    drain_window: float = 3.0,
    lease_wait: float = 0.0,
    options: dict[str, Any] | None = None,
    case: str = "verb_under_fault",
) -> FaultOutcome:
    """Run one verb while ``fault`` holds and measure its time to return and the job ledger.

    The handle connects and ``jobs`` jobs are enqueued before the fault starts. Under the
    fault the verb runs once: ``dequeue(timeout=timeout)`` / ``dequeue_many(10,
    timeout=timeout)``, ``enqueue(body)``, ``size()``, or ``ack(job)`` of a job dequeued
    before the fault. For verbs without a timeout argument, ``timeout`` is the deadline the
    driver was configured with (e.g. ``socket_timeout`` in the URL). The fault ends when the
    verb returns or after ``timeout + slack + hard_cap`` seconds; then every job is drained
    from a fresh handle.

    ``ok`` means: it returned or raised a typed error within ``timeout + slack``, nothing
    was lost or stranded, and no job was delivered twice.

    Args:
        url: Queue URL (use a fresh queue name: it is drained at the end).
        fault: Context-manager factory holding the fault, e.g. ``server.frozen``.
        verb: The verb to run under the fault.
        timeout: The verb's timeout or the driver's configured deadline, in seconds.
        face: ``"sync"`` or ``"async"``.
        slack: Seconds of overrun allowed.
        jobs: Jobs enqueued before the fault.
        body_size: Bytes per job body (make it larger than a ``limit_data`` toxic's ``bytes``
            to cut a reply mid-job).
        hard_cap: Seconds past the deadline after which the call counts as hung.
        drain_window: Seconds the drain after the fault waits for jobs to come back.
        lease_wait: Extra seconds to wait for stranded jobs (past a lease) before calling
            them lost.
        options: Driver options.
        case: Name recorded in the outcome.

    Returns:
        The measured outcome.
    """
    out = FaultOutcome(case=case, driver=_driver(url), face=face, verb=verb,
                       deadline=timeout + slack)
    h = FaceHandle(url, face, **(options or {}))
    ids: list[str] = []
    first: list[Job] = []
    try:
        body = b"j" * max(1, body_size)
        for _ in range(jobs + (1 if verb == "ack" else 0)):
            ids.append(h("enqueue", body, cap=30))
        held: Job | None = None
        if verb == "ack":
            held = h("dequeue", timeout=5.0, cap=30)
            if held is None:
                out.note = "setup: the job to ack was not delivered"
                return out
            first.append(held)
        h("size", cap=30)  # warm: every connection the verb needs is open before the fault
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        if verb == "dequeue":
            kwargs = {"timeout": timeout}
        elif verb == "dequeue_many":
            args, kwargs = (10,), {"timeout": timeout}
        elif verb == "enqueue":
            args = (body,)
        elif verb == "ack":
            args = (held,)
        with fault():
            res = h.call(verb, *args, cap=timeout + slack + hard_cap, **kwargs)
        out.elapsed = res.elapsed
        if res.hung and res.pending is not None:
            ended = time.monotonic()
            with contextlib.suppress(BaseException):
                res.pending.result(hard_cap)
            if res.pending.done():
                out.note = (f"hung: returned {time.monotonic() - ended:.1f}s after the fault "
                            "ended")
                res.error = res.pending.exception()
                if res.error is None:
                    res.value = res.pending.result()
            else:
                out.note = "hung: still blocked after the fault ended"
        out.error = _err_name(res.error)
        out.typed = _typed(res.error)
        out.returned = _describe(res.value) if res.error is None else ""
        if verb == "enqueue" and res.error is None and isinstance(res.value, str):
            ids.append(res.value)
        got = _jobs_of(res.value) if verb in ("dequeue", "dequeue_many") else []
        for job in got:
            first.append(job)
            with contextlib.suppress(Exception):
                h("ack", job, cap=30)
    finally:
        h.close()
    seen_first = {j.id for j in first}
    later = drain(url, window=drain_window, expect=set(ids) - seen_first, options=options)
    late: list[Job] = []
    missing = set(ids) - seen_first - {j.id for j in later}
    if lease_wait > 0 and missing:
        late = drain(url, window=lease_wait, expect=missing, options=options)
    _ledger(out, ids, first, later, late)
    in_time = out.elapsed is not None and out.elapsed <= timeout + slack
    out.ok = (in_time and out.typed and out.lost == 0 and out.stranded == 0
              and out.duplicated == 0)
    return out


def verb_deadline_under_stall(
    url: str,
    stall: Fault,
    verb: Literal["dequeue", "dequeue_many", "enqueue", "size", "ack"] = "dequeue",
    timeout: float = 1.0,
    **kwargs: Any,
) -> FaultOutcome:
    """A verb under a stall: the server frozen, or every byte dropped.

    ``stall`` is e.g. ``server.frozen`` (``SIGSTOP``) or ``lambda: proxy.toxic("timeout",
    timeout=0)``. See :func:`verb_under_fault` for the other arguments and the verdict.

    Returns:
        The measured outcome.
    """
    return verb_under_fault(url, stall, verb=verb, timeout=timeout,
                            case="verb_deadline_under_stall", **kwargs)


def reset_mid_reply(
    url: str,
    proxy: Any,
    *,
    after_bytes: int = 512,
    verb: Literal["dequeue", "dequeue_many", "enqueue", "size", "ack"] = "dequeue",
    timeout: float = 1.0,
    **kwargs: Any,
) -> FaultOutcome:
    """A verb whose reply is cut: the connection closes after ``after_bytes`` bytes.

    ``url`` must go through ``proxy`` (a :class:`~unifiedq.testing.toxiproxy.Proxy`; see
    :func:`~unifiedq.testing.toxiproxy.proxied_url`). The jobs' bodies are 4 KiB by default,
    so a dequeue's reply is cut in the middle of a job. Reconnections made while the toxic
    holds are cut the same way, i.e. the link stays bad until the verb returns.

    Returns:
        The measured outcome (see :func:`verb_under_fault`).
    """
    kwargs.setdefault("body_size", 4096)
    return verb_under_fault(
        url, lambda: proxy.toxic("limit_data", bytes=after_bytes), verb=verb,
        timeout=timeout, case="reset_mid_reply", **kwargs)


# --------------------------------------------------------------------------- limits


def oversized_input(
    url: str,
    *,
    face: Face = "sync",
    header_size: int = 0,
    body_size: int = 0,
    deadline: float = 1.0,
    options: dict[str, Any] | None = None,
) -> FaultOutcome:
    """Enqueue one oversized job while holding a lease; check the handle is left intact.

    The input is a header of ``header_size`` characters and/or a body of ``body_size``
    bytes. ``ok`` means either: a :class:`~unifiedq.LimitExceeded` within ``deadline``
    seconds, after which the lease held before is still ackable, nothing was queued, and
    the handle still enqueues and dequeues; or the job was accepted and comes back intact.
    A driver without the HEADERS capability may refuse a header with
    :class:`~unifiedq.UnsupportedOperation` instead.

    Args:
        url: Queue URL (a fresh queue).
        face: ``"sync"`` or ``"async"``.
        header_size: Characters in one ``trace`` header (0 = none).
        body_size: Body bytes (0 = one byte).
        deadline: Seconds within which a rejection must come.
        options: Driver options.

    Returns:
        The measured outcome.
    """
    out = FaultOutcome(case="oversized_input", driver=_driver(url), face=face,
                       verb="enqueue", deadline=deadline)
    notes: list[str] = []
    with FaceHandle(url, face, **(options or {})) as h:
        leased_id = h("enqueue", b"held", cap=30)
        held = h("dequeue", timeout=5.0, cap=30)
        body = b"b" * max(1, body_size)
        headers = {"trace": "h" * header_size} if header_size else None
        res = h.call("enqueue", body, headers=headers, cap=deadline + 60)
        out.elapsed = res.elapsed
        out.error = _err_name(res.error)
        out.typed = _typed(res.error)
        # Without HEADERS, refusing any header up front is the typed answer.
        no_headers = bool(headers) and Capability.HEADERS not in h.q.capabilities
        rejected = isinstance(res.error, LimitExceeded) or (
            no_headers and isinstance(res.error, UnsupportedOperation))
        if isinstance(res.error, LimitExceeded):
            notes.append(f"limit={res.error.limit or '?'}")
        elif rejected:
            notes.append("no HEADERS capability")
        intact = True
        if held is not None and Capability.ACK in h.q.capabilities:
            ack = h.call("ack", held, cap=30)
            if ack.error is not None or ack.hung:
                intact = False
                notes.append(f"lease lost: ack raised {_err_name(ack.error) or 'hung'}")
        elif held is None or held.id != leased_id:
            intact = False
            notes.append("setup: held job not delivered")
        accepted_back = False
        if res.error is None and not res.hung:
            out.returned = "accepted"
            out.deadline = None  # the deadline is for a refusal; sending may take its time
            back = h.call("dequeue", timeout=5.0, cap=60)
            job = back.value if isinstance(back.value, Job) else None
            accepted_back = (job is not None and job.body == body
                             and (not headers or job.headers.get("trace") == headers["trace"]))
            if job is not None and Capability.ACK in h.q.capabilities:
                h.call("ack", job, cap=30)
            if not accepted_back:
                notes.append("accepted but not delivered back intact")
        left = h.call("size", cap=30)
        if rejected and isinstance(left.value, int) and left.value != 0:
            intact = False
            notes.append(f"rejected job left {left.value} job(s) behind")
        probe = h.call("enqueue", b"after", cap=30)
        got = h.call("dequeue", timeout=5.0, cap=60)
        if probe.error is not None or not isinstance(got.value, Job):
            intact = False
            notes.append("the handle no longer works")
        elif Capability.ACK in h.q.capabilities:
            h.call("ack", got.value, cap=30)
    out.note = "; ".join(notes)
    fast = out.elapsed is not None and out.elapsed <= deadline
    out.ok = intact and ((rejected and fast) or accepted_back)
    return out


# --------------------------------------------------------------------------- full backend


def backend_full(
    url: str,
    full: Fault,
    *,
    face: Face = "sync",
    n_jobs: int = 20,
    deadline: float = 1.0,
    slack: float = DEFAULT_SLACK,
    drain_window: float = 10.0,
    options: dict[str, Any] | None = None,
) -> FaultOutcome:
    """Fill the backend (out of memory or disk); producers must be refused, consumers drain.

    ``n_jobs`` jobs are enqueued and one is dequeued before ``full`` starts (e.g. Redis'
    ``CONFIG SET maxmemory 1`` with ``noeviction``, or ``RabbitMQServer.alarm("memory")``).
    While it holds: one ``enqueue`` is timed, the held job is acked, and the backlog is
    dequeued and acked. After it ends, an ``enqueue`` must succeed again.

    ``ok`` means: the enqueue raised :class:`~unifiedq.BackendFull` within ``deadline +
    slack``, the ack worked, every job was drained while the backend was full (none
    stranded or lost), and producers were accepted afterwards.

    Args:
        url: Queue URL (a fresh queue).
        full: Context-manager factory that makes the backend full for its block.
        face: ``"sync"`` or ``"async"``.
        n_jobs: Backlog enqueued before the backend fills.
        deadline: Seconds within which a producer must be refused.
        slack: Seconds of overrun allowed.
        drain_window: Seconds the consumer may take to drain the backlog while full.
        options: Driver options.

    Returns:
        The measured outcome (``verb`` is the refused ``enqueue``).
    """
    out = FaultOutcome(case="backend_full", driver=_driver(url), face=face, verb="enqueue",
                       deadline=deadline + slack)
    notes: list[str] = []
    first: list[Job] = []
    later: list[Job] = []
    with FaceHandle(url, face, **(options or {})) as h:
        ids = list(h("enqueue_many", [b"f%d" % i for i in range(n_jobs)], cap=60))
        held = h("dequeue", timeout=5.0, cap=30)
        acks = Capability.ACK in h.q.capabilities
        with full():
            res = h.call("enqueue", b"refused?", cap=deadline + slack + 30)
            out.elapsed = res.elapsed
            out.error = _err_name(res.error)
            out.typed = _typed(res.error)
            refused = isinstance(res.error, BackendFull)
            if res.error is None and isinstance(res.value, str):
                notes.append("accepted while full")
            if held is not None:
                first.append(held)
                if acks:
                    ack = h.call("ack", held, cap=30)
                    if ack.error is not None or ack.hung:
                        notes.append(f"ack while full: {_err_name(ack.error) or 'hung'}")
            end = time.monotonic() + drain_window
            missing = set(ids) - {j.id for j in first}
            while missing and (left := end - time.monotonic()) > 0:
                got = h.call("dequeue_many", 10, timeout=min(left, 1.0), cap=left + 30)
                if got.error is not None or got.hung:
                    notes.append(f"dequeue while full: {_err_name(got.error) or 'hung'}")
                    break
                for job in _jobs_of(got.value):
                    first.append(job)
                    missing.discard(job.id)
                    if acks:
                        h.call("ack", job, cap=30)
        after = h.call("enqueue", b"after", cap=60)
        if after.error is not None or after.hung:
            notes.append(f"enqueue after: {_err_name(after.error) or 'hung'}")
        else:
            ids.append(str(after.value))
    missing = set(ids) - {j.id for j in first}
    later = drain(url, window=3.0, expect=missing, options=options)
    _ledger(out, ids[:n_jobs], first, later, [])
    out.stranded = len(set(ids[:n_jobs]) - {j.id for j in first})
    out.note = "; ".join(notes)
    in_time = out.elapsed is not None and out.elapsed <= deadline + slack
    out.ok = (refused and in_time and not notes and out.stranded == 0 and out.lost == 0
              and out.duplicated == 0)
    return out


# --------------------------------------------------------------------------- shutdown


def release_on_shutdown(
    url: str,
    *,
    face: Face = "sync",
    grace: float = 0.2,
    window: float = 10.0,
    options: dict[str, Any] | None = None,
) -> FaultOutcome:
    """Stop a worker while its handler runs; the job must come back without a used attempt.

    One job is enqueued; a ``Worker`` (``AsyncWorker`` on the async face) with a handler that
    blocks is stopped with ``stop(grace=grace)`` once the handler has started. The job is
    then dequeued from a fresh handle. ``ok`` means: the stop returned within ``grace`` plus
    :data:`DEFAULT_SLACK`, and the job came back within ``window`` seconds with the attempt
    it had (a shutdown is not a failure: a ``max_retry=0`` job must not be dead-lettered).

    Args:
        url: Queue URL (a fresh queue), with the driver's retry limit as low as possible to
            make a counted attempt visible (``max_retry=0``, ``max_attempts=1``, ``retry=0``).
        face: ``"sync"`` (``Worker``) or ``"async"`` (``AsyncWorker``).
        grace: Seconds the worker lets the handler run before handing the job back.
        window: Seconds to wait for the job to come back.
        options: Driver options for the worker's connection.

    Returns:
        The measured outcome.
    """
    from ..worker import AsyncWorker, Worker  # late: the worker module is not needed otherwise

    out = FaultOutcome(case="release_on_shutdown", driver=_driver(url), face=face,
                       verb="worker.stop", deadline=grace + DEFAULT_SLACK)
    started = threading.Event()
    release_handler = threading.Event()
    first: list[Job] = []
    with FaceHandle(url, "sync", **(options or {})) as h:
        jid = h("enqueue", b"deploy", cap=30)
    if face == "sync":
        def handler(job: Job) -> None:
            first.append(job)
            started.set()
            release_handler.wait(30)

        worker = Worker(url, handler, concurrency=1, poll_interval=0.1, grace=grace,
                        connect_options=options)
        worker.start()
        try:
            if started.wait(30):
                t0 = time.monotonic()
                worker.stop(grace=grace)
                out.elapsed = time.monotonic() - t0
        finally:
            release_handler.set()
            worker.stop(grace=0)
    else:
        async def main() -> None:
            async def handler(job: Job) -> None:
                first.append(job)
                started.set()
                await asyncio.sleep(30)

            worker = AsyncWorker(url, handler, concurrency=1, poll_interval=0.1, grace=grace,
                                 connect_options=options)
            worker.start()
            try:
                for _ in range(3000):
                    if started.is_set():
                        break
                    await asyncio.sleep(0.01)
                if started.is_set():
                    t0 = time.monotonic()
                    await worker.stop(grace=grace)
                    out.elapsed = time.monotonic() - t0
            finally:
                await worker.stop(grace=0)

        asyncio.run(main())
    if not first:
        out.note = "the handler never started"
        return out
    back = drain(url, window=window, expect={"deploy"}, options=options,
                 match=lambda job: job.body.decode(errors="replace"))
    again = [j for j in back if j.id == jid or j.body == b"deploy"]
    out.enqueued = 1
    out.delivered = 1
    out.returned = f"attempt {first[0].attempt} -> " + (
        f"{again[0].attempt}" if again else "not back")
    out.stranded = 0 if again else 1
    out.lost = out.stranded
    out.duplicated = max(0, len(again) - 1)
    out.attempt_bumped = sum(1 for j in again if j.attempt > first[0].attempt)
    in_time = out.elapsed is not None and out.elapsed <= grace + DEFAULT_SLACK
    out.ok = in_time and bool(again) and out.attempt_bumped == 0 and out.duplicated == 0
    return out


# --------------------------------------------------------------------------- cancellation


def cancellation_ledger(
    url: str,
    n_jobs: int = 50,
    cancellations: int = 50,
    *,
    seed: int = 0,
    max_delay: float = 0.02,
    timeout: float = 1.0,
    drain_window: float = 3.0,
    lease_wait: float = 0.0,
    options: dict[str, Any] | None = None,
) -> FaultOutcome:
    """Cancel async dequeues at random points; every job must end up delivered exactly once.

    On the asyncio face, ``n_jobs`` jobs are enqueued, then ``cancellations`` times a
    ``dequeue(timeout=timeout)`` (or ``dequeue_many(3, ...)``, or the same under
    ``asyncio.wait_for``) is started and cancelled after a random delay in
    ``[0, max_delay]`` seconds. Jobs that a call returned before its cancellation are acked.
    Afterwards the queue is drained. A delaying proxy in front of the server (a Toxiproxy
    ``latency`` toxic) widens the window in which a cancellation lands mid-request.

    ``ok`` means: no job stranded (taken by a cancelled call and not back within
    ``drain_window``), none duplicated, and none delivered with a higher attempt than 1.

    Args:
        url: Queue URL (a fresh queue).
        n_jobs: Jobs enqueued first.
        cancellations: Cancelled calls.
        seed: Seed of the random cancellation points.
        max_delay: Longest delay before a cancellation, in seconds.
        timeout: The dequeue timeout of each call.
        drain_window: Seconds the final drain waits (a job not back by then is stranded).
        lease_wait: Extra seconds to wait for stranded jobs (past a lease) before calling
            them lost.
        options: Driver options.

    Returns:
        The measured outcome (``returned`` says how many calls were really cancelled).
    """
    rng = random.Random(seed)
    out = FaultOutcome(case="cancellation_ledger", driver=_driver(url), face="async",
                       verb="dequeue")
    first: list[Job] = []
    ids: list[str] = []
    cancelled = 0
    t_start = time.monotonic()

    async def main() -> None:
        nonlocal cancelled
        async with connect_async(url, **(options or {})) as q:
            ids.extend(await q.enqueue_many([b"c%d" % i for i in range(n_jobs)]))
            acks = Capability.ACK in q.capabilities
            for _ in range(cancellations):
                kind = rng.randrange(3)
                call: Awaitable[Any]
                if kind == 0:
                    call = q.dequeue(timeout=timeout)
                elif kind == 1:
                    call = q.dequeue_many(3, timeout=timeout)
                else:
                    call = asyncio.wait_for(q.dequeue(timeout=timeout), rng.uniform(0, max_delay))
                task: asyncio.Task[Any] = asyncio.ensure_future(call)
                await asyncio.sleep(rng.uniform(0, max_delay))
                task.cancel()
                try:
                    value = await task
                except (asyncio.CancelledError, TimeoutError):
                    cancelled += 1
                    continue
                for job in _jobs_of(value):
                    first.append(job)
                    if acks:
                        await q.ack(job)

    asyncio.run(main())
    out.elapsed = time.monotonic() - t_start
    later = drain(url, window=drain_window, expect=set(ids) - {j.id for j in first},
                  options=options)
    late: list[Job] = []
    missing = set(ids) - {j.id for j in [*first, *later]}
    if lease_wait > 0 and missing:
        late = drain(url, window=lease_wait, expect=missing, options=options)
    _ledger(out, ids, first, later, late)
    out.attempt_bumped = sum(1 for j in [*first, *later, *late] if j.attempt > 1)
    out.returned = f"{cancelled}/{cancellations} calls cancelled"
    out.ok = out.stranded == 0 and out.duplicated == 0 and out.attempt_bumped == 0
    return out


# --------------------------------------------------------------------------- restarts


def restart_ledger(
    url: str,
    restart: Callable[[], None],
    n_jobs: int = 10_000,
    *,
    face: Face = "sync",
    consumers: int = 2,
    restart_at: float = 0.5,
    retry_for: float = 60.0,
    idle: float = 3.0,
    max_wait: float = 120.0,
    stranded_after: float = 10.0,
    options: dict[str, Any] | None = None,
) -> FaultOutcome:
    """Restart the broker in the middle of a run; account for every job.

    A producer enqueues ``n_jobs`` numbered jobs one by one (retrying a failed enqueue for up
    to ``retry_for`` seconds) while ``consumers`` consumers dequeue and ack. When
    ``restart_at`` of the jobs are enqueued, ``restart()`` runs (e.g.
    ``RedisServer.restart`` of a server with AOF). The consumers go on until every job was
    seen and nothing new came for ``idle`` seconds (or ``max_wait`` after the producer).

    ``ok`` means: no job whose enqueue returned is lost, and the duplicates stay within the
    at-least-once window: at most one per failed ack, per retried enqueue, and per consumer
    holding a job at the restart (``allowed_duplicates``).

    Args:
        url: Queue URL (a fresh queue on a durable backend).
        restart: Restarts the backend (blocking until it is back).
        n_jobs: Jobs produced.
        face: ``"sync"`` or ``"async"``.
        consumers: Concurrent consumers.
        restart_at: Fraction of the jobs enqueued before the restart.
        retry_for: Seconds a producer keeps retrying one enqueue.
        idle: Seconds without a delivery after which the run ends.
        max_wait: Longest run after the producer finished, in seconds.
        stranded_after: A job first delivered later than this many seconds after a
            consumer first found the queue empty (once the producer finished) counts as
            stranded: it was held by a lease or reservation, not waiting in the backlog.
            Reported, but within the at-least-once contract, so not a failure.
        options: Driver options.

    Returns:
        The measured outcome (``elapsed`` = the whole run; ``note`` has the counters).
    """
    out = FaultOutcome(case="restart_ledger", driver=_driver(url), face=face, verb="run")
    run = uuid.uuid4().hex[:8]
    h = FaceHandle(url, face, **(options or {}))
    hc = [FaceHandle(url, face, **(options or {})) for _ in range(consumers)]
    returned: set[int] = set()
    seen: Counter[int] = Counter()
    lock = threading.Lock()
    counters = Counter[str]()
    producer_done = threading.Event()
    stop = threading.Event()
    half = threading.Event()
    last_delivery = [time.monotonic()]
    first_seen: dict[int, float] = {}
    # When a consumer first found the queue empty after the producer finished: a job first
    # delivered well after that was hidden (held by a lease or reservation), not backlog.
    drained_at: list[float] = []

    def produce() -> None:
        for seq in range(n_jobs):
            if seq >= int(n_jobs * restart_at):
                half.set()
            give_up = time.monotonic() + retry_for
            tries = 0
            while True:
                res = h.call("enqueue", f"{run}:{seq}".encode(), cap=retry_for)
                tries += 1
                if res.error is None and not res.hung:
                    returned.add(seq)
                    break
                if time.monotonic() > give_up:
                    counters["enqueue_gave_up"] += 1
                    break
                time.sleep(0.05)
            if tries > 1:
                counters["enqueue_retried"] += 1
        half.set()
        producer_done.set()

    def consume(ch: FaceHandle) -> None:
        acks = Capability.ACK in ch.q.capabilities
        while not stop.is_set():
            res = ch.call("dequeue_many", 50, timeout=0.5, cap=retry_for)
            if res.error is not None or res.hung:
                counters["dequeue_errors"] += 1
                time.sleep(0.05)
                continue
            if not res.value and producer_done.is_set() and not drained_at:
                drained_at.append(time.monotonic())
            for job in _jobs_of(res.value):
                try:
                    head, _, num = job.body.decode().partition(":")
                except UnicodeDecodeError:
                    continue
                if head != run:
                    continue
                with lock:
                    seen[int(num)] += 1
                    last_delivery[0] = time.monotonic()
                    first_seen.setdefault(int(num), last_delivery[0])
                if acks:
                    ack = ch.call("ack", job, cap=retry_for)
                    if ack.error is not None or ack.hung:
                        counters["ack_failed"] += 1

    t0 = time.monotonic()
    produced = float("inf")  # until the producer finishes: nothing is late yet
    threads = [threading.Thread(target=produce, daemon=True, name="uq-fault-producer")]
    threads += [threading.Thread(target=consume, args=(c,), daemon=True,
                                 name=f"uq-fault-consumer-{i}") for i, c in enumerate(hc)]
    for t in threads:
        t.start()
    try:
        half.wait(max_wait + retry_for)
        r0 = time.monotonic()
        restart()
        counters["restart_ms"] = int((time.monotonic() - r0) * 1000)
        producer_done.wait(n_jobs * 0.1 + retry_for + max_wait)
        produced = time.monotonic()
        end = time.monotonic() + max_wait
        while time.monotonic() < end:
            with lock:
                complete = returned <= set(seen)
                quiet = time.monotonic() - last_delivery[0] >= idle
            if complete and quiet:
                break
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads[1:]:
            t.join(retry_for)
        h.close()
        for c in hc:
            c.close()
    out.elapsed = time.monotonic() - t0
    out.enqueued = len(returned)
    out.delivered = sum(1 for s in returned if seen[s])
    out.lost = len(returned - set(seen))
    out.duplicated = sum(n - 1 for n in seen.values() if n > 1)
    hidden_after = (drained_at[0] if drained_at else produced) + stranded_after
    out.stranded = sum(1 for s in returned
                       if s not in first_seen or first_seen[s] > hidden_after)
    out.allowed_duplicates = (counters["ack_failed"] + counters["enqueue_retried"]
                              + consumers * 50)
    out.note = ", ".join(f"{k}={v}" for k, v in sorted(counters.items()) if v)
    out.returned = f"{len(returned)}/{n_jobs} enqueues returned"
    out.ok = out.lost == 0 and out.duplicated <= out.allowed_duplicates
    return out


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


#: A fault that does nothing (a baseline for :func:`verb_under_fault`).
no_fault: Fault = _nothing
