"""Activation (RudderStack shape): statuses, messages and the destination's `data`."""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from api.activation import INVALID_DESTINATION, UNAUTHORIZED
from attributes.profile import ProfileState, encode_state
from tests.unit import api_support
from traitflow.config import Destination, Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.store import ProfileWrite

pytestmark = pytest.mark.anyio

SETTINGS = Settings(
    collections={"users": "user", "accounts": "account"},
    destinations={
        "web": Destination(
            entity="user", attributes=["purchase_count", "lifetime_value", "absent"]
        ),
        "crm": Destination(entity="account", attributes=["seats"]),
    },
    max_id_length=16,
)

VIEW = orjson.dumps(
    {
        "id": "u-1",
        "entity": "user",
        "identities": {"user_id": ["u-1"], "anonymous_id": ["a-1"]},
        "traits": {"email": "ada@example.com"},
        "attributes": {"lifetime_value": 70.5, "purchase_count": 3, "secret_score": 0.9},
        "version": 4,
    }
)


@pytest.fixture
async def store() -> MemoryProfileStore:
    store = MemoryProfileStore()
    state = ProfileState(id="u-1")
    identities = [("user_id", "u-1"), ("anonymous_id", "a-1")]
    await store.save("user", [ProfileWrite(state, encode_state(state), VIEW, identities)])
    return store


#: the one place a test client is built: `client_for(store, token=..., **scopes)`
client_for = functools.partial(api_support.client_for, SETTINGS)


@pytest.fixture
async def client(store: MemoryProfileStore) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(store) as client:
        yield client


def body(**changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "entity": "user",
        "destinationId": "web",
        "id": {"type": "user_id", "value": "u-1"},
    }
    request.update(changes)
    return {key: value for key, value in request.items() if value is not ...}


@pytest.mark.parametrize(
    "identity",
    [
        {"type": "user_id", "value": "u-1"},
        {"type": "id", "value": "u-1"},
        {"type": "anonymous_id", "value": "a-1"},
    ],
)
async def test_data_is_the_destination_attributes(
    client: httpx.AsyncClient, identity: dict[str, str]
) -> None:
    response = await client.post("/v2/activation", json=body(id=identity))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "entity": "user",
        "id": identity,
        "data": {"purchase_count": 3, "lifetime_value": 70.5},
    }


async def test_an_unknown_id_is_empty_data(client: httpx.AsyncClient) -> None:
    for identity in ({"type": "user_id", "value": "nobody"}, {"type": "phone", "value": "u-1"}):
        response = await client.post("/v2/activation", json=body(id=identity))
        assert response.status_code == 200
        assert response.json() == {"entity": "user", "id": identity, "data": {}}


async def test_the_default_destination_serves_the_example_rules() -> None:
    destination = Settings().destinations["web-personalisation"]
    assert destination.entity == "user"
    assert "lifetime_value" in destination.attributes


@pytest.mark.parametrize("destination", [..., "", "   ", None, 5, ["web"], "nope"])
async def test_an_absent_blank_or_unknown_destination_is_a_404(
    client: httpx.AsyncClient, destination: Any
) -> None:
    response = await client.post("/v2/activation", json=body(destinationId=destination))
    assert response.status_code == 404
    assert response.json() == {"error": INVALID_DESTINATION}


async def test_no_token_is_a_401_with_rudderstacks_message(store: MemoryProfileStore) -> None:
    async with client_for(store, token=False) as client:
        response = await client.post("/v2/activation", json=body())
        assert response.status_code == 401
        assert response.json() == {"error": UNAUTHORIZED}
        assert response.headers["www-authenticate"] == "Bearer"
        bad = await client.post(
            "/v2/activation", json=body(), headers={"Authorization": "Bearer nonsense"}
        )
        assert bad.status_code == 401
        assert bad.json() == {"error": UNAUTHORIZED}


async def test_a_token_without_the_destination_is_a_401(store: MemoryProfileStore) -> None:
    async with client_for(store, destinations=["crm"]) as client:
        response = await client.post("/v2/activation", json=body())
        assert response.status_code == 401
        assert response.json() == {"error": UNAUTHORIZED}
        # an unknown destination does not tell a scoped key that it does not exist
        assert (
            await client.post("/v2/activation", json=body(destinationId="x"))
        ).status_code == 401


