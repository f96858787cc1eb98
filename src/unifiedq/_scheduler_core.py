"""The face-independent half of the scheduler: entries, tick computation and missed-tick policies.

Everything here is pure (no I/O, no clock of its own), so the blocking and asyncio schedulers
generated from ``_async/scheduler.py`` share it, and tests drive it with explicit times.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._capabilities import Capability, require
from ._errors import (
    ConfigurationError,
    DriverNotFound,
    DriverUnavailable,
    InvalidArgument,
    InvalidBody,
)
from ._job import PRIORITY_MAX, PRIORITY_MIN
from ._registry import get_driver
from ._url import parse_url

__all__ = [
    "MISSED_POLICIES",
    "SCHEDULE_HEADER",
    "TICK_HEADER",
    "Entry",
    "MemoryLeaseState",
    "MissedPolicy",
    "Plan",
    "Tick",
    "plan_ticks",
    "target_capabilities",
]

MissedPolicy = Literal["skip", "once", "catch_up"]
MISSED_POLICIES: tuple[str, ...] = ("skip", "once", "catch_up")

#: Header carrying the tick id on every scheduled job (where the driver has HEADERS).
TICK_HEADER = "x-unifiedq-tick"
#: Header carrying the entry's name.
SCHEDULE_HEADER = "x-unifiedq-schedule"


@dataclasses.dataclass(frozen=True, slots=True)
class Tick:
    """One scheduled occurrence of an entry.

    Attributes:
        entry: The entry's name.
        at: The scheduled time, timezone-aware, in the entry's time zone.
        epoch_ms: The scheduled time in milliseconds since the Unix epoch.
        due: When it should be enqueued (seconds since the epoch): ``at`` plus the jitter.
    """

    entry: str
    at: dt.datetime
    epoch_ms: int
    due: float

    @property
    def epoch(self) -> float:
        """The scheduled time in seconds since the Unix epoch."""
        return self.epoch_ms / 1000

    @property
    def id(self) -> str:
        """The deterministic id of this tick: ``sched:<entry>:<epoch seconds>``.

        Every scheduler process computes the same id for the same tick; it is the job id on
        drivers with CUSTOM_ID and the lease key elsewhere.
        """
        sec, ms = divmod(self.epoch_ms, 1000)
        return f"sched:{self.entry}:{sec}" + (f".{ms:03d}" if ms else "")


Body = bytes | Callable[[Tick], bytes]


class Entry:
    """A periodic job: what to enqueue, where, and when.

    Exactly one of ``cron`` and ``every`` is given. Everything is validated here, before any
    I/O.

    Args:
        name: Unique name of the entry; part of every tick id, so keep it stable across
            deployments (renaming it makes every scheduler see new ticks).
        target: Queue URL (opened by the scheduler) or an open queue of the scheduler's face.
        body: Job body (bytes), or a callable taking the :class:`Tick` and returning bytes
            (called once per enqueued tick, in the scheduler; keep it quick).
        cron: A cron expression parsed by croniter: 5 fields (minute precision), a 6th field
            for seconds, or ``@hourly``/``@daily``/... aliases. Evaluated in ``tz``.
        every: Fixed interval in seconds (or a ``timedelta``), at least 1 ms, rounded to the
            millisecond. Ticks fall on whole multiples of the interval since the Unix epoch,
            so every scheduler process agrees on them (``every=60`` ticks on the minute).
        tz: IANA time zone name or ``tzinfo`` for ``cron`` (default UTC).
        jitter: Up to this many seconds are added to each tick's enqueue time (spreads load).
            The offset is derived from ``seed``, the entry name and the tick, so all scheduler
            processes pick the same one. With ``every`` it must be smaller than the interval.
        seed: Seed of the jitter (change it to reshuffle; tests pin it).
        missed: What to do with ticks whose enqueue time passed more than ``grace`` seconds
            ago (the scheduler was down, stalled or late): ``"skip"`` (default) drops them,
            ``"once"`` enqueues one job (the latest tick) for all of them, ``"catch_up"``
            enqueues each of them, at most ``max_catch_up`` (the latest ones).
        max_catch_up: Bound of ``catch_up`` (and of how far back missed ticks are listed).
        grace: Seconds a tick may be late and still count as on time.
        headers: Headers of each job (the driver needs HEADERS).
        priority: Priority of each job (the driver needs PRIORITY).
        delay: Delay of each job in seconds (the driver needs DELAY).

    Raises:
        InvalidArgument: A malformed cron expression, an unknown time zone, a bad policy, a
            non-positive interval, a negative jitter or grace, or both/neither of cron/every.
        InvalidBody: ``body`` is neither bytes nor callable.
        InvalidURL: ``target`` is a malformed URL.
        DriverUnavailable: ``cron`` is given but croniter is not installed (extra
            ``scheduler``).
    """

    __slots__ = ("_cron_hour_fixed", "body", "cron", "delay", "every_ms", "grace", "headers",
                 "jitter", "max_catch_up", "missed", "name", "priority", "seed", "target",
                 "tz")

    def __init__(
        self,
        name: str,
        target: Any,
        body: Body = b"",
        *,
        cron: str | None = None,
        every: float | dt.timedelta | None = None,
        tz: str | dt.tzinfo = "UTC",
        jitter: float = 0.0,
        seed: int | str = 0,
        missed: MissedPolicy = "skip",
        max_catch_up: int = 100,
        grace: float = 1.0,
        headers: Mapping[str, str] | None = None,
        priority: int | None = None,
        delay: float | None = None,
    ) -> None:
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise InvalidArgument(f"an entry name is a non-empty string without spaces, "
                                  f"not {name!r}")
        self.name = name
        if isinstance(target, str):
            parse_url(target)  # InvalidURL now rather than at the first tick
        elif not hasattr(target, "enqueue") or not hasattr(target, "capabilities"):
            raise InvalidArgument(f"entry {name!r}: target must be a queue URL or an open "
                                  f"queue, not {type(target).__name__}")
        self.target = target
        if isinstance(body, bytearray | memoryview):
            body = bytes(body)
        if not isinstance(body, bytes) and not callable(body):
            raise InvalidBody(f"entry {name!r}: body must be bytes or a callable returning "
                              f"bytes, not {type(body).__name__}")
        self.body: Body = body
        if (cron is None) == (every is None):
            raise InvalidArgument(f"entry {name!r}: give exactly one of cron= and every=")
        self.tz = _zone(tz)
        self.cron = cron
        self.every_ms: int | None = None
        self._cron_hour_fixed = False
        if cron is not None:
            croniter = _croniter()
            if not isinstance(cron, str) or not croniter.is_valid(cron):
                raise InvalidArgument(f"entry {name!r}: {cron!r} is not a valid cron "
                                      f"expression (croniter syntax: 'min hour dom month dow "
                                      f"[sec]' or @hourly, @daily, ...)")
            self._cron_hour_fixed = croniter(cron).expanded[1] != ["*"]
        else:
            seconds = every.total_seconds() if isinstance(every, dt.timedelta) else every
            if (isinstance(seconds, bool) or not isinstance(seconds, int | float)
                    or not math.isfinite(seconds) or round(seconds * 1000) < 1):
                raise InvalidArgument(f"entry {name!r}: every= must be a positive number of "
                                      f"seconds (at least 0.001), not {every!r}")
            self.every_ms = round(seconds * 1000)
        if (isinstance(jitter, bool) or not isinstance(jitter, int | float)
                or not math.isfinite(jitter) or jitter < 0):
            raise InvalidArgument(f"entry {name!r}: jitter must be >= 0 seconds, not {jitter!r}")
        if self.every_ms is not None and jitter * 1000 >= self.every_ms:
            raise InvalidArgument(f"entry {name!r}: jitter ({jitter} s) must be smaller than "
                                  f"the interval ({self.every_ms / 1000} s)")
        self.jitter = float(jitter)
        self.seed = seed
        if missed not in MISSED_POLICIES:
            raise InvalidArgument(f"entry {name!r}: missed must be one of "
                                  f"{', '.join(MISSED_POLICIES)}, not {missed!r}")
        self.missed: MissedPolicy = missed
        if isinstance(max_catch_up, bool) or not isinstance(max_catch_up, int) \
                or max_catch_up < 1:
            raise InvalidArgument(f"entry {name!r}: max_catch_up must be an int >= 1, "
                                  f"not {max_catch_up!r}")
        self.max_catch_up = max_catch_up
        if not isinstance(grace, int | float) or not math.isfinite(grace) or grace < 0:
            raise InvalidArgument(f"entry {name!r}: grace must be >= 0 seconds, not {grace!r}")
        self.grace = float(grace)
        if headers is not None and not all(isinstance(k, str) and isinstance(v, str)
                                           for k, v in headers.items()):
            raise InvalidArgument(f"entry {name!r}: headers must map str to str")
        self.headers: dict[str, str] = dict(headers or {})
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                     or not PRIORITY_MIN <= priority <= PRIORITY_MAX):
            raise InvalidArgument(f"entry {name!r}: priority must be an int in "
                                  f"{PRIORITY_MIN}..{PRIORITY_MAX}, not {priority!r}")
        self.priority = priority
        if delay is not None and (not isinstance(delay, int | float) or delay < 0):
            raise InvalidArgument(f"entry {name!r}: delay must be >= 0 seconds, not {delay!r}")
        self.delay = delay

    def __repr__(self) -> str:
        when = f"cron={self.cron!r}, tz={self.tz}" if self.cron else f"every={self.every_ms}ms"
        return f"Entry({self.name!r}, {when}, missed={self.missed!r})"

    def needs(self) -> Capability:
        """The driver capabilities this entry's enqueue options use."""
        need = Capability(0)
        if self.headers:
            need |= Capability.HEADERS
        if self.priority is not None:
            need |= Capability.PRIORITY
        if self.delay:
            need |= Capability.DELAY
        return need

    def make_body(self, tick: Tick) -> bytes:
        """The body of the job for ``tick``.

        Raises:
            InvalidBody: The body callable returned something other than bytes.
        """
        if isinstance(self.body, bytes):
            return self.body
        out = self.body(tick)
        if isinstance(out, bytearray | memoryview):
            out = bytes(out)
        if not isinstance(out, bytes):
            raise InvalidBody(f"entry {self.name!r}: the body callable returned "
                              f"{type(out).__name__}, not bytes")
        return out

    # -- tick computation ----------------------------------------------------------------------
    def _tick(self, epoch_ms: int, at: dt.datetime | None = None) -> Tick:
        if at is None:
            at = dt.datetime.fromtimestamp(epoch_ms / 1000, self.tz)
        due = epoch_ms / 1000
        if self.jitter:
            # The same offset in every process: a str seed hashes deterministically.
            due += random.Random(f"{self.seed}:{self.name}:{epoch_ms}").random() * self.jitter
        return Tick(self.name, at, epoch_ms, due)

    def _skip_repeat(self, at: dt.datetime) -> bool:
        # On a fall-back day croniter yields a fixed-hour time (02:30) twice, once per UTC
        # offset; like Vixie cron we run it once. Wildcard hours are real, distinct hours.
        # (croniter sets `fold` on unambiguous times too, where it means nothing.)
        return (self._cron_hour_fixed and at.fold == 1
                and at.replace(fold=0).utcoffset() != at.utcoffset())

    def next_tick(self, after: float) -> Tick:
        """The first tick scheduled strictly after ``after`` (seconds since the epoch)."""
        if self.every_ms is not None:
            k = math.floor(after * 1000) // self.every_ms + 1
            return self._tick(k * self.every_ms)
        from croniter import croniter

        assert self.cron is not None
        it = croniter(self.cron, dt.datetime.fromtimestamp(after, self.tz))
        while True:
            at = it.get_next(dt.datetime)
            if not self._skip_repeat(at):
                return self._tick(round(at.timestamp() * 1000), at)

    def ticks_between(self, after: float, until: float, limit: int) -> tuple[list[Tick], bool]:
        """Ticks scheduled in ``(after, until]``: the latest ``limit`` of them, oldest first.

        Returns:
            The ticks, and whether older ones in the range were left out.
        """
        if until <= after:
            return [], False
        if self.every_ms is not None:
            first = math.floor(after * 1000) // self.every_ms + 1
            last = math.floor(until * 1000) // self.every_ms
            start = max(first, last - limit + 1)
            return [self._tick(k * self.every_ms) for k in range(start, last + 1)], start > first
        from croniter import croniter

        # Walk back from `until` (a long downtime must not cost one step per missed tick);
        # half a second past the last whole second makes a tick at `until` itself count.
        assert self.cron is not None
        it = croniter(self.cron, dt.datetime.fromtimestamp(math.floor(until) + 0.5, self.tz))
        out: list[Tick] = []
        while True:
            at = it.get_prev(dt.datetime)
            ms = round(at.timestamp() * 1000)
            if ms <= after * 1000:
                return out[::-1], False
            if self._skip_repeat(at):
                continue
            if len(out) == limit:
                return out[::-1], True
            out.append(self._tick(ms, at))


