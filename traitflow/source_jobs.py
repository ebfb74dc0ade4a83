"""Source delete jobs (Adobe's profile system jobs, `/system/jobs`): delete what one
source (Adobe: dataset) contributed to the profiles, in the background. What a job is
and where it is kept; running one: `traitflow.source_job_run`.

A job walks every profile state (SCAN, at a bounded pace) and, for each profile the
source contributed to (`attributes.erasure.contributors`: its traits, or an event of
one of its topics), publishes an erase command limited to that source to the source's
own ingest topic. The worker that owns the partition applies it in its normal commit,
like any event (`streams.erasures`): a profile no other source contributed to is erased
(tombstones, as for a GDPR request); in one that others contributed to, the source's
traits go. Attribute states do not record which source's events made them, so before
its scan a job asks for every attribute to be recomputed without the source's events
(`attributes.recomputation`). Each commit of a command increments the job's `applied`
count, so the job is COMPLETED when its scan is done, every command it published was
applied and the recomputation is done (or the attributes were kept: `attributes`).

Status: NEW -> PROCESSING -> COMPLETED | FAILED.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from typing import Any, cast

import redis.asyncio as aioredis

from attributes.errors import InputError
from attributes.profile import ProfileState, decode_state
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.memory_store import MemoryProfileStore
from traitflow.redis_client import Redis, async_client

NEW, PROCESSING, COMPLETED, FAILED = "NEW", "PROCESSING", "COMPLETED", "FAILED"
#: what a job does to computed attributes (`SourceJob.attributes`)
RECOMPUTING, RECOMPUTED, KEPT = "RECOMPUTING", "RECOMPUTED", "KEPT"


class InvalidSourceJob(InputError):
    """A source delete job naming a source no ingest topic is bound to."""


def source_topic(settings: Settings, source: str) -> str:
    """The ingest topic bound to `source` (its commands go there); raises
    `InvalidSourceJob` for a source none is bound to."""
    for topic, bound in settings.sources.items():
        if bound == source:
            return topic
    known = ", ".join(sorted(set(settings.sources.values())))
    raise InvalidSourceJob(f"dataSetId {source!r} is not a configured source: use one of {known}")


@dataclass(slots=True)
class SourceJob:
    id: str
    source: str
    status: str = NEW
    created_ms: int = 0
    updated_ms: int = 0
    #: where the scan is: the entity (index in the settings' order) and its cursor
    #: (SCAN's; on the spread layout, `traitflow.spread_scan`'s); "0": from the start
    entity_index: int = 0
    cursor: str = "0"
    scan_done: bool = False
    #: profile states read, commands published, commands committed by the workers
    scanned: int = 0
    published: int = 0
    applied: int = 0
    error: str = ""
    #: computed attributes: "" until the scan starts, then RECOMPUTING (without the
    #: source's events: `traitflow.recomputation_requests`), or "KEPT: {why not}"
    attributes: str = ""
    #: whether that recomputation is done: not stored with the job, but read from the
    #: rules catalog by whoever shows it (`seen`)
    recomputed: bool = False

    @classmethod
    def new(cls, source: str, now_ms: int) -> SourceJob:
        return cls(id=uuid.uuid4().hex, source=source, created_ms=now_ms, updated_ms=now_ms)

    def seen(self, recomputed: Collection[str]) -> SourceJob:
        """This job, knowing whether its recomputation is done (`recomputed`: the jobs
        whose recomputation is, `traitflow.rule_catalog.Catalog.recomputed`)."""
        self.recomputed = self.id in recomputed
        return self

    @property
    def shown_attributes(self) -> str:
        return RECOMPUTED if self.attributes == RECOMPUTING and self.recomputed else self.attributes

    @property
    def shown_status(self) -> str:
        """COMPLETED once the scan is done, every command was applied and the attributes
        were recomputed (or kept)."""
        if (
            self.status == PROCESSING
            and self.scan_done
            and self.applied >= self.published
            and self.shown_attributes != RECOMPUTING
        ):
            return COMPLETED
        return self.status

    @property
    def finished(self) -> bool:
        return self.shown_status in (COMPLETED, FAILED)

    def shown(self) -> dict[str, Any]:
        """Adobe's job fields, and traitflow's progress."""
        return {
            "id": self.id,
            "dataSetId": self.source,
            "jobType": "DELETE",
            "status": self.shown_status,
            "createEpoch": self.created_ms,
            "updateEpoch": self.updated_ms,
            "progress": {
                "scanDone": self.scan_done,
                "profilesScanned": self.scanned,
                "commandsPublished": self.published,
                "commandsApplied": self.applied,
                "attributes": self.shown_attributes,
            },
            **({"error": self.error} if self.error else {}),
        }

    def to_fields(self) -> dict[str, str]:
        """As kept in Redis: every field but `applied`, which the workers increment, and
        `recomputed`, the catalog's."""
        return {
            f.name: str(int(value) if isinstance(value, bool) else value)
            for f in fields(self)
            if f.name not in ("applied", "recomputed")
            for value in [getattr(self, f.name)]
        }

    @classmethod
    def from_fields(cls, raw: Mapping[str, str]) -> SourceJob:
        made: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in raw:
                text = raw[f.name]
                made[f.name] = (
                    text == "1" if f.type == "bool" else int(text) if f.type == "int" else text
                )
        return cls(**made)


