"""unifiedq against Go asynq and the Python task queues, side by side (issue 18, "Prove it").

    bash benchmarks/peers/setup.sh          # once: peers venvs + the Go asynq program
    python benchmarks/peers/run.py [--quick] [--systems a,b,...] [--rounds R] [--jobs N]
                                   [--samples S] [--out benchmarks/results/peers]

Installs nothing. Starts its own Redis (and RabbitMQ, when an ``amqp`` system is chosen) on
free loopback ports with the test rig, then for every round runs every system in turn
(A B C ... A B C ...), each phase in a fresh subprocess of that system's interpreter:

1. ``enqueue`` batched (systems with a batch API, ``--batch`` jobs per call), then flushed;
2. ``enqueue`` single: ``--jobs`` 64-byte jobs, one call each, from one client;
3. ``work``: a worker process (``--concurrency`` 8) drains those queued jobs with a no-op
   handler; rate and CPU are measured inside it from the first handler start to the last
   handler end (interpreter start-up excluded), CPU as the process's rusage;
4. ``latency``: an idle worker, and a producer that sends ``--samples`` stamped jobs (after
   ``--warmup`` unmeasured ones) ``--gap`` seconds apart; pickup = handler start - stamp.

Writes ``OUT.json`` (every round's raw numbers, versions, the command) and ``OUT.md``
(medians, min-max ranges, per-round ratios vs Go asynq and vs unifiedq's Worker).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import selectors
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
GO_BIN = HERE / "asynq_go" / "asynq_bench"
VENVS = {"peers": HERE / ".venv", "arq": HERE / ".venv-arq"}
SETUP_HINT = "run `bash benchmarks/peers/setup.sh` first (it builds the venvs and the Go program)"


@dataclass(frozen=True)
class System:
    """One measured row: which adapter, under which interpreter, on which backend."""

    name: str
    label: str
    adapter: str  # adapters/<adapter>_peer.py, or "asynq" for the Go program
    env: str  # "main" (this interpreter), "peers", "arq" (venvs from setup.sh), "go"
    backend: str = "redis"
    batch: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    concurrency: int | None = None  # None: --concurrency
    note: str = ""
    tree: str = ""  # a unifiedq checkout to run from ("" = --tree or this one)


SYSTEMS = [
    System("unifiedq-redis", "unifiedq `Worker` (threads), redis://", "unifiedq", "main",
           batch=True, extra={"flavour": "threads"}),
    System("unifiedq-redis-async", "unifiedq `AsyncWorker`, redis://", "unifiedq", "main",
           batch=True, extra={"flavour": "asyncio"}),
    System("unifiedq-redis-loop", "unifiedq plain `dequeue_many(32)`+`ack_many` loop, redis://",
           "unifiedq", "main", batch=True, extra={"flavour": "loop"}, concurrency=1,
           note="one thread, no worker: the floor the Worker adds overhead to"),
    System("asynq", "Go asynq server", "asynq", "go",
           note="latency run with TaskCheckInterval 1 ms (default 1 s)"),
    System("celery", "Celery, threads pool", "celery", "peers",
           note="acks on receipt (Celery default); gossip/mingle/heartbeat off"),
    System("rq", "RQ `SimpleWorker`", "rq", "peers", batch=True, concurrency=1,
           note="RQ runs one job at a time per worker process (its default Worker forks per job)"),
    System("arq", "arq", "arq", "arq", note="default poll_delay 0.5 s"),
    System("dramatiq-redis", "Dramatiq, threads, Redis", "dramatiq", "peers"),
    System("huey", "huey, thread workers", "huey", "peers"),
    System("taskiq", "taskiq + taskiq-redis `RedisStreamBroker`", "taskiq", "peers"),
    System("unifiedq-amqp", "unifiedq `Worker` (threads), amqp://", "unifiedq", "main",
           backend="amqp", batch=True, extra={"flavour": "threads", "backend": "amqp"}),
    System("dramatiq-amqp", "Dramatiq, threads, RabbitMQ", "dramatiq", "peers",
           backend="amqp", extra={"backend": "amqp"},
           note="RabbitmqBroker defaults: confirm_delivery=False"),
]
BY_NAME = {s.name: s for s in SYSTEMS}
TIMES, DASH = "\u00d7", "\u2013"  # for the markdown tables


class PhaseError(RuntimeError):
    """A phase process failed, timed out or printed something unexpected."""


def add_base(name: str, tree: str) -> str:
    """Register ``name@base``: the same row run from checkout ``tree`` (``--compare``)."""
    s = BY_NAME[name]
    base = dataclasses.replace(s, name=f"{name}@base", label=f"{s.label}, base tree",
                               tree=tree, note="")
    BY_NAME[base.name] = base
    return base.name


def interpreter(env: str) -> str:
    if env == "main":
        return sys.executable
    py = VENVS[env] / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"{py} is missing: {SETUP_HINT}")
    return str(py)


class Runner:
    """Starts phase processes for one system and reads their JSON lines."""

    def __init__(self, args: argparse.Namespace, redis_url: str, amqp_url: str,
                 logdir: Path) -> None:
        self.args = args
        self.redis_url = redis_url
        self.amqp_url = amqp_url
        self.logdir = logdir
        self._pending: dict[int, bytes] = {}  # pid -> bytes read past the last line

    def argv(self, s: System, phase: str, queue: str, **kw: Any) -> list[str]:
        conc = s.concurrency or self.args.concurrency
        if s.env == "go":
            if not GO_BIN.exists():
                raise SystemExit(f"{GO_BIN} is missing: {SETUP_HINT}")
            addr = self.redis_url.split("//", 1)[1].split("/", 1)[0]
            argv = [str(GO_BIN), phase, "-redis", addr, "-queue", queue, "-n", str(kw["n"]),
                    "-size", str(self.args.size), "-concurrency", str(conc)]
            if phase == "latency":
                argv += ["-warmup", str(kw.get("warmup", 0)), "-check", self.args.asynq_check]
            if kw.get("stamp"):
                argv += ["-stamp", "-gap", f"{kw['gap']}s"]
            return argv
        argv = [interpreter(s.env), str(HERE / "agent.py"), s.adapter, phase,
                "--redis", self.redis_url, "--amqp", self.amqp_url, "--queue", queue,
                "--n", str(kw["n"]), "--size", str(self.args.size),
                "--concurrency", str(conc), "--batch", str(kw.get("batch", 1)),
                "--warmup", str(kw.get("warmup", 0)), "--extra", json.dumps(s.extra)]
        if kw.get("stamp"):
            argv += ["--stamp", "--gap", str(kw["gap"])]
        return argv

    def start(self, s: System, phase: str, queue: str, **kw: Any) -> tuple[Any, Any]:
        log = open(self.logdir / f"{s.name}.{phase}.log", "ab")  # noqa: SIM115
        env = dict(os.environ)
        tree = s.tree or self.args.tree or (str(REPO) if s.adapter == "unifiedq" else "")
        if tree and s.adapter == "unifiedq":
            # Put that checkout's sources ahead of the editable install of this one.
            src = str(Path(tree).resolve() / "src")
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        proc = subprocess.Popen(self.argv(s, phase, queue, **kw), stdout=subprocess.PIPE,
                                stderr=log, cwd=HERE, env=env, start_new_session=True)
        return proc, log

    def read(self, proc: Any, timeout: float, what: str) -> dict[str, Any]:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = self._pending.pop(proc.pid, b"")
        try:
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PhaseError(f"{what}: no answer within {timeout:.0f} s")
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    raise PhaseError(f"{what}: process ended (exit {proc.wait()})")
                buf += chunk
        finally:
            sel.close()
        line, self._pending[proc.pid] = buf.split(b"\n", 1)
        try:
            obj: dict[str, Any] = json.loads(line)
            return obj
        except ValueError:
            raise PhaseError(f"{what}: not JSON: {line[:200]!r}") from None

    @staticmethod
    def stop(proc: Any, log: Any) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        log.close()

    def once(self, s: System, phase: str, queue: str, timeout: float, **kw: Any) -> dict[str, Any]:
        proc, log = self.start(s, phase, queue, **kw)
        try:
            return self.read(proc, timeout, f"{s.name} {phase}")
        finally:
            self.stop(proc, log)


def flush_redis(url: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    r.flushall()
    r.close()


def measure(r: Runner, s: System, rnd: int, a: argparse.Namespace) -> dict[str, Any]:
    """Every phase of one system for one round; errors are recorded, not raised."""
    # The machine is shared: keep how busy it was, to read a noisy row by.
    out: dict[str, Any] = {"load_avg_1m": round(os.getloadavg()[0], 2)}
    tag = f"peers_{s.name.replace('-', '_')}_{rnd}"

    def clean() -> None:
        if s.backend == "redis":
            flush_redis(r.redis_url)

    try:
        clean()
        if s.batch:
            res = r.once(s, "enqueue", f"{tag}_b", a.timeout, n=a.jobs, batch=a.batch)
            out["enqueue_batch_rate"] = res["n"] / res["seconds"]
            clean()
        res = r.once(s, "enqueue", f"{tag}_w", a.timeout, n=a.jobs)
        out["enqueue_single_rate"] = res["n"] / res["seconds"]
        proc, log = r.start(s, "work", f"{tag}_w", n=a.jobs)
        try:
            r.read(proc, a.timeout, f"{s.name} work ready")
            res = r.read(proc, a.timeout, f"{s.name} work result")
        finally:
            r.stop(proc, log)
        if res["handled"] != a.jobs:
            raise PhaseError(f"{s.name} work: handled {res['handled']} of {a.jobs}")
        out["e2e_rate"] = a.jobs / res["seconds"]
        out["cpu_per_10k"] = res["cpu_seconds"] * 10_000 / a.jobs
        clean()
        proc, log = r.start(s, "latency", f"{tag}_l", n=a.samples, warmup=a.warmup)
        try:
            r.read(proc, a.timeout, f"{s.name} latency ready")
            time.sleep(0.5)
            r.once(s, "enqueue", f"{tag}_l", a.timeout, n=a.samples + a.warmup, stamp=True,
                   gap=a.gap)
            res = r.read(proc, a.timeout, f"{s.name} latency result")
        finally:
            r.stop(proc, log)
        lat = sorted(res["latencies"])
        out["pickup_p50_ms"] = 1e3 * quantile(lat, 0.50)
        out["pickup_p99_ms"] = 1e3 * quantile(lat, 0.99)
        out["pickup_samples"] = len(lat)
    except (PhaseError, OSError, ValueError, KeyError) as exc:
        out["error"] = str(exc)
    return out


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list."""
    if not sorted_values:
        raise ValueError("no latency samples")
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


