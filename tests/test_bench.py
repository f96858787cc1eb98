"""The benchmark module: runs, verification (loss / FIFO / duplicates), reports, plot, inspect."""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import unifiedq
from unifiedq import Capability, DriverSpec, EnqueueRequest, Job
from unifiedq import _registry as registry
from unifiedq.bench import (
    BenchReport,
    load_report,
    run_baseline,
    run_bench,
    run_once,
    target_for_url,
    validate_report,
    write_csv,
)
from unifiedq.bench.inspection import inspect_queue
from unifiedq.bench.report import compare_rows, table_rows
from unifiedq.bench.runner import RunConfig, make_body, parse_body, percentile
from unifiedq.bench.targets import describe_drivers, embedded_targets
from unifiedq.cli.bench import bench_main
from unifiedq.drivers.memory import MemoryQueue

_names = itertools.count()


def _shm_available() -> bool:
    try:
        registry.get_driver("shm")
    except (unifiedq.DriverUnavailable, unifiedq.DriverNotFound):
        return False
    return True


# -- faulty drivers, registered through the public register_driver() ---------------------------


class LossyQueue(MemoryQueue):
    """Drops every 5th job but still returns an id: the bench must notice."""

    driver = "lossy"
    _count = itertools.count(1)

    def _enqueue(self, req: EnqueueRequest) -> str:
        if next(self._count) % 5 == 0:
            return req.job_id
        return super()._enqueue(req)


class ReorderingQueue(MemoryQueue):
    """Gives later jobs a higher priority, so they come out first (breaks FIFO)."""

    driver = "reorder"
    _count = itertools.count()

    def _enqueue(self, req: EnqueueRequest) -> str:
        return super()._enqueue(dataclasses.replace(req, priority=min(9, next(self._count) % 10)))


class DuplicatingQueue(MemoryQueue):
    """Puts a copy of every 3rd dequeued job back: at-least-once gone wrong."""

    driver = "dupes"
    _count = itertools.count(1)

    def _dequeue(self, timeout: float | None) -> Job | None:
        job = super()._dequeue(timeout)
        if job is not None and next(self._count) % 3 == 0:
            super()._enqueue(EnqueueRequest.build(job.body))
        return job


class NoPeekQueue(MemoryQueue):
    """A driver without PEEK (like Faktory): peek must show as unsupported, never as 0."""

    driver = "nopeek"
    capabilities = MemoryQueue.capabilities & ~Capability.PEEK


class StatsQueue(MemoryQueue):
    """Implements the optional stats() hook."""

    driver = "withstats"

    def stats(self) -> Mapping[str, object]:
        return {"depth": self.size(), "pending": self.size(), "active": 0, "dead": None,
                "flavour": "vanilla"}


_FAULTY: dict[str, type[MemoryQueue]] = {
    "lossy": LossyQueue, "reorder": ReorderingQueue, "dupes": DuplicatingQueue,
    "nopeek": NoPeekQueue, "withstats": StatsQueue,
}


@pytest.fixture
def faulty_drivers() -> Iterator[None]:
    for scheme, cls in _FAULTY.items():
        mod = types.ModuleType(f"unifiedq_test_{scheme}")
        mod.sync_class = cls  # type: ignore[attr-defined]
        mod.async_class = None  # type: ignore[attr-defined]
        sys.modules[mod.__name__] = mod
        unifiedq.register_driver(DriverSpec(scheme, mod.__name__, None, "test driver"),
                                 replace=True)
    yield
    for scheme in _FAULTY:
        with registry._lock:
            registry._specs.pop(scheme, None)
        sys.modules.pop(f"unifiedq_test_{scheme}", None)


def _url(scheme: str = "memory") -> str:
    return f"{scheme}://bench-test-{next(_names)}"


# -- small pieces ----------------------------------------------------------------------------


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7], 99) == 7
    assert percentile([1, 2], 50) == 1
    with pytest.raises(ValueError):
        percentile([], 50)


def test_bodies_round_trip() -> None:
    body = make_body(3, 1234, 64)
    assert len(body) == 64
    assert parse_body(body) == (3, 1234)
    assert parse_body(b"nonsense") is None
    assert make_body(10, 10, 2) == b"10:10:"  # the header is never truncated


# -- runs on the embedded drivers -------------------------------------------------------------


@pytest.mark.parametrize("face", ["sync", "async"])
def test_memory_run_verifies_and_times_every_op(face: str) -> None:
    r = run_once("memory", _url(), RunConfig(load=200, producers=2, consumers=2, face=face))
    assert r.error is None
    assert r.verify is not None and r.verify.ok, r.verify
    assert r.verify.enqueued == r.verify.dequeued == 200
    assert r.verify.leftover == 0
    for op in ("enqueue", "peek", "dequeue", "ack"):
        st = r.ops[op]
        assert st.status == "ok", st
        assert st.count == 200 and st.errors == 0
        assert st.p50_us is not None and st.p99_us is not None and st.max_us is not None
        assert 0 < st.p50_us <= st.p95_us <= st.p99_us <= st.max_us  # type: ignore[operator]
        assert st.throughput is not None and st.throughput > 0
    assert r.bridged is (face == "async")  # memory is sync-native


