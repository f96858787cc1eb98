"""The connection: connecting (TLS included), losing it, reconnecting with backoff.

A handle has at most one connection with two channels: a publish channel in confirm mode and
a consume channel with ``basic.qos``. Every verb runs under the handle's lock through
:meth:`ConnectionMixin._call`, which connects first when needed and, after a lost
connection, drops it (its leases are void: the broker returns those jobs) and retries on a
new one with backoff for up to ``reconnect_timeout`` seconds. The first connection of a
handle is tried once, so that a wrong address fails fast.
"""

from __future__ import annotations

import contextlib
import select
import ssl
import time
from collections.abc import Callable
from typing import Any, TypeVar

import amqp.exceptions as amqp_exc
import kombu.connection

from ..._compat import amqp as compat
from .errors import CONN_ERRORS, retryable, translate
from .topology import TopologyMixin

__all__ = ["ConnectionMixin"]

T = TypeVar("T")

# kombu ships no type information.
_KombuConnection: Any = kombu.connection.Connection


class ConnectionMixin(TopologyMixin):
    """Connects, forgets a broken connection, reconnects, and reads frames that arrived."""

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

    def _connect_once(self) -> None:
        o = self.options
        conn = _KombuConnection(
            hostname=self._host, port=self._port, userid=self._username or "guest",
            password=self._password if self._password is not None else "guest",
            virtual_host=self._vhost, ssl=self._ssl(), connect_timeout=o.connect_timeout,
            heartbeat=0, transport="pyamqp",
        )
        try:
            conn.connect()
            raw = conn.connection
            pch, cch = raw.channel(), raw.channel()
            pch.confirm_select()
            compat.on_publish_events(pch, on_ack=self._on_ack, on_nack=self._on_nack,
                                     on_return=self._on_return)
            cch.basic_qos(0, o.prefetch, False)
            self._declare_main(pch)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.collect()
            raise
        self._conn, self._raw, self._pch, self._cch = conn, raw, pch, cch
        self._poller = select.poll()
        self._poller.register(raw.sock, select.POLLIN)
        self._epoch += 1
        self._pub_seq = 0
        self._ever_connected = True

    def _drop(self) -> None:
        """Forget the connection (already broken or about to be): its leases are void."""
        conn = self._conn
        self._conn = self._raw = self._pch = self._cch = None
        self._consumer_tag = None
        self._buffer.clear()
        self._held.clear()
        self._declared_delays.clear()
        self._cstatus = bytearray()
        self._clow = 0
        self._returned.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.collect()  # closes the socket without talking to the broker

    def _ensure(self) -> None:
        """Connect if needed; after a lost connection, retry with backoff."""
        if self._conn is not None:
            return
        budget = self.options.reconnect_timeout if self._ever_connected else 0.0
        deadline = time.monotonic() + budget
        pause = 0.1
        while True:
            try:
                self._connect_once()
                return
            except Exception as exc:
                if not retryable(exc) or time.monotonic() + pause > deadline:
                    raise translate(exc, f"cannot connect to {self._where()}") from exc
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _where(self) -> str:
        scheme = "amqps" if self._tls else "amqp"
        return f"{scheme}://{self._host}:{self._port} vhost {self._vhost!r}"

    def _call(self, what: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        """Run ``fn`` under the lock on a live connection; reconnect and retry on loss."""
        start = time.monotonic()
        with self._lock:
            while True:
                self._check_open()
                self._ensure()
                try:
                    self._expire()
                    return fn()
                except CONN_ERRORS as exc:
                    self._drop()
                    late = time.monotonic() - start >= self.options.reconnect_timeout
                    if not retry or late or not retryable(exc):
                        raise translate(exc, what) from exc
                except amqp_exc.AMQPError as exc:
                    self._drop()  # a channel error closed a channel; start clean next time
                    raise translate(exc, what) from exc

    def _pump(self) -> None:
        """Process frames that already arrived, without waiting."""
        raw = self._raw
        while True:
            # A poll() is far cheaper than py-amqp's timeout=0 read (which raises), and this
            # runs on every ack; bytes py-amqp or TLS already buffered are checked first.
            if not compat.input_pending(raw) and not self._poller.poll(0):
                return
            try:
                raw.drain_events(timeout=0)
            except TimeoutError:
                return
