"""Quix Streams' side of `bench.peers`: run by the Quix virtualenv's python, not ours.

    python bench/peers_quix_app.py BROKER TOPIC GROUP REDIS_URL PREFIX CHANGELOG STATE_DIR

Per user, in RocksDB state: revenue_sum, orders, views and last_category (the most
recent by event time); each record's new value goes to Redis through Quix's built-in
`RedisSink` (a SET per record, flushed at each checkpoint), under `PREFIX:<user>`.
The first record processed sets `PREFIX:first` to the time it was processed (epoch s),
which is where `bench.peers` starts the clock.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import redis
from quixstreams import Application, State
from quixstreams.sinks.community.redis import RedisSink

#: how often Quix checkpoints (commits offsets, flushes state and the sink); its
#: default is 5 s, which would make a ~7 s run wait for its last flush
COMMIT_INTERVAL_S = 1.0


def main() -> None:
    broker, topic_name, group, redis_url, prefix, changelog, state_dir = sys.argv[1:8]
    url = urlsplit(redis_url)
    host, port, db = url.hostname or "127.0.0.1", url.port or 6379, int(url.path[1:] or 0)
    marker = redis.Redis(host=host, port=port, db=db)
    app = Application(
        broker_address=broker,
        consumer_group=group,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        commit_interval=COMMIT_INTERVAL_S,
        use_changelog_topics=changelog == "on",
        state_dir=state_dir,
        # Tansu holds a new group's join for half the session timeout (45 s by default)
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 2000},
    )
    topic = app.topic(topic_name, key_deserializer="str", value_deserializer="json")
    started: list[float] = []

    def aggregate(event: dict[str, Any], state: State) -> dict[str, Any]:
        if not started:
            started.append(time.time())
            marker.set(f"{prefix}:first", started[0])
        totals = state.get("totals") or {
            "revenue_sum": 0.0,
            "orders": 0,
            "views": 0,
            "last_category": None,
            "last_at": "",
        }
        if event["event"] == "Order Completed":
            totals["revenue_sum"] += event["properties"]["revenue"]
            totals["orders"] += 1
        else:
            totals["views"] += 1
        if event["timestamp"] >= totals["last_at"]:  # ISO UTC strings sort by time
            totals["last_at"] = event["timestamp"]
            totals["last_category"] = event["properties"]["category"]
        state.set("totals", totals)
        return dict(totals)

    sink = RedisSink(
        host,
        port,
        db,
        value_serializer=json.dumps,
        key_serializer=lambda key, value: f"{prefix}:{key}",
    )
    app.dataframe(topic).apply(aggregate, stateful=True).sink(sink)
    app.run()


if __name__ == "__main__":
    main()
