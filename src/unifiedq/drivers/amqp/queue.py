"""``AmqpQueue``: the layers put together, plus ``from_url``, ``size``, ``purge``, ``close``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar, Self, cast

from ..._capabilities import Capability
from ..._errors import InvalidURL
from ..._url import URL, parse_options
from .consuming import ConsumingMixin
from .options import AmqpOptions, vhost_of

__all__ = ["AmqpQueue", "capabilities_for"]


def capabilities_for(options: AmqpOptions) -> Capability:
    """What a handle with these options can do (the class lists the most, for classic queues).

    Quorum queues (RabbitMQ 3.10) have no priorities: they refuse ``x-max-priority`` and
    deliver in FIFO order, so no PRIORITY. A bounded queue (``maxsize``) has no DELAY: a
    due job is dead-lettered from its delay queue into the main queue, where the bound
    cannot raise QueueFull to anyone: a classic queue drops it, and a quorum queue's
    at-least-once dead-lettering holds it only until the idle delay queue expires
    (measured: lost after about a minute).
    """
    caps = AmqpQueue.capabilities
    if options.queue_type == "quorum":
        caps &= ~Capability.PRIORITY
    if options.maxsize is not None:
        caps &= ~Capability.DELAY
    return caps


class AmqpQueue(ConsumingMixin):
    """A RabbitMQ queue (see the package docstring for topology and semantics)."""

    driver = "amqp"
    capabilities = (
        Capability.ACK | Capability.LEASE_EXTEND | Capability.DELAY | Capability.PRIORITY
        | Capability.BATCH | Capability.BLOCKING_DEQUEUE | Capability.HEADERS
        | Capability.DURABLE | Capability.CROSS_PROCESS | Capability.DISTRIBUTED
        | Capability.NATIVE_SYNC | Capability.RELEASE | Capability.BOUNDED
        | Capability.DEADLINE
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.capabilities = capabilities_for(self.options)

    #: The options dataclass ``from_url`` parses (a protocol's subclass has its own).
    options_class: ClassVar[type[AmqpOptions]] = AmqpOptions

    @classmethod
    def from_url(cls, url: URL, options: Mapping[str, object]) -> Self:
        """Build a handle from ``amqp[s]://user:pass@host:port/vhost?queue=...`` (no I/O)."""
        if cls is AmqpQueue and ("protocol" in url.query or "protocol" in options):
            from .machinery import open_with_protocol  # ?protocol=machinery: .machinery

            return cast(Self, open_with_protocol(url, options))
        opts = parse_options(cls.options_class, url.query, options, driver="amqp")
        tls = url.scheme == "amqps"
        if opts.tls_options_given and not tls:
            raise InvalidURL("ca_file, cert_file, key_file and tls_hostname need an amqps:// "
                             f"URL, not {url.redacted()!r}")
        return cls(
            host=url.host or "localhost",
            port=url.port or (5671 if tls else 5672),
            vhost=vhost_of(url.raw),
            username=url.username,
            password=url.password,
            tls=tls,
            options=opts,
            url=url,
        )

    # -- inspection ------------------------------------------------------------------------
    def _size(self) -> int:
        def count() -> int:
            ready = self._cch.queue_declare(self._q, passive=True).message_count
            delayed = sum(self._declare_delay(ms, self._cch) for ms in self._known_delay_ms())
            return int(ready) + delayed + len(self._buffer)

        return self._call("size", count)

    def _purge(self) -> int:
        def purge() -> int:
            n = int(self._cch.queue_purge(self._q) or 0)
            for ms in self._known_delay_ms():
                self._declare_delay(ms, self._cch)
                n += int(self._cch.queue_purge(self._delay_queue(ms)) or 0)
            # Prefetched but not handed out: waiting jobs too, held by our channel.
            while self._buffer:
                msg = self._buffer.popleft()
                self._cch.basic_ack(msg.delivery_info["delivery_tag"])
                n += 1
            return n

        return self._call("purge", purge)

    # -- closing ---------------------------------------------------------------------------
    def _close(self) -> None:
        # The whole close gets one socket_timeout: a stalled broker must not hold it longer.
        hard = time.monotonic() + self.options.socket_timeout
        with self._lock:
            self._cond.notify_all()  # ends the lease thread
            if self._conn is not None:
                try:
                    self._arm(self._conn, hard)
                    if self._consumer_tag is not None:
                        self._cch.basic_cancel(self._consumer_tag)
                        self._consumer_tag = None
                    # Held jobs are released (a shutdown is not a failure: no attempt counted,
                    # as on redis://); prefetched ones nobody saw go back first, unchanged too.
                    unseen = list(self._buffer)
                    self._buffer.clear()
                    self._return_held(list(self._held.items()), 0.0, count=False, hard=hard,
                                      unseen=unseen)
                    self._arm(self._conn, hard)
                    self._conn.close()
                except Exception:
                    pass  # the broker returns whatever we still hold when the connection goes
                finally:
                    self._drop()
            if self._pconn is not None:
                try:
                    if self._pub_blocked is None:  # a blocked connection would not answer
                        self._arm(self._pconn, hard)
                        self._pconn.close()
                except Exception:
                    pass
                finally:
                    self._drop_pub()
