"""Records (Hightouch shape): single reads, `fields`, the batch read, limits and scopes."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import orjson
import pytest

from attributes.profile import ProfileState, encode_state
from tests.unit import api_support
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.store import ProfileWrite

pytestmark = pytest.mark.anyio

SETTINGS = Settings(collections={"users": "user"}, max_id_length=16, max_batch_lookups=3)


def view(pid: str, ltv: float) -> bytes:
    # spacing no re-encoder makes: a record must be the stored bytes as they are
    return (
        b'{"id": "%s", "entity": "user", "identities": {"user_id": ["%s"]}, '
        b'"traits": {"plan": "pro"}, "attributes": {"lifetime_value": %s, "purchase_count": 2}, '
        b'"version": 3}' % (pid.encode(), pid.encode(), str(ltv).encode())
    )


U1, U2 = view("u-1", 10.5), view("u-2", 20.0)


class CountingStore(MemoryProfileStore):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[tuple[str, str]]] = []

    async def read_views(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[bytes | None]:
        self.batches.append(list(lookups))
        return await super().read_views(entity, lookups)


@pytest.fixture
async def store() -> CountingStore:
    store = CountingStore()
    for pid, raw, identities in (
        ("u-1", U1, [("user_id", "u-1"), ("anonymous_id", "a-1")]),
        ("u-2", U2, [("user_id", "u-2"), ("email", "b@c.d")]),
    ):
        state = ProfileState(id=pid)
        await store.save("user", [ProfileWrite(state, encode_state(state), raw, identities)])
    return store


#: the one place a test client is built: `client_for(store, token=..., **scopes)`
client_for = functools.partial(api_support.client_for, SETTINGS)


@pytest.fixture
async def client(store: CountingStore) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(store) as client:
        yield client


BASE = "/v1/collections/users/records"


@pytest.mark.parametrize(
    "path", [f"{BASE}/user_id/u-1", f"{BASE}/id/u-1", f"{BASE}/anonymous_id/a-1"]
)
async def test_a_record_is_the_stored_bytes(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.content == U1
    assert response.headers["content-type"] == "application/json"


async def test_fields_project_the_record(client: httpx.AsyncClient) -> None:
    response = await client.get(
        f"{BASE}/user_id/u-1", params={"fields": "id,attributes.lifetime_value"}
    )
    assert response.status_code == 200
    assert response.json() == {"id": "u-1", "attributes": {"lifetime_value": 10.5}}


async def test_empty_fields_is_the_whole_record(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{BASE}/user_id/u-1", params={"fields": ""})
    assert response.content == U1


async def test_missing_record_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{BASE}/user_id/nobody")
    assert response.status_code == 404
    assert response.json() == {"error": "no record with user_id = 'nobody' in 'users'"}


async def test_unknown_collection_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/collections/accounts/records/id/u-1")
    assert response.status_code == 404
    assert response.json() == {"error": "collection 'accounts' not found"}


async def test_a_value_over_the_length_limit_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{BASE}/user_id/{'x' * 17}")
    assert response.status_code == 400
    assert response.json() == {"error": "value should be at most 16 characters"}
    assert (await client.get(f"{BASE}/user_id/{'x' * 16}")).status_code == 404


async def test_no_token_is_a_401(store: CountingStore) -> None:
    async with client_for(store, token=False) as client:
        for response in (
            await client.get(f"{BASE}/id/u-1"),
            await client.post(f"{BASE}/batch", json={"lookups": [{"index": "id", "value": "u-1"}]}),
        ):
            assert response.status_code == 401
            assert "error" in response.json()


async def test_a_key_without_the_collection_is_a_403(store: CountingStore) -> None:
    async with client_for(store, collections=["others"]) as client:
        single = await client.get(f"{BASE}/id/u-1")
        batch = await client.post(
            f"{BASE}/batch", json={"lookups": [{"index": "id", "value": "u-1"}]}
        )
    for response in (single, batch):
        assert response.status_code == 403
        assert response.json() == {"error": "this API key may not read collection 'users'"}
    assert store.batches == []


async def test_a_key_with_the_collection_reads_it(store: CountingStore) -> None:
    async with client_for(store, collections=["users"]) as client:
        assert (await client.get(f"{BASE}/id/u-1")).content == U1


async def test_batch_answers_in_request_order_with_null_for_missing(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    lookups = [
        {"index": "email", "value": "b@c.d"},
        {"index": "user_id", "value": "nobody"},
        {"index": "id", "value": "u-1"},
    ]
    response = await client.post(f"{BASE}/batch", json={"lookups": lookups})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == b'{"records":[' + U2 + b",null," + U1 + b"]}"
    assert store.batches == [[("email", "b@c.d"), ("user_id", "nobody"), ("id", "u-1")]]


async def test_batch_fields_project_every_record(client: httpx.AsyncClient) -> None:
    lookups = [{"index": "id", "value": "u-2"}, {"index": "id", "value": "zz"}]
    response = await client.post(
        f"{BASE}/batch", params={"fields": "id"}, json={"lookups": lookups}
    )
    assert response.json() == {"records": [{"id": "u-2"}, None]}


async def test_batch_of_an_unknown_collection_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/collections/accounts/records/batch", json={"lookups": [{"index": "id", "value": "x"}]}
    )
    assert response.status_code == 404
    assert response.json() == {"error": "collection 'accounts' not found"}


def lookups(count: int, value: str = "u-1") -> dict[str, Any]:
    return {"lookups": [{"index": "id", "value": value}] * count}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (lookups(0), "lookups should have at least one item"),
        (lookups(4), "lookups should have at most 3 items, not 4"),
        (lookups(1, "x" * 17), "lookups.0.value should be at most 16 characters"),
        (
            {"lookups": [{"index": "i" * 17, "value": "v"}]},
            "lookups.0.index should be at most 16 characters",
        ),
        ({}, "body.lookups: Field required"),
        ({"lookups": "u-1"}, "body.lookups: Input should be a valid list"),
        ({"lookups": [{"index": "id"}]}, "body.lookups.0.value: Field required"),
        (
            {"lookups": [{"index": "id", "value": 5}]},
            "body.lookups.0.value: Input should be a valid string",
        ),
        (
            {"lookups": [["id", "u-1"]]},
            "body.lookups.0: Input should be a valid dictionary or object",
        ),
        ({"lookups": [], "extra": 1}, "body.extra: Extra inputs are not permitted"),
    ],
)
async def test_malformed_batches_are_400s(
    client: httpx.AsyncClient, store: CountingStore, body: Any, message: str
) -> None:
    response = await client.post(f"{BASE}/batch", json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert store.batches == []


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[]", "application/json"),
        (b"lookups=1", "application/x-www-form-urlencoded"),
        (b"", "application/json"),
    ],
)
async def test_bad_bodies_are_400s(
    client: httpx.AsyncClient, content: bytes, content_type: str
) -> None:
    response = await client.post(
        f"{BASE}/batch", content=content, headers={"content-type": content_type}
    )
    assert response.status_code == 400
    assert response.json()["error"]


async def test_the_batch_limit_is_inclusive(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{BASE}/batch", json=lookups(3))
    assert response.status_code == 200
    assert orjson.loads(response.content)["records"] == [orjson.loads(U1)] * 3


async def test_a_lookup_is_normalised_as_its_identity_type_is_indexed(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    """Emails are indexed trimmed and lower-cased: a read in any case finds them, in
    the single read and in the batch alike."""
    single = await client.get(f"{BASE}/email/B@C.D")
    batch = await client.post(
        f"{BASE}/batch", json={"lookups": [{"index": "email", "value": " b@C.d"}]}
    )
    assert single.content == U2
    assert batch.json()["records"][0]["id"] == "u-2"
    assert store.batches[-1] == [("email", "b@c.d")]
    case_kept = await client.get(f"{BASE}/anonymous_id/A-1")  # ids keep their case
    assert case_kept.status_code == 404
