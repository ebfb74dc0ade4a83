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
from aiokafka.errors import TopicAlreadyExistsError, for_code

from traitflow.config import Settings
from traitflow.kafka_client import client_kwargs


def new_topics(
    settings: Settings, names: Iterable[str], *, compacted: Iterable[str] = ()
) -> list[NewTopic]:
    """The topics `names` as traitflow creates them: `topic_partitions` partitions, the
    replication factor and `min.insync.replicas` of the settings (unset: the broker's
    defaults: replication factor -1, no `min.insync.replicas` config), those in
    `compacted` keeping the last record per key."""
    compact = set(compacted)
    made = []
    for name in names:
        configs = {"cleanup.policy": "compact"} if name in compact else {}
        if settings.topic_min_insync_replicas is not None:
            configs["min.insync.replicas"] = str(settings.topic_min_insync_replicas)
        # aiokafka's NewTopic refuses -1 without replica assignments, which the
        # protocol allows (CreateTopics: -1 is the broker's default.replication.factor)
        topic = NewTopic(name, settings.topic_partitions, 1, topic_configs=configs or None)
        topic.replication_factor = settings.topic_replication_factor or -1
        made.append(topic)
    return made


async def ensure_topics(
    settings: Settings, names: Iterable[str] | None = None, *, compacted: Iterable[str] = ()
) -> None:
    """Create the ingest and dead-letter topics (or `names`) if they do not exist yet
    (`new_topics`); those in `compacted` keep the last record per key (a broker that
    does not compact, like Tansu, keeps them all). A topic the broker refuses to
    create (too few brokers for the replication factor, no ACL) raises, naming it."""
    wanted = list(names) if names is not None else [*settings.sources, settings.dead_letter_topic]
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    try:
        await admin.start()  # in the try: a client that failed to start is closed too
        existing = set(await admin.list_topics())
        missing = new_topics(
            settings, [n for n in wanted if n not in existing], compacted=compacted
        )
        if missing:
            # created concurrently by another process: what we wanted
            with contextlib.suppress(TopicAlreadyExistsError):
                response = await admin.create_topics(missing)
                for topic, code, message in response.topic_errors:
                    if code not in (0, TopicAlreadyExistsError.errno):
                        error = for_code(code)
                        raise error(f"creating topic {topic!r}: {message or error.description}")
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
    producer = AIOKafkaProducer(**client_kwargs(settings), linger_ms=5)
    deliveries = []
    try:
        await producer.start()
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


def ingest_partitions(consumer: AIOKafkaConsumer, settings: Settings) -> list[TopicPartition]:
    """Every partition of the ingest topics, as the started `consumer` knows them."""
    return [
        TopicPartition(topic, p)
        for topic in settings.sources
        for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]


async def read_dead_letters(
    settings: Settings, *, at_least: int = 0, wait_s: float = 1.0
) -> list[tuple[bytes, dict[str, bytes]]]:
    """The dead-letter topic from its start, as (original bytes, headers) per record.

    Reads until `at_least` records were seen or `wait_s` passed (with `at_least` 0:
    for `wait_s`); it joins no consumer group and commits nothing."""
    topic = settings.dead_letter_topic
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
    found: list[tuple[bytes, dict[str, bytes]]] = []
    try:
        await consumer.start()
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
        **client_kwargs(settings),
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
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        await consumer.start()
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
    try:
        await consumer.start()
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
        **client_kwargs(settings), linger_ms=5, max_request_size=max_request_size
    )
    try:
        await producer.start()
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
