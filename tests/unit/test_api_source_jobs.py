"""Source delete jobs through the API, in process (memory store): create, read, list,
delete once finished; admin only; bad input is a 4xx JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from api.app import create_app
from api.publisher import ListPublisher
from api.state import state_of
from attributes.ruleset import RuleSet
from streams.backfill_runner import recomputed
from streams.processor import BatchProcessor, ListDeadLetters, Record
from tests.unit import api_support
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.recomputation_requests import recompute_for
from traitflow.rule_catalog import MemoryRuleCatalog
from traitflow.source_job_run import SourceJobRunner
from traitflow.source_jobs import RECOMPUTING, SourceJob

pytestmark = pytest.mark.anyio

WEB, CRM = "web-events", "crm-events"
SETTINGS = Settings(sources={WEB: "web", CRM: "crm"}, collections={"people": "user"})
PATH = "/system/jobs"


class World:
    def __init__(self, rules: RuleSet) -> None:
        self.store = MemoryProfileStore()
        self.published = ListPublisher()
        self.processor = BatchProcessor(
            rules, self.store, ListDeadLetters(), sources=SETTINGS.sources
        )
        self.offsets = {WEB: 0, CRM: 0}
        self.catalog = MemoryRuleCatalog()

    async def recompute(self, job: SourceJob) -> str:
        await self.catalog.change(recompute_for(job.id, [CRM]))
        return RECOMPUTING

    async def send(self, *items: tuple[str, bytes]) -> None:
        batch = []
        for topic, value in items:
            batch.append(Record(topic, 0, self.offsets[topic], value, 1_700_000_000_000))
            self.offsets[topic] += 1
        await self.processor.process(batch)


@pytest.fixture
def world(example_rules: RuleSet) -> World:
    return World(example_rules)


@pytest.fixture
async def app_and_client(world: World) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(SETTINGS, store=world.store, publisher=world.published, catalog=world.catalog)
    async with api_support.serve(app) as client:
        yield app, client


def identify(user: str, **traits: Any) -> bytes:
    return orjson.dumps({"type": "identify", "userId": user, "traits": traits})


async def test_a_job_made_through_the_api_runs_and_completes(
    app_and_client: tuple[Any, httpx.AsyncClient], world: World
) -> None:
    app, client = app_and_client
    await world.send((CRM, identify("u-crm", tier="gold")), (WEB, identify("u-web", plan="x")))
    made = await client.post(PATH, json={"dataSetId": "crm"})
    assert made.status_code == 201
    job = made.json()
    assert job["status"] == "NEW"
    assert job["dataSetId"] == "crm"
    state = state_of(app)
    runner = SourceJobRunner(
        SETTINGS, state.source_jobs, world.published.publish_batch, recompute=world.recompute
    )
    await runner.run(job["id"])
    running = (await client.get(f"{PATH}/{job['id']}")).json()
    assert running["status"] == "PROCESSING"
    assert running["progress"]["commandsPublished"] == 1
    assert (await client.delete(f"{PATH}/{job['id']}")).status_code == 409
    await world.send(*((topic, value) for topic, _, value in world.published.records))
    applied = (await client.get(f"{PATH}/{job['id']}")).json()
    assert applied["status"] == "PROCESSING"  # every command applied: now the attributes
    assert applied["progress"]["commandsApplied"] == 1
    assert applied["progress"]["attributes"] == RECOMPUTING
    running_recomputation = world.catalog.catalog.recomputation
    assert running_recomputation is not None
    await world.catalog.change(recomputed(running_recomputation.version))  # served
    rendering = (await client.get(f"{PATH}/{job['id']}")).json()
    assert rendering["progress"]["attributes"] == RECOMPUTING  # until every view shows it
    await world.catalog.change(recomputed(running_recomputation.version))  # rendered
    done = (await client.get(f"{PATH}/{job['id']}")).json()
    assert done["status"] == "COMPLETED"
    assert done["progress"]["attributes"] == "RECOMPUTED"
    assert ("user", "u-crm") not in world.store.states
    assert ("user", "u-web") in world.store.states
    listed = (await client.get(PATH)).json()
    assert [j["id"] for j in listed["children"]] == [job["id"]]
    assert (await client.delete(f"{PATH}/{job['id']}")).status_code == 204
    assert (await client.get(f"{PATH}/{job['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"dataSetId": "erp"}, "not a configured source"),
        ({"dataSetId": "crm", "extra": 1}, "extra"),
        ({}, "dataSetId"),
    ],
)
async def test_a_bad_job_is_a_400_naming_the_problem(
    app_and_client: tuple[Any, httpx.AsyncClient], body: dict[str, Any], problem: str
) -> None:
    _, client = app_and_client
    answer = await client.post(PATH, json=body)
    assert answer.status_code == 400
    assert problem in answer.text


async def test_unknown_and_malformed_job_ids(app_and_client: tuple[Any, httpx.AsyncClient]) -> None:
    _, client = app_and_client
    assert (await client.get(f"{PATH}/{'0' * 32}")).status_code == 404
    assert (await client.delete(f"{PATH}/{'0' * 32}")).status_code == 404
    malformed = await client.get(f"{PATH}/nope")
    assert malformed.status_code == 400
    assert "error" in malformed.json()


async def test_only_an_admin_key_makes_or_reads_jobs(world: World) -> None:
    app = create_app(SETTINGS, store=world.store, publisher=world.published, catalog=world.catalog)
    async with api_support.serve(app) as client:
        token = await api_support.add_key(state_of(app).keys, "r", collections=["people"])
        reader = api_support.bearer(token)
        made = await client.post(PATH, json={"dataSetId": "crm"}, headers=reader)
        assert made.status_code == 403
        assert (await client.get(PATH, headers=reader)).status_code == 403
