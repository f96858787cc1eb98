"""Smoke test of the peer benchmark (benchmarks/peers/run.py) without the peers' venvs.

Runs only the unifiedq rows, which need nothing beyond this environment and redis-server,
with ``--quick``, and checks what the report promises: the JSON shape, sane numbers, and the
markdown tables. The full comparison (Go asynq, Celery, RQ, ...) needs
``bash benchmarks/peers/setup.sh`` and is not run here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from unifiedq.testing.fixtures import require_binary

RUN = Path(__file__).resolve().parent.parent / "benchmarks" / "peers" / "run.py"
SYSTEMS = ["unifiedq-redis", "unifiedq-redis-loop"]


def test_quick_run_reports_every_metric(tmp_path: Path) -> None:
    require_binary("redis-server")
    out = tmp_path / "peers"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--systems", ",".join(SYSTEMS),
         "--jobs", "300", "--samples", "20", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())

    assert report["systems"] == SYSTEMS
    assert report["config"]["jobs"] == 300 and report["config"]["rounds"] == 1
    assert report["command"].startswith("python benchmarks/peers/run.py --quick")
    assert report["versions"]["redis-server"]
    assert report["versions"]["unifiedq-redis"]["unifiedq"]
    assert report["unifiedq_tree"]["commit"]
    assert len(report["rounds"]) == 1
    for name in SYSTEMS:
        raw = report["rounds"][0][name]
        assert "error" not in raw, raw
        assert raw["pickup_samples"] == 20
        assert raw["e2e_rate"] > 0 and raw["enqueue_single_rate"] > 0
        assert raw["enqueue_batch_rate"] > 0  # unifiedq has enqueue_many
        assert 0 < raw["cpu_per_10k"] < 1000
        assert 0 < raw["pickup_p50_ms"] <= raw["pickup_p99_ms"] < 5000
        summary = report["summary"][name]
        assert summary["errors"] == []
        assert summary["e2e_rate"]["median"] == raw["e2e_rate"]
    ratio = report["summary"]["unifiedq-redis-loop"]["e2e_vs_unifiedq-redis"]["median"]
    expected = (report["rounds"][0]["unifiedq-redis-loop"]["e2e_rate"]
                / report["rounds"][0]["unifiedq-redis"]["e2e_rate"])
    assert abs(ratio - expected) < 1e-9

    md = out.with_suffix(".md").read_text()
    assert "| unifiedq `Worker` (threads), redis:// |" in md
    assert "## Enqueue" in md and "## Versions" in md


def test_unknown_system_is_refused() -> None:
    proc = subprocess.run([sys.executable, str(RUN), "--systems", "nosuch"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown systems ['nosuch']" in proc.stderr
