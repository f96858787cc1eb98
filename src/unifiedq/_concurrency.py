"""The real differences between the two faces, and nothing else: threads vs tasks.

Every sync/async pair in unifiedq is written once, as asyncio code in an ``_async`` folder;
``scripts/generate_sync.py`` generates the blocking twin by dropping ``async``/``await`` and
renaming ``AsyncRuntime`` to ``SyncRuntime`` (see docs/contributing.md). So the asyncio
source talks to its runtime through one name, ``AsyncRuntime``, and this module gives both
runtimes the same members:

- ``sleep``: ``asyncio.sleep`` / ``time.sleep``.
- ``Event``: ``asyncio.Event`` with ``wait(timeout) -> bool`` / ``threading.Event``.
- ``Lock``: ``asyncio.Lock`` (``async with``) / ``threading.Lock``.
- ``spawn``: ``asyncio.create_task`` / a daemon ``threading.Thread``; both give a handle with
  ``join(timeout) -> bool``, ``done()`` and ``cancel()`` (a no-op for threads).
- ``gather``: ``asyncio.gather`` / one thread per call, all joined.
- ``shield(fn, *args)``: ``asyncio.shield(fn(*args))`` / ``fn(*args)``.
- ``Cancelled``: ``asyncio.CancelledError`` / an exception nothing raises.
- ``start_call``: a handler as a task (coroutine) or on a :class:`Runner` thread (blocking) /
  always on a :class:`Runner` thread.
- ``install_signals``: ``loop.add_signal_handler`` / ``signal.signal`` (main thread only).
- ``NATIVE``: ``Capability.NATIVE_ASYNC`` / ``Capability.NATIVE_SYNC``.
- ``RUNS_COROUTINES``: True / False.
- ``Barrier``: ``asyncio.Barrier`` / ``threading.Barrier``; ``wait()`` returns once all
  parties arrived (the bench lines its workers up so starting them is not timed).
- ``yield_now``: ``asyncio.sleep(0)`` / ``os.sched_yield()``: let others run once, then go on
  (a waiter that spins between retries).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import itertools
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import FrameType
from typing import Any, TypeVar

from ._capabilities import Capability

__all__ = [
    "AsyncCall",
    "AsyncEvent",
    "AsyncLock",
    "AsyncRuntime",
    "AsyncTask",
    "CallOutcome",
    "Runner",
    "SyncCall",
    "SyncEvent",
    "SyncLock",
    "SyncRuntime",
    "SyncTask",
]

_T = TypeVar("_T")
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class CallOutcome(enum.Enum):
    """How waiting for a handler call ended."""

    DONE = "done"  #: it returned or raised (see ``error``)
    TIMEOUT = "timeout"  #: it ran past its limit; cancelled (task) or abandoned (thread)
    GAVE_UP = "gave_up"  #: the caller stopped caring (e.g. shutdown took the job back)


class Runner:
    """A daemon thread running one call at a time; abandoned (never joined) when a call hangs.

    ``concurrent.futures.ThreadPoolExecutor`` is not used because its threads are joined at
    interpreter exit, so one hung handler would keep the process from ever exiting.
    """

    _ids = itertools.count(1)

    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._work: tuple[Callable[[], object], concurrent.futures.Future[object]] | None = None
        self._stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name=f"{name}-run{next(self._ids)}")
        self.thread.start()

    def submit(self, fn: Callable[[], object]) -> concurrent.futures.Future[object]:
        """Run ``fn`` on this thread; its result or error arrives in the future."""
        fut: concurrent.futures.Future[object] = concurrent.futures.Future()
        with self._cond:
            self._work = (fn, fut)
            self._cond.notify()
        return fut

    def retire(self) -> None:
        """Let the thread exit once its current call (if any) returns."""
        with self._cond:
            self._stop = True
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._work is None and not self._stop:
                    self._cond.wait()
                if self._work is None:
                    return
                fn, fut = self._work
                self._work = None
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handler errors travel to the waiting slot
                fut.set_exception(exc)


#: The lock and event of the blocking face (the asyncio ones are below).
SyncLock = threading.Lock
SyncEvent = threading.Event
AsyncLock = asyncio.Lock


class _NeverRaised(BaseException):
    """The blocking face's stand-in for ``asyncio.CancelledError``: threads are not cancelled."""


