"""The state of one handle: every attribute the layers of ``AmqpQueue`` share, in one place."""

from __future__ import annotations

import collections
import dataclasses
import select
import threading
import uuid
from typing import Any

from ..._base import QueueBase
from ..._job import Job
from ..._url import URL
from .options import AmqpOptions, hosts_of

__all__ = ["AmqpState", "Held"]


@dataclasses.dataclass(slots=True)
class Held:
    """A job handed to the application and not settled yet."""

    job: Job
    msg: Any  # the amqp.Message, for republishing with the same properties
    deadline: float  # monotonic; inf without visibility_timeout


class AmqpState(QueueBase):
    """A handle's state, and the hooks by which a lower layer calls a higher one.

    Every attribute is set here and only here, so each layer (topology, connection,
    publishing, consuming, queue) reads and writes the same, typed state. Everything is
    guarded by ``_lock`` (``_cond`` is its condition, for the lease thread).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        vhost: str,
        username: str | None,
        password: str | None,
        tls: bool,
        options: AmqpOptions,
        url: URL | None = None,
    ) -> None:
        super().__init__(options.queue, url)
        self.options = options
        self.max_body = options.max_body
        self._host, self._port, self._vhost = host, port, vhost
        # Cluster nodes to try in turn (kombu's round-robin failover): the URL's, then the
        # alternates; _host/_port name the one last connected to.
        self._nodes = [(host, port)] + [(h, p or port) for h, p in hosts_of(options.alternates)]
        self._node = 0
        self._username, self._password, self._tls = username, password, tls
        self._q = options.queue
        self._x = options.exchange
        self._dead = f"{options.queue}.dead"
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        # The consume connection (py-amqp; ``_raw`` is the same object) and its channel
        # (qos, consume, get, ack, size, purge); its deliveries are the handle's leases.
        self._conn: Any = None
        self._raw: Any = None
        self._cch: Any = None
        self._poller = select.poll()  # readability of the consume connection's socket
        # The publish connection and its channel (confirm mode), opened at the first publish.
        self._pconn: Any = None
        self._pch: Any = None
        self._ppoller = select.poll()
        self._pub_blocked: str | None = None  # connection.blocked reason (memory/disk alarm)
        self._epoch = 0
        self._handle = uuid.uuid4().hex  # receipts name the handle and connection they need
        self._ever_connected = False
        self._consumer_tag: str | None = None
        self._buffer: collections.deque[Any] = collections.deque()
        self._held: dict[int, Held] = {}
        self._delays_key = (host, port, vhost, options.queue)
        self._declared_delays: dict[int, float] = {}  # on this connection
        # Confirms of the batch in flight: status per publish (0 pending, 1 ack, 2 nack).
        self._cbase = 0
        self._cstatus = bytearray()
        self._clow = 0
        self._pub_seq = 0
        self._returned: set[str] = set()
        self._lease_thread: threading.Thread | None = None
        self._last_take = 0.0  # monotonic time the application last asked for jobs

    # -- hooks: the connection layer calls these, the layers above implement them ----------
    def _on_ack(self, tag: int, multiple: bool) -> None:
        """A ``basic.ack`` publisher confirm arrived (publishing)."""
        raise NotImplementedError

    def _on_nack(self, tag: int, multiple: bool) -> None:
        """A ``basic.nack`` publisher confirm arrived (publishing)."""
        raise NotImplementedError

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        """The broker returned an unroutable message (publishing)."""
        raise NotImplementedError

    def _expire(self) -> None:
        """Return held jobs whose visibility timeout ran out (consuming)."""
        raise NotImplementedError
