"""The outbox on the spread layout (`traitflow.outbox`'s `Outbox`): a commit appends a
write's messages to its bucket's copy of the input partition's stream, in the same
single-slot script as the write, so the relay reads every bucket's copy.

Order: a profile's messages are in one bucket's stream, in commit order, and `pending`
returns a prefix of every bucket's stream it reads, merged by entry id; messages of
profiles in different buckets are ordered by their commit's time on its node (never
promised more: docs/redis-cluster.md, option B). Entry ids name their bucket
("{bucket}/{id}") so that `remove` deletes each from its stream.

Which buckets are read: the relay asks every `outbox_interval_s`, and reading all of a
partition's 1,024 streams each time cost some 3% of a worker per owned partition, when
most are empty. The owner of a partition makes nearly every write to its outbox, so it
knows where its messages are: the store tells `written` after each commit, and a round
reads those buckets and those found holding messages (`OutboxBuckets`). Others write
there too (a backfill's render, a source job's commit: the profile's partition, not
theirs), and a partition moved here holds what its last owner left: so the first round
of a partition, and one every `FULL_ROUND_S`, reads every bucket.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster

from traitflow.outbox import from_entry
from traitflow.spread_layout import SpreadLayout
from traitflow.spread_nodes import ClusterCalls
from traitflow.store import Outgoing


def _order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


#: XRANGE of many streams of one node (`traitflow.spread_nodes`): ARGV[1] the count,
#: then the streams; {'moved'} having read nothing if one is not on this node
XRANGES_ON_NODE = """#!lua flags=allow-cross-slot-keys,no-writes
for i = 2, #ARGV do
  local here = redis.pcall('EXISTS', ARGV[i])
  if type(here) == 'table' and here.err then return {'moved'} end
end
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('XRANGE', ARGV[i], '-', '+', 'COUNT', ARGV[1])
end
return out
"""


#: seconds between rounds that read every bucket's stream of a partition: the longest a
#: message written by a process that does not own the partition waits to be relayed
FULL_ROUND_S = 5.0


class OutboxBuckets:
    """Per partition, the buckets whose stream may hold messages: those found holding
    some, and those written since. A bucket found empty leaves, unless a write was
    noted after the round that found it empty began (its message may have landed after
    the read)."""

    def __init__(self, buckets: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.buckets = buckets
        self.clock = clock
        self._holding: dict[str, set[int]] = {}
        self._full_at: dict[str, float] = {}
        #: (partition, bucket) -> the count of notes when it was last written
        self._noted: dict[tuple[str, int], int] = {}
        self._notes = 0

    def written(self, partition: str, bucket: int) -> None:
        self._notes += 1
        self._noted[(partition, bucket)] = self._notes
        self._holding.setdefault(partition, set()).add(bucket)

    def forget(self) -> None:
        """Partitions moved: what another owner wrote meanwhile is not known here, so
        the next round of each reads every bucket."""
        self._full_at.clear()
        self._holding.clear()

    def to_read(self, partition: str) -> tuple[list[int], int]:
        """The buckets a round reads, ascending, and the count of notes it began at."""
        now = self.clock()
        full_at = self._full_at.get(partition)
        if full_at is None or now - full_at >= FULL_ROUND_S:
            self._full_at[partition] = now
            return list(range(self.buckets)), self._notes
        return sorted(self._holding.get(partition, ())), self._notes

    def found(self, partition: str, read: Sequence[int], empty: Iterable[int], began: int) -> None:
        """After a round that read `read` and found `empty` without messages."""
        holding = self._holding.setdefault(partition, set())
        holding.update(read)
        for bucket in empty:
            if self._noted.get((partition, bucket), 0) <= began:
                holding.discard(bucket)
                self._noted.pop((partition, bucket), None)


def _fields(raw: Any) -> dict[bytes, bytes]:
    """An entry's fields: a dict from redis-py, a flat list from a script."""
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2], strict=True))


class SpreadOutbox:
    """The buckets' copies of each partition's outbox that may hold messages
    (`OutboxBuckets`), read in one round trip: a command per bucket, sent as one script
    per node (`traitflow.spread_nodes`)."""

    def __init__(
        self, client: RedisCluster, layout: SpreadLayout, buckets: OutboxBuckets | None = None
    ) -> None:
        self.calls = ClusterCalls(client)
        self.layout = layout
        self.buckets = buckets or OutboxBuckets(layout.buckets)

    async def _run(self, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        return await self.calls.many(calls)

    async def pending(self, source: str, count: int) -> list[tuple[bytes, Outgoing]]:
        buckets, began = self.buckets.to_read(source)
        if not buckets:
            return []
        calls = [
            ("XRANGE", self.layout.keys(b).outbox(source), "-", "+", "COUNT", count)
            for b in buckets
        ]
        replies = await self.calls.by_node(
            calls, XRANGES_ON_NODE, lambda c: [c[1]], lambda c: str(c[1]), head=[count]
        )
        self.buckets.found(
            source, buckets, (b for b, r in zip(buckets, replies, strict=True) if not r), began
        )
        found: list[tuple[tuple[int, int], int, bytes, dict[bytes, bytes]]] = []
        for bucket, entries in zip(buckets, replies, strict=True):
            for entry_id, fields in entries:
                found.append((_order(entry_id), bucket, entry_id, _fields(fields)))
        found.sort(key=lambda entry: (entry[0], entry[1]))
        return [
            (f"{bucket}/".encode() + entry_id, from_entry(fields))
            for _, bucket, entry_id, fields in found[:count]
        ]

    async def remove(self, source: str, ids: Sequence[bytes]) -> None:
        by_bucket: dict[int, list[bytes]] = {}
        for named in ids:
            bucket, _, entry_id = named.partition(b"/")
            by_bucket.setdefault(int(bucket), []).append(entry_id)
        await self._run(
            [("XDEL", self.layout.keys(b).outbox(source), *e) for b, e in by_bucket.items()]
        )

    async def size(self, sources: Iterable[str]) -> int:
        calls = [
            ("XLEN", self.layout.keys(b).outbox(source))
            for source in sources
            for b in range(self.layout.buckets)
        ]
        return sum(await self._run(calls)) if calls else 0
