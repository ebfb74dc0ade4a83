"""Anonymous-only profiles expire when idle, through a real worker and Redis: all of
their keys at once; a known person's profile (anonymous ids included) never does."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import Publisher, wait_until
from tests.integration.workers import alive, start_worker
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout

pytestmark = pytest.mark.integration


def test_an_idle_anonymous_profile_expires_and_a_known_one_stays(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    own = settings.isolated(
        f"tfanon-{uuid.uuid4().hex[:8]}",
        topic_partitions=2,
        anonymous_ttl_s=1.5,
        home=tmp_path,
    )
    keys = KeyLayout(own.key_prefix)
    visitor, person = "anonymous_id:visitor", "known"
    visitor_keys = [
        keys.state("user", visitor),
        keys.view("user", visitor),
        keys.version("user", visitor),
        keys.index("user", "anonymous_id", "visitor"),
    ]
    person_keys = [
        keys.state("user", person),
        keys.view("user", person),
        keys.index("user", "user_id", person),
        keys.index("user", "anonymous_id", "device"),
    ]
    publish = Publisher(own, next(iter(own.sources)))
    worker = start_worker(own, "anonymous-worker")
    try:
        publish(
            [
                {"type": "page", "anonymousId": "visitor", "messageId": f"{own.key_prefix}-1"},
                {"type": "page", "anonymousId": "device", "messageId": f"{own.key_prefix}-2"},
                {
                    "type": "identify",
                    "userId": person,
                    "anonymousId": "device",
                    "messageId": f"{own.key_prefix}-3",
                },
            ]
        )
        wait_until(
            lambda: alive(worker) and redis_client.exists(*visitor_keys, *person_keys) == 8,
            what="both profiles written",
        )
        ttls = [redis_client.pttl(key) for key in visitor_keys]
        assert all(0 < ttl <= 1_500 for ttl in ttls), ttls
        assert [redis_client.pttl(key) for key in person_keys] == [-1] * 4
        started = time.monotonic()
        wait_until(lambda: redis_client.exists(*visitor_keys) == 0, timeout=10, what="expiry")
        assert time.monotonic() - started < 3
        assert redis_client.exists(*person_keys) == 4
    finally:
        worker.stop()
        for key in redis_client.scan_iter(keys.all_keys(), count=10_000):
            redis_client.unlink(key)
