"""unifiedq.Scheduler: tick computation, policies, bad input, exactly once under SIGKILL, CLI.

Tick and policy tests drive the pure functions and ``run_pending(now)`` with explicit times
(fast, deterministic). The exactly-once tests run three ``unifiedq scheduler`` OS processes on
real servers, SIGKILL one at a random point, and check the ledger of enqueued tick ids.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import unifiedq
from unifiedq import (
    ConfigurationError,
    InvalidArgument,
    InvalidBody,
    InvalidURL,
    UnsupportedOperation,
)
from unifiedq._scheduler_core import MemoryLeaseState
from unifiedq.scheduler import TICK_HEADER, AsyncScheduler, Entry, Scheduler, plan_ticks

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000.0  # a whole multiple of 10 s (2027-01-15 08:00:00 UTC)
BERLIN = ZoneInfo("Europe/Berlin")


def _name() -> str:
    return f"s-{uuid.uuid4().hex[:10]}"


def _drain(q: unifiedq.Queue) -> list[unifiedq.Job]:
    jobs = []
    while batch := q.dequeue_many(100, timeout=0.5):
        jobs.extend(batch)
        q.ack_many(batch)
    return jobs


# -- tick computation --------------------------------------------------------------------------
def test_interval_ticks_fall_on_multiples_of_the_interval() -> None:
    e = Entry("e", "memory://x", every=10)
    ticks, more = e.ticks_between(T0 + 3, T0 + 30, limit=100)
    assert [t.epoch for t in ticks] == [T0 + 10, T0 + 20, T0 + 30] and not more
    assert ticks[0].id == f"sched:e:{int(T0) + 10}"
    assert e.next_tick(T0 + 30).epoch == T0 + 40  # strictly after
    sub = Entry("sub", "memory://x", every=dt.timedelta(milliseconds=250))
    assert [t.id for t in sub.ticks_between(T0, T0 + 0.5, 10)[0]] == [
        f"sched:sub:{int(T0)}.250", f"sched:sub:{int(T0)}.500"]
    # The latest `limit` ticks are kept, and the cut is reported.
    ticks, more = e.ticks_between(T0, T0 + 100, limit=3)
    assert [t.epoch for t in ticks] == [T0 + 80, T0 + 90, T0 + 100] and more


def test_cron_ticks_in_a_time_zone() -> None:
    e = Entry("daily", "memory://x", cron="0 9 * * *", tz="Europe/Berlin")
    winter = e.next_tick(dt.datetime(2026, 1, 10, 12, tzinfo=dt.UTC).timestamp())
    summer = e.next_tick(dt.datetime(2026, 7, 10, 12, tzinfo=dt.UTC).timestamp())
    assert winter.at == dt.datetime(2026, 1, 11, 9, tzinfo=BERLIN)
    assert dt.datetime.fromtimestamp(winter.epoch, dt.UTC).hour == 8  # CET = UTC+1
    assert dt.datetime.fromtimestamp(summer.epoch, dt.UTC).hour == 7  # CEST = UTC+2
    # Backwards listing agrees with forward stepping (catch-up after a long downtime).
    start = dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp()
    back, _ = e.ticks_between(start, start + 40 * 86400, limit=100)
    fwd, t = [], start
    for _ in range(40):
        nxt = e.next_tick(t)
        fwd.append(nxt)
        t = nxt.epoch
    assert [x.id for x in back] == [x.id for x in fwd]


def test_dst_spring_forward_runs_a_missing_time_once_at_the_end_of_the_gap() -> None:
    # 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    e = Entry("night", "memory://x", cron="30 2 * * *", tz="Europe/Berlin")
    start = dt.datetime(2026, 3, 28, 0, tzinfo=BERLIN).timestamp()
    ticks, _ = e.ticks_between(start, start + 3 * 86400, 10)
    assert [t.at.isoformat() for t in ticks] == [
        "2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]
    assert ticks[1].epoch - ticks[0].epoch == 86400 - 1800  # once, half an hour "early"


def test_dst_fall_back_runs_a_fixed_time_once_and_wildcard_hours_twice() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST falls back to 02:00 CET; 02:00-03:00 happens twice.
    start = dt.datetime(2026, 10, 24, 12, tzinfo=BERLIN).timestamp()
    daily = Entry("night", "memory://x", cron="30 2 * * *", tz="Europe/Berlin")
    ticks, _ = daily.ticks_between(start, start + 2 * 86400, 10)
    assert [t.at.isoformat() for t in ticks] == [
        "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    assert daily.next_tick(ticks[0].epoch).id == ticks[1].id  # forward agrees
    half = Entry("half", "memory://x", cron="*/30 * * * *", tz="Europe/Berlin")
    a = dt.datetime(2026, 10, 25, 1, 45, tzinfo=BERLIN).timestamp()
    ticks, _ = half.ticks_between(a, a + 3 * 3600, 20)  # 3 real hours
    assert [t.at.strftime("%H:%M%z") for t in ticks] == [
        "02:00+0200", "02:30+0200", "02:00+0100", "02:30+0100", "03:00+0100", "03:30+0100"]


def test_jitter_is_bounded_and_the_same_in_every_process() -> None:
    e = Entry("j", "memory://x", every=10, jitter=3, seed=7)
    ticks, _ = e.ticks_between(T0, T0 + 2000, 1000)
    offsets = [t.due - t.epoch for t in ticks]
    assert all(0 <= o < 3 for o in offsets)
    assert max(offsets) > 2 and min(offsets) < 1  # spread over the range
    again = Entry("j", "memory://y", every=10, jitter=3, seed=7)
    assert [t.due for t in again.ticks_between(T0, T0 + 2000, 1000)[0]] == [t.due for t in ticks]
    other = Entry("j", "memory://x", every=10, jitter=3, seed=8)
    assert [t.due for t in other.ticks_between(T0, T0 + 2000, 1000)[0]] != [t.due for t in ticks]
    # A jittered tick waits for its offset: not due at its scheduled time.
    late = next(t for t in ticks if t.due - t.epoch > 0.5)
    assert plan_ticks(e, late.epoch - 10, late.epoch + 0.4).fire == []
    assert plan_ticks(e, late.epoch - 10, late.due).fire == [late]


# -- missed-tick policies ------------------------------------------------------------------------
@pytest.mark.parametrize(("policy", "now", "fired", "skipped"), [
    ("skip", T0 + 30.5, [30], [10, 20]),   # the on-time tick runs, late ones are dropped
    ("skip", T0 + 35, [], [10, 20, 30]),
    ("once", T0 + 35, [30], [10, 20]),     # one job (the latest tick) for all of them
    ("catch_up", T0 + 35, [10, 20, 30], []),
    ("skip", T0 + 10.5, [10], []),         # on time: every policy just runs it
    ("once", T0 + 10.5, [10], []),
])
def test_missed_tick_policies(policy: str, now: float, fired: list[int],
                              skipped: list[int]) -> None:
    e = Entry("p", "memory://x", every=10, missed=policy, grace=1.0)  # type: ignore[arg-type]
    plan = plan_ticks(e, T0, now)
    assert [t.epoch - T0 for t in plan.fire] == fired
    assert [t.epoch - T0 for t in plan.skipped] == skipped
    assert plan.last_ms == (T0 + 30 if now >= T0 + 30 else T0 + 10) * 1000


def test_catch_up_is_bounded() -> None:
    e = Entry("p", "memory://x", every=10, missed="catch_up", max_catch_up=5)
    plan = plan_ticks(e, T0, T0 + 1000.5)
    assert [t.epoch - T0 for t in plan.fire] == [960, 970, 980, 990, 1000]
    assert plan.skipped_more


def test_scheduler_passes_with_a_fake_clock() -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    clock = [T0 + 0.2]
    s = Scheduler([Entry("e", q, b"x", every=10)], clock=lambda: clock[0])
    assert s.run_pending() == []  # starts "now": nothing before it is due
    clock[0] = T0 + 10.1
    assert [(t.id, o) for t, o in s.run_pending()] == [(f"sched:e:{int(T0) + 10}", "enqueued")]
    assert s.run_pending() == []  # the same tick is not enqueued twice by one scheduler
    clock[0] = T0 + 40.2  # stalled for three ticks: one on time, two skipped
    assert [o for _, o in s.run_pending()] == ["enqueued"]
    assert s.stats()["skipped"] == 2
    jobs = _drain(q)
    assert [j.id for j in jobs] == [f"sched:e:{int(T0) + 10}", f"sched:e:{int(T0) + 40}"]
    assert jobs[0].headers[TICK_HEADER] == jobs[0].id and jobs[0].body == b"x"


def test_restart_memory_catches_up_ticks_missed_while_down() -> None:
    lease, qname = f"memory://{_name()}", f"memory://{_name()}"
    q = unifiedq.connect(qname)
    clock = [T0 + 0.5]
    with Scheduler([Entry("e", qname, lambda t: str(t.epoch).encode(), every=10,
                          missed="catch_up")], lease=lease, clock=lambda: clock[0]) as s:
        clock[0] = T0 + 10.1
        assert [o for _, o in s.run_pending()] == ["enqueued"]
    # Down from T0+10 to T0+45: the new process reads the last tick from the lease store.
    with Scheduler([Entry("e", qname, lambda t: str(t.epoch).encode(), every=10,
                          missed="catch_up")], lease=lease, clock=lambda: T0 + 45) as s2:
        assert [t.epoch - T0 for t, o in s2.run_pending() if o == "enqueued"] == [20, 30, 40]
    assert [float(j.body) - T0 for j in _drain(q)] == [10, 20, 30, 40]


def test_two_schedulers_one_lease_enqueue_each_tick_once() -> None:
    lease, qname = f"memory://{_name()}", f"memory://{_name()}"
    clock = [T0 + 0.5]
    a, b = (Scheduler([Entry("e", qname, b"x", every=1)], lease=lease, clock=lambda: clock[0])
            for _ in range(2))
    a.open()
    b.open()
    outcomes: collections.Counter[str] = collections.Counter()
    for _ in range(20):
        clock[0] += 1
        for s in (a, b) if random.random() < 0.5 else (b, a):
            outcomes.update(o for _, o in s.run_pending())
    # The second one either sees the tick done or (lease store) that the first moved on.
    assert outcomes["enqueued"] == 20 and set(outcomes) <= {"enqueued", "duplicate"}
    assert len(_drain(unifiedq.connect(qname))) == 20
    a.close()
    b.close()


def test_a_dead_claimers_tick_is_recovered_after_the_lease_ttl() -> None:
    store, qname = _name(), f"memory://{_name()}"
    clock = [T0 + 0.5]
    s = Scheduler([Entry("e", qname, b"x", every=10)], lease=f"memory://{store}", lease_ttl=0.3,
                  clock=lambda: clock[0])
    s.open()
    tick = f"sched:e:{int(T0) + 10}"
    # Another scheduler claimed the tick, then died before enqueuing it.
    MemoryLeaseState.named(store).set(tick, "claimed:dead", 0.3, nx=True)
    clock[0] = T0 + 10.1
    assert [(t.id, o) for t, o in s.run_pending()] == [(tick, "claimed_elsewhere")]
    time.sleep(0.35)  # the claim expires (the memory store's TTL is real time)
    clock[0] = T0 + 10.5
    assert [(t.id, o) for t, o in s.run_pending()] == [(tick, "recovered")]
    assert [j.id for j in _drain(unifiedq.connect(qname))] == [tick]
    # A claim that was marked done is not redone.
    tick2 = f"sched:e:{int(T0) + 20}"
    MemoryLeaseState.named(store).set(tick2, "done", 60)
    clock[0] = T0 + 20.1
    assert [o for _, o in s.run_pending()] == ["duplicate"]
    s.close()


def test_a_failed_enqueue_is_retried_then_reported_lost() -> None:
    q = unifiedq.connect(f"memory://{_name()}")
    q.close()  # every enqueue raises QueueClosed
    clock = [T0 + 0.5]
    s = Scheduler([Entry("e", q, b"x", every=10)], retries=1, clock=lambda: clock[0])
    s.open()
    clock[0] = T0 + 10.1
    assert [o for _, o in s.run_pending()] == ["failed"]
    clock[0] = T0 + 11.2  # the retry after 1 s
    assert [o for _, o in s.run_pending()] == ["failed"]
    assert s.stats()["lost"] == 1 and s.stats()["failed"] == 2


def test_async_face() -> None:
    qname = f"memory://{_name()}"

    async def main() -> list[str]:
        clock = [T0 + 0.5]
        async with AsyncScheduler([Entry("e", qname, b"a", every=1, missed="catch_up")],
                                  clock=lambda: clock[0]) as s:
            clock[0] = T0 + 3.5
            return [o for _, o in await s.run_pending()]

    assert asyncio.run(main()) == ["enqueued"] * 3
    assert len(_drain(unifiedq.connect(qname))) == 3


def test_run_loop_in_real_time_stops_on_request() -> None:
    qname = f"memory://{_name()}"
    s = Scheduler([Entry("e", qname, b"x", every=0.2)])
    t = threading.Thread(target=s.run, kwargs={"install_signals": False})
    t.start()
    time.sleep(1.3)
    s.request_stop()
    t.join(5)
    assert not t.is_alive()
    epochs = [float(j.id.rsplit(":", 1)[1]) for j in _drain(unifiedq.connect(qname))]
    assert 4 <= len(epochs) <= 8, epochs
    assert all(round(b - a, 3) == 0.2 for a, b in itertools.pairwise(epochs))


# -- bad input: typed errors before any I/O --------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "error"), [
    ({"cron": "61 * * * *"}, InvalidArgument),
    ({"cron": "* * * *"}, InvalidArgument),
    ({"cron": "0 9 * * *", "tz": "Mars/Olympus"}, InvalidArgument),
    ({"every": 10, "missed": "sometimes"}, InvalidArgument),
    ({"every": -1}, InvalidArgument),
    ({"every": 0}, InvalidArgument),
    ({"every": dt.timedelta(seconds=-5)}, InvalidArgument),
    ({"every": 10, "jitter": -1}, InvalidArgument),
    ({"every": 10, "jitter": 10}, InvalidArgument),
    ({"every": 10, "cron": "* * * * *"}, InvalidArgument),
    ({}, InvalidArgument),
    ({"every": 10, "priority": 42}, InvalidArgument),
    ({"every": 10, "max_catch_up": 0}, InvalidArgument),
    ({"every": 10, "body": "text"}, InvalidBody),
])
def test_bad_entries_raise_typed_errors(kwargs: dict[str, object],
                                        error: type[Exception]) -> None:
    with pytest.raises(error):
        Entry("e", "memory://x", **kwargs)  # type: ignore[arg-type]


def test_bad_targets_and_options_are_refused_before_any_io() -> None:
    dead = "127.0.0.1:1"  # nothing listens: any I/O would fail differently (or hang)
    with pytest.raises(InvalidURL):
        Entry("e", "no scheme here", every=1)
    with pytest.raises(ConfigurationError, match="CUSTOM_ID"):
        Scheduler([Entry("e", f"amqp://guest:guest@{dead}//", every=1)])
    with pytest.raises(ConfigurationError, match="CUSTOM_ID"):
        Scheduler([Entry("e", f"faktory://{dead}", every=1)])
    Scheduler([Entry("e", f"faktory://{dead}", every=1)], single=True)  # explicit: accepted
    Scheduler([Entry("e", f"faktory://{dead}", every=1)], lease=f"redis://{dead}/0")
    with pytest.raises(ConfigurationError, match="lease"):
        Scheduler([Entry("e", "memory://x", every=1)], lease=f"amqp://{dead}//")
    with pytest.raises(UnsupportedOperation):  # shm has no PRIORITY
        Scheduler([Entry("e", "shm://jobs?capacity=64", every=1, priority=3)], single=True)
    with pytest.raises(InvalidArgument, match="two entries"):
        Scheduler([Entry("e", "memory://x", every=1), Entry("e", "memory://y", every=2)])


# -- exactly once across OS processes, SIGKILL mid-run ---------------------------------------------
_SCHEDULE = textwrap.dedent("""
    import os
    import time
    from unifiedq.scheduler import Entry, Scheduler

    def body(tick):
        # A slow body widens the window between the claim and the enqueue.
        time.sleep(float(os.environ["SCHED_BODY_DELAY"]))
        return b"x"

    schedule = Scheduler(
        [Entry("beat", os.environ["SCHED_URL"], body, every=float(os.environ["SCHED_EVERY"]))],
        lease=os.environ.get("SCHED_LEASE") or None,
        lease_ttl=float(os.environ.get("SCHED_TTL", "30")))
