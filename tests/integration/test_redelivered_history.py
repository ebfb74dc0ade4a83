"""Records a worker committed to Redis and never acknowledged to Kafka, redelivered to
the next worker after an attribute was made, on a real broker and Redis: the next
worker skips them as applied, and the backfill reads them as history
(`streams.rule_versions._redelivered`); every profile ends with the batch answer.

The worker's death is a processor that stops without committing its consumer
offsets after a batch it committed to Redis: the same state a kill -9 between the
two commits leaves, without timing one. The notes' script is checked against its
reference on dicts (`MemoryStartNotes`) first."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from attributes.catalog import Status, new_attribute
from streams.backfill import Backfill
from streams.backfill_runner import activated, start_notes
from streams.processor import BatchProcessor, ListDeadLetters, Record
from streams.rule_switch import RuleSwitch
from streams.start_notes import MemoryStartNotes
from traitflow.config import Settings
from traitflow.kafka_client import client_kwargs
from traitflow.key_layout import KeyLayout
from traitflow.redis_store import RedisProfileStore
from traitflow.rule_catalog import Catalog, Change, RedisRuleCatalog, RuleSource
from traitflow.topics import ensure_topics

pytestmark = pytest.mark.integration

RULES = """\
attributes:
  - name: purchase_count
    function: count
    event: Order Completed
