"""End-to-end rate of ``unifiedq worker --processes N`` (issue 18, scale out on one host).

    python benchmarks/worker_processes.py [--modes noop,cpu,sleep] [--backends redis,shm]
        [--rounds 5] [--processes 1,2,4] [--concurrency 8] [--threads-baseline]
        [--jobs 20000] [--work-ms 2] [--work-jobs 2000] [--sleep-ms 20] [--sleep-jobs 2000]
        [--flavour auto] [--plain] [--redis-url URL] [--out PATH]

Runs the real command ``python -m unifiedq worker bench_app:app --url URL --processes N
--concurrency C`` (a subprocess) with one of three handlers:

- ``noop``: does nothing (the rate of the queue and the worker's own overhead);
- ``cpu``: ``--work-ms`` milliseconds of CPU per job in a pure-Python loop (it holds the
  interpreter lock, so one process cannot run more than ``1000 / work-ms`` jobs/s however
  many threads it has: only processes add cores);
- ``sleep``: ``time.sleep(--sleep-ms)`` per job (I/O-bound: threads overlap the waits, so
  ``--concurrency`` scales it, processes too).

Backends: ``redis`` (a ``redis-server`` started on a free port by the test rig;
``--redis-url`` uses yours and then measures no server CPU) and ``shm`` (a ``shm://`` ring
shared by the processes; no server; at-most-once, so nothing is acked).

Each run: a fresh queue already holding the jobs (64-byte bodies), which the workers may not
take until every process is up: on redis the queue is paused (asynq's ``paused`` key, which
the dequeue script honours) until every process has imported the app and holds a Redis
connection; on shm each process's app import waits for a go file, created once every process
has imported it. Pausing keeps the children's staggered interpreter start-up out of the rate.
The run is timed from the first pickup to the last job done (redis: asynq's pending and
active sets both empty; shm: the handlers' done counters, one small mmap per process, sum to
the job count), polled every 5 ms, then the command gets SIGTERM.

Reported per backend, handler and configuration, as medians and ranges over rounds (runs
interleaved: each round runs every configuration once, in a rotated order, so drift in the
shared machine's load hits them all alike):

- ``jobs/s``: jobs / (last done - first pickup); ``ratio``: to ``--processes 1`` (same
  concurrency) of the same round;
- ``worker cores``: CPU seconds of every worker process (and the supervisor) during the
  drain, per second of drain (``/proc/PID/stat``): how many cores the workers kept busy;
- ``redis cores``: the same for ``redis-server``: near 1.0 the backend is the limit;
- ``host busy``: cores busy on the whole host during the drain (``/proc/stat``: this
  benchmark, its Redis, and whatever else shares the machine);
- ``load``: the 1-minute load average when the run started;
- ``start-up``: seconds from the command's start until every process is up.

``--threads-baseline`` adds ``--processes 1 --concurrency 1`` to the ``cpu`` handler (one
thread: shows that ``--concurrency 8`` threads do not add a core) and ``--processes 1
--concurrency 8x4`` to the ``sleep`` handler (threads overlap waits as well as processes).
``--plain`` adds N independent ``unifiedq worker`` commands (no supervisor) for each N > 1,
to show that the supervisor costs nothing.

Writes ``benchmarks/results/worker_processes.{md,json}`` (``--out`` changes the stem).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import unifiedq  # noqa: E402
from unifiedq.testing.servers import RedisServer  # noqa: E402

BODY = b"x" * 64
# The app marks each process that imported it (READY_DIR/<pid>), waits for READY_DIR/go if
# asked to (shm: the jobs are already there), and counts the jobs it finished in an 8-byte
# mmap (READY_DIR/<pid>.done) that the benchmark reads.
APP = '''\
import mmap, os, pathlib, struct, threading, time
_dir = pathlib.Path(os.environ["READY_DIR"])
_f = open(_dir / f"{os.getpid()}.done", "w+b")
_f.write(bytes(8)); _f.flush()
_mm = mmap.mmap(_f.fileno(), 8)
(_dir / str(os.getpid())).touch()
if os.environ.get("BENCH_GATE"):
    while not (_dir / "go").exists():
        time.sleep(0.001)
WORK = float(os.environ.get("BENCH_WORK_MS", "0")) / 1000
SLEEP = float(os.environ.get("BENCH_SLEEP_MS", "0")) / 1000
_lock = threading.Lock()
_done = 0
_tt = time.thread_time


def app(job):
    global _done
    if WORK:
        # CPU time of this thread, so each job costs WORK seconds of CPU however busy the
        # host is; the pure-Python loop holds the interpreter lock while it runs.
        end = _tt() + WORK
        while _tt() < end:
            for _ in range(200):
                pass
    if SLEEP:
        time.sleep(SLEEP)
    with _lock:
        _done += 1
        struct.pack_into("q", _mm, 0, _done)
'''


@dataclass(frozen=True)
class Config:
    """One row of a table: ``processes`` x ``concurrency``, supervised or plain."""

    processes: int
    concurrency: int
    plain: bool = False

    @property
    def name(self) -> str:
        if self.plain:
            return f"plain x{self.processes} -c {self.concurrency}"
        return f"-p {self.processes} -c {self.concurrency}"


@dataclass(frozen=True)
class Mode:
    """A handler and how many jobs a run of it gets."""

    name: str
    jobs: int
    env: tuple[tuple[str, str], ...]
    label: str


def _cpu_of(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _host_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of every core since boot."""
    vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = vals[3] + vals[4]  # idle + iowait
    total = sum(vals[:8])     # guest time is already counted in user
    return total - idle, total


