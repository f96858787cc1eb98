"""RabbitMQ driver (``amqp://``, ``amqps://``) through py-amqp (kombu's AMQP client).

Features: a durable queue of persistent messages behind a durable direct exchange (routing
key equal to the queue name); publisher confirms on every publish, with ``enqueue_many``
confirming a whole batch in one wait; consumption with prefetch (``basic.qos``) and manual
acks; exact attempt counts across nacks and lease expiry; a dead-letter queue declared with
the queue (``nack(requeue=False)`` and exhausted ``max_attempts``); priorities 0..9 through
``x-max-priority``; delays through per-delay TTL queues that dead-letter into the main
queue; string headers; ``release`` without consuming an attempt; reconnection with backoff;
deadlines on every verb (``socket_timeout``: a stalled broker raises ``BackendTimeout``);
broker limits checked before sending (``LimitExceeded``); publishing on its own connection, so
that a memory or disk alarm gives producers ``BackendFull`` while consumers drain; TLS with
certificate verification. No peek (RabbitMQ has none that does not disturb the message)
and no caller-chosen ids (the broker cannot refuse a duplicate). Blocking face only;
``connect_async`` bridges it.

Connection string::

    amqp://user:password@host:5672/vhost?queue=emails&prefetch=32
    amqps://user:password@host:5671/vhost?queue=emails&ca_file=/etc/ssl/ca.pem

The path is the virtual host, as in kombu: ``//`` or an empty path is ``/``, ``/%2F`` is
``/`` too, ``/jobs`` is ``jobs``.

Topology for ``queue=Q`` and ``exchange=X`` (default ``unifiedq``):

* exchange ``X``: direct, durable;
* queue ``Q``: durable, ``x-max-priority=9``, dead-letters to ``X`` with key ``Q.dead``,
  bound to ``X`` with key ``Q``;
* queue ``Q.dead``: declared like a main queue (so ``?queue=Q.dead`` opens it), bound to
  ``X`` with key ``Q.dead``;
* queues ``Q.delay.<ms>``: durable, ``x-message-ttl=<ms>``, dead-letter to ``X`` with key
  ``Q``, ``x-expires=2*ms+60s`` (they vanish when unused).

Delivery semantics (at-least-once): a dequeued job is leased until it is acked or nacked,
until the handle's connection closes (crash, lost connection, ``close()``), or, with the
``visibility_timeout`` option, until that many seconds pass (enforced by this client:
RabbitMQ has no per-message lease). See ``docs/drivers/amqp.md``.

Thread safety: a handle serialises its verbs with a lock; give each worker thread its own
handle for parallelism.

Layout: :class:`AmqpQueue` is one class built in layers, one module each; each layer's mixin
subclasses the one below it, so a module only calls what its own or a lower layer defines
(the connection layer calls back into two higher ones through the hooks declared on
:class:`~.state.AmqpState`):

* :mod:`.options`: :class:`AmqpOptions`, the URL's options, and the virtual host of a URL;
* :mod:`.errors`: which errors mean a lost connection; the one mapping to unifiedq errors;
* :mod:`.state`: :class:`~.state.AmqpState`, every attribute of a handle, set in
  ``__init__``, and the hooks;
* :mod:`.topology`: declaring the exchange, the main, dead-letter and delay queues;
* :mod:`.connection`: the consume and publish connections (TLS), deadlines, dropping a lost
  connection, reconnecting with backoff, the locked ``_call`` every verb runs in, reading
  frames that arrived;
* :mod:`.publishing`: messages, priorities and delays, limits, batch frames, publisher
  confirms, ``connection.blocked``;
* :mod:`.consuming`: consumer, prefetch and ``basic.get``; leases; ack, nack, release,
  extend_lease;
* :mod:`.queue`: :class:`AmqpQueue` itself: ``from_url``, ``size``, ``purge``, ``close``.

The py-amqp internals the driver needs (to write batch frames itself) live in
``unifiedq/_compat/amqp.py``, which lists them and their verified version range.
"""

from __future__ import annotations

# AmqpOptions and AmqpQueue are the public names; the module constants of the single-file
# driver this package replaced stay importable from here, as before.
from .errors import QueueDeclarationMismatch
from .options import DEFAULT_MAX_BODY as DEFAULT_MAX_BODY
from .options import AmqpOptions
from .publishing import H_ATTEMPT as H_ATTEMPT
from .publishing import H_ENQUEUED as H_ENQUEUED
from .queue import AmqpQueue
from .topology import MAX_PRIORITY as MAX_PRIORITY

__all__ = ["AmqpOptions", "AmqpQueue", "QueueDeclarationMismatch"]

sync_class = AmqpQueue
async_class = None
