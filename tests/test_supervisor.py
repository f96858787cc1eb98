"""``unifiedq worker --processes N``: the prefork Supervisor, on a real Redis.

Every test runs the real command (``python -m unifiedq worker APP --url URL --processes N``)
in a subprocess, with an app written to a temporary directory, and reads the supervisor's
JSON log lines (``--log-json``) from its stderr to learn the children's pids.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import unifiedq
from unifiedq.cli.worker import worker_main
from unifiedq.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[1]

# Each job's body goes to a file named after the pid that ran it, one line per run, written
# before the ack: a job that shows up twice was run twice.
_LEDGER_APP = textwrap.dedent("""
    import os, time
    LEDGER = os.environ["LEDGER_DIR"]
    SLEEP = float(os.environ.get("JOB_SLEEP", "0"))

    def app(job):
        body = job.body.decode()
        with open(os.path.join(LEDGER, f"begin-{os.getpid()}.txt"), "a") as f:
            f.write(body + "\\n")
        time.sleep(SLEEP)
        with open(os.path.join(LEDGER, f"done-{os.getpid()}.txt"), "a") as f:
            f.write(body + "\\n")
""")


def _name() -> str:
    return f"sup-{uuid.uuid4().hex[:8]}"


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


class _Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self, kind: str) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for f in self.path.glob(f"{kind}-*.txt"):
            pid = int(f.stem.split("-")[1])
            out[pid] = [x for x in f.read_text().splitlines() if x]
        return out

    def done(self) -> Counter[str]:
        return Counter(x for rows in self.lines("done").values() for x in rows)

    def begun(self) -> Counter[str]:
        return Counter(x for rows in self.lines("begin").values() for x in rows)


class _Supervised:
    """``unifiedq worker ... --processes N --log-json`` in a subprocess; its stderr parsed."""

    def __init__(self, tmp: Path, app: str, url: str, *args: str,
                 env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONPATH": f"{tmp}{os.pathsep}{ROOT / 'src'}",
                    **(env or {})}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unifiedq", "worker", app, "--url", url, "--log-json", *args],
            cwd=tmp, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self.records: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.raw.append(line)
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    self.records.append(json.loads(line))

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r for r in list(self.records) if r.get("event") == event]

    def child_pids(self) -> list[int]:
        return [int(r["pid"]) for r in self.events("child_start")]

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        finally:
            self.kill_all()
        self._reader.join(5)
        return rc

    def kill_all(self) -> None:
        """Leave nothing behind even when a test fails half-way."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.child_pids():
            if not _gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def log(self) -> str:
        return "".join(self.raw[-60:])


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "ledger_app.py").write_text(_LEDGER_APP)
    (tmp_path / "broken_app.py").write_text('raise RuntimeError("broken at import")\n')
    (tmp_path / "ledger").mkdir()
    yield tmp_path


def _enqueue(url: str, n: int) -> unifiedq.Queue:
    q = unifiedq.connect(url)
    for i in range(0, n, 500):
        q.enqueue_many([str(j).encode() for j in range(i, min(n, i + 500))])
    return q


def _settled(q: unifiedq.Queue) -> bool:
    st = q.stats()  # type: ignore[attr-defined]  # the redis driver's hook
    return all(st[k] == 0 for k in ("pending", "active", "scheduled", "retry", "dead"))


