"""The broker objects of a queue: its exchange, main and dead-letter queues, delay queues.

For ``queue=Q`` and ``exchange=X``: a durable direct exchange ``X``; durable queues ``Q``
and ``Q.dead`` (both with ``x-max-priority``, or the quorum arguments with
``queue_type=quorum``, and dead-lettering to ``X`` with key ``<name>.dead``; ``Q`` alone
with ``x-max-length`` under ``maxsize``), bound to ``X`` with their own names as keys;
and, per delay used,
``Q.delay.<ms>`` with ``x-message-ttl=<ms>``, dead-lettering to ``X`` with key ``Q``, and
``x-expires=2*ms+60s`` so that it vanishes when unused. The delay queues a process has
declared are remembered per broker, vhost and queue, so that ``size()`` and ``purge()``
of every handle in the process count them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .state import AmqpState

__all__ = ["DELAY_REDECLARE", "MAX_PRIORITY", "TopologyMixin"]

MAX_PRIORITY = 9
#: Arguments of every quorum queue: dead-lettering confirmed by the target queue (RabbitMQ
#: 3.10+; it needs ``x-overflow=reject-publish``), instead of fire-and-forget.
_QUORUM_ARGS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}
#: Seconds a delay-queue declaration is trusted (its ``x-expires`` is at least 60 s).
DELAY_REDECLARE = 30.0

_known_delays_lock = threading.Lock()
# (broker address, vhost, queue) -> {delay ms: monotonic time of the last declaration}; shared
# by the handles of this process so that size() and purge() see each other's delay queues.
_known_delays: dict[tuple[str, int, str, str], dict[int, float]] = {}


class TopologyMixin(AmqpState):
    """Declares the exchange and queues, and tracks the delay queues in use."""

    def _queue_args(self, name: str) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-dead-letter-exchange": self._x,
            "x-dead-letter-routing-key": f"{name}.dead",
        }
        o = self.options
        if o.queue_type == "quorum":
            args.update(_QUORUM_ARGS)  # quorum queues refuse x-max-priority
            if o.max_attempts is not None:
                # The broker's own cap: it dead-letters a message once it was returned
                # (consumer lost, basic.reject requeue) max_attempts - 1 times.
                args["x-delivery-limit"] = o.max_attempts - 1
        else:
            args["x-max-priority"] = MAX_PRIORITY
        if o.maxsize is not None and name == self._q:
            # Not on Q.dead: dead-lettering into a full queue would drop (classic) or stall.
            # A quorum queue (3.10) refuses a publish only once it holds *more* than
            # x-max-length ready messages: it takes one past it, so it gets maxsize - 1.
            quorum = o.queue_type == "quorum"
            args["x-max-length"] = o.maxsize - 1 if quorum else o.maxsize
            args["x-overflow"] = "reject-publish"
        return args

    def _declare_main(self, ch: Any) -> None:
        if self._x:
            ch.exchange_declare(self._x, "direct", durable=True, auto_delete=False)
        ch.queue_declare(self._q, durable=True, auto_delete=False,
                         arguments=self._queue_args(self._q))
        # The dead-letter queue gets the arguments of a main queue, so that a handle opened
        # on it (?queue=Q.dead, to inspect or replay dead jobs) declares it identically.
        ch.queue_declare(self._dead, durable=True, auto_delete=False,
                         arguments=self._queue_args(self._dead))
        if self._x:
            ch.queue_bind(self._q, self._x, routing_key=self._q)
            ch.queue_bind(self._dead, self._x, routing_key=self._dead)

    def _delay_queue(self, ms: int) -> str:
        return f"{self._q}.delay.{ms}"

    def _declare_delay(self, ms: int, ch: Any) -> int:
        """Declare ``Q.delay.<ms>`` (again: that restarts its ``x-expires``); return its size."""
        args: dict[str, Any] = {
            "x-message-ttl": ms,
            "x-expires": 2 * ms + 60_000,
            "x-dead-letter-exchange": self._x,
            "x-dead-letter-routing-key": self._q,
        }
        if self.options.queue_type == "quorum":
            # Replicated too, and dead-lettered at-least-once (retried while Q's leader is
            # being elected, say), not fire-and-forget.
            args.update(_QUORUM_ARGS)
        ok = ch.queue_declare(self._delay_queue(ms), durable=True, auto_delete=False,
                              arguments=args)
        now = time.monotonic()
        self._declared_delays[ms] = now
        with _known_delays_lock:
            _known_delays.setdefault(self._delays_key, {})[ms] = now
        return int(ok.message_count)

    def _known_delay_ms(self) -> list[int]:
        now = time.monotonic()
        with _known_delays_lock:
            known = _known_delays.get(self._delays_key, {})
            # A delay queue unused for x-expires is gone; forget it rather than recreate it.
            for ms in [ms for ms, t in known.items() if now - t > (2 * ms + 60_000) / 1000]:
                del known[ms]
            return sorted(known)
