"""The raw aioquic baseline of the ``quic://`` driver: one request/response per QUIC stream.

The ``quic://`` driver opens one bidirectional stream per request to ``unifiedq serve``. Its
floor is the cost of that round trip with aioquic alone, which this baseline measures against
a tiny echo server started in a child process (so, like ``unifiedq serve``, the server does not
share the client's interpreter): TLS 1.3 with a throw-away self-signed certificate, one stream
per call, the client writes the request and FIN, the server answers and FINs.

* enqueue: send the body, receive ``ok``;
* peek / dequeue: send a short request, receive a body of the bench size;
* ack: send a short request, receive ``ok``.

Run ``python -m unifiedq.bench.quic_baseline --serve`` to start the echo server by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .baselines import Baseline, _version
from .runner import OpStats, make_body

__all__ = ["QuicEcho"]

_ALPN = ["unifiedq-bench-echo"]


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = _dt.datetime.now(_dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return certfile, keyfile


async def _serve(certfile: str, keyfile: str) -> None:
    from aioquic.asyncio.server import QuicServer
    from aioquic.quic.configuration import QuicConfiguration

    cfg = QuicConfiguration(is_client=False, alpn_protocols=_ALPN)
    cfg.load_cert_chain(certfile, keyfile)

    tasks: set[asyncio.Task[None]] = set()

    def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def answer() -> None:
            req = await reader.read()
            if req[:1] in (b"P", b"D"):
                writer.write(make_body(0, 0, int(req[1:])))
            else:
                writer.write(b"ok")
            writer.write_eof()

        task = asyncio.ensure_future(answer())
        tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(tasks.discard)

    # What aioquic's serve() does, keeping the transport, which knows the port.
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: QuicServer(configuration=cfg, stream_handler=handler),
        local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    print(port, flush=True)  # the parent reads the port from the first line
    await asyncio.Event().wait()


class QuicEcho(Baseline):
    """aioquic round trips against an echo server in a child process."""

    library = f"aioquic {_version('aioquic')} (one bidirectional stream per call, TLS 1.3)"
    ops = ("enqueue", "peek", "dequeue", "ack")

    def unavailable(self) -> str | None:
        """Return why aioquic/cryptography cannot be used, or None."""
        try:
            import aioquic  # noqa: F401
            import cryptography  # noqa: F401
        except ImportError:
            return "aioquic is not installed: pip install 'unifiedq[quic]'"
        return None

    @contextlib.contextmanager
    def session(self, url: str | None) -> Iterator[Any]:
        """Start the echo server; yield its port."""
        with tempfile.TemporaryDirectory(prefix="unifiedq-quic-echo-") as tmp:
            cert, key = _self_signed(Path(tmp))
            proc = subprocess.Popen(
                [sys.executable, "-m", "unifiedq.bench.quic_baseline", "--serve",
                 "--cert", str(cert), "--key", str(key)],
                stdout=subprocess.PIPE, text=True,
            )
            try:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if not line.strip().isdigit():
                    raise RuntimeError("the aioquic echo server did not start")
                yield int(line)
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def run(self, url: str | None, load: int, size: int) -> dict[str, OpStats]:
        """Time ``load`` round trips per op over one QUIC connection."""
        with self.session(url) as port:
            return asyncio.run(self._client(port, load, size))

    async def _client(self, port: int, load: int, size: int) -> dict[str, OpStats]:
        from aioquic.asyncio.client import connect
        from aioquic.quic.configuration import QuicConfiguration

        cfg = QuicConfiguration(is_client=True, alpn_protocols=_ALPN,
                                verify_mode=ssl.CERT_NONE, server_name="localhost")
        out: dict[str, OpStats] = {}
        async with connect("127.0.0.1", port, configuration=cfg) as client:

            async def call(req: bytes) -> bytes:
                reader, writer = await client.create_stream()
                writer.write(req)
                writer.write_eof()
                return await reader.read()

            bodies = [make_body(0, i, size) for i in range(load)]
            small = {"peek": b"P%d" % size, "dequeue": b"D%d" % size, "ack": b"A"}
            for op in ("enqueue", "peek", "dequeue", "ack"):
                samples: list[int] = []
                errors = 0
                first: str | None = None
                start = end = time.perf_counter_ns()
                for i in range(load):
                    req = bodies[i] if op == "enqueue" else small[op]
                    t0 = time.perf_counter_ns()
                    try:
                        await call(req)
                    except Exception as exc:
                        errors += 1
                        first = first or f"{type(exc).__name__}: {exc}"
                        continue
                    end = time.perf_counter_ns()
                    samples.append(end - t0)
                out[op] = OpStats.from_samples(op, samples, end - start, errors=errors,
                                               error=first)
        return out


def _main() -> None:
    p = argparse.ArgumentParser(prog="python -m unifiedq.bench.quic_baseline")
    p.add_argument("--serve", action="store_true", help="run the echo server")
    p.add_argument("--cert")
    p.add_argument("--key")
    a = p.parse_args()
    if not a.serve:
        p.error("only --serve is supported")
    if not (a.cert and a.key):
        tmp = Path(tempfile.mkdtemp(prefix="unifiedq-quic-echo-"))
        cert, key = _self_signed(tmp)
        a.cert, a.key = str(cert), str(key)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(a.cert, a.key))


if __name__ == "__main__":
    _main()
