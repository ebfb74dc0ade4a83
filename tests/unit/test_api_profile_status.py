"""Profile counts over HTTP (Adobe's preview sample status) and as gauges: admin keys
only, every configured source and declared identity type listed, JSON 4xx errors."""

from __future__ import annotations

import pytest

from attributes.profile import ProfileState
from tests.unit import api_support
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.profile_counts import recount
from traitflow.store import ProfileWrite

pytestmark = pytest.mark.anyio

PATH = "/data/core/ups/previewsamplestatus"


@pytest.fixture
def settings() -> Settings:
    return Settings(
        collections={"users": "user"}, sources={"web-events": "web", "crm-events": "crm"}
    )


@pytest.fixture
async def store() -> MemoryProfileStore:
    store = MemoryProfileStore()
    profiles = [
        ProfileState(
            id="u-1",
            identities={"user_id": ["u-1"], "email": ["a@x.io"]},
            source_traits={"web": {"plan": [1, "m1", "pro"]}, "crm": {"tier": [1, "m2", "a"]}},
        ),
        ProfileState(id="u-2", identities={"user_id": ["u-2"]}, source_traits={"web": {}}),
        ProfileState(id="u-3", identities={"user_id": ["u-3"]}, source_traits={"web": {"x": []}}),
    ]
    for state in profiles:
        write = ProfileWrite(state, b"", b"{}")
        recount(write)
        await store.save("user", [write])
    return store


async def test_every_entity_s_counts(settings: Settings, store: MemoryProfileStore) -> None:
    async with api_support.client_for(settings, store) as client:
        response = await client.get(PATH)
        one = await client.get(PATH, params={"entity": "account"})
    assert response.status_code == 200
    body = response.json()
    assert body["entities"]["user"] == {
        "profiles": 3,
        "sources": {"crm": 1, "web": 2},
        "namespaces": {"anonymous_id": 0, "email": 1, "user_id": 3},
    }
    assert body["entities"]["account"] == {
        "profiles": 0,
        "sources": {"crm": 0, "web": 0},
        "namespaces": {"account_id": 0},
    }
    assert body["reportTimestamp"].endswith("Z")
    assert list(one.json()["entities"]) == ["account"]


async def test_the_reports_by_source_and_namespace(
    settings: Settings, store: MemoryProfileStore
) -> None:
    async with api_support.client_for(settings, store) as client:
        by_source = (await client.get(f"{PATH}/report/dataset")).json()
        by_namespace = (await client.get(f"{PATH}/report/namespace?entity=user")).json()
    assert by_source["entity"] == "user"
    assert by_source["numProfiles"] == 3
    assert by_source["data"] == [
        {"value": "web", "name": "web", "sampleCount": 2, "samplePercentage": 66.67},
        {"value": "crm", "name": "crm", "sampleCount": 1, "samplePercentage": 33.33},
    ]
    assert [(row["code"], row["sampleCount"]) for row in by_namespace["data"]] == [
        ("user_id", 3),
        ("email", 1),
        ("anonymous_id", 0),
    ]


async def test_bad_requests_are_json_4xx(settings: Settings, store: MemoryProfileStore) -> None:
    async with api_support.client_for(settings, store) as client:
        unknown = await client.get(PATH, params={"entity": "shoe"})
        malformed = await client.get(PATH, params={"entity": "no such"})
        report = await client.get(f"{PATH}/report/colour")
        entity = await client.get(f"{PATH}/report/dataset", params={"entity": "shoe"})
    assert (unknown.status_code, unknown.json()) == (404, {"error": "entity 'shoe' not found"})
    assert malformed.status_code == 400
    assert "error" in malformed.json()
    assert report.status_code == 404
    assert report.json()["error"].startswith("report 'colour' not found")
    assert entity.status_code == 404


async def test_counts_need_an_admin_key(settings: Settings, store: MemoryProfileStore) -> None:
    async with api_support.client_for(settings, store, collections=["users"]) as client:
        refused = await client.get(PATH)
        report = await client.get(f"{PATH}/report/dataset")
    async with api_support.client_for(settings, store, token=False) as client:
        anonymous = await client.get(PATH)
    assert (refused.status_code, report.status_code, anonymous.status_code) == (403, 403, 401)
    assert refused.json() == {"error": "profile counts need an admin key"}


async def test_the_metrics_carry_the_counts(settings: Settings, store: MemoryProfileStore) -> None:
    async with api_support.client_for(settings, store) as client:
        text = (await client.get("/metrics")).text
    assert 'traitflow_profiles{entity="user"} 3.0' in text
    assert 'traitflow_profiles_by_source{entity="user",source="web"} 2.0' in text
    assert 'traitflow_profiles_by_namespace{entity="user",namespace="email"} 1.0' in text
    assert 'traitflow_profiles_by_namespace{entity="account",namespace="account_id"} 0.0' in text
