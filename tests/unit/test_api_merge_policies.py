"""`api.merge_policies` and `api.policy_store`: merge policies made, read, replaced and
deleted through the API, in process, and reads that name them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.policy_store import MemoryPolicyStore
from api.state import state_of
from attributes.policies import MergePolicy
from tests.unit import api_support
from tests.unit.test_api_policies import RECORDS, SETTINGS, CountingStore
from tests.unit.test_api_policies import store as store  # the fixture

pytestmark = pytest.mark.anyio

PATH = "/config/mergePolicies"
CRM_ONLY = {"kind": "source_precedence", "sources": ["crm"]}


@pytest.fixture
async def client(store: CountingStore) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(SETTINGS, store=store)
    async with api_support.serve(app) as client:
        yield client


async def reader(client: httpx.AsyncClient) -> dict[str, str]:
    """Headers of a key that may read users, and nothing else."""
    app: Any = client._transport.app  # type: ignore[attr-defined]
    return api_support.bearer(await api_support.add_key(state_of(app).keys, collections=["users"]))


async def test_configured_policies_are_listed_read_only(client: httpx.AsyncClient) -> None:
    listed = (await client.get(PATH)).json()
    assert listed["_page"] == {"totalCount": 4}
    assert listed["children"][:2] == [
        {"id": "default", "kind": "timestamp_ordered", "sources": [], "default": True,
         "origin": "config"},
        {"id": "crm-first", "kind": "source_precedence", "sources": ["crm", "web"],
         "default": False, "origin": "config"},
    ]  # fmt: skip
    for response in (
        await client.put(f"{PATH}/crm-first", json=CRM_ONLY),
        await client.delete(f"{PATH}/crm-first"),
    ):
        assert response.status_code == 409
        assert "configured (TRAITFLOW_MERGE_POLICIES)" in response.json()["error"]


async def test_a_policy_made_through_the_api_serves_reads(client: httpx.AsyncClient) -> None:
    made = await client.post(PATH, json={"id": "crm-only", **CRM_ONLY})
    assert made.status_code == 201
    assert made.json() == {
        "id": "crm-only", "kind": "source_precedence", "sources": ["crm"], "default": False,
        "origin": "api",
    }  # fmt: skip
    assert (await client.get(f"{PATH}/crm-only")).json() == made.json()
    assert (await client.get(PATH)).json()["children"][-1] == made.json()
    read = await client.get(f"{RECORDS}/user_id/u-1", params={"merge_policy": "crm-only"})
    assert read.json()["traits"] == {"plan": "pro", "tier": "gold"}  # web's fields not merged
    provenance = await client.get(
        f"{RECORDS}/user_id/u-1", params={"merge_policy": "crm-only", "provenance": "true"}
    )
    assert provenance.json()["provenance"]["policy"] == "crm-only"
    params = {"schema.name": "_xdm.context.profile", "entityId": "u-1"}
    entities = await client.get("/access/entities", params=params | {"mergePolicyId": "crm-only"})
    assert entities.status_code == 200, entities.text
    assert entities.json()["u-1"]["entity"]["traits"] == {"plan": "pro", "tier": "gold"}


async def test_put_creates_then_replaces_and_delete_removes(client: httpx.AsyncClient) -> None:
    created = await client.put(f"{PATH}/mine", json=CRM_ONLY)
    assert created.status_code == 201
    replaced = await client.put(f"{PATH}/mine", json={"kind": "timestamp_ordered"})
    assert replaced.status_code == 200
    assert replaced.json()["kind"] == "timestamp_ordered"
    read = await client.get(f"{RECORDS}/user_id/u-1", params={"merge_policy": "mine"})
    assert read.json()["traits"]["plan"] == "pro"  # the latest
    assert (await client.delete(f"{PATH}/mine")).status_code == 204
    gone = await client.get(f"{RECORDS}/user_id/u-1", params={"merge_policy": "mine"})
    assert gone.status_code == 404
    assert (await client.get(f"{PATH}/mine")).status_code == 404
    again = await client.delete(f"{PATH}/mine")
    assert (again.status_code, again.json()) == (404, {"error": "merge policy 'mine' not found"})


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"id": "x", "kind": "source_precedence", "sources": ["erp"]}, 400,
         "no ingest topic is bound to source 'erp' (sources: crm, web)"),
        ({"id": "x", "kind": "source_precedence"}, 400,
         "a source_precedence policy lists at least one source"),
        ({"id": "x", "kind": "timestamp_ordered", "sources": ["crm"]}, 400,
         "a timestamp_ordered policy merges every source: no `sources`"),
        ({"id": "x", "kind": "newest"}, 400, "body.kind: Input should be"),
        ({"id": "has space", **CRM_ONLY}, 400, "body.id: String should match pattern"),
        ({"id": "x", **CRM_ONLY, "default": True}, 400, "body.default: Extra inputs"),
        ({"id": "web-first", **CRM_ONLY}, 409, "merge policy 'web-first' is configured"),
    ],
)  # fmt: skip
async def test_a_bad_policy_is_a_4xx_that_says_why(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, error: str
) -> None:
    response = await client.post(PATH, json=body)
    assert response.status_code == status
    assert response.json()["error"].startswith(error)


async def test_an_existing_id_is_a_409_and_a_bad_path_id_a_400(client: httpx.AsyncClient) -> None:
    assert (await client.post(PATH, json={"id": "twice", **CRM_ONLY})).status_code == 201
    twice = await client.post(PATH, json={"id": "twice", **CRM_ONLY})
    assert (twice.status_code, twice.json()) == (
        409,
        {"error": "merge policy 'twice' exists: replace it with PUT"},
    )
    bad = await client.put(f"{PATH}/{'x' * 65}", json=CRM_ONLY)
    assert bad.status_code == 400


async def test_only_an_admin_key_changes_policies(client: httpx.AsyncClient) -> None:
    headers = await reader(client)
    assert (await client.get(PATH, headers=headers)).status_code == 200
    for response in (
        await client.post(PATH, json={"id": "x", **CRM_ONLY}, headers=headers),
        await client.put(f"{PATH}/x", json=CRM_ONLY, headers=headers),
        await client.delete(f"{PATH}/x", headers=headers),
    ):
        assert (response.status_code, response.json()) == (
            403,
            {"error": "changing merge policies needs an admin key"},
        )
    assert (await client.get(PATH, headers={"Authorization": ""})).status_code == 401


async def test_the_store_caches_reads_for_its_ttl() -> None:
    """Another process's change is seen once the cache is older than its TTL; this
    process's own changes at once."""
    now = [0.0]
    store = MemoryPolicyStore(cache_ttl_s=2.0, clock=lambda: now[0])
    assert await store.get("p") is None
    store.policies["p"] = MergePolicy()  # as another API process writes it
    assert await store.get("p") is None
    now[0] = 2.0
    assert await store.get("p") == MergePolicy()
    assert await store.remove("p")
    assert await store.get("p") is None  # its own change: at once
    assert await store.create("q", MergePolicy())
    assert not await store.create("q", MergePolicy(kind="source_precedence", sources=["a"]))
    assert await store.replace("q", MergePolicy(kind="source_precedence", sources=["a"]))
    assert (await store.get("q")) == MergePolicy(kind="source_precedence", sources=["a"])


async def test_a_read_overtaken_by_a_change_is_not_cached() -> None:
    """A load of the policies in flight while this process changes one must not put the
    old set back in the cache: the process that made a change serves it at once."""
    loading, release = asyncio.Event(), asyncio.Event()

    class SlowStore(MemoryPolicyStore):
        async def _load(self) -> dict[str, MergePolicy]:
            loaded = await super()._load()
            loading.set()
            await release.wait()
            return loaded

    store = SlowStore(cache_ttl_s=60.0)
    reading = asyncio.create_task(store.all())
    await loading.wait()
    assert await store.create("new", MergePolicy())
    release.set()
    assert await reading == {}  # it began before the change: it does not see it
    loading.clear()
    release.set()
    assert await store.get("new") == MergePolicy()
