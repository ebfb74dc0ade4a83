"""Records a dead worker committed but never acknowledged come again to the next one
(`streams.rule_versions._redelivered`): found already applied, they are skipped, so an
attribute made meanwhile counts them neither live nor, unless the start notes say
so, by its backfill. The processor whose start note at the new version takes effect
notes them as history (`"{version}:{entity}:{older}"`), once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from attributes.catalog import ManagedAttribute, Status
from streams.history import Span, committed_before, history_end
from streams.processor import BatchProcessor, ListDeadLetters, Record
from streams.rule_switch import RuleSwitch
from streams.start_notes import MemoryStartNotes
from traitflow.memory_store import MemoryProfileStore
from traitflow.rule_catalog import Catalog, Change, MemoryRuleCatalog, RuleSource

pytestmark = pytest.mark.anyio

NOW_S = 1_794_394_800.0
RULES = """\
attributes:
  - name: spend
    function: sum
    field: properties.revenue
    event: Order
"""
PARTITION = "events/0"


def orders(*offsets: int) -> list[Record]:
    """Orders of u-1 at `offsets` of partition events/0 (messageIds differ)."""
    body = {"type": "track", "event": "Order", "userId": "u-1", "properties": {"revenue": 5}}
    return [
        Record("events", 0, o, orjson.dumps({**body, "messageId": f"m-{o}"}), int(NOW_S * 1000))
        for o in offsets
    ]


def attribute(n: int, version: int) -> ManagedAttribute:
    spec = {"name": f"orders{n}", "function": "count", "event": "Order"}
    return ManagedAttribute(f"ca-{n}", Status.PROCESSING, spec, version, version)


class World:
    """A catalog, one store, the start notes, and workers made on demand."""

    def __init__(self, tmp_path: Path, store: MemoryProfileStore | None = None) -> None:
        path = tmp_path / "rules.yaml"
        path.write_text(RULES)
        self.catalog = MemoryRuleCatalog()
        self.store = store or MemoryProfileStore()
        self.source = RuleSource.read(path)
        self.notes = MemoryStartNotes()

    async def worker(self) -> BatchProcessor:
        """A worker that starts now: at the current rules, as `streams.app` starts one."""
        switch = RuleSwitch(self.catalog, self.source)
        processor = BatchProcessor(
            self.source.compose(()),
            self.store,
            ListDeadLetters(),
            clock=lambda: NOW_S,
            reload=switch.current,
            note_start=self.notes,
        )
        await processor.switch_to_current()
        return processor

    async def make(self, n: int) -> int:
        """The API makes attribute `orders{n}`: the catalog's version moves, and with it
        the version in the store. Returns that version."""

        def put(catalog: Catalog) -> Change:
            return Change(put=attribute(n, catalog.version + 1))

        version = (await self.catalog.change(put)).version
        self.store.rules_version = version
        return version

    def history(self, version: int, upto: int) -> list[int]:
        """The offsets below `upto` a backfill of an attribute of `version` reads."""
        notes = self.notes.notes[PARTITION]
        starts: dict[bytes | str, bytes | str] = {k: v for k, v in notes.items()}
        end = history_end(starts, version)
        assert end is not None
        span = Span(TopicPartition("events", 0), 0, end, committed_before(starts, version, "user"))
        return [o for o in range(upto) if span.wants(o)]

    async def live(self, n: int) -> int:
        raw = await self.store.read_view("user", "id", "u-1")
        assert raw is not None
        return int(orjson.loads(raw)["attributes"].get(f"orders{n}", 0))


async def test_records_a_dead_worker_applied_are_history_for_an_attribute_made_after(
    tmp_path: Path,
) -> None:
    """W1 at version 0 commits 2..5 and dies unacknowledged; `orders1` is made (version
    1); W2, at 1, is given 2..7: its start note (2) takes effect, 2..5 are skipped as
    applied. The backfill of `orders1` reads 0..5, live counts 6 and 7: each once."""
    world = World(tmp_path)
    w1 = await world.worker()
    await w1.process(orders(0, 1))
    await w1.process(orders(2, 3, 4, 5))  # committed; its offsets never acknowledged
    assert await world.make(1) == 1
    w2 = await world.worker()
    report = await w2.process(orders(2, 3, 4, 5, 6, 7))
    assert report.duplicates == 4
    assert world.notes.notes[PARTITION]["1"] == "2"
    assert world.notes.notes[PARTITION]["1:user:0"] == "2,3,4,5"
    assert world.history(1, 8) == [0, 1, 2, 3, 4, 5]
    assert await world.live(1) == 2


async def test_a_redelivery_over_several_batches_is_noted_whole(tmp_path: Path) -> None:
    """The acknowledged offset may lag many batches (a worker commits its offsets now
    and then): every batch of the partition the new worker computes at its version
    notes what it finds applied, not only the first."""
    world = World(tmp_path)
    w1 = await world.worker()
    await w1.process(orders(0, 1, 2, 3))
    await w1.process(orders(4, 5, 6))
    await world.make(1)
    w2 = await world.worker()
    await w2.process(orders(0, 1))
    await w2.process(orders(2, 3, 4))
    await w2.process(orders(5, 6, 7, 8))
    assert world.history(1, 9) == [0, 1, 2, 3, 4, 5, 6]
    assert await world.live(1) == 2


async def test_an_earlier_start_note_at_the_version_adds_nothing(tmp_path: Path) -> None:
    """W1 switched to version 1 itself and noted its start before it committed 2..5 at
    it: they were counted live. W2's note does not take effect and notes nothing."""
    world = World(tmp_path)
    w1 = await world.worker()
    await w1.process(orders(0, 1))
    await world.make(1)
    await w1.switch_to_current()
    await w1.process(orders(2, 3, 4, 5))
    w2 = await world.worker()
    await w2.process(orders(2, 3, 4, 5, 6, 7))
    assert [f for f in world.notes.notes[PARTITION] if ":" in f] == []
    assert world.history(1, 8) == [0, 1]
    assert await world.live(1) == 6


