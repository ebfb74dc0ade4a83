"""Who runs backfills (`streams.backfill_runner`), without a broker: a derived
attribute has nothing to backfill, and one attribute whose backfill fails every time
does not hold back the others."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from attributes.catalog import ManagedAttribute, Status, new_attribute
from streams.backfill import Backfill
from streams.backfill_runner import BackfillRunner
from streams.processor import BatchProcessor, ListDeadLetters
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.memory_store import MemoryProfileStore
from traitflow.rule_catalog import Catalog, Change, MemoryRuleCatalog, RuleSource

pytestmark = pytest.mark.anyio

RULES = "attributes:\n  - {name: seen, function: count}\n"


class FakeRedis:
    """The lease's commands, in memory."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    async def set(self, key: str, value: str, *, nx: bool, px: int) -> bool:
        if nx and key in self.values:
            return False
        self.values[key] = value.encode()
        return True

    async def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    async def delete(self, key: str) -> None:
        self.values.pop(key, None)

    async def pexpire(self, key: str, ms: int) -> None:
        pass


@dataclass
class FakeBackfill:
    """A backfill whose run fails for the attributes named in `failing`."""

    catalog: MemoryRuleCatalog
    processor: Any
    failing: set[str]
    client: FakeRedis = field(default_factory=FakeRedis)
    keys: KeyLayout = field(default_factory=lambda: KeyLayout("t"))
    ran: list[str] = field(default_factory=list)

    async def run(self, attribute: ManagedAttribute) -> bool:
        self.ran.append(attribute.name)
        if attribute.name in self.failing:
            raise RuntimeError(f"{attribute.name} breaks")
        return True


async def processing(catalog: MemoryRuleCatalog, *names: str) -> None:
    for n, name in enumerate(names):
        made = new_attribute(
            f"ca-{n:012x}", {"name": name, "function": "count"}, Status.PROCESSING, n
        )

        def edit(current: Catalog, made: ManagedAttribute = made) -> Change:
            return Change(put=made)

        await catalog.change(edit)


async def settle(runner: BackfillRunner) -> None:
    await runner.tick()
    if runner.task is not None:
        await runner.task


async def test_a_backfill_that_fails_lets_the_others_go_first() -> None:
    catalog = MemoryRuleCatalog()
    await processing(catalog, "broken", "fine")
    processor = type("P", (), {"rules_version": catalog.catalog.version})()
    backfill = FakeBackfill(catalog, processor, failing={"broken"})
    runner = BackfillRunner(backfill, retry_s=3600)  # type: ignore[arg-type]
    for _ in range(3):
        await settle(runner)
    assert backfill.ran == ["broken", "fine"]  # not "broken" at every tick
    statuses = {a.name: a.status for a in catalog.catalog.attributes}
    assert statuses == {"broken": Status.PROCESSING, "fine": Status.ACTIVE}
    assert backfill.client.values == {}  # the lease is given back each time

    runner.retry_s = 0.0  # due again
    runner.failed = {k: (v, 0.0) for k, (v, _) in runner.failed.items()}
    backfill.failing.clear()
    await settle(runner)
    assert backfill.ran[-1] == "broken"
    assert all(a.status is Status.ACTIVE for a in catalog.catalog.attributes)


async def test_a_derived_attribute_is_backfilled_at_once(tmp_path: Path) -> None:
    """It reads other attributes: compiled alone (as a backfill compiles one) it would
    not compile, and its backfill would fail at every try."""
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    source = RuleSource.read(path)
    derived = new_attribute(
        "ca-000000000001",
        {"name": "twice", "function": "derived", "expression": "seen * 2"},
        Status.PROCESSING,
        1,
    )
    source.check([derived])  # a valid attribute
    processor = BatchProcessor(source.compose([derived]), MemoryProfileStore(), ListDeadLetters())
    backfill = Backfill(Settings(rules_path=path), processor, MemoryRuleCatalog(), None)  # type: ignore[arg-type]
    assert await asyncio.wait_for(backfill.run(derived), timeout=5) is True


async def test_a_backfill_gives_the_worker_s_loop_a_turn_while_it_applies_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch of events is applied in one call, and a filter may take milliseconds per
    event: without a turn now and then, no live batch (nor any timer) would run."""
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    rules = RuleSource.read(path).compose(())
    processor = BatchProcessor(rules, MemoryProfileStore(), ListDeadLetters())
    backfill = Backfill(Settings(rules_path=path), processor, MemoryRuleCatalog(), None)  # type: ignore[arg-type]
    monkeypatch.setattr("streams.backfill.TURN_S", 0.0)  # a turn at every event
    records = [
        SimpleNamespace(
            topic="events",
            partition=0,
            offset=n,
            timestamp=1_000,
            value=b'{"type": "page", "userId": "u-%d"}' % n,
        )
        for n in range(20)
    ]
    turns = 0

    async def live() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(live())
    await asyncio.sleep(0)
    before = turns
    await backfill._apply(processor.entities["user"], rules, records, {}, set())
    other.cancel()
    assert turns - before >= 10