def test_sigkill_one_child_it_is_restarted_and_the_ledger_is_exact(
        app_dir: Path, redis_url: str) -> None:
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    n, conc = 900, 4
    # A 3 s lease kept alive only by the worker: the killed child's jobs come back 3 s later.
    url = f"{redis_url}?queue={_name()}&visibility_timeout=3&heartbeat=false"
    q = _enqueue(url, n)
    ledger = _Ledger(app_dir / "ledger")
    sup = _Supervised(app_dir, "ledger_app:app", url, "--processes", "3", "--concurrency",
                      str(conc), "--lease-extend", "3",
                      env={"LEDGER_DIR": str(ledger.path), "JOB_SLEEP": "0.02"})
    try:
        kill_after = rnd.randint(n // 10, n // 2)
        _wait(lambda: sum(ledger.done().values()) >= kill_after, 30, f"{kill_after} jobs done")
        working = [pid for pid in ledger.lines("begin") if not _gone(pid)]
        victim = rnd.choice(working)
        slot = next(r["slot"] for r in sup.events("child_start") if r["pid"] == victim)
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: any(r["slot"] == slot and r["restarts"] >= 1
                          for r in sup.events("child_start")), 15, "the restart")
        exits = [r for r in sup.events("child_exit") if r["pid"] == victim]
        assert exits and exits[0]["exit_code"] == -signal.SIGKILL, sup.log()
        _wait(lambda: set(ledger.done()) == {str(i) for i in range(n)}, 40,
              "every job done at least once")
        _wait(lambda: _settled(q), 20, "the queue to settle (redelivered leases acked)")
        sup.proc.send_signal(signal.SIGTERM)
        rc = sup.wait(30)
    finally:
        sup.kill_all()
        q.purge()
        q.close()
    assert rc == 0, sup.log()
    done = ledger.done()
    dups = {job: c for job, c in done.items() if c > 1}
    held_by_victim = set(ledger.lines("begin").get(victim, []))
    # At least once: every job ran; any job that ran twice is one the killed child had
    # taken (its lease expired and the job was redelivered), and no more than it could hold.
    assert set(done) == {str(i) for i in range(n)}
    assert set(dups) <= held_by_victim, (seed, dups)
    assert all(c == 2 for c in dups.values()), (seed, dups)
    assert len(dups) <= 2 * conc, (seed, dups)
    # The restarted child is a new process, and the supervisor reported the kill as such.
    new = [r["pid"] for r in sup.events("child_start") if r["slot"] == slot and r["restarts"]]
    assert new and victim not in new
    print(f"seed={seed} killed pid {victim} (slot {slot}) after {kill_after} jobs; "
          f"{len(dups)} jobs ran twice")


def test_sigterm_to_the_supervisor_stops_children_gracefully(
        app_dir: Path, redis_url: str) -> None:
    n, conc, procs = 30, 2, 2
    url = f"{redis_url}?queue={_name()}"
    q = _enqueue(url, n)
    ledger = _Ledger(app_dir / "ledger")
    sup = _Supervised(app_dir, "ledger_app:app", url, "--processes", str(procs),
                      "--concurrency", str(conc), "--grace", "10",
                      env={"LEDGER_DIR": str(ledger.path), "JOB_SLEEP": "1.0"})
    try:
        # Every slot of every child busy with a one-second job: then stop.
        _wait(lambda: sum(ledger.begun().values()) >= procs * conc, 20, "all slots busy")
        pids = sup.child_pids()
        sup.proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        rc = sup.wait(30)
        took = time.monotonic() - stopped_at
        left: list[str] = []
        while (j := q.dequeue(timeout=0)) is not None:
            left.append(j.body.decode())
            q.ack(j)
    finally:
        sup.kill_all()
        q.purge()
        q.close()
    assert rc == 0, sup.log()
    assert took < 10 + 5, f"the stop took {took:.1f} s (grace 10 s + 5 s margin)"
    begun, done = ledger.begun(), ledger.done()
    # In-flight jobs finished (the grace was long enough); the rest never started and are
    # still in the queue: nothing lost, nothing run twice.
    assert begun == done and max(done.values()) == 1
    assert sorted([*done, *left], key=int) == [str(i) for i in range(n)]
    assert len(left) > 0  # it really was stopped mid-run
    stopped = sup.events("child_stopped")
    assert sorted(r["pid"] for r in stopped) == sorted(pids)
    assert all(r["exit_code"] == 0 for r in stopped)
    assert sup.events("supervisor_stopped")
    assert all(_gone(pid) for pid in pids), "a child outlived the supervisor"


