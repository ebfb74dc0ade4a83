"""The API's services are one typed object (`api.state.ApiState`) that the app factory
makes and attaches: routes, middleware and handlers get it through `api.state`, and
nothing else lives on `app.state`."""

from __future__ import annotations

import ast
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.state import ATTRIBUTE, ApiState, state_of
from tests.unit.api_support import serve
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore

pytestmark = pytest.mark.anyio

API = Path(__file__).resolve().parents[2] / "api"


def test_only_api_state_touches_app_state() -> None:
    """A route that read `request.app.state.<x>` would use an untyped attribute that
    nothing declares; `api.state.services(request)` is the way in."""
    found = []
    for path in sorted(API.rglob("*.py")):
        if path.name == "state.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "state":
                found.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Constant) and node.value == "state":
                found.append(f"{path.name}:{node.lineno} (a 'state' string)")
    assert found == []


def test_the_factory_attaches_one_typed_state_and_nothing_else() -> None:
    settings = Settings()
    app = create_app(settings, store=MemoryProfileStore())
    state = state_of(app)
    assert isinstance(state, ApiState)
    assert state.settings is settings
    assert set(state.identities) == set(settings.entities)
    # the middleware's metrics are the state's, not an attribute it adds itself
    assert app.state._state.keys() == {ATTRIBUTE}


async def test_the_middleware_counts_in_the_states_metrics() -> None:
    app = create_app(Settings(), store=MemoryProfileStore())
    async with serve(app, key=None) as client:
        assert (await client.get("/healthz")).status_code == 200
    sample = state_of(app).metrics.registry.get_sample_value(
        "traitflow_api_requests_total", {"method": "GET", "route": "/healthz", "status": "200"}
    )
    assert sample == 1.0


async def test_the_lifespan_sets_the_stores_and_readiness_waits_for_them() -> None:
    store = MemoryProfileStore()
    app = create_app(Settings(), store=store)
    assert not state_of(app).is_open()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        before = await client.get("/readyz")  # no lifespan has run
    assert before.status_code == 503
    assert before.json()["error"] == "redis: store not open"
    async with serve(app) as client:
        assert state_of(app).is_open()
        assert state_of(app).store is store
        assert (await client.get("/readyz")).status_code == 200
