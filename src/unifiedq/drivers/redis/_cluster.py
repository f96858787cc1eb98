"""Redis Cluster support of the redis:// driver (``redis+cluster://``); no I/O here.

What redis-py's cluster client does, reduced to what the driver needs: the slot map comes from
``CLUSTER SLOTS`` of any node (the URL's seeds first), a key's slot is CRC16 of its hash tag
mod 16384 (``redis.crc.key_slot``), a ``MOVED`` reply updates one slot and the whole map is
read again, an ``ASK`` reply is followed once with ``ASKING``, and a node that cannot be reached
(a master killed before its replica is promoted) or a ``CLUSTERDOWN``/``TRYAGAIN`` reply makes
the verb read the map again and retry until its deadline. The faces keep one connection pool per
node (``_async/queue.py``).

asynq's layout hash-tags every key of one asynq queue (``asynq:{q}:...``), and each priority
level of a unifiedq queue is an asynq queue of its own (``q:p3`` -> ``{q:p3}``), so one level is
one slot. In cluster mode no script touches two levels: the multi-level scripts (dequeue, peek,
size, stats, purge, untake, result read) run once per level on that level's node, against a
"virtual" one-level queue (the level's asynq queue name and an empty levels key in its slot),
and the driver combines the replies. The wake-up list stays in the base queue's slot: an enqueue
or nack on another level pushes its script's token to a list in the level's own slot (read by
nobody, capped at 64 entries) and wakes the base list with a separate command.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from redis.crc import key_slot

from ..._errors import InvalidURL, UnsupportedOperation

__all__ = ["SLOTS", "ClusterSpec", "SlotMap", "cluster_spec", "unsupported"]

SLOTS = 16384
Addr = tuple[str, int]


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterSpec:
    """The seed nodes of a ``redis+cluster://`` URL, asked in order for the slot map."""

    seeds: tuple[Addr, ...]


def cluster_spec(authority: str) -> ClusterSpec:
    """Parse ``host:port[,host:port...]`` (the URL's authority without credentials).

    Raises:
        InvalidURL: An address is malformed.
    """
    seeds: list[Addr] = []
    for part in authority.rpartition("@")[2].split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep:
            host, port = part.strip(), "6379"
        try:
            seeds.append((host.strip("[]") or "localhost", int(port)))
        except ValueError:
            raise InvalidURL(f"bad node address {part!r} in a redis+cluster URL; "
                             f"expected host:port") from None
    return ClusterSpec(tuple(seeds))


def unsupported(what: str) -> UnsupportedOperation:
    """The error of a feature that needs keys of several slots in one script."""
    return UnsupportedOperation(
        f"{what} is not supported on redis+cluster:// (its script would touch keys of "
        f"several hash slots, which Redis Cluster refuses; see docs/drivers/redis.md, "
        f"'Redis Cluster')")


class SlotMap:
    """Which master serves each slot, as the cluster last told us.

    Replaced wholesale on a refresh (one list assignment, so readers in other threads see the
    old map or the new one), patched per slot on ``MOVED``.
    """

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self._slots: list[Addr | None] = [None] * SLOTS
        #: Nodes to ask for the map: masters and replicas last seen, then the seeds.
        self.known: list[Addr] = list(spec.seeds)
        self._tags: dict[str, int] = {}
        self.refreshes = 0

    def slot(self, key: str) -> int:
        """The key's slot (CRC16 of its hash tag; cached per tag: a queue has few of them)."""
        start = key.find("{")
        tag = key
        if start >= 0:
            end = key.find("}", start + 1)
            if end > start + 1:
                tag = key[start + 1:end]
        got = self._tags.get(tag)
        if got is None:
            if len(self._tags) > 10_000:  # job ids are never tags, but stay bounded anyway
                self._tags.clear()
            got = self._tags[tag] = key_slot(tag.encode())
        return got

    def node(self, key: str) -> Addr | None:
        """The master of ``key``'s slot (None: not known yet)."""
        return self._slots[self.slot(key)]

    @property
    def loaded(self) -> bool:
        """Whether a map was read at least once."""
        return self.refreshes > 0

    def moved(self, slot: int, host: str, port: int) -> None:
        """Record a ``MOVED`` redirection."""
        self._slots[slot] = (host, int(port))

    def load(self, reply: Sequence[Any], via: Addr) -> None:
        """Replace the map with a ``CLUSTER SLOTS`` reply read from node ``via``.

        Raises:
            ValueError: The reply covers no slot.
        """
        slots: list[Addr | None] = [None] * SLOTS
        masters: list[Addr] = []
        others: list[Addr] = []
        for entry in reply:
            lo, hi = int(entry[0]), int(entry[1])
            nodes = [_addr(n, via) for n in entry[2:]]
            if not nodes:
                continue
            for s in range(lo, hi + 1):
                slots[s] = nodes[0]
            masters.append(nodes[0])
            others.extend(nodes[1:])
        if not masters:
            raise ValueError("CLUSTER SLOTS named no master")
        self._slots = slots
        seen: dict[Addr, None] = {}
        for a in (*masters, *others, *self.spec.seeds):
            seen.setdefault(a, None)
        self.known = list(seen)
        self.refreshes += 1


def _addr(node: Sequence[Any], via: Addr) -> Addr:
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    # An empty or "?" host means "the address you reached me by" (cluster-preferred-endpoint).
    if not host or host == "?":
        host = via[0]
    return host, int(node[1])


def level_call(call: tuple[Any, list[str], list[Any]], qname: str, pfx: str,
               ) -> tuple[Any, list[str], list[Any]]:
    """One level's version of a multi-level script call, as a queue without levels.

    The call's KEYS[1] (the levels set) and ARGV[1] (the queue name) become ``uq:nolevels`` in
    the level's slot, which never exists, and the level's asynq queue name: the script's level
    loop visits this level only (reported as level 0: the caller puts the real level back).
    Its other keys under the base queue's prefix (the maintenance stamp, the wake list) become
    the level's own, so every key of the call is in the level's slot.
    """
    script, keys, args = call
    base = keys[0][:-len("uq:levels")] if keys[0].endswith("uq:levels") else None
    rest = [pfx + k[len(base):] if base and k.startswith(base) else k for k in keys[1:]]
    return script, [pfx + "uq:nolevels", *rest], [qname, *args[1:]]
