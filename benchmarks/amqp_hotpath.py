"""amqp:// consume/settle hot path: end-to-end rate vs raw py-amqp and dramatiq, one RabbitMQ.

Usage::

    python benchmarks/amqp_hotpath.py [--url amqp://guest:guest@127.0.0.1:5672//] [--rounds 5]
        [--jobs 10000] [--base REV] [--dramatiq-python /tmp/venv-dramatiq/bin/python]
        [--contenders uq-batch,uq-worker,...] [--out benchmarks/results/amqp_hotpath]

Without ``--url`` a private broker is started with the test rig. Every contender runs in its
own child process (so its CPU time is its own, and so several versions of unifiedq can be
compared in one run): the child fills a fresh queue with ``--jobs`` jobs of 64-byte bodies,
then the clock starts and it consumes until every job was settled. Rounds are interleaved
(the order rotates each round); each row reports the median, range and worker CPU seconds per
10,000 jobs. The machine is shared: compare ratios within one run, not absolute numbers.

Contenders (``NAME[:pPREFETCH][@REV]``; REV ``HEAD`` is the committed tree, ``base`` the
``--base`` revision, ``work`` the working tree, ``mixed`` the committed tree with the amqp
driver of ``base``: what the rest of HEAD, e.g. the Worker, does without the new driver):

* ``uq-batch``: ``dequeue_many(32, timeout=1)`` + ``ack_many`` loop, one thread;
* ``uq-single``: ``dequeue(timeout=1)`` + ``ack`` loop, one thread;
* ``uq-worker``: the threaded ``unifiedq.worker.Worker``, ``concurrency=8``, no-op handler;
* ``raw``: plain py-amqp, ``basic.consume`` + one ``basic.ack`` per message, one thread;
* ``dramatiq``: dramatiq's ``Worker`` with 8 threads on its ``RabbitmqBroker`` (pika), run
  by ``--dramatiq-python`` (a venv with ``dramatiq[rabbitmq]``; its default prefetch is two
  per thread); skipped if that interpreter is missing. Its messages are dramatiq's own JSON
  envelope around a 64-character argument.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from unifiedq.drivers.amqp.options import vhost_of

ROOT = Path(__file__).resolve().parent.parent
BODY = b"x" * 64
DEFAULT = "uq-batch@base,uq-batch@HEAD,uq-single@HEAD,uq-worker@HEAD,raw,dramatiq"

# -- children: each prints one JSON line {"seconds", "cpu", "jobs", "left"} -------------------
_UQ_CHILD = r"""
import json, sys, threading, time
import unifiedq
kind, url, n, prefetch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
url = f"{url}&prefetch={prefetch}"
body = b"x" * 64
with unifiedq.connect(url) as q:
    q.purge()
    for i in range(0, n, 1000):
        q.enqueue_many([body] * min(1000, n - i))
    assert q.size() == n
    got = 0
    if kind == "uq-worker":
        from unifiedq.worker import Worker
        lock, done = threading.Lock(), threading.Event()
        count = [0]
        def handler(job):
            with lock:
                count[0] += 1
                if count[0] == n:
                    done.set()
        w = Worker(url, handler, concurrency=8)
        t0, c0 = time.perf_counter(), time.process_time()
        w.start()
        done.wait(120)
        t1, c1 = time.perf_counter(), time.process_time()
        w.stop(grace=10)
        got = count[0]
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        if kind == "uq-batch":
            while got < n:
                jobs = q.dequeue_many(32, timeout=1)
                if not jobs:
                    break
                q.ack_many(jobs)
                got += len(jobs)
        else:
            while got < n:
                job = q.dequeue(timeout=1)
                if job is None:
                    break
                q.ack(job)
                got += 1
        t1, c1 = time.perf_counter(), time.process_time()
    left = q.size()
print(json.dumps({"seconds": t1 - t0, "cpu": c1 - c0, "jobs": got, "left": left}))
"""

_RAW_CHILD = r"""
import json, sys, time
import amqp, unifiedq
url, name, n, prefetch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
host, user, password = sys.argv[5], sys.argv[6], sys.argv[7]
with unifiedq.connect(f"{url}?queue={name}") as q:  # the same queue, declared by the driver
    q.purge()
    for i in range(0, n, 1000):
        q.enqueue_many([b"x" * 64] * min(1000, n - i))
    assert q.size() == n
conn = amqp.Connection(host=host, userid=user, password=password)
conn.connect()
ch = conn.channel()
ch.basic_qos(0, prefetch, False)
got = [0]
def on_message(msg):
    ch.basic_ack(msg.delivery_tag)
    got[0] += 1
