"""64-bit atomic operations on a shared buffer: the one place that knows ``atomics`` internals.

The ``shm://`` ring needs three operations on aligned 64-bit words of a shared-memory segment:
an acquire load, a release store and a sequentially consistent compare-and-swap. The public
``atomics`` API (``atomicview`` context managers) costs 5-40 µs per operation, which would make
the ring slower than a pipe. This module picks the fastest path that is correct on the machine:

0. ``c-ext``: our compiled module ``_shmring`` (built at install time from ``_shmring.c``,
   optional), which uses the compiler's ``__atomic`` builtins: about 0.05 µs per operation, and
   the only path that also offers the ring's whole enqueue/dequeue as one call.
1. ``patomic-cffi``: the C function pointers of the ``patomic`` library that ``atomics`` 1.0.3
   bundles (``atomics._impl.patomic.Patomic.ops``), called through ``cffi`` (a dependency of
   ``atomics``) with a per-thread scratch buffer. About 0.4 µs per compare-and-swap.
2. ``patomic-ctypes``: the same function pointers through ``ctypes`` with the GIL held.
3. ``public``: the documented ``atomics.atomicview`` API, when the internals above are absent
   (another ``atomics`` version). Correct, slow.

Loads and stores: on x86-64 every aligned 8-byte ``mov`` is atomic and the hardware memory
model (TSO) already gives loads acquire and stores release semantics, so a plain aligned access
through a ``memoryview`` cast to ``'Q'`` (one 8-byte ``memcpy`` in CPython, compiled to one
``mov``) is an acquire load / release store. On other architectures (ARM64 is weakly ordered)
loads and stores go through ``patomic`` with explicit ``ACQUIRE`` / ``RELEASE`` orders.

``atomics`` is pinned to 1.0.3 by the ``shm`` extra because path 1 and 2 use its internals.
Set ``UNIFIEDQ_SHM_ATOMICS`` to ``cffi``, ``ctypes`` or ``public`` to force a slower path (tests
use it to run the suite on every path).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import platform
import sys
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import _shmring

__all__ = ["IMPL", "TSO", "Words", "bind"]

_RELAXED, _ACQUIRE, _RELEASE, _SEQ_CST = 0, 2, 3, 5

#: True when plain aligned 8-byte loads/stores are atomic with acquire/release semantics.
TSO: bool = platform.machine().lower() in {"x86_64", "amd64"} and sys.maxsize > 2**32


def _patomic_pointers() -> dict[str, int] | None:
    """Return the addresses of patomic's 64-bit load/store/cmpxchg, or None if unavailable."""
    try:
        from atomics._impl.patomic import Patomic  # pinned internal, see module docstring

        ops = Patomic.ops(8)
        ptrs = {
            "load": ctypes.cast(ops.fp_load, ctypes.c_void_p).value,
            "store": ctypes.cast(ops.fp_store, ctypes.c_void_p).value,
            "cas": ctypes.cast(ops.xchg_ops.fp_cmpxchg_strong, ctypes.c_void_p).value,
        }
    except Exception:  # any import or layout change: fall back to the public API
        return None
    if not all(ptrs.values()):
        return None
    return {k: int(v) for k, v in ptrs.items() if v is not None}


