"""The shm:// ring and what both faces share: everything that never waits.

The segment layout, Vyukov's algorithm with crash repair (:class:`_Ring`), the options, and
:class:`_ShmCommon`: a handle's state and the enqueue "plans" both faces run. The faces
(``_async/queue.py``, and ``_sync/queue.py`` generated from it) add only how to wait.
The package docstring (``unifiedq.drivers.shm``) describes the driver.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import mmap
import os
import re
import struct
import threading
import time
import weakref
from collections.abc import Callable, Generator, Mapping
from typing import Any, Literal, TypeVar

from ..._capabilities import Capability
from ..._errors import (
    BackendError,
    InvalidArgument,
    InvalidURL,
    LimitExceeded,
    QueueClosed,
    QueueFull,
    QueueTimeout,
)
from ..._job import _EMPTY, Job, make_job
from ..._url import URL, parse_options
from .. import _shm_atomics

try:
    import _posixshmem  # type: ignore[import-not-found]  # the module multiprocessing.shared_memory uses, without its tracker
except ImportError:  # pragma: no cover - Windows
    _posixshmem = None

__all__ = ["CapacityExceeded", "EnqueueTimeout", "ShmOptions", "exists", "unlink"]

T = TypeVar("T")
#: An enqueue path that may wait: yields (fn, timeout) or (None, seconds); see _ShmCommon.
_Plan = Generator[tuple[Callable[[], Any] | None, float], Any, T]
log = logging.getLogger("unifiedq.drivers.shm")

# -- segment layout (all offsets in bytes; every shared field is an aligned 64-bit word) -------
MAGIC = int.from_bytes(b"UQSHMRNG", "little")
LAYOUT_VERSION = 1
_W_MAGIC, _W_VERSION, _W_CAPACITY, _W_SLOT_SIZE, _W_STRIDE, _W_OWNERS = 0, 1, 2, 3, 4, 5
_W_INIT = 6  # identity of the process initialising the segment (see _open_segment)
_W_HEAD = 8  # offset 64: producer ticket hint, alone on its cache line
_W_TAIL = 16  # offset 128: consumer ticket hint, alone on its cache line
_OWNERS = 1024  # owner table entries (one per open handle)
_W_OWNER0 = 32  # offset 256: owner table, one word per entry: pid << 32 | start time (low 32)
_SLOTS_OFF = 256 + 8 * _OWNERS  # 8448, a multiple of 64
_SLOT_HDR = 64  # seq word + metadata, then the body
# Slot metadata after the seq word: body length, id length, flags, enqueued_at, id bytes.
_META = struct.Struct("<IHHd40s")
_ID_MAX = 40
_PACKS: dict[int, struct.Struct] = {}  # body length -> metadata-and-body Struct


def _pack_for(n: int) -> struct.Struct:
    """The Struct packing a slot's metadata and an ``n``-byte body in one call (cached)."""
    if len(_PACKS) >= 4096:  # bodies of many different lengths: keep the cache bounded
        _PACKS.clear()
    st = _PACKS[n] = struct.Struct(f"<IHHd{_ID_MAX}s{n}s")
    return st

# -- slot seq word ------------------------------------------------------------------------------
# A normal value v means: v == ticket -> free for the producer of that ticket; v == ticket+1 ->
# holds that ticket's job; v == ticket+capacity -> consumed (free for ticket+capacity).
# A marker (top bit set) means a process claimed the slot and is writing or reading it; it
# names the owner (index into the owner table) and the ticket, so that a waiter can tell a dead
# owner and repair the slot by setting it to ticket+capacity (the job is lost, nothing wedges).
_MARK = 1 << 63
_CONSUMER = 1 << 62
_OWNER_SHIFT = 46
_TBITS = 46
_TMASK = (1 << _TBITS) - 1
_THALF = 1 << (_TBITS - 1)

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")
_INIT_TIMEOUT = 2.0  # how long an attacher waits for a concurrent creator to initialise


def _corrupt(n: int, idn: int) -> BackendError:
    return BackendError(f"corrupt shm slot (body length {n}, id length {idn}): job dropped; "
                        f"is another program writing to the segment?")


def _ticket(s: int, ref: int) -> int:
    """Rebuild the full ticket of marker ``s`` from its low bits, nearest to ``ref``."""
    d = ((s & _TMASK) - ref) & _TMASK
    return ref + (d - (1 << _TBITS) if d >= _THALF else d)


# -- process identity and liveness --------------------------------------------------------------
_ident_cache: int | None = None


