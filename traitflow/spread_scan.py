"""Reading every profile of the spread layout (docs/redis-cluster.md, option B) a round
at a time, from a checkpoint that survives a restart and a slot moving: what source
delete jobs, exports and `traitflow profiles recount` walk on it.

Why not SCAN: its cursor is one node's, and a slot that moves during a job moves its
keys to a node whose cursor may be past them (missed) or before them (seen twice). So
the walk is by bucket, in order, and inside a bucket by profile id: the bucket's keys
are listed at once (`CLUSTER GETKEYSINSLOT` of its slot; a bucket holds a
`TRAITFLOW_REDIS_BUCKETS`th of the profiles), sorted, and the cursor is "bucket:last
id done". A profile present for the whole walk is read exactly once, wherever its slot
is meanwhile; one made or deleted during it may be read or not, as with SCAN.

Where a bucket's keys are: the node the client's slot map names is asked first, then
every other master. While a slot migrates its keys are on both sides, and a key is
put on the target before it leaves the source, so asking the source first then the
target misses none; after a move the map's node is asked first and the new owner
after. The union of the replies is the bucket's keys.
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode

from traitflow.spread_layout import SpreadLayout
from traitflow.spread_nodes import ClusterCalls

#: what a walk reads: profile states or served views
STATES, VIEWS = "s", "v"
#: a cursor before the first round and after the last (as SCAN's)
DONE = "0"
#: GETKEYSINSLOT's count: every key of the slot (Redis replies with those it has)
ALL_KEYS = 2**31 - 1


def encode_cursor(bucket: int, after: str) -> str:
    """The cursor of a walk at `bucket`, past the profile id `after` ('' for none)."""
    return f"{bucket}:{after}"


def decode_cursor(cursor: str) -> tuple[int, str]:
    """(bucket, the last profile id done there or ''); raises ValueError for a cursor
    no walk made (an option A job's SCAN cursor read on the spread layout)."""
    if cursor == DONE:
        return 0, ""
    bucket, colon, after = cursor.partition(":")
    if not colon or not bucket.isdigit():
        raise ValueError(f"not a cursor of the spread layout's walk: {cursor!r}")
    return int(bucket), after


def page(ids: Sequence[str], after: str, want: int) -> tuple[list[str], bool]:
    """The next `want` of the sorted `ids` past `after`, and whether more follow them."""
    start = bisect.bisect_right(ids, after) if after else 0
    chunk = list(ids[start : start + want])
    return chunk, start + want < len(ids)


def fraction(cursor: str, buckets: int, rounds: int) -> float:
    """How far a walk is, as the share of buckets done (0 before its first round)."""
    if not rounds:
        return 0.0
    if cursor == DONE:
        return 1.0
    return decode_cursor(cursor)[0] / buckets


class SpreadWalk:
    """Walks an entity's states or views over every bucket (see the module's docstring),
    through the spread store's cluster client."""

    def __init__(self, calls: ClusterCalls, layout: SpreadLayout) -> None:
        self.calls = calls
        self.layout = layout
        #: the last bucket listed, (entity, kind, bucket) and its sorted ids: a bucket
        #: larger than a round is listed once for all its rounds (of one walk: a round
        #: from any cursor but the last one returned lists again)
        self._listed: tuple[tuple[str, str, int], list[str]] | None = None
        self._returned: str | None = None

    def _prefix(self, entity: str, kind: str, bucket: int) -> str:
        keys = self.layout.keys(bucket)
        return keys.state_prefix(entity) if kind == STATES else keys.view_prefix(entity)

    async def ids(self, entity: str, kind: str, bucket: int) -> list[str]:
        """The ids of the profiles of `bucket` that have a state (or a view), sorted."""
        if self._listed is not None and self._listed[0] == (entity, kind, bucket):
            return self._listed[1]
        ids = await self.listed(entity, kind, bucket)
        self._listed = ((entity, kind, bucket), ids)
        return ids

    async def listed(self, entity: str, kind: str, bucket: int) -> list[str]:
        """`ids`, asked of the cluster (see the module's docstring)."""
        prefix = self._prefix(entity, kind, bucket).encode()
        found: set[bytes] = set()
        for node in await self._nodes(self.layout.slot(bucket)):
            keys = await self.calls.client.execute_command(
                "CLUSTER GETKEYSINSLOT", self.layout.slot(bucket), ALL_KEYS, target_nodes=node
            )
            found.update(key for key in map(_bytes, keys) if key.startswith(prefix))
        return sorted(key[len(prefix) :].decode() for key in found)

    async def _nodes(self, slot: int) -> list[ClusterNode]:
        """The masters, the one the slot map names for `slot` first."""
        client = self.calls.client
        manager = client.nodes_manager
        if not manager.slots_cache:
            await client.initialize()
        owner = manager.get_node_from_slot(slot)
        others = [node for node in client.get_primaries() if node.name != owner.name]
        return [owner, *others]

    async def round(
        self, entity: str, kind: str, cursor: str, count: int
    ) -> tuple[str, list[tuple[str, bytes]]]:
        """Up to `count` profiles from `cursor` on (buckets in order), as (id, state or
        view) read at once (one script per node); the cursor after them (`DONE` at the
        end). A profile deleted since its bucket was listed is left out."""
        if cursor != self._returned:  # another walk, or a resumed one: list afresh
            self._listed = None
        bucket, after = decode_cursor(cursor)
        chosen: list[str] = []
        while bucket < self.layout.buckets and len(chosen) < count:
            chunk, more = page(await self.ids(entity, kind, bucket), after, count - len(chosen))
            chosen += chunk
            if more:
                after = chunk[-1]
                break
            bucket, after = bucket + 1, ""
        following = DONE if bucket >= self.layout.buckets else encode_cursor(bucket, after)
        self._returned = following
        keys = self.layout.keys(0)
        names = [
            keys.state(entity, pid) if kind == STATES else keys.view(entity, pid) for pid in chosen
        ]
        values: list[Any] = await self.calls.get(names) if names else []
        return following, [(pid, v) for pid, v in zip(chosen, values, strict=True) if v]


def _bytes(key: bytes | str) -> bytes:
    """A key as bytes (redis-py decodes the keys of some cluster replies)."""
    return key if isinstance(key, bytes) else key.encode()


async def profile_ids(
    calls: ClusterCalls, layout: SpreadLayout, entity: str, count: int
) -> AsyncIterator[list[str]]:
    """The ids of every stored profile of `entity`, at most `count` at a time, bucket by
    bucket: what a pass that writes every profile once more reads (a recomputation's
    render, `streams.backfill`). Listed as `SpreadWalk` lists a bucket, so a profile
    present for the whole pass is listed once, wherever its slot moves meanwhile."""
    walk = SpreadWalk(calls, layout)
    for bucket in range(layout.buckets):
        ids = await walk.listed(entity, STATES, bucket)
        for start in range(0, len(ids), count):
            yield ids[start : start + count]