# -- asyncio ---------------------------------------------------------------------------------
class AsyncEvent(asyncio.Event):
    """``asyncio.Event`` whose ``wait`` takes a timeout and returns a bool, as threads' does."""

    async def wait(self, timeout: float | None = None) -> bool:  # type: ignore[override]
        """Wait until set or ``timeout`` seconds passed; return whether it is set."""
        if self.is_set():
            return True
        if timeout is None:
            return await super().wait()
        if timeout <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(super().wait(), timeout)
        return self.is_set()


class AsyncTask:
    """A spawned task; the same members as :class:`SyncTask`."""

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task

    def done(self) -> bool:
        return self.task.done()

    def cancel(self) -> None:
        self.task.cancel()

    async def join(self, timeout: float | None = None) -> bool:
        """Wait at most ``timeout`` seconds for the task to end; return whether it did."""
        if not self.task.done():
            await asyncio.wait({self.task}, timeout=timeout)
        if self.task.done() and not self.task.cancelled():
            self.task.exception()  # retrieved: an error was already logged by the task
        return self.task.done()


class AsyncCall:
    """A handler call started by :meth:`AsyncRuntime.start_call`."""

    def __init__(self, fut: asyncio.Future[object],
                 on_runner: concurrent.futures.Future[object] | None) -> None:
        self.fut = fut
        self._thread_fut = on_runner
        self.error: BaseException | None = None

    @property
    def runner_free(self) -> bool:
        """Whether the runner thread may take another call (nothing left running on it)."""
        # Cancelling the asyncio wrapper does not stop the thread: ask the thread's own future.
        return self._thread_fut is None or self._thread_fut.done()

    async def wait(self, limit: float | None, give_up: Callable[[], bool]) -> CallOutcome:
        """Wait up to ``limit`` seconds; see :class:`CallOutcome` (the error is in ``error``)."""
        done, _ = await asyncio.wait({self.fut}, timeout=limit)
        if give_up():
            self.fut.cancel()
            return CallOutcome.GAVE_UP
        if not done:
            self.fut.cancel()  # cancels a coroutine; a thread keeps running, abandoned
            return CallOutcome.TIMEOUT
        self.error = (self.fut.exception() if not self.fut.cancelled()
                      else asyncio.CancelledError())
        return CallOutcome.DONE


class AsyncRuntime:
    """The asyncio face's primitives (see the module docstring)."""

    RUNS_COROUTINES = True
    #: The capability flag of a driver written natively for this face.
    NATIVE = Capability.NATIVE_ASYNC
    Cancelled: type[BaseException] = asyncio.CancelledError
    Event = AsyncEvent
    Lock = AsyncLock

    @staticmethod
    async def sleep(seconds: float) -> None:
        """Pause this task for ``seconds``."""
        await asyncio.sleep(seconds)

    @staticmethod
    def spawn(fn: Callable[..., Coroutine[Any, Any, None]], *args: Any,
              name: str) -> AsyncTask:
        """Run ``fn(*args)`` concurrently as a task on the running loop."""
        return AsyncTask(asyncio.create_task(fn(*args), name=name))

    @staticmethod
    async def gather(calls: list[Callable[[], Coroutine[Any, Any, None]]]) -> None:
        """Run every call concurrently; return when all have ended (the first error raises)."""
        await asyncio.gather(*(c() for c in calls))

    @staticmethod
    async def shield(fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """Run ``fn(*args)`` to its end even if the caller is cancelled meanwhile."""
        return await asyncio.shield(fn(*args))

    @staticmethod
    def start_call(fn: Callable[[], Any], runner: Runner | None, is_async: bool) -> AsyncCall:
        """Start a handler call: a coroutine function as a task, a blocking one on ``runner``."""
        if is_async:
            async def run() -> object:
                return await fn()
            return AsyncCall(asyncio.ensure_future(run()), None)
        assert runner is not None
        cf = runner.submit(fn)
        return AsyncCall(asyncio.wrap_future(cf), cf)

    @staticmethod
    def install_signals(on_signal: Callable[[int], None]) -> Callable[[], None]:
        """Route SIGTERM/SIGINT to ``on_signal`` where the loop allows; return the undo."""
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        for sig in _SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, on_signal, int(sig))
                installed.append(sig)

        def restore() -> None:
            for sig in installed:
                loop.remove_signal_handler(sig)
        return restore

    #: Lines concurrent workers up: ``await Barrier(n).wait()`` returns once ``n`` arrived.
    Barrier = asyncio.Barrier

    @staticmethod
    async def yield_now() -> None:
        """Let the loop's other tasks run once, then go on (``asyncio.sleep(0)``)."""
        await asyncio.sleep(0)


