"""Processed records get their offsets committed (the at-least-once bookkeeping).

The worker acks a batch only after its effect is in Redis, and Faust commits the end of
the contiguous run of acked offsets every `broker_commit_interval` (2.8 s). If acks got
lost, or a record stayed tracked as unacked, the committed offsets would stall below the
end of the log: a restart would then re-read (and a rebalance wait for) records forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.integration.conftest import user_id, wait_until
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.services import Daemon

pytestmark = pytest.mark.integration


async def _produce(settings: Settings, topic: str, users: list[str]) -> dict[int, int]:
    """One page event per user (keyed by user); return partition -> last offset written."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        sent = [
            await producer.send(
                topic,
                orjson.dumps({"type": "page", "userId": user, "properties": {"i": i}}),
                key=user.encode(),
            )
            for i, user in enumerate(users)
        ]
        last: dict[int, int] = {}
        for delivery in sent:
            meta = await delivery
            last[meta.partition] = max(last.get(meta.partition, -1), meta.offset)
        return last
    finally:
        await producer.stop()


async def _committed(settings: Settings, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """partition -> the group's committed offset (-1: none yet).

    Read through a consumer of the worker's group that never joins it (OffsetFetch
    only): `AIOKafkaAdminClient.list_consumer_group_offsets` fails against Tansu."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.app_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        committed = {p: await consumer.committed(TopicPartition(topic, p)) for p in partitions}
        return {p: -1 if offset is None else offset for p, offset in committed.items()}
    finally:
        await consumer.stop()


def test_committed_offsets_reach_the_end_of_the_log(
    worker: Daemon, settings: Settings, ingest_topic: str, redis_client: redis.Redis
) -> None:
    users = [user_id() for _ in range(40)]
    last = asyncio.run(_produce(settings, ingest_topic, users))
    assert len(last) == settings.topic_partitions, "every partition should get records"
    keys = KeyLayout(settings.key_prefix)
    wait_until(
        lambda: redis_client.exists(*(keys.view("user", u) for u in users)) == len(users),
        what="every record to be processed",
    )
    # tests run one at a time: our records are the last in each partition
    ends = {partition: offset + 1 for partition, offset in last.items()}

    def all_committed() -> bool:
        return asyncio.run(_committed(settings, ingest_topic, ends)) == ends

    # processed, so committed within a commit interval (2.8 s) and a round trip or two
    wait_until(all_committed, timeout=15, what=f"committed offsets to reach {ends}")
