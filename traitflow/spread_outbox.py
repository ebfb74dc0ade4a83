"""The outbox on the spread layout (`traitflow.outbox`'s `Outbox`): a commit appends a
write's messages to its bucket's copy of the input partition's stream, in the same
single-slot script as the write, so the relay reads every bucket's copy.

Order: a profile's messages are in one bucket's stream, in commit order, and `pending`
returns a prefix of every bucket's stream it reads, merged by entry id; messages of
profiles in different buckets are ordered by their commit's time on its node (never
promised more: docs/redis-cluster.md, option B). Entry ids name their bucket
("{bucket}/{id}") so that `remove` deletes each from its stream.

Which buckets a round reads (`traitflow.spread_rounds`): those the worker's commits
wrote messages to since and those found holding messages; every bucket at a partition's
first round and every `FULL_ROUND_S`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster

from traitflow.outbox import from_entry
from traitflow.spread_layout import SpreadLayout
from traitflow.spread_nodes import ClusterCalls, keys_here
from traitflow.spread_rounds import NEVER, BucketRounds
from traitflow.store import Outgoing


def _order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


#: XRANGE of many streams of one node (`traitflow.spread_nodes`): ARGV[1] the count,
#: then the streams; {'moved'} having read nothing if one is not on this node
XRANGES_ON_NODE = (
    "#!lua flags=allow-cross-slot-keys,no-writes\n"
    + keys_here(2)
    + """local out = {}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('XRANGE', ARGV[i], '-', '+', 'COUNT', ARGV[1])
end
return out
"""
)


def _fields(raw: Any) -> dict[bytes, bytes]:
    """An entry's fields: a dict from redis-py, a flat list from a script."""
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2], strict=True))


class SpreadOutbox:
    """The buckets' copies of each partition's outbox that may hold messages, read in
    one round trip: a command per bucket, sent as one script per node
    (`traitflow.spread_nodes`). `rounds`: told by the store which buckets its commits
    wrote messages to (`SpreadProfileStore.outbox_rounds`)."""

    def __init__(self, client: RedisCluster, layout: SpreadLayout, rounds: BucketRounds) -> None:
        self.calls = ClusterCalls(client)
        self.layout = layout
        self.rounds = rounds

    async def _run(self, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        return await self.calls.many(calls)

    async def pending(self, source: str, count: int) -> list[tuple[bytes, Outgoing]]:
        buckets, began = self.rounds.to_read(source)
        if not buckets:
            return []
        calls = [
            ("XRANGE", self.layout.keys(b).outbox(source), "-", "+", "COUNT", count)
            for b in buckets
        ]
        replies = await self.calls.by_node(
            calls, XRANGES_ON_NODE, lambda c: [c[1]], lambda c: str(c[1]), head=[count]
        )
        nexts = {b: 0.0 if r else NEVER for b, r in zip(buckets, replies, strict=True)}
        self.rounds.found(source, nexts, began)
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