""")


def _events(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _exactly_once(tmp_path: Path, url: str, drain: Callable[[], list[str]], *,
                  lease: str | None, every: float, run_for: float,
                  ttl: float = 30.0, kill_claimer: bool = False) -> dict[str, object]:
    """Run 3 scheduler processes, SIGKILL one mid-run, SIGTERM the rest; check the ledger.

    With ``kill_claimer`` the victim is the first process seen claiming a tick after the
    random kill time, killed between its claim and its enqueue (its body takes 0.3 s).
    """
    mod = f"sched_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{mod}.py").write_text(_SCHEDULE)
    env = {**os.environ, "SCHED_URL": url, "SCHED_EVERY": str(every),
           "SCHED_LEASE": lease or "", "SCHED_TTL": str(ttl),
           "SCHED_BODY_DELAY": "0.3" if kill_claimer else "0"}
    logs = [tmp_path / f"{mod}-{i}.log" for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-m", "unifiedq", "scheduler", f"{mod}:schedule",
                               "--log-json", "--log-level", "DEBUG"],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=log.open("w"))
             for log in logs]
    try:
        deadline = time.monotonic() + 30
        while not all(any(e.get("event") == "scheduler_start" for e in _events(p))
                      for p in logs):
            assert time.monotonic() < deadline, [p.read_text() for p in logs]
            assert all(p.poll() is None for p in procs), [p.read_text() for p in logs]
            time.sleep(0.05)
        t_ready = time.time()
        seed = random.randrange(1 << 30)
        rng = random.Random(seed)
        victim = rng.randrange(3)
        kill_at = t_ready + rng.uniform(0.2, 0.5) * run_for
        time.sleep(max(0.0, kill_at - time.time()))
        claimed = None
        if kill_claimer:
            victim, claimed = _wait_for_claimer(logs, after=kill_at)
        procs[victim].send_signal(signal.SIGKILL)
        time.sleep(max(0.0, t_ready + run_for - time.time()))
        t_stop = time.time()
        for i, p in enumerate(procs):
            if i != victim:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(20) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes[victim] == -signal.SIGKILL
    assert all(c == 0 for i, c in enumerate(codes) if i != victim), \
        (codes, [p.read_text()[-2000:] for p in logs])
    ledger = drain()
    epochs = sorted(float(t.rsplit(":", 1)[1]) for t in ledger)
    counts = collections.Counter(ledger)
    dups = {t: n for t, n in counts.items() if n > 1}
    step = round(every * 1000)
    gaps = [(a, b) for a, b in itertools.pairwise(epochs)
            if round((b - a) * 1000) != step]
    # Every tick of the window [all started, stopped - one interval] must be in the ledger.
    k0 = int(t_ready * 1000) // step + 1
    k1 = int((t_stop - max(every, 0.3)) * 1000) // step
    window = {round(k * step / 1000, 3) for k in range(k0, k1 + 1)}
    missing = sorted(window - {round(e, 3) for e in epochs})
    enq: collections.Counter[str] = collections.Counter()
    for path in logs:
        enq.update(str(e["tick"]) for e in _events(path)
                   if e.get("event") in ("tick_enqueued", "tick_recovered"))
    result = {"seed": seed, "victim": victim, "kill_after": round(kill_at - t_ready, 2),
              "window": len(window), "ledger": len(ledger), "unique": len(counts),
              "duplicates": dups, "missing": missing, "gaps": gaps,
              "logged_enqueues": sum(enq.values()),
              "recovered": sorted(str(e["tick"]) for path in logs for e in _events(path)
                                  if e.get("event") == "tick_recovered"),
              "killed_holding": claimed,
              "victim_enqueued": [str(e["tick"]) for e in _events(logs[victim])
                                  if e.get("event") == "tick_enqueued"],
              "per_process": [sum(1 for e in _events(path) if e.get("event") == "tick_enqueued")
                              for path in logs]}
    print("exactly-once:", json.dumps(result))
    assert not dups and not missing and not gaps, result
    assert len(window) >= run_for / every - 3, result
    assert max(enq.values(), default=1) == 1, result  # no tick enqueued by two processes
    return result


def _wait_for_claimer(logs: list[Path], *, after: float) -> tuple[int, str]:
    """The first process that logs a claim after ``after`` (it is now building the body)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for i, p in enumerate(logs):
            for e in _events(p):
                if e.get("event") == "tick_claimed" and float(e["ts"]) > after:  # type: ignore[arg-type]
                    return i, str(e["tick"])
        time.sleep(0.01)
    raise AssertionError("no scheduler claimed a tick")


