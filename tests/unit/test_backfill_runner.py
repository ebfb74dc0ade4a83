"""Who runs backfills (`streams.backfill_runner`), without a broker: a derived
attribute has nothing to backfill, and one attribute whose backfill fails every time
does not hold back the others."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from attributes.catalog import ManagedAttribute, Status, new_attribute
from attributes.ruleset import RuleSet
from streams.backfill import Backfill
from streams.backfill_runner import BackfillRunner
from streams.processor import BatchProcessor, ListDeadLetters
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.memory_store import MemoryProfileStore
from traitflow.recomputation_requests import recompute_for
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

    async def run(self, attribute: ManagedAttribute, catalog: Catalog) -> bool:
        self.ran.append(attribute.name)
        if attribute.name in self.failing:
            raise RuntimeError(f"{attribute.name} breaks")
        return True

    async def recompute(self, catalog: Catalog) -> bool:
        self.ran.append("recompute")
        return True

    async def render(self) -> None:
        self.ran.append("render")
        if "render" in self.failing:
            raise RuntimeError("render breaks")


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


async def test_a_recomputation_goes_first_and_ends_served_rendered_and_done() -> None:
    """A source delete job's recomputation (`attributes.recomputation`) runs before the
    PROCESSING attributes' own backfills (its end makes them ACTIVE); a render that
    fails is tried again as a render, the computed generation being served already."""
    catalog = MemoryRuleCatalog()
    await processing(catalog, "seen")
    await catalog.change(recompute_for("job-1", ["crm"]))
    processor = type("P", (), {"rules_version": catalog.catalog.version})()
    backfill = FakeBackfill(catalog, processor, failing={"render"})
    runner = BackfillRunner(backfill, retry_s=3600)  # type: ignore[arg-type]
    await settle(runner)
    assert backfill.ran == ["recompute", "render"]
    served = catalog.catalog
    assert served.recomputation is not None
    assert served.recomputation.rendering  # its generation is served, not yet rendered
    assert [a.status for a in served.attributes] == [Status.ACTIVE]
    runner.failed = {k: (v, 0.0) for k, (v, _) in runner.failed.items()}  # due again
    backfill.failing.clear()
    processor.rules_version = served.version
    await settle(runner)
    assert backfill.ran == ["recompute", "render", "render"]  # not computed again
    assert catalog.catalog.recomputation is None
    assert catalog.catalog.recomputed == ("job-1",)
    await settle(runner)
    assert backfill.ran[3:] == []  # nothing left: "seen" is ACTIVE, not backfilled
    assert backfill.client.values == {}


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


def slicing_backfill(tmp_path: Path) -> tuple[Backfill, BatchProcessor, RuleSet]:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    rules = RuleSource.read(path).compose(())
    processor = BatchProcessor(rules, MemoryProfileStore(), ListDeadLetters())
    backfill = Backfill(Settings(rules_path=path), processor, MemoryRuleCatalog(), None)  # type: ignore[arg-type]
    return backfill, processor, rules


async def test_a_backfill_computes_nothing_while_a_live_batch_holds_the_lock(
    tmp_path: Path,
) -> None:
    """A live batch holds the processor's lock from its first read to its commit: the
    backfill must not compute between the batch's round trips (each await of the
    batch once let it, and a batch waited for several of the backfill's turns)."""
    backfill, processor, _ = slicing_backfill(tmp_path)
    done: list[int] = []
    async with processor.lock:  # a live batch, waiting on Redis
        work = asyncio.create_task(backfill.reader.sliced(range(50), done.append))
        for _ in range(20):
            await asyncio.sleep(0)
        assert done == []
    await asyncio.wait_for(work, timeout=5)
    assert done == list(range(50))


async def test_a_live_batch_waits_for_one_slice_of_the_backfill_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock is fair: a live batch that asks for it while the backfill computes gets
    it when the slice in progress ends, before the backfill's next slice. A fetch of
    events is applied in slices, and a filter may take milliseconds per event."""
    backfill, processor, _ = slicing_backfill(tmp_path)
    monkeypatch.setattr("streams.history_reader.SLICE_S", 0.0)  # one item per slice
    done: list[int] = []
    seen_at: list[int] = []

    async def live_batches() -> None:
        for _ in range(10):
            async with processor.lock:
                seen_at.append(len(done))
                await asyncio.sleep(0)  # its round trip to Redis: the backfill waits
            await asyncio.sleep(0)  # its next fetch

    work = asyncio.create_task(backfill.reader.sliced(range(30), done.append))
    await asyncio.sleep(0)  # the backfill's first slice
    await asyncio.gather(live_batches(), work)
    assert done == list(range(30))
    # one slice between two live batches: none waited for two, none was skipped
    assert seen_at[0] <= 2
    assert [b - a for a, b in itertools.pairwise(seen_at)] == [1] * 9


async def test_a_backfill_applies_a_fetch_of_events_in_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_apply` (admission, then the events) goes through the slices: a live batch gets
    the lock while a fetch of events is applied, not only after it."""
    backfill, processor, rules = slicing_backfill(tmp_path)
    monkeypatch.setattr("streams.history_reader.SLICE_S", 0.0)
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
    holds = 0

    async def live() -> None:
        nonlocal holds
        while True:
            async with processor.lock:
                holds += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(live())
    await asyncio.sleep(0)
    before = holds
    await backfill.reader.apply(processor.entities["user"], rules, records, {}, set())
    other.cancel()
    assert holds - before >= 20
