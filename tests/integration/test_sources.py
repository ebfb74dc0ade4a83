"""Sources, merge policies and per-source deletes on a real Redis, a real broker, and a
real worker and API server configured with them.

The session's worker and API server (conftest) have one source and the default policy
only, so this module starts its own pair with settings of its own: two ingest topics
bound to `web` and `crm`, policies `web-first` and `crm-first` besides the default
(timestamp_ordered), and `crm` deleting whole records.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from api.policies import reshaped
from attributes.events import iso_from_ms
from attributes.policies import MergePolicy
from attributes.profile import ProfileState, decode_state, encode_state
from tests.integration.conftest import Publisher, create_key, user_id, wait_until
from tests.integration.sources_support import source_topics, two_source_worker
from tests.integration.workers import running_api
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.redis_store import RedisProfileStore
from traitflow.services import Daemon
from traitflow.store import ProfileWrite

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_794_391_200_000  # 2026-11-11T10:00:00Z
MINUTE = 60_000
POLICIES = {
    "default": MergePolicy(),
    "web-first": MergePolicy(kind="source_precedence", sources=["web", "crm"]),
    "crm-first": MergePolicy(kind="source_precedence", sources=["crm", "web"]),
}


def at(minute: int) -> str:
    return iso_from_ms(T0 + minute * MINUTE)


def get(client: redis.Redis, key: str) -> bytes | None:
    """A key's value as stored (the session's client does not decode responses)."""
    value = client.get(key)
    assert value is None or isinstance(value, bytes)
    return value


def tombstone_of(client: redis.Redis, keys: KeyLayout, pid: str) -> ProfileState:
    raw = get(client, keys.state("user", pid))
    assert raw is not None
    return decode_state(raw)


@pytest.fixture(scope="module")
def own(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    name = f"tfsrc-{uuid.uuid4().hex[:8]}"
    return settings.isolated(
        name,
        sources={f"{name}-web": "web", f"{name}-crm": "crm"},
        source_trust={"web": "trusted", "crm": "trusted"},
        merge_policies=POLICIES,
        source_deletes={"crm": "record"},
        topic_partitions=2,
        home=tmp_path_factory.mktemp("sources"),
    )


@pytest.fixture(scope="module")
def topics(own: Settings, redis_client: redis.Redis) -> Iterator[dict[str, Publisher]]:
    with source_topics(own, redis_client) as publishers:
        yield publishers


@pytest.fixture(scope="module")
def own_worker(
    own: Settings, topics: dict[str, Publisher], redis_client: redis.Redis
) -> Iterator[Daemon]:
    with two_source_worker(own, topics, redis_client, "sources-worker") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def own_api(own: Settings) -> Iterator[httpx.Client]:
    """A real `traitflow api` process with the module's settings, and an admin client."""
    with running_api(own, "sources-api") as url:
        token = create_key(own, "sources-admin", admin=True, rate_per_s=100_000.0, burst=100_000)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers) as client:
            yield client


# --- the store: read_profiles and a view deleted by a commit ---------------------------------


def write(pid: str, view: dict[str, Any] | None, **identities: str) -> ProfileWrite:
    state = ProfileState(
        id=pid,
        identities={kind: [value] for kind, value in identities.items()},
        source_traits={"web": {"plan": [T0, "w-1", "free"]}, "crm": {"plan": [T0 - 1, "c", "pro"]}},
        version=1,
        deleted=view is None,
    )
    raw = None if view is None else orjson.dumps(view)
    return ProfileWrite(state, encode_state(state), raw, list(identities.items()))


def test_read_profiles_by_id_and_by_index_on_redis(
    own: Settings, topics: dict[str, Publisher], redis_client: redis.Redis
) -> None:
    live = {"id": "p-1", "traits": {"plan": "free"}, "attributes": {"n": 1}, "version": 1}
    keys = KeyLayout(own.key_prefix)

    async def go() -> tuple[list[tuple[bytes, bytes] | None], list[Any]]:
        store = RedisProfileStore.from_url(own.redis_url, own.key_prefix)
        try:
            await store.save("user", [write("p-1", live, user_id="p-1", email="p1@x.io")])
            await store.save("user", [write("p-2", live | {"id": "p-2"}, user_id="p-2")])
            await store.save("user", [write("p-2", None, user_id="p-2")])  # deleted now
            assert await store.read_profiles("user", []) == []
            found = await store.read_profiles(
                "user",
                [
                    ("id", "p-1"),
                    ("user_id", "p-1"),
                    ("email", "p1@x.io"),
                    ("id", "nobody"),
                    ("user_id", "nobody"),
                    ("user_id", "p-2"),
                    ("id", "p-2"),
                ],
            )
            return found, [await store.read_view("user", "user_id", "p-2")]
        finally:
            await store.close()

    found, views = asyncio.run(go())
    pair = (orjson.dumps(live), get(redis_client, keys.state("user", "p-1")))
    assert found == [pair, pair, pair, None, None, None, None]
    assert views == [None]
    # the deleted profile: its view key is gone, its state and identities are kept
    assert not redis_client.exists(keys.view("user", "p-2"))
    assert tombstone_of(redis_client, keys, "p-2").deleted
    assert redis_client.get(keys.index("user", "user_id", "p-2")) == b"p-2"
    # what the API makes of a pair read from Redis
    first = found[0]
    assert first is not None
    document = reshaped(*first, "crm-first", POLICIES["crm-first"], provenance=True)
    assert document["traits"] == {"plan": "pro"}
    assert document["provenance"]["traits"] == {
        "plan": {"source": "crm", "timestamp": iso_from_ms(T0 - 1)}
    }


