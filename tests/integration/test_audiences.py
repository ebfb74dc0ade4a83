"""Audiences in a real worker and API, over the real broker and Redis: a profile enters
an audience by an event and leaves one on time, with no event (its window moved), and
another by an event; its record carries `_audiences`; the sizes follow, over HTTP and
in the metrics."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.integration.conftest import create_key, wait_until
from tests.integration.workers import running_api, worker_with_rules
from traitflow.config import Settings

pytestmark = pytest.mark.integration

RULES = """\
attributes:
  - name: orders_20m
    function: count
    event: Order Completed
    lookback: {count: 20, unit: minutes}
  - name: spend
    function: sum
    field: properties.revenue
    event: Order Completed
audiences:
  - name: recent_buyers
    description: Ordered in the last 20 minutes.
    condition: orders_20m > 0
  - name: pro_spenders
    condition: traits.plan == "pro" && spend >= 10.0
"""


def stamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def test_a_profile_enters_by_an_event_and_leaves_on_time(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    name = f"tfaud-{uuid.uuid4().hex[:8]}"
    with worker_with_rules(settings, tmp_path, RULES, name, topic_partitions=2) as own:
        settings, keys, publish = own.settings, own.keys, own.publish
        user, other = f"aud-{uuid.uuid4().hex[:8]}", f"aud-{uuid.uuid4().hex[:8]}"

        def view(pid: str) -> Any:
            raw = redis_client.get(keys.view("user", pid))
            return orjson.loads(raw) if raw else None

        # an order that leaves the 20-minute window (1-second buckets) 15 s from now
        window = 20 * 60_000
        at = int(time.time() * 1000) - window + 15_000
        leaving = at - at % 1000 + window
        order = {
            "type": "track",
            "event": "Order Completed",
            "userId": user,
            "messageId": f"{user}-order",
            "timestamp": stamp(at),
            "properties": {"revenue": 12.0},
        }
        publish(
            [
                order,
                {"type": "identify", "userId": user, "traits": {"plan": "pro"}},
                {"type": "identify", "userId": other, "traits": {"plan": "free"}},
            ]
        )
        wait_until(
            lambda: (v := view(user)) is not None and v["traits"].get("plan") == "pro",
            timeout=10,
            what="the worker to write the profile",
        )
        assert view(user)["_audiences"] == {"recent_buyers": True, "pro_spenders": True}
        wait_until(lambda: view(other) is not None, timeout=10, what="the other profile")
        assert view(other)["_audiences"] == {"recent_buyers": False, "pro_spenders": False}

        with running_api(settings, "api") as url:
            token = create_key(settings, "audiences-admin", admin=True)
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=url, timeout=5.0, headers=headers) as api:
                record = api.get(f"/v1/collections/users/records/user_id/{user}").json()
                assert record["_audiences"] == {"recent_buyers": True, "pro_spenders": True}
                one = api.get(
                    f"/v1/collections/users/records/user_id/{user}",
                    params={"fields": "_audiences.recent_buyers"},
                )
                assert one.json() == {"_audiences": {"recent_buyers": True}}

                def sizes() -> dict[str, int]:
                    listed = api.get("/v1/audiences").json()["audiences"]
                    return {a["name"]: a["size"] for a in listed}

                assert sizes() == {"recent_buyers": 1, "pro_spenders": 1}
                assert api.get("/v1/audiences/recent_buyers").json()["size"] == 1

                # a producer's retry of the order changes nothing: the identify after
                # it (same user, same partition) is the only change
                version = view(user)["version"]
                marker = {"type": "identify", "userId": user, "traits": {"seen": True}}
                publish([order, marker])
                wait_until(lambda: view(user)["traits"].get("seen"), timeout=10, what="the marker")
                assert view(user)["version"] == version + 1
                assert sizes() == {"recent_buyers": 1, "pro_spenders": 1}
                version += 1

                # no event: the order leaves its window, and the profile the audience
                wait_until(
                    lambda: not view(user)["_audiences"]["recent_buyers"],
                    timeout=40,
                    what="the profile to leave recent_buyers on time",
                )
                assert time.time() * 1000 >= leaving  # not before its time
                assert view(user)["_audiences"] == {"recent_buyers": False, "pro_spenders": True}
                assert view(user)["version"] == version  # time alone moved it
                assert sizes() == {"recent_buyers": 0, "pro_spenders": 1}
                metrics = api.get("/metrics").text
                assert 'traitflow_audience_size{audience="recent_buyers",entity="user"} 0.0' in (
                    metrics
                )
                assert 'traitflow_audience_size{audience="pro_spenders",entity="user"} 1.0' in (
                    metrics
                )

                # an event: the plan changes, and the profile leaves pro_spenders
                publish([{"type": "identify", "userId": user, "traits": {"plan": "free"}}])
                wait_until(
                    lambda: not view(user)["_audiences"]["pro_spenders"],
                    timeout=10,
                    what="the profile to leave pro_spenders by an event",
                )
                assert view(user)["version"] == version + 1
                assert sizes() == {"recent_buyers": 0, "pro_spenders": 0}
        assert redis_client.hgetall(keys.audience_sizes("user")) == {
            b"recent_buyers": b"0",
            b"pro_spenders": b"0",
        }
