"""Redis task queue, wire-compatible with Go's asynq.

Features: leases with a background heartbeat and crash recovery, ack/nack with asynq's
retry and archive semantics, delays (asynq's scheduled set), priorities 0..9 (as asynq
priority queues ``<queue>:p<N>``), pipelined batches, blocking dequeue with a wake-up list
(pickup well under a millisecond instead of asynq's ~1 s poll), caller-chosen task ids,
headers (asynq >= 0.26), uniqueness locks, retention and per-state counts (``stats()``,
as asynq's inspector counts them). Native sync (redis-py) and asyncio (redis.asyncio) faces
over one shared core. Tasks written here run on Go asynq servers, Go asynq clients feed Python
consumers, and asynq's CLI and Web UI see consistent states.

Connection string::

    redis://[[user]:password@]host[:port][/db]?queue=default&task_type=unifiedq
    rediss://...&ssl_ca_certs=/path/ca.pem          (TLS)
    redis+sentinel://host:26379[,host:26379...]/<master>[/db]?queue=...   (Sentinel)
    redis+cluster://host:port[,host:port...][/0]?queue=...                (Redis Cluster)

Options (see :class:`RedisOptions`): ``queue``, ``task_type``, ``visibility_timeout``,
``heartbeat``, ``timeout``, ``max_retry``, ``backoff``, ``retention``, ``unique_ttl``,
``lease_grace``, ``poll_interval``, ``max_body``, ``proto_max_bulk_len``, socket (every verb
keeps a deadline of ``socket_timeout``, 5 s by default) and ``ssl_*`` settings.

The asynq task type of a job is its ``type`` header (default: the ``task_type`` option);
every dequeued job carries its task type in ``headers["type"]``. Delivery is at-least-once.
"""

from __future__ import annotations

from ._async.queue import AsyncRedisQueue
from ._core import RedisOptions
from ._sync.queue import RedisQueue

__all__ = ["AsyncRedisQueue", "RedisOptions", "RedisQueue"]

sync_class = RedisQueue
async_class = AsyncRedisQueue