def test_second_signal_is_a_hard_stop_and_jobs_are_handed_back(
        app_dir: Path, redis_url: str) -> None:
    url = f"{redis_url}?queue={_name()}"
    q = _enqueue(url, 4)
    ledger = _Ledger(app_dir / "ledger")
    sup = _Supervised(app_dir, "ledger_app:app", url, "--processes", "2", "--concurrency",
                      "2", "--grace", "60", "--timeout", "0",
                      env={"LEDGER_DIR": str(ledger.path), "JOB_SLEEP": "3600"})
    try:
        _wait(lambda: sum(ledger.begun().values()) == 4, 20, "four jobs running")
        pids = sup.child_pids()
        sup.proc.send_signal(signal.SIGINT)
        _wait(lambda: bool(sup.events("supervisor_stop")), 5, "the graceful stop")
        time.sleep(0.3)
        sup.proc.send_signal(signal.SIGINT)
        stopped_at = time.monotonic()
        rc = sup.wait(30)
        took = time.monotonic() - stopped_at
        back: list[str] = []
        while (j := q.dequeue(timeout=0)) is not None:
            back.append(j.body.decode())
            q.ack(j)
    finally:
        sup.kill_all()
        q.purge()
        q.close()
    # Not the 60 s grace: the second signal cut it to the 5 s margin at most.
    assert took < 5 + 3, f"the hard stop took {took:.1f} s"
    # Each child handed its running jobs back at once (release), then exited 0, so the
    # parent did not have to SIGKILL anyone: all four jobs are ready again, none lost.
    assert rc == 0, sup.log()
    assert sorted(back, key=int) == ["0", "1", "2", "3"], sup.log()
    assert [r["exit_code"] for r in sup.events("child_stopped")] == [0, 0]
    assert all(_gone(pid) for pid in pids)


def test_supervisor_killed_children_stop_by_themselves(app_dir: Path, redis_url: str) -> None:
    url = f"{redis_url}?queue={_name()}"
    sup = _Supervised(app_dir, "ledger_app:app", url, "--processes", "2",
                      env={"LEDGER_DIR": str(app_dir / "ledger")})
    try:
        _wait(lambda: len(sup.events("worker_start")) == 2, 20, "two workers started")
        pids = sup.child_pids()
        sup.proc.send_signal(signal.SIGKILL)  # no chance to stop anything
        sup.proc.wait(10)
        _wait(lambda: all(_gone(p) for p in pids), 15, "the orphaned children to stop")
        # Each child said why it stopped (the reader thread may lag a little behind).
        _wait(lambda: len(sup.events("supervisor_gone")) == 2, 5, "both children's reason")
    finally:
        sup.kill_all()


def test_crash_loop_gives_up_with_an_error(app_dir: Path, redis_url: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="unifiedq.worker")
    url = f"{redis_url}?queue={_name()}".replace("redis://", "redis://:hunter2@", 1)
    env = {**os.environ, "PYTHONPATH": f"{app_dir}{os.pathsep}{ROOT / 'src'}"}
    sup = Supervisor.for_worker("broken_app:app", url, 2, backoff=0.1, max_early_exits=3,
                                env=env, cwd=app_dir)
    t0 = time.monotonic()
    rc = sup.run(install_signals=False)
    took = time.monotonic() - t0
    assert rc == 1
    # Six interpreter starts and 0.3 s of backoff: a few seconds, but each start imports
    # unifiedq, which took 2 s+ under a load of 14 on 2 cores (it failed once at 12 s).
    assert took < 30, f"the crash loop took {took:.1f} s to be given up"
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("child_start") == 2 * 3 and sup.restarts == 2 * 2
    assert events[-1] == "supervisor_crash_loop"
    assert "giving up" in caplog.records[-1].getMessage()
    # The password never reaches a log record (message or structured field).
    start = next(r for r in caplog.records if getattr(r, "event", None) == "supervisor_start")
    assert start.url == url.replace("hunter2", "***")  # type: ignore[attr-defined]
    assert "hunter2" not in caplog.text and ":***@" in caplog.text


