"""The connections: connecting (TLS included), deadlines, losing one, reconnecting with backoff.

A handle has up to two connections, each opened when first needed:

* the **consume** connection (``_conn``, channel ``_cch`` with ``basic.qos``): dequeue,
  ack/nack/release, ``size()``, ``purge()``. Its deliveries are the handle's leases, so
  losing it voids them (the broker returns those jobs);
* the **publish** connection (``_pconn``, channel ``_pch`` in confirm mode): every publish,
  including the copies that nack and release publish. RabbitMQ blocks a connection that
  publishes during a memory or disk alarm (it stops reading from its socket), so publishing
  on its own connection keeps consumers dequeuing, acking and nacking while producers get
  ``BackendFull``; losing it voids no lease.

Every verb runs under the handle's lock with a deadline: every blocking read or write on a
socket waits at most ``socket_timeout`` (and never past the verb's deadline), after which the
connection is dropped and the verb raises ``BackendTimeout`` without retrying (a stalled
broker would stall a new connection too). After a lost connection (refused, reset, closed by
the broker) a verb reconnects with backoff for up to ``reconnect_timeout`` seconds, never
past its own deadline. The first connection of a handle is tried once, so that a wrong
address fails fast.
"""

from __future__ import annotations

import contextlib
import select
import ssl
import time
from collections.abc import Callable
from typing import Any, TypeVar

import amqp
import amqp.exceptions as amqp_exc

from ..._compat import amqp as compat
from ..._errors import BackendError, BackendTimeout
from .errors import CONN_ERRORS, retryable, translate
from .topology import TopologyMixin

__all__ = ["ConnectionMixin"]

T = TypeVar("T")

_INF = float("inf")


