"""One measured process of the peer benchmark (run.py starts it; not meant to be run by hand).

    agent.py ADAPTER PHASE [--redis URL] [--amqp URL] [--queue Q] [--n N] [--size B]
             [--concurrency C] [--batch K] [--gap S] [--warmup W] [--stamp] [--extra JSON]

Phases (each prints JSON lines on stdout): ``versions``; ``enqueue`` (``{"seconds"}``);
``work`` and ``latency`` (``{"ready"}`` once the worker is set up, then the recorder's
result; see adapters/common.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform

from adapters.common import Options, Recorder, emit, own_stdout


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("adapter")
    p.add_argument("phase", choices=["versions", "enqueue", "work", "latency"])
    p.add_argument("--redis", default="")
    p.add_argument("--amqp", default="")
    p.add_argument("--queue", default="bench")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--gap", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--stamp", action="store_true")
    p.add_argument("--extra", default="{}")
    a = p.parse_args()
    own_stdout()
    o = Options(redis=a.redis, amqp=a.amqp, queue=a.queue, n=a.n, size=a.size,
                concurrency=a.concurrency, batch=a.batch, gap=a.gap, warmup=a.warmup,
                stamp=a.stamp, extra=json.loads(a.extra))
    mod = importlib.import_module(f"adapters.{a.adapter}_peer")
    if a.phase == "versions":
        emit({"python": platform.python_version(), **mod.versions()})
    elif a.phase == "enqueue":
        emit({"seconds": mod.enqueue(o), "n": o.n})
    elif a.phase == "work":
        mod.work(o, Recorder(o.n))
    else:
        mod.work(o, Recorder(o.n, warmup=o.warmup, latency=True))


if __name__ == "__main__":
    main()
