"""Where an export job reads the views it exports, a round at a time from its
checkpoint's cursor (`traitflow.export_run`): under the prefix's one tag (a single
Redis, or option A of a Redis Cluster) by SCAN, or on the spread layout (option B)
bucket by bucket (`traitflow.spread_scan`), since a SCAN cursor is one node's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from traitflow.config import Settings
from traitflow.export_store import ExportJobs
from traitflow.key_layout import KeyLayout
from traitflow.resp import RespClient
from traitflow.spread_scan import VIEWS, SpreadWalk
from traitflow.spread_store import SpreadProfileStore

#: a round's views: (profile id, the view, or None if it went since it was listed)
Found = list[tuple[bytes, bytes | None]]


class ExportViews(ABC):
    #: the spread layout's bucket count (what its cursor's progress is out of); 0 on
    #: the tag layout, whose cursor is SCAN's
    buckets = 0

    @abstractmethod
    async def round(self, entity: str, cursor: str, batch: int) -> tuple[str, Found]:
        """About `batch` views of `entity` from `cursor` ("0": the start): the cursor
        after them ("0" at the end) and the views."""

    async def close(self) -> None:  # noqa: B027 - optional hook, SCAN holds nothing
        pass


class TaggedViews(ExportViews):
    """SCAN and MGET on the connection to the node of the prefix's tag."""

    def __init__(self, client: RespClient, prefix: str) -> None:
        self.client = client
        self.keys = KeyLayout(prefix)

    async def round(self, entity: str, cursor: str, batch: int) -> tuple[str, Found]:
        prefix = self.keys.view_prefix(entity)
        after, keys = await _views_of_round(self.client, cursor, prefix + "*", batch)
        views = await self.client.call("MGET", *keys) if keys else []
        start = len(prefix.encode())
        return after.decode(), [(key[start:], view) for key, view in zip(keys, views, strict=True)]


async def _views_of_round(
    client: RespClient, cursor: str, pattern: str, batch: int
) -> tuple[bytes, list[bytes]]:
    """The view keys of one round: SCANs (each visiting about `batch` keys, views or
    not) until `batch` views are found or the SCAN ends; the cursor after them. A round
    is one MGET, one write and one checkpoint, however few views a SCAN finds among
    the other keys."""
    found: list[bytes] = []
    after = cursor.encode()
    while True:
        after, keys = await client.call("SCAN", after, "MATCH", pattern, "COUNT", batch)
        found.extend(keys)
        if len(found) >= batch or after == b"0":
            return after, found


class SpreadViews(ExportViews):
    """Every bucket's views, through a spread store of its own."""

    def __init__(self, profiles: SpreadProfileStore) -> None:
        self.profiles = profiles
        self.walk = SpreadWalk(profiles.protocol, profiles.layout)
        self.buckets = profiles.layout.buckets

    async def round(self, entity: str, cursor: str, batch: int) -> tuple[str, Found]:
        following, found = await self.walk.round(entity, VIEWS, cursor, batch)
        return following, [(pid.encode(), view) for pid, view in found]

    async def close(self) -> None:
        await self.profiles.close()


def views_of(settings: Settings, client: RespClient) -> ExportViews:
    """The views of the deployment `settings` name; `client`: its connection to the
    prefix's tag (the tag layout reads through it)."""
    if settings.redis_layout != "spread":
        return TaggedViews(client, settings.key_prefix)
    return SpreadViews(
        SpreadProfileStore.from_url(settings, settings.key_prefix, settings.redis_buckets)
    )


async def audience_size(settings: Settings, jobs: ExportJobs, entity: str, audience: str) -> int:
    """The members of `audience` the commits counted (an export's expected total): on
    the spread layout, summed over the buckets."""
    if settings.redis_layout != "spread":
        return await jobs.audience_size(entity, audience)
    profiles = SpreadProfileStore.from_url(settings, settings.key_prefix, settings.redis_buckets)
    try:
        return (await profiles.audience_sizes(entity)).get(audience, 0)
    finally:
        await profiles.close()
