"""A worker switches rules version between batches (`streams.rule_switch`): no commit
is made under rules older than the current version, and each view says its version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from attributes.catalog import ManagedAttribute, Status
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
    def __init__(self, tmp_path: Path) -> None:
        path = tmp_path / "rules.yaml"
        path.write_text(RULES)
        self.catalog = MemoryRuleCatalog()
        self.now_s = NOW_S
        self.store = MemoryProfileStore()
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
