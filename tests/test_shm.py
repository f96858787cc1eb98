"""Tests of the shm:// driver: conformance, layout checks, processes, models and crashes."""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing
import os
import random
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unifiedq
from unifiedq import InvalidURL, QueueFull
from unifiedq.drivers import shm
from unifiedq.testing.suite import Harness, QueueConformance

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")

_FORK = multiprocessing.get_context("fork")


def _segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("uq-")}


@pytest.fixture(scope="module", autouse=True)
def _no_segment_left_behind() -> Iterator[None]:
    before = _segments()
    yield
    leaked = _segments() - before
    for n in leaked:
        shm.unlink(n)
    assert not leaked, f"tests left shm segments behind: {sorted(leaked)}"


@pytest.fixture
def name() -> Iterator[str]:
    n = f"uq-{uuid.uuid4().hex[:12]}"
    yield n
    shm.unlink(n)


class TestShm(QueueConformance):
    URL = "shm://{name}?capacity=4096&slot_size=256"
    BOUNDED_OPTIONS = {"capacity": 4, "overflow": "reject"}
    BOUNDED_SIZE = 4

    def remove_queue(self, url: str) -> None:
        # A shm queue outlives its handles: remove the test's segments after it.
        name = unifiedq.parse_url(url).authority
        shm.unlink(name)
        shm.unlink(name + "-other")

    @pytest.fixture
    def restart_backend(self, harness: Harness) -> Callable[[], None]:
        # A reboot is what clears a shm queue; removing the segment is the same for a reader.
        name = unifiedq.parse_url(harness.url).authority

        def restart() -> None:
            shm.unlink(name)

        return restart