async def test_a_token_with_the_destination_reads_it(store: MemoryProfileStore) -> None:
    async with client_for(store, destinations=["web"]) as client:
        response = await client.post("/v2/activation", json=body())
        assert response.status_code == 200
        assert response.json()["data"] == {"purchase_count": 3, "lifetime_value": 70.5}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"id": ...}, "id should have at least one item"),
        ({"id": None}, "id should have at least one item"),
        ({"id": {}}, "id should have at least one item"),
        ({"id": "u-1"}, "id should be an object with type and value"),
        ({"id": ["user_id", "u-1"]}, "id should be an object with type and value"),
        ({"id": {"value": "u-1"}}, "id.type should be a non-empty string"),
        ({"id": {"type": " ", "value": "u-1"}}, "id.type should be a non-empty string"),
        ({"id": {"type": 1, "value": "u-1"}}, "id.type should be a non-empty string"),
        ({"id": {"type": "user_id"}}, "id.value should be a non-empty string"),
        ({"id": {"type": "user_id", "value": ""}}, "id.value should be a non-empty string"),
        ({"id": {"type": "user_id", "value": 10**30}}, "id.value should be a non-empty string"),
        (
            {"id": {"type": "user_id", "value": "x" * 17}},
            "id.value should be at most 16 characters",
        ),
        ({"id": {"type": "t" * 17, "value": "x"}}, "id.type should be at most 16 characters"),
        ({"entity": ...}, "entity should be a non-empty string"),
        ({"entity": ""}, "entity should be a non-empty string"),
        (
            {"entity": "account"},
            "entity 'account' is not served by destination 'web' (it serves 'user')",
        ),
    ],
)
async def test_malformed_requests_are_400_messages(
    client: httpx.AsyncClient, changes: dict[str, Any], message: str
) -> None:
    response = await client.post("/v2/activation", json=body(**changes))
    assert response.status_code == 400
    assert response.json() == {"message": message}


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b"[]", "application/json"),
        (b'"text"', "application/json"),
        (b"entity=user", "application/x-www-form-urlencoded"),
        (b"\xff\xfe", "application/octet-stream"),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_a_400(
    client: httpx.AsyncClient, content: bytes, content_type: str
) -> None:
    response = await client.post(
        "/v2/activation", content=content, headers={"content-type": content_type}
    )
    assert response.status_code == 400
    assert response.json()["message"].startswith("request body should be a JSON object")


async def test_get_is_a_405(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/activation")).status_code == 405


def test_a_destination_of_an_unserved_entity_fails_at_startup() -> None:
    with pytest.raises(ValidationError, match="'crm' serves entity 'account', which no collection"):
        Settings(collections={"users": "user"}, destinations={"crm": Destination(entity="account")})
    with pytest.raises(ValidationError, match="must not be blank"):
        Settings(destinations={" ": Destination(entity="user")})
    with pytest.raises(ValidationError, match="entity"):
        Settings.model_validate({"destinations": {"d": {"attributes": ["x"]}}})


def test_destinations_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "TRAITFLOW_DESTINATIONS", '{"app": {"entity": "user", "attributes": ["loyal"]}}'
    )
    settings = Settings.from_environ(os.environ)
    assert settings.destinations == {"app": Destination(entity="user", attributes=["loyal"])}
    assert Settings.from_environ(os.environ).as_env()["TRAITFLOW_DESTINATIONS"] == (
        '{"app": {"entity": "user", "attributes": ["loyal"]}}'
    )


async def test_a_destination_may_serve_identify_traits_too(store: MemoryProfileStore) -> None:
    """RudderStack serves every column of the customer-360 table: traits included."""
    settings = Settings(
        collections={"users": "user"},
        destinations={
            "crm-sync": Destination(entity="user", attributes=["purchase_count"], traits=["*"])
        },
    )
    async with api_support.client_for(settings, store) as client:
        response = await client.post("/v2/activation", json=body(destinationId="crm-sync"))
    assert response.status_code == 200
    assert response.json()["data"] == {"purchase_count": 3, "email": "ada@example.com"}