METRICS = ["e2e_rate", "cpu_per_10k", "pickup_p50_ms", "pickup_p99_ms", "enqueue_single_rate",
           "enqueue_batch_rate"]


def summarize(rounds: list[dict[str, dict[str, Any]]], names: list[str]) -> dict[str, Any]:
    """Median and min-max of each metric, and per-round ratios of the end-to-end rate."""
    summary: dict[str, Any] = {}
    for name in names:
        row: dict[str, Any] = {}
        for m in METRICS:
            vals = [rd[name][m] for rd in rounds if m in rd.get(name, {})]
            if vals:
                row[m] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
                          "n": len(vals)}
        row["errors"] = [rd[name]["error"] for rd in rounds if "error" in rd.get(name, {})]
        for ref in ("asynq", "unifiedq-redis", "dramatiq-amqp"):
            paired = [rd[name]["e2e_rate"] / rd[ref]["e2e_rate"] for rd in rounds
                      if "e2e_rate" in rd.get(name, {}) and "e2e_rate" in rd.get(ref, {})]
            if paired and ref != name:
                row[f"e2e_vs_{ref}"] = {"median": statistics.median(paired), "min": min(paired),
                                        "max": max(paired), "n": len(paired)}
        base = f"{name}@base"
        for m in ("e2e_rate", "cpu_per_10k", "pickup_p99_ms"):
            paired = [rd[name][m] / rd[base][m] for rd in rounds
                      if m in rd.get(name, {}) and m in rd.get(base, {}) and rd[base][m]]
            if paired:
                row[f"{m}_vs_base"] = {"median": statistics.median(paired), "min": min(paired),
                                       "max": max(paired), "n": len(paired)}
        summary[name] = row
    return summary