def _proc_stat(pid: int | str) -> tuple[str, int] | None:
    """Return (state, start time in clock ticks) from /proc, or None when unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        return rest[0].decode(), int(rest[19])
    except (IndexError, ValueError):  # pragma: no cover - exotic /proc
        return None


def _ident() -> int:
    """This process's owner identity: pid << 32 | low 32 bits of its start time."""
    global _ident_cache
    if _ident_cache is None:
        st = _proc_stat("self")
        _ident_cache = (os.getpid() << 32) | ((st[1] if st else 0) & 0xFFFFFFFF)
    return _ident_cache


def _alive(ident: int) -> bool:
    """Whether the process named by an owner identity still runs (pid reuse detected)."""
    if ident == 0:
        return False
    pid, start = ident >> 32, ident & 0xFFFFFFFF
    if pid == os.getpid():
        return ident == _ident()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    st = _proc_stat(pid)
    if st is None:
        return not os.path.isdir("/proc/self")  # no /proc: trust kill(); else it just died
    state, started = st
    if state in ("Z", "X", "x"):  # killed but not yet reaped: dead for us
        return False
    return not start or (started & 0xFFFFFFFF) == start


_rings: weakref.WeakSet[_Ring] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _ident_cache
    _ident_cache = None
    for ring in list(_rings):
        try:
            ring.after_fork()
        except Exception:  # pragma: no cover - must never break fork()
            ring.owner = -1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- options ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class ShmOptions:
    """Options of ``shm://`` URLs.

    Attributes:
        capacity: Jobs the ring holds (fixed when the segment is created); at least 2.
        slot_size: Largest body in bytes (fixed when the segment is created).
        overflow: What ``enqueue`` does on a full ring: ``block`` waits up to
            ``enqueue_timeout`` then raises :class:`EnqueueTimeout`; ``reject`` raises
            :class:`~unifiedq.QueueFull` at once; ``drop_oldest`` discards the oldest jobs.
        enqueue_timeout: Seconds a ``block`` enqueue waits for room.
        spin: Seconds a waiter keeps retrying before it starts sleeping.
        max_sleep: Longest sleep between retries while waiting, in seconds.
        repair_after: Seconds a slot must stay claimed before a waiter checks whether its
            owner process is still alive (keeps liveness checks off the hot path).
    """

    capacity: int = 4096
    slot_size: int = 256
    overflow: Literal["block", "reject", "drop_oldest"] = "block"
    enqueue_timeout: float = 10.0
    spin: float = 0.0002
    max_sleep: float = 0.001
    repair_after: float = 0.01

    def __post_init__(self) -> None:
        if not 2 <= self.capacity <= 1 << 30:
            raise ValueError(f"capacity must be between 2 and 2**30 jobs, not {self.capacity}")
        if not 1 <= self.slot_size <= 1 << 26:
            raise ValueError(f"slot_size must be between 1 and 2**26 bytes, not {self.slot_size}")
        for field in ("enqueue_timeout", "spin", "max_sleep", "repair_after"):
            v = getattr(self, field)
            if not 0 <= v < float("inf"):
                raise ValueError(f"{field} must be a finite number of seconds >= 0, not {v}")

    @property
    def stride(self) -> int:
        """Bytes per slot: header plus body, rounded up to a 64-byte cache line."""
        return _SLOT_HDR + (self.slot_size + 63) // 64 * 64

    @property
    def segment_size(self) -> int:
        """Bytes of the whole segment."""
        return _SLOTS_OFF + self.capacity * self.stride


class EnqueueTimeout(QueueFull, QueueTimeout):
    """A ``block`` enqueue found the ring full for ``enqueue_timeout`` seconds.

    It is both a :class:`~unifiedq.QueueFull` and a :class:`~unifiedq.QueueTimeout`, so either
    ``except`` clause catches it.
    """


class CapacityExceeded(LimitExceeded, QueueFull):
    """An all-or-nothing batch (``overflow=reject``) is larger than the ring's capacity.

    Waiting would never help, so it is a :class:`~unifiedq.LimitExceeded` (``limit`` is
    ``"capacity"``, ``size`` and ``maximum`` count jobs, not bytes); it is also a
    :class:`~unifiedq.QueueFull`, which is what such a batch raised before.
    """


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise InvalidURL(
            f"shm queue names use 1-200 letters, digits, '.', '_' or '-', not {name!r}"
        )
    return name


def unlink(name: str) -> bool:
    """Remove the shared-memory segment of queue ``name``; return whether it existed.

    Handles that are already attached keep working on the old segment until they close; the
    next handle to touch ``name`` creates a new, empty one.
    """
    _check_name(name)
    if _posixshmem is None:  # pragma: no cover
        raise BackendError("shm:// needs POSIX shared memory, which this platform lacks")
    try:
        _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        return False
    return True


