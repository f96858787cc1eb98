"""Job results on redis://: how long a caller waits for a result, and the web app under a burst.

    python benchmarks/results_burst.py REDIS_URL [--rounds 5] [--requests 300]
        [--burst 500] [--concurrency 64] [--out benchmarks/results/results_burst]

Not run by CI. A blocking ``Worker`` (concurrency 8, handler returns the body reversed) runs
in its own process on a fresh queue; the caller is this process.

* **wait** (result wait latency, the issue's figure): ``--requests`` requests one at a time,
  each ``enqueue`` -> worker -> the caller has the result; per request latency in ms. Two
  ways of waiting, interleaved round by round against the same worker:

  - ``result()``: ``q.result(job_id, timeout=10)`` (wakes on the job's token list);
  - ``poll 5 ms``: the same job read with raw redis-py ``HMGET <task hash> state result``
    every 5 ms until it is completed (what a client does without a notification, e.g. an
    asynq client polling ``Inspector.GetTaskInfo``).

* **inflight**: ``--concurrency`` asyncio callers at once, each ``enqueue`` then
  ``await result()``, ``--requests`` in all: latency p50/p99 and results/s.

* **burst**: ``examples/results_web.py`` (``--no-worker``, uvicorn) in front of the worker
  process, interleaved with an **HTTP floor** (the same burst of ``GET /jobs/<id>`` of a
  finished job: HTTP and one result read, no queue work). ``--burst`` requests at once over
  50 keep-alive connections (a small asyncio HTTP/1.1 client; a failed request is counted
  by its error, never dropped); a request's latency runs from the burst's start to its
  response (the wait of a client that sent it at that instant): statuses, p50/p99,
  requests/s.

Medians over rounds and their ranges are printed as markdown and written as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis

import unifiedq

ROOT = Path(__file__).resolve().parents[1]


def _reverse(job: unifiedq.Job) -> bytes:
    return job.body[::-1]


def _worker(url: str, web: bool, stop: Any) -> None:
    handler: Any = _reverse
    if web:  # the example's own handler (examples/ is not a package)
        sys.path.insert(0, str(ROOT / "examples"))
        handler = importlib.import_module("results_web").handle
    with unifiedq.Worker(url, handler, concurrency=8, max_attempts=1):
        stop.wait()


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def wait_round(q: unifiedq.Queue, raw: redis.Redis, qname: str, variant: str,
               n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        jid = q.enqueue(b"request-%d" % i)
        got: Any
        if variant == "result()":
            got = q.result(jid, timeout=10)
        else:
            key = f"asynq:{{{qname}}}:t:{jid}"
            while True:
                state, got = raw.hmget(key, "state", "result")
                if state == b"completed":
                    break
                time.sleep(0.005)
        out.append((time.perf_counter() - t) * 1000)
        assert got == (b"request-%d" % i)[::-1]
    return out


async def inflight_round(url: str, n: int, conc: int) -> tuple[list[float], float]:
    lat: list[float] = []
    async with unifiedq.connect_async(url) as q:
        sem = asyncio.Semaphore(conc)

        async def one(i: int) -> None:
            async with sem:
                t = time.perf_counter()
                jid = await q.enqueue(b"r%d" % i)
                got = await q.result(jid, timeout=30)
                lat.append((time.perf_counter() - t) * 1000)
                assert got == (b"r%d" % i)[::-1]

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return lat, n / (time.perf_counter() - t0)


async def burst_round(port: int, n: int, floor_id: str | None = None, conns: int = 50
                      ) -> tuple[list[float], float, dict[str, int]]:
    """``n`` requests at once over ``conns`` keep-alive connections; latency from the start.

    A minimal HTTP/1.1 client on asyncio streams: httpx's pool capped this burst at ~30
    requests/s on the loaded 2-core machine (a raw client got 200-300/s from the same app),
    so httpx would have measured itself.
    """
    lat: list[float] = []
    codes: dict[str, int] = {}
    todo = iter(range(n))

    async def conn() -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in todo:
                if floor_id is None:  # a new job: enqueue, worker, result
                    body = json.dumps({"text": f"burst request {i}"}).encode()
                    head = (f"POST /summarize HTTP/1.1\r\nHost: b\r\nContent-Type: "
                            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n")
                else:  # the HTTP floor: a result that is already there, read back
                    body, head = b"", f"GET /jobs/{floor_id} HTTP/1.1\r\nHost: b\r\n\r\n"
                try:
                    w.write(head.encode() + body)
                    await w.drain()
                    reply = await r.readuntil(b"\r\n\r\n")
                    size = next(int(h.split(b":")[1]) for h in reply.split(b"\r\n")
                                if h.lower().startswith(b"content-length:"))
                    await r.readexactly(size)
                except (OSError, asyncio.IncompleteReadError) as exc:  # counted, not hidden
                    codes[type(exc).__name__] = codes.get(type(exc).__name__, 0) + 1
                    return
                lat.append((time.perf_counter() - t0) * 1000)
                key = reply.split(b" ", 2)[1].decode()
                codes[key] = codes.get(key, 0) + 1
        finally:
            w.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(conn() for _ in range(conns)))
    return lat, n / (time.perf_counter() - t0), codes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])



def _summary(rounds: list[list[float]]) -> dict[str, Any]:
    rounds = [r for r in rounds if r] or [[float("nan")]]
    p50s = [statistics.median(r) for r in rounds]
    p99s = [_pct(r, 99) for r in rounds]
    return {"p50_ms": statistics.median(p50s), "p50_range": [min(p50s), max(p50s)],
            "p99_ms": statistics.median(p99s), "p99_range": [min(p99s), max(p99s)],
            "samples": sum(len(r) for r in rounds)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("redis_url")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--burst", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/results_burst"))
    args = ap.parse_args()
    ctx = multiprocessing.get_context("spawn")
    qname = f"rb-{uuid.uuid4().hex[:8]}"
    url = f"{args.redis_url}?queue={qname}"
    stop = ctx.Event()
    worker = ctx.Process(target=_worker, args=(url, False, stop))
    worker.start()
    raw = redis.Redis.from_url(args.redis_url)
    waits: dict[str, list[list[float]]] = {"result()": [], "poll 5 ms": []}
    inflight: list[list[float]] = []
    rates: list[float] = []
    try:
        with unifiedq.connect(url) as q:
            wait_round(q, raw, qname, "result()", 50)  # warm-up: scripts loaded, pool filled
            for _ in range(args.rounds):
                for variant in waits:
                    waits[variant].append(wait_round(q, raw, qname, variant, args.requests))
                lat, rate = asyncio.run(inflight_round(url, args.requests, args.concurrency))
                inflight.append(lat)
                rates.append(rate)
    finally:
        stop.set()
        worker.join(30)

    # The web app (no worker inside) in front of a worker process on another queue.
    web_url = f"{args.redis_url}?queue={qname}-web"
    stop = ctx.Event()
    worker = ctx.Process(target=_worker, args=(web_url, True, stop))
    worker.start()
    port = _free_port()
    app = subprocess.Popen([sys.executable, "examples/results_web.py", web_url, "--port",
                            str(port), "--no-worker"], cwd=ROOT)
    bursts: list[list[float]] = []
    brates: list[float] = []
    floors: list[list[float]] = []  # GET of a finished job's result: what HTTP alone costs
    frates: list[float] = []
    codes: dict[str, int] = {}
    try:
        for _ in range(300):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        asyncio.run(burst_round(port, 50))  # warm-up
        done = httpx.post(f"http://127.0.0.1:{port}/summarize", json={"text": "x"}, timeout=30)
        floor_id = done.headers["x-job-id"]
        for _ in range(args.rounds):  # interleaved: the burst, then the HTTP floor
            lat, rate, c = asyncio.run(burst_round(port, args.burst))
            bursts.append(lat)
            brates.append(rate)
            for k, v in c.items():
                codes[k] = codes.get(k, 0) + v
            lat, rate, _ = asyncio.run(burst_round(port, args.burst, floor_id))
            floors.append(lat)
            frates.append(rate)
    finally:
        app.terminate()
        app.wait(15)
        stop.set()
        worker.join(30)

    res: dict[str, Any] = {
        "command": "python benchmarks/results_burst.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "wait": {k: _summary(v) for k, v in waits.items()},
        "inflight": {**_summary(inflight), "concurrency": args.concurrency,
                     "results_per_s": statistics.median(rates),
                     "results_per_s_range": [min(rates), max(rates)]},
        "burst": {**_summary(bursts), "requests": args.burst, "statuses": codes,
                  "requests_per_s": statistics.median(brates),
                  "requests_per_s_range": [min(brates), max(brates)]},
        "http_floor": {**_summary(floors), "requests_per_s": statistics.median(frates),
                       "requests_per_s_range": [min(frates), max(frates)]},
    }
    w, p = res["wait"]["result()"], res["wait"]["poll 5 ms"]
    lines = [
        "# Job results on redis: wait latency and a web burst",
        "",
        f"Command: `{res['command']}` ({res['cpus']} CPUs shared with other work; worker: "
        "one process, blocking `Worker`, concurrency 8; Redis on localhost).",
        "",
        "## Result wait latency (one request at a time: enqueue -> worker -> result)",
        "",
        "| wait | p50 ms (range over rounds) | p99 ms (range) |",
        "|---|---|---|",
    ]
    for k, v in res["wait"].items():
        lines.append(f"| {k} | {v['p50_ms']:.3f} ({v['p50_range'][0]:.3f}-"
                     f"{v['p50_range'][1]:.3f}) | {v['p99_ms']:.3f} ({v['p99_range'][0]:.3f}-"
                     f"{v['p99_range'][1]:.3f}) |")
    lines += [
        "",
        f"Ratio poll 5 ms / result(): p50 {p['p50_ms'] / w['p50_ms']:.2f}x, "
        f"p99 {p['p99_ms'] / w['p99_ms']:.2f}x.",
        "",
        f"## {args.concurrency} callers in flight ({args.requests} requests per round)",
        "",
        f"p50 {res['inflight']['p50_ms']:.2f} ms, p99 {res['inflight']['p99_ms']:.2f} ms, "
        f"{res['inflight']['results_per_s']:.0f} results/s "
        f"(range {min(rates):.0f}-{max(rates):.0f}).",
        "",
        f"## Web burst: {args.burst} requests at once to examples/results_web.py",
        "",
        f"Statuses {codes}; p50 {res['burst']['p50_ms']:.1f} ms, p99 "
        f"{res['burst']['p99_ms']:.1f} ms (range {res['burst']['p99_range'][0]:.1f}-"
        f"{res['burst']['p99_range'][1]:.1f}); {res['burst']['requests_per_s']:.0f} "
        f"requests/s (range {min(brates):.0f}-{max(brates):.0f}).",
        "",
        f"HTTP floor (interleaved: the same burst of `GET /jobs/<id>` of a finished job, no "
        f"queue work): p50 {res['http_floor']['p50_ms']:.1f} ms, p99 "
        f"{res['http_floor']['p99_ms']:.1f} ms, {res['http_floor']['requests_per_s']:.0f} "
        f"requests/s (range {min(frates):.0f}-{max(frates):.0f}); the burst runs at "
        f"{res['burst']['requests_per_s'] / res['http_floor']['requests_per_s']:.2f}x the "
        "floor's rate.",
    ]
    md = "\n".join(lines) + "\n"
    print(md)
    Path(args.out + ".json").write_text(json.dumps(res, indent=2) + "\n")
    Path(args.out + ".md").write_text(md)


if __name__ == "__main__":
    main()