def fmt(cell: dict[str, Any] | None, digits: int = 0, scale: float = 1.0) -> str:
    if not cell:
        return "—"
    med, lo, hi = (cell[k] * scale for k in ("median", "min", "max"))
    if cell["n"] == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({lo:,.{digits}f}{DASH}{hi:,.{digits}f})"


def ratio(cell: dict[str, Any] | None) -> str:
    return f"{cell['median']:.2f}{TIMES}" if cell else "—"


def render(report: dict[str, Any]) -> str:
    summ = report["summary"]
    cfg = report["config"]
    tree = report["unifiedq_tree"]
    loads = [res["load_avg_1m"] for rd in report["rounds"] for res in rd.values()
             if "load_avg_1m" in res]
    load = f"{min(loads):.1f}{DASH}{max(loads):.1f}" if loads else "not recorded"
    lines = [
        "# Peer benchmark: unifiedq vs Go asynq and the Python task queues",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; {cfg['rounds']} interleaved round(s); {cfg['jobs']:,} jobs of "
        f"{cfg['size']} bytes; worker concurrency {cfg['concurrency']}; pickup latency from "
        f"{cfg['samples']} samples per round ({cfg['warmup']} warm-up jobs dropped, "
        f"{cfg['gap'] * 1e3:.0f} ms apart).  ",
        f"unifiedq: commit {tree['commit'][:12]}"
        f"{' plus uncommitted src/ edits' if tree['src_modified'] else ''}"
        + (f"; `@base` rows: commit {report['compare_tree']['commit'][:12]} "
           f"(`--compare {report['compare']}`)" if report.get("compare_tree") else "")
        + ".  ",
        f"Machine: {report['machine']['cpus']} CPU(s), {report['machine']['cpu_model']}, "
        f"{report['machine']['platform']} (shared: absolute numbers are noisy, ratios less so; "
        f"1-minute load average when a system started: {load}).",
        "",
        f"Medians, with min{DASH}max over rounds in parentheses. Ratios are medians of per-round "
        "ratios (both systems measured in the same round).",
        "",
        "## End to end, CPU and pickup latency",
        "",
        f"| system | jobs/s end to end | {TIMES} Go asynq | {TIMES} unifiedq Worker "
        "| worker CPU s / 10k jobs "
        "| pickup p50 ms | pickup p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in report["systems"]:
        row = summ[name]
        # Ratios against the Redis references only for Redis rows (amqp: next table).
        same = BY_NAME[name].backend == "redis"
        lines.append(
            f"| {BY_NAME[name].label} | {fmt(row.get('e2e_rate'))} | "
            f"{ratio(row.get('e2e_vs_asynq') if same else None)} | "
            f"{ratio(row.get('e2e_vs_unifiedq-redis') if same else None)} | "
            f"{fmt(row.get('cpu_per_10k'), 2)} | {fmt(row.get('pickup_p50_ms'), 2)} | "
            f"{fmt(row.get('pickup_p99_ms'), 2)} |")
    based = [n for n in report["systems"] if "e2e_rate_vs_base" in summ[n]]
    if based:
        lines += ["", "## Against the base tree (per-round ratios, same rounds)", "",
                  f"| system | jobs/s {TIMES} base | CPU / 10k {TIMES} base "
                  f"| pickup p99 {TIMES} base |", "|---|---|---|---|"]
        for name in based:
            row = summ[name]
            lines.append(f"| {BY_NAME[name].label} | {fmt(row.get('e2e_rate_vs_base'), 2)} | "
                         f"{fmt(row.get('cpu_per_10k_vs_base'), 2)} | "
                         f"{fmt(row.get('pickup_p99_ms_vs_base'), 2)} |")
    amqp = [n for n in report["systems"] if BY_NAME[n].backend == "amqp"]
    if amqp:
        lines += ["", "## Same RabbitMQ", "",
                  f"| system | jobs/s end to end | {TIMES} Dramatiq on RabbitMQ |", "|---|---|---|"]
        for name in amqp:
            lines.append(f"| {BY_NAME[name].label} | {fmt(summ[name].get('e2e_rate'))} | "
                         f"{ratio(summ[name].get('e2e_vs_dramatiq-amqp'))} |")
    lines += ["", "## Enqueue (one client, one process)", "",
              "| system | jobs/s, one per call | jobs/s, batched "
              f"({cfg['batch']} per call) |", "|---|---|---|"]
    for name in report["systems"]:
        row = summ[name]
        lines.append(f"| {BY_NAME[name].label} | {fmt(row.get('enqueue_single_rate'))} | "
                     f"{fmt(row.get('enqueue_batch_rate'))} |")
    notes = [f"- {BY_NAME[n].label}: {BY_NAME[n].note}" for n in report["systems"]
             if BY_NAME[n].note]
    errors = [f"- {n}: {e}" for n in report["systems"] for e in summ[n]["errors"]]
    if notes:
        lines += ["", "## Setup notes", "", *notes]
    if errors:
        lines += ["", "## Errors", "", *errors]
    lines += ["", "## Versions", "", "| component | versions |", "|---|---|"]
    for comp, vers in report["versions"].items():
        text = ", ".join(f"{k} {v}" for k, v in vers.items()) if isinstance(vers, dict) else vers
        lines.append(f"| {comp} | {text} |")
    return "\n".join(lines) + "\n"


def versions(r: Runner, names: list[str], servers: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = dict(servers)
    for name in names:
        s = BY_NAME[name]
        if s.env == "go":
            mod = (HERE / "asynq_go" / "go.mod").read_text()
            m = re.search(r"github.com/hibiken/asynq (\S+)", mod)
            go = subprocess.run(["go", "version"], capture_output=True, text=True).stdout
            out[name] = {"asynq": m.group(1) if m else "?", "go": go.split()[2] if go else "?"}
        else:
            out[name] = r.once(s, "versions", "versions", 60, n=1)
    return out


def tree_state(tree: Path) -> dict[str, Any]:
    """Which unifiedq was measured: checkout, commit, and whether src/ had local edits."""
    def git(*cmd: str) -> str:
        res = subprocess.run(["git", "-C", str(tree), *cmd], capture_output=True, text=True)
        return res.stdout.strip()

    return {"path": str(tree.resolve()), "commit": git("rev-parse", "HEAD"),
            "src_modified": bool(git("status", "--porcelain", "--", "src"))}


def machine() -> dict[str, Any]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "platform": platform.platform()}


FULL = {"rounds": 3, "jobs": 10_000, "samples": 200, "warmup": 20, "gap": 0.02, "timeout": 300.0}
QUICK = {"rounds": 1, "jobs": 500, "samples": 30, "warmup": 5, "gap": 0.01, "timeout": 60.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", default=",".join(s.name for s in SYSTEMS),
                   help="comma-separated subset of: " + ", ".join(BY_NAME))
    p.add_argument("--rounds", type=int, help="interleaved rounds (3; --quick: 1)")
    p.add_argument("--jobs", type=int, help="jobs per enqueue/work phase (10,000; --quick: 500)")
    p.add_argument("--samples", type=int, help="pickup samples per round (200; --quick: 30)")
    p.add_argument("--warmup", type=int, help="unmeasured jobs before sampling (20; --quick: 5)")
    p.add_argument("--gap", type=float,
                   help="seconds between pickup samples (0.02; --quick: 0.01)")
    p.add_argument("--size", type=int, default=64, help="payload bytes")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--batch", type=int, default=100, help="jobs per batched enqueue call")
    p.add_argument("--asynq-check", default="1ms", help="asynq TaskCheckInterval, latency run")
    p.add_argument("--timeout", type=float, help="seconds per phase (300; --quick: 60)")
    p.add_argument("--tree", default="",
                   help="measure unifiedq from this checkout (e.g. a `git worktree` of a "
                        "commit) instead of the working tree")
    p.add_argument("--compare", default="", metavar="DIR",
                   help="also measure every chosen unifiedq row from this checkout (e.g. a "
                        "`git worktree` of the commit before a change), as NAME@base rows "
                        "interleaved with the others in the same rounds")
    p.add_argument("--render", metavar="JSON",
                   help="only rewrite the markdown of an earlier run's JSON (next to it)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: fewer rounds, jobs and samples (explicit flags win)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "peers"),
                   help="output path without extension (.json and .md are written)")
    a = p.parse_args(argv)
    if a.render:
        done = json.loads(Path(a.render).read_text())
        for n in done["systems"]:
            if n.endswith("@base") and n not in BY_NAME:
                add_base(n[: -len("@base")], done.get("compare", ""))
        Path(a.render).with_suffix(".md").write_text(render(done))
        return 0
    defaults = QUICK if a.quick else FULL
    for key, value in defaults.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    names = [n.strip() for n in a.systems.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        p.error(f"unknown systems {unknown}; choose from {', '.join(BY_NAME)}")
    if a.compare:
        names = [x for n in names for x in ([n, add_base(n, a.compare)]
                                            if BY_NAME[n].adapter == "unifiedq" else [n])]
    sys.path.insert(0, str(REPO / "src"))
    from unifiedq.testing.servers import RabbitMQServer, RedisServer

    need_amqp = any(BY_NAME[n].backend == "amqp" for n in names)
    logdir = Path(tempfile.mkdtemp(prefix="uq-peers-"))
    started = time.time()
    with RedisServer() as redis_srv:
        servers = {"redis-server": redis_srv.binary_version()}
        amqp_srv = RabbitMQServer().start() if need_amqp else None
        try:
            amqp_url = amqp_srv.url if amqp_srv else ""
            if amqp_srv:
                servers["rabbitmq-server"] = amqp_srv.binary_version()
            r = Runner(a, redis_srv.url, amqp_url, logdir)
            vers = versions(r, names, servers)
            rounds: list[dict[str, dict[str, Any]]] = []
            for rnd in range(a.rounds):
                results: dict[str, dict[str, Any]] = {}
                for name in names:
                    t0 = time.monotonic()
                    results[name] = measure(r, BY_NAME[name], rnd, a)
                    shown = {k: round(v, 2) if isinstance(v, float) else v
                             for k, v in results[name].items()}
                    print(f"round {rnd + 1}/{a.rounds} {name} ({time.monotonic() - t0:.1f} s):"
                          f" {shown}", file=sys.stderr, flush=True)
                rounds.append(results)
        finally:
            if amqp_srv:
                amqp_srv.stop()
    report: dict[str, Any] = {
        "command": "python benchmarks/peers/run.py " + " ".join(
            shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "config": {k: getattr(a, k) for k in ("rounds", "jobs", "samples", "warmup", "gap",
                                              "size", "concurrency", "batch", "asynq_check")},
        "machine": machine(),
        "unifiedq_tree": tree_state(Path(a.tree) if a.tree else REPO),
        "compare": a.compare,
        "compare_tree": tree_state(Path(a.compare)) if a.compare else None,
        "systems": names,
        "labels": {n: BY_NAME[n].label for n in names},
        "versions": vers,
        "rounds": rounds,
        "summary": summarize(rounds, names),
        "logs": str(logdir),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Appended, not with_suffix(): "peers.s7" must not become "peers.json".
    out.parent.joinpath(out.name + ".json").write_text(json.dumps(report, indent=1) + "\n")
    out.parent.joinpath(out.name + ".md").write_text(render(report))
    print(render(report))
    failed = [n for n in names if report["summary"][n]["errors"]]
    if failed:
        print(f"errors in {failed}; logs in {logdir}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