def exists(name: str) -> bool:
    """Return whether the segment of queue ``name`` exists."""
    _check_name(name)
    if _posixshmem is None:  # pragma: no cover
        return False
    try:
        fd = _posixshmem.shm_open("/" + name, os.O_RDONLY, 0o600)
    except FileNotFoundError:
        return False
    except PermissionError:
        return True
    os.close(fd)
    return True


# -- the ring -----------------------------------------------------------------------------------
class _Ring:
    """One mapping of a segment and the algorithm; knows nothing of jobs or faces."""

    def __init__(self, name: str, opts: ShmOptions) -> None:
        self.name = name
        self.mm = _open_segment(name, opts)
        self.w = _shm_atomics.bind(self.mm)
        self.plain = self.w.plain
        #: The compiled fast path (``_shmring.Segment``), or None on the pure-Python path.
        self.c = self.w.seg
        try:
            self._check_layout(opts)
            if self.c is not None:
                self.c.configure(opts.capacity, opts.stride, opts.slot_size, _SLOTS_OFF // 8,
                                 _W_HEAD, _W_TAIL)
                self.c.configure_jobs(Job, name, _EMPTY)
            self.cap = opts.capacity
            self.stride_w = opts.stride // 8
            self.slot_size = opts.slot_size
            self.grace = opts.repair_after
            self._suspect = 0
            self._suspect_since = 0.0
            self.owner = -1
            self.pmark = self.cmark = 0
            self._register()
        except BaseException:
            self.w.release()
            self.mm.close()
            raise
        _rings.add(self)

    # -- setup ----------------------------------------------------------------------------------
    def _check_layout(self, opts: ShmOptions) -> None:
        magic = self.w.load(_W_MAGIC)
        p = self.plain
        if magic != MAGIC:
            raise InvalidURL(f"shared-memory object {self.name!r} is not a unifiedq shm queue")
        if p[_W_VERSION] != LAYOUT_VERSION:
            raise InvalidURL(
                f"shm queue {self.name!r} has layout version {p[_W_VERSION]}, this unifiedq "
                f"uses {LAYOUT_VERSION}; drain and unlink it, or use a matching unifiedq"
            )
        have = (p[_W_CAPACITY], p[_W_SLOT_SIZE], p[_W_OWNERS])
        if have != (opts.capacity, opts.slot_size, _OWNERS):
            raise InvalidURL(
                f"shm queue {self.name!r} exists with capacity={have[0]} and "
                f"slot_size={have[1]}, but this handle asked for capacity={opts.capacity} and "
                f"slot_size={opts.slot_size}; use the same settings in every process (or "
                f"unlink the queue to re-create it)"
            )
        if len(self.mm) < _SLOTS_OFF + opts.capacity * p[_W_STRIDE]:
            raise InvalidURL(f"shm segment {self.name!r} is truncated")

    def _set_owner(self, idx: int) -> None:
        self.owner = idx
        self.pmark = _MARK | (idx << _OWNER_SHIFT)
        self.cmark = self.pmark | _CONSUMER
        if self.c is not None:
            self.c.set_marks(self.pmark, self.cmark)

    def _register(self) -> None:
        """Take an owner-table entry so that our slot claims can be attributed to us."""
        me, p, cas = _ident(), self.plain, self.w.cas
        for i in range(_OWNERS):
            if p[_W_OWNER0 + i] == 0 and cas(_W_OWNER0 + i, 0, me):
                self._set_owner(i)
                return
        for i in range(_OWNERS):  # full: reclaim the entry of a dead process
            old = self.w.load(_W_OWNER0 + i)
            if old and not _alive(old) and self._scrub(i, old) and cas(_W_OWNER0 + i, old, me):
                self._set_owner(i)
                return
        raise BackendError(
            f"shm queue {self.name!r}: all {_OWNERS} owner entries are held by live handles; "
            f"close handles you no longer use"
        )

    def _scrub(self, idx: int, dead: int) -> bool:
        """Repair every slot claimed by dead entry ``idx``; False if the entry was retaken."""
        load, cas, ref = self.w.load, self.w.cas, self.plain[_W_HEAD]
        first = _SLOTS_OFF // 8
        for k in range(self.cap):
            si = first + k * self.stride_w
            s = load(si)
            if s & _MARK and (s >> _OWNER_SHIFT) & 0xFFFF == idx:
                if load(_W_OWNER0 + idx) != dead:  # someone else reclaimed (and scrubbed) it
                    return False
                cas(si, s, _ticket(s, ref) + self.cap)
        return True

    def after_fork(self) -> None:
        """In a forked child: the inherited entry is the parent's; take our own."""
        self.owner = -1
        self._register()

    def detach(self) -> None:
        """Give back our owner entry; the mapping goes when the last reference does."""
        if self.owner >= 0 and self.w.cas(_W_OWNER0 + self.owner, _ident(), 0):
            self.owner = -1
        _rings.discard(self)

    # -- liveness -------------------------------------------------------------------------------
    def _stale(self, s: int) -> bool:
        """Whether claim marker ``s`` has sat in a slot long enough and its owner is dead."""
        idx = (s >> _OWNER_SHIFT) & 0xFFFF
        if idx == self.owner:
            return False
        now = time.monotonic()
        if s != self._suspect:
            self._suspect, self._suspect_since = s, now
            return False
        if now - self._suspect_since < self.grace:
            return False
        self._suspect_since = now  # next check after another grace period
        return not _alive(self.w.load(_W_OWNER0 + idx))

    # -- classification of a slot that is not ready for us ---------------------------------------
    def _blocked_put(self, pos: int, si: int, s: int) -> bool:
        """Producer at ``pos`` saw ``s``: help or repair and return True to retry; False = full."""
        p = self.plain
        if s & _MARK:
            t = _ticket(s, pos)
            if t >= pos:  # ticket pos was claimed: move the hint on
                if p[_W_HEAD] == pos:
                    p[_W_HEAD] = pos + 1
                return True
            if self._stale(s):  # the previous lap's owner died mid-operation
                self.w.cas(si, s, t + self.cap)
                return True
            return False
        if s > pos:
            if p[_W_HEAD] == pos:
                p[_W_HEAD] = pos + 1
            return True
        return False  # the previous lap's job is still there: full

    def _blocked_get(self, pos: int, si: int, s: int) -> bool:
        """Consumer at ``pos`` saw ``s``: help or repair and return True to retry; False = empty."""
        p = self.plain
        if s & _MARK:
            t = _ticket(s, pos)
            if t > pos or (t == pos and s & _CONSUMER):
                if p[_W_TAIL] == pos:
                    p[_W_TAIL] = pos + 1
                return True
            if self._stale(s):  # a producer died before publishing (or an old consumer)
                self.w.cas(si, s, t + self.cap)
                return True
            return False
        if s > pos + 1:
            if p[_W_TAIL] == pos:
                p[_W_TAIL] = pos + 1
            return True
        return False

    def _repair(self, s: int, hint: int) -> bool:
        """The compiled path is stuck on claim ``s``: free the slot if its owner died.

        Returns True when the slot was repaired (retry), False when the claim is live (the
        ring is full or empty for now). ``hint`` is the head or tail word the caller used.
        """
        if not self._stale(s):
            return False
        t = _ticket(s, self.plain[hint])
        self.w.cas(_SLOTS_OFF // 8 + (t % self.cap) * self.stride_w, s, t + self.cap)
        return True

    # -- operations -----------------------------------------------------------------------------
    # Each verb runs the compiled fast path when it is there (``self.c``), else the same
    # algorithm in Python below; both may work on one ring at the same time.
    def put(self, body: bytes, jid: str, now: float) -> bool:
        """Append one job; False when the ring is full."""
        c = self.c
        if c is None:
            return self._put_py(body, jid.encode(), now)
        while r := c.put(body, jid, now):
            if r == 1 or not self._repair(r, _W_HEAD):
                return False
        return True

    def put_many(self, bodies: list[bytes], ids: list[str], now: float) -> int:
        """Append jobs in order; return how many fit."""
        c = self.c
        if c is None:
            items = [(b, j.encode()) for b, j in zip(bodies, ids, strict=True)]
            return self._put_many_py(items, now)
        n, done = len(bodies), c.put_many(bodies, ids, now)
        # Stopped short: full, or stuck on a claim that put() may repair (or an error to raise).
        while done < n and self.put(bodies[done], ids[done], now):
            done += 1
            done += c.put_many(bodies[done:], ids[done:], now)
        return done

    def take(self) -> Job | None:
        """Take the oldest job as a :class:`~unifiedq.Job`; None when there is none now."""
        c = self.c
        if c is None:
            item = self._get_py()
            return None if item is None else make_job(item[1], self.name, item[0], 1, item[2])
        while True:
            try:
                r = c.take()
            except ValueError as exc:  # a corrupt slot (freed, its job dropped)
                raise BackendError(f"shm queue {self.name!r}: {exc}") from exc
            if type(r) is Job:
                return r
            if r == 1 or not self._repair(r, _W_TAIL):  # type: ignore[arg-type]
                return None

    def take_many(self, limit: int) -> list[Job]:
        """Take up to ``limit`` jobs in order."""
        c = self.c
        if c is None:
            name = self.name
            return [make_job(j, name, b, 1, at) for b, j, at in self._get_many_py(limit)]
        out: list[Job] = []
        errors: list[Exception] = []
        while True:
            out += c.take_many(limit - len(out), errors)
            if errors:  # a corrupt slot (freed, its job dropped): stop there
                return self._batch_error(out, BackendError(f"shm queue {self.name!r}: "
                                                           f"{errors[0]}"))
            if len(out) >= limit:
                return out
            # Stopped short: empty, or stuck on a claim that take() may repair.
            try:
                job = self.take()
            except BackendError as exc:
                return self._batch_error(out, exc)
            if job is None:
                return out
            out.append(job)

    def _batch_error(self, out: list[T], exc: BackendError) -> list[T]:
        """A batch met a corrupt slot: hand over the jobs taken before it, or raise."""
        if not out:
            raise exc
        log.error("%s (after %d good jobs of this batch)", exc, len(out))
        return out

    def get(self) -> tuple[bytes, str, float] | None:
        """Take the oldest job; None when there is nothing to take now."""
        c = self.c
        if c is None:
            return self._get_py()
        while True:
            try:
                r = c.get()
            except ValueError as exc:
                raise BackendError(f"shm queue {self.name!r}: {exc}") from exc
            if type(r) is tuple:
                return r
            if r == 1 or not self._repair(r, _W_TAIL):  # type: ignore[arg-type]
                return None

    def get_many(self, limit: int) -> list[tuple[bytes, str, float]]:
        """Take up to ``limit`` jobs in order."""
        c = self.c
        if c is None:
            return self._get_many_py(limit)
        get = c.get
        out: list[tuple[bytes, str, float]] = []
        while len(out) < limit:
            try:
                r = get()
            except ValueError as exc:
                return self._batch_error(out, BackendError(f"shm queue {self.name!r}: {exc}"))
            if type(r) is tuple:
                out.append(r)
            elif r == 1 or not self._repair(r, _W_TAIL):  # type: ignore[arg-type]
                break
        return out

    def _put_py(self, body: bytes, jid: bytes, now: float) -> bool:
        p, w, cap = self.plain, self.w, self.cap
        first, sw = _SLOTS_OFF // 8, self.stride_w
        while True:
            pos = p[_W_HEAD]
            si = first + (pos % cap) * sw
            s = w.load(si)
            if s == pos:
                if not w.cas(si, pos, self.pmark | (pos & _TMASK)):
                    continue
                if p[_W_HEAD] == pos:
                    p[_W_HEAD] = pos + 1
                n = len(body)
                # Metadata and body in one pack: the body starts right after the header.
                (_PACKS.get(n) or _pack_for(n)).pack_into(
                    self.mm, si * 8 + 8, n, len(jid), 0, now, jid, body)
                w.store(si, pos + 1)  # publish (release)
                return True
            if not self._blocked_put(pos, si, s):
                return False

    def _put_many_py(self, items: list[tuple[bytes, bytes]], now: float) -> int:
        """Append jobs in order, claiming runs of consecutive slots; return how many fit."""
        p, load, cas, cap, mm = self.plain, self.w.load, self.w.cas, self.cap, self.mm
        first, sw, pmark, store = _SLOTS_OFF // 8, self.stride_w, self.pmark, self.w.store
        done, n = 0, len(items)
        while done < n:
            pos = p[_W_HEAD]
            si = first + (pos % cap) * sw
            s = load(si)
            if s == pos:
                if not cas(si, pos, pmark | (pos & _TMASK)):
                    continue
                run = [si]
                nxt = pos + 1
                while done + len(run) < n:
                    sj = first + (nxt % cap) * sw
                    if load(sj) != nxt or not cas(sj, nxt, pmark | (nxt & _TMASK)):
                        break
                    run.append(sj)
                    nxt += 1
                if p[_W_HEAD] < nxt:
                    p[_W_HEAD] = nxt
                for k, sj in enumerate(run):
                    body, jid = items[done + k]
                    size = len(body)
                    (_PACKS.get(size) or _pack_for(size)).pack_into(
                        mm, sj * 8 + 8, size, len(jid), 0, now, jid, body)
                    store(sj, pos + k + 1)
                done += len(run)
                continue
            if not self._blocked_put(pos, si, s):
                break
        return done

    def _read(self, off: int) -> tuple[bytes, str, float]:
        n, idn, _flags, at, jid = _META.unpack_from(self.mm, off + 8)
        if n > self.slot_size or idn > _ID_MAX:
            raise _corrupt(n, idn)
        start = off + _SLOT_HDR
        return self.mm[start : start + n], jid[:idn].decode("utf-8", "replace"), at

    def _get_py(self) -> tuple[bytes, str, float] | None:
        p, w, cap = self.plain, self.w, self.cap
        first, sw = _SLOTS_OFF // 8, self.stride_w
        while True:
            pos = p[_W_TAIL]
            si = first + (pos % cap) * sw
            s = w.load(si)
            if s == pos + 1:
                if not w.cas(si, s, self.cmark | (pos & _TMASK)):
                    continue
                if p[_W_TAIL] == pos:
                    p[_W_TAIL] = pos + 1
                try:
                    return self._read(si * 8)
                finally:
                    w.store(si, pos + cap)  # free for the next lap (release), even if corrupt
            if not self._blocked_get(pos, si, s):
                return None

    def _get_many_py(self, limit: int) -> list[tuple[bytes, str, float]]:
        """Take up to ``limit`` jobs in order, claiming runs of consecutive slots."""
        p, load, cas, cap = self.plain, self.w.load, self.w.cas, self.cap
        first, sw, cmark, store = _SLOTS_OFF // 8, self.stride_w, self.cmark, self.w.store
        out: list[tuple[bytes, str, float]] = []
        while len(out) < limit:
            pos = p[_W_TAIL]
            si = first + (pos % cap) * sw
            s = load(si)
            if s == pos + 1:
                if not cas(si, s, cmark | (pos & _TMASK)):
                    continue
                run = [si]
                nxt = pos + 1
                while len(out) + len(run) < limit:
                    sj = first + (nxt % cap) * sw
                    if load(sj) != nxt + 1 or not cas(sj, nxt + 1, cmark | (nxt & _TMASK)):
                        break
                    run.append(sj)
                    nxt += 1
                if p[_W_TAIL] < nxt:
                    p[_W_TAIL] = nxt
                bad = None
                for k, sj in enumerate(run):
                    # Every claimed slot is read and freed: the tail hint is already past the
                    # run, so a slot given back unread would never be reached again.
                    try:
                        out.append(self._read(sj * 8))
                    except BackendError as exc:
                        bad = exc
                    store(sj, pos + k + cap)
                if bad is not None:
                    return self._batch_error(out, bad)
                continue
            if not self._blocked_get(pos, si, s):
                break
        return out

    def peek(self) -> tuple[bytes, str, float] | None:
        """Copy the oldest job without taking it (seqlock: re-check the slot after copying)."""
        p, load, cap = self.plain, self.w.load, self.cap
        first, sw = _SLOTS_OFF // 8, self.stride_w
        for _ in range(1000):
            pos = p[_W_TAIL]
            si = first + (pos % cap) * sw
            s = load(si)
            if s == pos + 1:
                item = self._read(si * 8)
                # Any writer must first swap the seq word, so an unchanged word means an
                # untorn copy. Off x86 a CAS orders our reads before the re-check.
                same = load(si) == s if _shm_atomics.TSO else self.w.cas(si, s, s)
                if same:
                    return item
                continue
            if not self._blocked_get(pos, si, s):
                return None
        return None  # pragma: no cover - endless churn; best-effort by contract

    def _settle_hint(self, w: int, consumer: bool) -> int:
        blocked = self._blocked_get if consumer else self._blocked_put
        first, sw, cap = _SLOTS_OFF // 8, self.stride_w, self.cap
        for _ in range(2 * cap + 2):
            pos = self.plain[w]
            si = first + (pos % cap) * sw
            s = self.w.load(si)
            if s == (pos + 1 if consumer else pos) or not blocked(pos, si, s):
                return pos
        return int(self.plain[w])  # pragma: no cover

    def size(self) -> int:
        """Jobs in the ring: exact when no operation is in flight."""
        head = self._settle_hint(_W_HEAD, consumer=False)
        tail = self._settle_hint(_W_TAIL, consumer=True)
        return max(0, min(self.cap, head - tail))

    def purge(self) -> int:
        """Take and drop every job that can be taken now; return how many."""
        n = 0
        while batch := self.get_many(1024):
            n += len(batch)
        return n


def _grow(fd: int, size: int) -> None:
    """Make the segment at least ``size`` bytes; never shrink it (others may map more)."""
    if os.fstat(fd).st_size >= size:
        return
    try:
        os.posix_fallocate(fd, 0, size)  # grow-only, unlike ftruncate
    except (AttributeError, OSError):  # pragma: no cover - no fallocate (macOS) or no support
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)