def _redis_ticks(url: str) -> Callable[[], list[str]]:
    def drain() -> list[str]:
        q = unifiedq.connect(url)
        try:
            jobs = _drain(q)
            assert all(j.id == j.headers[TICK_HEADER] for j in jobs)  # the job id is the tick
            return [j.headers[TICK_HEADER] for j in jobs]
        finally:
            q.close()
    return drain


def _faktory_ticks(url: str) -> Callable[[], list[str]]:
    def drain() -> list[str]:
        q = unifiedq.connect(url)
        try:
            return [j.headers[TICK_HEADER] for j in _drain(q)]
        finally:
            q.close()
    return drain


def test_exactly_once_three_processes_redis_custom_id(tmp_path: Path, redis_url: str) -> None:
    pytest.importorskip("redis")
    url = f"{redis_url}?queue={_name()}"
    _exactly_once(tmp_path, url, _redis_ticks(url), lease=None, every=0.5, run_for=6)


def test_exactly_once_three_processes_faktory_with_redis_lease(
        tmp_path: Path, redis_url: str, faktory_url: str) -> None:
    pytest.importorskip("redis")
    url = f"{faktory_url}?queue={_name()}"
    lease = f"{redis_url}?prefix={_name()}:"
    r = _exactly_once(tmp_path, url, _faktory_ticks(url), lease=lease, every=0.5, run_for=6,
                      ttl=1.5, kill_claimer=True)
    # The victim died holding a claim: a survivor redid that tick after the lease TTL (unless
    # the kill came too late and the victim enqueued it itself: then nothing is redone).
    victim_done = r["victim_enqueued"]
    assert r["recovered"] == ([] if r["killed_holding"] in victim_done  # type: ignore[operator]
                              else [r["killed_holding"]]), r


