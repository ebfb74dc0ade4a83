"""Abuse of Treasure Data's route stays in the API process, as on the `Bearer` routes
(`api.auth.admit_key`, `api.auth_limits`): an unknown key id is looked up once, an
address past its failed authentications gets 429s that look nothing up (behind a
trusted proxy, the address the proxy saw), and a call past its key's rate limit
publishes and reads nothing. Counted by what the key store, the profile store and
the publisher were asked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.keys import new_key
from api.publisher import ListPublisher
from api.state import state_of
from api.td_services import MemoryServiceStore
from attributes.offers import CONTENT_TYPE, hash_token
from tests.unit.api_support import CountingKeys, add_key, keys_of, serve
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.store import MessageKey

pytestmark = pytest.mark.anyio

SECRET = "s3cret-token-value"
FILE = f"""\
services:
  - name: web
    account_id: "42"
    database: p13n_db
    table: customers
    wait_ms: 0
    tokens: [{{instance_id: site, sha256: {hash_token(SECRET)}}}]
"""
PATH = "/p13n_db/customers"
BURST = 3


class CountingStore(MemoryProfileStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def read_views(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[bytes | None]:
        self.reads += 1
        return await super().read_views(entity, lookups)

    async def applied(self, entity: str, messages: Sequence[MessageKey]) -> set[MessageKey]:
        self.reads += 1
        return await super().applied(entity, messages)


def make_app(tmp_path: Path, **changes: Any) -> FastAPI:
    path = tmp_path / "p13n.yaml"
    path.write_text(FILE)
    settings = Settings(
        collections={"users": "user"},
        personalization_file=path,
        api_negative_key_ttl_s=60.0,
        api_auth_failures_per_s=0.001,
        api_auth_failures_burst=BURST,
        **changes,
    )
    return create_app(
        settings,
        store=CountingStore(),
        keys=CountingKeys(),
        publisher=ListPublisher(),
        personalization=MemoryServiceStore(),
    )


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return make_app(tmp_path)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app, key=None) as client:
        yield client


def store_of(app: FastAPI) -> CountingStore:
    store = state_of(app).store
    assert isinstance(store, CountingStore)
    return store


def published(app: FastAPI) -> list[Any]:
    publisher = state_of(app).publisher
    assert isinstance(publisher, ListPublisher)
    return publisher.records


def refusals(app: FastAPI, reason: str) -> float:
    value = state_of(app).metrics.registry.get_sample_value(
        "traitflow_api_refusals_total", {"reason": reason}
    )
    return value or 0.0


async def call(
    client: httpx.AsyncClient, authorization: str | None, **headers: str
) -> httpx.Response:
    sent = {"Content-Type": CONTENT_TYPE, "WP13n-Token": f"42/site/{SECRET}", **headers}
    if authorization is not None:
        sent["Authorization"] = authorization
    return await client.post(PATH, content=orjson.dumps({"email": "a@b.c"}), headers=sent)


def td1(token: str) -> str:
    return f"TD1 42/{token}"


async def test_an_unknown_key_is_looked_up_once(app: FastAPI, client: httpx.AsyncClient) -> None:
    token = new_key("never stored")[1]
    answers = [await call(client, td1(token)) for _ in range(3)]
    assert [a.status_code for a in answers] == [401, 401, 401]
    # TD's 401 as before: no TD error code, no `Bearer` scheme named
    assert answers[2].json() == {"error": "invalid API key"}
    assert "www-authenticate" not in answers[2].headers
    assert keys_of(app).gets == [token.split("_")[1]]
    assert refusals(app, "unknown_key_cached") == 2


async def test_past_its_failures_an_address_gets_429s_that_look_nothing_up(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    answers = [await call(client, td1(new_key("random")[1])) for _ in range(BURST + 2)]
    assert [a.status_code for a in answers] == [401] * BURST + [429, 429]
    assert answers[BURST].json() == {"error": "too many failed authentications from this address"}
    assert answers[BURST].headers["retry-after"] == "1000"
    assert len(keys_of(app).gets) == BURST  # the throttled ones were not looked up
    assert refusals(app, "auth_failures") == 2
    # failures that cost no lookup are refused alike once the address is out
    for authorization in (None, "TD1 42/not-a-key", "Bearer x"):
        assert (await call(client, authorization)).status_code == 429
    assert len(keys_of(app).gets) == BURST


async def test_failures_without_a_lookup_count_against_the_address(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    statuses = [(await call(client, "TD1 42/not-a-key")).status_code for _ in range(BURST + 1)]
    assert statuses == [401] * BURST + [429]
    assert keys_of(app).gets == []


async def test_a_key_already_read_works_from_a_throttled_address(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token = await add_key(keys_of(app), collections=["users"])
    assert (await call(client, td1(token))).status_code == 200
    for _ in range(BURST):
        await call(client, td1(new_key("random")[1]))
    assert (await call(client, td1(new_key("x")[1]))).status_code == 429
    assert (await call(client, td1(token))).status_code == 200
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert (await call(client, td1(wrong))).status_code == 429


async def test_behind_a_trusted_proxy_each_forwarded_address_has_its_own_bucket(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path, api_trusted_proxies=1)
    async with serve(app, key=None) as client:

        async def attempt(address: str, client_written: str = "6.6.6.6") -> int:
            forwarded = {"X-Forwarded-For": f"{client_written}, {address}"}
            return (await call(client, td1(new_key("random")[1]), **forwarded)).status_code

        assert [await attempt("198.51.100.1") for _ in range(BURST + 1)] == [401] * BURST + [429]
        assert await attempt("198.51.100.2") == 401  # another client: its own bucket
        # what the client wrote before the proxy's entry changes nothing
        assert await attempt("198.51.100.1", client_written="198.51.100.9") == 429


async def test_a_call_past_its_keys_rate_limit_publishes_and_reads_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token = await add_key(keys_of(app), collections=["users"], rate_per_s=0.001, burst=2)
    allowed = [await call(client, td1(token)) for _ in range(2)]
    assert [a.status_code for a in allowed] == [200, 200]
    reads, sent = store_of(app).reads, len(published(app))
    assert (reads, sent) == (2, 2)
    refused = [await call(client, td1(token)) for _ in range(5)]
    assert {r.status_code for r in refused} == {429}
    assert refused[0].json() == {"error": "rate limit exceeded for this API key"}
    assert int(refused[0].headers["retry-after"]) >= 1
    assert store_of(app).reads == reads
    assert len(published(app)) == sent
    assert refusals(app, "key_rate_limit") == 5
    assert len(keys_of(app).gets) == 1  # the key's record: read once, then cached


async def test_token_guesses_are_charged_to_the_key(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A valid key cannot try WP13n tokens faster than its rate: each refused token
    costs it a token of its own, and past its burst the guesses get 429s."""
    token = await add_key(keys_of(app), collections=["users"], rate_per_s=0.001, burst=3)
    guesses = [
        (await call(client, td1(token), **{"WP13n-Token": f"42/site/guess-{n}"})).status_code
        for n in range(5)
    ]
    assert guesses == [400, 400, 400, 429, 429]
    assert (await call(client, td1(token))).status_code == 429, "the right token: still throttled"
    assert store_of(app).reads == 0
