"""The options of ``amqp://`` and ``amqps://`` URLs, and the virtual host in the URL's path."""

from __future__ import annotations

import dataclasses
import math
import urllib.parse
from typing import Literal

__all__ = ["DEFAULT_MAX_BODY", "AmqpOptions", "hosts_of", "vhost_of"]

#: RabbitMQ's default ``max_message_size`` (128 MiB).
DEFAULT_MAX_BODY = 128 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class AmqpOptions:
    """Options of ``amqp://`` and ``amqps://`` URLs.

    Attributes:
        queue: Queue name (also the routing key).
        exchange: Durable direct exchange the queue is bound to; ``""`` uses the default
            exchange.
        prefetch: ``basic.qos`` prefetch count of a consuming handle: how many jobs the
            broker pushes ahead, and the most jobs one handle can hold un-acked.
        visibility_timeout: Seconds a dequeued job stays leased before this client returns
            it to the queue; None = until acked or the connection closes.
        max_attempts: Dead-letter a job instead of requeueing it once it has been delivered
            this many times; None = never.
        confirm_timeout: Deadline in seconds of a whole publish (``enqueue``,
            ``enqueue_many``, and the copy a ``nack`` or ``release`` publishes): writing,
            reconnecting and waiting for the broker's confirms.
        connect_timeout: Seconds to wait for a TCP/TLS/AMQP connection.
        reconnect_timeout: Seconds a verb keeps reconnecting (with backoff) after a lost
            connection, never past the verb's own deadline.
        socket_timeout: Longest wait, in seconds, for the broker to answer or to take our
            bytes; past it the connection is dropped and the verb raises
            ``BackendTimeout`` (a stalled broker). ``dequeue(timeout=t)`` returns within
            ``t + socket_timeout``.
        max_body: Largest body accepted, in bytes (RabbitMQ's default limit is 128 MiB).
        ca_file: CA bundle that verifies the broker's certificate (``amqps://`` only;
            default: the system's trust store).
        cert_file: Client certificate for mutual TLS (``amqps://`` only).
        key_file: Key of ``cert_file``.
        tls_hostname: Name to verify the broker's certificate against (default: the host).
        queue_type: ``"classic"`` (default) or ``"quorum"``: a replicated Raft queue on a
            RabbitMQ cluster (no priorities; see ``docs/drivers/amqp.md``).
        maxsize: Broker-side bound: ``x-max-length`` with ``x-overflow=reject-publish`` on
            the main queue, so the broker refuses (and confirms as refused) a publish past
            ``maxsize`` ready jobs, which raises ``QueueFull``; None = unbounded.
        alternates: Other nodes of the same cluster, ``host:port`` comma-separated (kombu's
            ``alternates``); a lost or refused connection moves to the next one in turn
            (same credentials, virtual host and TLS options).
    """

    queue: str = "default"
    exchange: str = "unifiedq"
    prefetch: int = 32
    visibility_timeout: float | None = None
    max_attempts: int | None = None
    confirm_timeout: float = 30.0
    connect_timeout: float = 10.0
    reconnect_timeout: float = 30.0
    socket_timeout: float = 5.0
    max_body: int | None = DEFAULT_MAX_BODY
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_hostname: str | None = None
    queue_type: Literal["classic", "quorum"] = "classic"
    maxsize: int | None = None
    alternates: str = ""

    def __post_init__(self) -> None:
        for name in (self.queue, self.exchange):
            if len(name.encode()) > 200 or not name.isprintable():
                raise ValueError(f"names must be at most 200 printable bytes, not {name!r}")
        if not self.queue:
            raise ValueError("queue must not be empty")
        if self.queue.startswith("amq.") or self.exchange.startswith("amq."):
            raise ValueError("names starting with 'amq.' are reserved by RabbitMQ")
        if not 1 <= self.prefetch <= 65535:
            raise ValueError(f"prefetch must be in 1..65535, not {self.prefetch}")
        if self.visibility_timeout is not None and not (
            math.isfinite(self.visibility_timeout) and self.visibility_timeout > 0
        ):
            raise ValueError(f"visibility_timeout must be > 0, not {self.visibility_timeout}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, not {self.max_attempts}")
        for key in ("confirm_timeout", "connect_timeout", "socket_timeout"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be > 0, not {value}")
        if not (math.isfinite(self.reconnect_timeout) and self.reconnect_timeout >= 0):
            raise ValueError(f"reconnect_timeout must be >= 0, not {self.reconnect_timeout}")
        if self.max_body is not None and not 0 <= self.max_body <= DEFAULT_MAX_BODY * 4:
            raise ValueError(f"max_body must be in 0..{DEFAULT_MAX_BODY * 4}")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        if self.queue_type not in ("classic", "quorum"):
            raise ValueError(f"queue_type must be 'classic' or 'quorum', not {self.queue_type!r}")
        if self.maxsize is not None and not 1 <= self.maxsize < 2**63:
            raise ValueError(f"maxsize must be >= 1, not {self.maxsize}")
        hosts_of(self.alternates)  # ValueError now, not at the first connection

    @property
    def tls_options_given(self) -> bool:
        """Whether any TLS option is set."""
        return any(
            v is not None for v in (self.ca_file, self.cert_file, self.key_file, self.tls_hostname)
        )


def vhost_of(raw: str) -> str:
    """The virtual host of a raw URL, read as kombu reads it (``//`` and ``/`` are ``/``)."""
    path = urllib.parse.urlsplit(raw).path
    if path in ("", "/"):
        return "/"
    return urllib.parse.unquote(path[1:])


def hosts_of(alternates: str) -> list[tuple[str, int | None]]:
    """The ``host:port`` pairs of an ``alternates`` option (port None when not given).

    Raises:
        ValueError: An entry is empty or its port is not a number in 1..65535.
    """
    out: list[tuple[str, int | None]] = []
    for entry in filter(None, (e.strip() for e in alternates.split(","))):
        if "://" in entry:  # kombu's alternates are URLs: take their host and port
            entry = urllib.parse.urlsplit(entry).netloc.rpartition("@")[2]
        host, port = entry, None
        if entry.startswith("["):  # [::1]:5672
            host, _, rest = entry[1:].partition("]")
            port_s = rest[1:] if rest.startswith(":") else ""
        elif entry.count(":") == 1:
            host, _, port_s = entry.partition(":")
        else:
            port_s = ""
        if port_s:
            if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
                raise ValueError(f"alternates: bad port in {entry!r}")
            port = int(port_s)
        if not host:
            raise ValueError(f"alternates: no host in {entry!r}")
        out.append((host, port))
    return out