t0, c0 = time.perf_counter(), time.process_time()
ch.basic_consume(name, callback=on_message)
while got[0] < n:
    conn.drain_events(timeout=5)
t1, c1 = time.perf_counter(), time.process_time()
left = ch.queue_declare(name, passive=True).message_count
conn.close()
print(json.dumps({"seconds": t1 - t0, "cpu": c1 - c0, "jobs": got[0], "left": left}))
"""

_DRAMATIQ_CHILD = r"""
import json, sys, threading, time
import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
broker = RabbitmqBroker(url=url)
dramatiq.set_broker(broker)
lock, done = threading.Lock(), threading.Event()
count = [0]

@dramatiq.actor(actor_name="noop", queue_name=name, max_retries=0)
def noop(payload):
    with lock:
        count[0] += 1
        if count[0] == n:
            done.set()

broker.flush(name)
for _ in range(n):
    noop.send("x" * 64)
deadline = time.monotonic() + 60
while broker.get_queue_message_counts(name)[0] < n and time.monotonic() < deadline:
    time.sleep(0.05)
t0, c0 = time.perf_counter(), time.process_time()
worker = dramatiq.Worker(broker, worker_threads=8)
worker.start()
done.wait(120)
t1, c1 = time.perf_counter(), time.process_time()
worker.stop()
left = broker.get_queue_message_counts(name)[0]
broker.flush_all()
broker.close()
print(json.dumps({"seconds": t1 - t0, "cpu": c1 - c0, "jobs": count[0], "left": left}))
"""


def export(rev: str, into: Path) -> Path:
    """The ``src`` tree of git revision ``rev``, unpacked under ``into``."""
    dest = into / rev.replace("/", "_")
    if not dest.exists():
        data = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"],
                              check=True, capture_output=True).stdout
        dest.mkdir(parents=True)
        archive = dest / "src.tar"
        archive.write_bytes(data)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    return dest / "src"


def mix(head: Path, base: Path, into: Path) -> Path:
    """A copy of ``head`` whose amqp driver (and its py-amqp compat module) is ``base``'s."""
    dest = into / "src"
    shutil.copytree(head, dest)
    for part in ("unifiedq/drivers/amqp", "unifiedq/_compat/amqp.py"):
        target = dest / part
        if target.is_dir():
            shutil.rmtree(target)
            shutil.copytree(base / part, target)
        else:
            shutil.copy2(base / part, target)
    return dest


def parse(spec: str) -> tuple[str, int | None, str]:
    name, _, rev = spec.partition("@")
    kind, _, p = name.partition(":p")
    return kind, int(p) if p else None, rev or "HEAD"


