"""The conformance suite: one class every driver's tests subclass.

Usage, in a driver's test file::

    from unifiedq.testing.suite import QueueConformance

    class TestMemory(QueueConformance):
        URL = "memory://{name}"

Each test gets a fresh queue name and runs on both faces (``face`` is ``"sync"`` or
``"async"``; the async face is driven through the library's own blocking bridge so that the
same test body exercises every asyncio verb). Tests are grouped by capability: a test marked
``requires(Capability.X)`` runs when the driver has X, one marked ``lacks(Capability.X)`` when
it does not, so every flag is checked in both directions.

Class attributes a subclass may set:

* ``URL`` — template with ``{name}``; or override the ``url_template`` fixture.
* ``OPTIONS`` — keyword options for every ``connect`` call.
* ``LEASE_OPTIONS`` / ``LEASE_SECONDS`` — options that shorten the lease to about
  ``LEASE_SECONDS``, for redelivery tests.
* ``BOUNDED_OPTIONS`` / ``BOUNDED_SIZE`` — options that bound the queue.
* ``DELAY_SLACK`` — how late a delayed job may become visible.
* ``STALE_ACK_DETECTED`` — False when the backend cannot tell a stale delivery from the
  current one (asynq keys leases by task id only).
* ``SIZE_COUNTS_DELAYED`` — False when ``size()`` cannot see delayed jobs (Faktory keeps them
  in one server-wide set); the driver must document it.
* ``CONCURRENT_JOBS`` — jobs in the multi-thread ledger test.
* ``JOB_QUEUE_IS_HANDLE_NAME`` — False for a wrapper over several queues whose jobs name the
  sub-queue they came from (``FairQueue``: ``<name>.<tenant>``), not the handle.

Override the ``restart_backend`` fixture to return a callable that restarts the backend (kept
data on disk), for the ``DURABLE`` checks, and the ``open_queue`` method to test something that
is not opened with ``connect`` (a wrapper such as :class:`~unifiedq.FairQueue`: see
``tests/test_toolkit_conformance.py``; :class:`BlockingView` gives an asyncio handle the
blocking verbs the tests call).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from .._bridge import AsyncToSync, _LoopThread, _run_on
from .._capabilities import Capability
from .._connect import connect, connect_async
from .._errors import (
    BodyTooLarge,
    DuplicateJob,
    InvalidArgument,
    InvalidBody,
    InvalidURL,
    JobFailed,
    JobNotLeased,
    QueueClosed,
    QueueFull,
    ResultTimeout,
    UnsupportedOperation,
    WrongQueue,
)
from .._job import Job
from .._protocol import AsyncQueue, Queue

__all__ = ["Harness", "QueueConformance", "lacks", "requires"]


def requires(cap: Capability) -> pytest.MarkDecorator:
    """Mark a test to run only when the driver has ``cap``."""
    return pytest.mark.requires(cap)


def lacks(cap: Capability) -> pytest.MarkDecorator:
    """Mark a test to run only when the driver lacks ``cap``."""
    return pytest.mark.lacks(cap)


#: ``opener(url, face, options)``: a blocking handle on ``url`` for the face under test.
Opener = Callable[[str, str, dict[str, Any]], Queue]


class Harness:
    """Opens handles on one fresh queue, on the face under test, and cleans up after.

    Attributes:
        url: The URL of this test's queue.
        face: ``"sync"`` or ``"async"``.
    """

    def __init__(self, url: str, face: str, options: dict[str, Any],
                 opener: Opener | None = None) -> None:
        self.url = url
        self.face = face
        self.options = options
        self._opener = opener or open_with_connect
        self._opened: list[Queue] = []
        self._caps: Capability | None = None

    def open(self, url: str | None = None, **options: Any) -> Queue:
        """Open a handle (on the face under test) on this test's queue, or on ``url``."""
        q = self._opener(url or self.url, self.face, {**self.options, **options})
        self._opened.append(q)
        return q

    @property
    def capabilities(self) -> Capability:
        """The driver's capabilities."""
        if self._caps is None:
            self._caps = self.open().capabilities
        return self._caps

    def has(self, cap: Capability) -> bool:
        """Whether the driver has ``cap``."""
        return cap in self.capabilities

    def cleanup(self) -> None:
        """Purge and close every handle this harness opened."""
        for q in reversed(self._opened):
            if not q.closed:
                with contextlib.suppress(Exception):
                    q.purge()
                with contextlib.suppress(Exception):
                    q.close()


def open_with_connect(url: str, face: str, options: dict[str, Any]) -> Queue:
    """The default opener: ``connect`` (sync face), or ``connect_async`` behind the bridge."""
    if face == "sync":
        return connect(url, **options)
    return AsyncToSync(connect_async(url, **options))