class Words:
    """Atomic access to the aligned 64-bit words of one mapped buffer.

    Word ``i`` is the 8 bytes at offset ``8 * i``. ``plain`` is a ``'Q'`` memoryview for
    relaxed access (hints that the algorithm tolerates being stale); ``load``, ``store`` and
    ``cas`` are the ordered operations.

    Attributes:
        plain: Relaxed view of the words (plain loads and stores).
        load: ``load(i) -> int`` with acquire ordering.
        store: ``store(i, value)`` with release ordering.
        cas: ``cas(i, expected, desired) -> bool``, sequentially consistent.
        impl: Which implementation is in use.
    """

    plain: memoryview
    load: Callable[[int], int]
    store: Callable[[int, int], None]
    cas: Callable[[int, int, int], bool]
    impl: str
    #: The compiled segment object when the ``c-ext`` path is in use (ring fast path), else None.
    seg: _shmring.Segment | None = None

    def __init__(self, buf: mmap.mmap) -> None:
        self._buf = buf
        self.plain = memoryview(buf).cast("Q")
        self._keep: list[Any] = []
        force = os.environ.get("UNIFIEDQ_SHM_ATOMICS", "")
        if force in ("", "c") and _bind_c(self, buf):
            return
        ptrs = None if force == "public" else _patomic_pointers()
        if ptrs is not None and force != "ctypes" and _bind_cffi(self, buf, ptrs):
            return
        if ptrs is not None:
            _bind_ctypes(self, buf, ptrs)
            return
        _bind_public(self, buf)

    def release(self) -> None:
        """Drop every export of the buffer so that it can be unmapped."""
        for obj in self._keep:
            rel = getattr(obj, "release", None)
            if callable(rel):
                rel()
        self._keep.clear()
        self.plain.release()


#: The ``_shmring`` interface this module is written for (its ``API`` constant). 4: Job has
#: ``deadline`` and ``timeout`` slots (an API 3 build would leave them unset).
C_API = 4


def _bind_c(w: Words, buf: mmap.mmap) -> bool:
    try:
        from . import _shmring  # compiled at install time; optional
    except ImportError:
        return False
    if getattr(_shmring, "API", None) != C_API:
        _warn_stale(getattr(_shmring, "__file__", "?"))
        return False
    seg = _shmring.Segment(buf)
    w._keep.append(seg)
    w.seg = seg
    w.load, w.store, w.cas = seg.load, seg.store, seg.cas
    w.impl = "c-ext"
    return True


@functools.cache
def _warn_stale(path: str) -> None:
    warnings.warn(
        f"ignoring {path}: it was built from an older _shmring.c (re-run 'pip install -e .'); "
        f"shm:// uses its slower pure-Python path", RuntimeWarning, stacklevel=4,
    )


def _plain_ops(w: Words) -> tuple[Callable[[int], int], Callable[[int, int], None]]:
    # The view's own bound methods: no Python frame per access (about 3x cheaper than a
    # wrapper function), and a 'Q' view already returns int.
    return w.plain.__getitem__, w.plain.__setitem__


def _bind_cffi(w: Words, buf: mmap.mmap, ptrs: dict[str, int]) -> bool:
    try:
        import cffi  # type: ignore[import-untyped]
    except ImportError:
        return False
    ffi = cffi.FFI()
    cbuf = ffi.from_buffer(buf)
    w._keep.append(_CffiRelease(ffi, cbuf))
    base = int(ffi.cast("uintptr_t", cbuf))
    # Addresses go in as uintptr_t: same register class as a pointer on every 64-bit ABI,
    # and it lets us pass plain ints instead of building cdata pointers per call.
    fcas = ffi.cast("int(*)(uintptr_t, uint64_t *, uint64_t *, int, int)", ptrs["cas"])
    fload = ffi.cast("void(*)(uintptr_t, int, uint64_t *)", ptrs["load"])
    fstore = ffi.cast("void(*)(uintptr_t, uint64_t *, int)", ptrs["store"])
    # cffi releases the GIL during the call, so scratch space must be per thread.
    tls = threading.local()

    def scratch() -> Any:
        s = getattr(tls, "s", None)
        if s is None:
            s = tls.s = ffi.new("uint64_t[2]")
            tls.pair = (s, s + 1)  # ``s + 1`` builds a cdata: do it once, not per call
        return s

    def new_pair() -> tuple[Any, Any]:
        scratch()
        return tls.pair  # type: ignore[no-any-return]

    def cas(i: int, expected: int, desired: int) -> bool:
        try:
            s, s1 = tls.pair
        except AttributeError:
            s, s1 = new_pair()
        s[0] = expected
        s[1] = desired
        return fcas(base + 8 * i, s, s1, _SEQ_CST, _SEQ_CST) != 0  # type: ignore[no-any-return]

    w.cas = cas
    if TSO:
        w.load, w.store = _plain_ops(w)
    else:

        def load(i: int) -> int:
            s = scratch()
            fload(base + 8 * i, _ACQUIRE, s)
            return int(s[0])

        def store(i: int, value: int) -> None:
            s = scratch()
            s[1] = value
            fstore(base + 8 * i, s + 1, _RELEASE)

        w.load, w.store = load, store
    w.impl = "patomic-cffi"
    return True


