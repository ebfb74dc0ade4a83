"""Erase requests through the API, in process (memory store, a list for the broker):
`DELETE /access/entities` publishes an erase command and answers 202; a worker on the
same store applies it; `GET /access/erasures/{id}` follows the status. Admin only."""

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
from streams.processor import BatchProcessor, ListDeadLetters, Record
from tests.unit import api_support
from tests.unit.trust_support import trusting
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore

pytestmark = pytest.mark.anyio

SETTINGS = Settings(sources={"events": "web"}, collections={"people": "user"})
PATH = "/access/entities"
PROFILE = {"schema.name": "_xdm.context.profile"}


class World:
    def __init__(self, rules: RuleSet) -> None:
        self.store = MemoryProfileStore()
        self.published = ListPublisher()
        self.processor = BatchProcessor(
            rules, self.store, ListDeadLetters(), trust=trusting("events")
        )
        self.offset = 0

    async def feed(self, *values: bytes) -> None:
        batch = []
        for value in values:
            batch.append(Record("events", 0, self.offset, value, 1_700_000_000_000))
            self.offset += 1
        await self.processor.process(batch)

    async def deliver(self) -> None:
        """The worker reads what the API published."""
        await self.feed(*(value for _, _, value in self.published.records))
        self.published.records.clear()


@pytest.fixture
def world(example_rules: RuleSet) -> World:
    return World(example_rules)


@pytest.fixture
async def client(world: World) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(SETTINGS, store=world.store, publisher=world.published)
    async with api_support.serve(app) as client:
        yield client


def order(**ids: Any) -> bytes:
    body = {"type": "track", "event": "Order Completed", "properties": {"revenue": 5}}
    return orjson.dumps(body | ids)


async def test_a_delete_by_email_is_published_then_applied_and_the_profile_is_gone(
    client: httpx.AsyncClient, world: World
) -> None:
    await world.feed(
        orjson.dumps({"type": "identify", "userId": "u-1", "traits": {"email": "ada@x.io"}}),
        order(userId="u-1"),
        order(userId="u-2"),
    )
    read = await client.get(PATH, params={**PROFILE, "entityId": "u-1"})
    assert read.status_code == 200
    asked = await client.delete(
        PATH, params={**PROFILE, "entityId": " Ada@X.io", "entityIdNS": "email"}
    )
    assert asked.status_code == 202
    body = asked.json()
    assert body["status"] == "pending"
    ((topic, key, value),) = world.published.records
    assert topic == "events"
    assert key == b"ada@x.io"
    assert orjson.loads(value)["type"] == "erase"
    status = await client.get(body["statusUrl"])
    assert status.json()["status"] == "pending"
    await world.deliver()
    status = await client.get(body["statusUrl"])
    assert status.status_code == 200
    assert status.json()["status"] == "applied"
    assert status.json()["found"] is True
    assert (await client.get(PATH, params={**PROFILE, "entityId": "u-1"})).status_code == 404
    assert (await client.get(PATH, params={**PROFILE, "entityId": "u-2"})).status_code == 200


async def test_a_delete_by_profile_id_names_its_primary_identity(
    client: httpx.AsyncClient, world: World
) -> None:
    await world.feed(order(anonymousId="a-1"))
    asked = await client.delete(PATH, params={**PROFILE, "entityId": "anonymous_id:a-1"})
    assert asked.status_code == 202
    event = orjson.loads(world.published.records[0][2])
    assert event["properties"]["identity"] == {"type": "anonymous_id", "value": "a-1"}
    await world.deliver()
    assert world.store.states == {}


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"schema.name": "_xdm.context.shop", "entityId": "u-1"}, "is not served"),
        ({**PROFILE, "entityId": "u-1", "entityIdNS": "shoe"}, "unknown identity namespace"),
        ({**PROFILE, "entityId": " "}, "1 to 1024 characters"),
        ({**PROFILE, "entityId": "x" * 1025}, "1 to 1024 characters"),
    ],
)
async def test_a_bad_request_is_a_400_naming_the_problem(
    client: httpx.AsyncClient, world: World, params: dict[str, str], problem: str
) -> None:
    answer = await client.delete(PATH, params=params)
    assert answer.status_code == 400
    assert problem in answer.json()["error"]
    assert world.published.records == []


async def test_only_an_admin_key_erases_or_reads_a_status(world: World) -> None:
    app = create_app(SETTINGS, store=world.store, publisher=world.published)
    async with api_support.serve(app) as client:
        token = await api_support.add_key(state_of(app).keys, "reader", collections=["people"])
        reader = api_support.bearer(token)
        answer = await client.delete(PATH, params={**PROFILE, "entityId": "u-1"}, headers=reader)
        assert answer.status_code == 403
        asked = await client.delete(PATH, params={**PROFILE, "entityId": "u-1"})
        status = await client.get(asked.json()["statusUrl"], headers=reader)
        assert status.status_code == 403
    assert len(world.published.records) == 1


async def test_an_unknown_or_malformed_request_id(client: httpx.AsyncClient) -> None:
    unknown = await client.get("/access/erasures/er-" + "0" * 32)
    assert unknown.status_code == 404
    malformed = await client.get("/access/erasures/nope")
    assert malformed.status_code == 400
    assert "request_id" in malformed.json()["error"]


async def test_a_broker_that_does_not_acknowledge_is_a_503(
    client: httpx.AsyncClient, world: World
) -> None:
    world.published.fail = True
    answer = await client.delete(PATH, params={**PROFILE, "entityId": "u-1"})
    assert answer.status_code == 503
