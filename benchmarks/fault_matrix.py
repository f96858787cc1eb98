"""The fault matrix: driver x fault x face -> measured behaviour (issue 20).

Usage::

    python benchmarks/fault_matrix.py            # full: restart runs of 10,000 jobs, ~15 min
    python benchmarks/fault_matrix.py --quick    # CI-sized: 500-job restarts, short caps
    python benchmarks/fault_matrix.py --quick --drivers redis,memory --faults frozen,cancel
    python benchmarks/fault_matrix.py --update --drivers redis --faults restart  # one row again

Every cell runs one case of :mod:`unifiedq.testing.faults` against real servers that this
script starts itself with the test rig (Redis with AOF ``appendfsync always``, RabbitMQ,
Faktory, ``unifiedq serve`` over a ``memory://`` backend, and Toxiproxy in front of the TCP
ones). Results go to ``benchmarks/results/fault_matrix[_quick].json`` and ``.md``.

Faults (the ``--faults`` names):

* ``frozen``: the server process group gets ``SIGSTOP`` during ``dequeue(timeout=1)``.
* ``frozen_enqueue``: the same during ``enqueue``, with the driver's own deadline set to
  1 s in the URL (``socket_timeout``, ``confirm_timeout``, ``timeout``; 3 s on Faktory).
* ``dropped``: a Toxiproxy ``timeout`` toxic drops every byte both ways (TCP drivers).
* ``reset``: a Toxiproxy ``limit_data`` toxic closes the connection 512 bytes into a reply
  carrying 4 KiB jobs (TCP drivers).
* ``oversized_header``: ``enqueue(b"x", headers={"trace": 140,000 chars})`` while a lease is
  held; ``oversized_body``: a 20 MiB body.
* ``shutdown``: a worker stopped with ``grace=0.2`` while its handler runs, on a queue whose
  retry limit is the lowest the driver has.
* ``cancel``: asyncio dequeues cancelled at random points (async face; behind a Toxiproxy
  ``latency`` toxic for the TCP drivers, which widens the window).
* ``full``: the backend is out of memory: Redis (and Faktory's Redis) at ``maxmemory`` with
  ``noeviction``, a RabbitMQ memory alarm; an ``enqueue`` must get ``BackendFull`` and the
  backlog must drain meanwhile.
* ``restart``: the broker restarts in the middle of a producer/consumer run.

A cell is ``OK`` when the call returned or raised a typed error within its deadline (timeout
+ ``--slack``, plus the driver's documented :data:`DEQUEUE_SLACK` for a stalled dequeue) and
no job was lost, stranded or duplicated beyond the at-least-once window; ``n/a`` cells say
why the fault does not apply.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from unifiedq.testing import faults as uqf
from unifiedq.testing.servers import FaktoryServer, RabbitMQServer, RedisServer
from unifiedq.testing.toxiproxy import Proxy, ToxiproxyServer, proxied_url

DRIVERS = ("memory", "shm", "redis", "amqp", "faktory", "quic")
FAULTS = ("frozen", "frozen_enqueue", "dropped", "reset", "oversized_header", "oversized_body",
          "shutdown", "cancel", "full", "restart")
FACES: tuple[uqf.Face, ...] = ("sync", "async")
TCP = ("redis", "amqp", "faktory")

#: Why a fault does not apply to a driver (or a face).
NA: dict[tuple[str, str], str] = {
    **{(d, f): "in-process: no server or network" for d in ("memory", "shm")
       for f in ("frozen", "frozen_enqueue", "dropped", "reset")},
    ("quic", "dropped"): "UDP: Toxiproxy is TCP-only (frozen covers a silent server)",
    ("quic", "reset"): "UDP: Toxiproxy is TCP-only",
    ("memory", "full"): "in-process: no backend to fill (maxsize gives QueueFull)",
    ("shm", "full"): "fixed ring: a full ring is the overflow policy (docs/drivers/shm.md)",
    ("quic", "full"): "memory:// backend; a backend's own row applies",
    ("memory", "restart"): "not durable by design (docs/drivers/memory.md)",
    ("shm", "restart"): "no broker; the segment outlives processes (see shm crash story)",
    ("quic", "restart"): "memory:// backend is not durable; a durable backend's row applies",
}

#: Failing cells that a driver's page documents as a limitation (shown with the verdict).
LIMITATIONS: dict[tuple[str, str], str] = {
    ("faktory", "full"): "documented limitation (faktory.md: a full Faktory Redis refuses "
                         "FETCH; set no maxmemory on it)",
}

#: Lease used where the driver lets us choose it, so a stranded job shows up as
#: "stranded" (not back in the drain window) and then comes back within ``lease_wait``.
LEASE = 5

#: URL options that set a driver's own deadline for verbs without a timeout argument
#: (``frozen_enqueue``): the deadline, in seconds, and the options that configure it.
VERB_DEADLINE: dict[str, tuple[float, dict[str, str]]] = {
    "redis": (1.0, {"socket_timeout": "1"}),
    "amqp": (1.0, {"confirm_timeout": "1"}),
    "faktory": (3.0, {"timeout": "3"}),  # must exceed the 2 s of a server-side FETCH
    "quic": (1.0, {"timeout": "1"}),
}

#: Documented slack of ``dequeue(timeout=t)`` under a stall, per driver page ("Faults,
#: deadlines and limits"): ``t + socket_timeout`` (redis, amqp: 5 s by default) or
#: ``t + timeout`` (quic: 10 s). Used by the ``frozen``, ``dropped`` and ``reset`` cells, on
#: top of ``--slack`` (scheduling on a loaded machine). Other drivers and cells: ``--slack``.
DEQUEUE_SLACK: dict[str, float] = {"redis": 5.0, "amqp": 5.0, "quic": 10.0}

#: Lowest retry limit per driver, so a shutdown counted as a failure would dead-letter.
LOW_RETRY: dict[str, dict[str, str]] = {
    "redis": {"max_retry": "0"},
    "amqp": {"max_attempts": "1"},
    "faktory": {"retry": "0"},
}


@dataclasses.dataclass
class Cell:
    """One measured (or not applicable) cell."""

    driver: str
    fault: str
    face: str
    outcome: dict[str, Any] | None = None
    na: str = ""
    crashed: str = ""

    @property
    def ok(self) -> bool | None:
        """The verdict; None for n/a."""
        if self.na:
            return None
        return bool(self.outcome and self.outcome["ok"] and not self.crashed)

    def text(self) -> str:
        """The table cell's text."""
        if self.na:
            return f"n/a: {self.na}"
        if self.crashed:
            return f"FAIL: case crashed: {self.crashed}"
        assert self.outcome is not None
        text = uqf.FaultOutcome(**self.outcome).describe()
        if not self.ok and (self.driver, self.fault) in LIMITATIONS:
            text += f"; {LIMITATIONS[(self.driver, self.fault)]}"
        return text


