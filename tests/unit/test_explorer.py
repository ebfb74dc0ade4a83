"""The profile explorer's server side: its pages are public static files shipped in the
package, loading nothing from elsewhere and allowed to run only this origin's script;
its two data routes want an admin key. (tests/integration/test_explorer.py drives the
pages in a real browser.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from api import explorer
from api.app import create_app
from attributes.catalog import ManagedAttribute, Status
from tests.unit import api_support
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.recomputation_requests import recompute_for
from traitflow.rule_catalog import RECOMPUTATION, Change, MemoryRuleCatalog

pytestmark = pytest.mark.anyio

RULES = """\
attributes:
  - name: orders_7d
    description: Orders in the last 7 days.
    function: count
    event: Order Completed
    lookback: {count: 7, unit: days}
  - name: big_spender
    function: derived
    expression: spend >= 100.0
  - name: spend
    description: Total revenue.
    function: sum
    field: properties.revenue
    event: Order Completed
  - name: seats
    entity: account
    function: count
    event: Seat Added
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return Settings(rules_path=path)


def shipped(name: str) -> str:
    return (explorer.STATIC / name).read_text()


async def test_the_pages_and_their_files_are_served_without_a_key(settings: Settings) -> None:
    async with api_support.client_for(settings, MemoryProfileStore(), token=False) as client:
        answers = {
            path: await client.get(path)
            for path in (
                "/explorer",
                "/explorer/rules",
                "/explorer/assets/explorer.js",
                "/explorer/assets/explorer.css",
                "/explorer/assets/favicon.svg",
            )
        }
    for path, answer in answers.items():
        assert answer.status_code == 200, path
        assert "script-src 'self'" in answer.headers["content-security-policy"], path
        assert answer.headers["referrer-policy"] == "no-referrer"
    assert answers["/explorer"].headers["content-type"].startswith("text/html")
    assert 'data-page="profile"' in answers["/explorer"].text
    assert 'data-page="rules"' in answers["/explorer/rules"].text
    assert (
        answers["/explorer/assets/explorer.js"]
        .headers["content-type"]
        .startswith("text/javascript")
    )
    assert answers["/explorer/assets/explorer.css"].headers["content-type"].startswith("text/css")


async def test_only_the_listed_files_are_served(settings: Settings) -> None:
    async with api_support.client_for(settings, MemoryProfileStore(), token=False) as client:
        unknown = await client.get("/explorer/assets/profile.py")
        escaping = await client.get("/explorer/assets/..%2F..%2Fexplorer.py")
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "no explorer file 'profile.py'"}
    assert escaping.status_code == 404


def test_the_pages_load_nothing_from_elsewhere_and_run_no_inline_script() -> None:
    for name in [*explorer.PAGES.values(), *explorer.ASSETS]:
        # an XML namespace is a name, not an address anything is loaded from
        text = re.sub(r' xmlns="[^"]*"', "", shipped(name))
        assert re.search(r"https?:", text) is None, f"{name}: names another site"
        assert "@import" not in text, name
        assert "url(" not in text, name
        if not name.endswith(".js"):  # the script's comments start with //
            assert "//" not in text, f"{name}: a protocol-relative address"
    for page in explorer.PAGES.values():
        html = shipped(page)
        sources = re.findall(r'(?:src|href)="([^"]*)"', html)
        assert sources, page
        assert all(source.startswith("/explorer") for source in sources), sources
        assert re.search(r"<script(?![^>]*\bsrc=)", html) is None, f"{page}: inline script"
        assert re.search(r"\son[a-z]+=", html) is None, f"{page}: inline event handler"
        assert "<style" not in html, f"{page}: inline style"
        assert "style=" not in html, f"{page}: inline style"


def test_the_key_fields_have_no_name_so_a_form_can_never_send_them() -> None:
    for page in explorer.PAGES.values():
        html = shipped(page)
        (key_input,) = re.findall(r'<input id="key-input"[^>]*>', html)
        assert "name=" not in key_input
        assert 'type="password"' in key_input
        assert re.search(r'<form id="key-form" method="post"', html)


def test_the_script_keeps_the_key_in_session_storage_and_shows_data_as_text() -> None:
    script = shipped("explorer.js")
    assert "sessionStorage" in script
    assert "localStorage" not in script
    assert "document.cookie" not in script
    assert "innerHTML" not in script
    assert "insertAdjacentHTML" not in script
    assert "Authorization" in script


async def test_the_lookup_choices_need_an_admin_key(settings: Settings) -> None:
    store = MemoryProfileStore()
    async with api_support.client_for(settings, store, token=False) as anonymous:
        assert (await anonymous.get("/explorer/api/entities")).status_code == 401
        assert (await anonymous.get("/explorer/api/rules")).status_code == 401
    async with api_support.client_for(settings, store, collections=["users"]) as reader:
        refused = await reader.get("/explorer/api/entities")
        assert (await reader.get("/explorer/api/rules")).status_code == 403
    assert refused.status_code == 403
    assert refused.json() == {"error": "the profile explorer needs an admin key"}


async def test_the_lookup_choices_are_each_entity_s_identity_indexes(settings: Settings) -> None:
    async with api_support.client_for(settings, MemoryProfileStore()) as client:
        answer = await client.get("/explorer/api/entities")
    assert answer.status_code == 200
    assert answer.json() == {
        "entities": [
            {
                "entity": "user",
                "collection": "users",
                "indexes": ["user_id", "email", "anonymous_id", "id"],
            },
            {"entity": "account", "collection": "accounts", "indexes": ["account_id", "id"]},
        ]
    }


