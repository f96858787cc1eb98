"""quic:// vs a raw aioquic stream echo, side by side in one run.

    python benchmarks/quic_bench.py [--seconds 3] [--rtt-count 2000]

Starts two server processes on loopback: ``unifiedq serve --backend memory://`` and a bare
aioquic server that echoes each stream (the floor: same QUIC stack, same one-stream-per-request
pattern, no codec, no backend). Measures:

* round trip: sequential requests, one in flight (echo of a request-sized frame vs ``size()``
  and ``enqueue()`` through the driver);
* throughput: ``enqueue`` with 1, 8 and 64 requests in flight on one connection, next to the
  echo at the same concurrency, with the CPU time per request of the client (this process)
  and of the server process (Linux; it says how much of the rate is CPU, how much waiting).

Targets (issue 6): round trip <= 1.5x the raw echo; >= 10k ops/s at 64 in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

import unifiedq
from unifiedq.drivers.quic._common import ALPN
from unifiedq.drivers.quic.wire import KIND_REQUEST, encode_frame
from unifiedq.testing.quic import Pki, ServerProcess


# -- the raw echo -------------------------------------------------------------------------------
class EchoServer(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bufs: dict[int, bytearray] = {}

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            buf = self.bufs.setdefault(event.stream_id, bytearray())
            buf += event.data
            if event.end_stream:
                self._quic.send_stream_data(event.stream_id, bytes(self.bufs.pop(event.stream_id)),
                                            end_stream=True)
                self._transmit_soon()


async def run_echo_server(cert: str, key: str) -> None:
    cfg = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    cfg.load_cert_chain(cert, key)
    server = await serve("127.0.0.1", 0, configuration=cfg, create_protocol=EchoServer)
    assert server._transport is not None
    port = server._transport.get_extra_info("sockname")[1]
    print(f"echo listening on quic://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


class EchoClient(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bufs: dict[int, bytearray] = {}
        self.waiters: dict[int, asyncio.Future[bytes]] = {}

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            buf = self.bufs.setdefault(event.stream_id, bytearray())
            buf += event.data
            if event.end_stream:
                self.waiters.pop(event.stream_id).set_result(bytes(self.bufs.pop(event.stream_id)))

    async def echo(self, data: bytes) -> bytes:
        sid = self._quic.get_next_available_stream_id()
        fut: asyncio.Future[bytes] = self._loop.create_future()
        self.waiters[sid] = fut
        self._quic.send_stream_data(sid, data, end_stream=True)
        self._transmit_soon()
        return await fut


# -- measurements -------------------------------------------------------------------------------
async def rtt(call: Any, n: int) -> float:
    """Median seconds of one sequential call."""
    for _ in range(min(200, n)):  # warm up
        await call()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(call: Any, in_flight: int, seconds: float,
                     server_pid: int) -> tuple[float, float, float]:
    """Calls per second with ``in_flight`` concurrent callers, and the CPU microseconds per
    call spent by this (client) process and by the server process."""
    done = 0
    stop = time.perf_counter() + seconds
    cpu, server_cpu = time.process_time(), cpu_seconds(server_pid)

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await call()
            done += 1

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    rate = done / (time.perf_counter() - t)
    per_call = 1e6 / max(done, 1)
    return (rate, (time.process_time() - cpu) * per_call,
            (cpu_seconds(server_pid) - server_cpu) * per_call)


async def bench(args: argparse.Namespace, pki: Pki, quic_port: int, echo_port: int,
                quic_pid: int, echo_pid: int) -> None:
    cfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name="127.0.0.1")
    cfg.load_verify_locations(cafile=pki.ca)
    url = (f"quic://127.0.0.1:{quic_port}/bench?{pki.query(capabilities='memory')}")
    size_frame = encode_frame(KIND_REQUEST, {"op": "size", "queue": "bench", "options": ""})
    body = b"x" * 64
    enq_frame = encode_frame(KIND_REQUEST, {"op": "enqueue", "queue": "bench", "options": "",
                                            "body": body, "job_id": None, "delay": None,
                                            "priority": None, "headers": None})
    async with connect("127.0.0.1", echo_port, configuration=cfg,
                       create_protocol=EchoClient) as echo:
        assert isinstance(echo, EchoClient)
        async with unifiedq.connect_async(url) as q:
            await q.size()
            rows: list[tuple[str, float, float]] = []
            e_size = await rtt(lambda: echo.echo(size_frame), args.rtt_count)
            q_size = await rtt(q.size, args.rtt_count)
            rows.append(("size()     vs echo of a size frame", q_size, e_size))
            e_enq = await rtt(lambda: echo.echo(enq_frame), args.rtt_count)
            q_enq = await rtt(lambda: q.enqueue(body), args.rtt_count)
            rows.append(("enqueue(64B) vs echo of its frame", q_enq, e_enq))
            await q.purge()
            print(f"\nround trip, one request in flight (median of {args.rtt_count}):")
            print(f"  {'':36} {'quic://':>10} {'raw echo':>10} {'ratio':>7}")
            for label, a, b in rows:
                print(f"  {label:36} {a * 1e6:8.0f}us {b * 1e6:8.0f}us {a / b:6.2f}x")

            print(f"\nthroughput, enqueue(64B) on one connection ({args.seconds:.0f} s each);"
                  f" CPU us per request, client/server:")
            print(f"  {'in flight':>9} {'quic:// ops/s':>14} {'echo ops/s':>11} {'ratio':>7}"
                  f" {'quic:// cpu':>12} {'echo cpu':>10}")
            for n in (1, 8, 64):
                e, ec, es = await throughput(lambda: echo.echo(enq_frame), n, args.seconds,
                                             echo_pid)
                a, ac, as_ = await throughput(lambda: q.enqueue(body), n, args.seconds,
                                              quic_pid)
                await q.purge()
                print(f"  {n:9d} {a:14.0f} {e:11.0f} {a / e:6.2f}x {ac:5.0f}/{as_:<6.0f}"
                      f" {ec:4.0f}/{es:<5.0f}")
            await q.enqueue_many([body] * 20000)
            t = time.perf_counter()
            got = 0

            async def drain() -> None:
                nonlocal got
                while (job := await q.dequeue()) is not None:
                    await q.ack(job)
                    got += 1

            await asyncio.gather(*(drain() for _ in range(64)))
            el = time.perf_counter() - t
            print(f"\ndequeue+ack, 64 in flight: {got / el:.0f} jobs/s ({2 * got / el:.0f} "
                  f"requests/s)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rtt-count", type=int, default=2000)
    p.add_argument("--echo-server", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.echo_server:
        asyncio.run(run_echo_server(*args.echo_server))
        return
    with tempfile.TemporaryDirectory() as tmp:
        pki = Pki(Path(tmp))
        srv = ServerProcess(pki, "memory://", ["--log-level", "WARNING"]).start()
        echo = subprocess.Popen(
            [sys.executable, __file__, "--echo-server", pki.server_cert, pki.server_key],
            stdout=subprocess.PIPE, text=True)
        try:
            assert echo.stdout is not None
            echo_port = int(echo.stdout.readline().rsplit(":", 1)[1])
            print(f"python {sys.version.split()[0]}, server: {srv.banner.strip()}")
            assert srv.proc is not None
            asyncio.run(bench(args, pki, srv.port, echo_port, srv.proc.pid, echo.pid))
        finally:
            echo.terminate()
            echo.wait()
            srv.stop()


if __name__ == "__main__":
    main()
