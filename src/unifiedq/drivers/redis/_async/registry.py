# unasync: the blocking twin, _sync/registry.py, is generated from this file.
"""A worker's entry in asynq's server registry, written through one redis:// queue handle.

Opened by ``RedisQueue.open_consumer_registry`` (see ``unifiedq._consumers``); the layout and
the encoding are in ``.._servers``. Every heartbeat is two round trips on the handle's own
connections: the priority levels in use, then the whole ``WriteServerState`` in one
MULTI/EXEC (a reader never sees the workers hash half rewritten).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ...._consumers import ConsumerInfo, RunningJob
from .._core import pack, translating
from .._servers import (
    ServerInfo,
    WorkerInfo,
    clear_commands,
    encode_worker,
    write_commands,
)

if TYPE_CHECKING:
    from .queue import AsyncRedisQueue

__all__ = ["AsyncServerRegistration"]


class AsyncServerRegistration:
    """One worker shown as an asynq server (``Inspector.Servers``, asynqmon, ``asynq server ls``).

    Attributes:
        interval: Seconds between heartbeats (asynq's: 5). Each one lives ``2 * interval``
            seconds, so a killed worker drops out of the list that long after its last one.
        server_id: The UUID that names this server in its keys.
    """

    #: asynq's heartbeat period; a class attribute so tests can shorten it.
    INTERVAL: ClassVar[float] = 5.0

    def __init__(self, queue: AsyncRedisQueue, info: ConsumerInfo) -> None:
        self._queue = queue
        self._info = info
        self.interval = self.INTERVAL
        self.server_id = str(uuid.uuid4())
        self._ttl = max(1, round(2 * self.interval))
        self._encoded: dict[str, tuple[RunningJob, bytes]] = {}  # task id -> its WorkerInfo

    async def heartbeat(self, running: Sequence[RunningJob], *, status: str = "active") -> None:
        """Write the server and the tasks it runs now, both expiring in ``2 * interval`` s.

        Args:
            running: The jobs its handlers are running.
            status: asynq's server state: ``"active"``, or ``"stopped"`` once it takes no
                new jobs.

        Raises:
            BackendError: Redis refused or did not answer (within ``socket_timeout`` per
                round trip).
        """
        q = self._queue
        core = q._core
        with translating():
            reply = (await q._send(pack(("SMEMBERS", core.levels_key)), 1,
                                   q._deadline()))[0][0]
            if isinstance(reply, Exception):
                raise reply
            queues = {core.qname: 1}  # asynq: higher number = higher priority
            for raw in reply or ():
                level = int(raw)
                if 0 < level < 10:
                    queues[f"{core.qname}:p{level}"] = level + 1
            for qname, prio in self._info.queues.items():
                queues.setdefault(qname, prio)
            info = ServerInfo(
                host=self._info.host, pid=self._info.pid, server_id=self.server_id,
                concurrency=self._info.concurrency, queues=queues, status=status,
                start_time=self._info.started_at, strict_priority=len(queues) > 1,
                active_worker_count=len(running))
            # A running job's entry does not change between beats: encoded once.
            old, self._encoded = self._encoded, {}
            for rj in running:
                data = old.get(rj.job.id)
                if data is None or data[0].job is not rj.job:  # the same delivery: kept
                    w = WorkerInfo(rj.job.id, rj.job.headers.get("type") or core.options.task_type,
                                   rj.job.body, f"{core.qname}:p{rj.job.priority}"
                                   if rj.job.priority else core.qname, rj.started_at, rj.deadline)
                    data = (rj, encode_worker(info.host, info.pid, self.server_id, w))
                self._encoded[rj.job.id] = data
            workers = [(jid, data) for jid, (_, data) in self._encoded.items()]
            cmds = write_commands(info, workers, self._ttl, time.time())
            await self._run(cmds[:2], cmds[2:])

    async def _run(self, registries: list[Any], own: list[Any]) -> None:
        """Update the two registries, then the server's own keys in one MULTI/EXEC.

        One round trip on a single node; on a cluster one per slot (the two registries and
        the ``{host:pid:id}`` keys live in three slots, as in asynq).
        """
        q = self._queue
        own = [("MULTI",), *own, ("EXEC",)]
        if q._slots is None:
            batches = [(None, [*registries, *own])]
        else:
            batches = [(c[1], [c]) for c in registries] + [(own[1][1], own)]
        for key, cmds in batches:
            replies, _ = await q._send(b"".join(pack(c) for c in cmds), len(cmds),
                                       q._deadline(), key=key)
            for r in replies:
                if isinstance(r, Exception):
                    raise r

    async def close(self) -> None:
        """Leave the registry now (asynq's ``ClearServerState``).

        Raises:
            BackendError: Redis refused or did not answer.
        """
        cmds = clear_commands(self._info.host, self._info.pid, self.server_id)
        with translating():
            await self._run(cmds[:2], cmds[2:])
