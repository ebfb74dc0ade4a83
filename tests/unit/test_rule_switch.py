"""A worker switches rules version between batches (`streams.rule_switch`): no commit
is made under rules older than the current version, and each view says its version."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from attributes.catalog import ManagedAttribute, Status
from attributes.profile import decode_state, encode_state
from streams.history import Span, committed_before, history_end
from streams.logs import MemoryLogHistory
from streams.metrics import WorkerMetrics
from streams.processor import BatchProcessor, ListDeadLetters, Record
from streams.rule_switch import RuleSwitch
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
ORDERS = {"name": "orders", "function": "count", "event": "Order"}


def order(offset: int, user: str = "u-1") -> Record:
    body = {"type": "track", "event": "Order", "userId": user, "properties": {"revenue": 5}}
    value = orjson.dumps({**body, "messageId": f"m-{offset}"})
    return Record("events", 0, offset, value, int(NOW_S * 1000))


class World:
    def __init__(self, tmp_path: Path, store: MemoryProfileStore | None = None) -> None:
        path = tmp_path / "rules.yaml"
        path.write_text(RULES)
        self.catalog = MemoryRuleCatalog()
        self.now_s = NOW_S
        self.store = store or MemoryProfileStore()
        self.switch = RuleSwitch(self.catalog, RuleSource.read(path))
        self.processor = BatchProcessor(
            self.switch.source.compose(()),
            self.store,
            ListDeadLetters(),
            clock=lambda: self.now_s,
            reload=self.switch.current,
        )

    async def change(self, attribute: ManagedAttribute) -> None:
        """What the API does: the catalog changes, and with it the version in Redis."""

        def put(_: Catalog) -> Change:
            return Change(put=attribute)

        self.store.rules_version = (await self.catalog.change(put)).version

    async def view(self, user: str = "u-1") -> Any:
        raw = await self.store.read_view("user", "id", user)
        assert raw is not None
        return orjson.loads(raw)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


async def test_a_batch_after_a_change_is_computed_with_the_new_rules(world: World) -> None:
    await world.processor.process([order(0)])
    assert "rules_version" not in await world.view()  # the rule file alone: version 0
    await world.change(ManagedAttribute("ca-1", Status.ACTIVE, ORDERS, 1, 1))
    # the processor has not looked: its commit is refused, and it switches
    await world.processor.process([order(1)])
    view = await world.view()
    assert view["rules_version"] == 1
    assert view["attributes"] == {"spend": 10, "orders": 1}  # counted from the switch
    assert world.processor.rules_version == 1


async def test_a_disabled_attribute_leaves_the_view_at_the_next_write(world: World) -> None:
    made = ManagedAttribute("ca-1", Status.ACTIVE, ORDERS, 1, 1)
    await world.change(made)
    await world.processor.process([order(0)])
    assert (await world.view())["attributes"]["orders"] == 1
    await world.change(ManagedAttribute("ca-1", Status.DISABLED, ORDERS, 1, 2))
    await world.processor.process([order(1)])
    view = await world.view()
    assert view["attributes"] == {"spend": 10}
    assert view["rules_version"] == 2


async def test_the_timer_switches_an_idle_worker_and_says_so(world: World) -> None:
    metrics = WorkerMetrics()
    await world.change(ManagedAttribute("ca-1", Status.ACTIVE, ORDERS, 1, 1))
    await world.switch.poll(world.processor, metrics)
    assert world.processor.rules_version == 1
    assert metrics.rules_version._value.get() == 1
    await world.processor.process([order(0)])
    assert (await world.view())["attributes"]["orders"] == 1


async def test_a_switch_that_drops_the_cached_states_still_notes_where_partitions_resume(
    world: World,
) -> None:
    """The worker drops its cached states and renders at every switch (`on_switch`);
    where each partition's batches were is kept, since the timer's switch notes it as
    the partition's start (a partition with no traffic since gets no other note)."""
    notes: list[tuple[int, dict[str, int]]] = []

    async def note(version: int, firsts: Any, also: Any, redelivered: Any) -> Any:
        notes.append((version, dict(firsts)))
        return firsts

    world.processor.note_start = note
    world.processor.logs = MemoryLogHistory()  # the worker's: batches know where they end
    world.processor.on_switch = world.processor.forget_renders  # as streams.app's hook
    await world.processor.process([order(0), order(1)])
    await world.change(ManagedAttribute("ca-1", Status.PROCESSING, ORDERS, 1, 1))
    await world.switch.poll(world.processor, WorkerMetrics())
    assert world.processor.rules_version == 1
    assert notes[-1] == (1, {"events/0": 2})


