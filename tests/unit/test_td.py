"""Treasure Data's Personalization API (api.td) and its admin routes (api.td_admin),
in process: memory stores, and a publisher that applies each event as a worker would."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from api.app import create_app
from api.keys import MemoryKeyStore
from api.publisher import KeyValue, ListPublisher
from api.state import state_of
from api.td import MESSAGES
from api.td_config import PersonalizationFileError
from api.td_services import MemoryServiceStore
from attributes.offers import CONTENT_TYPE, MAX_TOKENS, hash_token
from attributes.profile import ProfileState, encode_state
from tests.unit.api_support import add_key, bearer, serve
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.store import ProfileWrite

pytestmark = pytest.mark.anyio

SECRET = "s3cret-token-value"
FILE = f"""\
services:
  - name: web
    account_id: "42"
    database: p13n_db
    table: customers
    allowed_ips: ["127.0.0.0/8"]
    tokens: [{{instance_id: site, sha256: {hash_token(SECRET)}}}]
    offers:
      - name: offer_for_high_loyalty
        condition: attributes.spend >= 100.0
        attributes: {{status: "'high'"}}
        batch_segments: ["1588214"]
      - name: vip
        audience: vip
  - name: walled
    account_id: "42"
    database: p13n_db
    table: walled
    allowed_ips: ["10.0.0.0/8"]
    tokens: [{{instance_id: site, sha256: {hash_token("walled-secret")}}}]
"""


#: nested deeper than the worker's event limit (`TRAITFLOW_MAX_EVENT_DEPTH`, 32)
DEEP: Any = []
for _ in range(40):
    DEEP = [DEEP]


class Worker(ListPublisher):
    """Applies each published event to the store as the worker would: a view whose
    `spend` is the event's, and its messageId recorded (unless `applies` is False)."""

    def __init__(self, store: MemoryProfileStore) -> None:
        super().__init__()
        self.store = store
        self.applies = True

    async def publish_batch(self, topic: str, records: Sequence[KeyValue]) -> None:
        await super().publish_batch(topic, records)
        for _, value in records:
            event = orjson.loads(value)
            if not self.applies:
                continue
            email = event["context"]["traits"]["email"]
            state = ProfileState(id=f"email:{email}")
            spend = float(event["properties"].get("spend", 0))
            view = {
                "id": state.id,
                "attributes": {"spend": spend},
                "_audiences": {"vip": spend > 500},
            }
            await self.store.save(
                "user",
                [
                    ProfileWrite(
                        state,
                        encode_state(state),
                        orjson.dumps(view),
                        [("email", email)],
                        messages=[("default", event["messageId"])],
                    )
                ],
            )


@pytest.fixture
def app_parts(tmp_path: Path) -> tuple[Any, MemoryProfileStore, Worker]:
    path = tmp_path / "p13n.yaml"
    path.write_text(FILE)
    store = MemoryProfileStore()
    worker = Worker(store)
    settings = Settings(collections={"users": "user"}, personalization_file=path)
    app = create_app(
        settings,
        store=store,
        keys=MemoryKeyStore(),
        publisher=worker,
        personalization=MemoryServiceStore(),
    )
    return app, store, worker


@pytest.fixture
async def client(
    app_parts: tuple[Any, MemoryProfileStore, Worker],
) -> AsyncIterator[httpx.AsyncClient]:
    app = app_parts[0]
    async with serve(app) as client:
        key = await add_key(
            state_of(app).keys, "td", collections=["users"], burst=5, rate_per_s=0.01
        )
        client.headers["x-td-key"] = key
        yield client


def td(client: httpx.AsyncClient, **override: str) -> dict[str, str]:
    headers = {
        "Content-Type": CONTENT_TYPE,
        "Authorization": f"TD1 42/{client.headers['x-td-key']}",
        "WP13n-Token": f"42/site/{SECRET}",
    }
    headers.update(override)
    return {name: value for name, value in headers.items() if value}


async def call(
    client: httpx.AsyncClient, body: Any, path: str = "/p13n_db/customers", **headers: str
) -> httpx.Response:
    return await client.post(path, content=orjson.dumps(body), headers=td(client, **headers))


async def test_a_call_publishes_its_event_and_answers_the_offers_it_earned(
    client: httpx.AsyncClient, app_parts: tuple[Any, MemoryProfileStore, Worker]
) -> None:
    response = await call(client, {"email": "ada@example.com", "spend": 150})
    assert response.status_code == 200, response.text
    assert response.headers["x-event-applied"] == "true"
    assert response.json() == {
        "offers": {
            "offer_for_high_loyalty": {
                "attributes": {"status": "high"},
                "batch_segments": [{"id": "1588214"}],
            }
        }
    }
    [(topic, key, value)] = app_parts[2].records
    event = orjson.loads(value)
    assert (topic, key, event["type"], event["properties"]) == (
        "traitflow-events",
        b"ada@example.com",
        "track",
        {"spend": 150},
    )
    vip = await call(client, {"email": "ada@example.com", "spend": 900})
    assert set(vip.json()["offers"]) == {"offer_for_high_loyalty", "vip"}
    low = await call(client, {"email": "ada@example.com", "spend": 5})
    assert low.json() == {"offers": {}}


