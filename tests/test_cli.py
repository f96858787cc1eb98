"""The ``unifiedq`` command line, end to end in subprocesses (as a user runs it)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unifiedq.bench import validate_report


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def test_drivers_table_lists_every_scheme() -> None:
    p = run("-m", "unifiedq", "drivers")
    assert p.returncode == 0, p.stderr
    for scheme in ("memory", "shm", "redis", "rediss", "amqp", "faktory", "quic"):
        assert scheme in p.stdout
    assert "installed" in p.stdout
    assert "PEEK" in p.stdout


def test_drivers_json() -> None:
    p = run("-m", "unifiedq", "drivers", "--json")
    assert p.returncode == 0, p.stderr
    data = {d["scheme"]: d for d in json.loads(p.stdout)}
    mem = data["memory"]
    assert mem["installed"] is True
    assert mem["native_sync"] is True and mem["native_async"] is False
    assert {"PEEK", "ACK", "BOUNDED", "NATIVE_SYNC"} <= set(mem["capabilities"])
    for d in data.values():
        assert d["installed"] or d["reason"], d  # a missing driver says why


def test_default_bench_writes_json_csv_and_plot(tmp_path: Path) -> None:
    out_json, out_csv, out_png = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"
    p = run("-m", "unifiedq", "bench", "--loads", "10,50", "--no-progress",
            "--json", str(out_json), "--csv", str(out_csv), "--plot", str(out_png))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "all verified" in p.stdout
    data = json.loads(out_json.read_text())
    assert validate_report(data) == []
    assert {t["driver"] for t in data["targets"]} == {"memory", "shm"}  # shm never dropped
    assert data["command"].startswith("unifiedq bench")
    assert out_csv.read_text().startswith("driver,")
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_python_m_unifiedq_bench_json_to_stdout() -> None:
    p = run("-m", "unifiedq.bench", "memory://cli-json", "--loads", "5", "--ops", "enqueue",
            "--json", "-", "--face", "async", "--producers", "2")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)  # nothing but the document on stdout
    assert validate_report(data) == []
    assert data["config"]["face"] == "async" and data["config"]["producers"] == 2
    assert data["runs"][0]["bridged"] is True
    assert "all verified" in p.stderr


def test_compare(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path in (a, b):
        p = run("-m", "unifiedq", "bench", "memory://cmp", "--loads", "20", "--no-progress",
                "--json", str(path))
        assert p.returncode == 0, p.stderr
    p = run("-m", "unifiedq", "bench", "--compare", str(a), str(b))
    assert p.returncode == 0, p.stderr
    assert "new/old" in p.stdout and "memory" in p.stdout
    (tmp_path / "bad.json").write_text("{}")
    p = run("-m", "unifiedq", "bench", "--compare", str(a), str(tmp_path / "bad.json"))
    assert p.returncode == 2 and "not a valid" in p.stderr


def test_bench_bad_usage() -> None:
    p = run("-m", "unifiedq", "bench", "--loads", "ten")
    assert p.returncode == 2 and "integers" in p.stderr
    p = run("-m", "unifiedq", "bench", "--ops", "enqueue,fly")
    assert p.returncode == 2 and "fly" in p.stderr
    p = run("-m", "unifiedq", "bench", "no-such-scheme://q", "--loads", "5", "--no-progress")
    assert p.returncode == 1
    assert "no-such-scheme" in p.stdout and "unavailable" in p.stdout


def test_inspect() -> None:
    p = run("-m", "unifiedq", "inspect", "memory://inspected")
    assert p.returncode == 0, p.stderr
    assert "depth" in p.stdout and "unknown" in p.stdout
    p = run("-m", "unifiedq", "inspect", "memory://inspected", "--json")
    info = json.loads(p.stdout)
    assert info["fields"]["depth"] == 0 and info["driver"] == "memory"
    p = run("-m", "unifiedq", "inspect", "nope://x")
    assert p.returncode == 1 and "DriverNotFound" in p.stderr


@pytest.mark.parametrize(("command", "module"), [
    ("serve", "unifiedq.drivers.quic.server"),
    ("certs", "unifiedq.drivers.quic.certs"),
])
def test_serve_and_certs_are_dispatched(command: str, module: str) -> None:
    p = run("-m", "unifiedq", command, "--help")
    try:
        present = importlib.util.find_spec(module) is not None
    except ImportError:
        present = False
    if present:
        assert p.returncode == 0, p.stderr
        assert "usage" in p.stdout.lower()
    else:
        assert p.returncode == 1
        assert f"unifiedq {command}: not available" in p.stderr


def test_no_command_prints_help() -> None:
    p = run("-m", "unifiedq")
    assert p.returncode == 2
    assert "drivers" in p.stdout and "bench" in p.stdout and "inspect" in p.stdout
    p = run("-m", "unifiedq", "--version")
    assert p.returncode == 0 and "unifiedq" in p.stdout


def test_benchmarks_page_matches_committed_result() -> None:
    root = Path(__file__).resolve().parent.parent
    script = root / "benchmarks" / "render_results.py"
    result = root / "benchmarks" / "results" / "latest.json"
    data = json.loads(result.read_text())
    assert validate_report(data) == []
    assert data["ok"] is True
    p = run(str(script), "--check")
    assert p.returncode == 0, p.stderr


def test_worker_subcommand_is_wired() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "unifiedq", "worker", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--url" in out.stdout and "--concurrency" in out.stdout


def test_worker_prefetch_option() -> None:
    from unifiedq.cli.worker import _parser

    assert _parser().parse_args(["--url", "memory://x", "m:h"]).prefetch == "auto"
    assert _parser().parse_args(["--url", "memory://x", "m:h", "--prefetch", "0"]).prefetch == 0
    for bad in ("nope", "-1", "1.5", "AUTO"):
        out = run("-m", "unifiedq", "worker", "--url", "memory://x", "--prefetch", bad, "m:h")
        assert out.returncode == 2, out
        assert "--prefetch: 'auto' or a whole number >= 0" in out.stderr


def test_pause_and_resume_commands(redis_url: str) -> None:
    import uuid

    import unifiedq

    url = f"{redis_url}?queue=cli-pause-{uuid.uuid4().hex[:8]}"
    with unifiedq.connect(url) as q:
        q.enqueue(b"a")
        out = run("-m", "unifiedq", "pause", url)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().endswith(": paused")
        assert q.is_paused() and q.dequeue(timeout=0.2) is None
        out = run("-m", "unifiedq", "resume", "--status", url)  # --status changes nothing
        assert out.returncode == 0 and out.stdout.strip().endswith(": paused")
        out = run("-m", "unifiedq", "resume", url)
        assert out.returncode == 0 and out.stdout.strip().endswith(": running")
        assert q.is_paused() is False
        job = q.dequeue(timeout=5)
        assert job is not None
        q.ack(job)


def test_pause_refused_and_secret_kept(tmp_path: Path) -> None:
    # shm lacks PAUSE: a typed error, exit 1; a password in a URL is never printed.
    out = run("-m", "unifiedq", "pause", f"shm://cli-pause-{os.getpid()}", "redis://:s3cret@127.0.0.1:1/0?queue=x")
    assert out.returncode == 1
    assert "UnsupportedOperation" in out.stderr and "PAUSE" in out.stderr
    assert "s3cret" not in out.stderr + out.stdout
