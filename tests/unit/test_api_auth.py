"""API keys through the real app: 401, 403, 429 and what gets through."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.keys import MemoryKeyStore
from api.state import state_of
from attributes.profile import ProfileState, encode_state
from tests.unit.api_support import add_key, bearer, serve
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.store import ProfileWrite

pytestmark = pytest.mark.anyio

USER = "/v1/collections/users/records/id/u-1"
ACCOUNT = "/v1/collections/accounts/records/id/a-1"
VIEW = b'{"id":"u-1"}'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def app(clock: Clock) -> FastAPI:
    store = MemoryProfileStore()
    for entity, pid in (("user", "u-1"), ("account", "a-1")):
        state = ProfileState(id=pid)
        await store.save(entity, [ProfileWrite(state, encode_state(state), VIEW)])
    settings = Settings(
        collections={"users": "user", "accounts": "account"}, api_rate_per_s=10.0, api_burst=5
    )
    return create_app(settings, store=store, keys=MemoryKeyStore(clock=clock))


@pytest.fixture
async def anonymous(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app, key=None) as client:
        yield client


def assert_unauthorized(response: httpx.Response, message: str) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"error": message}


async def test_no_key_is_a_401(anonymous: httpx.AsyncClient) -> None:
    assert_unauthorized(
        await anonymous.get(USER),
        "missing API key: send the header 'Authorization: Bearer <key>'",
    )


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Bearer nonsense",
        "Basic dXNlcjpwYXNz",
        "tf_0123456789ab_" + "a" * 43,  # no scheme
        "Token tf_0123456789ab_" + "a" * 43,
    ],
)
async def test_a_malformed_key_is_a_401(anonymous: httpx.AsyncClient, header: str) -> None:
    response = await anonymous.get(USER, headers={"Authorization": header})
    assert_unauthorized(
        response, "malformed API key: expected 'Authorization: Bearer tf_<id>_<secret>'"
    )


async def test_the_scheme_is_case_insensitive(app: FastAPI, anonymous: httpx.AsyncClient) -> None:
    token = await add_key(state_of(app).keys, admin=True)
    response = await anonymous.get(USER, headers={"Authorization": f"bearer {token}"})
    assert response.status_code == 200


async def test_a_wrong_secret_is_a_401(app: FastAPI, anonymous: httpx.AsyncClient) -> None:
    token = await add_key(state_of(app).keys, admin=True)
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert_unauthorized(await anonymous.get(USER, headers=bearer(wrong)), "invalid API key")


async def test_an_unknown_key_is_a_401(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get(USER, headers=bearer("tf_0123456789ab_" + "a" * 43))
    assert_unauthorized(response, "invalid API key")


async def test_a_revoked_key_is_a_401(app: FastAPI, anonymous: httpx.AsyncClient) -> None:
    token = await add_key(state_of(app).keys, admin=True)
    assert (await anonymous.get(USER, headers=bearer(token))).status_code == 200
    assert await state_of(app).keys.revoke(token.split("_")[1])
    assert_unauthorized(await anonymous.get(USER, headers=bearer(token)), "invalid API key")


async def test_a_collection_key_reads_its_collection_only(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    token = await add_key(state_of(app).keys, collections=["users"])
    response = await anonymous.get(USER, headers=bearer(token))
    assert response.status_code == 200
    assert response.content == VIEW
    refused = await anonymous.get(ACCOUNT, headers=bearer(token))
    assert refused.status_code == 403
    assert refused.json() == {"error": "this API key may not read collection 'accounts'"}


async def test_a_destination_key_reads_no_collection(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    token = await add_key(state_of(app).keys, destinations=["d1"])
    assert (await anonymous.get(USER, headers=bearer(token))).status_code == 403


async def test_an_unknown_collection_is_a_403_for_a_scoped_key(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    """A scoped key learns nothing about which collections exist."""
    token = await add_key(state_of(app).keys, collections=["users"])
    response = await anonymous.get("/v1/collections/nope/records/id/x", headers=bearer(token))
    assert response.status_code == 403


async def test_an_admin_key_reads_everything(app: FastAPI) -> None:
    async with serve(app) as admin:
        assert (await admin.get(USER)).content == VIEW
        assert (await admin.get(ACCOUNT)).content == VIEW
        assert (await admin.get("/v1/collections/nope/records/id/x")).status_code == 404


async def test_past_the_burst_is_a_429_with_retry_after(
    app: FastAPI, anonymous: httpx.AsyncClient, clock: Clock
) -> None:
    token = await add_key(state_of(app).keys, collections=["users"])  # settings: 10/s, burst 5
    for _ in range(5):
        assert (await anonymous.get(USER, headers=bearer(token))).status_code == 200
    limited = await anonymous.get(USER, headers=bearer(token))
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1"
    assert limited.json() == {"error": "rate limit exceeded for this API key"}
    clock.now += 0.1  # one token back at 10/s
    assert (await anonymous.get(USER, headers=bearer(token))).status_code == 200
    assert (await anonymous.get(USER, headers=bearer(token))).status_code == 429


async def test_a_key_has_its_own_limits_and_its_own_bucket(
    app: FastAPI, anonymous: httpx.AsyncClient, clock: Clock
) -> None:
    slow = await add_key(state_of(app).keys, admin=True, rate_per_s=0.25, burst=2)
    other = await add_key(state_of(app).keys, admin=True)
    for _ in range(2):
        assert (await anonymous.get(USER, headers=bearer(slow))).status_code == 200
    limited = await anonymous.get(USER, headers=bearer(slow))
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "4"  # a token every 4 s
    assert (await anonymous.get(USER, headers=bearer(other))).status_code == 200
    clock.now += 4.0
    assert (await anonymous.get(USER, headers=bearer(slow))).status_code == 200


async def test_refused_keys_take_no_tokens(app: FastAPI, anonymous: httpx.AsyncClient) -> None:
    """A wrong secret must not drain the bucket of the key whose id it names."""
    token = await add_key(state_of(app).keys, admin=True, burst=1)
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    for _ in range(3):
        assert (await anonymous.get(USER, headers=bearer(wrong))).status_code == 401
    assert (await anonymous.get(USER, headers=bearer(token))).status_code == 200


async def test_healthz_needs_no_key(anonymous: httpx.AsyncClient) -> None:
    assert (await anonymous.get("/healthz")).status_code == 200
