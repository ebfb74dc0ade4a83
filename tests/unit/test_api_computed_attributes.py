"""Computed attributes through the API (`api.computed_attributes`), in process: the
rule file's attributes listed read-only, API-made ones created, patched and deleted,
every change checked with the file and counted in the rules version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.state import state_of
from tests.unit.api_support import add_key, bearer, serve
from traitflow.config import Settings
from traitflow.rule_catalog import MemoryRuleCatalog

pytestmark = pytest.mark.anyio

PATH = "/data/core/ca/attributes"
RULES = """\
attributes:
  - name: lifetime_value
    function: sum
    field: properties.revenue
    event: Order Completed
    description: Total revenue.
  - name: purchase_count
    function: count
    event: Order Completed
audiences:
  - name: buyers
    condition: purchase_count > 0
"""
ORDERS_30D = {
    "name": "orders_30d",
    "function": "count",
    "event": "Order Completed",
    "lookback": {"count": 30, "unit": "days"},
    "description": "Orders in the last 30 days.",
}


@pytest.fixture
def catalog() -> MemoryRuleCatalog:
    return MemoryRuleCatalog()


@pytest.fixture
def app(tmp_path: Path, catalog: MemoryRuleCatalog) -> FastAPI:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    # no backfill: ACTIVE at once (`test_activating_with_backfill_is_processing_first`)
    return create_app(Settings(rules_path=rules, backfill=False), catalog=catalog)


@pytest.fixture
async def client(app: FastAPI) -> Any:
    async with serve(app) as client:
        yield client


async def test_the_rule_file_s_attributes_are_listed_read_only(client: httpx.AsyncClient) -> None:
    listed = (await client.get(PATH)).json()
    assert listed["rulesVersion"] == 0
    assert [(a["id"], a["origin"], a["status"]) for a in listed["computedAttributes"]] == [
        ("file:lifetime_value", "file", "ACTIVE"),
        ("file:purchase_count", "file", "ACTIVE"),
    ]
    one = (await client.get(f"{PATH}/file:lifetime_value")).json()
    assert one["description"] == "Total revenue."
    refused = await client.patch(f"{PATH}/file:lifetime_value", json={"status": "DISABLED"})
    assert refused.status_code == 409
    assert "rule file" in refused.json()["error"]
    assert (await client.delete(f"{PATH}/file:purchase_count")).status_code == 409


async def test_an_attribute_is_created_changed_and_deleted_each_a_new_version(
    client: httpx.AsyncClient, catalog: MemoryRuleCatalog
) -> None:
    made = await client.post(PATH, json=ORDERS_30D)
    assert made.status_code == 201
    body = made.json()
    assert (body["name"], body["status"], body["origin"], body["rulesVersion"]) == (
        "orders_30d",
        "DRAFT",
        "api",
        1,
    )
    assert body["definition"]["lookback"] == {"count": 30, "unit": "days"}
    assert body["id"].startswith("ca-")
    attribute = f"{PATH}/{body['id']}"
    assert (await client.get(attribute)).json() == body

    active = (await client.patch(attribute, json={"status": "ACTIVE"})).json()
    assert (active["status"], active["rulesVersion"]) == ("ACTIVE", 2)
    assert catalog.catalog.get(body["id"]).live  # type: ignore[union-attr]

    narrowed = await client.patch(attribute, json={"where": "properties.revenue > 10.0"})
    assert narrowed.json()["definition"]["revision"] == 1  # counts afresh
    assert narrowed.json()["definition"]["where"] == "properties.revenue > 10.0"

    listed = (await client.get(PATH, params={"status": "ACTIVE"})).json()
    assert [a["name"] for a in listed["computedAttributes"]] == [
        "lifetime_value",
        "purchase_count",
        "orders_30d",
    ]
    assert listed["rulesVersion"] == 3
    assert (await client.delete(attribute)).status_code == 204
    assert (await client.get(attribute)).status_code == 404
    assert catalog.catalog.version == 4


@pytest.mark.parametrize(
    ("body", "wrong"),
    [
        ({**ORDERS_30D, "function": "median"}, "function"),
        ({**ORDERS_30D, "lookback": {"count": 0, "unit": "days"}}, "lookback.count"),
        ({**ORDERS_30D, "where": "properties.x +"}, "where"),
        ({**ORDERS_30D, "name": "lifetime_value"}, "rule file"),
        ({**ORDERS_30D, "status": "PROCESSING"}, "status"),
        ({**ORDERS_30D, "colour": "red"}, "colour"),
        ({"name": "avg", "function": "derived", "expression": "nope / 2.0"}, "nope"),
    ],
)
async def test_a_bad_attribute_is_a_400_naming_what_is_wrong(
    client: httpx.AsyncClient, catalog: MemoryRuleCatalog, body: dict[str, Any], wrong: str
) -> None:
    refused = await client.post(PATH, json=body)
    assert refused.status_code == 400
    assert wrong in refused.json()["error"]
    assert catalog.catalog.version == 0  # nothing stored


async def test_an_attribute_others_read_cannot_be_deleted_or_disabled(
    client: httpx.AsyncClient,
) -> None:
    base = (await client.post(PATH, json={**ORDERS_30D, "status": "ACTIVE"})).json()
    derived = {"name": "recent_share", "function": "derived", "expression": "orders_30d * 2"}
    assert (await client.post(PATH, json={**derived, "status": "ACTIVE"})).status_code == 201
    refused = await client.delete(f"{PATH}/{base['id']}")
    assert refused.status_code == 400
    assert "orders_30d" in refused.json()["error"]
    disabled = await client.patch(f"{PATH}/{base['id']}", json={"status": "DISABLED"})
    assert disabled.status_code == 400
    assert (await client.patch(f"{PATH}/{base['id']}", json={"name": "x"})).status_code == 400


async def test_an_active_attribute_that_reads_a_draft_is_a_400(
    client: httpx.AsyncClient, catalog: MemoryRuleCatalog
) -> None:
    """Stored, it would be a catalog no worker can compose: every commit would wait."""
    assert (await client.post(PATH, json=ORDERS_30D)).json()["status"] == "DRAFT"
    derived = {"name": "recent_share", "function": "derived", "expression": "orders_30d * 2"}
    refused = await client.post(PATH, json={**derived, "status": "ACTIVE"})
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("expression: unknown variable 'orders_30d'")
    assert catalog.catalog.version == 1  # the DRAFT alone


async def test_only_an_admin_key_may_see_or_change_them(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token = await add_key(state_of(app).keys, collections=["users"])
    assert (await client.get(PATH, headers=bearer(token))).status_code == 403
    assert (await client.post(PATH, json=ORDERS_30D, headers=bearer(token))).status_code == 403
    assert (await client.get(f"{PATH}/not-an-id")).status_code == 400


async def test_activating_with_backfill_is_processing_first(tmp_path: Path) -> None:
    """With backfill (the default), an attribute asked ACTIVE is PROCESSING until a
    worker has computed it over the history (`streams.backfill`)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    app = create_app(Settings(rules_path=rules), catalog=MemoryRuleCatalog())
    async with serve(app) as client:
        made = (await client.post(PATH, json={**ORDERS_30D, "status": "ACTIVE"})).json()
        assert made["status"] == "PROCESSING"
        draft = (await client.post(PATH, json={**ORDERS_30D, "name": "later"})).json()
        activated = await client.patch(f"{PATH}/{draft['id']}", json={"status": "ACTIVE"})
        assert activated.json()["status"] == "PROCESSING"
