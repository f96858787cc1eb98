"""The options of ``amqp://`` and ``amqps://`` URLs, and the virtual host in the URL's path."""

from __future__ import annotations

import dataclasses
import math
import urllib.parse

__all__ = ["DEFAULT_MAX_BODY", "AmqpOptions", "vhost_of"]

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
