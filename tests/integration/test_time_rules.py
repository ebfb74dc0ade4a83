"""Values read from `now` change on time, with no event, in a real worker (broker,
Redis): "seconds since the last order" grows and a "lapsed" audience is entered while
nothing is published, because a profile whose rules read `now` is rendered again
every TRAITFLOW_TIME_REFRESH_S (here one second) through the expiry index."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis

from tests.integration.conftest import wait_until
from tests.integration.workers import alive, worker_with_rules
from traitflow.config import Settings

pytestmark = pytest.mark.integration

LAPSE_S = 6
RULES = f"""\
attributes:
  - {{name: last_order_at, function: most_recent, field: timestamp, event: Order Completed}}
  - {{name: orders, function: count, event: Order Completed}}
  - name: seconds_since_last_order
    function: derived
    expression: (now - last_order_at).getSeconds()
audiences:
  - name: lapsed
    condition: orders > 0 && now - last_order_at > duration('{LAPSE_S}s')
"""


def test_seconds_since_the_last_order_and_an_audience_move_without_events(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    name = f"tftime-{run}"
    with worker_with_rules(settings, tmp_path, RULES, name, time_refresh_s=1.0) as own:
        keys, user = own.keys, f"u-{run}"

        def view() -> Any:
            pid = cast("bytes | None", redis_client.get(keys.index("user", "user_id", user)))
            raw = redis_client.get(keys.view("user", pid.decode())) if pid else None
            return orjson.loads(raw) if raw else None

        ordered_at = datetime.now(UTC)
        stamp = ordered_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        own.publish(
            [
                {
                    "type": "track",
                    "event": "Order Completed",
                    "userId": user,
                    "messageId": f"{run}-1",
                    "timestamp": stamp,
                }
            ]
        )
        wait_until(lambda: alive(own.worker) and view() is not None, timeout=60, what="the order")
        first = view()
        served = first["attributes"]["last_order_at"]  # RFC 3339, to the microsecond
        assert datetime.fromisoformat(served.replace("Z", "+00:00")) == datetime.fromisoformat(
            stamp.replace("Z", "+00:00")
        )
        assert first["_audiences"] == {"lapsed": False}
        assert first["attributes"]["seconds_since_last_order"] < LAPSE_S
        version = first["version"]

        # nothing is published from here on
        wait_until(
            lambda: view()["attributes"]["seconds_since_last_order"] >= 3,
            timeout=15,
            what="the seconds since the order to grow without an event",
        )
        wait_until(
            lambda: view()["_audiences"] == {"lapsed": True},
            timeout=LAPSE_S + 10,
            what="the profile to enter the lapsed audience on time",
        )
        lapsed = view()
        elapsed = (datetime.now(UTC) - ordered_at).total_seconds()
        assert LAPSE_S <= lapsed["attributes"]["seconds_since_last_order"] <= elapsed + 1
        assert lapsed["version"] == version  # re-rendered, not changed by an event
        # the audience's size follows the re-render
        assert redis_client.hget(keys.audience_sizes("user"), "lapsed") == b"1"
        # and it keeps being rendered on time (each second), bounded by the index
        before = view()["attributes"]["seconds_since_last_order"]
        time.sleep(2.5)
        assert view()["attributes"]["seconds_since_last_order"] >= before + 1
        assert alive(own.worker)