class BlockingView:
    """The blocking verbs of any asyncio queue (its public API), run on the bridge's loop thread.

    For suites over a wrapper that is not a driver (``AsyncFairQueue``, ``AsyncBoundedQueue``):
    the tests call blocking verbs, and this drives the asyncio object's own coroutines.
    """

    def __init__(self, inner: AsyncQueue) -> None:
        self.inner = inner
        self._loop = _LoopThread.get()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            return _run_on(self._loop, result) if asyncio.iscoroutine(result) else result
        return call

    def close(self) -> None:
        """Close the inner queue."""
        _run_on(self._loop, self.inner.aclose())

    def __enter__(self) -> BlockingView:
        _run_on(self._loop, self.inner.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _settle(q: Queue, job: Job) -> None:
    if Capability.ACK in q.capabilities:
        q.ack(job)


def _child_enqueue(url: str, options: dict[str, Any], body: bytes) -> None:
    with connect(url, **options) as q:
        q.enqueue(body)


class QueueConformance:
    """Conformance tests; subclass and set ``URL`` (see the module docstring)."""

    URL: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Any]] = {}
    LEASE_OPTIONS: ClassVar[dict[str, Any]] = {}
    LEASE_SECONDS: ClassVar[float] = 1.0
    BOUNDED_OPTIONS: ClassVar[dict[str, Any]] = {"maxsize": 3}
    BOUNDED_SIZE: ClassVar[int] = 3
    DELAY_SLACK: ClassVar[float] = 1.0
    STALE_ACK_DETECTED: ClassVar[bool] = True
    SIZE_COUNTS_DELAYED: ClassVar[bool] = True
    CONCURRENT_JOBS: ClassVar[int] = 2000
    JOB_QUEUE_IS_HANDLE_NAME: ClassVar[bool] = True

    # -- fixtures ---------------------------------------------------------------------------
    @pytest.fixture(params=["sync", "async"])
    def face(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def url_template(self) -> str:
        if not self.URL:
            raise RuntimeError(f"{type(self).__name__} must set URL or override url_template")
        return self.URL

    @pytest.fixture
    def restart_backend(self) -> Callable[[], None] | None:
        return None

    @pytest.fixture
    def harness(self, url_template: str, face: str) -> Iterator[Harness]:
        name = f"uq-{uuid.uuid4().hex[:12]}"
        h = Harness(url_template.format(name=name), face, dict(self.OPTIONS), self.open_queue)
        try:
            yield h
        finally:
            h.cleanup()
            self.remove_queue(h.url)

    def open_queue(self, url: str, face: str, options: dict[str, Any]) -> Queue:
        """Hook: a blocking handle on ``url`` for ``face`` (``"sync"`` or ``"async"``).

        The default connects (the async face through the library's bridge). Override it to
        run the suite over something that wraps queues; wrap an asyncio object in
        :class:`BlockingView`.
        """
        return open_with_connect(url, face, options)

    def remove_queue(self, url: str) -> None:
        """Hook: delete what a test's queue (``url``) left behind once its handles are closed.

        The default does nothing. Override it for a backend whose queues outlive their handles
        and the test run (``shm://`` segments); tests also use ``<name>-other``.
        """

    @pytest.fixture(autouse=True)
    def _gate(self, request: pytest.FixtureRequest, harness: Harness) -> None:
        for mark in request.node.iter_markers("requires"):
            cap = mark.args[0]
            if not harness.has(cap):
                pytest.skip(f"driver lacks {cap.name}; the lacks({cap.name}) test covers it")
        for mark in request.node.iter_markers("lacks"):
            cap = mark.args[0]
            if harness.has(cap):
                pytest.skip(f"driver has {cap.name}; the requires({cap.name}) tests cover it")

    # -- basics -----------------------------------------------------------------------------
    def test_capabilities_are_flags(self, harness: Harness) -> None:
        q = harness.open()
        assert isinstance(q.capabilities, Capability)
        assert q.capabilities & (Capability.NATIVE_SYNC | Capability.NATIVE_ASYNC)
        assert q.driver and q.driver != "?"

    def test_roundtrip(self, harness: Harness) -> None:
        q = harness.open()
        before = time.time()
        jid = q.enqueue(b"hello")
        after = time.time()
        assert isinstance(jid, str) and jid
        job = q.dequeue(timeout=5)
        assert job is not None
        assert (job.id, job.body, job.attempt) == (jid, b"hello", 1)
        if self.JOB_QUEUE_IS_HANDLE_NAME:
            assert job.queue == q.name
        else:  # a wrapper's job names the sub-queue it came from, within the wrapper's name
            assert job.queue.startswith(q.name) and job.queue != q.name
        assert before - 5 <= job.enqueued_at <= after + 5
        _settle(q, job)
        assert q.dequeue() is None

    def test_empty_dequeue_returns_none(self, harness: Harness) -> None:
        q = harness.open()
        assert q.dequeue() is None
        assert q.dequeue(timeout=0) is None
        assert q.size() == 0

    def test_fifo_single_producer(self, harness: Harness) -> None:
        q = harness.open()
        bodies = [f"m{i}".encode() for i in range(50)]
        for b in bodies:
            q.enqueue(b)
        got = []
        while (job := q.dequeue(timeout=2)) is not None:
            got.append(job.body)
            _settle(q, job)
            if len(got) == len(bodies):
                break
        assert got == bodies

    def test_binary_bodies_roundtrip(self, harness: Harness) -> None:
        q = harness.open()
        bodies = [b"", bytes(range(256)), b"\x00" * 10, "ünïcødé".encode(), b"\r\n{}\"'"]
        for b in bodies:
            q.enqueue(b)
        got = []
        for _ in bodies:
            job = q.dequeue(timeout=5)
            assert job is not None
            got.append(job.body)
            _settle(q, job)
        assert got == bodies

    def test_size_and_purge(self, harness: Harness) -> None:
        q = harness.open()
        for i in range(5):
            q.enqueue(b"%d" % i)
        assert q.size() == 5
        assert q.purge() == 5
        assert q.size() == 0
        assert q.dequeue() is None
        assert q.purge() == 0

    @pytest.mark.parametrize("bad", ["text", 1, None, 1.5, {"a": 1}, [b"x"], object()])
    def test_bad_body_is_rejected_and_queue_untouched(self, harness: Harness, bad: Any) -> None:
        q = harness.open()
        q.enqueue(b"keep")
        with pytest.raises(InvalidBody) as info:
            q.enqueue(bad)
        assert isinstance(info.value, TypeError)
        assert "bytes" in str(info.value)
        assert q.size() == 1
        job = q.dequeue(timeout=5)
        assert job is not None and job.body == b"keep"

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"delay": -1}, {"delay": "soon"}, {"delay": math.nan}, {"delay": math.inf},
            {"priority": 10}, {"priority": -1}, {"priority": "high"}, {"priority": True},
            {"priority": 1.5}, {"job_id": ""}, {"job_id": 5}, {"job_id": "has space"},
            {"headers": {"a": 1}}, {"headers": "a=b"},
        ],
        ids=repr,
    )
    def test_bad_enqueue_arguments(self, harness: Harness, kwargs: dict[str, Any]) -> None:
        q = harness.open()
        q.enqueue(b"keep")
        with pytest.raises(InvalidArgument):
            q.enqueue(b"x", **kwargs)
        assert q.size() == 1

    @pytest.mark.parametrize("timeout", [-1, "1", math.nan])
    def test_bad_dequeue_timeout(self, harness: Harness, timeout: Any) -> None:
        q = harness.open()
        q.enqueue(b"keep")
        with pytest.raises(InvalidArgument):
            q.dequeue(timeout=timeout)
        assert q.size() == 1

    def test_large_body(self, harness: Harness) -> None:
        q = harness.open()
        limit: int | None = getattr(q, "max_body", None)
        if limit is not None:
            with pytest.raises(BodyTooLarge):
                q.enqueue(b"x" * (limit + 1))
            assert q.size() == 0
        size = min(limit if limit is not None else 1 << 20, 1 << 20)
        body = bytes(i % 251 for i in range(size))
        q.enqueue(body)
        job = q.dequeue(timeout=5)
        assert job is not None and job.body == body
        _settle(q, job)

    def test_closed_queue_raises(self, harness: Harness) -> None:
        q = harness.open()
        q.close()
        q.close()  # idempotent
        assert q.closed
        calls: list[Callable[[], object]] = [
            lambda: q.enqueue(b"x"), lambda: q.dequeue(), lambda: q.size(),
            lambda: q.purge(), lambda: q.peek(), lambda: q.enqueue_many([b"x"]),
            lambda: q.dequeue_many(2),
        ]
        for call in calls:
            with pytest.raises(QueueClosed):
                call()

    def test_context_manager_closes(self, harness: Harness) -> None:
        with harness.open() as q:
            q.enqueue(b"x")
        assert q.closed
        with harness.open() as q2:
            assert q2.size() == 1

    def test_unknown_option_is_invalid_url(self, harness: Harness) -> None:
        with pytest.raises(InvalidURL, match="no_such_option"):
            harness.open(no_such_option=1)
        sep = "&" if "?" in harness.url else "?"
        with pytest.raises(InvalidURL, match="no_such_option"):
            harness.open(harness.url + sep + "no_such_option=1")

    def test_wrong_scheme_and_malformed_urls(self, harness: Harness) -> None:
        from .._errors import DriverNotFound

        with pytest.raises(DriverNotFound):
            connect("nosuchscheme://x")
        with pytest.raises(InvalidURL):
            connect("no scheme at all")
        with pytest.raises(InvalidURL):
            connect(42)  # type: ignore[arg-type]

    def test_concurrent_ledger(self, harness: Harness) -> None:
        """Producers and consumers in threads: each job consumed once, FIFO per producer."""
        producers, consumers, n = 4, 4, self.CONCURRENT_JOBS // 4
        seen: list[list[tuple[int, int]]] = [[] for _ in range(consumers)]
        done = threading.Event()
        errors: list[BaseException] = []

        def produce(p: int) -> None:
            try:
                q = harness.open()
                for i in range(n):
                    q.enqueue(f"{p}:{i}".encode())
            except BaseException as exc:
                errors.append(exc)

        def consume(c: int) -> None:
            try:
                q = harness.open()
                while True:
                    job = q.dequeue(timeout=0.2)
                    if job is None:
                        if done.is_set() and q.size() == 0:
                            return
                        continue
                    p, i = job.body.decode().split(":")
                    seen[c].append((int(p), int(i)))
                    _settle(q, job)
            except BaseException as exc:
                errors.append(exc)

        cs = [threading.Thread(target=consume, args=(c,)) for c in range(consumers)]
        ps = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        for t in cs + ps:
            t.start()
        for t in ps:
            t.join(120)
        done.set()
        for t in cs:
            t.join(120)
        assert not errors, errors
        allseen = [x for s in seen for x in s]
        assert sorted(allseen) == [(p, i) for p in range(producers) for i in range(n)]
        for s in seen:  # within one consumer, each producer's jobs arrive in order
            for p in range(producers):
                mine = [i for (pp, i) in s if pp == p]
                assert mine == sorted(mine)

    # -- PEEK -------------------------------------------------------------------------------
    @requires(Capability.PEEK)
    def test_peek(self, harness: Harness) -> None:
        q = harness.open()
        assert q.peek() is None
        a = q.enqueue(b"a")
        q.enqueue(b"b")
        peeked = q.peek()
        assert peeked is not None and (peeked.id, peeked.body) == (a, b"a")
        assert q.size() == 2
        job = q.dequeue(timeout=5)
        assert job is not None and job.id == a
        if harness.has(Capability.ACK):
            with pytest.raises(InvalidArgument):
                q.ack(peeked)
            q.ack(job)

    @lacks(Capability.PEEK)
    def test_peek_unsupported(self, harness: Harness) -> None:
        q = harness.open()
        q.enqueue(b"a")
        with pytest.raises(UnsupportedOperation) as info:
            q.peek()
        assert info.value.capability == "PEEK"
        assert q.driver in str(info.value)
        assert q.size() == 1

    # -- ACK --------------------------------------------------------------------------------
    @requires(Capability.ACK)
    def test_ack_settles(self, harness: Harness) -> None:
        q = harness.open()
        q.enqueue(b"a")
        job = q.dequeue(timeout=5)
        assert job is not None
        assert q.size() == 0  # leased jobs are not waiting
        q.ack(job)
        assert q.dequeue() is None
        with pytest.raises(JobNotLeased):
            q.ack(job)
        with pytest.raises(JobNotLeased):
            q.nack(job)

    @requires(Capability.ACK)
    def test_ack_many_settles_each_and_names_lost_leases(self, harness: Harness) -> None:
        q = harness.open()
        for i in range(5):
            q.enqueue(b"%d" % i)
        jobs = [q.dequeue(timeout=5) for _ in range(5)]
        held = [j for j in jobs if j is not None]
        assert len(held) == 5
        q.ack_many([])  # nothing to do
        q.ack_many(held[:3])
        q.ack(held[3])
        with pytest.raises(JobNotLeased) as info:
            q.ack_many([held[0], held[4]])
        assert info.value.job_ids == (held[0].id,)
        with pytest.raises(JobNotLeased):  # acked by the call that raised
            q.ack(held[4])
        assert q.dequeue(timeout=0.5) is None
        assert q.size() == 0

    @requires(Capability.ACK)
    def test_ack_many_bad_input_acks_nothing(self, harness: Harness) -> None:
        q = harness.open()
        other = harness.open(harness.url.replace(q.name, q.name + "-other"))
        q.enqueue(b"a")
        q.enqueue(b"b")
        a, b = q.dequeue(timeout=5), q.dequeue(timeout=5)
        assert a is not None and b is not None
        with pytest.raises(InvalidArgument):
            q.ack_many([a, a])
        with pytest.raises(InvalidArgument):
            q.ack_many([a, "not a job"])  # type: ignore[list-item]
        with pytest.raises(InvalidArgument):
            q.ack_many(a)  # type: ignore[arg-type]
        with pytest.raises(WrongQueue):
            other.ack_many([a])
        q.ack(a)  # both still leased: the refused calls touched nothing
        q.ack(b)

    @requires(Capability.ACK)
    def test_nack_requeues(self, harness: Harness) -> None:
        q = harness.open()
        jid = q.enqueue(b"a")
        job = q.dequeue(timeout=5)
        assert job is not None
        q.nack(job)
        again = q.dequeue(timeout=5)
        assert again is not None and again.id == jid and again.body == b"a"
        assert again.attempt == 2
        q.ack(again)

    # -- RELEASE ----------------------------------------------------------------------------
    @requires(Capability.RELEASE)
    def test_release_returns_job_without_counting_an_attempt(self, harness: Harness) -> None:
        q = harness.open()
        jid = q.enqueue(b"a")
        job = q.dequeue(timeout=5)
        assert job is not None
        q.release(job)
        again = q.dequeue(timeout=5)
        assert again is not None and (again.id, again.body) == (jid, b"a")
        assert again.attempt == job.attempt == 1  # released, not failed
        q.nack(again)  # a nack still counts
        third = q.dequeue(timeout=5)
        assert third is not None and third.id == jid and third.attempt == 2
        q.ack(third)
        with pytest.raises(JobNotLeased):
            q.release(third)
        assert q.dequeue(timeout=0.3) is None

    @lacks(Capability.RELEASE)
    def test_release_unsupported(self, harness: Harness) -> None:
        q = harness.open()
        q.enqueue(b"a")
        job = q.dequeue(timeout=5)
        assert job is not None
        with pytest.raises(UnsupportedOperation) as info:
            q.release(job)
        assert info.value.capability == ("RELEASE" if harness.has(Capability.ACK) else "ACK")
        if harness.has(Capability.ACK):
            q.ack(job)  # still leased: the refused call touched nothing

    # -- PAUSE ------------------------------------------------------------------------------
    @requires(Capability.PAUSE)
    def test_pause_stops_consumers_not_producers(self, harness: Harness) -> None:
        q = harness.open()
        other = harness.open()  # another handle of the same queue sees the pause
        q.enqueue(b"before")
        assert q.is_paused() is False
        q.pause()
        q.pause()  # idempotent
        assert q.is_paused() is True and other.is_paused() is True
        q.enqueue(b"during")  # producers are not affected
        start = time.monotonic()
        assert other.dequeue(timeout=0.6) is None  # waits its timeout, hands out nothing
        assert time.monotonic() - start >= 0.5
        assert q.dequeue() is None
        assert q.size() == 2
        other.resume()
        other.resume()  # idempotent
        assert q.is_paused() is False
        got = [q.dequeue(timeout=5), q.dequeue(timeout=5)]
        assert sorted(j.body for j in got if j is not None) == [b"before", b"during"]
        if harness.has(Capability.ACK):
            for j in got:
                assert j is not None
                q.ack(j)

    @requires(Capability.PAUSE)
    @requires(Capability.BLOCKING_DEQUEUE)
    def test_resume_wakes_a_waiting_consumer(self, harness: Harness) -> None:
        q = harness.open()
        q.pause()
        q.enqueue(b"a")
        out: list[Any] = []
        t = threading.Thread(target=lambda: out.append(q.dequeue(timeout=10)))
        start = time.monotonic()
        t.start()
        time.sleep(0.5)
        assert not out  # still waiting: paused
        harness.open().resume()
        t.join(12)
        assert out and out[0] is not None and out[0].body == b"a"
        # Woken by the resume, not by the end of its timeout (drivers that poll: within
        # their poll interval).
        assert time.monotonic() - start < 5
        if harness.has(Capability.ACK):
            q.ack(out[0])

    @requires(Capability.PAUSE)
    @requires(Capability.ACK)
    def test_paused_queue_still_settles_leased_jobs(self, harness: Harness) -> None:
        q = harness.open()
        q.enqueue(b"a")
        q.enqueue(b"b")
        a = q.dequeue(timeout=5)
        b = q.dequeue(timeout=5)
        assert a is not None and b is not None
        q.pause()
        q.ack(a)
        q.nack(b)  # back in the queue, but not handed out while paused
        assert q.dequeue(timeout=0.3) is None
        q.resume()
        again = q.dequeue(timeout=5)
        assert again is not None and again.body == b"b"
        q.ack(again)

    @lacks(Capability.PAUSE)
    def test_pause_unsupported(self, harness: Harness) -> None:
        q = harness.open()
        q.enqueue(b"a")
        for call in (q.pause, q.resume, q.is_paused):
            with pytest.raises(UnsupportedOperation) as info:
                call()
            assert info.value.capability == "PAUSE"
        job = q.dequeue(timeout=5)  # nothing was paused
        assert job is not None and job.body == b"a"
        if harness.has(Capability.ACK):
            q.ack(job)

    # -- RESULT -----------------------------------------------------------------------------
    @requires(Capability.RESULT)
    def test_result_round_trip(self, harness: Harness) -> None:
        q = harness.open()
        other = harness.open()  # another handle of the queue reads it
        jid = q.enqueue(b"question")
        with pytest.raises(ResultTimeout) as info:
            other.result(jid)  # timeout=0: only looks
        assert info.value.job_id == jid
        job = q.dequeue(timeout=5)
        assert job is not None and job.id == jid
        q.complete(job, b"answer\x00\xff")
        assert other.result(jid, timeout=5) == b"answer\x00\xff"
        assert q.result(jid) == b"answer\x00\xff"  # read again: kept for its retention
        assert q.size() == 0 and q.dequeue(timeout=0.3) is None  # complete() acked it
        with pytest.raises(JobNotLeased):
            q.ack(job)

    @requires(Capability.RESULT)
    def test_result_waits_for_the_result(self, harness: Harness) -> None:
        q = harness.open()
        jid = q.enqueue(b"x")
        out: list[Any] = []
        t = threading.Thread(target=lambda: out.append(harness.open().result(jid, timeout=20)))
        t.start()
        time.sleep(0.3)
        assert not out  # still waiting
        job = q.dequeue(timeout=5)
        assert job is not None
        done = time.monotonic()
        q.complete(job, b"late")
        t.join(25)
        assert out == [b"late"]
        assert time.monotonic() - done < 5  # woken (polling drivers: within poll_interval)

    @requires(Capability.RESULT)
    def test_fail_makes_result_raise_job_failed(self, harness: Harness) -> None:
        q = harness.open()
        jid = q.enqueue(b"x")
        job = q.dequeue(timeout=5)
        assert job is not None
        q.fail(job, "ValueError: no such user")
        with pytest.raises(JobFailed) as info:
            q.result(jid, timeout=5)
        assert (info.value.job_id, info.value.error) == (jid, "ValueError: no such user")
        assert q.dequeue(timeout=0.3) is None  # dead-lettered, not requeued

    @requires(Capability.RESULT)
    def test_result_bad_arguments(self, harness: Harness) -> None:
        q = harness.open()
        q.enqueue(b"x")
        job = q.dequeue(timeout=5)
        assert job is not None
        for bad_id in ("", "a b", 5):
            with pytest.raises(InvalidArgument):
                q.result(bad_id)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            q.result(job.id, timeout=-1)
        with pytest.raises(InvalidBody):
            q.complete(job, "not bytes")  # type: ignore[arg-type]
        for retention in (0, -1, math.inf, True):
            with pytest.raises(InvalidArgument):
                q.complete(job, b"r", retention=retention)
        with pytest.raises(InvalidArgument):
            q.fail(job, b"not str")  # type: ignore[arg-type]
        q.complete(job, b"ok")  # the refused calls touched nothing
        assert q.result(job.id, timeout=5) == b"ok"

    @lacks(Capability.RESULT)
    def test_result_unsupported(self, harness: Harness) -> None:
        q = harness.open()
        jid = q.enqueue(b"a")
        with pytest.raises(UnsupportedOperation) as info:
            q.result(jid)
        assert info.value.capability == "RESULT"
        job = q.dequeue(timeout=5)
        assert job is not None
        with pytest.raises(UnsupportedOperation) as info:
            q.complete(job, b"r")
        assert info.value.capability == "RESULT"
        with pytest.raises(UnsupportedOperation) as info:
            q.fail(job, "e")
        assert info.value.capability == "RESULT"
        if harness.has(Capability.ACK):
            q.ack(job)  # still leased: the refused calls touched nothing

    # -- DEADLINE ---------------------------------------------------------------------------
    @requires(Capability.DEADLINE)
    def test_deadline_and_timeout_round_trip(self, harness: Harness) -> None:
        q = harness.open()
        dl = time.time() + 120.4
        q.enqueue(b"a", deadline=dl, timeout=2.5)
        q.enqueue(b"b", ttl=60)
        q.enqueue(b"c")
        got = {j.body: j for j in (q.dequeue(timeout=5) for _ in range(3)) if j is not None}
        assert sorted(got) == [b"a", b"b", b"c"]
        a, b = got[b"a"], got[b"b"]
        # Drivers may store whole seconds (asynq), rounded up: never earlier or shorter.
        assert a.deadline is not None and dl <= a.deadline < dl + 1.0
        assert a.timeout is not None and 2.5 <= a.timeout < 3.5
        assert b.deadline is not None and time.time() + 50 < b.deadline < time.time() + 62
        assert got[b"c"].deadline is None
        if harness.has(Capability.ACK):
            q.ack_many(got.values())

    @requires(Capability.DEADLINE)
    def test_expired_jobs_are_never_handed_out(self, harness: Harness) -> None:
        q = harness.open()
        past = time.time() - 10
        q.enqueue(b"stale", deadline=past)
        q.enqueue(b"live", ttl=60)
        q.enqueue(b"stale", deadline=past)
        job = q.dequeue(timeout=5)
        assert job is not None and job.body == b"live"
        assert q.dequeue(timeout=0.3) is None
        if harness.has(Capability.BATCH):
            q.enqueue_many([b"stale"] * 3, deadline=past)
            assert q.dequeue_many(10, timeout=0.3) == []
        # The handle counts the jobs it shed; a broker that expires messages itself (amqp's
        # per-message TTL) may have taken some first.
        handle: Any = q  # expired_count is on the handles, not in the Queue protocol
        shed: int = handle.expired_count
        assert 0 <= shed <= (5 if harness.has(Capability.BATCH) else 2)
        assert q.size() == 0
        if harness.has(Capability.ACK):
            q.ack(job)
            assert q.dequeue(timeout=0.3) is None  # settled for good, not redelivered

    @lacks(Capability.DEADLINE)
    def test_deadline_unsupported(self, harness: Harness) -> None:
        q = harness.open()
        for kw in ({"deadline": time.time() + 60}, {"ttl": 60}, {"timeout": 5}):
            with pytest.raises(UnsupportedOperation) as info:
                q.enqueue(b"a", **kw)
            assert info.value.capability == "DEADLINE"
            if harness.has(Capability.BATCH):
                with pytest.raises(UnsupportedOperation):
                    q.enqueue_many([b"a"], **kw)
        assert q.size() == 0

    @requires(Capability.ACK)
    def test_nack_without_requeue_does_not_redeliver(self, harness: Harness) -> None:
        q = harness.open()
        q.enqueue(b"a")
        job = q.dequeue(timeout=5)
        assert job is not None
        q.nack(job, requeue=False)
        assert q.dequeue(timeout=0.5) is None
        assert q.size() == 0

    @requires(Capability.ACK)
    def test_settle_on_wrong_queue(self, harness: Harness) -> None:
        q = harness.open()
        other_url = harness.url.replace(q.name, q.name + "-other")
        other = harness.open(other_url)
        q.enqueue(b"a")
        job = q.dequeue(timeout=5)
        assert job is not None
        with pytest.raises(WrongQueue):
            other.ack(job)
        with pytest.raises(WrongQueue):
            other.nack(job)
        with pytest.raises(InvalidArgument):
            q.ack("not a job")  # type: ignore[arg-type]
        q.ack(job)  # still leased here, untouched by the failed calls

    @requires(Capability.ACK)
    def test_lease_expiry_redelivers(self, harness: Harness) -> None:
        q = harness.open(**self.LEASE_OPTIONS)
        jid = q.enqueue(b"a")
        job = q.dequeue(timeout=5)
        assert job is not None
        time.sleep(self.LEASE_SECONDS)
        again = q.dequeue(timeout=self.LEASE_SECONDS * 3 + self.DELAY_SLACK)
        assert again is not None and again.id == jid and again.attempt >= 2
        if self.STALE_ACK_DETECTED:
            with pytest.raises(JobNotLeased):
                q.ack(job)
        q.ack(again)

    @lacks(Capability.ACK)
    def test_ack_unsupported_and_dequeue_removes(self, harness: Harness) -> None:
        q = harness.open()
        q.enqueue(b"a")
        job = q.dequeue(timeout=5)
        assert job is not None
        calls: list[Callable[[], None]] = [lambda: q.ack(job), lambda: q.nack(job),
                                           lambda: q.ack_many([job])]
        for call in calls:
            with pytest.raises(UnsupportedOperation) as info:
                call()
            assert info.value.capability == "ACK"
        assert q.size() == 0
        assert q.dequeue(timeout=0.5) is None

    # -- LEASE_EXTEND -----------------------------------------------------------------------
    @requires(Capability.LEASE_EXTEND)
    def test_extend_lease_keeps_job(self, harness: Harness) -> None:
        q = harness.open(**self.LEASE_OPTIONS)
        other = harness.open(**self.LEASE_OPTIONS)
        q.enqueue(b"a")
        job = q.dequeue(timeout=5)
        assert job is not None
        lease = self.LEASE_SECONDS
        time.sleep(lease * 0.5)
        q.extend_lease(job, lease * 4)
        time.sleep(lease * 1.5)
        assert other.dequeue(timeout=lease * 0.5) is None
        q.ack(job)
        with pytest.raises(InvalidArgument):
            q.extend_lease(job, 0)

    @lacks(Capability.LEASE_EXTEND)
    def test_extend_lease_unsupported(self, harness: Harness) -> None:
        q = harness.open()
        q.enqueue(b"a")
        job = q.dequeue(timeout=5)
        assert job is not None
        with pytest.raises(UnsupportedOperation):
            q.extend_lease(job, 10)

    # -- DELAY ------------------------------------------------------------------------------
    @requires(Capability.DELAY)
    def test_delay(self, harness: Harness) -> None:
        q = harness.open()
        q.enqueue(b"later", delay=1.0)
        q.enqueue(b"now")
        first = q.dequeue(timeout=5)
        assert first is not None and first.body == b"now"
        _settle(q, first)
        assert q.dequeue(timeout=0.3) is None
        assert q.size() == (1 if self.SIZE_COUNTS_DELAYED else 0)
        start = time.monotonic()
        job = q.dequeue(timeout=3 + self.DELAY_SLACK)
        assert job is not None and job.body == b"later"
        assert time.monotonic() - start < 2 + self.DELAY_SLACK
        _settle(q, job)

    @requires(Capability.DELAY)
    def test_nack_with_delay(self, harness: Harness) -> None:
        if not harness.has(Capability.ACK):
            pytest.skip("nack needs ACK; test_ack_unsupported_and_dequeue_removes covers it")
        q = harness.open()
        q.enqueue(b"a")
        job = q.dequeue(timeout=5)
        assert job is not None
        q.nack(job, delay=1.0)
        assert q.dequeue(timeout=0.3) is None
        again = q.dequeue(timeout=3 + self.DELAY_SLACK)
        assert again is not None and again.id == job.id
        q.ack(again)

    @lacks(Capability.DELAY)
    def test_delay_unsupported(self, harness: Harness) -> None:
        q = harness.open()
        with pytest.raises(UnsupportedOperation) as info:
            q.enqueue(b"x", delay=1)
        assert info.value.capability == "DELAY"
        assert q.size() == 0

    # -- PRIORITY ---------------------------------------------------------------------------
    @requires(Capability.PRIORITY)
    def test_priority_order(self, harness: Harness) -> None:
        q = harness.open()
        q.enqueue(b"low", priority=1)
        q.enqueue(b"high", priority=8)
        q.enqueue(b"mid", priority=5)
        got = []
        for _ in range(3):
            job = q.dequeue(timeout=5)
            assert job is not None
            got.append(job.body)
            _settle(q, job)
        assert got == [b"high", b"mid", b"low"]

    @lacks(Capability.PRIORITY)
    def test_priority_unsupported(self, harness: Harness) -> None:
        q = harness.open()
        with pytest.raises(UnsupportedOperation):
            q.enqueue(b"x", priority=5)
        assert q.size() == 0

    # -- BATCH ------------------------------------------------------------------------------
    @requires(Capability.BATCH)
    def test_batch(self, harness: Harness) -> None:
        q = harness.open()
        bodies = [b"%d" % i for i in range(10)]
        ids = q.enqueue_many(bodies)
        assert len(ids) == 10 and len(set(ids)) == 10
        assert q.enqueue_many([]) == []
        first = q.dequeue_many(4, timeout=5)
        assert [j.body for j in first] == bodies[:4]
        assert [j.id for j in first] == ids[:4]
        rest: list[Job] = []
        deadline = time.monotonic() + 10
        while len(rest) < 6 and time.monotonic() < deadline:
            rest += q.dequeue_many(100, timeout=1)
        assert [j.body for j in rest] == bodies[4:]
        for j in first + rest:
            _settle(q, j)

    @requires(Capability.BATCH)
    def test_batch_validates_every_body_first(self, harness: Harness) -> None:
        q = harness.open()
        with pytest.raises(InvalidBody):
            q.enqueue_many([b"a", "b"])  # type: ignore[list-item]
        with pytest.raises(InvalidArgument):
            q.enqueue_many(b"abc")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            q.dequeue_many(0)
        assert q.size() == 0

    @lacks(Capability.BATCH)
    def test_batch_unsupported(self, harness: Harness) -> None:
        q = harness.open()
        with pytest.raises(UnsupportedOperation):
            q.enqueue_many([b"a"])
        with pytest.raises(UnsupportedOperation):
            q.dequeue_many(2)
        assert q.size() == 0

    # -- BLOCKING_DEQUEUE -------------------------------------------------------------------
    @requires(Capability.BLOCKING_DEQUEUE)
    def test_blocking_dequeue(self, harness: Harness) -> None:
        q = harness.open()
        producer = harness.open()
        start = time.monotonic()
        assert q.dequeue(timeout=0.3) is None
        assert time.monotonic() - start >= 0.25
        timer = threading.Timer(0.3, lambda: producer.enqueue(b"wake"))
        timer.start()
        try:
            start = time.monotonic()
            job = q.dequeue(timeout=10)
            assert job is not None and job.body == b"wake"
            assert time.monotonic() - start < 5
            _settle(q, job)
        finally:
            timer.cancel()

    @lacks(Capability.BLOCKING_DEQUEUE)
    def test_blocking_dequeue_unsupported(self, harness: Harness) -> None:
        q = harness.open()
        with pytest.raises(UnsupportedOperation):
            q.dequeue(timeout=0.1)

    # -- CUSTOM_ID --------------------------------------------------------------------------
    @requires(Capability.CUSTOM_ID)
    def test_custom_id(self, harness: Harness) -> None:
        q = harness.open()
        assert q.enqueue(b"a", job_id="order-42") == "order-42"
        with pytest.raises(DuplicateJob):
            q.enqueue(b"b", job_id="order-42")
        assert q.size() == 1
        job = q.dequeue(timeout=5)
        assert job is not None and (job.id, job.body) == ("order-42", b"a")
        _settle(q, job)

    @lacks(Capability.CUSTOM_ID)
    def test_custom_id_unsupported(self, harness: Harness) -> None:
        q = harness.open()
        with pytest.raises(UnsupportedOperation):
            q.enqueue(b"a", job_id="x1")
        assert q.size() == 0

    # -- HEADERS ----------------------------------------------------------------------------
    @requires(Capability.HEADERS)
    def test_headers_roundtrip(self, harness: Harness) -> None:
        q = harness.open()
        q.enqueue(b"a", headers={"type": "email:send", "tenant": "ünï"})
        job = q.dequeue(timeout=5)
        assert job is not None
        assert job.headers["type"] == "email:send" and job.headers["tenant"] == "ünï"
        _settle(q, job)

    @lacks(Capability.HEADERS)
    def test_headers_unsupported(self, harness: Harness) -> None:
        q = harness.open()
        with pytest.raises(UnsupportedOperation):
            q.enqueue(b"a", headers={"k": "v"})
        assert q.size() == 0

    # -- DURABLE ----------------------------------------------------------------------------
    def test_durability_matches_flag(
        self, harness: Harness, restart_backend: Callable[[], None] | None
    ) -> None:
        if restart_backend is None:
            pytest.skip("this test class provides no restart_backend fixture")
        q = harness.open()
        q.enqueue(b"survivor")
        q.close()
        restart_backend()
        q2 = harness.open()
        durable = harness.has(Capability.DURABLE)
        job = q2.dequeue(timeout=10 if durable else 0.5)
        if durable:
            assert job is not None and job.body == b"survivor"
            _settle(q2, job)
        else:
            assert job is None

    # -- CROSS_PROCESS / DISTRIBUTED --------------------------------------------------------
    def test_cross_process_matches_flag(self, harness: Harness) -> None:
        q = harness.open()
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(target=_child_enqueue, args=(harness.url, harness.options, b"kid"))
        child.start()
        child.join(60)
        assert child.exitcode == 0
        job = q.dequeue(timeout=5 if harness.has(Capability.CROSS_PROCESS) else 0.5)
        if harness.has(Capability.CROSS_PROCESS):
            assert job is not None and job.body == b"kid"
            _settle(q, job)
        else:
            assert job is None

    def test_distributed_matches_flag(self, harness: Harness) -> None:
        from .._url import parse_url

        url = parse_url(harness.url)
        if harness.has(Capability.DISTRIBUTED):
            assert harness.has(Capability.CROSS_PROCESS)
            # One host, or several (a Sentinel or cluster URL lists them in its authority).
            assert url.host or "," in url.authority, \
                "a distributed driver's URL names a network host"
        else:
            q = harness.open()
            # memory://jobs, shm://jobs: the authority of a local driver's URL is a queue name.
            assert not url.host or url.authority == q.name, (
                "a driver that is not DISTRIBUTED names no network host in its URL")

    # -- BOUNDED ----------------------------------------------------------------------------
    @requires(Capability.BOUNDED)
    def test_bounded(self, harness: Harness) -> None:
        q = harness.open(**self.BOUNDED_OPTIONS)
        for i in range(self.BOUNDED_SIZE):
            q.enqueue(b"%d" % i)
        with pytest.raises(QueueFull):
            q.enqueue(b"overflow")
        assert q.size() == self.BOUNDED_SIZE
        job = q.dequeue(timeout=5)
        assert job is not None and job.body == b"0"
        _settle(q, job)
        q.enqueue(b"fits-again")
        assert q.size() == self.BOUNDED_SIZE

    @lacks(Capability.BOUNDED)
    def test_bounded_unsupported(self, harness: Harness) -> None:
        with pytest.raises((InvalidURL, UnsupportedOperation)):
            harness.open(**self.BOUNDED_OPTIONS)

    # -- NATIVE faces -----------------------------------------------------------------------
    def test_native_faces_match_flags(self, harness: Harness) -> None:
        sync_q = connect(harness.url, **harness.options)
        async_q = connect_async(harness.url, **harness.options)
        try:
            assert sync_q.bridged == (Capability.NATIVE_SYNC not in sync_q.capabilities)
            assert async_q.bridged == (Capability.NATIVE_ASYNC not in async_q.capabilities)
        finally:
            sync_q.close()
            import asyncio

            asyncio.run(async_q.aclose())