def _clients(r: Any) -> int:
    return int(r.info("clients")["connected_clients"])


def _pids(ready: Path) -> list[int]:
    return [int(p.name) for p in ready.iterdir() if p.name.isdigit()]


def _done(ready: Path) -> int:
    n = 0
    for p in ready.glob("*.done"):
        with contextlib.suppress(OSError, struct.error):
            n += struct.unpack("q", p.read_bytes()[:8])[0]
    return n


def run_once(backend: str, base_url: str, app_dir: Path, mode: Mode, cfg: Config,
             flavour: str, redis_pid: int | None) -> dict[str, float]:
    """One run: fill a fresh held queue, start the command(s), release it, time the drain."""
    n = mode.jobs
    qname = f"wp-{uuid.uuid4().hex[:8]}"
    ready = app_dir / qname
    ready.mkdir()
    r: Any = None
    if backend == "redis":
        import redis

        url = f"{base_url}?queue={qname}"
        r = redis.Redis.from_url(base_url)
        # asynq's pause key, which the dequeue script honours: the jobs wait until every
        # process is up, so the rate is that of N running processes, not of their starts.
        paused = f"asynq:{{{qname}}}:paused"
        r.set(paused, str(int(time.time())))
    else:
        url = f"shm://{qname}?capacity={1 << (max(n, 2) - 1).bit_length()}&slot_size=128"
    q = unifiedq.connect(url)
    for i in range(0, n, 1000):
        q.enqueue_many([BODY] * min(1000, n - i))
    cmd = [sys.executable, "-m", "unifiedq", "worker", "bench_app:app", "--url", url,
           "--concurrency", str(cfg.concurrency), "--flavour", flavour,
           "--log-level", "WARNING"]
    env = {**os.environ, "PYTHONPATH": f"{app_dir}{os.pathsep}{ROOT / 'src'}",
           "READY_DIR": str(ready), **dict(mode.env)}
    if backend == "shm":
        env["BENCH_GATE"] = "1"
    clients0 = _clients(r) if r is not None else 0
    load = os.getloadavg()[0]
    t_start = time.monotonic()
    procs = cfg.processes
    commands = [cmd] * procs if cfg.plain else [[*cmd, "--processes", str(procs)]]
    ps = [subprocess.Popen(c, cwd=app_dir, env=env, stdin=subprocess.DEVNULL) for c in commands]
    t_first = None
    try:
        # Up = every process imported the app (and, on redis, as many connections as
        # processes are open: a worker opens its first for its first dequeue).
        while len(_pids(ready)) < procs or (r is not None and _clients(r) < clients0 + procs):
            if any(p.poll() is not None for p in ps) or time.monotonic() - t_start > 60:
                raise RuntimeError(f"the workers did not start: {[p.poll() for p in ps]}")
            time.sleep(0.01)
        t_up = time.monotonic()
        if r is not None:
            time.sleep(0.2)
        pids = sorted({*_pids(ready), *(p.pid for p in ps)})
        wcpu0 = sum(_cpu_of(p) for p in pids)
        rcpu0 = _cpu_of(redis_pid)
        host0 = _host_jiffies()
        t_go = time.monotonic()
        if r is not None:
            r.delete(paused)
        else:
            (ready / "go").touch()
        while True:
            now = time.monotonic()
            if r is not None:
                st = q.stats()  # type: ignore[attr-defined]  # one script call
                pending, active = int(st["pending"]), int(st["active"])
                finished = pending == 0 and active == 0
            else:
                pending = q.size()
                finished = _done(ready) >= n
            if t_first is None and pending < n:
                t_first = now
            if finished:
                t_end = now
                break
            if any(p.poll() is not None for p in ps):
                raise RuntimeError(f"a worker exited early: {[p.poll() for p in ps]}")
            if now - t_start > 600:
                raise RuntimeError("the run took more than 600 s")
            time.sleep(0.005)
        wcpu = sum(_cpu_of(p) for p in pids) - wcpu0
        rcpu = _cpu_of(redis_pid) - rcpu0
        host1 = _host_jiffies()
        done = _done(ready)
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
        if backend == "shm":
            q.unlink()  # type: ignore[attr-defined]
        q.close()
        if r is not None:
            r.close()
    assert t_first is not None
    drain = max(t_end - t_go, 1e-9)
    busy, total = host1[0] - host0[0], host1[1] - host0[1]
    return {"rate": n / max(t_end - t_first, 1e-9), "seconds": t_end - t_first,
            "worker_cores": wcpu / drain, "worker_cpu_ms_per_job": wcpu * 1000 / n,
            "redis_cores": rcpu / drain if redis_pid else float("nan"),
            "host_busy_cores": (os.cpu_count() or 1) * busy / max(total, 1),
            "load1": load, "startup_s": t_up - t_start, "handled": float(done)}


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@contextlib.contextmanager
def _redis(url: str | None, needed: bool) -> Iterator[tuple[str, int | None, str]]:
    if not needed:
        yield "", None, "-"
    elif url:
        yield url, None, "external"
    else:
        with RedisServer() as srv:
            yield srv.url, srv.pid, srv.binary_version()


