#!/usr/bin/env python
"""Take the screenshot in docs/assets/dashboard.png: the dashboard over live queues.

Starts a throwaway Redis (the test rig), runs a small producer and a worker with some failing
jobs for a few seconds so the charts, dead letters and fair-queue shares have something to
show, serves the dashboard in this process and photographs it in Debian's headless Chromium.

    python scripts/dashboard_screenshot.py [--out docs/assets/dashboard.png] [--seconds 12]
"""

from __future__ import annotations

import argparse
import random
import socket
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import expect, sync_playwright

import unifiedq
from unifiedq.dashboard import Settings, create_app, make_sources
from unifiedq.fair import FairQueue
from unifiedq.testing.servers import RedisServer

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _traffic(url: str, template: str, stop: threading.Event) -> None:
    """Enqueue and work jobs: a rising then falling rate, one job in 25 dead-lettered."""
    rng = random.Random(7)
    weights = {"vip": 3.0, "free": 1.0, "trial": 1.0}
    with unifiedq.connect(url) as q, FairQueue(template, weights=weights) as fq:
        t0 = time.monotonic()
        n = 0
        while not stop.is_set():
            phase = time.monotonic() - t0
            burst = 6 if phase < 5 else 2
            for _ in range(burst):
                n += 1
                q.enqueue(f'{{"to": "user{n}@example.com", "template": "welcome"}}'.encode())
            for tenant, k in (("vip", 3), ("free", 4), ("trial", 2)):
                for _ in range(k):
                    fq.enqueue(b'{"report": "daily"}', tenant=tenant)
            for job in q.dequeue_many(4 if phase < 5 else 5, timeout=0.05):
                if rng.random() < 1 / 25:
                    q.nack(job, requeue=False)
                else:
                    q.ack(job)
            fq.ack_many(fq.dequeue_many(6, timeout=0.05))
            time.sleep(0.25)


def main() -> int:
    """Take the screenshot; return the exit status."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="docs/assets/dashboard.png")
    p.add_argument("--seconds", type=float, default=12.0, help="traffic before the shot")
    args = p.parse_args()
    with RedisServer() as rs:
        base = rs.url
        emails = f"{base}?queue=emails"
        template = f"{base}?queue=reports.{{tenant}}"
        with unifiedq.connect("memory://thumbnails") as mem:
            for i in range(7):
                mem.enqueue(f"img-{i}".encode())
            sources = make_sources([emails, template, "memory://thumbnails"],
                                   weights={"vip": 3.0, "free": 1.0, "trial": 1.0})
            dash = create_app(sources, Settings(allow_actions=True, interval=0.5))
            port = _free_port()
            server = uvicorn.Server(uvicorn.Config(dash.app(), host="127.0.0.1", port=port,
                                                   log_level="warning"))
            th = threading.Thread(target=server.run, daemon=True)
            th.start()
            stop = threading.Event()
            load = threading.Thread(target=_traffic, args=(emails, template, stop), daemon=True)
            load.start()
            try:
                time.sleep(args.seconds)
                with sync_playwright() as pw:
                    b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                    page = b.new_page(viewport={"width": 1360, "height": 900})
                    page.goto(f"http://127.0.0.1:{port}/")
                    expect(page.locator('[data-queue="0"] tr[data-job]').first).to_be_visible(
                        timeout=10_000)
                    time.sleep(1.0)
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=args.out, full_page=True)
                    b.close()
            finally:
                stop.set()
                load.join(5)
                server.should_exit = True
                th.join(5)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
