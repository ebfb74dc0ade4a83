from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from api.app import create_app
from api.keys import MemoryKeyStore
from api.state import state_of
from attributes.profile import ProfileState, encode_state
from tests.unit.api_support import serve
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.state_cache import CachedProfileStore
from traitflow.store import ProfileWrite

pytestmark = pytest.mark.anyio

#: Stored as the worker wrote it; spacing and key order are not what a re-encoder makes.
VIEW = b'{"id":"u-1",  "attributes": {"lifetime_value": 190.50, "last": "\\u00e9t\\u00e9"}}'


@pytest.fixture
async def store() -> MemoryProfileStore:
    store = MemoryProfileStore()
    state = ProfileState(id="u-1")
    await store.save(
        "user",
        [ProfileWrite(state, encode_state(state), VIEW, [("user_id", "u-1"), ("email", "a@b.c")])],
    )
    return store


@pytest.fixture
async def client(store: MemoryProfileStore) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(collections={"users": "user"}), store=store, keys=MemoryKeyStore())
    async with serve(app) as client:
        yield client


@pytest.mark.parametrize(
    "path",
    [
        "/v1/collections/users/records/user_id/u-1",
        "/v1/collections/users/records/id/u-1",
        "/v1/collections/users/records/email/a@b.c",
    ],
)
async def test_a_record_is_the_stored_bytes(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.content == VIEW
    assert response.headers["content-type"] == "application/json"


async def test_a_value_is_url_decoded(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/collections/users/records/email/a%40b.c")
    assert response.content == VIEW


async def test_unknown_record_is_a_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/collections/users/records/user_id/u-2")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "no record with user_id = 'u-2' in 'users'"}


async def test_unknown_index_is_a_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/collections/users/records/phone/u-1")
    assert response.status_code == 404
    assert response.json() == {"error": "no record with phone = 'u-1' in 'users'"}


async def test_unknown_collection_is_a_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/collections/accounts/records/user_id/u-1")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "collection 'accounts' not found"}


async def test_unknown_route_is_a_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/collections/users/records/user_id")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "Not Found"}


async def test_wrong_method_is_a_json_405(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/collections/users/records/user_id/u-1")
    assert response.status_code == 405
    assert response.json() == {"error": "Method Not Allowed"}


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "ok"}


async def test_collections_come_from_settings(store: MemoryProfileStore) -> None:
    app = create_app(Settings(collections={"people": "user"}), store=store)
    async with serve(app) as client:
        assert (await client.get("/v1/collections/people/records/id/u-1")).content == VIEW
        assert (await client.get("/v1/collections/users/records/id/u-1")).status_code == 404


async def test_the_lifespan_closes_the_store() -> None:
    class Closing(MemoryProfileStore):
        closed = False

        async def close(self) -> None:
            self.closed = True

    store = Closing()
    app = create_app(Settings(collections={"users": "user"}), store=store)
    async with serve(app) as client:
        assert state_of(app).store is store
        assert (await client.get("/healthz")).status_code == 200
        assert not store.closed
    assert store.closed


async def test_the_given_store_is_used_even_when_empty() -> None:
    store = CachedProfileStore(MemoryProfileStore(), max_profiles=10)
    app = create_app(Settings(collections={"users": "user"}), store=store)
    async with app.router.lifespan_context(app):
        assert state_of(app).store is store
