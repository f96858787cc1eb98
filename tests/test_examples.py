"""The worker and peak-load examples run as real scripts and report what they should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    p = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_worker_app_example() -> None:
    out = run("examples/worker_app.py")
    assert "sent email to ada@example.com (attempt 1)" in out
    assert "sent email to bob@example.com (attempt 2)" in out  # retried once
    assert "processed=3 retried=1 dead=2" in out
    assert "NoHandler" in out and "SkipRetry: bad address" in out


def _check_peak_table(out: str) -> None:
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in {"bulk", "acme", "globex", "initech",
                                                     "umbrella"}}
    assert set(rows) == {"bulk", "acme", "globex", "initech", "umbrella"}
    for name, r in rows.items():
        sent, accepted, shed, done = map(int, r[1:5])
        assert accepted + shed == sent and done == accepted, name
    assert int(rows["bulk"][2]) == 400 and int(rows["bulk"][3]) == 200  # shed at its bound
    assert all(int(rows[t][3]) == 0 for t in ("acme", "globex", "initech", "umbrella"))
    assert "lost 0" in out


def test_peak_load_example_memory() -> None:
    _check_peak_table(run("examples/peak_load.py"))


def test_peak_load_example_redis(redis_url: str) -> None:
    pytest.importorskip("redis")
    _check_peak_table(run("examples/peak_load.py", redis_url))


@pytest.mark.parametrize("driver", ["memory", "redis"])
def test_deadlines_example(driver: str, request: pytest.FixtureRequest) -> None:
    args = ["examples/deadlines_app.py"]
    if driver == "redis":
        args.append(request.getfixturevalue("redis_url"))
    out = run(*args)
    assert "dequeued: quote for a user still waiting" in out
    assert "expired without running: 1" in out
    assert "not the worker's 60 s" in out
    assert "accounted: True" in out
    shed = int(out.split(" shed by CoDel")[0].rsplit(", ", 1)[1])
    assert shed > 0


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_results_web_example(backend: str, request: pytest.FixtureRequest) -> None:
    """examples/results_web.py answers each request with its worker's result (or error)."""
    import socket
    import time
    import uuid

    import httpx

    from unifiedq.testing.servers import find_free_port

    url = "memory://summaries"
    if backend == "redis":
        url = f"{request.getfixturevalue('redis_url')}?queue=web-{uuid.uuid4().hex[:8]}"
    port = find_free_port()
    proc = subprocess.Popen([sys.executable, "examples/results_web.py", url, "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the app did not listen within 30 s"
            time.sleep(0.1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            r = http.post("/summarize", json={"text": "buffer the request answer when done"})
            assert r.status_code == 200
            assert r.json() == {"words": 6, "longest": "request",
                                "upper": "BUFFER THE REQUEST ANSWER WHEN DONE"}
            jid = r.headers["x-job-id"]
            again = http.get(f"/jobs/{jid}")  # kept for its retention: read again
            assert again.status_code == 200 and again.json()["words"] == 6
            bad = http.post("/summarize", json={"text": " "})
            assert bad.status_code == 422 and bad.json()["error"] == "ValueError: empty text"
            assert http.get("/jobs/no-such-job?wait=0.2").status_code == 202
            assert http.post("/summarize", content=b"not json").status_code == 400
    finally:
        proc.terminate()
        proc.wait(15)