class TestShmPurePython(TestShm):
    """The same suite on the pure-Python ring (patomic through cffi), without ``_shmring``."""

    @pytest.fixture(autouse=True)
    def _pure_python(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("UNIFIEDQ_SHM_ATOMICS", "cffi")

    def test_runs_without_the_compiled_module(self, harness: Harness) -> None:
        with unifiedq.connect(harness.url) as q:
            ring = q._ring or q._attach()  # type: ignore[attr-defined]
            assert ring.c is None and ring.w.impl == "patomic-cffi"
            assert q.atomics_impl == "patomic-cffi"  # type: ignore[attr-defined]


# -- the compiled fast path ----------------------------------------------------------------------
def test_compiled_path_is_the_default_and_required_in_ci(name: str) -> None:
    from unifiedq.drivers import _shm_atomics

    if _shm_atomics.IMPL != "c-ext":
        assert os.environ.get("CI") != "true", (
            "unifiedq.drivers._shmring was not built (or is stale): CI must test the path "
            "users get; run 'pip install -e .' with a C compiler"
        )
        pytest.skip("unifiedq.drivers._shmring is not built here (pip install -e . builds it)")
    with unifiedq.connect(_url(name)) as q:
        ring = q._ring or q._attach()  # type: ignore[attr-defined]
        assert ring.c is not None and ring.w.impl == "c-ext"
        assert q.atomics_impl == "c-ext"  # type: ignore[attr-defined]


def test_compiled_segment_refuses_bad_calls(name: str) -> None:
    import mmap

    _shmring = pytest.importorskip("unifiedq.drivers._shmring")
    from unifiedq.drivers.shm import _SLOTS_OFF, _W_HEAD, _W_TAIL

    m = mmap.mmap(-1, mmap.PAGESIZE * 4)
    seg = _shmring.Segment(m)
    with pytest.raises(IndexError):
        seg.load(mmap.PAGESIZE * 4 // 8)
    with pytest.raises(IndexError):
        seg.cas(1 << 40, 0, 1)
    with pytest.raises(ValueError, match="configure"):
        seg.put(b"x", "id", 0.0)
    with pytest.raises(ValueError, match="does not fit"):  # more slots than the mapping holds
        seg.configure(1000, 128, 64, _SLOTS_OFF // 8, _W_HEAD, _W_TAIL)
    seg.configure(8, 128, 64, _SLOTS_OFF // 8, _W_HEAD, _W_TAIL)
    seg.set_marks(1 << 63, (1 << 63) | (1 << 62))
    for i in range(8):
        seg.store(_SLOTS_OFF // 8 + i * 16, i)  # slot i free for ticket i
    with pytest.raises(ValueError, match="slot_size"):  # never writes past a slot
        seg.put(b"x" * 65, "id", 0.0)
    with pytest.raises(ValueError, match="exceeds 40"):
        seg.put(b"x", "i" * 41, 0.0)
    with pytest.raises(TypeError):
        seg.put("text", "id", 0.0)
    with pytest.raises(ValueError, match="configure_jobs"):
        seg.take()
    with pytest.raises(TypeError, match="plain object slot"):
        seg.configure_jobs(int, name, {})
    assert seg.put(b"hello", "job-1", 12.5) == 0
    assert seg.get() == (b"hello", "job-1", 12.5)
    assert seg.get() == 1  # empty
    seg.release()
    with pytest.raises(ValueError, match="released"):
        seg.get()
    m.close()  # no export left: closing works


def test_compiled_jobs_equal_make_job(name: str) -> None:
    from unifiedq._job import make_job

    with unifiedq.connect(_url(name)) as q:
        q.enqueue(b"abc")
        q.enqueue_many([b"d", b"e"])
        jobs = [q.dequeue(), *q.dequeue_many(5)]
    assert all(j is not None for j in jobs)
    for j in jobs:
        assert j is not None
        assert type(j) is unifiedq.Job
        assert j == make_job(j.id, name, j.body, 1, j.enqueued_at)
        assert j.headers == {} and j.priority is None and j.receipt is None
        assert repr(j).startswith("Job(id=")
    assert [j.body for j in jobs if j] == [b"abc", b"d", b"e"]


@pytest.mark.parametrize("impl", ["", "cffi"])
def test_corrupt_slot_is_a_typed_error_and_never_wedges(
    name: str, impl: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A slot whose length field was overwritten (by a foreign writer) costs that job only."""
    from unifiedq.drivers.shm import _SLOTS_OFF

    monkeypatch.setenv("UNIFIEDQ_SHM_ATOMICS", impl)
    with unifiedq.connect(_url(name, capacity=4, slot_size=8)) as q:
        ring = q._attach()  # type: ignore[attr-defined]

        def corrupt(ticket: int) -> None:  # body length field of the slot of ``ticket``
            off = _SLOTS_OFF + (ticket % 4) * ring.stride_w * 8 + 8
            ring.mm[off : off + 4] = (10_000).to_bytes(4, "little")

        q.enqueue_many([b"a", b"b", b"c"])
        corrupt(1)  # "b"
        assert q.dequeue().body == b"a"  # type: ignore[union-attr]
        with pytest.raises(unifiedq.BackendError, match="corrupt shm slot"):
            q.dequeue()
        assert q.dequeue().body == b"c"  # type: ignore[union-attr]
        q.enqueue_many([b"d", b"e", b"f"])
        corrupt(ring.plain[16] + 1)  # "e" (the tail hint, word 16, is the next ticket: "d")
        with caplog.at_level(logging.ERROR, logger="unifiedq.drivers.shm"):
            got = [j.body for j in q.dequeue_many(10)]
        # The batch hands over the good jobs it took and logs the dropped one; the compiled
        # path stops at the bad slot, the Python path finishes the run it had claimed.
        assert got in ([b"d"], [b"d", b"f"])
        assert "corrupt shm slot" in caplog.text
        assert [j.body for j in q.dequeue_many(10)] == [b"d", b"f"][len(got):]
        for lap in range(3):  # the ring keeps serving every slot
            q.enqueue_many([b"%d%d" % (lap, i) for i in range(4)])
            assert [j.body for j in q.dequeue_many(4)] == [b"%d%d" % (lap, i) for i in range(4)]
        q.enqueue(b"x")
        corrupt(ring.plain[16])  # "x": the tail hint (word 16) is the next ticket to take
        with pytest.raises(unifiedq.BackendError, match="corrupt shm slot"):
            q.dequeue_many(5)
        assert q.size() == 0


# -- settings, layout and lifetime ---------------------------------------------------------------
def _url(name: str, **opts: Any) -> str:
    q = "&".join(f"{k}={v}" for k, v in opts.items())
    return f"shm://{name}" + (f"?{q}" if q else "")


@pytest.mark.parametrize(
    "url",
    [
        "shm://",
        "shm://bad name",
        "shm://a/b",
        "shm://user:pw@q",
        "shm://q:1234",
        "shm://q?capacity=1",
        "shm://q?capacity=x",
        "shm://q?slot_size=0",
        "shm://q?overflow=sometimes",
        "shm://q?enqueue_timeout=-1",
    ],
)
def test_bad_urls_fail_before_io(url: str) -> None:
    with pytest.raises(InvalidURL):
        unifiedq.connect(url)


def test_attach_with_other_layout_is_a_clear_error(name: str) -> None:
    with unifiedq.connect(_url(name, capacity=8, slot_size=32)) as q:
        q.enqueue(b"kept")
        for other in ({"capacity": 16, "slot_size": 32}, {"capacity": 8, "slot_size": 64}):
            with (
                unifiedq.connect(_url(name, **other)) as bad,
                pytest.raises(InvalidURL, match="capacity=8 and slot_size=32"),
            ):
                bad.size()
        assert q.size() == 1  # the ring was not touched


def test_foreign_segment_is_refused(name: str) -> None:
    import _posixshmem  # type: ignore[import-not-found]

    fd = _posixshmem.shm_open("/" + name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, 1 << 16)
    os.pwrite(fd, b"NOTOURS!", 0)
    os.close(fd)
    with unifiedq.connect(_url(name)) as q, pytest.raises(InvalidURL, match="not a unifiedq"):
        q.enqueue(b"x")


@pytest.mark.parametrize("holder", ["nobody", "dead"])
def test_half_created_segment_is_taken_over(name: str, holder: str) -> None:
    """A creator killed before finishing the header must not leave the queue unusable."""
    import _posixshmem

    from unifiedq.drivers.shm import _W_INIT

    fd = _posixshmem.shm_open("/" + name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, 1 << 16)  # sized, never initialised
    if holder == "dead":
        child = _FORK.Process(target=os._exit, args=(0,))
        child.start()
        child.join()
        ident = ((child.pid or 0) << 32).to_bytes(8, "little")
        os.pwrite(fd, ident, 8 * _W_INIT)
    os.close(fd)
    with unifiedq.connect(_url(name, capacity=8)) as q:
        q.enqueue(b"x")
        assert q.size() == 1
    with unifiedq.connect(_url(name, capacity=8)) as q:
        job = q.dequeue()
        assert job is not None and job.body == b"x"


def test_segment_outlives_handles_until_unlinked(name: str) -> None:
    q = unifiedq.connect(_url(name, capacity=4))
    assert not shm.exists(name)  # connect() does no I/O
    q.enqueue(b"a")
    assert shm.exists(name)
    q.close()
    with unifiedq.connect(_url(name, capacity=4)) as q2:
        assert q2.size() == 1
        assert isinstance(q2, shm.ShmQueue) and q2.unlink()
        assert not shm.exists(name)
        q2.enqueue(b"b")  # the attached handle keeps its (now nameless) segment
        assert q2.size() == 2
    with unifiedq.connect(_url(name, capacity=4)) as q3:
        assert q3.size() == 0  # a fresh segment
    assert shm.unlink(name) and not shm.unlink(name)


# -- overflow policies -------------------------------------------------------------------------
def test_overflow_reject_and_batch_all_or_nothing(name: str) -> None:
    with unifiedq.connect(_url(name, capacity=4, overflow="reject")) as q:
        q.enqueue_many([b"1", b"2", b"3"])
        with pytest.raises(QueueFull, match="nothing was enqueued"):
            q.enqueue_many([b"4", b"5"])
        assert q.size() == 3
        q.enqueue(b"4")
        with pytest.raises(QueueFull):
            q.enqueue(b"5")
        assert [j.body for j in q.dequeue_many(10)] == [b"1", b"2", b"3", b"4"]


def test_overflow_drop_oldest_keeps_newest(name: str) -> None:
    with unifiedq.connect(_url(name, capacity=3, overflow="drop_oldest")) as q:
        for i in range(5):
            q.enqueue(b"%d" % i)
        q.enqueue_many([b"5", b"6"])
        assert isinstance(q, shm.ShmQueue) and q.dropped == 4
        assert [j.body for j in q.dequeue_many(10)] == [b"4", b"5", b"6"]


def test_overflow_block_waits_then_times_out(name: str) -> None:
    url = _url(name, capacity=2, enqueue_timeout=0.3)
    with unifiedq.connect(url) as q:
        q.enqueue_many([b"a", b"b"])
        start = time.monotonic()
        with pytest.raises(shm.EnqueueTimeout) as info:
            q.enqueue(b"c")
        assert time.monotonic() - start >= 0.25
        assert isinstance(info.value, QueueFull) and isinstance(info.value, unifiedq.QueueTimeout)
        # a consumer in another process makes room while we block
        child = _FORK.Process(target=_take_one_later, args=(url, 0.2))
        child.start()
        with unifiedq.connect(_url(name, capacity=2, enqueue_timeout=20)) as q2:
            q2.enqueue(b"c")
        child.join(30)
        assert child.exitcode == 0
        assert [j.body for j in q.dequeue_many(5)] == [b"b", b"c"]


def _take_one_later(url: str, delay: float) -> None:
    time.sleep(delay)
    with unifiedq.connect(url) as q:
        assert q.dequeue(timeout=10) is not None


def test_async_waits_do_not_block_the_loop(name: str) -> None:
    async def main() -> tuple[int, bytes]:
        q = unifiedq.connect_async(_url(name, capacity=2, enqueue_timeout=5))
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        got = await asyncio.gather(q.dequeue(timeout=5), _later(q.enqueue(b"x"), 0.3))
        await q.enqueue_many([b"1", b"2"])
        full = asyncio.create_task(q.enqueue(b"3"))  # blocks (awaits) until room
        await asyncio.sleep(0.2)
        assert not full.done()
        assert (await q.dequeue()) is not None
        await asyncio.wait_for(full, 5)
        t.cancel()
        await q.aclose()
        job = got[0]
        assert job is not None
        return ticks, job.body

    ticks, body = asyncio.run(main())
    assert body == b"x"
    assert ticks >= 10  # the loop kept running while dequeue and enqueue waited


@pytest.mark.parametrize("face", ["sync", "async"])
def test_idle_blocking_dequeue_does_not_burn_a_core(name: str, face: str) -> None:
    """A waiter polls and spins only briefly, then sleeps: an idle wait costs little CPU."""

    async def wait_async() -> object:
        q = unifiedq.connect_async(_url(name))
        try:
            await q.size()  # attach outside the measured window
            return await q.dequeue(timeout=1.0)
        finally:
            await q.aclose()

    with unifiedq.connect(_url(name)) as q:
        q.size()
        c0, t0 = time.process_time(), time.monotonic()
        got = q.dequeue(timeout=1.0) if face == "sync" else asyncio.run(wait_async())
        cpu, wall = time.process_time() - c0, time.monotonic() - t0
    assert got is None
    assert wall >= 0.9
    # Busy-waiting would use about 1 s of CPU; backing off to sleeps uses a few percent.
    assert cpu < 0.3 * wall, f"idle dequeue used {cpu:.3f}s CPU in {wall:.3f}s"


async def _later(coro: Any, delay: float) -> Any:
    await asyncio.sleep(delay)
    return await coro


def test_fallback_atomics_paths(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for impl in ("cffi", "ctypes", "public"):
        monkeypatch.setenv("UNIFIEDQ_SHM_ATOMICS", impl)
        n = f"{name}-{impl}"
        try:
            with unifiedq.connect(_url(n, capacity=4)) as q:
                ring = q._ring or q._attach()  # type: ignore[attr-defined]
                assert ring.w.impl == {"cffi": "patomic-cffi", "ctypes": "patomic-ctypes",
                                       "public": "public"}[impl]
                assert ring.c is None
                for rnd in range(3):  # wrap the ring a few times
                    q.enqueue_many([b"%d-%d" % (rnd, i) for i in range(4)])
                    assert [j.body for j in q.dequeue_many(4)] == [
                        b"%d-%d" % (rnd, i) for i in range(4)
                    ]
                q.enqueue(b"p")
                assert q.peek() is not None and q.size() == 1
        finally:
            shm.unlink(n)


# -- many processes ------------------------------------------------------------------------------
def _produce(url: str, p: int, n: int, batch: int, impl: str = "") -> None:
    os.environ["UNIFIEDQ_SHM_ATOMICS"] = impl  # "" = the best path; "cffi" = pure Python
    with unifiedq.connect(url) as q:
        i = 0
        while i < n:
            if batch > 1 and i % 3 == 0:
                k = min(batch, n - i)
                q.enqueue_many([b"%d:%d" % (p, j) for j in range(i, i + k)])
                i += k
            else:
                q.enqueue(b"%d:%d" % (p, i))
                i += 1


def _consume(url: str, path: str, stop: Any, batch: int, impl: str = "") -> None:
    os.environ["UNIFIEDQ_SHM_ATOMICS"] = impl
    got: list[bytes] = []
    with unifiedq.connect(url) as q:
        while True:
            jobs = q.dequeue_many(batch, timeout=0.1) if batch > 1 else [
                j for j in [q.dequeue(timeout=0.1)] if j is not None
            ]
            if jobs:
                got.extend(j.body for j in jobs)
            elif stop.is_set():
                break
    with open(path, "wb") as f:
        f.write(b"\n".join(got))


def _read_ledger(path: str) -> list[tuple[int, int]]:
    with open(path, "rb") as f:
        data = f.read()
    return [(int(a), int(b)) for a, b in (ln.split(b":") for ln in data.split(b"\n") if ln)]


def _check_fifo_per_producer(seq: list[tuple[int, int]]) -> None:
    last: dict[int, int] = {}
    for p, i in seq:
        assert i > last.get(p, -1), f"producer {p}: {i} after {last[p]}"
        last[p] = i


@pytest.mark.parametrize(("jobs", "batch", "mixed"),
                         [(100_000, 1, False), (20_000, 16, False), (40_000, 1, True),
                          (20_000, 16, True)])
def test_processes_exact_ledger(name: str, tmp_path: Any, jobs: int, batch: int,
                                mixed: bool) -> None:
    """4 producer and 4 consumer processes: no loss, no duplicate, FIFO per producer.

    ``mixed``: half of each side runs the pure-Python ring, half the compiled one, on the
    same segment (both implement one algorithm and one layout).
    """
    url = _url(name, capacity=256, slot_size=32, enqueue_timeout=60)
    nprod, ncons = 4, 4
    per = jobs // nprod
    stop = _FORK.Event()
    paths = [str(tmp_path / f"c{c}") for c in range(ncons)]
    impl = ["cffi" if mixed and k % 2 else "" for k in range(max(nprod, ncons))]
    cons = [_FORK.Process(target=_consume, args=(url, paths[c], stop, batch, impl[c]))
            for c in range(ncons)]
    prods = [_FORK.Process(target=_produce, args=(url, p, per, batch, impl[p]))
             for p in range(nprod)]
    try:
        for proc in cons + prods:
            proc.start()
        for proc in prods:
            proc.join(240)
            assert proc.exitcode == 0
    finally:
        stop.set()  # a failed producer must not leave consumers running after the test
        for proc in cons + prods:
            proc.join(240)
            if proc.is_alive():
                proc.kill()
    for proc in cons:
        assert proc.exitcode == 0
    seqs = [_read_ledger(p) for p in paths]
    everything = sorted(x for s in seqs for x in s)
    assert everything == [(p, i) for p in range(nprod) for i in range(per)]
    for s in seqs:
        _check_fifo_per_producer(s)
    with unifiedq.connect(url) as q:
        assert q.size() == 0


def test_forked_child_gets_its_own_owner_entry(name: str) -> None:
    with unifiedq.connect(_url(name, capacity=8)) as q:
        q.enqueue(b"parent")
        ring = q._ring  # type: ignore[attr-defined]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                os.close(r)
                job = q.dequeue(timeout=5)
                ok = job is not None and job.body == b"parent" and ring.owner >= 0
                os.write(w, b"%d" % ring.owner)
                q.enqueue(b"child")
                q.close()
                code = 0 if ok else 1
            finally:
                os._exit(code)
        os.close(w)
        child_owner = int(os.read(r, 32) or b"-1")
        os.close(r)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert child_owner >= 0 and child_owner != ring.owner
        job = q.dequeue(timeout=5)
        assert job is not None and job.body == b"child"


# -- a model of the ring, driven by hypothesis ---------------------------------------------------
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 1), st.binary(max_size=16)),
        st.tuples(st.just("put_many"), st.integers(0, 1), st.lists(st.binary(max_size=8),
                                                                  min_size=1, max_size=5)),
        st.tuples(st.just("get"), st.integers(0, 1), st.just(0)),
        st.tuples(st.just("get_many"), st.integers(0, 1), st.integers(1, 6)),
        st.tuples(st.just("peek"), st.integers(0, 1), st.just(0)),
        st.tuples(st.just("size"), st.integers(0, 1), st.just(0)),
        st.tuples(st.just("purge"), st.integers(0, 1), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(2, 5), ops=_OPS)
def test_matches_a_bounded_fifo_model(capacity: int, ops: list[tuple[str, int, Any]]) -> None:
    """Two handles on one ring, random interleaving of every verb, against a deque.

    Handle 0 runs the compiled path (where built), handle 1 the pure-Python one.
    """
    name = f"uq-{uuid.uuid4().hex[:12]}"
    url = _url(name, capacity=capacity, slot_size=16, overflow="reject")
    model: collections.deque[bytes] = collections.deque()
    handles = [unifiedq.connect(url), unifiedq.connect(url)]
    handles[0]._attach()  # type: ignore[attr-defined]
    old = os.environ.get("UNIFIEDQ_SHM_ATOMICS")
    os.environ["UNIFIEDQ_SHM_ATOMICS"] = "cffi"
    try:
        assert handles[1]._attach().c is None  # type: ignore[attr-defined]
    finally:
        if old is None:
            del os.environ["UNIFIEDQ_SHM_ATOMICS"]
        else:
            os.environ["UNIFIEDQ_SHM_ATOMICS"] = old
    try:
        for op, h, arg in ops:
            q = handles[h]
            if op == "put":
                if len(model) == capacity:
                    with pytest.raises(QueueFull):
                        q.enqueue(arg)
                else:
                    q.enqueue(arg)
                    model.append(arg)
            elif op == "put_many":
                if len(model) + len(arg) > capacity:
                    with pytest.raises(QueueFull):
                        q.enqueue_many(arg)
                else:
                    q.enqueue_many(arg)
                    model.extend(arg)
            elif op == "get":
                job = q.dequeue()
                assert (job.body if job else None) == (model.popleft() if model else None)
            elif op == "get_many":
                want = [model.popleft() for _ in range(min(arg, len(model)))]
                assert [j.body for j in q.dequeue_many(arg)] == want
            elif op == "peek":
                job = q.peek()
                assert (job.body if job else None) == (model[0] if model else None)
            elif op == "size":
                assert q.size() == len(model)
            else:
                assert q.purge() == len(model)
                model.clear()
        assert handles[0].size() == len(model)
    finally:
        for q in handles:
            q.close()
        shm.unlink(name)


# -- crashes -------------------------------------------------------------------------------------
def _die_holding_claims(url: str, kind: str, count: int) -> None:
    """Claim ``count`` slots exactly as put/get do, then get SIGKILLed before finishing."""
    from unifiedq.drivers.shm import _SLOTS_OFF, _TMASK, _W_HEAD, _W_TAIL

    q = unifiedq.connect(url)
    ring = q._attach()  # type: ignore[attr-defined]
    first = _SLOTS_OFF // 8
    pos = ring.plain[_W_HEAD if kind == "producer" else _W_TAIL]
    for k in range(count):
        t = pos + k
        si = first + (t % ring.cap) * ring.stride_w
        if kind == "producer":
            assert ring.w.cas(si, t, ring.pmark | (t & _TMASK))
        else:
            assert ring.w.cas(si, t + 1, ring.cmark | (t & _TMASK))
    os.kill(os.getpid(), signal.SIGKILL)


def _wait_dead(pid: int) -> None:
    from unifiedq.drivers.shm import _proc_stat

    deadline = time.monotonic() + 30
    while (st := _proc_stat(pid)) is not None and st[0] not in "ZX":
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("count", [1, 3])
def test_producer_killed_between_claim_and_publish(name: str, count: int) -> None:
    url = _url(name, capacity=5, enqueue_timeout=20)
    with unifiedq.connect(url) as q:
        q.enqueue(b"a")
        child = _FORK.Process(target=_die_holding_claims, args=(url, "producer", count))
        child.start()
        _wait_dead(child.pid or 0)  # a zombie (not reaped yet) must count as dead
        q.enqueue(b"b")  # the dead claims do not block producers...
        got = [j.body for j in q.dequeue_many(10, timeout=10)]
        while len(got) < 2 and (job := q.dequeue(timeout=10)) is not None:
            got.append(job.body)
        assert got == [b"a", b"b"]  # ...nor consumers, and nothing else was lost
        for lap in range(3):  # the repaired slots serve the next laps
            q.enqueue_many([b"%d-%d" % (lap, i) for i in range(5)])
            assert [j.body for j in q.dequeue_many(5, timeout=10)] == [
                b"%d-%d" % (lap, i) for i in range(5)
            ]
        assert q.size() == 0
        child.join(10)
        assert child.exitcode == -signal.SIGKILL


@pytest.mark.parametrize("count", [1, 2])
def test_consumer_killed_while_reading(name: str, count: int) -> None:
    url = _url(name, capacity=4, enqueue_timeout=20)
    with unifiedq.connect(url) as q:
        q.enqueue_many([b"a", b"b", b"c", b"d"])  # full
        child = _FORK.Process(target=_die_holding_claims, args=(url, "consumer", count))
        child.start()
        child.join(30)
        assert child.exitcode == -signal.SIGKILL
        got = []
        while (job := q.dequeue(timeout=1)) is not None:
            got.append(job.body)
        assert got == [b"a", b"b", b"c", b"d"][count:]  # exactly the in-flight jobs are lost
        # producers lap the ring over the dead consumer's slots (repair, then reuse)
        q.enqueue_many([b"%d" % i for i in range(4)])
        assert [j.body for j in q.dequeue_many(4, timeout=10)] == [b"%d" % i for i in range(4)]


def test_dead_owner_entries_are_reclaimed(name: str) -> None:
    from unifiedq.drivers.shm import _OWNERS, _W_OWNER0

    url = _url(name, capacity=4)
    with unifiedq.connect(url) as q:
        ring = q._attach()  # type: ignore[attr-defined]
        child = _FORK.Process(target=_die_holding_claims, args=(url, "producer", 1))
        child.start()
        child.join(30)
        dead = ring.plain[_W_OWNER0 + 1]
        assert dead >> 32 == child.pid
        for i in range(_OWNERS):  # every other entry looks taken by the dead process
            if i != ring.owner:
                ring.plain[_W_OWNER0 + i] = dead
        with unifiedq.connect(url) as q2:
            q2.enqueue(b"x")  # needs an entry: reclaims a dead one (after scrubbing its claims)
            ring2 = q2._ring  # type: ignore[attr-defined]
            assert ring2.owner != ring.owner
            assert ring.plain[_W_OWNER0 + ring2.owner] >> 32 == os.getpid()
            job = q.dequeue(timeout=5)
            assert job is not None and job.body == b"x"
        for i in range(_OWNERS):
            if i != ring.owner:
                ring.plain[_W_OWNER0 + i] = 0


def _soak_produce(url: str, p: int, n: int, ledger: str) -> None:
    fd = os.open(ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with unifiedq.connect(url) as q:
        for i in range(n):
            q.enqueue(b"%d:%d" % (p, i))
            os.write(fd, b"%d:%d\n" % (p, i))  # recorded only once enqueue returned


def _soak_consume(url: str, ledger: str, stop: str) -> None:
    fd = os.open(ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with unifiedq.connect(url) as q:
        while True:
            job = q.dequeue(timeout=0.05)
            if job is not None:
                os.write(fd, job.body + b"\n")
            elif os.path.exists(stop):  # a file, not an Event: a SIGKILL can't leave it locked
                return


def _kill_trial(url: str, tmp: Any, rng: random.Random, per: int) -> None:
    nprod, ncons = 2, 2
    stop = str(tmp / "stop")
    pl = [str(tmp / f"p{p}") for p in range(nprod)]
    cl = [str(tmp / f"c{c}") for c in range(ncons)]
    prods = [_FORK.Process(target=_soak_produce, args=(url, p, per, pl[p])) for p in range(nprod)]
    cons = [_FORK.Process(target=_soak_consume, args=(url, cl[c], stop)) for c in range(ncons)]
    for proc in prods + cons:
        proc.start()
    time.sleep(rng.uniform(0.0, 0.04))
    victims = rng.sample(prods + cons, rng.choice([1, 1, 2]))
    for proc in victims:
        os.kill(proc.pid or 0, signal.SIGKILL)
    mine: list[tuple[int, int]] = []
    with unifiedq.connect(url) as q:
        # The test process consumes too, so that producers finish even if consumers died.
        while any(p.is_alive() for p in prods):
            mine.extend(_drain(q, 0.02))
        with open(stop, "wb"):
            pass
        for proc in prods + cons:
            proc.join(60)
        mine.extend(_drain(q, 0.3))
        for proc in prods + cons:  # a victim may have finished before the signal landed
            assert proc.exitcode in ((0, -signal.SIGKILL) if proc in victims else (0,))
        victims = [proc for proc in victims if proc.exitcode == -signal.SIGKILL]
        killed_cons = sum(1 for c in cons if c in victims)
        seqs = [_read_lines(c) for c in cl] + [mine]
        got = [x for s in seqs for x in s]
        assert len(got) == len(set(got)), "a job was delivered twice"
        for s in seqs:
            _check_fifo_per_producer(s)
        missing = set()
        for p in range(nprod):
            sent = _read_lines(pl[p])
            assert sent == [(p, i) for i in range(len(sent))]
            if prods[p] not in victims:
                assert len(sent) == per
            # a killed producer's in-flight job (the one after its last record) may or may
            # not have been published; nothing beyond it can exist
            assert all(i <= len(sent) for (pp, i) in got if pp == p)
            missing |= set(sent) - set(got)
        # each killed consumer can lose the one job it was moving, and nothing else is lost
        assert len(missing) <= killed_cons, (missing, killed_cons)
        assert q.size() == 0
        q.enqueue_many([b"after"] * 3)
        assert len(q.dequeue_many(10, timeout=5)) == 3


def _drain(q: Any, idle: float) -> list[tuple[int, int]]:
    out = []
    while (job := q.dequeue(timeout=idle)) is not None:
        p, i = job.body.split(b":")
        out.append((int(p), int(i)))
    return out


def _read_lines(path: str) -> list[tuple[int, int]]:
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    return [(int(a), int(b)) for a, b in (ln.split(b":") for ln in lines if ln)]


def _kill_trials(tmp_path: Any, trials: int, seed: int) -> None:
    rng = random.Random(seed)
    for trial in range(trials):
        name = f"uq-{uuid.uuid4().hex[:12]}"
        tmp = tmp_path / f"t{trial}"
        tmp.mkdir()
        try:
            _kill_trial(_url(name, capacity=16, slot_size=16, enqueue_timeout=60), tmp, rng,
                        per=3000)
        finally:
            shm.unlink(name)


def test_sigkill_random_processes_short(tmp_path: Any) -> None:
    _kill_trials(tmp_path, trials=12, seed=1)


@pytest.mark.slow
def test_sigkill_random_processes_soak(tmp_path: Any) -> None:
    _kill_trials(tmp_path, trials=300, seed=2)