@pytest.mark.skipif(not _shm_available(), reason="the shm driver is not installed")
@pytest.mark.parametrize("face", ["sync", "async"])
def test_shm_run_verifies(face: str) -> None:
    targets = [t for t in embedded_targets(100, 64) if t.driver == "shm"]
    assert targets and targets[0].runnable, targets
    rep = run_bench(targets, loads=[10, 100], ops=["enqueue", "peek", "dequeue"], face=face,
                    producers=2, consumers=2)
    assert rep.ok, rep.problems()
    assert [r.load for r in rep.runs] == [10, 100]
    for r in rep.runs:
        assert r.ops["enqueue"].count == r.load
        assert r.ops["dequeue"].count == r.load
        assert r.ops["ack"].status == "unsupported"  # shm is at-most-once


def test_embedded_targets_never_drop_shm() -> None:
    targets = embedded_targets(1000, 64)
    assert [t.driver for t in targets] == ["memory", "shm"]
    shm = targets[1]
    if not _shm_available():
        assert shm.status == "unavailable" and shm.reason


# -- verification catches faulty drivers ------------------------------------------------------


@pytest.mark.usefixtures("faulty_drivers")
def test_lost_jobs_are_reported_loudly(capsys: pytest.CaptureFixture[str]) -> None:
    r = run_once("lossy", _url("lossy"), RunConfig(load=50, drain_timeout=0.5))
    assert r.verify is not None
    assert not r.verify.ok
    assert r.verify.lost == 10
    assert r.verify.enqueued == 50 and r.verify.dequeued == 40
    assert any("LOST 10 of 50" in p for p in r.verify.problems)

    status = bench_main([_url("lossy"), "--loads", "20", "--no-progress",
                         "--drain-timeout", "0.5"])
    out = capsys.readouterr().out
    assert status == 1
    assert "VERIFICATION FAILED" in out
    assert "LOST 4 of 20" in out


@pytest.mark.usefixtures("faulty_drivers")
def test_reordering_is_reported() -> None:
    r = run_once("reorder", _url("reorder"), RunConfig(load=30))
    assert r.verify is not None
    assert r.verify.fifo_violations > 0
    assert r.verify.lost == 0
    assert not r.verify.ok
    assert any("FIFO broken" in p for p in r.verify.problems)


@pytest.mark.usefixtures("faulty_drivers")
def test_duplicates_are_reported() -> None:
    r = run_once("dupes", _url("dupes"), RunConfig(load=30, drain_timeout=0.5))
    assert r.verify is not None
    assert r.verify.duplicated > 0
    assert not r.verify.ok


def test_correct_driver_is_not_flagged() -> None:
    # The same checks on the reference driver with several producers and consumers.
    r = run_once("memory", _url(), RunConfig(load=300, producers=3, consumers=3))
    assert r.verify is not None
    assert r.verify.ok, r.verify.problems
    assert r.verify.fifo_violations == 0


@pytest.mark.usefixtures("faulty_drivers")
def test_unsupported_op_is_shown_as_unsupported_not_zero() -> None:
    rep = run_bench([target_for_url(_url("nopeek"))], loads=[10], ops=["enqueue", "peek"])
    st = rep.runs[0].ops["peek"]
    assert st.status == "unsupported"
    assert st.p50_us is None and st.count == 0
    assert "PEEK" in (st.error or "")
    rows = table_rows(rep)
    peek_row = next(r for r in rows if r[2] == "peek")
    assert peek_row[3] == "unsupported"
    assert rep.ok  # lacking an op is not a failure


def test_unavailable_driver_is_listed_not_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = DriverSpec("ghostq", "unifiedq_no_such_module_here", "ghost", "missing")
    monkeypatch.setitem(registry._specs, "ghostq", spec)
    t = target_for_url("ghostq://x")
    assert t.status == "unavailable" and not t.runnable
    rep = run_bench([target_for_url(_url()), t], loads=[5], ops=["enqueue"])
    doc = rep.to_dict()
    ghost = next(x for x in doc["targets"] if x["driver"] == "ghostq")
    assert ghost["status"] == "unavailable" and ghost["reason"]
    assert any(r[0] == "ghostq" and r[3] == "UNAVAILABLE" for r in table_rows(rep))


# -- JSON / CSV / compare / plot -------------------------------------------------------------


@pytest.fixture(scope="module")
def report() -> BenchReport:
    return run_bench(embedded_targets(20, 32), loads=[5, 20], ops=["enqueue", "peek", "dequeue"],
                     size=32, baseline=True)


