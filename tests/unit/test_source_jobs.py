"""Source delete jobs in process: the runner scans a memory store and publishes erase
commands limited to the source, a worker (`BatchProcessor`) applies them, and the job
counts them; a profile only the source made is erased, one others made too loses the
source's traits only. Pacing, leases and failures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from attributes.erasure import contributors, scoped_retraction
from attributes.profile import ProfileState, decode_state
from attributes.ruleset import RuleSet
from streams.backfill_runner import recomputed
from streams.processor import BatchProcessor, ListDeadLetters, Record
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.recomputation_requests import recompute_for
from traitflow.rule_catalog import MemoryRuleCatalog
from traitflow.source_job_run import SourceJobRunner
from traitflow.source_jobs import (
    COMPLETED,
    FAILED,
    RECOMPUTING,
    InvalidSourceJob,
    MemorySourceJobs,
    SourceJob,
    source_topic,
)

pytestmark = pytest.mark.anyio

WEB, CRM = "web-events", "crm-events"
SETTINGS = Settings(sources={WEB: "web", CRM: "crm"}, source_job_batch=2)


class World:
    def __init__(self, rules: RuleSet) -> None:
        self.store = MemoryProfileStore()
        self.processor = BatchProcessor(
            rules, self.store, ListDeadLetters(), sources=SETTINGS.sources
        )
        self.offsets = {WEB: 0, CRM: 0}
        self.published: list[tuple[str, bytes | None, bytes]] = []
        self.jobs = MemorySourceJobs(self.store)
        self.sleeps: list[float] = []
        self.catalog = MemoryRuleCatalog()

    async def recompute(self, job: SourceJob) -> str:
        """What `traitflow.recomputation_requests` asks, with the offsets of this world."""
        topics = [topic for topic, source in SETTINGS.sources.items() if source == job.source]
        await self.catalog.change(recompute_for(job.id, topics))
        return RECOMPUTING

    async def send(self, *items: tuple[str, dict[str, Any] | bytes]) -> None:
        batch = []
        for topic, body in items:
            value = body if isinstance(body, bytes) else orjson.dumps(body)
            batch.append(Record(topic, 0, self.offsets[topic], value, 1_700_000_000_000))
            self.offsets[topic] += 1
        await self.processor.process(batch)

    async def publish(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        self.published += [(topic, key, value) for key, value in records]

    async def deliver(self) -> None:
        await self.send(*((topic, value) for topic, _, value in self.published))
        self.published.clear()

    def runner(self, settings: Settings = SETTINGS) -> SourceJobRunner:
        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        return SourceJobRunner(
            settings,
            self.jobs,
            self.publish,
            recompute=self.recompute,
            sleep=sleep,
            clock=lambda: 0.0,
        )

    def state(self, pid: str) -> ProfileState | None:
        raw = self.store.states.get(("user", pid))
        return None if raw is None else decode_state(raw)


@pytest.fixture
def world(example_rules: RuleSet) -> World:
    return World(example_rules)


def identify(user: str, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": user, "traits": traits}


def order(user: str, revenue: float) -> dict[str, Any]:
    body = {"type": "track", "event": "Order Completed", "userId": user}
    return body | {"properties": {"revenue": revenue}}


async def fill(world: World) -> None:
    await world.send(
        (WEB, identify("u-web", plan="free")),
        (CRM, identify("u-crm", tier="gold")),
        (CRM, order("u-crm", 5)),
        (WEB, identify("u-both", plan="pro")),
        (CRM, identify("u-both", tier="silver")),
        (CRM, order("u-both", 7)),
    )


async def test_a_job_erases_what_only_its_source_made_and_its_traits_elsewhere(
    world: World,
) -> None:
    await fill(world)
    job = SourceJob.new("crm", 1)
    await world.jobs.create(job)
    done = await world.runner().run(job.id)
    assert done is not None
    assert done.scan_done
    assert done.scanned == 3
    assert done.published == 2
    assert done.shown_status == "PROCESSING"  # published, not applied yet
    assert {topic for topic, _, _ in world.published} == {CRM}  # the source's own topic
    await world.deliver()
    assert world.state("u-crm") is None  # only crm made it: erased
    assert world.store.tombstone_keys  # and tombstoned
    both = world.state("u-both")
    assert both is not None
    assert both.source_traits.keys() == {"web"}  # crm's traits went
    view = orjson.loads(world.store.views[("user", "u-both")])
    assert view["traits"] == {"plan": "pro"}
    assert view["attributes"]["lifetime_value"] == 7  # attributes do not know sources
    web = world.state("u-web")
    assert web is not None
    assert web.source_traits == {"web": web.source_traits["web"]}
    # applied, and asked before its scan for the attributes to be recomputed without
    # crm's history: the rules version it asked at is the horizon of crm's topic
    catalog = world.catalog.catalog
    assert catalog.horizons == {CRM: catalog.version}
    assert catalog.recomputation is not None
    assert catalog.recomputation.jobs == (job.id,)
    shown = (await world.jobs.get(job.id) or job).seen(catalog.recomputed).shown()
    assert shown["status"] == "PROCESSING"
    assert shown["progress"]["attributes"] == RECOMPUTING
    for _ in ("served", "rendered"):
        await world.catalog.change(recomputed(catalog.recomputation.version))
    shown = (await world.jobs.get(job.id) or job).seen(world.catalog.catalog.recomputed).shown()
    assert shown["status"] == COMPLETED
    assert shown["progress"]["attributes"] == "RECOMPUTED"
    assert shown["progress"]["commandsApplied"] == 2
    assert shown["dataSetId"] == "crm"
    assert shown["jobType"] == "DELETE"


async def test_commands_published_again_count_once(world: World) -> None:
    await fill(world)
    job = SourceJob.new("crm", 1)
    await world.jobs.create(job)
    await world.runner().run(job.id)
    again = list(world.published)
    await world.deliver()
    world.published = again  # a runner that died before its checkpoint publishes again
    await world.deliver()
    assert world.store.job_tallies[job.id] == 2


async def test_the_scan_is_paced_and_goes_on_from_its_checkpoint(world: World) -> None:
    await fill(world)
    slow = SETTINGS.model_copy(update={"source_job_rate_per_s": 1.0})
    job = SourceJob.new("web", 1)
    await world.jobs.create(job)
    await world.runner(slow).run(job.id)
    # two states a round at one per second, on a clock that does not move
    assert world.sleeps == [2.0, 3.0]
    resumed = SourceJob.new("web", 2)
    resumed.cursor, resumed.scanned = "2", 2  # as a checkpoint left it
    await world.jobs.create(resumed)
    done = await world.runner().run(resumed.id)
    assert done is not None
    assert done.scanned == 3


async def test_a_job_another_runner_holds_is_left_to_it(world: World) -> None:
    await fill(world)
    job = SourceJob.new("crm", 1)
    await world.jobs.create(job)
    assert await world.jobs.claim(job.id, "other", 1000)
    left = await world.runner().run(job.id)
    assert left is not None
    assert left.scanned == 0
    assert world.published == []


async def test_a_publish_that_fails_fails_the_job_with_the_reason(world: World) -> None:
    await fill(world)
    job = SourceJob.new("crm", 1)
    await world.jobs.create(job)

    async def refuse(topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        raise OSError("broker down")

    runner = SourceJobRunner(SETTINGS, world.jobs, refuse, recompute=world.recompute)
    failed = await runner.run(job.id)
    assert failed is not None
    assert failed.shown_status == FAILED
    assert "broker down" in failed.error
    assert runner.metrics.jobs.labels("failed")._value.get() == 1


def test_a_source_no_topic_is_bound_to_is_refused() -> None:
    assert source_topic(SETTINGS, "crm") == CRM
    with pytest.raises(InvalidSourceJob, match="use one of crm, web"):
        source_topic(SETTINGS, "erp")


def test_contributors_are_the_sources_of_traits_and_of_applied_partitions() -> None:
    state = ProfileState(
        id="p",
        source_traits={"web": {}},
        offsets={f"{CRM}/3@1": 5},
        recent={"other-topic/0": [9]},
    )
    assert contributors(state, SETTINGS.sources) == {"web", "crm", "other-topic"}
    only = ProfileState(id="p", offsets={f"{CRM}/0": 1})
    assert scoped_retraction(only, "crm", SETTINGS.sources) == "record"
    assert scoped_retraction(state, "crm", SETTINGS.sources) == "fields"


def test_a_job_reads_back_from_its_fields() -> None:
    job = SourceJob.new("crm", 5)
    job.scan_done, job.cursor, job.published = True, "17:u-1", 3
    again = SourceJob.from_fields(job.to_fields())
    assert again == job
    assert "applied" not in job.to_fields()  # the workers' count
    assert "recomputed" not in job.to_fields()  # the rules catalog's
