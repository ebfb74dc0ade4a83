"""`POST /{database}/{table}` (api.td) matches any two-segment POST, being the last
route: a path whose database no personalization service has is the API's own 404,
before any of TD's checks; a service's database keeps TD's contract (415, 3001...)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from api.app import create_app
from api.keys import MemoryKeyStore
from api.publisher import ListPublisher
from api.state import state_of
from api.td import MESSAGES
from api.td_services import MemoryServiceStore
from attributes.offers import CONTENT_TYPE, hash_token
from tests.unit.api_support import add_key, serve
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore

pytestmark = pytest.mark.anyio

SECRET = "paths-secret"
FILE = f"""\
services:
  - name: web
    account_id: "42"
    database: p13n_db
    table: customers
    tokens: [{{instance_id: site, sha256: {hash_token(SECRET)}}}]
"""
ADMIN = "/v1/personalization/services"
NOT_FOUND = {"error": "Not Found"}


@pytest.fixture
def published() -> ListPublisher:
    return ListPublisher()


@pytest.fixture
async def client(tmp_path: Path, published: ListPublisher) -> AsyncIterator[httpx.AsyncClient]:
    path = tmp_path / "p13n.yaml"
    path.write_text(FILE)
    app = create_app(
        Settings(collections={"users": "user"}, personalization_file=path),
        store=MemoryProfileStore(),
        keys=MemoryKeyStore(),
        publisher=published,
        personalization=MemoryServiceStore(),
    )
    async with serve(app) as client:  # with an admin key, for the admin API
        client.headers["x-td-key"] = await add_key(state_of(app).keys, "td", collections=["users"])
        yield client


def td(client: httpx.AsyncClient, content_type: str = CONTENT_TYPE) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "Authorization": f"TD1 42/{client.headers['x-td-key']}",
        "WP13n-Token": f"42/site/{SECRET}",
    }


async def post(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> httpx.Response:
    return await client.post(path, content=orjson.dumps({"email": "a@b.c"}), headers=headers)


@pytest.mark.parametrize(
    "path", ["/v1/nope", "/v1/tracks", "/other_db/customers", "/customers/p13n_db"]
)
@pytest.mark.parametrize("content_type", [CONTENT_TYPE, "application/json", ""])
async def test_a_database_no_service_has_is_the_apis_404_whatever_is_sent(
    client: httpx.AsyncClient, published: ListPublisher, path: str, content_type: str
) -> None:
    headers = td(client, content_type) if content_type else {}
    response = await post(client, path, headers)
    assert (response.status_code, response.json()) == (404, NOT_FOUND), response.text
    assert response.headers["content-type"] == "application/json"
    assert published.records == []


async def test_the_404_is_shaped_as_any_unknown_route(client: httpx.AsyncClient) -> None:
    elsewhere = await client.get("/no/such/route/here")
    two_segments = await post(client, "/v1/nope", {"Content-Type": "application/json"})
    assert (two_segments.status_code, two_segments.json()) == (
        elsewhere.status_code,
        elsewhere.json(),
    )


async def test_a_services_database_keeps_tds_contract(
    client: httpx.AsyncClient, published: ListPublisher
) -> None:
    wrong_type = await post(client, "/p13n_db/customers", td(client, "application/json"))
    assert wrong_type.status_code == 415
    other_table = await post(client, "/p13n_db/elsewhere", td(client, "application/json"))
    assert other_table.status_code == 415
    not_its_table = await post(client, "/p13n_db/elsewhere", td(client))
    assert (not_its_table.status_code, not_its_table.json()["code"]) == (400, 3001)
    assert not_its_table.json()["error"] == MESSAGES[3001]
    served = await post(client, "/p13n_db/customers", td(client))
    assert served.status_code == 200, served.text
    assert len(published.records) == 1


async def test_a_service_made_through_the_admin_api_makes_its_database_known(
    client: httpx.AsyncClient,
) -> None:
    before = await post(client, "/app_db/events", td(client, "application/json"))
    assert before.status_code == 404
    made = await client.put(
        f"{ADMIN}/app", json={"account_id": "42", "database": "app_db", "table": "events"}
    )
    assert made.status_code == 201, made.text
    after = await post(client, "/app_db/events", td(client, "application/json"))
    assert after.status_code == 415
    assert (await client.delete(f"{ADMIN}/app")).status_code == 204
    gone = await post(client, "/app_db/events", td(client))
    assert gone.status_code == 404


async def test_the_404s_are_counted_as_unmatched_paths(client: httpx.AsyncClient) -> None:
    for path in ("/v1/nope", "/v1/other"):
        await post(client, path, td(client))
    await post(client, "/p13n_db/customers", td(client, "text/plain"))
    text = (await client.get("/metrics")).text
    counted = 'traitflow_api_requests_total{method="POST",'
    assert counted + 'route="<unmatched>",status="404"} 2.0' in text
    assert counted + 'route="/{database}/{table}",status="415"} 1.0' in text
    assert 'route="/{database}/{table}",status="404"' not in text
    assert "/v1/nope" not in text


async def test_a_name_no_service_can_have_is_a_400(
    client: httpx.AsyncClient, published: ListPublisher
) -> None:
    """The path's names are constrained like a service's (what the API fuzzer sends as
    invalid input): refused before anything else, as a 400."""
    response = await post(client, "/a b/c", td(client, CONTENT_TYPE))
    assert response.status_code == 400
    assert published.records == []
