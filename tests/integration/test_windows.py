"""Lookback windows expire in a real worker, without any new event.

A worker runs rules with 20-minute windows (1-second buckets). Events stamped 20
minutes minus a few seconds ago count at once; then, with nothing more published, the
worker's expiry timer must take them out of the served view as their buckets leave the
window, and drop the profile from the Redis expiry index once its windows are empty.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis

from attributes.profile import ProfileState, decode_state
from tests.integration.conftest import wait_until
from tests.integration.workers import worker_with_rules
from traitflow.config import Settings

pytestmark = pytest.mark.integration

RULES = """\
attributes:
  - name: orders
    function: count
    event: Order Completed
  - name: orders_last_20m
    function: count
    event: Order Completed
    lookback: {count: 20, unit: minutes}
  - name: revenue_last_20m
    function: sum
    field: properties.revenue
    event: Order Completed
    where: properties.currency == "EUR"
    lookback: {count: 20, unit: minutes}
"""


def stamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def test_a_silent_profile_s_window_empties_on_time(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    name = f"tfwin-{uuid.uuid4().hex[:8]}"
    with worker_with_rules(settings, tmp_path, RULES, name, topic_partitions=2) as own:
        settings, keys, publish = own.settings, own.keys, own.publish
        user = f"win-{uuid.uuid4().hex[:8]}"

        def view() -> Any:
            raw = redis_client.get(keys.view("user", user))
            return orjson.loads(raw) if raw else None

        def state() -> ProfileState:
            return decode_state(cast("bytes", redis_client.get(keys.state("user", user))))

        def indexed() -> list[tuple[bytes, float]]:
            """Every entry of the expiry indexes of this run's partitions."""
            entries: list[tuple[bytes, float]] = []
            for key in redis_client.scan_iter(match=f"{settings.key_prefix}:x:user:*"):
                entries += cast(
                    "list[tuple[bytes, float]]", redis_client.zrange(key, 0, -1, withscores=True)
                )
            return entries

        window = 20 * 60_000

        # two orders: one leaves the window 5 s from now, the other 10 s from now
        now = int(time.time() * 1000)
        stamped = [now - window + 5_000, now - window + 10_000]
        leaving = [at - at % 1000 + window for at in stamped]  # their 1-second buckets' end
        publish(
            [
                {
                    "type": "track",
                    "event": "Order Completed",
                    "userId": user,
                    "messageId": f"m-{i}",
                    "timestamp": stamp(at),
                    "properties": {"revenue": 10.0 * (i + 1), "currency": "EUR"},
                }
                for i, at in enumerate(stamped)
            ]
        )
        served = wait_until(view, timeout=10, what="the worker to write the profile")
        assert time.time() * 1000 < leaving[0], "the worker took over 5 s to apply two events"
        assert served["attributes"] == {"orders": 2, "orders_last_20m": 2, "revenue_last_20m": 30.0}
        ((member, score),) = indexed()
        assert member == user.encode()
        assert score == leaving[0]
        version = state().version

        def one_left() -> bool:
            return bool(view()["attributes"]["orders_last_20m"] == 1)

        wait_until(one_left, timeout=15, what="the first order to leave the window")
        assert view()["attributes"] == {"orders": 2, "orders_last_20m": 1, "revenue_last_20m": 20.0}
        assert time.time() * 1000 >= leaving[0]  # not before its time

        def empty() -> bool:
            return bool(view()["attributes"]["orders_last_20m"] == 0)

        wait_until(empty, timeout=15, what="the second order to leave the window")
        assert view()["attributes"] == {"orders": 2, "orders_last_20m": 0, "revenue_last_20m": 0}
        assert indexed() == []
        assert state().version == version  # no event was applied: time alone moved it
        assert state().attributes["orders_last_20m/count@20minutes"] == []
