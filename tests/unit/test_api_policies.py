"""Reads under another merge policy, and with provenance (`api.policies`), in process.

The stored data is made by a real `BatchProcessor` reading two topics bound to the
sources `web` and `crm`, so the states hold real per-source fragments:

- u-1: web says plan=free (minute 1) and name; crm says plan=pro and tier (minute 3)
  and sends an order. The default policy (timestamp_ordered) stores plan=pro.
- u-2: crm only, then deleted by crm (a "record" source): a tombstone.
- u-3: web traits and orders whose lifetime value is past 64 bits.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import orjson
import pytest

from api.policies import ATTRIBUTES_PROVENANCE
from attributes.events import iso_from_ms
from attributes.policies import MergePolicy
from attributes.ruleset import RuleSet
from streams.processor import BatchProcessor, ListDeadLetters, Record
from tests.unit import api_support
from tests.unit.trust_support import trusting
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore

pytestmark = pytest.mark.anyio

WEB, CRM = "web-events", "crm-events"
SETTINGS = Settings(
    collections={"users": "user"},
    sources={WEB: "web", CRM: "crm"},
    merge_policies={
        "default": MergePolicy(),
        "crm-first": MergePolicy(kind="source_precedence", sources=["crm", "web"]),
        "web-first": MergePolicy(kind="source_precedence", sources=["web", "crm"]),
        "web-only": MergePolicy(kind="source_precedence", sources=["web"]),
    },
    source_deletes={"crm": "record"},
)
NOW_S = 1_794_394_800.0  # 2026-11-11T11:00:00Z
T0 = int(NOW_S * 1000) - 3_600_000
MINUTE = 60_000
BIG = 2**63 - 1
RECORDS = "/v1/collections/users/records"


def at(minute: int) -> str:
    return iso_from_ms(T0 + minute * MINUTE)


def identify(user: str, mid: str, minute: int, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": user, "messageId": mid, "timestamp": at(minute)} | {
        "traits": traits
    }


def order(user: str, mid: str, minute: int, revenue: float) -> dict[str, Any]:
    properties = {"revenue": revenue}
    event = {"type": "track", "event": "Order Completed", "properties": properties}
    return event | {"userId": user, "messageId": mid, "timestamp": at(minute)}


EVENTS: list[tuple[str, dict[str, Any]]] = [
    (WEB, identify("u-1", "w-1", 1, plan="free", name="Ann", email="ann@x.io")),
    (CRM, identify("u-1", "c-1", 3, plan="pro", tier="gold")),
    (CRM, order("u-1", "c-2", 4, 30.0)),
    (CRM, identify("u-2", "c-3", 1, plan="basic")),
    (CRM, {"type": "delete", "userId": "u-2", "messageId": "c-4", "timestamp": at(2)}),
    (WEB, identify("u-3", "w-2", 1, plan="free")),
    *[(CRM, order("u-3", f"c-{5 + n}", 2 + n, BIG)) for n in range(3)],
]


class CountingStore(MemoryProfileStore):
    """Counts the calls of each read: a read under a policy is one `read_profiles`."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def read_view(self, entity: str, index: str, value: str) -> bytes | None:
        self.calls.append("read_view")
        return await super().read_view(entity, index, value)

    async def read_views(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[bytes | None]:
        self.calls.append("read_views")
        return [await super(CountingStore, self).read_view(entity, *lookup) for lookup in lookups]

    async def read_profiles(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[tuple[bytes, bytes] | None]:
        self.calls.append("read_profiles")
        return await super().read_profiles(entity, lookups)


@pytest.fixture
async def store(example_rules: RuleSet) -> CountingStore:
    store = CountingStore()
    dead_letters = ListDeadLetters()
    processor = BatchProcessor(
        example_rules,
        store,
        dead_letters,
        clock=lambda: NOW_S,
        sources=SETTINGS.sources,
        policy=SETTINGS.default_policy,
        retractions=SETTINGS.source_deletes,
        trust=trusting("web", "crm"),
    )
    offsets = {WEB: 0, CRM: 0}
    batch = []
    for topic, value in EVENTS:
        batch.append(Record(topic, 0, offsets[topic], orjson.dumps(value), T0))
        offsets[topic] += 1
    await processor.process(batch)
    assert dead_letters.records == []
    store.calls.clear()
    return store


client_for = functools.partial(api_support.client_for, SETTINGS)


@pytest.fixture
async def client(store: CountingStore) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(store) as client:
        yield client


async def get(client: httpx.AsyncClient, path: str, **params: str) -> httpx.Response:
    return await client.get(f"{RECORDS}/{path}", params=params)


# --- records: ?merge_policy= ------------------------------------------------------------------


async def test_another_policy_changes_the_traits_and_nothing_else(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    stored = await get(client, "user_id/u-1")
    assert stored.json()["traits"] == {
        "plan": "pro",
        "name": "Ann",
        "email": "ann@x.io",
        "tier": "gold",
    }
    web_first = await get(client, "user_id/u-1", merge_policy="web-first")
    assert web_first.status_code == 200
    assert web_first.headers["content-type"] == "application/json"
    assert web_first.json() == stored.json() | {
        "traits": {"plan": "free", "name": "Ann", "email": "ann@x.io", "tier": "gold"}
    }
    web_only = await get(client, "email/ann@x.io", merge_policy="web-only")
    assert web_only.json()["traits"] == {"plan": "free", "name": "Ann", "email": "ann@x.io"}
    crm_first = await get(client, "anonymous_id/none", merge_policy="crm-first")
    assert crm_first.status_code == 404
    assert store.calls == ["read_view", "read_profiles", "read_profiles", "read_profiles"]


@pytest.mark.parametrize("params", [{}, {"merge_policy": "default"}])
async def test_the_default_policy_is_the_stored_bytes(
    client: httpx.AsyncClient, store: CountingStore, params: dict[str, str]
) -> None:
    response = await get(client, "id/u-1", **params)
    assert response.content == store.views[("user", "u-1")]
    assert store.calls == ["read_view"]


async def test_an_unknown_policy_is_a_404(client: httpx.AsyncClient, store: CountingStore) -> None:
    response = await get(client, "id/u-1", merge_policy="nope")
    assert response.status_code == 404
    assert response.json() == {
        "error": "merge policy 'nope' not found (known: crm-first, default, web-first, web-only)"
    }
    assert store.calls == []


async def test_a_deleted_record_is_a_404_under_every_policy(client: httpx.AsyncClient) -> None:
    for params in ({}, {"merge_policy": "crm-first"}, {"provenance": "true"}):
        response = await get(client, "user_id/u-2", **params)
        assert response.status_code == 404
        assert response.json() == {"error": "no record with user_id = 'u-2' in 'users'"}


# --- records: ?provenance= ------------------------------------------------------------------


async def test_provenance_names_the_source_and_time_of_each_trait(
    client: httpx.AsyncClient,
) -> None:
    stored = (await get(client, "id/u-1")).json()
    response = await get(client, "id/u-1", provenance="true")
    assert response.status_code == 200
    document = response.json()
    assert document.pop("provenance") == {
        "policy": "default",
        "traits": {
            "plan": {"source": "crm", "timestamp": at(3)},
            "name": {"source": "web", "timestamp": at(1)},
            "email": {"source": "web", "timestamp": at(1)},
            "tier": {"source": "crm", "timestamp": at(3)},
        },
        "attributes": ATTRIBUTES_PROVENANCE,
    }
    assert document == stored  # recomputed under the default: what is stored
    assert response.headers["X-Profile-Version"] == str(stored["version"])


async def test_provenance_under_another_policy(client: httpx.AsyncClient) -> None:
    response = await get(client, "id/u-1", merge_policy="web-only", provenance="1")
    assert response.json()["provenance"]["policy"] == "web-only"
    assert response.json()["provenance"]["traits"] == {
        "plan": {"source": "web", "timestamp": at(1)},
        "name": {"source": "web", "timestamp": at(1)},
        "email": {"source": "web", "timestamp": at(1)},
    }


@pytest.mark.parametrize("value", ["false", "0", "FALSE"])
async def test_provenance_false_is_the_plain_read(
    client: httpx.AsyncClient, store: CountingStore, value: str
) -> None:
    response = await get(client, "id/u-1", provenance=value)
    assert response.content == store.views[("user", "u-1")]


@pytest.mark.parametrize("value", ["maybe", "yes", "", "2"])
async def test_provenance_is_true_or_false(client: httpx.AsyncClient, value: str) -> None:
    response = await get(client, "id/u-1", provenance=value)
    assert response.status_code == 400
    assert response.json() == {"error": f"provenance should be true or false, not {value!r}"}


async def test_fields_project_the_recomputed_record_with_its_provenance(
    client: httpx.AsyncClient,
) -> None:
    response = await get(
        client,
        "id/u-1",
        merge_policy="web-first",
        provenance="true",
        fields="traits.plan,provenance.traits.plan,attributes.lifetime_value",
    )
    assert response.json() == {
        "traits": {"plan": "free"},
        "provenance": {"traits": {"plan": {"source": "web", "timestamp": at(1)}}},
        "attributes": {"lifetime_value": 30.0},
    }
    policy_only = await get(client, "id/u-1", provenance="true", fields="id,provenance.policy")
    assert policy_only.json() == {"id": "u-1", "provenance": {"policy": "default"}}


async def test_a_recomputed_read_keeps_integers_past_64_bits(client: httpx.AsyncClient) -> None:
    stored = await get(client, "id/u-3")
    assert stored.json()["attributes"]["lifetime_value"] == 3 * BIG
    response = await get(client, "id/u-3", merge_policy="crm-first")
    assert response.json()["attributes"] == stored.json()["attributes"]


# --- caching: each policy its own representation --------------------------------------------


async def test_etags_differ_between_policies_and_revalidate(client: httpx.AsyncClient) -> None:
    plain = await get(client, "id/u-1")
    web_first = await get(client, "id/u-1", merge_policy="web-first")
    crm_first = await get(client, "id/u-1", merge_policy="crm-first")  # the same traits as stored
    with_provenance = await get(client, "id/u-1", provenance="true")
    tags = [r.headers["ETag"] for r in (plain, web_first, with_provenance)]
    assert len(set(tags)) == 3
    assert crm_first.json() == plain.json()
    assert web_first.headers["Cache-Control"] == "no-cache"
    again = await client.get(
        f"{RECORDS}/id/u-1",
        params={"merge_policy": "web-first"},
        headers={"If-None-Match": web_first.headers["ETag"]},
    )
    assert again.status_code == 304
    stale = await client.get(
        f"{RECORDS}/id/u-1",
        params={"merge_policy": "web-first"},
        headers={"If-None-Match": plain.headers["ETag"]},
    )
    assert stale.status_code == 200


# --- entities: mergePolicyId ----------------------------------------------------------------

SCHEMA = "_xdm.context.profile"


def entity_query(**changes: str) -> dict[str, str]:
    return {"schema.name": SCHEMA, "entityId": "ann@x.io", "entityIdNS": "email"} | changes


async def test_entities_get_merges_under_the_named_policy(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    stored = await client.get("/access/entities", params=entity_query())
    web_first = await client.get("/access/entities", params=entity_query(mergePolicyId="web-first"))
    assert web_first.status_code == 200
    assert stored.json()["u-1"]["entity"]["traits"]["plan"] == "pro"
    expected = stored.json()["u-1"]
    expected["entity"]["traits"] = {
        "plan": "free",
        "name": "Ann",
        "email": "ann@x.io",
        "tier": "gold",
    }
    assert web_first.json() == {"u-1": expected}
    assert web_first.headers["ETag"] != stored.headers["ETag"]
    default = await client.get("/access/entities", params=entity_query(mergePolicyId="default"))
    assert default.content == stored.content
    assert store.calls == ["read_views", "read_profiles", "read_views"]


async def test_entities_post_merges_under_the_named_policy(client: httpx.AsyncClient) -> None:
    identities = [
        {"entityId": "u-1", "entityIdNS": {"code": "user_id"}},
        {"entityId": "u-2", "entityIdNS": {"code": "user_id"}},  # deleted: not found
        {"entityId": "ann@x.io", "entityIdNS": {"code": "email"}},
    ]
    request = {"schema": {"name": SCHEMA}, "identities": identities, "mergePolicyId": "web-only"}
    response = await client.post("/access/entities", json=request)
    assert response.status_code == 200
    answer = response.json()
    assert list(answer) == ["u-1"]
    assert answer["u-1"]["entity"]["traits"] == {"plan": "free", "name": "Ann", "email": "ann@x.io"}
    assert answer["u-1"]["requestedIdentities"] == [identities[0], identities[2]]
    fields = request | {"fields": ["traits.tier", "attributes.purchase_count"]}
    projected = (await client.post("/access/entities", json=fields)).json()
    assert projected["u-1"]["entity"] == {"attributes": {"purchase_count": 1}}


async def test_entities_unknown_policy_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/access/entities", params=entity_query(mergePolicyId="nope"))
    assert response.status_code == 404
    assert "merge policy 'nope' not found" in response.json()["error"]