@pytest.mark.slow
def test_crash_loop_from_the_command_line(app_dir: Path, redis_url: str) -> None:
    url = f"{redis_url}?queue={_name()}"
    sup = _Supervised(app_dir, "broken_app:app", url, "--processes", "2")
    rc = sup.wait(60)
    took = time.monotonic() - sup.started
    assert rc == 1
    # Default policy: 5 starts per child, 0.5+1+2+4 s of backoff, plus 5 interpreter starts.
    assert took < 40, f"{took:.1f} s"
    assert sup.events("supervisor_crash_loop"), sup.log()
    assert "broken at import" in sup.log() or "broken at import" in "".join(sup.raw)


def test_bad_process_counts_are_refused(tmp_path: Path) -> None:
    assert worker_main(["json:dumps", "--url", "memory://x", "--processes", "0"]) == 2
    assert worker_main(["json:dumps", "--url", "memory://x", "--processes", "two"]) == 2
    with pytest.raises(unifiedq.InvalidArgument):
        Supervisor(["true"], 0)
    with pytest.raises(unifiedq.InvalidArgument):
        Supervisor([], 2)
    with pytest.raises(unifiedq.InvalidArgument):
        Supervisor(["true"], 2, backoff=5, max_backoff=1)


def test_any_exit_is_restarted_in_its_slot(caplog: pytest.LogCaptureFixture) -> None:
    # Children that exit at once, with 0 or an error: each slot is restarted with the
    # doubling backoff, and SLOT tells each child which slot it fills.
    caplog.set_level(logging.INFO, logger="unifiedq.worker")
    code = "import os, sys; sys.exit(int(os.environ['UNIFIEDQ_WORKER_SLOT']))"
    sup = Supervisor([sys.executable, "-c", code], 2, backoff=0.05, max_early_exits=3)
    assert sup.run(install_signals=False) == 1
    exits = [(r.slot, r.exit_code) for r in caplog.records  # type: ignore[attr-defined]
             if getattr(r, "event", None) == "child_exit"]
    assert sorted(exits) == [(0, 0)] * 3 + [(1, 1)] * 3
    delays = [r.delay for r in caplog.records  # type: ignore[attr-defined]
              if getattr(r, "event", None) == "child_restart" and r.slot == 0]  # type: ignore[attr-defined]
    assert delays[:2] == [0.05, 0.1]  # then 0.2, unless the other slot gave up first