# -- threads ---------------------------------------------------------------------------------
class SyncTask:
    """A spawned thread; the same members as :class:`AsyncTask`."""

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread

    def done(self) -> bool:
        return not self.thread.is_alive()

    def cancel(self) -> None:
        """Threads cannot be cancelled: they watch the flags their owner sets."""

    def join(self, timeout: float | None = None) -> bool:
        """Wait at most ``timeout`` seconds for the thread to end; return whether it did."""
        self.thread.join(timeout)
        return not self.thread.is_alive()


class SyncCall:
    """A handler call started by :meth:`SyncRuntime.start_call`."""

    # How often a waiting slot looks at ``give_up`` (a thread cannot be woken by a stop).
    POLL = 0.25

    def __init__(self, fut: concurrent.futures.Future[object]) -> None:
        self.fut = fut
        self.error: BaseException | None = None

    @property
    def runner_free(self) -> bool:
        """Whether the runner thread may take another call (nothing left running on it)."""
        return self.fut.done()

    def wait(self, limit: float | None, give_up: Callable[[], bool]) -> CallOutcome:
        """Wait up to ``limit`` seconds; see :class:`CallOutcome` (the error is in ``error``)."""
        end = None if limit is None else time.monotonic() + limit
        while True:
            step = self.POLL if end is None else max(0.0, min(self.POLL, end - time.monotonic()))
            try:
                self.fut.result(timeout=step)
                return CallOutcome.DONE
            except concurrent.futures.TimeoutError:
                if give_up():
                    return CallOutcome.GAVE_UP
                if end is not None and time.monotonic() >= end:
                    return CallOutcome.TIMEOUT
            except BaseException as err:  # SystemExit etc. from a handler: a failure too
                self.error = err
                return CallOutcome.DONE


class SyncRuntime:
    """The blocking face's primitives (see the module docstring)."""

    RUNS_COROUTINES = False
    #: The capability flag of a driver written natively for this face.
    NATIVE = Capability.NATIVE_SYNC
    Cancelled: type[BaseException] = _NeverRaised
    Event = SyncEvent
    Lock = SyncLock

    @staticmethod
    def sleep(seconds: float) -> None:
        """Pause this thread for ``seconds``."""
        time.sleep(seconds)

    @staticmethod
    def spawn(fn: Callable[..., None], *args: Any, name: str) -> SyncTask:
        """Run ``fn(*args)`` concurrently on a new daemon thread."""
        t = threading.Thread(target=fn, args=args, name=name, daemon=True)
        t.start()
        return SyncTask(t)

    @staticmethod
    def gather(calls: list[Callable[[], None]]) -> None:
        """Run every call on its own thread; return when all have ended (the first error raises)."""
        errors: list[BaseException] = []

        def guard(fn: Callable[[], None]) -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=guard, args=(c,), daemon=True) for c in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    @staticmethod
    def shield(fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(*args)``: a thread is never cancelled, so there is nothing to protect."""
        return fn(*args)

    @staticmethod
    def start_call(fn: Callable[[], Any], runner: Runner | None, is_async: bool) -> SyncCall:
        """Start a blocking handler call on ``runner``."""
        assert runner is not None and not is_async
        return SyncCall(runner.submit(fn))

    @staticmethod
    def install_signals(on_signal: Callable[[int], None]) -> Callable[[], None]:
        """Route SIGTERM/SIGINT to ``on_signal`` (main thread only); return the undo."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        old: dict[int, Any] = {}

        def handler(signum: int, frame: FrameType | None) -> None:
            on_signal(signum)

        for sig in _SIGNALS:
            old[sig] = signal.signal(sig, handler)

        def restore() -> None:
            for sig_no, h in old.items():
                signal.signal(sig_no, h)
        return restore

    #: Lines concurrent workers up: ``Barrier(n).wait()`` returns once ``n`` threads arrived.
    Barrier = threading.Barrier

    #: Let other threads and processes have the CPU once, then go on (``os.sched_yield``).
    yield_now = staticmethod(os.sched_yield)
