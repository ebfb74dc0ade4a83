"""Offsets that go backwards: judging a batch against its partition's history, and the
processor applying a reset partition's records as a new log."""

from __future__ import annotations

import orjson
import pytest

from attributes.ruleset import RuleSet
from streams.logs import KEPT, Checkpoint, History, MemoryLogHistory, judge
from streams.processor import BatchProcessor, ListDeadLetters, Record
from traitflow.memory_store import MemoryProfileStore

pytestmark = pytest.mark.anyio

NOW_S = 1_794_394_800.0
BIRTH = Checkpoint(0, 1_000, 7)
LATER = Checkpoint(500, 2_000, 9)


@pytest.mark.parametrize(
    ("history", "first", "verdict"),
    [
        (History(), Checkpoint(0, 5, 5), "new"),
        (History(0, [BIRTH, LATER]), LATER, "same"),  # a redelivery from a checkpoint
        (History(0, [BIRTH, LATER]), Checkpoint(300, 1, 1), "same"),  # no checkpoint there
        (History(0, [BIRTH, LATER]), Checkpoint(900, 1, 1), "same"),  # past the last one
        (History(0, [BIRTH, LATER]), Checkpoint(0, 1_001, 7), "reset"),  # another record at 0
        (History(0, [BIRTH, LATER]), Checkpoint(500, 2_000, 8), "reset"),
        (History(0, [Checkpoint(40, 1, 1)]), Checkpoint(0, 1, 1), "reset"),  # below the birth
    ],
)
def test_judge(history: History, first: Checkpoint, verdict: str) -> None:
    assert judge(history, first)[0] == verdict


def test_a_reset_s_reason_names_what_differs() -> None:
    assert judge(History(0, [BIRTH]), Checkpoint(0, 1_001, 7))[1] == (
        "offset 0 holds another record than the one committed before (timestamp 1001 against 1000)"
    )


async def test_the_memory_history_keeps_the_birth_and_the_latest() -> None:
    history = MemoryLogHistory()
    for offset in range(0, (KEPT + 50) * 10, 10):
        await history.record([("t/0", Checkpoint(offset, offset, 0))])
    kept = (await history.read("t/0")).checkpoints
    assert len(kept) == KEPT + 1
    assert kept[0].offset == 0
    assert [c.offset for c in kept[1:]] == list(range(500, (KEPT + 50) * 10, 10))
    assert await history.restart("t/0", Checkpoint(0, 5, 5)) == 1
    assert await history.read("t/0") == History(1, [Checkpoint(0, 5, 5)])


class Worker:
    def __init__(self, rules: RuleSet, store: MemoryProfileStore, logs: MemoryLogHistory) -> None:
        self.dead_letters = ListDeadLetters()
        self.processor = BatchProcessor(
            rules, store, self.dead_letters, clock=lambda: NOW_S, logs=logs, dedupe=False
        )


def page(user: str, offset: int, at_ms: int) -> Record:
    value = {"type": "page", "userId": user, "properties": {"n": offset}}
    return Record("events", 0, offset, orjson.dumps(value), at_ms)


async def views(store: MemoryProfileStore, user: str) -> int:
    raw = await store.read_view("user", "user_id", user)
    assert raw is not None
    views: int = orjson.loads(raw)["attributes"]["page_views"]
    return views


async def test_a_reset_partition_s_records_are_a_new_log(example_rules: RuleSet) -> None:
    """The broker lost the topic: its new records start at offset 0 again, under offsets
    the profiles applied. They are applied (as epoch 1), and counted as a reset; the
    new log's own redeliveries still change nothing."""
    store, logs = MemoryProfileStore(), MemoryLogHistory()
    worker = Worker(example_rules, store, logs)
    old = [page("u-1", offset, 1_000 + offset) for offset in range(5)]
    await worker.processor.process(old[:3])
    await worker.processor.process(old[3:])
    assert await views(store, "u-1") == 5

    restarted = Worker(example_rules, store, logs)  # a worker started after the reset
    new = [page("u-1", offset, 9_000 + offset) for offset in range(3)]
    report = await restarted.processor.process(new)
    assert report.resets == ["events/0"]
    assert await views(store, "u-1") == 8

    again = await Worker(example_rules, store, logs).processor.process(new)  # redelivered
    assert (again.resets, again.duplicates) == ([], 3)
    assert await views(store, "u-1") == 8


async def test_a_redelivery_of_the_same_log_is_no_reset(example_rules: RuleSet) -> None:
    store, logs = MemoryProfileStore(), MemoryLogHistory()
    records = [page("u-1", offset, 1_000 + offset) for offset in range(6)]
    first = Worker(example_rules, store, logs)
    for start in (0, 2, 4):
        await first.processor.process(records[start : start + 2])
    # a new worker reads again from a batch boundary (its group's committed offset)
    report = await Worker(example_rules, store, logs).processor.process(records[2:])
    assert (report.resets, report.duplicates) == ([], 4)
    assert await views(store, "u-1") == 6