async def test_an_expiry_round_at_an_old_version_switches_and_writes_nothing(
    world: World,
) -> None:
    windowed = {**ORDERS, "lookback": {"count": 1, "unit": "days"}}
    await world.change(ManagedAttribute("ca-1", Status.ACTIVE, windowed, 1, 1))
    await world.processor.process([order(0)])
    version = (await world.view())["version"]
    await world.change(ManagedAttribute("ca-2", Status.ACTIVE, {**ORDERS, "name": "n"}, 2, 2))
    world.now_s += 2 * 86_400  # the order left its window: the profile is due
    assert await world.processor.expire("events/0", 100) == 0
    assert world.processor.rules_version == 2
    assert (await world.view())["version"] == version


class Interleaved(MemoryProfileStore):
    """The moment a batch meets both another worker and a rules change: before the
    batch's first commit, another worker writes `u-2`'s profile (a conflict: the
    events that read it are computed again, the others committed); before the commit
    of those, `change` runs (the API makes an attribute)."""

    def __init__(self) -> None:
        super().__init__()
        self.commits = 0
        self.change: Callable[[], Awaitable[None]] | None = None

    async def commit(self, entity: str, writes: Any, **kwargs: Any) -> None:
        if self.change is not None:  # armed
            self.commits += 1
            if self.commits == 1:  # the other worker's write: a new version of u-2
                state = decode_state(self.states[(entity, "u-2")])
                state.version += 1
                self.states[(entity, "u-2")] = encode_state(state)
                self.versions[(entity, "u-2")] = state.version
            if self.commits == 3:
                await self.change()
        await super().commit(entity, writes, **kwargs)


async def test_what_a_batch_committed_before_it_switched_midway_is_noted_as_history(
    tmp_path: Path,
) -> None:
    """A batch that switches rules version midway (its part a conflict did not touch
    committed at the old version, the rest at the new one) notes its partition's start
    at its first offset, as any batch; the offsets it committed at the old version are
    past that start yet were computed without the new attribute: they are noted with
    it, so that a backfill reads them (else neither the history nor the live count
    has them)."""
    store = Interleaved()
    world = World(tmp_path, store)
    notes: list[tuple[int, dict[str, int], Any]] = []

    async def note(version: int, firsts: Any, also: Any, redelivered: Any) -> Any:
        notes.append((version, dict(firsts), {p: dict(a) for p, a in also.items()}))
        return firsts

    world.processor.note_start = note
    await world.processor.process([order(0, "u-2")])  # u-2's profile, at version 0

    async def make_orders() -> None:
        await world.change(ManagedAttribute("ca-1", Status.PROCESSING, ORDERS, 1, 1))

    store.change = make_orders
    await world.processor.process([order(1, "u-1"), order(2, "u-2"), order(3, "u-1")])
    assert world.processor.rules_version == 1
    assert notes[-1] == (1, {"events/0": 1}, {"events/0": {"user:0": [1, 3]}})

    # what a backfill of `orders` (version 1) reads of the partition, from the notes as
    # Redis holds them (`start_notes`): the offsets computed without `orders`
    starts: dict[bytes | str, bytes | str] = {"0": "0", "1": "1", "1:user:0": "1,3"}
    span = Span(TopicPartition("events", 0), 0, history_end(starts, 1) or 0)
    span.also = committed_before(starts, 1, "user")
    assert [o for o in range(4) if span.wants(o)] == [0, 1, 3]
    assert span.stop == 4
    # and live, at version 1: offset 2 alone
    u2 = orjson.loads(await store.read_view("user", "id", "u-2") or b"")
    assert u2["attributes"]["orders"] == 1
    u1 = orjson.loads(await store.read_view("user", "id", "u-1") or b"")
    assert "orders" not in u1["attributes"]  # both its orders are history