# --- end to end: worker, Redis and API with the module's policies -----------------------------


def event(kind: str, mid: str, minute: int, user: str, **fields: Any) -> dict[str, Any]:
    """`mid` is made the user's own: a messageId is applied once per source, whoever sends it."""
    message = f"{mid}-{user}"
    return {"type": kind, "messageId": message, "timestamp": at(minute), "userId": user} | fields


def record_path(index: str, value: str) -> str:
    return f"/v1/collections/users/records/{index}/{value}"


def sourced_profile(topics: dict[str, Publisher], api: httpx.Client, user: str) -> Any:
    """web says plan=free and name (minute 1); crm plan=pro and tier (minute 3) and sends
    an order. The profile once the API serves all three events."""
    web = {"plan": "free", "name": "Ann"}
    topics["web"]([event("identify", "w-1", 1, user, anonymousId=f"a-{user}", traits=web)])
    crm = {"plan": "pro", "tier": "gold"}
    order = {"event": "Order Completed", "properties": {"revenue": 30.0}}
    topics["crm"](
        [event("identify", "c-1", 3, user, traits=crm), event("track", "c-2", 4, user, **order)]
    )

    def applied() -> Any:
        response = api.get(record_path("user_id", user))
        return response.status_code == 200 and response.json()["version"] == 3 and response.json()

    return wait_until(applied, what="the three events")


def test_reads_under_another_policy_and_with_provenance(
    topics: dict[str, Publisher], own_worker: Daemon, own_api: httpx.Client
) -> None:
    user = user_id()
    stored = sourced_profile(topics, own_api, user)
    assert stored["traits"] == {"plan": "pro", "name": "Ann", "tier": "gold"}
    path = record_path("user_id", user)
    response = own_api.get(path, params={"merge_policy": "web-first", "provenance": "true"})
    assert response.status_code == 200
    document = response.json()
    assert document.pop("provenance") == {
        "policy": "web-first",
        "traits": {
            "plan": {"source": "web", "timestamp": at(1)},
            "name": {"source": "web", "timestamp": at(1)},
            "tier": {"source": "crm", "timestamp": at(3)},
        },
        "attributes": "computed from the events of every source",
    }
    assert document == stored | {"traits": {"plan": "free", "name": "Ann", "tier": "gold"}}
    unknown = own_api.get(path, params={"merge_policy": "nope"})
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": "merge policy 'nope' not found (known: crm-first, default, web-first)"
    }
    params = {
        "schema.name": "_xdm.context.profile",
        "entityId": f"a-{user}",
        "entityIdNS": "anonymous_id",
        "mergePolicyId": "web-first",
    }
    entity = own_api.get("/access/entities", params=params)
    assert entity.json()[user]["entity"]["traits"] == {
        "plan": "free",
        "name": "Ann",
        "tier": "gold",
    }


def test_a_record_delete_is_a_404_until_a_later_event_revives_the_profile(
    own: Settings,
    topics: dict[str, Publisher],
    own_worker: Daemon,
    own_api: httpx.Client,
    redis_client: redis.Redis,
) -> None:
    user = user_id()
    sourced_profile(topics, own_api, user)
    path = record_path("user_id", user)
    topics["crm"]([event("delete", "c-3", 5, user)])
    wait_until(lambda: own_api.get(path).status_code == 404, what="the delete")
    for index, value, params in (
        ("anonymous_id", f"a-{user}", {}),
        ("id", user, {"merge_policy": "crm-first"}),
        ("user_id", user, {"provenance": "true"}),
    ):
        assert own_api.get(record_path(index, value), params=params).status_code == 404
    keys = KeyLayout(own.key_prefix)
    assert not redis_client.exists(keys.view("user", user))
    assert get(redis_client, keys.index("user", "anonymous_id", f"a-{user}")) == user.encode()
    tombstone = tombstone_of(redis_client, keys, user)
    assert tombstone.deleted
    assert tombstone.identities == {"user_id": [user], "anonymous_id": [f"a-{user}"]}
    assert (tombstone.source_traits, tombstone.attributes) == ({}, {})

    topics["web"]([event("page", "w-2", 6, user)])
    by_anonymous_id = record_path("anonymous_id", f"a-{user}")

    def revived() -> Any:
        response = own_api.get(by_anonymous_id)
        return response.status_code == 200 and response.json()

    view = wait_until(revived, what="the revival")
    assert view["id"] == user
    assert view["traits"] == {}
    assert view["attributes"]["page_views"] == 1
    assert view["attributes"]["purchase_count"] == 0
    assert view["first_seen"] == at(6)
    assert view["version"] == tombstone.version + 1
