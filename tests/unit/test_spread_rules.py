"""The rules version on the spread layout, without a server (`traitflow.spread_rules`):
each bucket's commit checks its own copy, every copy is raised before a process
commits at a version, and a batch whose buckets commit one by one across a switch
notes what it committed at the older version as history."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.crc import key_slot

from attributes.catalog import ManagedAttribute, Status
from attributes.profile import ProfileState
from attributes.rules import RuleFileError
from streams.backfill import Backfill
from streams.effects import Stitched, committed_events
from streams.processor import BatchProcessor, ListDeadLetters, Record
from streams.records import Identified
from streams.rule_switch import RuleSwitch
from traitflow.commit_plan import RulesAt
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.rule_catalog import Catalog, Change, MemoryRuleCatalog, RedisRuleCatalog, RuleSource
from traitflow.spread_layout import SpreadLayout
from traitflow.spread_plan import bucket_conflict, plan_commit
from traitflow.spread_rules import RAISE, raise_calls, raise_copies
from traitflow.spread_store import committed_profiles
from traitflow.store import Expected, ProfileWrite, RulesChanged

pytestmark = pytest.mark.anyio

LAYOUT = SpreadLayout("tf", 64)
NOW = 1_794_394_800_000


def write(pid: str) -> ProfileWrite:
    state = ProfileState(id=pid, version=3, identities={"user_id": [pid]})
    return ProfileWrite(state, b"state", b"view")


def two_buckets() -> tuple[str, str]:
    first = "u-0"
    other = next(
        f"u-{n}"
        for n in range(1, 1000)
        if LAYOUT.profile_bucket("user", f"u-{n}") != LAYOUT.profile_bucket("user", first)
    )
    return first, other


def plan(writes: list[ProfileWrite], **options: Any) -> Any:
    return plan_commit(
        LAYOUT, "user", writes, now=NOW, commit="c1", deadline=NOW + 10_000,
        bucket_ms=86_400_000, dedupe_window_ms=7 * 86_400_000, **options,
    )  # fmt: skip


def test_each_bucket_checks_its_own_copy_of_the_rules_version() -> None:
    a, b = two_buckets()
    spread = plan([write(a), write(b)], expected=Expected(versions={a: 2, b: 2}, rules_version=4))
    for bucket, part in spread.buckets.items():
        copy = LAYOUT.keys(bucket).rules_version()
        assert copy == "{" + f"tf.b{bucket}" + "}:ca:v"
        assert int(key_slot(copy.encode())) == LAYOUT.slot(bucket)
        assert part.checks[copy] == (b"4", RulesAt(4))


@pytest.mark.parametrize("found", [b"5", b"3", None])
def test_a_copy_above_or_below_the_computed_version_refuses_the_bucket(found: Any) -> None:
    """Above: the rules changed. Below: this process did not raise the copies it must
    raise before committing at a version (a failover lost the raise): the switch that
    follows the refusal raises them again."""
    a, _ = two_buckets()
    spread = plan([write(a)], expected=Expected(versions={a: 2}, rules_version=4))
    (part,) = spread.buckets.values()
    values = [found if isinstance(guard, RulesAt) else want for want, guard in part.checks.values()]
    refused = bucket_conflict(part, values)
    assert isinstance(refused, RulesChanged)
    assert refused.computed_with == 4
    same = [want for want, _ in part.checks.values()]
    assert bucket_conflict(part, same) is None


def test_every_bucket_is_raised_once_in_its_own_slot() -> None:
    calls = raise_calls(LAYOUT, 7)
    assert len(calls) == LAYOUT.buckets
    for bucket, call in enumerate(calls):
        assert call[:3] == ("EVAL", RAISE, 1)
        assert call[3] == LAYOUT.keys(bucket).rules_version()
        assert int(key_slot(call[3].encode())) == LAYOUT.slot(bucket)
        assert call[4] == "7"


async def test_version_zero_raises_nothing() -> None:
    class Untouched:
        async def by_node(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("version 0 is no copy: nothing is sent")

    assert await raise_copies(Untouched(), LAYOUT, 0) == [0] * LAYOUT.buckets  # type: ignore[arg-type]


def test_what_committed_is_the_buckets_not_refused_and_the_locks_they_own() -> None:
    survivor, other = two_buckets()
    merged = next(
        f"a-{n}"
        for n in range(1000)
        if LAYOUT.profile_bucket("user", f"a-{n}") != LAYOUT.profile_bucket("user", survivor)
    )
    kept = write(survivor)
    kept.absorbed = [merged]
    spread = plan([kept, write(other)], removed=[merged], expected=Expected(versions={merged: 1}))
    mine, theirs = LAYOUT.profile_bucket("user", survivor), LAYOUT.profile_bucket("user", other)
    assert committed_profiles(spread, [theirs]) == {survivor, merged}
    assert committed_profiles(spread, [mine]) == {other}
    assert committed_profiles(spread, [mine, theirs]) == set()


def identified(offset: int, user: str) -> Identified:
    record = Record("events", 0, offset, b"{}", 0)
    return Identified(record, None, [("user_id", user)], [], None, 0)  # type: ignore[arg-type]


def test_the_events_committed_are_those_of_parts_whose_writes_all_committed() -> None:
    events = [identified(0, "u-1"), identified(1, "u-2"), identified(2, "u-1")]
    stitched = Stitched(
        events, {("user_id", "u-1"): "u-1", ("user_id", "u-2"): "u-2"},
        [write("u-1"), write("u-2")], profiles=["u-1", "u-2"],
    )  # fmt: skip

    def profile_of(kind: str, value: str) -> str:
        return value

    done = committed_events(stitched, frozenset({"u-1"}), profile_of)
    assert [e.record.offset for e in done] == [0, 2]
    assert committed_events(stitched, frozenset(), profile_of) == []
    everything = committed_events(stitched, frozenset({"u-1", "u-2"}), profile_of)
    assert everything == events


RULES = """\
attributes:
  - name: spend
    function: sum
    field: properties.revenue
    event: Order
