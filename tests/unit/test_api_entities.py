"""Entities (Adobe shape): `GET` and `POST /access/entities`, layout, limits, scopes."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import orjson
import pytest

from api.app import create_app
from api.keys import MemoryKeyStore
from attributes.policies import MergePolicy
from attributes.profile import ProfileState, encode_state
from tests.unit import api_support
from tests.unit.api_support import serve
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.store import ProfileWrite

pytestmark = pytest.mark.anyio

SETTINGS = Settings(
    collections={"people": "user"},
    merge_policies={"mp-default": MergePolicy()},
    default_merge_policy="mp-default",
    max_id_length=16,
    max_batch_lookups=4,
)
SCHEMA = "_xdm.context.profile"


def view(pid: str, email: str, ltv: float) -> bytes:
    return orjson.dumps(
        {
            "id": pid,
            "entity": "user",
            "identities": {"user_id": [pid], "email": [email]},
            "traits": {"plan": "pro"},
            "attributes": {"lifetime_value": ltv, "purchase_count": 1},
            "first_seen": "2026-10-01T10:00:00.000Z",
            "last_seen": "2026-11-04T09:00:00.000Z",
            "version": 2,
        }
    )


class CountingStore(MemoryProfileStore):
    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    async def read_views(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[bytes | None]:
        self.batches += 1
        return await super().read_views(entity, lookups)


@pytest.fixture
async def store() -> CountingStore:
    store = CountingStore()
    for pid, email, ltv in (("u-1", "a@x.io", 10.0), ("u-2", "b@x.io", 20.0)):
        state = ProfileState(id=pid)
        raw = view(pid, email, ltv)
        identities = [("user_id", pid), ("email", email)]
        await store.save("user", [ProfileWrite(state, encode_state(state), raw, identities)])
    return store


#: the one place a test client is built: `client_for(store, token=..., **scopes)`
client_for = functools.partial(api_support.client_for, SETTINGS)


@pytest.fixture
async def client(store: CountingStore) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(store) as client:
        yield client


def query(**changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"schema.name": SCHEMA, "entityId": "a@x.io", "entityIdNS": "email"}
    params.update(changes)
    return {key: value for key, value in params.items() if value is not ...}


U1_ENTITY = {
    "identities": [
        {"id": "u-1", "namespace": {"code": "user_id"}},
        {"id": "a@x.io", "namespace": {"code": "email"}},
    ],
    "traits": {"plan": "pro"},
    "attributes": {"lifetime_value": 10.0, "purchase_count": 1},
}


async def test_get_answers_in_adobes_layout(client: httpx.AsyncClient) -> None:
    response = await client.get("/access/entities", params=query())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "u-1": {
            "entityId": "u-1",
            "entity": U1_ENTITY,
            "lastModifiedAt": "2026-11-04T09:00:00.000Z",
        }
    }


@pytest.mark.parametrize(
    "changes",
    [
        {"entityId": "u-1", "entityIdNS": "user_id"},
        {"entityId": "u-1", "entityIdNS": ...},
        {"entityId": "u-1", "entityIdNS": "id"},
        {"mergePolicyId": "mp-default"},
    ],
)
async def test_get_by_other_identities(client: httpx.AsyncClient, changes: dict[str, Any]) -> None:
    response = await client.get("/access/entities", params=query(**changes))
    assert response.status_code == 200
    assert list(response.json()) == ["u-1"]


async def test_get_fields_project_the_entity(client: httpx.AsyncClient) -> None:
    params = query(fields="attributes.lifetime_value,traits")
    response = await client.get("/access/entities", params=params)
    assert response.json()["u-1"]["entity"] == {
        "traits": {"plan": "pro"},
        "attributes": {"lifetime_value": 10.0},
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"entityId": "nobody@x.io"}, "no profile with email = 'nobody@x.io'"),
        ({"entityIdNS": "ECID"}, "no profile with ECID = 'a@x.io'"),
        ({"mergePolicyId": "other"}, "merge policy 'other' not found"),
    ],
)
async def test_get_404s(client: httpx.AsyncClient, changes: dict[str, Any], message: str) -> None:
    response = await client.get("/access/entities", params=query(**changes))
    assert response.status_code == 404
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schema.name": ...}, "query.schema.name: Field required"),
        ({"schema.name": "_xdm.context.experienceevent"}, "is not served"),
        ({"entityId": ...}, "query.entityId: Field required"),
        ({"entityId": "x" * 17}, "entityId should be at most 16 characters"),
        ({"entityIdNS": "n" * 17}, "entityIdNS should be at most 16 characters"),
    ],
)
async def test_get_400s(client: httpx.AsyncClient, changes: dict[str, Any], message: str) -> None:
    response = await client.get("/access/entities", params=query(**changes))
    assert response.status_code == 400
    assert message in response.json()["error"]


async def test_no_token_is_a_401(store: CountingStore) -> None:
    async with client_for(store, token=False) as client:
        assert (await client.get("/access/entities", params=query())).status_code == 401
        assert (await client.post("/access/entities", json=batch())).status_code == 401


async def test_a_key_without_the_profile_collection_is_a_403(store: CountingStore) -> None:
    async with client_for(store, collections=["others"]) as client:
        for response in (
            await client.get("/access/entities", params=query()),
            await client.post("/access/entities", json=batch()),
        ):
            assert response.status_code == 403
            assert response.json() == {"error": "this API key may not read collection 'people'"}


async def test_a_key_with_the_profile_collection_reads(store: CountingStore) -> None:
    async with client_for(store, collections=["people"]) as client:
        assert (await client.get("/access/entities", params=query())).status_code == 200


async def test_no_collection_serving_users_is_a_404(store: CountingStore) -> None:
    app = create_app(
        Settings(collections={"accounts": "account"}, destinations={}),
        store=store,
        keys=MemoryKeyStore(),
    )
    async with serve(app) as client:
        response = await client.get("/access/entities", params=query())
    assert response.status_code == 404
    assert response.json() == {"error": "no collection serves the 'user' entity"}


def identity(value: str, namespace: str | None = "email") -> dict[str, Any]:
    found: dict[str, Any] = {"entityId": value}
    if namespace is not None:
        found["entityIdNS"] = {"code": namespace}
    return found


def batch(*identities: dict[str, Any], **changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "schema": {"name": SCHEMA},
        "identities": list(identities) or [identity("a@x.io")],
    }
    request.update(changes)
    return request


async def test_post_keys_profiles_by_id_with_their_requested_identities(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    request = batch(
        identity("b@x.io"),
        identity("nobody@x.io"),
        identity("u-1", "user_id"),
        identity("u-2", None),
        timeFilter={"startTime": 0},  # Adobe's other keys are ignored
    )
    response = await client.post("/access/entities", json=request)
    assert response.status_code == 200
    answer = response.json()
    assert list(answer) == ["u-2", "u-1"]
    assert answer["u-2"]["requestedIdentities"] == [identity("b@x.io"), identity("u-2", None)]
    assert answer["u-1"] == {
        "requestedIdentities": [identity("u-1", "user_id")],
        "entityId": "u-1",
        "entity": U1_ENTITY,
        "lastModifiedAt": "2026-11-04T09:00:00.000Z",
    }
    assert store.batches == 1


async def test_post_fields_and_merge_policy(client: httpx.AsyncClient) -> None:
    request = batch(fields=["attributes.purchase_count"], mergePolicyId="mp-default")
    response = await client.post("/access/entities", json=request)
    assert response.json()["u-1"]["entity"] == {"attributes": {"purchase_count": 1}}


async def test_post_nothing_found_is_an_empty_object(client: httpx.AsyncClient) -> None:
    response = await client.post("/access/entities", json=batch(identity("no@x.io")))
    assert response.status_code == 200
    assert response.json() == {}


async def test_post_unknown_merge_policy_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/access/entities", json=batch(mergePolicyId="x"))
    assert response.status_code == 404
    assert "merge policy 'x' not found" in response.json()["error"]


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        (batch(identities=[]), "identities should have at least one item"),
        (batch(*[identity("a@x.io")] * 5), "identities should have at most 4 items, not 5"),
        (batch(identity("x" * 17)), "identities.0.entityId should be at most 16 characters"),
        (batch(identity("x", "n" * 17)), "identities.0.entityIdNS.code should be at most 16"),
        (batch(schema={"name": "other"}), "schema.name 'other' is not served"),
        ({"identities": [identity("a@x.io")]}, "body.schema: Field required"),
        (batch(identities="a@x.io"), "body.identities: Input should be a valid list"),
        (batch(identity("a@x.io") | {"entityIdNS": "email"}), "body.identities.0.entityIdNS"),
        (batch({"entityIdNS": {"code": "email"}}), "body.identities.0.entityId: Field required"),
        (batch(fields="a,b"), "body.fields: Input should be a valid list"),
    ],
)
async def test_post_400s(
    client: httpx.AsyncClient, store: CountingStore, request_body: Any, message: str
) -> None:
    response = await client.post("/access/entities", json=request_body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert store.batches == 0


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"{not json", "application/json"), (b"[]", "application/json"), (b"a=b", "text/plain")],
)
async def test_post_bad_bodies_are_400s(
    client: httpx.AsyncClient, content: bytes, content_type: str
) -> None:
    response = await client.post(
        "/access/entities", content=content, headers={"content-type": content_type}
    )
    assert response.status_code == 400
    assert response.json()["error"]


async def test_every_entity_is_served_under_its_own_schema(store: CountingStore) -> None:
    """`_xdm.context.account` (Adobe's B2B account schema) is the `account` entity."""
    state = ProfileState(id="acme", entity="account")
    account = orjson.dumps(
        {
            "id": "acme",
            "entity": "account",
            "identities": {"account_id": ["acme"]},
            "traits": {"plan": "enterprise"},
            "attributes": {"seats": 40},
            "version": 1,
        }
    )
    write = ProfileWrite(state, encode_state(state), account, [("account_id", "acme")])
    await store.save("account", [write])
    settings = Settings(
        collections={"people": "user", "accounts": "account"},
        merge_policies={"mp-default": MergePolicy()},
        default_merge_policy="mp-default",
    )
    async with api_support.client_for(settings, store) as client:
        params = {"schema.name": "_xdm.context.account", "entityId": "acme"}
        params["entityIdNS"] = "account_id"
        got = await client.get("/access/entities", params=params)
        posted = await client.post(
            "/access/entities",
            json={
                "schema": {"name": "_xdm.context.account"},
                "identities": [{"entityId": "acme", "entityIdNS": {"code": "account_id"}}],
            },
        )
        unserved = await client.get("/access/entities", params=query(**{"schema.name": "x"}))
    assert got.status_code == 200
    assert got.json()["acme"]["entity"]["attributes"] == {"seats": 40}
    assert posted.json()["acme"]["entity"]["traits"] == {"plan": "enterprise"}
    assert unserved.status_code == 400
    assert unserved.json()["error"] == (
        "schema.name 'x' is not served: use one of _xdm.context.account, _xdm.context.profile"
    )
