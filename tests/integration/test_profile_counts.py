"""Profile counts per entity, source and identity namespace (Adobe's preview sample
status) with a real worker over two sources, API, broker and Redis: profiles written,
merged (a kept one, an expiring anonymous one), deleted by a source, erased, and an
idle anonymous profile expired by Redis with no write. Ends by comparing the served
counts with a count over every profile state left in Redis (the batch answer)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from attributes.erasure import erase_event
from attributes.profile import ProfileState, decode_state, encode_state
from tests.integration.conftest import Publisher, create_key, wait_until
from tests.integration.sources_support import source_topics, two_source_worker
from tests.integration.workers import running_api
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.profile_counts import composition, tally
from traitflow.profile_recount import Recount, recount
from traitflow.redis_store import RedisProfileStore

pytestmark = pytest.mark.integration

TTL_S = 4.0
RULES = """\
attributes:
  - name: orders
    function: count
    event: Order Completed
"""
PATH = "/data/core/ups/previewsamplestatus"


@pytest.fixture
def own(settings: Settings, tmp_path: Path) -> Settings:
    name = f"tfpc-{uuid.uuid4().hex[:8]}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return settings.isolated(
        name,
        sources={f"{name}-web": "web", f"{name}-crm": "crm"},
        source_trust={"web": "trusted", "crm": "trusted"},
        source_deletes={"crm": "record"},
        anonymous_ttl_s=TTL_S,
        rules_path=rules,
        home=tmp_path,
    )


@pytest.fixture
def topics(own: Settings, redis_client: redis.Redis) -> Iterator[dict[str, Publisher]]:
    with source_topics(own, redis_client) as publishers:
        yield publishers


def batch_answer(client: redis.Redis, keys: KeyLayout) -> dict[str, Any]:
    """The counts from every profile state Redis still holds (a full scan)."""
    names = list(client.scan_iter(match=f"{keys.state_prefix('user')}*", count=1000))
    raws = cast("list[bytes | None]", client.mget(names)) if names else []
    return composition(tally(decode_state(raw) for raw in raws if raw is not None))


def stored_counts(settings: Settings, entity: str = "user") -> dict[str, int]:
    """What `ProfileStore.profile_counts` reads (the API's one script)."""

    async def read() -> dict[str, int]:
        store = RedisProfileStore.from_url(settings.redis_url, settings.key_prefix)
        try:
            return await store.profile_counts(entity)
        finally:
            await store.close()

    return asyncio.run(read())


def recounted(settings: Settings, **options: Any) -> Recount:
    """`traitflow profiles recount`'s pass, on `settings`' Redis keys."""

    async def run() -> Recount:
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            return await recount(client, KeyLayout(settings.key_prefix), "user", **options)
        finally:
            await client.aclose()

    return asyncio.run(run())


def served(api: httpx.Client) -> dict[str, Any]:
    """The API's counts, without the configured sources and types no profile holds."""
    response = api.get(PATH, params={"entity": "user"})
    assert response.status_code == 200, response.text
    found = response.json()["entities"]["user"]
    for kind in ("sources", "namespaces"):
        found[kind] = {name: n for name, n in found[kind].items() if n}
    return cast("dict[str, Any]", found)


def test_served_counts_equal_a_count_over_every_profile_left(
    own: Settings, topics: dict[str, Publisher], redis_client: redis.Redis
) -> None:
    run = uuid.uuid4().hex[:8]
    keys = KeyLayout(own.key_prefix)
    web, crm = topics["web"], topics["crm"]

    def order(**ids: str) -> dict[str, Any]:
        return {"type": "track", "event": "Order Completed", **ids}

    def identify(traits: dict[str, Any], **ids: str) -> dict[str, Any]:
        return {"type": "identify", "traits": traits, **ids}

    def exists(index: str, value: str) -> bool:
        return bool(redis_client.exists(keys.index("user", index, value)))

    def together(*identities: tuple[str, str]) -> bool:
        """Whether the identities point to one profile (merged)."""
        found = {redis_client.get(keys.index("user", *identity)) for identity in identities}
        return len(found) == 1 and None not in found

    with (
        two_source_worker(own, topics, redis_client, "counts-worker"),
        running_api(own, "api") as url,
    ):
        token = create_key(own, "profile-counts", admin=True)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, timeout=5.0, headers=headers) as api:
            web(
                [
                    identify({"plan": "pro"}, userId=f"u1-{run}"),
                    order(anonymousId=f"idle-{run}"),  # expires, idle
                    order(anonymousId=f"login-{run}"),  # merged into u1 below
                    order(userId=f"u6-{run}"),
                ]
            )
            crm(
                [
                    identify({"email": f"ada-{run}@x.io"}, userId=f"u3-{run}"),
                    identify({"email": f"eve-{run}@x.io", "tier": "gold"}),
                ]
            )
            wait_until(
                lambda: exists("email", f"eve-{run}@x.io") and exists("user_id", f"u6-{run}"),
                timeout=60,
                what="the first profiles",
            )
            assert served(api) == batch_answer(redis_client, keys)
            # two merges: an anonymous (expiring) profile into a kept one at login,
            # and a kept profile into another kept one (u6 holds eve's email now)
            web(
                [
                    order(userId=f"u1-{run}", anonymousId=f"login-{run}"),
                    identify({"email": f"eve-{run}@x.io"}, userId=f"u6-{run}"),
                ]
            )
            wait_until(
                lambda: (
                    together(("user_id", f"u1-{run}"), ("anonymous_id", f"login-{run}"))
                    and together(("user_id", f"u6-{run}"), ("email", f"eve-{run}@x.io"))
                ),
                timeout=30,
                what="the merges",
            )
            assert served(api) == batch_answer(redis_client, keys)
            crm([{"type": "delete", "userId": f"u3-{run}"}])  # crm deletes the record
            web([erase_event("user", "user_id", f"u1-{run}", f"r-{run}")])
            wait_until(lambda: not exists("user_id", f"u1-{run}"), timeout=30, what="the erasure")
            wait_until(
                lambda: not exists("anonymous_id", f"idle-{run}"),
                timeout=TTL_S + 15,
                what="Redis to expire the idle anonymous profile",
            )
            expected = batch_answer(redis_client, keys)
            wait_until(lambda: served(api) == expected, timeout=10, what="the counts")
            # the probe and u6 (eve's crm profile merged in); u3 is deleted, u1 erased
            assert expected == {
                "profiles": 2,
                "sources": {"crm": 2, "web": 2},
                "namespaces": {"email": 1, "user_id": 2},
            }
            report = api.get(f"{PATH}/report/namespace", params={"entity": "user"}).json()
            assert {row["code"]: row["sampleCount"] for row in report["data"]} == {
                "anonymous_id": 0,
                "email": 1,
                "user_id": 2,
            }
            metrics = api.get("/metrics").text
            assert 'traitflow_profiles{entity="user"} 2.0' in metrics
            assert 'traitflow_profiles_by_source{entity="user",source="crm"} 2.0' in metrics
    # the workers stopped: a recount rebuilds the same counts from the states, as it
    # would over profiles stored before counting (a state without its list, counters lost)
    u6 = cast("bytes", redis_client.get(keys.index("user", "user_id", f"u6-{run}"))).decode()
    legacy = decode_state(cast("bytes", redis_client.get(keys.state("user", u6))))
    legacy.counted = None
    redis_client.set(keys.state("user", u6), encode_state(legacy))
    redis_client.delete(keys.profile_counts("user"))
    found = recounted(own)
    assert found.rewritten == 1
    assert composition(found.counts()) == expected
    assert composition(stored_counts(own)) == expected == batch_answer(redis_client, keys)


