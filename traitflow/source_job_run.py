"""Running a source delete job (`traitflow.source_jobs` says what one is): SCAN the
profile states of every entity, a bounded round at a time, and publish an erase
command limited to the job's source for each profile the source contributed to.

Load: one SCAN (COUNT `TRAITFLOW_SOURCE_JOB_BATCH`) and one MGET per round, at most
`TRAITFLOW_SOURCE_JOB_RATE_PER_S` states read per second; no write to Redis but the
job's checkpoint. The profiles themselves are written by the workers, in their normal
commits, so ingestion is never blocked: a command is one more small event in the
source's topic.

Who runs a job: the process that claims it (a lease in Redis, renewed at every
checkpoint). API processes run jobs made through the API (`run_forever`), one at a
time each, and take over a job whose runner died once its lease is over; `traitflow
jobs create --run` runs one in the foreground. Before its scan, a job asks for every
computed attribute to be recomputed without its source's events (`traitflow.
recomputation_requests`), which the backfill process does. A job goes on from its checkpoint (the
entity and SCAN cursor); the round that was published but not saved is published
again, and counts once: its commands carry the same messageIds (the worker's dedupe).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import orjson
from prometheus_client import CollectorRegistry, Counter

from attributes.erasure import contributors, erase_event
from attributes.profile import ProfileState
from traitflow.config import Settings
from traitflow.recomputation_requests import AskRecomputation
from traitflow.source_jobs import (
    FAILED,
    PROCESSING,
    SourceJob,
    SourceJobStore,
    now_ms,
    source_topic,
)

log = logging.getLogger(__name__)

#: publish (topic, [(key, value), ...]) and return once the broker acknowledged them
Publish = Callable[[str, Sequence[tuple[bytes | None, bytes]]], Awaitable[None]]

#: how long a runner holds a job without a checkpoint before another may take it (ms)
LEASE_MS = 15_000


@contextlib.asynccontextmanager
async def kafka_publisher(settings: Settings) -> AsyncIterator[Publish]:
    """A `Publish` through a producer of this process (the CLI's; the API has its own)."""
    from aiokafka import AIOKafkaProducer

    from traitflow.kafka_client import client_kwargs

    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all")
    await producer.start()

    async def publish(topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        sent = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*sent)

    try:
        yield publish
    finally:
        await producer.stop()


class SourceJobMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.profiles = Counter(
            "traitflow_source_job_profiles",
            "Profile states source delete jobs read (scanned), and those they published "
            "an erase command for (commanded).",
            ["outcome"],
            registry=self.registry,
        )
        self.jobs = Counter(
            "traitflow_source_jobs",
            "Source delete jobs whose scan ended, by outcome: scanned (every command "
            "published; COMPLETED once the workers applied them) or failed.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("scanned", "commanded"):
            self.profiles.labels(outcome)
        for outcome in ("scanned", "failed"):
            self.jobs.labels(outcome)


def command(entity: str, state: ProfileState, job: SourceJob) -> tuple[bytes, bytes] | None:
    """The erase command, limited to the job's source, for one profile: named by its
    first identity (which points to it), keyed like the events of that identity."""
    identity = next(((k, v) for k, values in state.identities.items() for v in values), None)
    if identity is None:
        return None
    kind, value = identity
    digest = hashlib.sha256(state.id.encode()).hexdigest()[:24]
    event = erase_event(entity, kind, value, f"{job.id}:{digest}", source=job.source, job=job.id)
    return value.encode(), orjson.dumps(event)


class SourceJobRunner:
    def __init__(
        self,
        settings: Settings,
        jobs: SourceJobStore,
        publish: Publish,
        *,
        recompute: AskRecomputation,
        metrics: SourceJobMetrics | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.publish = publish
        self.recompute = recompute
        self.metrics = metrics or SourceJobMetrics()
        self.sleep = sleep
        self.clock = clock

    async def run(self, job_id: str) -> SourceJob | None:
        """Run the job's scan to its end (or leave it to the runner that holds it);
        the job as it is then, None if there is none."""
        token = uuid.uuid4().hex
        if not await self.jobs.claim(job_id, token, LEASE_MS):
            return await self.jobs.get(job_id)
        try:
            job = await self.jobs.get(job_id)
            if job is None or job.scan_done or job.status == FAILED:
                return job
            try:
                await self._scan(job, token)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise  # let go: another runner goes on from the checkpoint
            except Exception as exc:
                _unless_cancelled()
                log.exception("source delete job %s failed", job_id)
                job.status, job.error, job.updated_ms = FAILED, repr(exc), now_ms()
                await self.jobs.save(job)
                self.metrics.jobs.labels("failed").inc()
            return await self.jobs.get(job_id)
        finally:
            with contextlib.suppress(Exception):
                await self.jobs.release(job_id, token)

    async def _scan(self, job: SourceJob, token: str) -> None:
        settings = self.settings
        topic = source_topic(settings, job.source)
        entities = list(settings.entities)
        job.status, job.updated_ms = PROCESSING, now_ms()
        await self.jobs.save(job)
        if not job.attributes:  # asked before the scan: its horizons are what it scans
            job.attributes, job.updated_ms = await self.recompute(job), now_ms()
            await self.jobs.save(job)
        started, read = self.clock(), 0
        while job.entity_index < len(entities):
            entity = entities[job.entity_index]
            cursor, states = await self.jobs.scan(entity, job.cursor, settings.source_job_batch)
            records = [
                found
                for state in states
                if job.source in contributors(state, settings.sources)
                and (found := command(entity, state, job)) is not None
            ]
            if records:
                await self.publish(topic, records)
            job.scanned += len(states)
            job.published += len(records)
            self.metrics.profiles.labels("scanned").inc(len(states))
            self.metrics.profiles.labels("commanded").inc(len(records))
            if cursor == "0":
                job.entity_index, job.cursor = job.entity_index + 1, "0"
            else:
                job.cursor = cursor
            job.updated_ms = now_ms()
            await self.jobs.save(job)
            if not await self.jobs.claim(job.id, token, LEASE_MS):
                raise RuntimeError("lost the job's lease (a runner took it over)")
            read += len(states)
            due = started + read / settings.source_job_rate_per_s
            if states and (wait := due - self.clock()) > 0:
                await self.sleep(wait)
        job.scan_done, job.updated_ms = True, now_ms()
        await self.jobs.save(job)
        self.metrics.jobs.labels("scanned").inc()

    async def run_forever(self, poll_s: float = 2.0) -> None:
        """Run every job not yet scanned that no other runner holds, one at a time; the
        first look is after `poll_s` (a process that stops at once touches nothing)."""
        while True:
            await self.sleep(poll_s)
            try:
                for job in await self.jobs.unscanned(1000):
                    await self.run(job.id)
            except asyncio.CancelledError:
                raise
            except Exception:
                _unless_cancelled()
                log.exception("source delete jobs could not be read; trying again")


def _unless_cancelled() -> None:
    """Raise CancelledError if this task is being cancelled: a client library may turn a
    cancellation into an error of its own (a connection attempt's), which must not
    keep a runner going when its process stops."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
