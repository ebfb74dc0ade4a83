"""Every stored profile of an entity on the spread layout, by SCAN of each primary
node (docs/redis-cluster.md, "Status of option B"): what a pass over every profile
(a recomputation's render, `streams.backfill`) reads where option A scans one tag.

A SCAN runs on one node: the profiles of a bucket are wherever its slot is, so every
primary is scanned, each with its own cursor. A slot that moves while it is scanned
may have keys seen twice (harmless to a pass that writes each profile again) or not
at all (moved to a node whose scan had passed them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio.cluster import RedisCluster

from traitflow.spread_layout import SpreadLayout


def state_pattern(layout: SpreadLayout, entity: str) -> str:
    """The SCAN pattern of the state keys of `entity` in every bucket (a brace is not
    special to SCAN's patterns)."""
    return "{" + layout.base + ".b*}:s:" + entity + ":*"


def profile_id(layout: SpreadLayout, entity: str, key: bytes | str) -> str | None:
    """The profile id a state key names; None for a key of no bucket of `layout`."""
    name = key.decode() if isinstance(key, bytes) else key
    bucket = layout.bucket_of_key(name)
    if bucket is None:
        return None
    prefix = layout.keys(bucket).state_prefix(entity)
    return name[len(prefix) :] if name.startswith(prefix) else None


async def profile_ids(
    client: RedisCluster, layout: SpreadLayout, entity: str, count: int
) -> AsyncIterator[list[str]]:
    """The ids of every stored profile of `entity`, about `count` per chunk, node by
    node."""
    if not client.nodes_manager.slots_cache:  # the client has not met the cluster yet
        await client.initialize()
    match = state_pattern(layout, entity)
    for node in client.get_primaries():
        cursor = 0
        while True:
            # redis-py's cluster SCAN answers each node's cursor by the node's name
            reply: Any = await client.scan(cursor, match=match, count=count, target_nodes=node)
            cursors, keys = reply
            cursor = int(cursors[node.name])
            ids = [pid for key in keys if (pid := profile_id(layout, entity, key)) is not None]
            if ids:
                yield ids
            if not cursor:
                break