def _croniter() -> Any:
    """The croniter class, or a DriverUnavailable naming the extra that installs it."""
    try:
        from croniter import croniter
    except ImportError as exc:
        raise DriverUnavailable("cron entries need croniter: pip install 'unifiedq[scheduler]'",
                                extra="scheduler") from exc
    return croniter


def _zone(tz: object) -> dt.tzinfo:
    if isinstance(tz, dt.tzinfo):
        return tz
    if not isinstance(tz, str):
        raise InvalidArgument(f"tz must be an IANA time zone name or a tzinfo, not {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidArgument(f"unknown time zone {tz!r} (an IANA name such as "
                              f"'Europe/Berlin')") from exc


@dataclasses.dataclass(slots=True)
class Plan:
    """What one pass of the scheduler does for one entry.

    Attributes:
        fire: Ticks to enqueue now, oldest first.
        skipped: Ticks dropped by the missed-tick policy.
        skipped_more: Older missed ticks beyond ``max_catch_up`` were dropped too (uncounted).
        last_ms: Every tick at or before this time (ms since the epoch) is dealt with.
    """

    fire: list[Tick]
    skipped: list[Tick]
    skipped_more: bool
    last_ms: int


def plan_ticks(entry: Entry, last: float, now: float) -> Plan:
    """Apply ``entry``'s missed-tick policy to the ticks after ``last`` that are due at ``now``.

    Args:
        entry: The entry.
        last: Every tick scheduled at or before this time (seconds) was already dealt with.
        now: The current time (seconds since the epoch).

    Returns:
        The plan; a tick whose jittered enqueue time is still ahead waits (with every later
        one) for a later pass.
    """
    ticks, more = entry.ticks_between(last, now, entry.max_catch_up)
    ready: list[Tick] = []
    for t in ticks:
        if t.due > now:
            break
        ready.append(t)
    last_ms = ready[-1].epoch_ms if ready else math.floor(last * 1000)
    if not ready:
        return Plan([], [], False, last_ms)
    missed = [t for t in ready if now - t.due > entry.grace]
    more = more and bool(missed)
    if not missed:
        return Plan(ready, [], False, last_ms)
    if entry.missed == "skip":
        on_time = [t for t in ready if now - t.due <= entry.grace]
        return Plan(on_time, missed, more, last_ms)
    if entry.missed == "once":
        return Plan(ready[-1:], ready[:-1], more, last_ms)
    return Plan(ready, [], more, last_ms)


def target_capabilities(target: Any) -> Capability:
    """A target's capabilities without I/O: an open queue's own, or its driver class's.

    Raises:
        InvalidURL: A malformed URL.
        DriverNotFound: No driver for the URL's scheme.
    """
    if not isinstance(target, str):
        return Capability(target.capabilities)
    drv = get_driver(parse_url(target).scheme)
    cls = drv.sync_class or drv.async_class
    if cls is None:  # pragma: no cover - get_driver refuses such modules
        raise DriverNotFound(f"no queue class for {target!r}")
    return Capability(getattr(cls, "capabilities", Capability(0)))


def check_target(entry: Entry, *, lease: bool, single: bool) -> Capability:
    """Refuse, before any I/O, an entry whose target cannot be scheduled exactly once.

    Returns:
        The target's capabilities.

    Raises:
        ConfigurationError: The target lacks CUSTOM_ID and neither ``lease=`` nor
            ``single=True`` was given.
        UnsupportedOperation: The entry uses headers, priority or delay the driver lacks.
    """
    caps = target_capabilities(entry.target)
    where = entry.target if not isinstance(entry.target, str) else parse_url(entry.target)
    driver = getattr(where, "driver", None) or getattr(where, "scheme", "?")
    if Capability.CUSTOM_ID not in caps and not lease and not single:
        raise ConfigurationError(
            f"entry {entry.name!r}: the {driver!r} driver lacks Capability.CUSTOM_ID, so two "
            f"schedulers cannot tell a tick was enqueued already; pass lease='redis://...' "
            f"(a claim per tick) or single=True (you run exactly one scheduler)")
    need = entry.needs()
    if need:
        require(caps, need, driver=str(driver), what=f"entry {entry.name!r}'s enqueue options")
    return caps


# -- the memory:// lease store (one process: tests, single-host setups) ------------------------
class MemoryLeaseState:
    """Claims of one ``memory://NAME`` lease store, shared by every scheduler of the process."""

    _stores: dict[str, MemoryLeaseState] = {}
    _stores_lock = threading.Lock()

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: dict[str, tuple[str, float]] = {}  # key -> (value, expiry on monotonic)

    @classmethod
    def named(cls, name: str) -> MemoryLeaseState:
        """The store called ``name`` (created on first use)."""
        with cls._stores_lock:
            return cls._stores.setdefault(name, cls())

    def get(self, key: str) -> str | None:
        """The live value of ``key``."""
        with self.lock:
            v = self.keys.get(key)
            if v is None or v[1] <= time.monotonic():
                self.keys.pop(key, None)
                return None
            return v[0]

    def set(self, key: str, value: str, ttl: float, *, nx: bool = False) -> str | None:
        """Set ``key`` for ``ttl`` seconds; with ``nx``, only if unset (else its value)."""
        with self.lock:
            now = time.monotonic()
            v = self.keys.get(key)
            if nx and v is not None and v[1] > now:
                return v[0]
            self.keys[key] = (value, now + ttl)
            return None

    def delete_if(self, key: str, value: str) -> None:
        """Delete ``key`` if it holds ``value``."""
        with self.lock:
            v = self.keys.get(key)
            if v is not None and v[0] == value:
                del self.keys[key]

    def set_max(self, key: str, value: float, ttl: float) -> None:
        """Set ``key`` to ``value`` unless it holds a larger number."""
        with self.lock:
            v = self.keys.get(key)
            if v is None or float(v[0]) < value:
                self.keys[key] = (repr(value), time.monotonic() + ttl)
