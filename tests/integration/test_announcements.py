"""Audience enter/exit events and the profile change stream, from a real worker killed
-9 mid-stream, over the real broker and Redis.

Each kill leaves batches committed but not acked, and outbox entries sent but not
deleted: the restarted worker reads those batches again (they change nothing) and
sends those entries again (a repeat with the same messageId). In effect, every
audience a profile ends in was entered exactly once, no profile entered one it is not
in, and each profile's last change on the compacted topic is its served view.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.integration.conftest import wait_until
from tests.integration.test_worker_kills import kill9
from tests.integration.workers import start_worker, worker_with_rules
from traitflow.config import Settings
from traitflow.topics import read_topic

pytestmark = pytest.mark.integration

RULES = """\
attributes:
  - name: orders
    function: count
    event: Order Completed
  - name: spend
    function: sum
    field: properties.revenue
    event: Order Completed
audiences:
  - name: big_spenders
    condition: spend >= 100.0
  - name: repeat_buyers
    condition: orders >= 2
"""
USERS = 30
EVENTS = 600
WAVES = 3


def orders(run: str, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return [
        {
            "type": "track",
            "event": "Order Completed",
            "userId": f"{run}-u{rng.randrange(USERS)}",
            "messageId": f"{run}-{n}",
            "timestamp": at,
            "properties": {"revenue": rng.randrange(100, 6_000) / 100},
        }
        for n in range(EVENTS)
    ]


def batch_membership(events: list[dict[str, Any]]) -> dict[str, dict[str, bool]]:
    """The batch answer: each user's audiences once every event is applied."""
    spend: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for event in events:
        spend[event["userId"]] += event["properties"]["revenue"]
        count[event["userId"]] += 1
    return {
        user: {"big_spenders": spend[user] >= 100.0, "repeat_buyers": count[user] >= 2}
        for user in count
    }


def test_announcements_survive_kill_9_exactly_once_in_effect(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    run = f"tfann-{uuid.uuid4().hex[:8]}"
    with worker_with_rules(
        settings,
        tmp_path,
        RULES,
        run,
        profile_changes_topic=f"{run}-changes",
        topic_partitions=2,
    ) as own:
        settings, keys, publish = own.settings, own.keys, own.publish
        events = orders(run, seed=15)
        expected = batch_membership(events)

        def view(user: str) -> dict[str, Any] | None:
            raw = redis_client.get(keys.view("user", user))
            return orjson.loads(raw) if raw else None

        def applied() -> int:
            return sum((v := view(user)) is not None and v["version"] for user in expected)

        wave = len(events) // WAVES
        for start in range(0, len(events), wave):
            publish(events[start : start + wave])
            goal = start + wave // 2

            def halfway(goal: int = goal) -> bool:
                return applied() >= goal

            wait_until(halfway, timeout=60, what="part of the wave")
            kill9(own.worker)  # mid-wave: batches and outbox entries in flight
            own.worker = start_worker(settings, "worker")  # the one stopped at the end
        wait_until(lambda: applied() == len(events), timeout=90, what="every event applied")
        wait_until(
            lambda: all(
                redis_client.xlen(keys.outbox(f"{topic}/{p}")) == 0
                for topic in settings.sources
                for p in range(2)
            ),
            timeout=30,
            what="the outboxes to be sent",
        )

    changes = asyncio.run(read_topic(settings, settings.audience_changes_topic))
    entered: dict[tuple[str, str], set[str]] = defaultdict(set)
    for record in changes:
        change = orjson.loads(record.value)
        assert record.key == change["userId"].encode()
        assert change["event"] == "Audience Entered"  # both audiences only grow here
        properties = change["properties"]
        assert properties["identities"] == {"user_id": [change["userId"]]}
        entered[(change["userId"], properties["audience"])].add(change["messageId"])
    members = {
        (user, name)
        for user, audiences in expected.items()
        for name, yes in audiences.items()
        if yes
    }
    assert members, "the events put nobody in an audience: the test proves nothing"
    assert set(entered) == members
    assert all(len(ids) == 1 for ids in entered.values()), "an audience entered twice"

    last: dict[bytes, bytes | None] = {}
    for record in asyncio.run(read_topic(settings, f"{run}-changes")):
        last[record.key] = record.value
    for user, audiences in expected.items():
        served = view(user)
        assert served is not None
        assert served["_audiences"] == audiences
        assert last[user.encode()] == redis_client.get(keys.view("user", user))
