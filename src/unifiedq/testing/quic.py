"""A real ``unifiedq serve`` process and a throwaway PKI, for tests and benchmarks.

Needs the ``quic`` extra. Example::

    srv = ServerProcess(Pki(tmp_path), "memory://").start()
    try:
        with unifiedq.connect(srv.url("jobs", capabilities="memory")) as q:
            q.enqueue(b"hello")
    finally:
        srv.stop()
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

from ..drivers.quic.certs import issue, make_ca, write_pair
from .servers import Freezable

__all__ = ["Pki", "ServerProcess"]


class Pki:
    """A CA with a server certificate and several client certificates, written to ``root``.

    Attributes:
        ca, server_cert, server_key, client_cert, client_key: paths of the good set.
        other_cert, other_key: a client certificate signed by another CA.
        expired_cert, expired_key: an expired client certificate from the right CA.
        server_only_cert, server_only_key: right CA, but only valid for server authentication.
    """

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        ca = make_ca("unifiedq test CA")
        write_pair(ca, root / "ca.pem", root / "ca.key", force=True)
        self.ca = str(root / "ca.pem")

        def leaf(name: str, **kw: object) -> tuple[str, str]:
            pair = issue(ca, name, **kw)  # type: ignore[arg-type]
            cert, key = root / f"{name}.pem", root / f"{name}.key"
            write_pair(pair, cert, key, force=True)
            return str(cert), str(key)

        self.server_cert, self.server_key = leaf(
            "server", server=True, san=["127.0.0.1", "::1", "localhost"])
        self.client_cert, self.client_key = leaf("client", client=True)
        now = _dt.datetime.now(_dt.UTC)
        self.expired_cert, self.expired_key = leaf(
            "expired", client=True, not_before=now - _dt.timedelta(days=30),
            not_after=now - _dt.timedelta(days=1))
        self.server_only_cert, self.server_only_key = leaf("serveronly", server=True)
        other = make_ca("some other CA")
        pair = issue(other, "stranger", client=True)
        write_pair(pair, root / "stranger.pem", root / "stranger.key", force=True)
        self.other_cert, self.other_key = str(root / "stranger.pem"), str(root / "stranger.key")

    def query(self, cert: str | None = None, key: str | None = None, **extra: str) -> str:
        """Query string with ``ca``/``cert``/``key`` (the good client pair by default)."""
        params = {"ca": self.ca, "cert": cert or self.client_cert, "key": key or self.client_key}
        params.update(extra)
        return urllib.parse.urlencode(params, safe="/")


class ServerProcess(Freezable):
    """``python -m unifiedq.drivers.quic.server`` as a child process.

    Args:
        pki: Certificates to use.
        backend: The ``--backend`` URL.
        extra: More command-line arguments.
        log: File receiving the server's stderr.
    """

    def __init__(self, pki: Pki, backend: str = "memory://", extra: list[str] | None = None,
                 log: Path | None = None) -> None:
        self.pki = pki
        self.backend = backend
        self.extra = list(extra or [])
        self.log = log or pki.root / "server.log"
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.banner = ""
        #: What the server printed after its banner (read by :meth:`stop`).
        self.tail = ""

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start the server and wait for its banner line (which names the port)."""
        argv = [
            sys.executable, "-m", "unifiedq.drivers.quic.server",
            "--listen", f"127.0.0.1:{self.port}", "--backend", self.backend,
            "--cert", self.pki.server_cert, "--key", self.pki.server_key,
            "--client-ca", self.pki.ca, *self.extra,
        ]
        logf = open(self.log, "a")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=logf, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        logf.close()
        line: list[str] = []
        out = self.proc.stdout
        assert out is not None
        reader = threading.Thread(target=lambda: line.append(out.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not (m := re.search(r"quic://[^:]+:(\d+)", line[0])):
            self.kill()
            raise RuntimeError(f"quic server did not start: {line!r}\n{self.read_log()[-3000:]}")
        self.banner = line[0]
        self.port = int(m.group(1))
        return self

    def url(self, queue: str, **params: str) -> str:
        """A ``quic://`` URL for ``queue`` on this server with the good client certificate."""
        return f"quic://127.0.0.1:{self.port}/{queue}?{self.pki.query(**params)}"

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful shutdown) and wait; SIGKILL if it does not stop in time."""
        if self.proc is None:
            return None
        self.thaw()  # a frozen process would not see the SIGTERM until SIGCONT
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            self.tail = proc.stdout.read()
            proc.stdout.close()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the server."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def freeze(self) -> None:
        """SIGSTOP the server (a stalled or partitioned host): nothing answers until thawed.

        Its socket stays bound and the kernel keeps queueing datagrams for it (up to the
        socket buffer). Call :meth:`thaw` (``stop`` thaws first).
        """
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Resume a server frozen by :meth:`freeze` (SIGCONT)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def read_log(self) -> str:
        """The server's stderr so far."""
        try:
            return self.log.read_text()
        except OSError:
            return ""
