"""Kafka topic housekeeping and publishing, shared by the CLI, the demo and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from traitflow.config import Settings


async def ensure_topics(
    settings: Settings, names: Iterable[str] | None = None, *, compacted: Iterable[str] = ()
) -> None:
    """Create the ingest and dead-letter topics (or `names`) if they do not exist yet;
    those in `compacted` keep the last record per key (a broker that does not compact,
    like Tansu, keeps them all)."""
    wanted = list(names) if names is not None else [*settings.sources, settings.dead_letter_topic]
    compact = set(compacted)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name,
                settings.topic_partitions,
                1,
                topic_configs={"cleanup.policy": "compact"} if name in compact else None,
            )
            for name in wanted
            if name not in existing
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


#: what a reader fetches at most per partition and request: a record larger than the
#: producer's default 1 MB must still be readable (e.g. one that was parked)
_FETCH_BYTES = 64 * 1024 * 1024


def _reader(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=_FETCH_BYTES,
        fetch_max_bytes=_FETCH_BYTES,
    )


async def read_topic(
    settings: Settings, topic: str, *, idle_s: float = 0.5, timeout_s: float = 60.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic`, partition by partition in offset order (none if it does
    not exist); it joins no consumer group and commits nothing.

    The end is where a fetch brings nothing for `idle_s` once each partition reached
    the end the broker lists (Tansu lists it low, as the last batch's first offset + 1,
    so that alone could stop one batch short), or `timeout_s` at most."""
    consumer = _reader(settings)
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        assigned = [TopicPartition(topic, p) for p in partitions]
        if not assigned:
            return []
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            fetched = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            for messages in fetched.values():
                found.extend(messages)
            if not fetched:
                positions = [await consumer.position(tp) for tp in assigned]
                if all(p >= ends[tp] for p, tp in zip(positions, assigned, strict=True)):
                    break
    finally:
        await consumer.stop()
    found.sort(key=lambda record: (record.partition, record.offset))
    return found


async def read_record(
    settings: Settings, topic: str, partition: int, offset: int, *, timeout_s: float = 5.0
) -> ConsumerRecord[bytes, bytes] | None:
    """The record at `offset` of one partition, or None if it is not there."""
    consumer = _reader(settings)
    await consumer.start()
    try:
        if partition not in (consumer.partitions_for_topic(topic) or ()):
            return None
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in (await consumer.getmany(tp, timeout_ms=300)).get(tp, []):
                if message.offset == offset:
                    return message
                if message.offset > offset:
                    return None
    finally:
        await consumer.stop()
    return None


async def publish_records(
    settings: Settings,
    records: Sequence[tuple[str, bytes, Mapping[str, bytes]]],
    *,
    max_request_size: int = 1024 * 1024,
) -> None:
    """Publish (topic, value, headers) records keyed like events (`partition_key`);
    return once every one was delivered, or raise."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, max_request_size=max_request_size
    )
    await producer.start()
    try:
        deliveries: list[Any] = []
        for topic, value, headers in records:
            deliveries.append(
                await producer.send(
                    topic, value, key=partition_key(value), headers=list(headers.items())
                )
            )
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