class Rig:
    """The servers of a matrix run, started lazily (or given, e.g. by pytest fixtures).

    Args:
        redis: A Redis server with AOF (``persistent=True``) for the restart cells.
        rabbitmq: A RabbitMQ broker.
        faktory: A Faktory server.
        toxiproxy: A Toxiproxy server.
        quick: CI-sized parameters.
    """

    def __init__(self, *, redis: RedisServer | None = None, rabbitmq: RabbitMQServer | None = None,
                 faktory: FaktoryServer | None = None, toxiproxy: ToxiproxyServer | None = None,
                 quick: bool = False) -> None:
        self._servers: dict[str, Any] = {"redis": redis, "amqp": rabbitmq, "faktory": faktory,
                                         "toxiproxy": toxiproxy}
        self._owned: list[Any] = []
        self.quick = quick
        self._quic: Any = None
        self._pki_dir: tempfile.TemporaryDirectory[str] | None = None
        self._shm_names: list[str] = []

    # -- servers ----------------------------------------------------------------------------
    def server(self, kind: str) -> Any:
        """The server of ``kind`` (``redis``, ``amqp``, ``faktory``, ``toxiproxy``)."""
        if self._servers.get(kind) is None:
            make: dict[str, Callable[[], Any]] = {
                "redis": lambda: RedisServer(persistent=True),
                "amqp": RabbitMQServer, "faktory": FaktoryServer, "toxiproxy": ToxiproxyServer,
            }
            srv = make[kind]().start()
            self._owned.append(srv)
            self._servers[kind] = srv
        return self._servers[kind]

    def quic(self) -> Any:
        """A ``unifiedq serve`` process over ``memory://`` (leases settable by clients)."""
        if self._quic is None:
            from unifiedq.testing.quic import Pki, ServerProcess

            self._pki_dir = tempfile.TemporaryDirectory(prefix="uq-faults-pki-")
            pki = Pki(Path(self._pki_dir.name))
            self._quic = ServerProcess(pki, "memory://", [
                "--allow-client-option", "visibility_timeout"]).start()
        return self._quic

    def close(self) -> None:
        """Stop every server this rig started."""
        if self._quic is not None:
            with contextlib.suppress(Exception):
                os.kill(self._quic.proc.pid, signal.SIGCONT)
            self._quic.stop()
        if self._pki_dir is not None:
            self._pki_dir.cleanup()
        for srv in reversed(self._owned):
            with contextlib.suppress(Exception):
                srv.stop()
        from unifiedq.drivers import shm

        for name in self._shm_names:
            with contextlib.suppress(Exception):
                shm.unlink(name)

    # -- URLs and faults --------------------------------------------------------------------
    def url(self, driver: str, *, lease: bool = True, opts: dict[str, str] | None = None) -> str:
        """A URL of a fresh queue on ``driver`` (``opts``: more URL options)."""
        opts = opts or {}
        name = f"uqf{uuid.uuid4().hex[:10]}"
        q: dict[str, str] = {}
        if driver == "memory":
            if lease:
                q["visibility_timeout"] = str(LEASE)
            base = f"memory://{name}"
        elif driver == "shm":
            self._shm_names.append(name)
            base = f"shm://{name}"
        elif driver == "redis":
            if lease:
                q["visibility_timeout"] = str(LEASE)
            base, q["queue"] = self.server("redis").url, name
        elif driver == "amqp":
            base, q["queue"] = self.server("amqp").url, name
        elif driver == "faktory":
            base, q["queue"] = self.server("faktory").url, name
        elif driver == "quic":
            srv = self.quic()
            extra = {"backend_options": f"visibility_timeout={LEASE}"} if lease else {}
            return str(srv.url(name, capabilities="memory", **extra, **opts))
        else:
            raise ValueError(driver)
        q.update(opts)
        if not q:
            return base
        query = "&".join(f"{k}={v}" for k, v in q.items())
        return f"{base}{'&' if '?' in base else '?'}{query}"

    @contextlib.contextmanager
    def proxy(self, url: str) -> Iterator[tuple[str, Proxy]]:
        """A Toxiproxy proxy in front of ``url``'s server, deleted afterwards."""
        import urllib.parse

        parts = urllib.parse.urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        toxi: ToxiproxyServer = self.server("toxiproxy")
        proxy = toxi.client.create_proxy(f"uqf-{uuid.uuid4().hex[:8]}", parts.hostname,
                                         parts.port)
        try:
            yield proxied_url(url, proxy), proxy
        finally:
            proxy.delete()

    def full(self, driver: str) -> uqf.Fault:
        """The ``full`` fault of ``driver``: its Redis at ``maxmemory`` or a RabbitMQ alarm.

        Redis and Faktory's private Redis get ``maxmemory 1`` with ``noeviction``; RabbitMQ
        gets a memory alarm.
        """
        if driver == "amqp":
            srv: RabbitMQServer = self.server("amqp")
            return lambda: srv.alarm("memory")
        import redis

        if driver == "redis":
            client = redis.Redis.from_url(self.server("redis").url)
        else:  # Faktory's private Redis listens on a Unix socket in its data dir
            client = redis.Redis(unix_socket_path=str(self.server("faktory").data_dir
                                                      / "redis.sock"))

        @contextlib.contextmanager
        def full() -> Iterator[None]:
            policy = str(client.config_get("maxmemory-policy")["maxmemory-policy"])
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", 1)  # every write that may grow memory is refused
            try:
                yield
            finally:
                client.config_set("maxmemory", 0)
                client.config_set("maxmemory-policy", policy)

        return full

    def freeze(self, driver: str) -> uqf.Fault:
        """The ``frozen`` fault of ``driver``: SIGSTOP of its server's process group."""
        if driver == "quic":
            srv = self.quic()

            @contextlib.contextmanager
            def frozen() -> Iterator[None]:
                os.kill(srv.proc.pid, signal.SIGSTOP)
                try:
                    yield
                finally:
                    os.kill(srv.proc.pid, signal.SIGCONT)

            return frozen
        frozen_cm: uqf.Fault = self.server(driver).frozen
        return frozen_cm