def test_a_mapped_collection_is_not_offered_since_it_has_no_provenance() -> None:
    settings = Settings(
        collections={
            "slim": {"entity": "user", "fields": {"ltv": "attributes.ltv"}},  # type: ignore[dict-item]
            "users": "user",
            "accounts": "account",
        }
    )
    assert [(one["entity"], one["collection"]) for one in explorer.lookups(settings)] == [
        ("user", "users"),
        ("account", "accounts"),
    ]


async def test_the_rules_are_listed_in_file_order_as_configured_and_active(
    settings: Settings,
) -> None:
    async with api_support.client_for(settings, MemoryProfileStore()) as client:
        answer = await client.get("/explorer/api/rules")
    assert answer.status_code == 200
    assert answer.json() == {
        "rules": [
            {
                "name": "orders_7d",
                "function": "count",
                "window": "7 days",
                "entity": "user",
                "description": "Orders in the last 7 days.",
                "status": "ACTIVE",
                "backfill": None,
                "origin": "file",
                "id": "file:orders_7d",
            },
            {
                "name": "big_spender",
                "function": "derived",
                "window": None,
                "entity": "user",
                "description": "",
                "expression": "spend >= 100.0",
                "status": "ACTIVE",
                "backfill": None,
                "origin": "file",
                "id": "file:big_spender",
            },
            {
                "name": "spend",
                "function": "sum",
                "window": None,
                "entity": "user",
                "description": "Total revenue.",
                "status": "ACTIVE",
                "backfill": None,
                "origin": "file",
                "id": "file:spend",
            },
            {
                "name": "seats",
                "function": "count",
                "window": None,
                "entity": "account",
                "description": "",
                "status": "ACTIVE",
                "backfill": None,
                "origin": "file",
                "id": "file:seats",
            },
        ],
        "rulesVersion": 0,
        "recomputation": None,
    }


async def test_a_recomputation_for_source_delete_jobs_is_listed_with_its_progress(
    settings: Settings,
) -> None:
    catalog = MemoryRuleCatalog()
    await catalog.change(recompute_for("job-1", ["events"]))
    await catalog.set_progress(RECOMPUTATION, {"phase": "reading", "done": 3, "total": 4})
    app = create_app(settings, store=MemoryProfileStore(), catalog=catalog)
    async with api_support.serve(app) as client:
        answer = (await client.get("/explorer/api/rules")).json()
    assert answer["recomputation"] == {
        "jobs": ["job-1"],
        "phase": "computing",
        "backfill": {"phase": "reading", "done": 3, "total": 4},
    }


async def test_attributes_made_through_the_api_follow_with_their_status_and_progress(
    settings: Settings,
) -> None:
    catalog = MemoryRuleCatalog()
    app = create_app(settings, store=MemoryProfileStore(), catalog=catalog)
    made = ManagedAttribute(
        "ca-0123456789ab",
        Status.PROCESSING,
        {
            "name": "orders_30d",
            "function": "count",
            "event": "Order Completed",
            "lookback": {"count": 30, "unit": "days"},
            "description": "Orders in the last 30 days.",
        },
        created_ms=1,
        updated_ms=2,
        progress={"done": 120, "total": 500},
    )
    derived = ManagedAttribute(
        "ca-ba9876543210",
        Status.DRAFT,
        {"name": "big", "function": "derived", "expression": "spend > 100.0"},
        created_ms=3,
        updated_ms=3,
    )
    await catalog.change(lambda _: Change(put=made))
    await catalog.change(lambda _: Change(put=derived))
    async with api_support.serve(app) as client:
        answer = (await client.get("/explorer/api/rules")).json()
    assert [rule["name"] for rule in answer["rules"]] == [
        "orders_7d",
        "big_spender",
        "spend",
        "seats",
        "orders_30d",
        "big",
    ]
    assert answer["rules"][4] == {
        "name": "orders_30d",
        "function": "count",
        "window": "30 days",
        "entity": "user",
        "description": "Orders in the last 30 days.",
        "status": "PROCESSING",
        "backfill": {"done": 120, "total": 500},
        "origin": "api",
        "id": "ca-0123456789ab",
    }
    assert answer["rules"][5] == {
        "name": "big",
        "function": "derived",
        "window": None,
        "entity": "user",
        "description": "",
        "expression": "spend > 100.0",
        "status": "DRAFT",
        "backfill": None,
        "origin": "api",
        "id": "ca-ba9876543210",
    }
    assert answer["rulesVersion"] == 2


async def test_an_unusable_rule_file_is_a_json_503(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(RULES.replace("function: sum", "function: summ"))
    async with api_support.client_for(Settings(rules_path=path), MemoryProfileStore()) as client:
        answer = await client.get("/explorer/api/rules")
    assert answer.status_code == 503
    assert answer.json()["error"].startswith("the rule file cannot be used: ")
    assert "broken.yaml:" in answer.json()["error"]  # where to fix it


async def test_the_data_routes_are_documented_and_the_pages_are_not(settings: Settings) -> None:
    async with api_support.client_for(settings, MemoryProfileStore()) as client:
        spec = (await client.get("/openapi.json")).json()
    for path in ("/explorer/api/entities", "/explorer/api/rules"):
        content = spec["paths"][path]["get"]["responses"]["200"]["content"]
        assert "example" in content["application/json"], path
    assert "/explorer" not in spec["paths"]
    assert "/explorer/assets/{name}" not in spec["paths"]
