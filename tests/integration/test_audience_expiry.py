"""Audience sizes when Redis expires idle anonymous profiles, with a real worker, API,
broker and Redis: the size drops when the keys go, with no write to say so, and a
profile that stops being anonymous stays counted. Ends by comparing the served sizes
with a count over every profile left in Redis."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest
import redis

from tests.integration.conftest import create_key, wait_until
from tests.integration.workers import alive, running_api, worker_with_rules
from traitflow.config import Settings

pytestmark = pytest.mark.integration

TTL_S = 4.0
RULES = """\
attributes:
  - name: orders
    function: count
    event: Order Completed
audiences:
  - name: buyers
    condition: orders > 0
"""


def test_an_expired_anonymous_member_leaves_the_audience_size(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    with worker_with_rules(settings, tmp_path, RULES, f"tfaex-{run}", anonymous_ttl_s=TTL_S) as own:
        settings, keys, publish, worker = own.settings, own.keys, own.publish, own.worker
        idle, linked, known = f"anon-{run}", f"anon2-{run}", f"user-{run}"

        def order(n: int, **ids: str) -> dict[str, Any]:
            return {"type": "track", "event": "Order Completed", "messageId": f"{run}-{n}", **ids}

        def view(index: str, value: str) -> Any:
            pid = cast("bytes | None", redis_client.get(keys.index("user", index, value)))
            raw = redis_client.get(keys.view("user", pid.decode())) if pid else None
            return orjson.loads(raw) if raw else None

        def counted() -> int:
            """The batch answer: the members among the profiles Redis still holds."""
            views = list(redis_client.scan_iter(match=f"{keys.view_prefix('user')}*"))
            return sum(
                orjson.loads(raw)["_audiences"]["buyers"]
                for raw in redis_client.mget(views)
                if raw is not None
            )

        with running_api(settings, "api") as url:
            token = create_key(settings, "audience-expiry", admin=True)
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=url, timeout=5.0, headers=headers) as api:

                def size() -> int:
                    return int(api.get("/v1/audiences/buyers").json()["size"])

                publish(
                    [
                        order(0, anonymousId=idle),
                        order(1, anonymousId=linked),
                        order(2, userId=known),
                    ]
                )
                wait_until(
                    lambda: (
                        alive(worker)
                        and all(view(*i) for i in [("anonymous_id", idle), ("user_id", known)])
                        and view("anonymous_id", linked) is not None
                    ),
                    timeout=60,
                    what="the worker to write the three profiles",
                )
                assert size() == 3
                # the second anonymous visitor logs in as a new user: no merge, kept now
                publish([{"type": "identify", "userId": f"new-{run}", "anonymousId": linked}])
                wait_until(
                    lambda: view("user_id", f"new-{run}") is not None,
                    timeout=10,
                    what="the link",
                )
                assert size() == 3
                wait_until(
                    lambda: view("anonymous_id", idle) is None,
                    timeout=TTL_S + 10,
                    what="Redis to expire the idle anonymous profile",
                )
                wait_until(lambda: size() == 2, timeout=5, what="the size to follow")
                assert counted() == 2
                assert view("anonymous_id", linked)["_audiences"] == {"buyers": True}
                listed = api.get("/v1/audiences").json()["audiences"]
                assert [(a["name"], a["size"]) for a in listed] == [("buyers", 2)]
    # what the counts hold: the two kept members; the expired one is not yet pruned
    # (no commit touched the audience since) but its deadline is past
    assert redis_client.hget(keys.audience_sizes("user"), "buyers") == b"2"
    assert redis_client.zcard(keys.expiring_members("user", "buyers")) <= 1