# ------------------------------------------------------------------------------------ cells


@contextlib.contextmanager
def _dropped(proxy: Proxy) -> Iterator[None]:
    """Every byte dropped both ways: what a partition or a congested link looks like."""
    with proxy.toxic("timeout", stream="downstream", timeout=0), \
            proxy.toxic("timeout", stream="upstream", timeout=0):
        yield


def run_cell(rig: Rig, driver: str, fault: str, face: uqf.Face, *, slack: float = uqf.DEFAULT_SLACK
             ) -> Cell:
    """Measure one cell of the matrix.

    Args:
        rig: The servers.
        driver: One of :data:`DRIVERS`.
        fault: One of :data:`FAULTS`.
        face: ``"sync"`` or ``"async"``.
        slack: Seconds a verb may overrun its timeout (plus :data:`DEQUEUE_SLACK` for a
            dequeue under a stall).

    Returns:
        The cell (n/a with the reason, or the measured outcome).
    """
    cell = Cell(driver, fault, face)
    if (driver, fault) in NA:
        cell.na = NA[(driver, fault)]
        return cell
    if fault == "cancel" and face == "sync":
        cell.na = "a blocking call cannot be cancelled"
        return cell
    quick = rig.quick
    dq_slack = slack + DEQUEUE_SLACK.get(driver, 0.0)
    cap = 10.0 if quick else 30.0
    # Wait out the lease only where the matrix chose a short one: Faktory's shortest
    # reservation is 60 s, and RabbitMQ requeues a dead connection's jobs by itself.
    wait = LEASE + 5.0 if driver in ("memory", "redis", "quic") else 0.0
    try:
        out: uqf.FaultOutcome
        if fault == "frozen":
            out = uqf.verb_deadline_under_stall(
                rig.url(driver), rig.freeze(driver), "dequeue", 1.0, face=face,
                slack=dq_slack, hard_cap=cap, lease_wait=wait)
        elif fault == "frozen_enqueue":
            deadline, opts = VERB_DEADLINE[driver]
            out = uqf.verb_deadline_under_stall(
                rig.url(driver, opts=opts), rig.freeze(driver), "enqueue", deadline, face=face,
                slack=slack, hard_cap=cap, lease_wait=wait)
        elif fault == "dropped":
            with rig.proxy(rig.url(driver)) as (url, proxy):
                out = uqf.verb_under_fault(
                    url, lambda: _dropped(proxy), verb="dequeue", timeout=1.0, face=face,
                    slack=dq_slack, hard_cap=cap, lease_wait=wait, case="dropped")
        elif fault == "reset":
            with rig.proxy(rig.url(driver)) as (url, proxy):
                out = uqf.reset_mid_reply(url, proxy, after_bytes=512, timeout=1.0, face=face,
                                          slack=dq_slack, hard_cap=cap, lease_wait=wait)
        elif fault == "oversized_header":
            out = uqf.oversized_input(rig.url(driver), face=face, header_size=140_000)
        elif fault == "oversized_body":
            out = uqf.oversized_input(rig.url(driver), face=face, body_size=20 * 1024 * 1024)
        elif fault == "shutdown":
            out = uqf.release_on_shutdown(rig.url(driver, opts=LOW_RETRY.get(driver)),
                                        face=face, window=10.0)
        elif fault == "cancel":
            n = 40 if quick else 200
            url = rig.url(driver)
            latency: AbstractContextManager[Any] = contextlib.nullcontext((url, None))
            if driver in TCP:
                latency = rig.proxy(url)
            with latency as (url2, proxy):
                tox = (proxy.toxic("latency", latency=5, jitter=5) if proxy is not None
                       else contextlib.nullcontext())
                with tox:
                    out = uqf.cancellation_ledger(url2, n, n, seed=20, max_delay=0.03,
                                                  drain_window=3.0, lease_wait=wait)
        elif fault == "full":
            out = uqf.backend_full(rig.url(driver), rig.full(driver), face=face, slack=slack)
        elif fault == "restart":
            n = 500 if quick else 10_000
            out = uqf.restart_ledger(rig.url(driver), rig.server(driver).restart,
                                   n, face=face, retry_for=60.0, idle=3.0, stranded_after=3.0,
                                   max_wait=60.0 if quick else 120.0)
        else:
            raise ValueError(fault)
        cell.outcome = out.as_dict()
    except Exception as exc:
        cell.crashed = f"{type(exc).__name__}: {exc}"[:200]
        traceback.print_exc()
    return cell