async def test_a_third_worker_notes_nothing_again(tmp_path: Path) -> None:
    """W2 noted the redelivered offsets, then died unacknowledged too: W3, at the same
    version, finds the start noted and notes nothing (the backfill reads them once)."""
    world = World(tmp_path)
    w1 = await world.worker()
    await w1.process(orders(0, 1, 2, 3))
    await world.make(1)
    w2 = await world.worker()
    await w2.process(orders(2, 3, 4))
    before = dict(world.notes.notes[PARTITION])
    w3 = await world.worker()
    await w3.process(orders(2, 3, 4, 5))
    assert world.notes.notes[PARTITION] == before
    assert world.history(1, 6) == [0, 1, 2, 3]
    assert await world.live(1) == 2


async def test_older_versions_get_them_once(tmp_path: Path) -> None:
    """W1 computed at version 1 (`orders1`) when it committed 2..5; `orders2` is made
    (version 2). W2's note at 2 says they were applied at 1: history for `orders2`,
    not for `orders1`, which counted them live."""
    world = World(tmp_path)
    await world.make(1)
    w1 = await world.worker()
    await w1.process(orders(0, 1, 2, 3, 4, 5))
    await world.make(2)
    w2 = await world.worker()
    await w2.process(orders(2, 3, 4, 5, 6, 7))
    assert world.notes.notes[PARTITION]["2:user:1"] == "2,3,4,5"
    assert world.history(1, 8) == []
    assert await world.live(1) == 8
    assert world.history(2, 8) == [0, 1, 2, 3, 4, 5]
    assert await world.live(2) == 2


async def test_versions_no_worker_computed_at_get_them_once(tmp_path: Path) -> None:
    """W1 committed 2..5 at version 0; `orders1` and `orders2` are made before any
    worker computes at 1. Both backfills read 0..5, once."""
    world = World(tmp_path)
    w1 = await world.worker()
    await w1.process(orders(0, 1, 2, 3, 4, 5))
    await world.make(1)
    await world.make(2)
    w2 = await world.worker()
    await w2.process(orders(2, 3, 4, 5, 6, 7))
    assert world.notes.notes[PARTITION]["2:user:0"] == "2,3,4,5"
    for n in (1, 2):
        assert world.history(n, 8) == [0, 1, 2, 3, 4, 5]
        assert await world.live(n) == 2


class FailsAfterCommit(MemoryProfileStore):
    """A store whose commit, once armed, is written and then reported failed (the
    reply lost): the worker computes the batch again and finds it applied."""

    armed = False

    async def commit(self, entity: str, writes: Any, **kwargs: Any) -> None:
        await super().commit(entity, writes, **kwargs)
        if self.armed:
            self.armed = False
            raise ConnectionError("the reply was lost")


async def test_what_a_failed_attempt_committed_itself_is_not_noted(tmp_path: Path) -> None:
    """W2 holds the start note of version 1; its commit of 6, 7 is written but reported
    failed, and the batch comes again: 6 and 7 are applied, at version 1, by W2 itself:
    counted live, and not history."""
    store = FailsAfterCommit()
    world = World(tmp_path, store)
    w1 = await world.worker()
    await w1.process(orders(0, 1, 2, 3))
    await world.make(1)
    w2 = await world.worker()
    await w2.process(orders(2, 3, 4, 5))
    store.armed = True
    with pytest.raises(ConnectionError):
        await w2.process(orders(6, 7))
    await w2.process(orders(6, 7))
    assert world.history(1, 8) == [0, 1, 2, 3]
    assert await world.live(1) == 4


async def test_the_start_noted_at_a_switch_between_batches_holds_too(tmp_path: Path) -> None:
    """A worker that switches between batches notes where it resumes
    (`note_positions`); records it then finds applied were applied by another before
    (here: a worker whose batch the rebalance gave back), at the older version."""
    world = World(tmp_path)
    w1 = await world.worker()
    w2 = await world.worker()
    await w2.process(orders(0, 1))
    await w1.process(orders(2, 3))  # w1 had the partition for a while, and died
    await world.make(1)
    await w2.switch_to_current()
    await w2.note_positions()  # where w2 resumes: 2 (it read 0, 1)
    await w2.process(orders(2, 3, 4))
    assert world.history(1, 5) == [0, 1, 2, 3]
    assert await world.live(1) == 1
