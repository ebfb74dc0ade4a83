"""README, "Add an API route or an entity": its examples do what it says, done the way
it says (a route module registered with one line; an entity that is configuration)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import orjson
import pytest

from api.app import create_app
from api.keys import MemoryKeyStore
from api.routes import ROUTE_MODULES, routers
from api.state import state_of
from attributes.events import iso_from_ms
from attributes.identities import IdentityRules
from attributes.profile import ProfileState, encode_state
from attributes.rules import load_rules
from streams.processor import BatchProcessor, ListDeadLetters, Record
from tests.unit.api_support import add_key, bearer, serve
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.store import ProfileWrite

pytestmark = pytest.mark.anyio

README = Path(__file__).resolve().parents[2] / "README.md"
TITLE = "## Add an API route or an entity"
MODULE = "readme_known"  # the README's api/known.py, imported under a name of its own


def section() -> str:
    text = README.read_text()
    start = text.index(f"\n{TITLE}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(), re.DOTALL)


@pytest.fixture
def known_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The README's route module, importable as `MODULE`."""
    (tmp_path / f"{MODULE}.py").write_text(blocks("python")[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    return MODULE


def test_the_registration_is_one_line_in_route_modules() -> None:
    registration = blocks("python")[1]
    assert "ROUTE_MODULES" in registration
    lines = [line.strip() for line in registration.splitlines()]
    assert '"api.known",' in lines  # the one line; the others are the registry's own
    assert lines[1] == f'"{ROUTE_MODULES[0]}",'


async def test_the_readme_route_module_serves_once_registered(known_module: str) -> None:
    store = MemoryProfileStore()
    state = ProfileState(id="u-1")
    view = b'{"id":"u-1","attributes":{}}'
    await store.save("user", [ProfileWrite(state, encode_state(state), view, [("user_id", "u-1")])])
    app = create_app(
        Settings(),
        store=store,
        keys=MemoryKeyStore(),
        route_modules=(*ROUTE_MODULES, known_module),  # the README's one line
    )
    async with serve(app) as client:
        found = await client.get("/v1/collections/users/known/user_id/u-1")
        assert found.status_code == 200, found.text
        assert found.json() == {"known": True}
        missing = await client.get("/v1/collections/users/known/user_id/u-2")
        assert missing.json() == {"known": False}
        accounts_only = bearer(await add_key(state_of(app).keys, collections=["accounts"]))
        refused = await client.get("/v1/collections/users/known/user_id/u-1", headers=accounts_only)
        assert refused.status_code == 403
        assert (await client.get("/v1/collections/nope/known/user_id/u-1")).status_code == 404
    async with serve(app, key=None) as anonymous:
        response = await anonymous.get("/v1/collections/users/known/user_id/u-1")
        assert response.status_code == 401


def test_a_module_without_a_router_is_refused_when_the_app_is_made() -> None:
    with pytest.raises(TypeError, match=re.escape("route module api.state has no `router`")):
        routers(("api.operations", "api.state"))


def test_every_registered_module_has_a_router() -> None:
    assert len(routers()) == len(ROUTE_MODULES)


async def test_the_readme_entity_is_built_and_served_from_configuration_alone(
    tmp_path: Path,
) -> None:
    (entities,) = blocks("json")
    (rules_text,) = blocks("yaml")
    settings = Settings.from_environ({"TRAITFLOW_ENTITIES": entities})
    assert list(settings.entities) == ["user", "household"]
    assert settings.collections == {"users": "user", "households": "household"}
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(rules_text)
    rules = load_rules(rules_file, settings.entities)

    store = MemoryProfileStore()
    identities = {name: IdentityRules(spec) for name, spec in settings.entities.items()}
    dead = ListDeadLetters()
    processor = BatchProcessor(rules, store, dead, identities=identities)
    now_ms = int(time.time() * 1000)
    order = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m-1",
        "userId": "u-1",
        "timestamp": iso_from_ms(now_ms - 60_000),
        "context": {"traits": {"household_id": "h-1"}},
    }
    await processor.process([Record("events", 0, 0, orjson.dumps(order), now_ms)])
    assert dead.records == []

    app = create_app(settings, store=store, keys=MemoryKeyStore())
    async with serve(app) as client:
        response = await client.get("/v1/collections/households/records/household_id/h-1")
    assert response.status_code == 200, response.text
    assert response.json()["attributes"] == {"household_orders": 1}
    assert json.loads(entities)["household"]["stitching"] is False