def run_child(spec: str, args: argparse.Namespace, srcs: dict[str, Path]) -> dict[str, Any]:
    kind, prefetch, rev = parse(spec)
    name = f"hot-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ)
    p = prefetch or 32
    if kind == "dramatiq":
        # pika reads the vhost of ``//`` as "", kombu and unifiedq as "/": spell it out.
        u = urllib.parse.urlsplit(args.url)
        vhost = urllib.parse.quote(vhost_of(args.url), safe="")
        purl = urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + vhost, "", ""))
        cmd = [args.dramatiq_python, "-c", _DRAMATIQ_CHILD, purl, name, str(args.jobs)]
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = str(srcs[rev if kind != "raw" else "HEAD"])
        if kind == "raw":
            u = urllib.parse.urlsplit(args.url)
            cmd = [sys.executable, "-c", _RAW_CHILD, args.url, name, str(args.jobs), str(p),
                   f"{u.hostname}:{u.port or 5672}", u.username or "guest",
                   u.password or "guest"]
        else:
            cmd = [sys.executable, "-c", _UQ_CHILD, kind, f"{args.url}?queue={name}",
                   str(args.jobs), str(p)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{spec} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if kind != "dramatiq":  # drop the test queue and its dead-letter queue
        cleanup = ("import amqp,sys; c=amqp.Connection(host=sys.argv[1], userid=sys.argv[2], "
                   "password=sys.argv[3]); c.connect(); ch=c.channel(); "
                   "[ch.queue_delete(q) for q in sys.argv[4:]]; c.close()")
        u = urllib.parse.urlsplit(args.url)
        subprocess.run([sys.executable, "-c", cleanup, f"{u.hostname}:{u.port or 5672}",
                        u.username or "guest", u.password or "guest", name, name + ".dead"],
                       capture_output=True, timeout=60)
    return result


def versions(args: argparse.Namespace) -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "amqp": metadata.version("amqp"),
           "kombu": metadata.version("kombu")}
    if Path(args.dramatiq_python).exists():
        code = ("from importlib import metadata as m; print(m.version('dramatiq'), "
                "m.version('pika'))")
        v = subprocess.run([args.dramatiq_python, "-c", code], capture_output=True, text=True)
        if v.returncode == 0:
            out["dramatiq"], out["pika"] = v.stdout.split()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("UNIFIEDQ_TEST_AMQP_URL", ""))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--base", default="HEAD~1", help="git revision named 'base'")
    parser.add_argument("--contenders", default=DEFAULT)
    parser.add_argument("--dramatiq-python", default="/tmp/venv-dramatiq/bin/python")
    parser.add_argument("--out", default="", help="write OUT.md and OUT.json")
    args = parser.parse_args()
    specs = [s.strip() for s in args.contenders.split(",") if s.strip()]
    if not Path(args.dramatiq_python).exists():
        print(f"no {args.dramatiq_python}: dramatiq skipped", file=sys.stderr)
        specs = [s for s in specs if not s.startswith("dramatiq")]

    server = None
    if not args.url:
        from unifiedq.testing.servers import RabbitMQServer

        server = RabbitMQServer().start()
        args.url = server.url
    revs = {"HEAD": "HEAD", "base": args.base}
    commits = {k: subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", v],
                                 capture_output=True, text=True).stdout.strip()
               for k, v in revs.items()}
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in specs}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            srcs = {k: export(v, Path(tmp)) for k, v in revs.items()}
            srcs["work"] = ROOT / "src"
            srcs["mixed"] = mix(srcs["HEAD"], srcs["base"], Path(tmp) / "mixed")
            for r in range(args.rounds):
                k = r % len(specs)
                for spec in specs[k:] + specs[:k]:  # rotate who goes first
                    res = run_child(spec, args, srcs)
                    rows[spec].append(res)
                    print(f"round {r + 1} {spec:24} {args.jobs / res['seconds']:8.0f} jobs/s "
                          f"cpu {res['cpu']:.2f}s jobs {res['jobs']} left {res['left']}",
                          flush=True)
    finally:
        if server is not None:
            server.stop()

    summary: dict[str, dict[str, float]] = {}
    for spec, results in rows.items():
        rates = [args.jobs / x["seconds"] for x in results]
        cpus = [x["cpu"] * 10_000 / args.jobs for x in results]
        summary[spec] = {"median": statistics.median(rates), "min": min(rates),
                         "max": max(rates), "cpu_per_10k": statistics.median(cpus)}
    ref = next((s for s in specs if s.startswith("dramatiq")), None)
    raw = next((s for s in specs if s.startswith("raw")), None)
    command = "python " + " ".join([str(Path(sys.argv[0])), *sys.argv[1:]])
    lines = [f"`{command}`", "",
             f"{args.jobs:,} jobs of 64-byte bodies pre-enqueued per run, {args.rounds} "
             f"interleaved rounds; HEAD = {commits['HEAD']}, base = {commits['base']} "
             f"({args.base}); versions: {versions(args)}", "",
             "| contender | jobs/s median | range | worker CPU s / 10k | vs dramatiq | vs raw |",
             "|---|---|---|---|---|---|"]
    for spec, s in summary.items():
        vs_d = f"{s['median'] / summary[ref]['median']:.2f}x" if ref else "-"
        vs_r = f"{s['median'] / summary[raw]['median']:.2f}x" if raw else "-"
        lines.append(f"| {spec} | {s['median']:,.0f} | {s['min']:,.0f}-{s['max']:,.0f} | "
                     f"{s['cpu_per_10k']:.2f} | {vs_d} | {vs_r} |")
    # Ratios per round (both measured minutes apart at most): steadier than ratios of medians.
    if ref:
        lines.append("")
        for spec in specs:
            if spec == ref:
                continue
            per = [rows[ref][i]["seconds"] / rows[spec][i]["seconds"]
                   for i in range(args.rounds)]
            lines.append(f"- {spec} / {ref}, per round: median {statistics.median(per):.2f}x "
                         f"(range {min(per):.2f}-{max(per):.2f})")
    text = "\n".join(lines)
    print()
    print(text)
    if args.out:
        Path(args.out + ".md").write_text(text + "\n")
        Path(args.out + ".json").write_text(json.dumps(
            {"command": command, "jobs": args.jobs, "rounds": args.rounds, "commits": commits,
             "versions": versions(args), "summary": summary, "runs": rows,
             "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n")


if __name__ == "__main__":
    main()