# ------------------------------------------------------------------------------------ output


def render_markdown(cells: list[Cell], meta: dict[str, Any]) -> str:
    """The matrix as a markdown table: one row per driver and fault, one column per face."""
    lines = [
        f"Fault matrix, {meta['mode']} run of {meta['date']} on {meta['host']} "
        f"(`{meta['command']}`, {meta['seconds']:.0f} s).",
        "",
        "Cell: verdict, time to return / deadline (timeout + slack), error or result; then "
        "the ledger (`lost`, `duplicated`, `stranded`, `attempt_bumped`) when not zero.",
        "",
        "| driver | fault | sync | async |",
        "|---|---|---|---|",
    ]
    by_key = {(c.driver, c.fault, c.face): c for c in cells}
    for driver in DRIVERS:
        for fault in FAULTS:
            row = [by_key.get((driver, fault, face)) for face in FACES]
            if not any(row):
                continue
            texts = [c.text().replace("|", "\\|") if c else "" for c in row]
            lines.append(f"| {driver} | {fault} | {texts[0]} | {texts[1]} |")
    counts = {"OK": 0, "FAIL": 0, "n/a": 0}
    for c in cells:
        counts["n/a" if c.ok is None else "OK" if c.ok else "FAIL"] += 1
    lines += ["", f"{counts['OK']} OK, {counts['FAIL']} FAIL, {counts['n/a']} n/a."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the matrix and write its JSON and markdown results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized run")
    ap.add_argument("--drivers", default=",".join(DRIVERS))
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--faces", default=",".join(FACES))
    ap.add_argument("--slack", type=float, default=uqf.DEFAULT_SLACK)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--update", action="store_true",
                    help="re-measure only the selected cells; keep the others of the last run")
    args = ap.parse_args(argv)
    drivers = [d for d in args.drivers.split(",") if d]
    faults_ = [f for f in args.faults.split(",") if f]
    faces: list[uqf.Face] = [f for f in FACES if f in args.faces.split(",")]
    for name, given, known in (("driver", drivers, DRIVERS), ("fault", faults_, FAULTS),
                               ("face", faces, FACES)):
        bad = set(given) - set(known)
        if bad:
            ap.error(f"unknown {name}(s): {', '.join(sorted(bad))}")
    rig = Rig(quick=args.quick)
    cells: list[Cell] = []
    t0 = time.monotonic()
    try:
        for driver in drivers:
            for fault in faults_:
                for face in faces:
                    started = time.monotonic()
                    cell = run_cell(rig, driver, fault, face, slack=args.slack)
                    cells.append(cell)
                    print(f"{driver:8} {fault:17} {face:5} {time.monotonic() - started:6.1f}s  "
                          f"{cell.text()}", flush=True)
    finally:
        rig.close()
    meta = {
        "mode": "quick" if args.quick else "full",
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "command": "python benchmarks/fault_matrix.py " + " ".join(argv or sys.argv[1:]),
        "seconds": time.monotonic() - t0,
        "slack": args.slack,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "fault_matrix_quick" if args.quick else "fault_matrix"
    previous = args.out / f"{stem}.json"
    if args.update and previous.exists():
        old = json.loads(previous.read_text())
        fresh = {(c.driver, c.fault, c.face) for c in cells}
        kept = [Cell(**c) for c in old["cells"]
                if (c["driver"], c["fault"], c["face"]) not in fresh]
        cells = kept + cells
        meta["command"] = f"{old['meta']['command']}; then {meta['command']}"
        meta["date"] = f"{old['meta']['date']}, updated {meta['date']}"
        meta["seconds"] += old["meta"]["seconds"]
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"meta": meta, "cells": [dataclasses.asdict(c) for c in cells]}, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(render_markdown(cells, meta))
    print(f"wrote {args.out / stem}.json and .md")
    return 0 if all(c.ok is not False for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