def _modes(args: argparse.Namespace) -> list[Mode]:
    every = {
        "noop": Mode("noop", args.jobs, (), "no-op handler"),
        "cpu": Mode("cpu", args.work_jobs, (("BENCH_WORK_MS", str(args.work_ms)),),
                    f"CPU-bound handler ({args.work_ms:g} ms of pure-Python CPU per job)"),
        "sleep": Mode("sleep", args.sleep_jobs, (("BENCH_SLEEP_MS", str(args.sleep_ms)),),
                      f"I/O-bound handler (time.sleep({args.sleep_ms / 1000:g}) per job)"),
    }
    return [every[m] for m in args.modes.split(",")]


def _configs(args: argparse.Namespace, mode: Mode) -> list[Config]:
    counts = [int(x) for x in args.processes.split(",")]
    out = [Config(c, args.concurrency) for c in counts]
    if args.threads_baseline:
        if mode.name == "cpu" and args.concurrency != 1:
            out.insert(0, Config(1, 1))  # one thread: as fast as -c 8 (one core either way)
        if mode.name == "sleep" and max(counts) > 1:
            # As many threads in one process as the largest -p has slots: waits overlap
            # in threads as well as in processes.
            out.append(Config(1, args.concurrency * max(counts)))
    if args.plain:
        out += [Config(c, args.concurrency, plain=True) for c in counts if c > 1]
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print and write the tables. Returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="noop,cpu,sleep")
    ap.add_argument("--backends", default="redis,shm")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--processes", default="1,2,4")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--threads-baseline", action="store_true",
                    help="cpu handler: add --processes 1 --concurrency 1")
    ap.add_argument("--jobs", type=int, default=20_000, help="jobs per no-op run")
    ap.add_argument("--work-ms", type=float, default=2.0)
    ap.add_argument("--work-jobs", type=int, default=2000)
    ap.add_argument("--sleep-ms", type=float, default=20.0)
    ap.add_argument("--sleep-jobs", type=int, default=2000)
    ap.add_argument("--flavour", default="auto", choices=("auto", "threads", "asyncio"))
    ap.add_argument("--plain", action="store_true",
                    help="add N plain `unifiedq worker` commands (no supervisor)")
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/worker_processes"))
    args = ap.parse_args(argv)
    backends = args.backends.split(",")
    modes = _modes(args)
    # Every (backend, mode, config) runs once per round.
    cells = [(b, m, c) for b in backends for m in modes for c in _configs(args, m)]
    runs: dict[str, list[dict[str, float] | None]] = {_key(*cell): [] for cell in cells}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, \
            _redis(args.redis_url, "redis" in backends) as (rurl, rpid, rver):
        app_dir = Path(tmp)
        (app_dir / "bench_app.py").write_text(APP)
        for rnd in range(args.rounds):
            k = rnd % len(cells)
            for b, m, c in cells[k:] + cells[:k]:
                key = _key(b, m, c)
                try:
                    res = run_once(b, rurl, app_dir, m, c, args.flavour, rpid)
                except (RuntimeError, unifiedq.UnifiedQError) as exc:
                    print(f"round {rnd + 1}/{args.rounds} {key}: FAILED: {exc}", flush=True)
                    runs[key].append(None)
                    continue
                runs[key].append(res)
                print(f"round {rnd + 1}/{args.rounds} {key:>28}: {res['rate']:8.0f} jobs/s, "
                      f"worker {res['worker_cores']:.2f} cores, redis "
                      f"{res['redis_cores']:.2f}, host {res['host_busy_cores']:.2f}, "
                      f"load {res['load1']:.1f}", flush=True)
    tables = []
    for b in backends:
        for m in modes:
            cfgs = _configs(args, m)
            base = _key(b, m, Config(1, args.concurrency))
            rows = []
            for c in cfgs:
                key = _key(b, m, c)
                ok = [x for x in runs[key] if x is not None]
                row: dict[str, Any] = {"config": c.name, "processes": c.processes,
                                       "concurrency": c.concurrency, "plain": c.plain}
                row.update({k: _summary([x[k] for x in ok]) for k in ok[0]} if ok else {})
                row["failed_runs"] = len(runs[key]) - len(ok)
                row["ratio"] = _ratio(runs[key], runs[base])
                rows.append(row)
            tables.append({"backend": b, "mode": m.name, "label": m.label, "jobs": m.jobs,
                           "rows": rows})
    command = "python benchmarks/worker_processes.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    env = {"cpus": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
           "machine": platform.machine(), "cpu_model": _cpu_model(),
           "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "python": platform.python_version(), "redis": rver,
           "commit": _git_commit(), "unifiedq": unifiedq.__version__}
    doc = {"command": command.strip(), "environment": env, "rounds": args.rounds,
           "concurrency": args.concurrency, "flavour": args.flavour, "work_ms": args.work_ms,
           "sleep_ms": args.sleep_ms, "tables": tables, "runs": runs}
    md = _markdown(doc)
    print(md)
    Path(args.out + ".json").write_text(json.dumps(doc, indent=2) + "\n")
    Path(args.out + ".md").write_text(md)
    return 0


