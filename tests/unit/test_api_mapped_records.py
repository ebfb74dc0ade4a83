"""Records of a collection with a field mapping: the record document the worker wrote,
in one store call, or the view mapped on the fly when there is none for the profile's
version under this mapping (written before it); `fields` in the mapped record; the
batch form; an unmapped collection of the same entity serves the view as before."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import orjson
import pytest

from attributes.policies import MergePolicy
from attributes.profile import ProfileState, encode_state
from attributes.ruleset import RuleSet
from streams.processor import BatchProcessor, ListDeadLetters, Record
from tests.unit import api_support
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.store import Found, ProfileWrite, record_value

pytestmark = pytest.mark.anyio

FIELDS = {"ltv": "attributes.lifetime_value", "email": "traits.email", "in_vip": "_audiences.vip"}
SETTINGS = Settings.model_validate(
    {
        "collections": {"users": {"entity": "user", "fields": FIELDS}, "people": "user"},
        "destinations": {},
    }
)
MAPPING = SETTINGS.record_mappings["user"]["users"]


def view(pid: str, ltv: float) -> bytes:
    return orjson.dumps(
        {
            "id": pid,
            "entity": "user",
            "identities": {"user_id": [pid]},
            "traits": {"email": f"{pid}@example.com", "plan": "pro"},
            "attributes": {"lifetime_value": ltv},
            "_audiences": {"vip": ltv > 15},
            "version": 3,
        }
    )


#: what the worker wrote for u-1 (spacing no encoder here makes: served as stored)
U1_RECORD = b'{"ltv": 10.5, "email": "u-1@example.com", "in_vip": false}'


class CountingStore(MemoryProfileStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def read_view(self, entity: str, index: str, value: str) -> bytes | None:
        self.calls.append("read_view")
        return await super().read_view(entity, index, value)

    async def read_records(
        self, entity: str, lookups: Sequence[tuple[str, str]], *, collection: str, stamp: str
    ) -> list[Found | None]:
        self.calls.append(f"read_records {collection}")
        return await super().read_records(entity, lookups, collection=collection, stamp=stamp)


async def write(store: MemoryProfileStore, pid: str, ltv: float, records: Any) -> None:
    state = ProfileState(id=pid, version=3)
    profile = ProfileWrite(state, encode_state(state), view(pid, ltv), [("user_id", pid)])
    profile.records = records
    await store.save("user", [profile])


@pytest.fixture
async def store() -> CountingStore:
    store = CountingStore()
    await write(store, "u-1", 10.5, {"users": record_value(MAPPING.stamp, 3, U1_RECORD)})
    await write(store, "u-2", 20.0, {})  # written before the mapping
    await write(store, "u-3", 30.0, {"users": record_value("another", 3, b'{"old": 1}')})
    await write(store, "u-4", 40.0, {"users": record_value(MAPPING.stamp, 2, b'{"old": 1}')})
    store.calls.clear()
    return store


@pytest.fixture
async def client(store: CountingStore) -> AsyncIterator[httpx.AsyncClient]:
    async with api_support.client_for(SETTINGS, store) as client:
        yield client


BASE = "/v1/collections/users/records"


@pytest.mark.parametrize("path", [f"{BASE}/user_id/u-1", f"{BASE}/id/u-1"])
async def test_the_record_document_is_served_as_stored_in_one_call(
    client: httpx.AsyncClient, store: CountingStore, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.content == U1_RECORD
    assert response.headers["content-type"] == "application/json"
    assert store.calls == ["read_records users"]


@pytest.mark.parametrize(
    ("pid", "ltv"),
    [("u-2", 20.0), ("u-3", 30.0), ("u-4", 40.0)],
    ids=["no document", "another mapping's", "an older version's"],
)
async def test_without_a_current_document_the_view_is_mapped_on_the_fly(
    client: httpx.AsyncClient, store: CountingStore, pid: str, ltv: float
) -> None:
    response = await client.get(f"{BASE}/user_id/{pid}")
    assert response.status_code == 200
    assert list(response.json().items()) == [
        ("ltv", ltv),
        ("email", f"{pid}@example.com"),
        ("in_vip", True),
    ]
    assert store.calls == ["read_records users"]


async def test_fields_are_paths_in_the_mapped_record(client: httpx.AsyncClient) -> None:
    for pid in ("u-1", "u-2"):
        response = await client.get(f"{BASE}/user_id/{pid}", params={"fields": "email,ltv,plan"})
        assert response.status_code == 200
        assert list(response.json()) == ["ltv", "email"]  # the record's order; plan: absent


async def test_no_record_and_provenance(client: httpx.AsyncClient) -> None:
    missing = await client.get(f"{BASE}/user_id/u-9")
    assert missing.status_code == 404
    assert missing.json()["error"] == "no record with user_id = 'u-9' in 'users'"
    refused = await client.get(f"{BASE}/user_id/u-1", params={"provenance": "true"})
    assert refused.status_code == 400
    assert "maps fields" in refused.json()["error"]


async def test_the_batch_reads_documents_and_maps_the_rest(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    lookups = [
        {"index": "user_id", "value": "u-1"},
        {"index": "user_id", "value": "u-9"},
        {"index": "id", "value": "u-2"},
    ]
    response = await client.post(f"{BASE}/batch", json={"lookups": lookups})
    assert response.status_code == 200
    assert response.json() == {
        "records": [
            orjson.loads(U1_RECORD),
            None,
            {"ltv": 20.0, "email": "u-2@example.com", "in_vip": True},
        ]
    }
    assert store.calls == ["read_records users"]
    projected = await client.post(
        f"{BASE}/batch", params={"fields": "in_vip"}, json={"lookups": lookups}
    )
    assert projected.json() == {"records": [{"in_vip": False}, None, {"in_vip": True}]}


async def test_an_unmapped_collection_of_the_entity_serves_the_view(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    response = await client.get("/v1/collections/people/records/user_id/u-1")
    assert response.status_code == 200
    assert response.content == view("u-1", 10.5)
    assert store.calls == ["read_view"]


# --- written by the worker's processor, read under another merge policy ------------------

WEB, CRM = "web-events", "crm-events"
POLICIES = Settings.model_validate(
    {
        "collections": {"users": {"entity": "user", "fields": {"plan": "traits.plan"}}},
        "sources": {WEB: "web", CRM: "crm"},
        "merge_policies": {
            "default": MergePolicy(),
            "web-first": MergePolicy(kind="source_precedence", sources=["web", "crm"]),
        },
        "destinations": {},
    }
)


async def test_the_processor_writes_records_and_another_policy_maps_its_merge(
    example_rules: RuleSet,
) -> None:
    store = MemoryProfileStore()
    dead_letters = ListDeadLetters()
    processor = BatchProcessor(
        example_rules,
        store,
        dead_letters,
        sources=POLICIES.sources,
        policy=POLICIES.default_policy,
        records=POLICIES.record_mappings,
    )
    events = [
        (WEB, 0, {"plan": "free", "email": "ann@x.io"}, "2026-11-11T10:01:00Z"),
        (CRM, 0, {"plan": "pro"}, "2026-11-11T10:03:00Z"),
    ]
    await processor.process(
        [
            Record(
                topic,
                0,
                offset,
                orjson.dumps(
                    {"type": "identify", "userId": "u-1", "traits": traits, "timestamp": when}
                ),
                0,
            )
            for topic, offset, traits, when in events
        ]
    )
    assert dead_letters.records == []
    assert [key[1] for key in store.records] == ["users"]
    async with api_support.client_for(POLICIES, store) as client:
        path = f"{BASE}/user_id/u-1"
        assert (await client.get(path)).json() == {"plan": "pro"}  # the stored document
        web_first = await client.get(path, params={"merge_policy": "web-first"})
        assert web_first.json() == {"plan": "free"}
