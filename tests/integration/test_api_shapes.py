"""The three read shapes, against the real worker, Redis and API server."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.conftest import Publisher, create_key, user_id, wait_until
from tests.integration.oracle import expected_view
from traitflow.config import Settings
from traitflow.redis_store import RedisProfileStore
from traitflow.services import Daemon
from traitflow.state_cache import CachedProfileStore

pytestmark = pytest.mark.integration

DESTINATION = "web-personalisation"


def events(user: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "identify",
            "messageId": f"{user}-1",
            "userId": user,
            "anonymousId": f"anon-{user}",
            "traits": {"email": f"{user}@example.com"},
            "timestamp": "2026-11-01T09:00:00Z",
        },
        {
            "type": "track",
            "event": "Order Completed",
            "messageId": f"{user}-2",
            "userId": user,
            "properties": {"revenue": 42.5, "product_id": "sku-1", "currency": "EUR"},
            "timestamp": "2026-11-02T10:00:00Z",
        },
    ]


@pytest.fixture
def profile(worker: Daemon, publish: Publisher, api: httpx.Client, settings: Settings) -> Any:
    """A profile the real worker wrote, once the API serves it as the oracle expects."""
    user = user_id()
    sent = events(user)
    publish(sent)
    expected = expected_view(settings, sent, user)
    path = f"/v1/collections/users/records/user_id/{user}"

    def served() -> Any:
        response = api.get(path)
        return response.status_code == 200 and response.json() == expected and expected

    return wait_until(served, what="the profile")


def test_records_single_and_projected(api: httpx.Client, profile: Any) -> None:
    user = profile["id"]
    by_anonymous_id = api.get(f"/v1/collections/users/records/anonymous_id/anon-{user}")
    assert by_anonymous_id.status_code == 200
    assert by_anonymous_id.json() == profile
    projected = api.get(
        f"/v1/collections/users/records/id/{user}",
        params={"fields": "id,attributes.lifetime_value"},
    )
    assert projected.json() == {"id": user, "attributes": {"lifetime_value": 42.5}}


def test_records_batch_in_request_order_with_null(api: httpx.Client, profile: Any) -> None:
    user = profile["id"]
    lookups = [
        {"index": "anonymous_id", "value": f"anon-{user}"},
        {"index": "user_id", "value": user_id()},  # nobody
        {"index": "id", "value": user},
        {"index": "user_id", "value": user},
    ]
    response = api.post("/v1/collections/users/records/batch", json={"lookups": lookups})
    assert response.status_code == 200
    assert response.json() == {"records": [profile, None, profile, profile]}

    too_many = api.post(
        "/v1/collections/users/records/batch",
        json={"lookups": [{"index": "id", "value": user}] * 101},
    )
    assert too_many.status_code == 400


def test_activation_exposes_only_the_destination_attributes(
    api: httpx.Client, profile: Any, settings: Settings
) -> None:
    user = profile["id"]
    request = {
        "entity": "user",
        "destinationId": DESTINATION,
        "id": {"type": "user_id", "value": user},
    }
    response = api.post("/v2/activation", json=request)
    assert response.status_code == 200
    exposed = settings.destinations[DESTINATION].attributes
    expected = {name: profile["attributes"][name] for name in exposed}
    assert response.json() == {"entity": "user", "id": request["id"], "data": expected}
    assert set(profile["attributes"]) - set(exposed)  # some attributes are held back

    unknown = {**request, "id": {"type": "user_id", "value": user_id()}}
    assert api.post("/v2/activation", json=unknown).json()["data"] == {}
    missing = api.post("/v2/activation", json={**request, "destinationId": "nope"})
    assert missing.status_code == 404


def test_activation_denies_keys_without_the_destination(
    api: httpx.Client, settings: Settings
) -> None:
    other = create_key(settings, "shapes-other", destinations=["other"])
    request = {"entity": "user", "destinationId": DESTINATION, "id": {"type": "id", "value": "x"}}
    for headers in ({"Authorization": f"Bearer {other}"}, {"Authorization": ""}):
        response = api.post("/v2/activation", json=request, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"error": "Unauthorized request. Please check your access token"}


def test_entities_get_and_batch(api: httpx.Client, profile: Any) -> None:
    user = profile["id"]
    params = {
        "schema.name": "_xdm.context.profile",
        "entityId": f"anon-{user}",
        "entityIdNS": "anonymous_id",
        "fields": "identities,attributes.purchase_count",
    }
    response = api.get("/access/entities", params=params)
    assert response.status_code == 200
    assert response.json() == {
        user: {
            "entityId": user,
            "entity": {
                "identities": [
                    {"id": user, "namespace": {"code": "user_id"}},
                    {"id": f"{user}@example.com", "namespace": {"code": "email"}},
                    {"id": f"anon-{user}", "namespace": {"code": "anonymous_id"}},
                ],
                "attributes": {"purchase_count": 1},
            },
            "lastModifiedAt": profile["last_seen"],
        }
    }

    identities = [
        {"entityId": user, "entityIdNS": {"code": "user_id"}},
        {"entityId": user_id(), "entityIdNS": {"code": "user_id"}},
    ]
    batch = api.post(
        "/access/entities",
        json={"schema": {"name": "_xdm.context.profile"}, "identities": identities},
    )
    assert batch.status_code == 200
    answer = batch.json()
    assert list(answer) == [user]
    assert answer[user]["requestedIdentities"] == identities[:1]
    assert answer[user]["entity"]["attributes"] == profile["attributes"]


def test_redis_read_views_answers_in_request_order(settings: Settings, profile: Any) -> None:
    user = profile["id"]

    async def read() -> tuple[list[bytes | None], list[bytes | None], list[bytes | None]]:
        store = RedisProfileStore.from_url(settings.redis_url, settings.key_prefix)
        cached = CachedProfileStore(store, max_profiles=10)
        try:
            lookups = [("id", user), ("user_id", user_id()), ("anonymous_id", f"anon-{user}")]
            return (
                await store.read_views("user", lookups),
                await cached.read_views("user", lookups[::-1]),
                await store.read_views("user", []),
            )
        finally:
            await store.close()

    direct, through_cache, empty = asyncio.run(read())
    assert [None if raw is None else orjson.loads(raw) for raw in direct] == [
        profile,
        None,
        profile,
    ]
    assert through_cache == direct[::-1]
    assert empty == []