def _initialise(mm: mmap.mmap, opts: ShmOptions) -> None:
    """Write a fresh header and empty slots; the magic number goes last, with release."""
    w = _shm_atomics.bind(mm)
    try:
        p = w.plain
        for i in range(1, _SLOTS_OFF // 8):
            if i != _W_INIT:
                p[i] = 0  # also wipes whatever a dead initialiser left
        p[_W_VERSION] = LAYOUT_VERSION
        p[_W_CAPACITY] = opts.capacity
        p[_W_SLOT_SIZE] = opts.slot_size
        p[_W_STRIDE] = opts.stride
        p[_W_OWNERS] = _OWNERS
        sw, first = opts.stride // 8, _SLOTS_OFF // 8
        for i in range(opts.capacity):
            p[first + i * sw] = i  # slot i is free for ticket i
        w.store(_W_MAGIC, MAGIC)
    finally:
        w.release()


def _open_segment(name: str, opts: ShmOptions) -> mmap.mmap:
    """Create-or-attach: map the segment, initialising it if nobody (alive) did.

    There is no creator/attacher asymmetry, so that a process killed while creating the
    segment cannot leave it unusable: every opener maps the header, and whoever wins a CAS on
    the initialiser word (free, or held by a dead process) initialises the ring; the others
    wait for the magic number.
    """
    if _posixshmem is None:  # pragma: no cover
        raise BackendError("shm:// needs POSIX shared memory, which this platform lacks")
    try:
        fd = _posixshmem.shm_open("/" + name, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise BackendError(f"cannot open shm queue {name!r}: {exc}") from exc
    try:
        _grow(fd, _SLOTS_OFF)
        hdr = mmap.mmap(fd, _SLOTS_OFF)
        hw = _shm_atomics.bind(hdr)
        try:
            deadline = time.monotonic() + _INIT_TIMEOUT
            while True:
                magic = hw.load(_W_MAGIC)
                if magic == MAGIC:
                    need = _SLOTS_OFF + hw.plain[_W_CAPACITY] * hw.plain[_W_STRIDE]
                    size = os.fstat(fd).st_size
                    if size < need:
                        raise InvalidURL(f"shm segment {name!r} is truncated")
                    return mmap.mmap(fd, need)
                if magic:
                    raise InvalidURL(f"shared-memory object {name!r} is not a unifiedq shm queue")
                holder = hw.load(_W_INIT)
                if (holder == 0 or not _alive(holder)) and hw.cas(_W_INIT, holder, _ident()):
                    _grow(fd, opts.segment_size)
                    mm = mmap.mmap(fd, opts.segment_size)
                    _initialise(mm, opts)
                    return mm
                if time.monotonic() > deadline:
                    raise BackendError(
                        f"shm queue {name!r} is still being initialised by process "
                        f"{holder >> 32} after {_INIT_TIMEOUT}s"
                    )
                time.sleep(0.001)
        finally:
            hw.release()
            hdr.close()
    except OSError as exc:
        raise BackendError(f"cannot map shm queue {name!r}: {exc}") from exc
    finally:
        os.close(fd)


# -- what the faces share -----------------------------------------------------------------------
_CAPS = (
    Capability.PEEK | Capability.BATCH | Capability.BLOCKING_DEQUEUE | Capability.CROSS_PROCESS
    | Capability.BOUNDED
)


class _ShmCommon:
    """State, non-blocking steps and the enqueue paths that may wait, shared by both faces."""

    driver = "shm"
    _name: str
    _closed: bool
    _check_open: Callable[[], None]  # from the face's base class

    def _setup(self, name: str, options: ShmOptions) -> None:
        self.options = options
        self.max_body: int | None = options.slot_size
        self._ring: _Ring | None = None
        self._attach_lock = threading.Lock()
        #: Jobs this handle discarded under ``overflow=drop_oldest``.
        self.dropped = 0

    @classmethod
    def _parse(cls, url: URL, options: Mapping[str, object]) -> tuple[str, ShmOptions]:
        if url.username or url.password or url.path or url.port is not None:
            raise InvalidURL(
                f"shm:// URLs take only a queue name and options, e.g. "
                f"'shm://jobs?capacity=4096', not {url.redacted()!r}"
            )
        name = _check_name(url.authority)
        return name, parse_options(ShmOptions, url.query, options, driver="shm")

    def _attach(self) -> _Ring:
        with self._attach_lock:
            if self._closed:
                raise QueueClosed(f"{self!r} is closed; open a new one with connect()")
            if self._ring is None:
                self._ring = _Ring(self._name, self.options)
            return self._ring

    @staticmethod
    def _check_ids(ids: list[str]) -> None:
        if any(len(jid.encode()) > _ID_MAX for jid in ids):  # pragma: no cover - generated
            raise InvalidArgument(f"shm job ids are at most {_ID_MAX} bytes")

    def _job(self, item: tuple[bytes, str, float]) -> Job:
        body, jid, at = item
        return make_job(jid, self._name, body, 1, at)

    def _full(self, ring: _Ring) -> QueueFull:
        return QueueFull(
            f"shm queue {self._name!r} is full ({ring.cap} jobs) and its overflow policy is "
            f"'reject'; consume faster, raise capacity, or use overflow=block"
        )

    def _timeout(self, ring: _Ring, extra: str = "") -> EnqueueTimeout:
        return EnqueueTimeout(
            f"shm queue {self._name!r} stayed full ({ring.cap} jobs) for "
            f"{self.options.enqueue_timeout}s{extra}; are the consumers running?"
        )

    def _drop_one(self, ring: _Ring) -> bool:
        if ring.get() is None:
            return False
        self.dropped += 1
        return True

    # -- enqueue paths that may wait, written once for both faces -----------------------------
    # A plan is a generator that yields what it wants to wait for: ``(fn, timeout)`` = retry
    # ``fn`` until it returns non-None (sent back, or None on timeout), ``(None, seconds)`` =
    # sleep. Each face runs it with its ``_wait`` (``_async/queue.py``), blocking or awaiting.
    def _put_plan(self, ring: _Ring, body: bytes, jid: str) -> _Plan[str]:
        """Enqueue one job when the fast path found the ring full (or no compiled module)."""
        self._check_ids([jid])
        now = time.time()
        if ring.put(body, jid, now):
            return jid
        mode = self.options.overflow
        if mode == "reject":
            raise self._full(ring)
        if mode == "drop_oldest":
            while not ring.put(body, jid, now):
                if not self._drop_one(ring):
                    yield None, 0.0001  # the oldest slot is mid-operation; let it finish
                self._check_open()
            return jid
        if (yield lambda: _ok(ring.put(body, jid, now)), self.options.enqueue_timeout) is None:
            raise self._timeout(ring)
        return jid

    def _put_many_plan(self, bodies: list[bytes], ids: list[str]) -> _Plan[list[str]]:
        """Enqueue a batch in order, following the overflow policy."""
        n, mode, cap = len(ids), self.options.overflow, self.options.capacity
        if mode == "reject" and n > cap:
            # All-or-nothing can never hold more than the ring: a shape error, not a full ring
            # (block streams a larger batch through as consumers make room; drop_oldest keeps
            # its last ``capacity`` jobs).
            raise CapacityExceeded(
                f"enqueue_many() of {n} jobs on shm queue {self._name!r} with "
                f"overflow='reject' can never fit its capacity of {cap} jobs; nothing was "
                f"enqueued", limit="capacity", size=n, maximum=cap)
        ring = self._ring or self._attach()
        self._check_ids(ids)
        now = time.time()
        if mode == "reject" and n > ring.cap - ring.size():
            raise QueueFull(
                f"shm queue {self._name!r} has room for {max(0, ring.cap - ring.size())} jobs, "
                f"not {n}; nothing was enqueued"
            )
        done = ring.put_many(bodies, ids, now)
        deadline = time.monotonic() + self.options.enqueue_timeout
        while done < n:
            if mode == "reject":  # a concurrent producer took the room we saw
                raise QueueFull(f"shm queue {self._name!r} filled up: enqueued only the "
                                f"first {done} of {n} jobs")
            if mode == "drop_oldest":
                if not self._drop_one(ring):
                    yield None, 0.0001
            else:
                left = max(0.0, deadline - time.monotonic())
                got = yield functools.partial(_put_some, ring, bodies[done:], ids[done:], now), left
                if got is None:
                    raise self._timeout(ring, f"; enqueued only the first {done} of {n} jobs")
                done += got
                continue
            self._check_open()
            done += ring.put_many(bodies[done:], ids[done:], now)
        return ids

    def _unlink(self) -> bool:
        return unlink(self._name)

    def _detach(self) -> None:
        with self._attach_lock:
            ring, self._ring = self._ring, None
        if ring is not None:
            ring.detach()

    @property
    def atomics_impl(self) -> str:
        """Which atomic-operation path this handle uses (``c-ext`` is the compiled one).

        Before the handle's first operation: the path this process would pick.
        """
        ring = self._ring
        return _shm_atomics.IMPL if ring is None else ring.w.impl


def _ok(flag: bool) -> bool | None:
    return True if flag else None


def _put_some(ring: _Ring, bodies: list[bytes], ids: list[str], now: float) -> int | None:
    return ring.put_many(bodies, ids, now) or None
