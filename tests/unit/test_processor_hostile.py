"""Hostile input through the processor: whatever one record is, it is a dead letter
alone, with a reason that names what is wrong, and every other record is applied."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from attributes.limits import EventLimits
from attributes.ruleset import RuleSet
from attributes.stitching import Stitcher
from streams.processor import BatchProcessor, BatchReport, ListDeadLetters, Record
from traitflow.memory_store import MemoryProfileStore

pytestmark = pytest.mark.anyio

TOPIC = "events"
NOW_S = 1_794_394_800.0  # 2026-11-11T11:00:00Z
BROKER_MS = int(NOW_S * 1000) - 60_000


class Worker:
    def __init__(self, rules: RuleSet, limits: EventLimits | None = None) -> None:
        self.store = MemoryProfileStore()
        self.dead_letters = ListDeadLetters()
        self.processor = BatchProcessor(
            rules, self.store, self.dead_letters, clock=lambda: NOW_S, limits=limits
        )
        self.offset = 0

    async def send(self, values: Sequence[dict[str, Any] | bytes]) -> BatchReport:
        records = []
        for value in values:
            raw = value if isinstance(value, bytes) else orjson.dumps(value)
            records.append(Record(TOPIC, self.offset % 3, self.offset, raw, BROKER_MS))
            self.offset += 1
        return await self.processor.process(records)

    def reasons(self) -> dict[int, str]:
        return {record.offset: reason for record, reason in self.dead_letters.records}

    async def orders(self, user: str) -> Any:
        raw = await self.store.read_view("user", "user_id", user)
        return None if raw is None else orjson.loads(raw)["attributes"]["purchase_count"]


def order(user: str, n: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": f"{user}-{n}",
        "userId": user,
        "properties": {"revenue": 1.0, "product_id": "sku"},
        **extra,
    }


def deep(depth: int) -> bytes:
    return (
        b'{"type":"track","event":"Order Completed","userId":"evil","properties":{"a":'
        + b"[" * depth
        + b"]" * depth
        + b"}}"
    )


async def test_hostile_events_are_dead_letters_alone(example_rules: RuleSet) -> None:
    """The issue's run, small: valid orders with hostile events mixed in; every user
    gets every order, and each hostile event is a dead letter naming its limit."""
    worker = Worker(example_rules)
    hostile: dict[int, str] = {
        3: "deeper than the decoder follows",
        7: "42 levels",
        11: "TRAITFLOW_MAX_EVENT_BYTES",
        15: "identity user_id is 600 characters",
        19: "messageId is 513 characters",
        23: "in the future",
        27: "not a valid event",
    }
    values: list[dict[str, Any] | bytes] = []
    for n in range(30):
        if n == 3:
            values.append(deep(1_500))
        elif n == 7:
            values.append(deep(40))
        elif n == 11:
            values.append(orjson.dumps(order("big", n, properties={"p": "x" * 300_000})))
        elif n == 15:
            values.append(order("u" * 600, n))
        elif n == 19:
            values.append(order("u-1", n, messageId="m" * 513))
        elif n == 23:
            values.append(order("u-1", n, timestamp="2999-01-01T00:00:00Z"))
        elif n == 27:
            values.append(b'{"type": "track", "event": ')
        else:
            values.append(order(f"u-{n % 5}", n))
    report = await worker.send(values)

    assert report.dead_lettered == len(hostile)
    reasons = worker.reasons()
    assert reasons.keys() == hostile.keys()
    for offset, words in hostile.items():
        assert words in reasons[offset]
    counts = [await worker.orders(f"u-{k}") for k in range(5)]
    assert counts == [5, 5, 4, 4, 5]  # 30 orders by n % 5, the 7 hostile ones taken out


async def test_limits_are_settings(example_rules: RuleSet) -> None:
    worker = Worker(example_rules, EventLimits(max_bytes=200, max_future_skew_ms=None))
    report = await worker.send(
        [
            order("u-1", 0, properties={"p": "x" * 300}),
            order("u-1", 1, timestamp="2999-01-01T00:00:00Z"),
        ]
    )
    assert report.dead_lettered == 1
    assert "the limit is 200" in worker.reasons()[0]
    assert await worker.orders("u-1") == 1


async def test_an_event_that_breaks_stitching_is_found_and_dead_lettered(
    example_rules: RuleSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that one event meets in a part with no per-event fallback (stitching):
    the batch is narrowed down by halves to that event; the others are all applied,
    each partition in order."""
    assign = Stitcher.assign

    def breaking(self: Stitcher, ids: Any, *args: Any, **kwargs: Any) -> Any:
        if ("user_id", "poison") in ids:
            raise RuntimeError("a bug this event meets")
        return assign(self, ids, *args, **kwargs)

    monkeypatch.setattr(Stitcher, "assign", breaking)
    worker = Worker(example_rules)
    values = [order(f"u-{n % 5}", n) for n in range(40)]
    values[29] = order("poison", 29)
    report = await worker.send(values)

    assert worker.reasons() == {
        29: "event could not be stitched: RuntimeError('a bug this event meets')"
    }
    assert report.dead_lettered == 1
    assert [await worker.orders(f"u-{k}") for k in range(5)] == [8, 8, 8, 8, 7]
    assert await worker.orders("poison") is None


async def test_a_record_whose_reading_raises_is_a_dead_letter(
    example_rules: RuleSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = Worker(example_rules)
    extract = type(worker.processor.entities["user"].identities).extract

    def breaking(self: Any, event: Any) -> Any:
        if event.messageId == "u-1-1":
            raise ValueError("unexpected")
        return extract(self, event)

    monkeypatch.setattr(type(worker.processor.entities["user"].identities), "extract", breaking)
    report = await worker.send([order("u-1", 0), order("u-1", 1), order("u-1", 2)])
    assert worker.reasons() == {1: "event could not be read: ValueError('unexpected')"}
    assert report.dead_lettered == 1
    assert await worker.orders("u-1") == 2