def _key(backend: str, mode: Mode, cfg: Config) -> str:
    return f"{backend} {mode.name} {cfg.name}"


def _ratio(a: list[dict[str, float] | None], b: list[dict[str, float] | None]) \
        -> dict[str, float] | None:
    # Per round: both runs shared that round's machine load.
    rs = [x["rate"] / y["rate"] for x, y in zip(a, b, strict=True)
          if x is not None and y is not None]
    return _summary(rs) if rs else None


def _fmt(s: dict[str, float] | None, digits: int = 0) -> str:
    if not s:
        return "-"
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f} - {s['max']:,.{digits}f})"


def _markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    lines = [
        "# `unifiedq worker --processes N`: rate against cores",
        "",
        f"Command: `{doc['command']}`",
        "",
        f"**The machine has {env['cpus']} cores** (`os.cpu_count()`; this process may run on "
        f"cores {env['affinity']}, `os.sched_getaffinity`; {env['cpu_model']}), shared with "
        "other work while this ran; Redis and the benchmark itself run on the same cores. "
        f"`--concurrency {doc['concurrency']}` per process unless the row says otherwise, "
        f"`--flavour {doc['flavour']}` (threads for these sync handlers), {doc['rounds']} "
        "interleaved rounds; medians (min - max).",
        "",
        f"Python {env['python']}, Redis {env['redis']}, commit {env['commit']}.",
        "",
        f"Load average (1, 5, 15 min) before: {_load(env['load_average_before'])}, after: "
        f"{_load(env['load_average_after'])}.",
    ]
    for t in doc["tables"]:
        lines += [
            "",
            f"## {t['backend']}://, {t['label']}, {t['jobs']:,} jobs",
            "",
            f"| configuration | jobs/s | ratio to `-p 1 -c {doc['concurrency']}` | worker cores "
            "| worker CPU ms/job | redis cores | host busy cores | load (1 min) | start-up s "
            "| failed |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in t["rows"]:
            if "rate" not in row:
                lines.append(f"| `{row['config']}` | - | - | - | - | - | - | - | - "
                             f"| {row['failed_runs']} |")
                continue
            redis = "-" if t["backend"] != "redis" else _fmt(row["redis_cores"], 2)
            lines.append(
                f"| `{row['config']}` | {_fmt(row['rate'])} | {_fmt(row['ratio'], 2)} | "
                f"{_fmt(row['worker_cores'], 2)} | {_fmt(row['worker_cpu_ms_per_job'], 3)} | "
                f"{redis} | {_fmt(row['host_busy_cores'], 2)} | {_fmt(row['load1'], 1)} | "
                f"{_fmt(row['startup_s'], 2)} | {row['failed_runs']} |")
    lines += [
        "",
        "jobs/s: jobs / (last job done - first pickup). Ratios are medians of per-round "
        f"ratios to `-p 1 -c {doc['concurrency']}` (the two runs of a round shared its machine "
        "load). Worker, redis and host cores: CPU seconds per second of the drain (from "
        "`/proc`); worker cores count every worker process and the supervisor; host busy "
        f"counts everything on the machine (at most {env['cpus']}).",
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