"""
ORDERS = {"name": "orders", "function": "count", "event": "Order"}


async def test_the_switch_propagates_its_version_before_it_is_used(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    catalog = MemoryRuleCatalog()
    raised: list[int] = []

    async def propagate(version: int) -> None:
        raised.append(version)

    switch = RuleSwitch(catalog, RuleSource.read(path), propagate)
    await catalog.change(
        lambda _: Change(put=ManagedAttribute("ca-1", Status.ACTIVE, ORDERS, 1, 1))
    )
    _, version = await switch.current()
    assert (version, raised) == (1, [1])
    broken = {"name": "broken", "function": "no-such-function"}
    await catalog.change(
        lambda _: Change(put=ManagedAttribute("ca-2", Status.ACTIVE, broken, 2, 2))
    )
    with pytest.raises(RuleFileError):
        await switch.current()
    assert raised == [1]  # rules no worker can switch to are not propagated


def order(offset: int, user: str) -> Record:
    body = {"type": "track", "event": "Order", "userId": user, "properties": {"revenue": 5}}
    value = orjson.dumps({**body, "messageId": f"m-{offset}"})
    return Record("events", 0, offset, value, NOW)


class BucketByBucket(MemoryProfileStore):
    """The spread layout's commit across a switch: when armed, the rules change (the
    API) and the profiles of `first` commit at the old version (their bucket's copy
    not raised yet), the others are refused (theirs raised)."""

    def __init__(self, first: set[str]) -> None:
        super().__init__()
        self.first = first
        self.change: Any = None

    async def commit(self, entity: str, writes: Any, **kwargs: Any) -> None:
        expected: Expected | None = kwargs.get("expected")
        if self.change is None or expected is None or expected.rules_version != 0:
            await super().commit(entity, writes, **kwargs)
            return
        change, self.change = self.change, None
        mine = [w for w in writes if w.state.id in self.first]
        versions = {p: v for p, v in expected.versions.items() if p in self.first}
        await super().commit(entity, mine, expected=Expected(versions=versions))
        await change()
        raise RulesChanged(0, {w.state.id for w in mine})


async def test_a_batch_whose_buckets_commit_across_a_switch_notes_the_older_ones_as_history(
    tmp_path: Path,
) -> None:
    """u-1's bucket committed the batch's orders at version 0, u-2's refused it: the
    batch is computed again at version 1, where u-1's orders are found applied. They
    are past the partition's start at version 1 and were counted without `orders`, so
    they are noted with the start (else a backfill of `orders` misses them)."""
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    catalog = MemoryRuleCatalog()
    store = BucketByBucket({"u-1"})
    switch = RuleSwitch(catalog, RuleSource.read(path))
    processor = BatchProcessor(
        switch.source.compose(()), store, ListDeadLetters(), clock=lambda: NOW / 1000,
        reload=switch.current,
    )  # fmt: skip
    notes: list[tuple[int, dict[str, int], Any]] = []

    async def note(version: int, firsts: Any, also: Any, redelivered: Any) -> Any:
        notes.append((version, dict(firsts), {p: dict(a) for p, a in also.items()}))
        return firsts

    processor.note_start = note
    await processor.process([order(0, "u-2")])

    async def make_orders() -> None:
        def put(_: Catalog) -> Change:
            return Change(put=ManagedAttribute("ca-1", Status.PROCESSING, ORDERS, 1, 1))

        store.rules_version = (await catalog.change(put)).version

    store.change = make_orders
    await processor.process([order(1, "u-1"), order(2, "u-2"), order(3, "u-1")])
    assert processor.rules_version == 1
    assert notes[-1] == (1, {"events/0": 1}, {"events/0": {"user:0": [1, 3]}})
    u1 = orjson.loads(await store.read_view("user", "id", "u-1") or b"")
    assert u1["attributes"]["spend"] == 10  # committed once, at version 0
    u2 = orjson.loads(await store.read_view("user", "id", "u-2") or b"")
    assert u2["attributes"]["orders"] == 1  # offset 2, live at version 1


class Steps:
    """What a backfill does, in order: the spread store's raise, the history's reads,
    the render's scan."""

    def __init__(self) -> None:
        self.done: list[tuple[str, Any]] = []
        self.client = self.layout = self.protocol = None

    async def raise_rules(self, version: int) -> None:
        self.done.append(("raise", version))

    async def spans(self, target: Any, *args: Any, **kwargs: Any) -> list[Any]:
        self.done.append(("spans", target.version))
        return []

    async def read(self, *args: Any) -> dict[str, ProfileState]:
        return {}