def test_children_that_ignore_the_stop_are_killed_at_the_deadline(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="unifiedq.worker")
    # Each child marks itself once its SIGTERM is ignored, then never exits by itself.
    code = ("import os, pathlib, signal, sys, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "pathlib.Path(sys.argv[1], str(os.getpid())).touch(); time.sleep(60)")
    sup = Supervisor([sys.executable, "-c", code, str(tmp_path)], 2, grace=0.5,
                     stop_margin=0.5)

    def stop_when_up() -> None:
        _wait(lambda: len(list(tmp_path.iterdir())) == 2, 20, "two children ignoring SIGTERM")
        sup.request_stop()

    stopper = threading.Thread(target=stop_when_up)
    stopper.start()
    t0 = time.monotonic()
    rc = sup.run(install_signals=False)
    stopper.join()
    assert rc == 1  # not a clean stop: it took SIGKILL
    killed = [r for r in caplog.records if getattr(r, "event", None) == "child_killed"]
    assert len(killed) == 2 and all(_gone(r.pid) for r in killed)  # type: ignore[attr-defined]
    assert time.monotonic() - t0 < 20


def test_sighup_reloads_every_child_gracefully(app_dir: Path, redis_url: str) -> None:
    # A reload (gunicorn's and Dramatiq's SIGHUP): each child finishes its running jobs and
    # is replaced by a new one in its slot; the supervisor stays; nothing lost or run twice.
    n, conc, procs = 40, 2, 2
    url = f"{redis_url}?queue={_name()}"
    q = _enqueue(url, n)
    ledger = _Ledger(app_dir / "ledger")
    sup = _Supervised(app_dir, "ledger_app:app", url, "--processes", str(procs),
                      "--concurrency", str(conc), "--grace", "10",
                      env={"LEDGER_DIR": str(ledger.path), "JOB_SLEEP": "0.5"})
    try:
        _wait(lambda: sum(ledger.begun().values()) >= procs * conc
              and len(ledger.lines("begin")) == procs, 20, "both children busy")
        old = sup.child_pids()
        sup.proc.send_signal(signal.SIGHUP)
        _wait(lambda: len(sup.child_pids()) == 2 * procs, 20, "the new children")
        new = sup.child_pids()[procs:]
        # The old children ran their jobs to the end: their ledgers match.
        begun_old = {p: sorted(rows) for p, rows in ledger.lines("begin").items() if p in old}
        done_old = {p: sorted(rows) for p, rows in ledger.lines("done").items() if p in old}
        assert begun_old == done_old and len(begun_old) == procs, sup.log()
        _wait(lambda: any(p in new for p in ledger.lines("done")), 20,
              "a new child to run a job")
        _wait(lambda: _settled(q), 40, "every job done")
        assert sup.proc.poll() is None, "the supervisor itself must stay"
        sup.proc.send_signal(signal.SIGTERM)
        rc = sup.wait(30)
    finally:
        sup.kill_all()
        q.purge()
        q.close()
    assert rc == 0, sup.log()
    done = ledger.done()
    assert set(done) == {str(i) for i in range(n)} and max(done.values()) == 1
    assert ledger.begun() == done
    reloaded = [r for r in sup.events("child_stopped") if r["pid"] in old]
    assert sorted(r["pid"] for r in reloaded) == sorted(old)
    assert all(r["exit_code"] == 0 for r in reloaded), sup.log()
    starts = sup.events("child_start")[procs:]
    assert sorted(r["slot"] for r in starts) == list(range(procs))
    assert all(r["restarts"] == 1 for r in starts)
    assert sup.events("supervisor_reload") and not sup.events("child_killed")
    assert all(_gone(pid) for pid in old + new)


def test_reload_kills_children_that_ignore_it_and_restarts_looping_slots(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="unifiedq.worker")
    # Slot 0 ignores SIGTERM and runs until killed; slot 1 exits at once until its fix
    # file exists (a crash loop the reload should retry at once, not after its backoff).
    code = ("import os, pathlib, signal, sys, time; d = pathlib.Path(sys.argv[1]); "
            "slot = os.environ['UNIFIEDQ_WORKER_SLOT']; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "slot == '1' and not (d / 'fixed').exists() and sys.exit(3); "
            "(d / f'{slot}-{os.getpid()}').touch(); time.sleep(60)")
    sup = Supervisor([sys.executable, "-c", code, str(tmp_path)], 2, grace=0.3,
                     stop_margin=0.3, backoff=30, max_backoff=60, max_early_exits=5)

    def marks(slot: str) -> list[Path]:
        return sorted(tmp_path.glob(f"{slot}-*"))

    def drive() -> None:
        _wait(lambda: len(marks("0")) == 1, 20, "slot 0 up")
        # Slot 1's first start has exited; its restart is 30 s away.
        _wait(lambda: any(getattr(r, "event", None) == "child_restart"
                          and getattr(r, "slot", None) == 1 for r in list(caplog.records)),
              20, "slot 1 down")
        (tmp_path / "fixed").touch()
        sup.request_reload()
        _wait(lambda: len(marks("0")) == 2 and len(marks("1")) == 1, 20,
              "both slots running after the reload")
        sup.request_stop()

    driver = threading.Thread(target=drive)
    driver.start()
    t0 = time.monotonic()
    rc = sup.run(install_signals=False)
    took = time.monotonic() - t0
    driver.join()
    assert rc == 1  # the stop had to SIGKILL too
    assert took < 15, f"took {took:.1f} s: the reload waited for slot 1's 30 s backoff?"
    events = [(getattr(r, "event", None), getattr(r, "slot", None)) for r in caplog.records]
    # Slot 0's first child ignored the reload's SIGTERM: killed after grace + margin.
    assert ("supervisor_reload", None) in events
    assert events.index(("supervisor_reload", None)) < events.index(("child_killed", 0))
    assert events.count(("child_killed", 0)) == 2  # once for the reload, once for the stop