@pytest.mark.slow
def test_exactly_once_60_ticks_redis(tmp_path: Path, redis_url: str) -> None:
    url = f"{redis_url}?queue={_name()}"
    r = _exactly_once(tmp_path, url, _redis_ticks(url), lease=None, every=1.0, run_for=62)
    assert r["window"] >= 60  # type: ignore[operator]


@pytest.mark.slow
def test_exactly_once_60_ticks_faktory_lease(tmp_path: Path, redis_url: str,
                                             faktory_url: str) -> None:
    url = f"{faktory_url}?queue={_name()}"
    lease = f"{redis_url}?prefix={_name()}:"
    r = _exactly_once(tmp_path, url, _faktory_ticks(url), lease=lease, every=1.0, run_for=64,
                      ttl=3.0)
    assert r["window"] >= 60  # type: ignore[operator]


# -- CLI and example ---------------------------------------------------------------------------
def test_cli_refuses_a_bad_schedule(tmp_path: Path) -> None:
    (tmp_path / "badsched.py").write_text("schedule = 42\n")
    for spec in ("badsched:schedule", "badsched:missing", "nocolon"):
        p = subprocess.run([sys.executable, "-m", "unifiedq", "scheduler", spec], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, (spec, p.stderr)


def test_example_runs() -> None:
    p = subprocess.run([sys.executable, "examples/scheduler_app.py"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert any("report.build" in line and '"for": "' in line for line in lines)
    assert any("ops.heartbeat" in line for line in lines)
    last = lines[-1].split()
    assert last[0].startswith("enqueued=") and last[1] == "duplicate=0"
    assert int(last[0].split("=")[1]) == int(last[3].split("=")[1]) >= 4


def test_redis_lease_store_claims_releases_and_keeps_the_latest_tick(redis_url: str) -> None:
    pytest.importorskip("redis")
    q = unifiedq.connect(f"memory://{_name()}")
    q.close()  # the enqueue fails: the claim must be released for the others
    lease = f"{redis_url}?prefix={_name()}:"
    clock = [T0 + 0.5]
    s = Scheduler([Entry("e", q, b"x", every=10)], lease=lease, retries=0,
                  clock=lambda: clock[0])
    s.open()
    store = s._store
    assert store is not None
    clock[0] = T0 + 10.1
    assert [o for _, o in s.run_pending()] == ["failed"]
    tick = f"sched:e:{int(T0) + 10}"
    assert store.state(tick) is None  # released, not left to expire
    assert store.claim(tick, "claimed:other", 5) is None
    assert store.claim(tick, "claimed:mine", 5) == "claimed:other"
    store.mark_done(tick, 5)
    assert store.state(tick) == "done"
    assert store.last("e") == T0 + 10
    store.set_last("e", T0)  # never lowered
    assert store.last("e") == T0 + 10
    s.close()


def test_cli_runs_an_async_schedule_and_stops_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "asched.py").write_text(textwrap.dedent("""
        from unifiedq.scheduler import AsyncScheduler, Entry
        schedule = AsyncScheduler([Entry("fast", "memory://cli", b"x", every=0.2)])
    """))
    log = tmp_path / "asched.log"
    p = subprocess.Popen([sys.executable, "-m", "unifiedq", "scheduler", "asched:schedule",
                          "--log-json"], cwd=tmp_path, stderr=log.open("w"))
    try:
        deadline = time.monotonic() + 30
        while sum(e.get("event") == "tick_enqueued" for e in _events(log)) < 3:
            assert time.monotonic() < deadline and p.poll() is None, log.read_text()
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0, log.read_text()
    finally:
        if p.poll() is None:
            p.kill()
    events = _events(log)
    assert events[-1]["event"] == "scheduler_stop" and events[-1]["enqueued"] >= 3  # type: ignore[operator]
    assert all(e["logger"] == "unifiedq.scheduler" for e in events)