async def test_a_backfill_and_a_render_raise_every_copy_to_the_catalogs_version_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before history is read, and before a render's pass: to the catalog's version,
    whatever the processor's, so that exactness never waits on a worker's switch."""
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    catalog = MemoryRuleCatalog()
    attribute = ManagedAttribute("ca-1", Status.PROCESSING, ORDERS, 1, 1, version=1)
    await catalog.change(lambda _: Change(put=attribute))
    await catalog.change(lambda _: Change(put=replace(attribute, updated_ms=2)))
    source = RuleSource.read(path)
    processor = BatchProcessor(source.compose(()), MemoryProfileStore(), ListDeadLetters())
    steps = Steps()
    backfill = Backfill(
        Settings(rules_path=path), processor, catalog, None, source,  # type: ignore[arg-type]
        spread=steps,  # type: ignore[arg-type]
    )  # fmt: skip
    backfill.reader = steps  # type: ignore[assignment]
    assert await backfill.run(replace(attribute, version=2))
    assert steps.done == [("raise", 2), ("spans", 2)]

    async def scanned(*args: Any) -> Any:
        steps.done.append(("scan", args[2]))
        yield []

    monkeypatch.setattr("streams.backfill.profile_ids", scanned)
    steps.done.clear()
    await backfill.render()
    assert steps.done == [("raise", 2), ("scan", "user")]


def test_a_catalog_made_from_spread_settings_raises_the_copies_after_a_change() -> None:
    """From spread settings (the API's, a source job's, `traitflow rules`') the catalog
    carries a raiser of every bucket's copy; from any other, none. Made without I/O: the
    clients connect at their first command."""
    spread = Settings(
        redis_url="redis://127.0.0.1:7000/0",
        redis_cluster=True,
        redis_layout="spread",
        redis_buckets=64,
    )
    catalog = RedisRuleCatalog.from_url(spread, spread.key_prefix)
    assert catalog.raiser is not None
    assert catalog.raiser.layout == SpreadLayout("tf", 64)
    tag = Settings(redis_url="redis://127.0.0.1:7000/0", redis_cluster=True)
    assert RedisRuleCatalog.from_url(tag, tag.key_prefix).raiser is None
    assert RedisRuleCatalog.from_url("redis://127.0.0.1:6379/0", "tf").raiser is None
