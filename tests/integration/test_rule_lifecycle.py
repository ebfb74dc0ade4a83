"""Computed attributes changed through the API while two real workers run: both
switch to the new rules version without a restart, every view written after says
it, and the values equal the batch answer (the new attribute over the events after
its switch; the others over all)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.integration.conftest import create_key, wait_until
from tests.integration.workers import (
    alive,
    running_api,
    start_worker,
    worker_log,
    worker_with_rules,
)
from traitflow.config import Settings

pytestmark = pytest.mark.integration

RULES = """\
attributes:
  - name: purchase_count
    function: count
    event: Order Completed
"""
PATH = "/data/core/ca/attributes"


def test_two_workers_switch_together_to_an_attribute_made_through_the_api(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    run = f"tfrl-{uuid.uuid4().hex[:8]}"
    # no backfill: the new attribute counts the events after the switch alone, the
    # answer this test checks (test_backfill checks the history joined)
    with worker_with_rules(
        settings, tmp_path, RULES, run, topic_partitions=2, backfill=False
    ) as own:
        second = start_worker(own.settings, "worker2")
        try:
            users = [f"{run}-u{n}" for n in range(12)]
            sent: dict[str, int] = dict.fromkeys(users, 0)

            def orders(batch: str) -> None:
                events = [
                    {
                        "type": "track",
                        "event": "Order Completed",
                        "userId": user,
                        "messageId": f"{run}-{batch}-{user}-{n}",
                    }
                    for n in range(2)
                    for user in users
                ]
                own.publish(events)
                for user in users:
                    sent[user] += 2

            def view(user: str) -> Any:
                raw = redis_client.get(own.keys.view("user", user))
                return orjson.loads(raw) if raw else None

            def caught_up() -> bool:
                views = [view(u) for u in users]
                return all(
                    v is not None and v["attributes"]["purchase_count"] == sent[u]
                    for u, v in zip(users, views, strict=True)
                )

            with running_api(own.settings, "api") as url:
                token = create_key(own.settings, "lifecycle", admin=True)
                headers = {"Authorization": f"Bearer {token}"}
                with httpx.Client(base_url=url, timeout=10.0, headers=headers) as api:
                    orders("a")
                    wait_until(lambda: alive(second) and caught_up(), timeout=60, what="batch a")
                    # the second worker has read its rules (at version 0) once it is ready:
                    # made before that, the attribute would be in the rules it starts
                    # with, and its switch logged before its logging is set up
                    wait_until(
                        lambda: "[^Worker]: Ready" in worker_log(second),
                        timeout=60,
                        what="the second worker to be ready",
                    )

                    made = api.post(
                        PATH,
                        json={
                            "name": "orders_since",
                            "function": "count",
                            "event": "Order Completed",
                            "status": "ACTIVE",
                        },
                    )
                    assert made.status_code == 201, made.text
                    attribute = f"{PATH}/{made.json()['id']}"
                    switched(own.worker, second, 1)

                    orders("b")
                    wait_until(caught_up, timeout=30, what="batch b")
                    for user in users:
                        got = view(user)
                        assert got["rules_version"] == 1
                        assert got["attributes"] == {"purchase_count": 4, "orders_since": 2}

                    assert api.patch(attribute, json={"status": "DISABLED"}).status_code == 200
                    switched(own.worker, second, 2)
                    orders("c")
                    wait_until(caught_up, timeout=30, what="batch c")
                    for user in users:
                        got = view(user)
                        assert got["rules_version"] == 2
                        assert got["attributes"] == {"purchase_count": 6}
                    listed = api.get(PATH).json()
                    assert listed["rulesVersion"] == 2
        finally:
            second.stop()


def switched(first: Any, second: Any, version: int) -> None:
    """Both workers logged their switch to `version` (each polls every second)."""
    line = f"switched to rules version {version}"
    wait_until(
        lambda: all(line in worker_log(w) for w in (first, second)),
        timeout=60,  # a worker that joined its group late under the full suite's load
        what=f"both workers to switch to rules version {version}",
    )