async def test_an_event_not_applied_in_time_answers_the_profile_as_it_is(
    client: httpx.AsyncClient, app_parts: tuple[Any, MemoryProfileStore, Worker]
) -> None:
    app_parts[2].applies = False
    response = await call(client, {"email": "nobody@example.com"})
    assert (response.status_code, response.json()) == (200, {"offers": {}})
    assert response.headers["x-event-applied"] == "timeout"


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "application/vnd.treasuredata.v2+json", ""]
)
async def test_any_other_content_type_is_a_415(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await call(client, {"email": "a@b.c"}, **{"Content-Type": content_type})
    assert response.status_code == 415
    assert CONTENT_TYPE in response.json()["error"]


async def test_a_content_type_with_a_charset_is_fine(client: httpx.AsyncClient) -> None:
    response = await call(
        client, {"email": "a@b.c"}, **{"Content-Type": CONTENT_TYPE + "; charset=utf-8"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("headers", "body", "path", "code"),
    [
        ({"WP13n-Token": ""}, {"email": "a@b.c"}, "/p13n_db/customers", 3000),
        ({"WP13n-Token": "42/other/" + SECRET}, {"email": "a@b.c"}, "/p13n_db/customers", 3001),
        ({"WP13n-Token": "42/site/wrong"}, {"email": "a@b.c"}, "/p13n_db/customers", 3001),
        ({"WP13n-Token": "7/site/" + SECRET}, {"email": "a@b.c"}, "/p13n_db/customers", 3002),
        ({}, {"email": "a@b.c"}, "/p13n_db/elsewhere", 3001),
        ({"WP13n-Token": "42/" + SECRET}, {"email": "a@b.c"}, "/p13n_db/customers", 3003),
        ({"WP13n-Token": "42/site/x/y"}, {"email": "a@b.c"}, "/p13n_db/customers", 3003),
        ({}, {"age": 60}, "/p13n_db/customers", 3004),
        ({}, ["a@b.c"], "/p13n_db/customers", 3004),
        ({}, {"email": "a@b.c", "deep": DEEP}, "/p13n_db/customers", 3004),
        ({"WP13n-Token": "42/site/walled-secret"}, {"email": "a@b.c"}, "/p13n_db/walled", 3005),
    ],
)
async def test_tds_error_codes(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    body: Any,
    path: str,
    code: int,
) -> None:
    response = await call(client, body, path, **headers)
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert response.json()["error"].startswith(MESSAGES[code])


async def test_a_body_that_is_not_json_is_3004(client: httpx.AsyncClient) -> None:
    response = await client.post("/p13n_db/customers", content=b"{", headers=td(client))
    assert (response.status_code, response.json()["code"]) == (400, 3004)


async def test_nothing_is_published_for_a_refused_call(
    client: httpx.AsyncClient, app_parts: tuple[Any, MemoryProfileStore, Worker]
) -> None:
    await call(client, {"age": 1})
    await call(client, {"email": "a@b.c"}, **{"WP13n-Token": "42/site/wrong"})
    assert app_parts[2].records == []


@pytest.mark.parametrize("authorization", ["", "Bearer x", "TD1 42/tf_000000000000_" + "A" * 43])
async def test_a_missing_or_invalid_api_key_is_a_401(
    client: httpx.AsyncClient, authorization: str
) -> None:
    response = await call(client, {"email": "a@b.c"}, Authorization=authorization)
    assert response.status_code == 401


async def test_without_a_valid_key_nothing_is_said_about_tokens(
    client: httpx.AsyncClient,
) -> None:
    response = await call(
        client, {"email": "a@b.c"}, Authorization="TD1 42/nope", **{"WP13n-Token": "42/site/x"}
    )
    assert response.status_code == 401
    assert "code" not in response.json()


async def test_a_key_that_may_not_read_the_entity_is_a_403(
    client: httpx.AsyncClient, app_parts: tuple[Any, MemoryProfileStore, Worker]
) -> None:
    other = await add_key(state_of(app_parts[0]).keys, "other", collections=["accounts"])
    response = await call(client, {"email": "a@b.c"}, Authorization=f"TD1 42/{other}")
    assert response.status_code == 403


async def test_past_the_keys_rate_limit_a_429(client: httpx.AsyncClient) -> None:
    statuses = [(await call(client, {"email": "a@b.c"})).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    refused = await call(client, {"email": "a@b.c"})
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1


async def test_a_broker_that_does_not_take_the_event_is_a_503(
    client: httpx.AsyncClient, app_parts: tuple[Any, MemoryProfileStore, Worker]
) -> None:
    app_parts[2].fail = True
    response = await call(client, {"email": "a@b.c"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"


ADMIN = "/v1/personalization/services"


async def test_services_offers_and_tokens_through_the_admin_api(client: httpx.AsyncClient) -> None:
    created = await client.put(
        f"{ADMIN}/app", json={"account_id": "42", "database": "p13n_db", "table": "app"}
    )
    assert created.status_code == 201, created.text
    offer = await client.put(
        f"{ADMIN}/app/offers/big",
        json={"condition": "attributes.spend > 10.0", "attributes": {"s": "1"}},
    )
    assert offer.status_code == 201, offer.text
    made = await client.post(f"{ADMIN}/app/tokens", json={"instance_id": "mobile"})
    assert made.status_code == 201
    token = made.json()["token"]
    assert token.startswith("42/mobile/")
    listed = (await client.get(ADMIN)).json()["services"]
    app = next(service for service in listed if service["name"] == "app")
    assert app["tokens"] == [{"instance_id": "mobile"}]
    assert app["origin"] == "api"
    assert token.split("/")[2] not in str(listed)  # the secret is shown once, never listed

    answered = await call(
        client, {"email": "b@c.d", "spend": 20}, "/p13n_db/app", **{"WP13n-Token": token}
    )
    assert answered.json() == {"offers": {"big": {"attributes": {"s": 1}, "batch_segments": []}}}

    assert (await client.delete(f"{ADMIN}/app/tokens/mobile")).status_code == 204
    revoked = await call(client, {"email": "b@c.d"}, "/p13n_db/app", **{"WP13n-Token": token})
    assert revoked.json()["code"] == 3001
    assert (await client.delete(f"{ADMIN}/app")).status_code == 204
    assert (await client.delete(f"{ADMIN}/app")).status_code == 404


async def test_at_most_fifty_tokens_through_the_admin_api(client: httpx.AsyncClient) -> None:
    await client.put(f"{ADMIN}/app", json={"account_id": "42", "database": "d", "table": "t"})
    for n in range(MAX_TOKENS):
        made = await client.post(f"{ADMIN}/app/tokens", json={"instance_id": f"i{n}"})
        assert made.status_code == 201
    refused = await client.post(f"{ADMIN}/app/tokens", json={"instance_id": "one-more"})
    assert refused.status_code == 409
    assert "50 tokens" in refused.json()["error"]
    again = await client.post(f"{ADMIN}/app/tokens", json={"instance_id": "i0"})
    assert again.status_code == 409


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("PUT", "/web", {"account_id": "1", "database": "d", "table": "t"}, 409),
        ("PUT", "/app", {"account_id": "1", "database": "d", "table": "t", "tokens": []}, 400),
        ("PUT", "/app", {"account_id": "1", "database": "d", "table": "t", "entity": "x"}, 400),
        ("PUT", "/app", {"account_id": "1", "database": "d"}, 400),
        ("PUT", "/app/offers/o", {"audience": "a"}, 404),
        ("PUT", "/app/offers/o", {"condition": "attributes.x +"}, 400),
        ("PUT", "/app/offers/o", {"condition": "true", "audience": "a"}, 400),
        ("POST", "/app/tokens", {"instance_id": "i"}, 404),
        ("POST", "/web/tokens", {"instance_id": "i"}, 409),
        ("DELETE", "/web", None, 409),
        ("DELETE", "/app/tokens/i", None, 404),
    ],
)
async def test_admin_api_refusals(
    client: httpx.AsyncClient, method: str, path: str, body: Any, status: int
) -> None:
    response = await client.request(method, ADMIN + path, json=body)
    assert response.status_code == status, response.text
    assert "error" in response.json()


async def test_the_admin_api_needs_an_admin_key(
    client: httpx.AsyncClient, app_parts: tuple[Any, MemoryProfileStore, Worker]
) -> None:
    reader = await add_key(state_of(app_parts[0]).keys, "reader", collections=["users"])
    response = await client.get(ADMIN, headers=bearer(reader))
    assert response.status_code == 403


def test_a_broken_file_stops_the_api(tmp_path: Path) -> None:
    path = tmp_path / "p13n.yaml"
    path.write_text(FILE.replace("attributes.spend >= 100.0", "attributes.spend >="))
    with pytest.raises(PersonalizationFileError, match=r"p13n.yaml:9: service 'web'"):
        create_app(Settings(personalization_file=path))
