"""Source delete jobs on the spread layout (docs/redis-cluster.md, option B): the jobs
themselves are kept under the prefix's one tag, as on option A (`RedisSourceJobs`), but
their scan walks every bucket (`traitflow.spread_scan`) and their `applied` count is
kept per bucket.

Why per bucket: a command's commit is the script of its profile's bucket, which cannot
touch a key of another slot, and the count must be written by that same script (a
count incremented apart from its commit is wrong after a crash between them, and a
batch redone after a lost reply finds its commands applied and counts nothing). So
each bucket keeps job id -> commands it applied (`KeyLayout.source_job_tallies`), and
a job's `applied` is their sum, read when the job is: one HMGET per bucket for every
job shown, sent as one script per node.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from attributes.profile import ProfileState, decode_state
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.redis_client import RedisTarget, async_client
from traitflow.source_jobs import RedisSourceJobs, SourceJob, SourceJobStore, scan_pending
from traitflow.spread_scan import STATES, SpreadWalk
from traitflow.spread_store import SpreadProfileStore


class SpreadSourceJobs(RedisSourceJobs):
    def __init__(
        self, client: aioredis.Redis, keys: KeyLayout, profiles: SpreadProfileStore
    ) -> None:
        super().__init__(client, keys)
        self.profiles = profiles
        self.walk = SpreadWalk(profiles.protocol, profiles.layout)

    @classmethod
    def of(cls, settings: Settings) -> SpreadSourceJobs:
        profiles = SpreadProfileStore.from_url(
            RedisTarget.of(settings), settings.key_prefix, settings.redis_buckets
        )
        client = async_client(settings, decode_responses=False)
        return cls(client, KeyLayout(settings.key_prefix), profiles)

    async def applied(self, job_ids: Sequence[str]) -> dict[str, int]:
        """Job id -> the commands of it every bucket's commits applied."""
        if not job_ids:
            return {}
        layout = self.profiles.layout
        calls = [
            ("HMGET", layout.keys(bucket).source_job_tallies(), *job_ids)
            for bucket in range(layout.buckets)
        ]
        total = dict.fromkeys(job_ids, 0)
        for counts in await self.profiles.protocol.many(calls):
            for job_id, count in zip(job_ids, counts, strict=True):
                total[job_id] += int(count or 0)
        return total

    async def get(self, job_id: str) -> SourceJob | None:
        job = await super().get(job_id)
        if job is not None:
            job.applied = (await self.applied([job_id]))[job_id]
        return job

    async def newest(self, limit: int) -> list[SourceJob]:
        jobs = await super().newest(limit)
        counts = await self.applied([job.id for job in jobs])
        for job in jobs:
            job.applied = counts[job.id]
        return jobs

    async def unscanned(self, limit: int) -> list[SourceJob]:
        """Without their counts: a runner asks every few seconds, and a count is a
        command per bucket."""
        return [job for job in await super().newest(limit) if scan_pending(job)]

    async def remove(self, job_id: str) -> None:
        await super().remove(job_id)
        layout = self.profiles.layout
        await self.profiles.protocol.many(
            [
                ("HDEL", layout.keys(bucket).source_job_tallies(), job_id)
                for bucket in range(layout.buckets)
            ]
        )

    async def scan(self, entity: str, cursor: str, count: int) -> tuple[str, list[ProfileState]]:
        following, found = await self.walk.round(entity, STATES, cursor, count)
        return following, [decode_state(raw) for _, raw in found]

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self.profiles.close()


def source_job_store(settings: Settings) -> SourceJobStore:
    """The jobs of the deployment `settings` name, on its Redis layout."""
    if settings.redis_layout == "spread":
        return SpreadSourceJobs.of(settings)
    return RedisSourceJobs.from_url(settings, settings.key_prefix)
