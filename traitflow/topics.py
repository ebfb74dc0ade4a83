"""Kafka topic housekeeping and publishing, shared by the CLI, the demo and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from traitflow.config import Settings


async def ensure_topics(settings: Settings, names: Iterable[str] | None = None) -> None:
    """Create the ingest and dead-letter topics if they do not exist yet."""
    wanted = list(names) if names is not None else [*settings.sources, settings.dead_letter_topic]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, settings.topic_partitions, 1) for name in wanted if name not in existing
        ]
        if missing:
            # created concurrently by another process: what we wanted
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


def partition_key(line: bytes) -> bytes | None:
    """Key a raw event by its profile id so one profile's events stay in one partition,
    in order. Lines that are not JSON objects are sent unkeyed (the worker dead-letters them)."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    pid = event.get("userId") or event.get("anonymousId")
    return str(pid).encode() if pid is not None else None


async def publish_lines(settings: Settings, topic: str, lines: Iterable[bytes]) -> int:
    """Publish raw event lines (blank lines skipped); return how many were sent."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await producer.start()
    deliveries = []
    try:
        for line in lines:
            line = line.strip()
            if line:
                deliveries.append(await producer.send(topic, line, key=partition_key(line)))
        await asyncio.gather(*deliveries)  # raises if any record was not delivered
    finally:
        await producer.stop()
    return len(deliveries)


async def publish_file(settings: Settings, path: Path, topic: str | None = None) -> int:
    await ensure_topics(settings)
    target = topic or next(iter(settings.sources))
    with path.open("rb") as lines:
        return await publish_lines(settings, target, lines)


async def read_dead_letters(
    settings: Settings, *, at_least: int = 0, wait_s: float = 1.0
) -> list[tuple[bytes, dict[str, bytes]]]:
    """The dead-letter topic from its start, as (original bytes, headers) per record.

    Reads until `at_least` records were seen or `wait_s` passed (with `at_least` 0:
    for `wait_s`); it joins no consumer group and commits nothing."""
    topic = settings.dead_letter_topic
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    found: list[tuple[bytes, dict[str, bytes]]] = []
    try:
        assigned = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not (at_least and len(found) >= at_least):
            for messages in (await consumer.getmany(timeout_ms=300)).values():
                found.extend((message.value, dict(message.headers)) for message in messages)
    finally:
        await consumer.stop()
    return found