def test_json_schema_and_round_trip(report: BenchReport, tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    report.write_json(path)
    data = json.loads(path.read_text())
    assert validate_report(data) == []
    assert data["schema"] == "unifiedq-bench/1"
    env = data["environment"]
    assert env["python"]["version"].count(".") == 2
    assert env["packages"]["unifiedq"] == unifiedq.__version__
    assert env["machine"]["cpu_count"] >= 1
    assert data["config"]["loads"] == [5, 20]
    assert {t["driver"] for t in data["targets"]} == {"memory", "shm"}
    run = data["runs"][0]
    assert set(run["ops"]) == {"enqueue", "peek", "dequeue", "ack"}
    assert run["verify"]["ok"] is True
    assert run["baseline"]["status"] == "ok"
    again = load_report(path)
    assert again.to_dict()["runs"] == data["runs"]


def test_schema_check_rejects_broken_documents(report: BenchReport) -> None:
    good = report.to_dict()
    assert validate_report(good) == []
    bad = json.loads(json.dumps(good))
    bad["runs"][0]["ops"]["enqueue"]["p50_us"] = "fast"
    assert any("p50_us" in e for e in validate_report(bad))
    bad = json.loads(json.dumps(good))
    del bad["environment"]
    assert validate_report(bad)
    bad = json.loads(json.dumps(good))
    bad["runs"][0]["ops"]["peek"]["status"] = "maybe"
    assert any("status" in e for e in validate_report(bad))
    assert validate_report([]) == ["top level must be an object"]


def test_csv_has_a_row_per_driver_load_op(report: BenchReport, tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    write_csv(report, path)
    lines = path.read_text().splitlines()
    ran = len(report.runs)
    skipped = sum(1 for t in report.targets if t["status"] != "ok")
    assert lines[0].startswith("driver,url,face,bridged,load,op,status")
    assert len(lines) == 1 + ran * 4 + skipped
    memory_enqueue = [ln for ln in lines if ln.startswith("memory,") and ",enqueue,ok," in ln]
    assert len(memory_enqueue) == 2
    assert all(ln.split(",")[-1] for ln in memory_enqueue)  # overhead ratio filled in


def test_compare_gives_ratios(report: BenchReport) -> None:
    other = BenchReport.from_dict(json.loads(json.dumps(report.to_dict())))
    for r in other.runs:
        st = r.ops["enqueue"]
        assert st.p50_us is not None and st.throughput is not None
        st.p50_us *= 2
        st.throughput /= 2
    rows = compare_rows(report, other)
    enq = [r for r in rows if r[2] == "enqueue"]
    assert enq and all(r[5] == "2.00x" and r[8] == "0.50x" for r in enq)


def test_plot_file_is_a_png(report: BenchReport, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from unifiedq.bench.plot import plot_report

    out = plot_report(report, tmp_path / "chart.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000


# -- baselines ----------------------------------------------------------------------------------


def test_memory_baseline_runs() -> None:
    b = run_baseline("memory", None, 50, 16)
    assert b.status == "ok", b.reason
    assert b.ops["enqueue"].count == 50 and b.ops["dequeue"].count == 50
    assert b.ops["ack"].status == "unsupported"


def test_missing_baseline_degrades() -> None:
    b = run_baseline("no-such-scheme", None, 10, 16)
    assert b.status == "unavailable" and b.reason


def test_baseline_with_unreachable_server_is_an_error_not_a_crash() -> None:
    pytest.importorskip("redis")
    b = run_baseline("redis", "redis://127.0.0.1:1/0", 5, 16)
    assert b.status == "error" and b.reason


# -- drivers listing and inspect ---------------------------------------------------------------


def test_describe_drivers_covers_every_builtin_scheme() -> None:
    infos = {i.scheme: i for i in describe_drivers()}
    assert {"memory", "shm", "redis", "amqp", "faktory", "quic"} <= infos.keys()
    mem = infos["memory"]
    assert mem.installed and mem.native_sync and not mem.native_async
    assert "PEEK" in mem.capabilities and "ACK" in mem.capabilities
    for i in infos.values():
        assert i.installed or i.reason


def test_inspect_without_hook_falls_back_to_size_and_peek() -> None:
    url = _url()
    with unifiedq.connect(url) as q:
        q.enqueue(b"a")
        q.enqueue(b"b")
        info = inspect_queue(url)
        assert q.size() == 2  # inspecting took nothing
    f = info["fields"]
    assert f["depth"] == 2
    assert f["oldest_age"] is not None and f["oldest_age"] >= 0
    assert info["stats_hook"] is False
    assert {"pending", "active", "scheduled", "retry", "dead"} <= set(info["unknown"])
    assert info["source"]["depth"] == "size()"


@pytest.mark.usefixtures("faulty_drivers")
def test_inspect_uses_the_stats_hook() -> None:
    url = _url("withstats")
    with unifiedq.connect(url) as q:
        q.enqueue(b"a")
        info = inspect_queue(url)
    f = info["fields"]
    assert info["stats_hook"] is True
    assert f["depth"] == 1 and f["pending"] == 1 and f["active"] == 0
    assert f["flavour"] == "vanilla"
    assert "dead" in info["unknown"] and "pending" not in info["unknown"]
    assert info["source"]["pending"] == "stats()"
