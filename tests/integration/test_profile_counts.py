"""Profile counts per entity, source and identity namespace (Adobe's preview sample
status) with a real worker over two sources, API, broker and Redis: profiles written,
merged (a kept one, an expiring anonymous one), deleted by a source, erased, and an
idle anonymous profile expired by Redis with no write. Ends by comparing the served
counts with a count over every profile state left in Redis (the batch answer)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis

from attributes.erasure import erase_event
from attributes.profile import decode_state
from tests.integration.conftest import Publisher, create_key, wait_until
from tests.integration.sources_support import source_topics, two_source_worker
from tests.integration.workers import running_api
from traitflow.config import Settings
from traitflow.profile_counts import composition, tally
from traitflow.store import KeyLayout

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
