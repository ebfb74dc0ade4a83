"""Audience sizes over HTTP, their gauge, and one audience's membership of a record."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from api import shapes
from attributes.profile import ProfileState, encode_state
from tests.unit import api_support
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.store import ProfileWrite

pytestmark = pytest.mark.anyio

RULES = """\
attributes:
  - name: orders
    function: count
    event: Order
  - name: seats
    entity: account
    function: count
    event: Seat
audiences:
  - name: buyers
    description: Ordered at least once.
    condition: orders > 0
  - name: pro
    condition: traits.plan == "pro"
  - name: big_accounts
    entity: account
    condition: seats > 10
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return Settings(collections={"users": "user", "accounts": "account"}, rules_path=path)


@pytest.fixture
async def store() -> MemoryProfileStore:
    store = MemoryProfileStore()
    for pid, entered in (("u-1", ["buyers", "pro"]), ("u-2", ["buyers"]), ("u-3", [])):
        state = ProfileState(id=pid, audiences=entered)
        members = {"buyers": "buyers" in entered, "pro": "pro" in entered}
        view = orjson.dumps({"id": pid, "_audiences": members})
        write = ProfileWrite(state, encode_state(state), view, [("user_id", pid)])
        write.entered = entered
        await store.save("user", [write])
    return store


async def test_every_audience_is_listed_with_its_size(
    settings: Settings, store: MemoryProfileStore
) -> None:
    async with api_support.client_for(settings, store) as client:
        response = await client.get("/v1/audiences")
    assert response.status_code == 200
    assert response.json() == {
        "audiences": [
            {
                "name": "buyers",
                "entity": "user",
                "description": "Ordered at least once.",
                "size": 2,
            },
            {"name": "pro", "entity": "user", "description": "", "size": 1},
            {"name": "big_accounts", "entity": "account", "description": "", "size": 0},
        ]
    }


async def test_one_audience_s_size(settings: Settings, store: MemoryProfileStore) -> None:
    async with api_support.client_for(settings, store) as client:
        found = await client.get("/v1/audiences/pro")
        missing = await client.get("/v1/audiences/nobody")
    assert found.json() == {"name": "pro", "entity": "user", "description": "", "size": 1}
    assert missing.status_code == 404
    assert missing.json() == {"error": "audience 'nobody' not found"}


async def test_a_key_sees_the_audiences_of_the_entities_it_may_read(
    settings: Settings, store: MemoryProfileStore
) -> None:
    async with api_support.client_for(settings, store, collections=["accounts"]) as client:
        listed = await client.get("/v1/audiences")
        refused = await client.get("/v1/audiences/buyers")
        allowed = await client.get("/v1/audiences/big_accounts")
    assert [a["name"] for a in listed.json()["audiences"]] == ["big_accounts"]
    assert refused.status_code == 403
    assert allowed.status_code == 200


async def test_sizes_need_a_key(settings: Settings, store: MemoryProfileStore) -> None:
    async with api_support.client_for(settings, store, token=False) as client:
        assert (await client.get("/v1/audiences")).status_code == 401


async def test_an_unusable_rule_file_is_a_json_503(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(RULES.replace("orders > 0", "orders"))
    settings = Settings(collections={"users": "user"}, rules_path=path)
    async with api_support.client_for(settings, MemoryProfileStore()) as client:
        response = await client.get("/v1/audiences")
    assert response.status_code == 503
    assert "audience 'buyers': condition: expected a bool" in response.json()["error"]


async def test_the_metrics_carry_a_size_gauge(
    settings: Settings, store: MemoryProfileStore
) -> None:
    async with api_support.client_for(settings, store) as client:
        text = (await client.get("/metrics")).text
    assert 'traitflow_audience_size{audience="buyers",entity="user"} 2.0' in text
    assert 'traitflow_audience_size{audience="big_accounts",entity="account"} 0.0' in text


async def test_one_audience_s_membership_of_a_record(
    settings: Settings, store: MemoryProfileStore
) -> None:
    async with api_support.client_for(settings, store) as client:
        member = await client.get("/v1/collections/users/records/user_id/u-1?fields=_audiences.pro")
        other = await client.get("/v1/collections/users/records/user_id/u-2?fields=_audiences.pro")
    assert member.json() == {"_audiences": {"pro": True}}
    assert other.json() == {"_audiences": {"pro": False}}


# --- the other shapes ----------------------------------------------------------------------

VIEW = {
    "id": "u-1",
    "identities": {"user_id": ["u-1"]},
    "attributes": {"orders": 2},
    "_audiences": {"buyers": True, "pro": False},
}


def test_a_destination_may_serve_audiences_as_columns() -> None:
    data = shapes.activation_data(VIEW, ["pro", "orders", "buyers", "unknown"])
    assert data == {"pro": False, "orders": 2, "buyers": True}
    assert shapes.activation_data({"attributes": {"orders": 1}}, ["buyers"]) == {}


def test_adobe_entities_carry_the_realized_segments() -> None:
    entity = shapes.adobe_entity(VIEW)["entity"]
    assert entity["segmentMembership"] == {"ups": {"buyers": {"status": "realized"}}}
    assert "segmentMembership" not in shapes.adobe_entity({"id": "u"})["entity"]
    projected = shapes.adobe_entity(VIEW, ["segmentMembership.ups.pro"])["entity"]
    assert projected == {}