class SourceJobStore(ABC):
    """Where jobs are kept, and what a job scans (the profile states)."""

    @abstractmethod
    async def create(self, job: SourceJob) -> None: ...

    @abstractmethod
    async def get(self, job_id: str) -> SourceJob | None: ...

    @abstractmethod
    async def newest(self, limit: int) -> list[SourceJob]:
        """The newest `limit` jobs, newest first."""

    async def unscanned(self, limit: int) -> list[SourceJob]:
        """Those of the newest `limit` jobs whose scan is still to run (what a runner
        looks for; their `applied` need not be read)."""
        return [job for job in await self.newest(limit) if scan_pending(job)]

    @abstractmethod
    async def save(self, job: SourceJob) -> None:
        """Save the job's status and checkpoint (not `applied`, the workers' count)."""

    @abstractmethod
    async def remove(self, job_id: str) -> None: ...

    @abstractmethod
    async def claim(self, job_id: str, token: str, lease_ms: int) -> bool:
        """Hold the job for `lease_ms` (again, if `token` holds it already); whether held."""

    @abstractmethod
    async def release(self, job_id: str, token: str) -> None: ...

    @abstractmethod
    async def scan(self, entity: str, cursor: str, count: int) -> tuple[str, list[ProfileState]]:
        """One round over the entity's states: the next cursor ("0": done), the states."""

    async def close(self) -> None:  # noqa: B027 - optional hook, memory holds nothing
        pass


#: renews a lease only for the token that holds it
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisSourceJobs(SourceJobStore):
    def __init__(self, client: aioredis.Redis, keys: KeyLayout) -> None:
        self.client = client
        self.keys = keys

    @classmethod
    def from_url(cls, url: Redis, prefix: str) -> RedisSourceJobs:
        """`url`: settings, or a URL alone. Responses are not decoded: states are msgpack."""
        return cls(async_client(url, decode_responses=False), KeyLayout(prefix))

    async def create(self, job: SourceJob) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.source_job(job.id), mapping=cast("Any", job.to_fields()))
            pipe.zadd(self.keys.source_jobs(), {job.id: job.created_ms})
            await pipe.execute()

    async def get(self, job_id: str) -> SourceJob | None:
        raw = _text(
            cast("dict[bytes, bytes]", await self.client.hgetall(self.keys.source_job(job_id)))
        )
        return SourceJob.from_fields(raw) if "source" in raw else None

    async def newest(self, limit: int) -> list[SourceJob]:
        ids = cast(
            "list[bytes]", await self.client.zrevrange(self.keys.source_jobs(), 0, limit - 1)
        )
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.keys.source_job(job_id.decode()))
            found = [_text(cast("dict[bytes, bytes]", raw)) for raw in await pipe.execute()]
        return [SourceJob.from_fields(raw) for raw in found if "source" in raw]

    async def save(self, job: SourceJob) -> None:
        await self.client.hset(self.keys.source_job(job.id), mapping=cast("Any", job.to_fields()))

    async def remove(self, job_id: str) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.source_job(job_id), self.keys.source_job_lease(job_id))
            pipe.zrem(self.keys.source_jobs(), job_id)
            await pipe.execute()

    async def claim(self, job_id: str, token: str, lease_ms: int) -> bool:
        lease = self.keys.source_job_lease(job_id)
        held = await self.client.eval(_RENEW, 1, lease, token, lease_ms)
        return bool(held)

    async def release(self, job_id: str, token: str) -> None:
        lease = self.keys.source_job_lease(job_id)
        await self.client.eval(_RELEASE, 1, lease, token)

    async def scan(self, entity: str, cursor: str, count: int) -> tuple[str, list[ProfileState]]:
        pattern = self.keys.state_prefix(entity) + "*"
        following, names = await self.client.scan(int(cursor), match=pattern, count=count)
        if not names:
            return str(int(following)), []
        raws = cast("list[bytes | None]", await self.client.mget(names))
        # a state deleted between the SCAN and the MGET is skipped
        return str(int(following)), [decode_state(raw) for raw in raws if raw is not None]

    async def close(self) -> None:
        await self.client.aclose()


class MemorySourceJobs(SourceJobStore):
    """Jobs in a dict, scanning a `MemoryProfileStore` (tests, in process)."""

    def __init__(self, profiles: MemoryProfileStore | None = None) -> None:
        self.profiles = profiles or MemoryProfileStore()
        self.jobs: dict[str, SourceJob] = {}
        self.leases: dict[str, str] = {}

    async def create(self, job: SourceJob) -> None:
        self.jobs[job.id] = job

    async def get(self, job_id: str) -> SourceJob | None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.applied = self.profiles.job_tallies.get(job_id, 0)
        return job

    async def newest(self, limit: int) -> list[SourceJob]:
        newest = sorted(self.jobs.values(), key=lambda job: job.created_ms, reverse=True)
        return [job for job in [await self.get(j.id) for j in newest[:limit]] if job]

    async def save(self, job: SourceJob) -> None:
        self.jobs[job.id] = job

    async def remove(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    async def claim(self, job_id: str, token: str, lease_ms: int) -> bool:
        return self.leases.setdefault(job_id, token) == token

    async def release(self, job_id: str, token: str) -> None:
        if self.leases.get(job_id) == token:
            del self.leases[job_id]

    async def scan(self, entity: str, cursor: str, count: int) -> tuple[str, list[ProfileState]]:
        ids = sorted(pid for owner, pid in self.profiles.states if owner == entity)
        start = int(cursor)
        chunk = ids[start : start + count]
        states = await self.profiles.load(entity, chunk)
        after = start + count
        following = str(after) if after < len(ids) else "0"
        return following, [states[pid] for pid in chunk if pid in states]


def scan_pending(job: SourceJob) -> bool:
    """Whether a runner has still to scan for `job` (NEW, or PROCESSING not scanned)."""
    return job.status in (NEW, PROCESSING) and not job.scan_done


def now_ms() -> int:
    return int(time.time() * 1000)


def _text(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in raw.items()}