class _CffiRelease:
    def __init__(self, ffi: Any, cdata: Any) -> None:
        self._ffi, self._cdata = ffi, cdata

    def release(self) -> None:
        self._ffi.release(self._cdata)


def _bind_ctypes(w: Words, buf: mmap.mmap, ptrs: dict[str, int]) -> None:
    anchor = ctypes.c_char.from_buffer(buf)
    w._keep.append(_CtypesRelease(anchor))
    base = ctypes.addressof(anchor)
    vp, ci = ctypes.c_void_p, ctypes.c_int
    # PYFUNCTYPE keeps the GIL during the call, so one scratch buffer serves every thread.
    fcas = ctypes.PYFUNCTYPE(ci, vp, vp, vp, ci, ci)(ptrs["cas"])
    fload = ctypes.PYFUNCTYPE(None, vp, ci, vp)(ptrs["load"])
    fstore = ctypes.PYFUNCTYPE(None, vp, vp, ci)(ptrs["store"])
    arr = (ctypes.c_uint64 * 2)()
    a0 = ctypes.addressof(arr)
    a1 = a0 + 8
    w._keep.append(arr)

    def cas(i: int, expected: int, desired: int) -> bool:
        arr[0] = expected
        arr[1] = desired
        return bool(fcas(base + 8 * i, a0, a1, _SEQ_CST, _SEQ_CST))

    w.cas = cas
    if TSO:
        w.load, w.store = _plain_ops(w)
    else:

        def load(i: int) -> int:
            fload(base + 8 * i, _ACQUIRE, a0)
            return int(arr[0])

        def store(i: int, value: int) -> None:
            arr[1] = value
            fstore(base + 8 * i, a1, _RELEASE)

        w.load, w.store = load, store
    w.impl = "patomic-ctypes"


class _CtypesRelease:
    def __init__(self, anchor: Any) -> None:
        self._anchor = anchor

    def release(self) -> None:
        # A ctypes object made with from_buffer() holds an export until it is collected.
        self._anchor = None


def _bind_public(w: Words, buf: mmap.mmap) -> None:
    import atomics

    mv = memoryview(buf)
    w._keep.append(mv)

    def view(i: int) -> Any:
        return atomics.atomicview(buffer=mv[8 * i : 8 * i + 8], atype=atomics.UINT)

    def cas(i: int, expected: int, desired: int) -> bool:
        with view(i) as a:
            return bool(a.cmpxchg_strong(expected, desired).success)

    def load(i: int) -> int:
        with view(i) as a:
            return int(a.load(order=atomics.MemoryOrder.ACQUIRE))

    def store(i: int, value: int) -> None:
        with view(i) as a:
            a.store(value, order=atomics.MemoryOrder.RELEASE)

    w.cas, w.load, w.store = cas, load, store
    w.impl = "public"


def bind(buf: mmap.mmap) -> Words:
    """Return atomic word access to ``buf`` (a page-aligned shared mapping)."""
    return Words(buf)


def _probe() -> str:
    try:
        m = mmap.mmap(-1, mmap.PAGESIZE)
    except OSError:  # pragma: no cover
        return "unknown"
    w = bind(m)
    ok = w.cas(1, 0, 7) and not w.cas(1, 0, 9) and w.load(1) == 7
    w.store(2, 5)
    ok = ok and w.load(2) == 5
    impl = w.impl
    w.release()
    m.close()
    if not ok:  # pragma: no cover - a broken binding must never be used silently
        raise RuntimeError(f"atomic self-test failed for implementation {impl!r}")
    return impl


#: The implementation this process uses ("c-ext", "patomic-cffi", "patomic-ctypes" or "public").
IMPL: str = _probe()