def test_a_recount_counts_expiring_profiles_by_deadline_and_replaces_old_counters(
    settings: Settings, redis_client: redis.Redis
) -> None:
    own = settings.isolated(f"tfrc-{uuid.uuid4().hex[:8]}")
    keys = KeyLayout(own.key_prefix)
    kept = ProfileState(
        id="k", identities={"user_id": ["k"]}, source_traits={"crm": {"tier": [1, "m", "a"]}}
    )
    anonymous = ProfileState(id="a", identities={"anonymous_id": ["a"]})
    deleted = ProfileState(id="d", identities={"user_id": ["d"]}, deleted=True)
    try:
        redis_client.set(keys.state("user", "k"), encode_state(kept))
        redis_client.set(keys.state("user", "a"), encode_state(anonymous), px=60_000)
        redis_client.set(keys.state("user", "d"), encode_state(deleted))
        redis_client.hset(keys.profile_counts("user"), "profile", 99)
        redis_client.sadd(keys.expiring_categories("user"), "namespace:ghost")
        redis_client.zadd(keys.expiring_profiles("user", "namespace:ghost"), {"g": 1})
        found = recounted(own, batch=1, rate_per_s=1000)
        assert (found.scanned, found.rewritten) == (3, 3)
        assert found.expiring.keys() == {"profile", "namespace:anonymous_id"}
        assert stored_counts(own) == {
            "profile": 2,
            "source:crm": 1,
            "namespace:user_id": 1,
            "namespace:anonymous_id": 1,
        }
        assert not redis_client.exists(keys.expiring_profiles("user", "namespace:ghost"))
        assert 0 < redis_client.pttl(keys.state("user", "a")) <= 60_000
        rewritten = decode_state(cast("bytes", redis_client.get(keys.state("user", "a"))))
        assert rewritten.counted == ["profile", "namespace:anonymous_id"]
        again = recounted(own)
        assert again.rewritten == 0
        assert again.counts() == found.counts()
    finally:
        for key in redis_client.scan_iter(keys.all_keys()):
            redis_client.unlink(key)
