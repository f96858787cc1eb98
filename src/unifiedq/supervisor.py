"""A prefork supervisor: run N worker processes, restart the ones that die, forward signals.

``unifiedq worker APP --url URL --processes N`` runs N copies of the single-process worker
under a :class:`Supervisor` (the shape of gunicorn's arbiter, Celery's prefork pool or
Dramatiq's ``--processes``). The supervisor imports nothing of the app: each child is a fresh
interpreter that imports the app itself, so a broken app shows up as children that die at
start, which the crash-loop guard turns into a clear error.

From Python::

    from unifiedq.supervisor import Supervisor

    sup = Supervisor.for_worker("myapp.tasks:app", "redis://localhost:6379/0?queue=emails",
                                processes=4, worker_args=["--concurrency", "8"])
    raise SystemExit(sup.run())   # until SIGTERM/SIGINT

Children are started with :mod:`subprocess` (fork immediately followed by exec of a new
interpreter), not :mod:`multiprocessing`: the child is then exactly the command a user can
run by hand (same argument parsing, logging, signal handling and exit codes as
``--processes 1``), nothing is pickled across, and no child inherits a copy of the parent's
threads, locks or sockets, which a bare ``fork()`` of a threaded process would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ._errors import InvalidArgument
from ._url import parse_url

__all__ = ["SUPERVISOR_LOG_FIELDS", "SUPERVISOR_PID_ENV", "WORKER_SLOT_ENV", "Supervisor"]

#: Set in every child's environment: the supervisor's pid. ``unifiedq worker`` stops itself
#: gracefully when its parent is no longer this process (the supervisor was SIGKILLed).
SUPERVISOR_PID_ENV = "UNIFIEDQ_SUPERVISOR_PID"
#: Set in every child's environment: the child's slot, ``0`` to ``processes - 1`` (stable
#: across restarts, so an app can name per-process files or ports after it).
WORKER_SLOT_ENV = "UNIFIEDQ_WORKER_SLOT"
#: Structured fields of the supervisor's log records (besides ``event``).
SUPERVISOR_LOG_FIELDS = ("slot", "pid", "exit_code", "uptime", "restarts", "processes", "url",
                         "delay", "signal", "error")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Exit statuses of a child that honoured a stop: 0 from the worker; 130 when SIGINT arrived
# as KeyboardInterrupt; killed by SIGTERM/SIGINT when it came before the worker installed
# its handlers (still importing the app, so it held no jobs).
_CLEAN_STOP = frozenset({0, 130, -signal.SIGTERM, -signal.SIGINT})
_TICK = 0.05  # seconds between looks at the children; how late a restart or a stop can be


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    early_exits: int = 0       # consecutive exits within min_uptime of their start
    restart_at: float | None = None
    restarts: int = 0
    reload_by: float | None = None  # reloading: SIGTERMed, SIGKILLed at this time if alive


class Supervisor:
    """Runs ``processes`` copies of a command, restarts them when they die, forwards signals.

    Lifecycle: :meth:`run` starts every child, then watches them.

    * **A child that exits while the supervisor is running** (a crash, the OOM killer, a
      SIGKILL, or any exit at all) is started again in the same slot after a backoff of
      ``backoff`` seconds, doubled for each consecutive *early* exit (one within
      ``min_uptime`` seconds of its start), capped at ``max_backoff``. A child that lived
      ``min_uptime`` seconds resets its slot's count.
    * **Crash loop**: when every slot has had ``max_early_exits`` early exits in a row, the
      supervisor logs an error and :meth:`run` returns 1 (with the defaults: five starts
      that each died within 5 s, about 8 s of backoff in all). A slot that loops while
      others run keeps being restarted, its delay growing to ``max_backoff``, and each
      restart is logged at ERROR.
    * **SIGTERM / SIGINT** (or :meth:`request_stop`): SIGTERM is sent to every child (the
      worker's graceful stop), and they get ``grace + stop_margin`` seconds to exit. A second
      signal sends each child a second SIGTERM (the worker's hard stop: running jobs are
      handed back at once) and leaves them ``stop_margin`` seconds. Children still alive at
      the deadline are SIGKILLed (their jobs come back when their leases expire).
    * **SIGHUP** (or :meth:`request_reload`): a graceful restart of every child, e.g. to
      load new code (gunicorn's and Dramatiq's reload). Each child gets SIGTERM, finishes
      its running jobs within ``grace`` (SIGKILLed after ``grace + stop_margin``), and a new
      child starts in its slot as soon as it has exited, without backoff. A slot waiting for
      its restart (a crash loop) is restarted at once with its early-exit count cleared. A
      child that is already reloading is not signalled again by another SIGHUP.

    Children run in their own session, so a Ctrl-C in a terminal reaches only the supervisor,
    which forwards it once; were they in its process group, each child would get the
    terminal's SIGINT *and* the forwarded one, which is a hard stop.

    Args:
        command: The child's command line (``argv``, the program first), or a callable
            taking the slot number and returning it (to vary it per child, e.g. a port).
        processes: How many children to keep running (>= 1).
        grace: Seconds the children's own graceful stop may take (the worker's ``--grace``).
        stop_margin: Seconds allowed beyond ``grace`` for a child to hand back its jobs and
            exit before it is SIGKILLed; also the time left after a second signal.
        backoff: Seconds before restarting a child after its first exit.
        max_backoff: Cap on the restart delay, in seconds.
        min_uptime: A child that exits sooner than this many seconds after its start counts
            as an early exit (towards the crash-loop guard).
        max_early_exits: Consecutive early exits per slot, in every slot at once, after which
            the supervisor gives up.
        env: Environment of the children (default: the supervisor's); the supervisor adds
            ``UNIFIEDQ_SUPERVISOR_PID`` and ``UNIFIEDQ_WORKER_SLOT``.
        cwd: Working directory of the children (default: the supervisor's).
        url: The queue URL, for the start log line only (logged redacted, never with its
            password); None logs no URL.
        logger: Where to log (default: the ``unifiedq.worker`` logger, as the worker does).

    Raises:
        InvalidArgument: ``processes`` < 1, a negative or inconsistent time, or an empty
            command.
        InvalidURL: ``url`` does not parse.
    """

    def __init__(
        self,
        command: Sequence[str] | Callable[[int], Sequence[str]],
        processes: int = 1,
        *,
        grace: float = 30.0,
        stop_margin: float = 5.0,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        min_uptime: float = 5.0,
        max_early_exits: int = 5,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        url: str | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise InvalidArgument(f"processes must be an int >= 1, not {processes!r}")
        if isinstance(max_early_exits, bool) or not isinstance(max_early_exits, int) \
                or max_early_exits < 1:
            raise InvalidArgument(f"max_early_exits must be an int >= 1, not {max_early_exits!r}")
        for name, value in (("grace", grace), ("stop_margin", stop_margin),
                            ("backoff", backoff), ("max_backoff", max_backoff),
                            ("min_uptime", min_uptime)):
            if not isinstance(value, int | float) or value < 0:
                raise InvalidArgument(f"{name} must be a number >= 0 seconds, not {value!r}")
        if max_backoff < backoff:
            raise InvalidArgument(f"max_backoff ({max_backoff}) is below backoff ({backoff})")
        if not callable(command) and (isinstance(command, str) or not command):
            raise InvalidArgument("command must be a non-empty argv list (or a callable)")
        self._command = command
        self.processes = processes
        self.grace = float(grace)
        self.stop_margin = float(stop_margin)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.min_uptime = float(min_uptime)
        self.max_early_exits = max_early_exits
        self._env = dict(os.environ if env is None else env)
        self._cwd = cwd
        # Redact now: the raw URL (with its password) is never kept for logging.
        self._url = parse_url(url).redacted() if url is not None else None
        self._log = logger or logging.getLogger("unifiedq.worker")
        self._slots = [_Slot(i) for i in range(processes)]
        self._stops = 0            # stop requests so far (signals or request_stop calls)
        self._reloads = 0          # reload requests so far (SIGHUP or request_reload calls)

    @classmethod
    def for_worker(
        cls,
        app: str,
        url: str,
        processes: int,
        *,
        worker_args: Sequence[str] = (),
        python: str | None = None,
        grace: float = 30.0,
        **options: Any,
    ) -> Supervisor:
        """Return a supervisor of ``processes`` copies of ``unifiedq worker APP --url URL ...``.

        Args:
            app: ``package.module:attribute`` (imported by each child, never by the caller).
            url: The queue URL.
            processes: How many worker processes.
            worker_args: Further ``unifiedq worker`` options, e.g. ``["--concurrency", "8"]``
                (not ``--grace``: pass ``grace``, which both the children and the supervisor
                need).
            python: The interpreter to run (default: this one, ``sys.executable``).
            grace: The workers' graceful-stop period, in seconds.
            **options: Other :class:`Supervisor` arguments (``backoff``, ``env``, ...).

        Raises:
            InvalidArgument: As :class:`Supervisor`.
        """
        argv = [python or sys.executable, "-m", "unifiedq", "worker", app, "--url", url,
                *worker_args, "--grace", repr(float(grace)), "--processes", "1"]
        return cls(argv, processes, grace=grace, url=url, **options)

    # -- control ---------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask for a stop and return at once (safe in a signal handler).

        The first call is a graceful stop; a second one makes it hard (see the class).
        """
        self._stops += 1  # only read by the loop in run(); an int bump is atomic enough

    def request_reload(self) -> None:
        """Ask for a graceful restart of every child and return at once (signal-safe).

        Ignored once a stop was requested. See the class for what a reload does.
        """
        self._reloads += 1  # only read by the loop in run()

    def pids(self) -> dict[int, int]:
        """Return ``{slot: pid}`` of the children alive now."""
        out = {}
        for s in self._slots:
            proc = s.proc  # one read: run() may replace it meanwhile on another thread
            if proc is not None and proc.poll() is None:
                out[s.index] = proc.pid
        return out

    @property
    def restarts(self) -> int:
        """How many times a child was started again after an exit."""
        return sum(s.restarts for s in self._slots)

    # -- the loop --------------------------------------------------------------------------
    def run(self, *, install_signals: bool = True) -> int:
        """Start the children and supervise them until stopped.

        Args:
            install_signals: Route SIGTERM/SIGINT to :meth:`request_stop` and SIGHUP to
                :meth:`request_reload` (main thread only; the previous handlers are restored
                on return).

        Returns:
            The exit status: 0 after a stop that every child honoured in time; 1 if a child
            had to be SIGKILLed or exited with an error while stopping, or after a crash loop.
        """
        restore = self._install_signals() if install_signals else (lambda: None)
        try:
            return self._run()
        finally:
            restore()

    def _run(self) -> int:
        self._event(logging.INFO, "supervisor_start",
                    f"starting {self.processes} worker processes"
                    + (f" on {self._url}" if self._url else ""),
                    processes=self.processes, url=self._url)
        for slot in self._slots:
            self._start(slot)
        handled_stops = handled_reloads = 0
        deadline: float | None = None
        clean = True
        while True:
            now = time.monotonic()
            stops = self._stops
            if stops > handled_stops:
                handled_stops = stops
                hard = stops >= 2
                live = self._live()
                self._event(logging.INFO, "supervisor_stop",
                            f"{'hard' if hard else 'graceful'} stop of {len(live)} worker "
                            "processes", processes=len(live))
                for slot in self._slots:
                    slot.restart_at = None  # a child waiting for its restart stays down
                    slot.reload_by = None   # the stop's deadline governs every child now
                for slot in live:
                    self._signal(slot, signal.SIGTERM)
                limit = now + self.stop_margin + (0.0 if hard else self.grace)
                deadline = limit if deadline is None else min(deadline, limit)
            elif self._reloads > handled_reloads and deadline is None:
                handled_reloads = self._reloads
                self._reload(now)
            for slot in self._slots:
                if slot.proc is None:
                    continue
                if (code := slot.proc.poll()) is None:
                    if slot.reload_by is not None and now >= slot.reload_by:
                        self._kill(slot, "did not stop for the reload in time")
                        slot.reload_by = now + self.stop_margin  # look again, kill again
                    continue
                if deadline is not None:
                    clean &= self._stopped(slot, code)
                else:
                    self._exited(slot, code, now)
            if deadline is not None:
                if not self._live():
                    break
                if now >= deadline:
                    self._kill_leftovers()
                    clean = False
                    break
            else:
                if all(s.early_exits >= self.max_early_exits for s in self._slots):
                    self._event(logging.ERROR, "supervisor_crash_loop",
                                f"giving up: every worker process exited within "
                                f"{self.min_uptime:g} s of its start, {self.max_early_exits} "
                                "times in a row (see their errors above)",
                                error="crash loop", restarts=self.restarts)
                    return 1
                for slot in self._slots:
                    if slot.restart_at is not None and now >= slot.restart_at:
                        slot.restart_at = None
                        slot.restarts += 1
                        self._start(slot)
            time.sleep(_TICK)
        self._event(logging.INFO if clean else logging.WARNING, "supervisor_stopped",
                    "every worker process stopped" if clean else
                    "worker processes stopped, not all cleanly", restarts=self.restarts)
        return 0 if clean else 1

    def _live(self) -> list[_Slot]:
        return [s for s in self._slots if s.proc is not None and s.proc.poll() is None]

    def _start(self, slot: _Slot) -> None:
        cmd = list(self._command(slot.index) if callable(self._command) else self._command)
        env = {**self._env, SUPERVISOR_PID_ENV: str(os.getpid()),
               WORKER_SLOT_ENV: str(slot.index)}
        try:
            proc = subprocess.Popen(cmd, env=env, cwd=self._cwd, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        except OSError as exc:  # the interpreter vanished, no more pids, ...: an early exit
            self._event(logging.ERROR, "child_start_failed",
                        f"worker process {slot.index} could not start: {exc}",
                        slot=slot.index, error=str(exc))
            slot.proc = None
            self._schedule_restart(slot, time.monotonic(), early=True)
            return
        slot.proc = proc
        slot.started = time.monotonic()
        self._event(logging.INFO, "child_start",
                    f"worker process {slot.index} started (pid {proc.pid})",
                    slot=slot.index, pid=proc.pid, restarts=slot.restarts)

    def _reload(self, now: float) -> None:
        live = [s for s in self._live() if s.reload_by is None]
        self._event(logging.INFO, "supervisor_reload",
                    f"reloading {len(live)} worker processes", processes=len(live))
        for slot in self._slots:
            if slot.restart_at is not None:  # waiting after a crash: perhaps fixed now
                slot.early_exits = 0
                slot.restart_at = now
        for slot in live:
            slot.reload_by = now + self.grace + self.stop_margin
            self._signal(slot, signal.SIGTERM)

    def _exited(self, slot: _Slot, code: int, now: float) -> None:
        """A child exited while the supervisor runs: log it and schedule its restart."""
        assert slot.proc is not None
        pid, uptime = slot.proc.pid, now - slot.started
        slot.proc = None
        if slot.reload_by is not None:  # asked to exit by a reload: replace it now
            slot.reload_by = None
            ok = code in _CLEAN_STOP
            self._event(logging.INFO if ok else logging.WARNING, "child_stopped",
                        f"worker process {slot.index} (pid {pid}) {_describe(code)} for the "
                        "reload", slot=slot.index, pid=pid, exit_code=code)
            slot.early_exits = 0
            slot.restart_at = now
            return
        early = uptime < self.min_uptime
        level = logging.INFO if code == 0 and not early else logging.WARNING
        self._event(level, "child_exit", f"worker process {slot.index} (pid {pid}) "
                    f"{_describe(code)} after {uptime:.1f} s", slot=slot.index, pid=pid,
                    exit_code=code, uptime=round(uptime, 3))
        self._schedule_restart(slot, now, early=early)

    def _schedule_restart(self, slot: _Slot, now: float, *, early: bool) -> None:
        slot.early_exits = slot.early_exits + 1 if early else 0
        delay = min(self.max_backoff, self.backoff * 2 ** max(0, slot.early_exits - 1))
        slot.restart_at = now + delay
        if all(s.early_exits >= self.max_early_exits for s in self._slots):
            return  # the loop gives up on its next pass: announcing a restart would mislead
        looping = slot.early_exits >= self.max_early_exits
        why = ""
        if looping:
            why = (f" (crash loop: it exited within {self.min_uptime:g} s of its start "
                   f"{slot.early_exits} times in a row)")
        elif early:
            why = f" ({slot.early_exits} early exits in a row)"
        self._event(logging.ERROR if looping else logging.INFO, "child_restart",
                    f"restarting worker process {slot.index} in {delay:g} s{why}",
                    slot=slot.index, delay=delay, restarts=slot.restarts)

    def _stopped(self, slot: _Slot, code: int) -> bool:
        """A child exited during the stop: log it; return whether it stopped cleanly."""
        assert slot.proc is not None
        pid = slot.proc.pid
        slot.proc = None
        ok = code in _CLEAN_STOP
        self._event(logging.INFO if ok else logging.WARNING, "child_stopped",
                    f"worker process {slot.index} (pid {pid}) {_describe(code)}",
                    slot=slot.index, pid=pid, exit_code=code)
        return ok

    def _kill(self, slot: _Slot, why: str) -> None:
        assert slot.proc is not None
        self._event(logging.WARNING, "child_killed",
                    f"worker process {slot.index} (pid {slot.proc.pid}) {why}: SIGKILL (its "
                    "jobs come back when their leases expire)", slot=slot.index,
                    pid=slot.proc.pid)
        self._signal(slot, signal.SIGKILL)

    def _kill_leftovers(self) -> None:
        for slot in self._live():
            self._kill(slot, "did not stop in time")
        for slot in self._slots:
            if slot.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    slot.proc.wait(10)  # reap, so no zombie outlives us
                slot.proc = None

    @staticmethod
    def _signal(slot: _Slot, sig: int) -> None:
        assert slot.proc is not None
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            slot.proc.send_signal(sig)

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        sigs = (*_STOP_SIGNALS, signal.SIGHUP)
        old = {sig: signal.getsignal(sig) for sig in sigs}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._event(logging.INFO, "signal", f"got signal {signum}", signal=signum)
            if signum == signal.SIGHUP:
                self.request_reload()
            else:
                self.request_stop()

        for sig in sigs:
            signal.signal(sig, on_signal)

        def restore() -> None:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        return restore

    def _event(self, level: int, event: str, msg: str, **fields: Any) -> None:
        self._log.log(level, msg, extra={"event": event, **fields})


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