"""
ORDERS_ALL = {"name": "orders_all", "function": "count", "event": "Order Completed"}


def as_sets(notes: dict[Any, Any]) -> dict[str, set[str]]:
    """A partition's notes, each field's offsets as a set (how they are read)."""
    text = {(k.decode() if isinstance(k, bytes) else k): v for k, v in notes.items()}
    return {k: set((v.decode() if isinstance(v, bytes) else v).split(",")) for k, v in text.items()}


def test_the_notes_script_does_what_its_reference_does(settings: Settings) -> None:
    """The same calls through the Lua script and through `MemoryStartNotes`: the same
    fields, offsets and answers (which start notes took effect)."""
    prefix = f"tfrd-{uuid.uuid4().hex[:8]}"
    calls: list[tuple[int, dict[str, int], Any, Any]] = [
        (0, {"t/0": 0, "t/1": 5}, {}, {}),
        (1, {"t/0": 10}, {"t/0": {"user:0": [10, 12]}}, {"t/0": {"user": [11, 13]}}),
        (1, {"t/0": 3}, {}, {"t/0": {"user": [4]}}),  # not taken: nothing of 4
        (1, {}, {}, {"t/0": {"account": [20, 21]}}),  # held: noted
        (3, {"t/0": 2, "t/1": 7}, {}, {"t/0": {"user": [2, 11, 30]}, "t/1": {"user": [6]}}),
    ]

    async def run() -> None:
        store = RedisProfileStore.from_url(settings, prefix)
        keys = KeyLayout(prefix)
        note, memory = start_notes(store.client, keys), MemoryStartNotes()
        try:
            for version, firsts, also, redelivered in calls:
                took = await note(version, firsts, also, redelivered)
                assert set(took) == set(await memory(version, firsts, also, redelivered))
            for partition in ("t/0", "t/1"):
                stored = await store.client.hgetall(keys.rules_starts(partition))
                assert as_sets(stored) == as_sets(dict(memory.notes[partition])), partition
            assert memory.notes["t/0"]["3:user:1"] == "11,30"
            assert memory.notes["t/0"]["3:user:0"] == "2"
        finally:
            await store.close()

    asyncio.run(run())


def test_records_a_dead_worker_committed_are_backfilled_once(
    settings: Settings, tmp_path: Path
) -> None:
    """W1 (rules version 0) commits offsets 0..9 and acknowledges them, commits 10..24
    and dies unacknowledged; `orders_all` is made (version 1); W2 reads from the
    acknowledged offset 10 to the end in batches of 10; the backfill runs, the
    attribute is made ACTIVE and one more order each renders the views. Every user's
    `orders_all` equals its orders, as `purchase_count` does."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    own = settings.isolated(f"tfrd-{uuid.uuid4().hex[:8]}", topic_partitions=1, rules_path=rules)
    topic = next(iter(own.sources))
    tp = TopicPartition(topic, 0)
    users = [f"u{n}" for n in range(4)]
    order = {"type": "track", "event": "Order Completed"}
    events = [{**order, "userId": users[n % 3 + n % 2], "messageId": f"m{n}"} for n in range(40)]
    oracle = Counter(str(e["userId"]) for e in events)

    async def run() -> None:
        await ensure_topics(own)
        producer = AIOKafkaProducer(**client_kwargs(own))
        await producer.start()
        try:
            for event in events:
                await producer.send_and_wait(topic, orjson.dumps(event), partition=0)
        finally:
            await producer.stop()
        store = RedisProfileStore.from_url(own, own.key_prefix)
        catalog = RedisRuleCatalog.from_url(own.redis_url, own.key_prefix)
        source = RuleSource.read(rules)
        note = start_notes(store.client, store.keys)

        async def worker() -> BatchProcessor:
            switch = RuleSwitch(catalog, source)
            processor = BatchProcessor(
                source.compose(()), store, ListDeadLetters(), reload=switch.current,
                note_start=note,
            )  # fmt: skip
            await processor.switch_to_current()
            return processor

        async def consumer() -> AIOKafkaConsumer:
            reader = AIOKafkaConsumer(
                **client_kwargs(own), group_id=own.app_id, enable_auto_commit=False,
                auto_offset_reset="earliest",
            )  # fmt: skip
            await reader.start()
            reader.assign([tp])
            return reader

        async def batch(reader: AIOKafkaConsumer, size: int) -> list[Record]:
            got: list[Record] = []
            deadline = time.monotonic() + 30
            while len(got) < size and time.monotonic() < deadline:
                fetched = await reader.getmany(tp, timeout_ms=500, max_records=size - len(got))
                got += [
                    Record(topic, 0, m.offset, m.value or b"", m.timestamp)
                    for m in fetched.get(tp, [])
                ]
            assert len(got) == size
            return got

        try:
            w1, reader = await worker(), await consumer()
            await w1.process(await batch(reader, 10))
            await reader.commit({tp: 10})
            await w1.process(await batch(reader, 15))  # committed to Redis, then it dies
            await reader.stop()

            now = int(time.time() * 1000)
            made = new_attribute(f"ca-{uuid.uuid4().hex[:8]}", ORDERS_ALL, Status.PROCESSING, now)

            def create(_: Catalog) -> Change:
                return Change(put=made)

            await catalog.change(create)
            stored = (await catalog.snapshot()).get(made.id)
            assert stored is not None
            made = stored  # with the version the catalog gave it
            w2, reader = await worker(), await consumer()
            assert await reader.committed(tp) == 10
            duplicates = 0
            for _ in range(3):
                duplicates += (await w2.process(await batch(reader, 10))).duplicates
                await reader.commit()
            await reader.stop()
            assert duplicates == 15

            assert await Backfill(own, w2, catalog, store.client, source).run(made)
            await catalog.change(activated(made, int(time.time() * 1000)))
            await w2.switch_to_current()  # ACTIVE: an order each renders the whole value
            after = [{**order, "userId": user, "messageId": f"after-{user}"} for user in users]
            await w2.process(
                [Record(topic, 0, 40 + n, orjson.dumps(e), 0) for n, e in enumerate(after)]
            )
            oracle.update(str(e["userId"]) for e in after)
            for user in users:
                raw = await store.client.get(store.keys.view("user", user))
                got = orjson.loads(raw or b"{}")["attributes"]
                want = oracle[user]
                assert got == {"purchase_count": want, "orders_all": want}, user
        finally:
            await catalog.close()
            await store.close()

    asyncio.run(run())
