"""`traitflow dead-letters replay` against a real broker and Redis, without a worker:
what it publishes where, and that a second replay publishes nothing again."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest
import redis

from streams.dead_letters import (
    OFFSET,
    PARTITION,
    REASON,
    TOPIC,
    RedisParking,
    parked_fields,
)
from streams.records import Record
from tests.integration.dead_letter_support import dead_letters_cli, parked_letters
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.replay import REPLAY_OF
from traitflow.topics import ensure_topics, publish_records, read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def isolated(settings: Settings) -> Settings:
    """Topics and Redis keys of this test alone (no worker reads them)."""
    mine = settings.isolated(f"tfreplay-{uuid.uuid4().hex[:8]}", home=settings.home)
    asyncio.run(ensure_topics(mine))
    return mine


def event(n: int) -> bytes:
    return orjson.dumps({"type": "track", "userId": f"u-{n}", "properties": {"n": n}})


def on_topic(
    settings: Settings, value: bytes, origin: tuple[str, int, int], reason: str
) -> tuple[str, bytes, dict[str, bytes]]:
    """A record of the dead-letter topic, as the worker writes it."""
    topic, partition, offset = origin
    headers = {
        REASON: reason.encode(),
        TOPIC: topic.encode(),
        PARTITION: str(partition).encode(),
        OFFSET: str(offset).encode(),
    }
    return (settings.dead_letter_topic, value, headers)


def park(settings: Settings, value: bytes, origin: tuple[str, int, int]) -> None:
    async def run() -> None:
        parking = RedisParking.from_url(settings.redis_url, settings.key_prefix)
        try:
            record = Record(*origin, value, 0)
            now = int(time.time() * 1000)
            await parking.park([parked_fields(record, "no id", "TimeoutError: x", "dlq", now)])
        finally:
            await parking.close()

    asyncio.run(run())


def test_each_letter_is_replayed_once_to_its_origin(isolated: Settings) -> None:
    ingest = next(iter(isolated.sources))
    letters = [
        on_topic(isolated, event(0), (ingest, 0, 10), "no id"),
        on_topic(isolated, event(0), (ingest, 0, 10), "no id"),  # the same origin, twice
        on_topic(isolated, event(1), (ingest, 1, 11), "no id"),
        on_topic(isolated, event(2), (ingest, 2, 12), "over 262144 bytes"),
        on_topic(isolated, event(3), ("retired-topic", 0, 13), "no id"),
    ]
    asyncio.run(publish_records(isolated, letters))
    park(isolated, event(4), (ingest, 3, 14))
    park(isolated, event(4), (ingest, 3, 14))  # parked once per origin

    dry = dead_letters_cli(isolated, "replay", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would publish 4 dead letters" in dry.stdout
    assert "retired-topic is no ingest topic" in dry.stderr
    assert asyncio.run(read_topic(isolated, ingest, idle_s=0.3)) == []

    filtered = dead_letters_cli(isolated, "replay", "--reason", "OVER 262144")
    assert filtered.exit_code == 0, filtered.output
    assert "published 1 dead letters" in filtered.stdout
    rest = dead_letters_cli(isolated, "replay")
    assert rest.exit_code == 0, rest.output
    assert "published 3 dead letters" in rest.stdout
    assert "; 1 more with the same origin as one of them, not published again" in rest.stdout
    assert "; 1 left as they are: their origin is no ingest topic now" in rest.stdout
    assert "replaying" in rest.stderr  # the progress bar
    again = dead_letters_cli(isolated, "replay")
    assert "published 0 dead letters" in again.stdout

    replayed = asyncio.run(read_topic(isolated, ingest, idle_s=0.3))
    assert sorted(r.value for r in replayed) == [event(n) for n in range(5) if n != 3]
    assert all(dict(r.headers)[REPLAY_OF] for r in replayed)
    assert parked_letters(isolated) == []
    listed = dead_letters_cli(isolated, "list")
    replayed_rows = [line for line in listed.stdout.splitlines() if "topic, replayed" in line]
    assert len(replayed_rows) == 4  # every letter but the unroutable one


def test_one_replay_at_a_time(isolated: Settings) -> None:
    ingest = next(iter(isolated.sources))
    asyncio.run(publish_records(isolated, [on_topic(isolated, event(0), (ingest, 0, 1), "x")]))
    client = redis.Redis.from_url(isolated.redis_url)
    lock = KeyLayout(isolated.key_prefix).replay_lock
    try:
        client.set(lock, "someone-else", px=60_000)
        refused = dead_letters_cli(isolated, "replay")
        assert refused.exit_code == 1
        assert "another replay is in progress" in refused.output
        assert "would publish 1" in dead_letters_cli(isolated, "replay", "--dry-run").stdout
        client.delete(lock)
        assert "published 1" in dead_letters_cli(isolated, "replay").stdout
        assert client.get(lock) is None  # released
        assert "topic, replayed" in dead_letters_cli(isolated, "list").stdout
    finally:
        client.delete(lock)
        client.close()
