"""End-to-end rate of ``unifiedq worker --processes N`` on redis:// (issue 18, scale out).

    python benchmarks/worker_processes.py [--jobs 10000] [--rounds 5] [--processes 1,2,4]
        [--concurrency 8] [--flavour auto] [--no-plain] [--redis-url URL] [--out PATH]

Starts its own ``redis-server`` on a free port (the test rig; ``--redis-url`` uses yours,
and then measures no server CPU). Each run: a fresh queue, paused (asynq's ``paused`` key,
which the dequeue script honours), with ``--jobs`` 64-byte no-op jobs; then the real command
``python -m unifiedq worker bench_app:app --url URL --processes N --concurrency C``
(``bench_app.app`` does nothing); once every process has imported the app and holds a Redis
connection (and 0.2 s more) the queue is unpaused, and the run is timed until every job is
acked (asynq's pending and active sets both empty, polled every 5 ms), then SIGTERM. Pausing
keeps the children's staggered interpreter start-up (which would be half of a 10,000-job
run) out of the rate.

Reported per configuration, as medians and ranges over rounds (runs interleaved: each round
runs every configuration once, in a rotated order, so drift in the shared machine's load hits
them all alike):

- ``rate``: jobs / (last ack - first pickup), jobs/s;
- ``mid rate``: the middle 80% of the jobs (taken from 10% to 90% of the queue) over the
  time they took;
- ``start-up``: seconds from the command's start until every process is connected;
- ``worker CPU``: user + system CPU seconds of the command and all its children per 10,000
  jobs, start-up included (``RUSAGE_CHILDREN``);
- ``redis CPU``: the server's CPU seconds per 10,000 jobs during the drain
  (``/proc/PID/stat``): when it nears one core per second of run, the backend is the limit;
- ratios to ``--processes 1`` from the same round (median and range).

``plain xN`` (unless ``--no-plain``) starts N independent ``unifiedq worker`` commands
instead of one supervised one: the supervisor should cost nothing, so the two should match.

Writes ``benchmarks/results/worker_processes.{md,json}`` (``--out`` changes the stem).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import unifiedq  # noqa: E402
from unifiedq.testing.servers import RedisServer  # noqa: E402

BODY = b"x" * 64
# The app marks each process that imported it (READY_DIR/<pid>), then does nothing per job.
APP = ("import os, pathlib\n"
       "pathlib.Path(os.environ['READY_DIR'], str(os.getpid())).touch()\n"
       "def app(job):\n    pass\n")


def _cpu_of(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _fill(q: Any, n: int) -> None:
    for i in range(0, n, 1000):
        q.enqueue_many([BODY] * min(1000, n - i))


def _clients(r: Any) -> int:
    return int(r.info("clients")["connected_clients"])


def run_once(base_url: str, app_dir: Path, n: int, procs: int, conc: int, flavour: str,
             plain: bool, redis_pid: int | None) -> dict[str, float]:
    """One run: fill a fresh paused queue, start the command(s), unpause, time the drain."""
    import redis

    qname = f"wp-{uuid.uuid4().hex[:8]}"
    url = f"{base_url}?queue={qname}"
    q = unifiedq.connect(url)
    r = redis.Redis.from_url(base_url)
    # asynq's pause key, which the dequeue script honours: the jobs wait until every process
    # is up, so the rate is that of N running processes, not of their staggered starts.
    paused = f"asynq:{{{qname}}}:paused"
    r.set(paused, str(int(time.time())))
    _fill(q, n)
    cmd = [sys.executable, "-m", "unifiedq", "worker", "bench_app:app", "--url", url,
           "--concurrency", str(conc), "--flavour", flavour, "--log-level", "WARNING"]
    ready = app_dir / qname
    ready.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{app_dir}{os.pathsep}{ROOT / 'src'}",
           "READY_DIR": str(ready)}
    cpu0, clients0 = _children_cpu(), _clients(r)
    t_start = time.monotonic()
    commands = [cmd] * procs if plain else [[*cmd, "--processes", str(procs)]]
    ps = [subprocess.Popen(c, cwd=app_dir, env=env, stdin=subprocess.DEVNULL) for c in commands]
    t_first = t10 = t90 = None
    try:
        # Up = every process imported the app, and as many Redis connections as processes
        # are open (a worker opens its first for its first dequeue, just after the import).
        while len(list(ready.iterdir())) < procs or _clients(r) < clients0 + procs:
            if any(p.poll() is not None for p in ps) or time.monotonic() - t_start > 60:
                raise RuntimeError(f"the workers did not start: {[p.poll() for p in ps]}")
            time.sleep(0.01)
        t_up = time.monotonic()
        time.sleep(0.2)
        rcpu0 = _cpu_of(redis_pid)
        r.delete(paused)
        while True:
            st = q.stats()  # type: ignore[attr-defined]  # one script call
            now = time.monotonic()
            pending, active = int(st["pending"]), int(st["active"])
            if t_first is None and pending < n:
                t_first = now
            if t10 is None and pending <= 0.9 * n:
                t10 = now
            if t90 is None and pending <= 0.1 * n:
                t90 = now
            if pending == 0 and active == 0:
                t_end = now
                break
            if any(p.poll() is not None for p in ps):
                raise RuntimeError(f"a worker exited early: {[p.poll() for p in ps]}")
            if now - t_start > 600:
                raise RuntimeError("the run took more than 600 s")
            time.sleep(0.005)
        rcpu = _cpu_of(redis_pid) - rcpu0
    finally:
        for p in ps:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in ps:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        q.purge()
        q.close()
        r.close()
    cpu = _children_cpu() - cpu0
    assert t_first is not None and t10 is not None and t90 is not None
    mid = max(t90 - t10, 1e-9)
    return {"rate": n / (t_end - t_first), "mid_rate": 0.8 * n / mid,
            "startup_s": t_up - t_start, "worker_cpu_per_10k": cpu * 10_000 / n,
            "redis_cpu_per_10k": rcpu * 10_000 / n if redis_pid else float("nan"),
            "seconds": t_end - t_first}


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@contextlib.contextmanager
def _redis(url: str | None) -> Iterator[tuple[str, int | None, str]]:
    if url:
        yield url, None, "external"
        return
    with RedisServer() as srv:
        yield srv.url, srv.pid, srv.binary_version()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print and write the tables. Returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--processes", default="1,2,4")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--flavour", default="auto", choices=("auto", "threads", "asyncio"))
    ap.add_argument("--no-plain", action="store_true", help="skip the plain xN comparison")
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/worker_processes"))
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.processes.split(",")]
    configs: list[tuple[str, int, bool]] = [(f"--processes {c}", c, False) for c in counts]
    if not args.no_plain:
        configs += [(f"plain x{c}", c, True) for c in counts if c > 1]
    # One entry per round; None where that run failed (it is reported, not hidden).
    results: dict[str, list[dict[str, float] | None]] = {name: [] for name, _, _ in configs}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, _redis(args.redis_url) as (url, rpid, rver):
        app_dir = Path(tmp)
        (app_dir / "bench_app.py").write_text(APP)
        for r in range(args.rounds):
            order = configs[r % len(configs):] + configs[:r % len(configs)]
            for name, c, plain in order:
                try:
                    res = run_once(url, app_dir, args.jobs, c, args.concurrency, args.flavour,
                                   plain, rpid)
                except (RuntimeError, unifiedq.UnifiedQError) as exc:
                    print(f"round {r + 1}/{args.rounds} {name:>14}: FAILED: {exc}", flush=True)
                    results[name].append(None)
                    continue
                results[name].append(res)
                print(f"round {r + 1}/{args.rounds} {name:>14}: {res['rate']:8.0f} jobs/s "
                      f"(mid {res['mid_rate']:.0f}, start {res['startup_s']:.2f} s), worker CPU "
                      f"{res['worker_cpu_per_10k']:.2f} s/10k, redis CPU "
                      f"{res['redis_cpu_per_10k']:.2f} s/10k", flush=True)
    base = f"--processes {counts[0]}"

    def ratio(a: str, b: str) -> dict[str, float] | None:
        # Per round: both runs shared that round's machine load.
        rs = [x["rate"] / y["rate"] for x, y in zip(results[a], results[b], strict=True)
              if x is not None and y is not None]
        return _summary(rs) if rs else None

    table: dict[str, Any] = {}
    for name, c, plain in configs:
        runs = [x for x in results[name] if x is not None]
        row: dict[str, Any] = {k: _summary([x[k] for x in runs]) for k in runs[0]} if runs \
            else {}
        row["failed_runs"] = len(results[name]) - len(runs)
        row["ratio_to_base"] = ratio(name, base)
        if not plain and c > 1 and f"plain x{c}" in results:
            row["ratio_to_plain"] = ratio(name, f"plain x{c}")
        table[name] = row
    command = "python benchmarks/worker_processes.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    env = {"cpus": os.cpu_count(), "machine": platform.machine(),
           "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "python": platform.python_version(), "redis": rver,
           "cpu_model": _cpu_model(), "commit": _git_commit(), "unifiedq": unifiedq.__version__}
    doc = {"command": command.strip(), "environment": env, "jobs": args.jobs,
           "rounds": args.rounds, "concurrency": args.concurrency, "flavour": args.flavour,
           "results": table, "runs": results}
    md = _markdown(doc, base)
    print(md)
    Path(args.out + ".json").write_text(json.dumps(doc, indent=2) + "\n")
    Path(args.out + ".md").write_text(md)
    return 0


def _fmt(s: dict[str, float], digits: int = 0) -> str:
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f} - {s['max']:,.{digits}f})"


def _markdown(doc: dict[str, Any], base: str) -> str:
    env = doc["environment"]
    lines = [
        "# `unifiedq worker --processes N` on redis://",
        "",
        f"Command: `{doc['command']}`",
        "",
        f"{doc['jobs']:,} no-op jobs (64-byte bodies) already queued, `--concurrency "
        f"{doc['concurrency']}` per process, `--flavour {doc['flavour']}`, {doc['rounds']} "
        "interleaved rounds; medians (min - max). "
        f"**The machine has {env['cpus']} cores** ({env['cpu_model']}), shared with other "
        "work while this ran, and Redis runs on the same cores: absolute rates are noisy, "
        "the ratios less so.",
        "",
        f"Python {env['python']}, Redis {env['redis']}, commit {env['commit']}.",
        "",
        f"Load average (1, 5, 15 min) before: {_load(env['load_average_before'])}, after: "
        f"{_load(env['load_average_after'])}.",
        "",
        f"| configuration | jobs/s (first pickup → last ack) | mid-run jobs/s | start-up s "
        f"| worker CPU s / 10k | redis CPU s / 10k | rate / `{base}` | rate / `plain xN` "
        "| failed runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in doc["results"].items():
        if "rate" not in row:
            lines.append(f"| `{name}` | - | - | - | - | - | - | - | {row['failed_runs']} |")
            continue
        to_plain = row.get("ratio_to_plain")
        lines.append(f"| `{name}` | {_fmt(row['rate'])} | {_fmt(row['mid_rate'])} | "
                     f"{_fmt(row['startup_s'], 2)} | {_fmt(row['worker_cpu_per_10k'], 2)} | "
                     f"{_fmt(row['redis_cpu_per_10k'], 2)} | "
                     f"{_fmt(row['ratio_to_base'], 2) if row['ratio_to_base'] else '-'} | "
                     f"{_fmt(to_plain, 2) if to_plain else '-'} | {row['failed_runs']} |")
    lines += [
        "",
        "Ratios are medians of per-round ratios (the two runs of a round shared its machine "
        "load). `plain xN` is N independent `unifiedq worker` commands without a supervisor; "
        "`rate / plain xN` compares `--processes N` with it. Worker CPU includes each "
        "interpreter's start-up (and the supervisor's own, for `--processes N > 1`).",
        "",
    ]
    return "\n".join(lines)


def _load(avg: Any) -> str:
    return ", ".join(f"{x:.1f}" for x in avg)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return out + (" + uncommitted changes in src/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
