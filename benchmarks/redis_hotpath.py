"""redis:// hot path (issue 18): what each verb costs Redis, per job, side by side in one run.

    python benchmarks/redis_hotpath.py [--n 10000] [--rounds 3] [--pickups 600]
        [--tree before=/tmp/wt-redis-before/src] [--tree after=src]
        [--asynq-bin benchmarks/peers/asynq_go/asynq_bench] [--out benchmarks/results/redis_hotpath]

One private redis-server serves every variant; each measurement runs in a fresh child process
(``PYTHONPATH`` = the variant's tree), rounds interleave the variants so the shared machine's
noise hits them alike, and the median round is reported with its range. Variants:

* every ``--tree`` (default: this checkout): unifiedq's ``redis://`` driver, blocking face
  (pickup: also the asyncio face's consumer);
* ``raw``: the floor, a bare redis-py reliable queue (LPUSH / LMOVE into a processing list /
  LREM, pipelined for batches): not asynq-compatible, no leases, no counters;
* ``asynq``: Go asynq v0.26's own client and server (``--asynq-bin``, the peers benchmark's
  program, skipped unless built: ``cd benchmarks/peers/asynq_go && go build -o asynq_bench .``):
  enqueue N, then its server (concurrency 8) processes them with a no-op handler.

Per phase (N jobs each, 64-byte bodies, a flushed database), from the server's own counters:
``INFO commandstats`` (EVALSHA ``usec_per_call``: the script's server time per call) and
``INFO cpu`` (``used_cpu_sys + used_cpu_user`` delta: all server CPU, per job). Phases:
``enqueue`` (one call per job), ``take1`` (``dequeue()``), ``ack1`` (``ack()``), then
``take32`` (``dequeue_many(32)``) and ``ack32`` (``ack_many`` of those 32). Pickup: an idle
consumer blocked in ``dequeue(timeout=5)`` in one process, a producer in another enqueuing
every 2-4 ms; latency = consumer's ``dequeue`` return - producer's ``enqueue`` return
(``CLOCK_MONOTONIC`` is shared by processes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BODY = b"x" * 64


# --------------------------------------------------------------------------- child side
def _server_stats(r: Any) -> tuple[float, dict[str, Any]]:
    cpu = r.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), r.info("commandstats")


def _phase(r: Any, name: str, n_jobs: int, fn: Any) -> dict[str, Any]:
    r.config_resetstat()
    cpu0, _ = _server_stats(r)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    cpu1, cmds = _server_stats(r)
    ev = cmds.get("cmdstat_evalsha", {})
    counts = {k[8:]: int(v["calls"]) for k, v in cmds.items()
              if k not in ("cmdstat_info", "cmdstat_config")}
    out: dict[str, Any] = {
        "phase": name, "jobs": n_jobs, "wall_s": wall, "jobs_per_s": n_jobs / wall,
        "server_cpu_us_per_job": (cpu1 - cpu0) / n_jobs * 1e6,
        "evalsha_calls": int(ev.get("calls", 0)),
        "evalsha_usec_per_call": float(ev.get("usec_per_call", 0.0)),
        "commands": counts,
    }  # fmt: skip
    # Commands Redis ran per job (inside scripts too, not counting EVALSHA itself): a count,
    # immune to the shared machine's noise, unlike the two timings.
    out["cmds_per_job"] = sum(v for k, v in counts.items() if k != "evalsha") / n_jobs
    return out


def _raw_verbs(r: Any, name: str, n: int) -> list[dict[str, Any]]:
    """The floor: a bare redis-py reliable queue, no scripts, no leases, no counters."""
    phases: list[dict[str, Any]] = []
    c = r.execute_command
    pend, act = f"raw:{name}:pending", f"raw:{name}:active"
    bodies = [b"%064d" % i for i in range(n)]

    def enq() -> None:
        for b in bodies:
            c("LPUSH", pend, b)

    def take1() -> None:
        for _ in range(n):
            c("LMOVE", pend, act, "RIGHT", "LEFT")

    def ack1() -> None:
        for b in bodies:
            c("LREM", act, -1, b)

    def take32() -> None:
        for _ in range(0, n, 32):
            p = r.pipeline(transaction=False)
            for _ in range(32):
                p.lmove(pend, act, "RIGHT", "LEFT")
            p.execute()

    def ack32() -> None:
        for i in range(0, n, 32):
            p = r.pipeline(transaction=False)
            for b in bodies[i:i + 32]:
                p.lrem(act, -1, b)
            p.execute()

    phases.append(_phase(r, "enqueue", n, enq))
    phases.append(_phase(r, "take1", n, take1))
    phases.append(_phase(r, "ack1", n, ack1))
    enq()
    phases.append(_phase(r, "take32", n, take32))
    phases.append(_phase(r, "ack32", n, ack32))

    def loop1() -> None:
        for b in bodies:
            c("LMOVE", pend, act, "RIGHT", "LEFT")
            c("LREM", act, -1, b)

    def loop32() -> None:
        take32_one = r.pipeline(transaction=False)
        for _ in range(32):
            take32_one.lmove(pend, act, "RIGHT", "LEFT")
        for i in range(0, n, 32):
            take32_one.execute()
            p = r.pipeline(transaction=False)
            for b in bodies[i:i + 32]:
                p.lrem(act, -1, b)
            p.execute()

    enq()
    phases.append(_phase(r, "loop1", n, loop1))
    enq()
    phases.append(_phase(r, "loop32", n, loop32))
    return phases


def child_verbs(url: str, variant: str, n: int) -> list[dict[str, Any]]:
    import redis

    r = redis.Redis.from_url(url)
    r.flushdb()
    name = f"hp-{uuid.uuid4().hex[:6]}"
    phases: list[dict[str, Any]] = []
    if variant == "raw":
        return _raw_verbs(r, name, n)
    from unifiedq import connect

    q = connect(f"{url}?queue={name}&heartbeat=false")
    q.enqueue(b"warm")  # load the scripts outside the measured phases
    q.ack(q.dequeue())  # type: ignore[arg-type]
    held: list[Any] = []

    def enq() -> None:
        for _ in range(n):
            q.enqueue(BODY)

    def take1() -> None:
        for _ in range(n):
            held.append(q.dequeue())

    def ack1() -> None:
        for j in held:
            q.ack(j)
        held.clear()

    def take32() -> None:
        for _ in range(0, n, 32):
            held.append(q.dequeue_many(32))

    def ack32() -> None:
        for batch in held:
            q.ack_many(batch)
        held.clear()

    phases.append(_phase(r, "enqueue", n, enq))
    phases.append(_phase(r, "take1", n, take1))
    phases.append(_phase(r, "ack1", n, ack1))
    enq()
    phases.append(_phase(r, "take32", n, take32))
    phases.append(_phase(r, "ack32", n, ack32))

    def loop1() -> None:  # a plain consumer: few jobs in flight
        for _ in range(n):
            q.ack(q.dequeue())  # type: ignore[arg-type]

    def loop32() -> None:
        for _ in range(0, n, 32):
            q.ack_many(q.dequeue_many(32))

    enq()
    phases.append(_phase(r, "loop1", n, loop1))
    enq()
    phases.append(_phase(r, "loop32", n, loop32))
    assert q.size() == 0
    q.close()
    return phases


def child_pickup(url: str, variant: str, n: int) -> dict[str, Any]:
    import redis

    name = f"pk-{uuid.uuid4().hex[:6]}"
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # the consumer
        os.close(rd)
        out = os.fdopen(wr, "w")
        if variant == "raw":
            rc = redis.Redis.from_url(url)
            for _ in range(n + 1):
                item: Any = rc.brpop([f"raw:{name}"], timeout=5)
                out.write(f"{item[1].decode()} {time.monotonic_ns()}\n")
        elif variant == "async":
            import asyncio

            from unifiedq import connect_async

            async def consume() -> None:
                async with connect_async(f"{url}?queue={name}&heartbeat=false") as q:
                    for _ in range(n + 1):
                        job = await q.dequeue(timeout=5)
                        t = time.monotonic_ns()
                        assert job is not None
                        await q.ack(job)
                        out.write(f"{job.body.decode()} {t}\n")

            asyncio.run(consume())
        else:
            from unifiedq import connect

            with connect(f"{url}?queue={name}&heartbeat=false") as q:
                for _ in range(n + 1):
                    job = q.dequeue(timeout=5)
                    t = time.monotonic_ns()
                    assert job is not None
                    q.ack(job)
                    out.write(f"{job.body.decode()} {t}\n")
        out.close()
        os._exit(0)
    os.close(wr)
    sent: dict[str, tuple[int, int]] = {}  # enqueue call start, return
    if variant == "raw":
        rp = redis.Redis.from_url(url)
        time.sleep(0.3)
        for i in range(n + 1):
            time.sleep(random.uniform(0.002, 0.004))
            t0 = time.monotonic_ns()
            rp.lpush(f"raw:{name}", str(i))
            sent[str(i)] = (t0, time.monotonic_ns())
    else:
        from unifiedq import connect

        with connect(f"{url}?queue={name}&heartbeat=false") as p:
            time.sleep(0.3)  # the consumer is blocked by now
            for i in range(n + 1):
                time.sleep(random.uniform(0.002, 0.004))
                t0 = time.monotonic_ns()
                p.enqueue(str(i).encode())
                sent[str(i)] = (t0, time.monotonic_ns())
    lines = os.fdopen(rd).read().split("\n")
    os.waitpid(pid, 0)
    lat, lat0 = [], []
    for line in lines:
        if line:
            idx, stamp = line.split()
            if idx != "0":  # the first one also pays for connecting
                lat.append((int(stamp) - sent[idx][1]) / 1e6)
                lat0.append((int(stamp) - sent[idx][0]) / 1e6)
    lat.sort()
    lat0.sort()
    return {"samples": len(lat), "p50_ms": statistics.median(lat),
            "p99_ms": lat[int(len(lat) * 0.99) - 1], "max_ms": lat[-1],
            "from_start_p50_ms": statistics.median(lat0),
            "from_start_p99_ms": lat0[int(len(lat0) * 0.99) - 1], "lat_ms": lat, "lat0_ms": lat0}


# --------------------------------------------------------------------------- parent side
def run_child(tree: str | None, url: str, mode: str, variant: str, n: int) -> Any:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = tree
    cmd = [sys.executable, __file__, "--child", mode, "--url", url, "--variant", variant,
           "--n", str(n)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd="/tmp")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_asynq(binary: str, url: str, n: int) -> list[dict[str, Any]]:
    import redis

    r = redis.Redis.from_url(url)
    r.flushdb()
    addr = url.split("//", 1)[1].split("/", 1)[0]
    qn = f"go-{uuid.uuid4().hex[:6]}"
    base = [binary]

    def go(sub: str, *extra: str) -> None:
        subprocess.run([*base, sub, "-redis", addr, "-queue", qn, "-n", str(n), *extra],
                       check=True, capture_output=True)

    # The work phase includes asynq's own background loops (heartbeat, forwarder, recoverer)
    # during the run: that is what its server costs Redis.
    return [_phase(r, "enqueue", n, lambda: go("enqueue", "-size", "64")),
            _phase(r, "work", n, lambda: go("work", "-concurrency", "8"))]


def med(xs: list[float], d: int = 1) -> str:
    m = statistics.median(xs)
    return f"{m:.{d}f} ({min(xs):.{d}f}-{max(xs):.{d}f})" if len(xs) > 1 else f"{m:.{d}f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=["verbs", "pickup"])
    ap.add_argument("--url")
    ap.add_argument("--variant", default="ours")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pickups", type=int, default=600)
    ap.add_argument("--tree", action="append", default=[],
                    help="NAME=PATH of a unifiedq src folder (repeatable)")
    ap.add_argument("--asynq-bin", default=str(ROOT / "benchmarks/peers/asynq_go/asynq_bench"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/redis_hotpath"))
    a = ap.parse_args()
    if a.child == "verbs":
        print(json.dumps(child_verbs(a.url, a.variant, a.n)))
        return
    if a.child == "pickup":
        print(json.dumps(child_pickup(a.url, a.variant, a.n)))
        return

    sys.path.insert(0, str(ROOT / "src"))
    from unifiedq.testing.servers import RedisServer

    trees = dict(t.split("=", 1) for t in a.tree) or {"unifiedq": str(ROOT / "src")}
    trees = {k: str(Path(v).resolve()) for k, v in trees.items()}
    variants: list[tuple[str, str | None]] = [(k, v) for k, v in trees.items()]
    variants.append(("raw", None))
    asynq = a.asynq_bin if os.access(a.asynq_bin, os.X_OK) else None
    server = RedisServer().start()
    verbs: dict[str, list[list[dict[str, Any]]]] = {}
    pickups: dict[str, list[dict[str, Any]]] = {}
    try:
        for rnd in range(a.rounds):
            order = variants + ([("asynq", None)] if asynq else [])
            random.Random(rnd).shuffle(order)
            for name, tree in order:
                print(f"round {rnd + 1}: {name}", file=sys.stderr, flush=True)
                if name == "asynq":
                    assert asynq is not None
                    verbs.setdefault(name, []).append(run_asynq(asynq, server.url, a.n))
                    continue
                var = "raw" if name == "raw" else "ours"
                verbs.setdefault(name, []).append(run_child(tree, server.url, "verbs", var, a.n))
                pickups.setdefault(name, []).append(
                    run_child(tree, server.url, "pickup", var, a.pickups // a.rounds))
                if var == "ours":  # the asyncio face's consumer too
                    pickups.setdefault(f"{name} (async)", []).append(
                        run_child(tree, server.url, "pickup", "async", a.pickups // a.rounds))
    finally:
        server.stop()
    report(a, trees, verbs, pickups)


def report(a: argparse.Namespace, trees: dict[str, str], verbs: dict[str, Any],
           pickups: dict[str, Any]) -> None:
    cmd = "python benchmarks/redis_hotpath.py " + " ".join(sys.argv[1:])
    lines = [
        "# redis:// hot path: Redis server cost per verb (issue 18)", "",
        f"Command: `{cmd}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{a.rounds} interleaved rounds of {a.n} jobs (64-byte bodies), one private "
        "redis-server; median (min-max) over rounds.  ",
        "Trees: " + ", ".join(f"`{k}` = {v}" for k, v in trees.items()) + "  ",
        "asynq: " + (f"`{a.asynq_bin}`" if "asynq" in verbs else "not built (skipped)"), "",
        "## Server cost per phase", "",
        "`usec/call`: EVALSHA `usec_per_call` from `INFO commandstats` (the script's server "
        "time); `CPU us/job`: `used_cpu_sys+user` delta of the whole server per job; "
        "`jobs/s`: client side, one blocking client.", "",
        "| variant | phase | usec/call | CPU us/job | cmds/job | jobs/s |",
        "|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {}
    for name, rounds in verbs.items():
        for i, ph in enumerate(rounds[0]):
            per = [r[i] for r in rounds]
            cpu = [p["server_cpu_us_per_job"] for p in per]
            usec = [p["evalsha_usec_per_call"] for p in per]
            rate = [p["jobs_per_s"] for p in per]
            cmds = statistics.median(p["cmds_per_job"] for p in per)
            summary.setdefault(name, {})[ph["phase"]] = {
                "usec_per_call": statistics.median(usec), "cpu_us_per_job": statistics.median(cpu),
                "cmds_per_job": cmds, "jobs_per_s": statistics.median(rate)}
            lines.append(f"| {name} | {ph['phase']} | {med(usec) if any(usec) else '-'} | "
                         f"{med(cpu)} | {cmds:.2f} | {med(rate, 0)} |")
    lines += ["", "## Server CPU per 10k jobs (enqueue + take + ack)", "",
              "From the split phases (10k jobs in flight at the ack) and from the loops (a "
              "consumer that acks what it took before taking more).", "",
              "| variant | one at a time (s) | batches of 32 (s) | enqueue + loop1 (s) | "
              "enqueue + loop32 (s) |", "|---|---|---|---|---|"]
    for name, ph in summary.items():
        if "work" in ph:
            total = (ph["enqueue"]["cpu_us_per_job"] + ph["work"]["cpu_us_per_job"]) / 100
            lines.append(f"| {name} (asynq server, concurrency 8) | - | - | {total:.2f} | - |")
            continue
        one = sum(ph[k]["cpu_us_per_job"] for k in ("enqueue", "take1", "ack1")) / 100
        b32 = sum(ph[k]["cpu_us_per_job"] for k in ("enqueue", "take32", "ack32")) / 100
        l1 = sum(ph[k]["cpu_us_per_job"] for k in ("enqueue", "loop1")) / 100
        l32 = sum(ph[k]["cpu_us_per_job"] for k in ("enqueue", "loop32")) / 100
        lines.append(f"| {name} | {one:.2f} | {b32:.2f} | {l1:.2f} | {l32:.2f} |")
    lines += ["", f"## Idle pickup ({a.pickups // a.rounds} samples per round)", "",
              "Consumer blocked in `dequeue(timeout=5)` (raw: `BRPOP`) until its `dequeue` "
              "returns, from the producer's `enqueue` return (negative: the consumer had the "
              "job before the producer had parsed its own reply) and from its call start.", "",
              "| variant | p50 ms | p99 ms | max ms | from start p50 ms | from start p99 ms |",
              "|---|---|---|---|---|---|"]
    for name, rounds in pickups.items():
        lines.append(f"| {name} | " + " | ".join(
            med([r[k] for r in rounds], 2) for k in (
                "p50_ms", "p99_ms", "max_ms", "from_start_p50_ms", "from_start_p99_ms"))
            + " |")
    lines += ["", "All rounds' samples pooled:", "",
              "| variant | samples | p50 ms | p99 ms | from start p50 ms | from start p99 ms |",
              "|---|---|---|---|---|---|"]
    for name, rounds in pickups.items():
        cols = []
        for key in ("lat_ms", "lat0_ms"):
            xs = sorted(x for r in rounds for x in r[key])
            cols += [f"{statistics.median(xs):.2f}", f"{xs[int(len(xs) * 0.99) - 1]:.2f}"]
        n_s = sum(len(r["lat_ms"]) for r in rounds)
        lines.append(f"| {name} | {n_s} | " + " | ".join(cols) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out + ".md").write_text(text)
    Path(a.out + ".json").write_text(json.dumps(
        {"command": cmd, "trees": trees, "verbs": verbs, "pickups": pickups,
         "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