class ConnectionMixin(TopologyMixin):
    """Connects, bounds every wait, forgets a broken connection, reconnects, reads frames."""

    def _ssl(self) -> dict[str, Any] | bool:
        if not self._tls:
            return False
        o = self.options
        opts: dict[str, Any] = {
            "cert_reqs": ssl.CERT_REQUIRED,
            "server_hostname": o.tls_hostname or self._host,  # enables the hostname check
        }
        if o.ca_file:
            opts["ca_certs"] = o.ca_file
        if o.cert_file:
            opts["certfile"] = o.cert_file
            opts["keyfile"] = o.key_file
        return opts

    # -- deadlines -------------------------------------------------------------------------
    def _arm(self, conn: Any, hard: float) -> None:
        """Bound each blocking read/write on ``conn`` by ``socket_timeout`` and ``hard``.

        py-amqp's own waits without a timeout (every RPC reply) then end with a
        ``TimeoutError`` instead of blocking forever on a stalled broker; its waits with a
        timeout (``drain_events(timeout=...)``) set theirs and restore this one.
        """
        left = hard - time.monotonic()
        if left <= 0:
            raise TimeoutError("the verb's deadline passed")
        timeout = min(self.options.socket_timeout, left)
        sock = conn.sock
        if sock.gettimeout() != timeout:  # settimeout is a system call; most verbs repeat it
            sock.settimeout(timeout)

    def _timed_out(self, what: str, exc: BaseException | None = None) -> BackendTimeout:
        return BackendTimeout(
            f"{what}: no answer from {self._where()} within socket_timeout="
            f"{self.options.socket_timeout}s or the verb's deadline (a stalled broker or "
            "network); the connection was dropped" + (f" ({exc})" if exc and str(exc) else "")
        )

    # -- connecting ------------------------------------------------------------------------
    def _open(self, hard: float, *, publish: bool) -> Any:
        """Open one py-amqp connection, trying the cluster's nodes in turn from the last one.

        A node that refuses or drops the connection gives way to the next (``alternates``);
        the last error is raised when none answers.
        """
        if len(self._nodes) == 1:
            return self._open_node(hard, publish=publish)
        for k in range(len(self._nodes)):
            i = (self._node + k) % len(self._nodes)
            self._host, self._port = self._nodes[i]
            try:
                conn = self._open_node(hard, publish=publish)
            except CONN_ERRORS as exc:
                # A node that does not answer in time may be down: try the others first.
                if k == len(self._nodes) - 1 or time.monotonic() >= hard or not (
                        retryable(exc) or isinstance(exc, TimeoutError)):
                    raise
                continue
            self._node = i
            return conn
        raise AssertionError("unreachable: a handle has at least one node")

    def _open_node(self, hard: float, *, publish: bool) -> Any:
        """Open one py-amqp connection (TCP, TLS, AMQP handshake), every wait bounded."""
        o = self.options
        timeout = min(o.connect_timeout, max(hard - time.monotonic(), 0.001))
        host = f"[{self._host}]" if ":" in self._host else self._host
        conn = amqp.Connection(
            host=f"{host}:{self._port}", userid=self._username or "guest",
            password=self._password if self._password is not None else "guest",
            virtual_host=self._vhost, ssl=self._ssl(), connect_timeout=timeout, heartbeat=0,
            on_blocked=self._on_blocked if publish else None,
            on_unblocked=self._on_unblocked if publish else None,
        )
        try:
            conn.connect()
            conn.sock.settimeout(timeout)  # the channel setup too
            compat.read_ahead(conn)  # one recv per burst of frames, not three per frame
        except BaseException:
            with contextlib.suppress(Exception):
                conn.collect()
            raise
        return conn

    def _connect_main(self, hard: float) -> None:
        conn = self._open(hard, publish=False)
        try:
            cch = conn.channel()
            cch.basic_qos(0, self.options.prefetch, False)
            self._declare_main(cch)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.collect()
            raise
        self._conn, self._raw, self._cch = conn, conn, cch
        self._poller = select.poll()
        self._poller.register(conn.sock, select.POLLIN)
        self._epoch += 1
        self._ever_connected = True

    def _connect_pub(self, hard: float) -> None:
        conn = self._open(hard, publish=True)
        try:
            pch = conn.channel()
            pch.confirm_select()
            compat.on_publish_events(pch, on_ack=self._on_ack, on_nack=self._on_nack,
                                     on_return=self._on_return)
            self._declare_main(pch)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.collect()
            raise
        self._pconn, self._pch = conn, pch
        self._ppoller = select.poll()
        self._ppoller.register(conn.sock, select.POLLIN)
        self._pub_seq = 0
        self._pub_blocked = None
        self._ever_connected = True

    def _on_blocked(self, reason: str) -> None:
        self._pub_blocked = reason or "connection blocked"

    def _on_unblocked(self) -> None:
        self._pub_blocked = None

    def _drop(self) -> None:
        """Forget the consume connection (already broken or about to be): its leases are void."""
        conn = self._conn
        self._conn = self._raw = self._cch = None
        self._consumer_tag = None
        self._buffer.clear()
        self._held.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.collect()  # closes the socket without talking to the broker

    def _drop_pub(self) -> None:
        """Forget the publish connection; no lease depends on it."""
        conn = self._pconn
        self._pconn = self._pch = None
        self._pub_blocked = None
        self._declared_delays.clear()
        self._cstatus = bytearray()
        self._clow = 0
        self._returned.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.collect()

    def _connect_retrying(self, connect: Callable[[float], None], what: str, start: float,
                          hard: float, until: float = _INF) -> None:
        """Run ``connect``; after a lost connection, retry with backoff within the budget.

        The budget ends ``reconnect_timeout`` after ``start``, and never after ``until`` or
        ``hard``; a handle that never connected tries once.
        """
        end = min(start + self.options.reconnect_timeout, hard, until) \
            if self._ever_connected else start
        pause = 0.1
        while True:
            try:
                connect(hard)
                return
            except TimeoutError as exc:  # a stalled broker: a new attempt would stall too
                raise self._timed_out(f"{what}: connecting", exc) from exc
            except Exception as exc:
                if not retryable(exc) or time.monotonic() + pause > end:
                    raise translate(exc, f"{what}: cannot connect to {self._where()}") from exc
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _ensure(self, what: str = "connect", start: float | None = None,
                hard: float = _INF, until: float = _INF) -> None:
        """Open the consume connection if needed."""
        if self._conn is None:
            self._connect_retrying(self._connect_main, what,
                                   time.monotonic() if start is None else start, hard, until)

    def _ensure_pub(self, what: str, start: float, hard: float) -> None:
        """Open the publish connection if needed."""
        if self._pconn is None:
            self._connect_retrying(self._connect_pub, what, start, hard)

    def _where(self) -> str:
        scheme = "amqps" if self._tls else "amqp"
        return f"{scheme}://{self._host}:{self._port} vhost {self._vhost!r}"

    def _call(self, what: str, fn: Callable[[], T], *, hard: float = _INF,
              start: float | None = None, until: float = _INF) -> T:
        """Run ``fn`` under the lock on a live consume connection; reconnect and retry on loss.

        ``hard`` bounds every wait (monotonic); ``start`` is when the verb's retry budget
        began; ``until`` is when it stops reconnecting (a dequeue's own deadline).
        """
        start = time.monotonic() if start is None else start
        with self._lock:
            while True:
                self._check_open()
                self._ensure(what, start, hard, until)
                try:
                    self._arm(self._conn, hard)
                    self._expire()
                    return fn()
                except BackendError:
                    raise  # from publishing (its own connection): this one is fine
                except TimeoutError as exc:  # a stalled broker
                    self._drop()
                    raise self._timed_out(what, exc) from exc
                except CONN_ERRORS as exc:
                    self._drop()
                    late = time.monotonic() - start >= self.options.reconnect_timeout
                    if late or time.monotonic() >= min(hard, until) or not retryable(exc):
                        raise translate(exc, what) from exc
                except amqp_exc.AMQPError as exc:
                    self._drop()  # a channel error closed a channel; start clean next time
                    raise translate(exc, what) from exc

    def _pump_conn(self, conn: Any, poller: select.poll) -> None:
        """Process frames that already arrived on ``conn``, without waiting."""
        # A poll() is far cheaper than py-amqp's timeout=0 read (which raises), and this
        # runs on every ack; bytes py-amqp or TLS already buffered are checked first.
        if not compat.input_pending(conn) and not poller.poll(0):
            return
        # Non-blocking once for the whole burst: drain_events(timeout=0) would otherwise set
        # and restore the socket's timeout around every frame (two system calls each).
        sock = conn.sock
        prev = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            while True:
                try:
                    conn.drain_events(timeout=0)
                except TimeoutError:
                    return
                if not compat.input_pending(conn) and not poller.poll(0):
                    return
        finally:
            with contextlib.suppress(OSError):  # the frames may have closed the connection
                sock.settimeout(prev)

    def _pump(self) -> None:
        """Process frames that already arrived on the consume connection."""
        self._pump_conn(self._raw, self._poller)
