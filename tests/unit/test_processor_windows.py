"""Windows in the processor: profiles are indexed by when their windows next change,
and `expire` re-renders the due ones, without any new event."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from attributes.rules import parse_rules
from streams.processor import BatchProcessor, ListDeadLetters, Record
from traitflow.memory_store import MemoryProfileStore
from traitflow.state_cache import CachedProfileStore

pytestmark = pytest.mark.anyio

HOUR = 3_600_000
DAY = 24 * HOUR
NOW = 1_794_394_800_000  # 2026-11-11T11:00:00Z
SOURCE = "events/0"

RULES = parse_rules(
    "attributes:\n"
    "  - name: orders\n    function: count\n    event: Order\n"
    "  - name: recent_orders\n    function: count\n    event: Order\n"
    "    lookback: {count: 2, unit: days}\n"
    "  - name: recent_revenue\n    function: sum\n    field: properties.revenue\n"
    "    event: Order\n    lookback: {count: 1, unit: days}\n"
)


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def order(user: str, offset: int, at: int, revenue: float = 1.0) -> Record:
    """An order at event time `at` (the record's timestamp: the event carries none)."""
    event = {
        "type": "track",
        "event": "Order",
        "userId": user,
        "messageId": f"m{offset}",
        "properties": {"revenue": revenue},
    }
    return Record("events", 0, offset, orjson.dumps(event), at)


@pytest.fixture(params=["memory", "cached"])
def world(request: pytest.FixtureRequest) -> tuple[BatchProcessor, MemoryProfileStore, Clock]:
    """Also behind the worker's state cache, where renders reuse unchanged values."""
    store, clock = MemoryProfileStore(), Clock(NOW)
    front = store if request.param == "memory" else CachedProfileStore(store, 100)
    return BatchProcessor(RULES, front, ListDeadLetters(), clock=clock), store, clock


async def attributes(store: MemoryProfileStore, user: str) -> Any:
    view = await store.read_view("user", "id", user)
    assert view is not None
    return orjson.loads(view)["attributes"]


async def test_windows_shrink_on_time_without_new_events(world: Any) -> None:
    processor, store, clock = world
    await processor.process(
        [
            order("u-1", 0, NOW - 47 * HOUR, 5.0),  # in the 2-day window, not the 1-day one
            order("u-1", 1, NOW - 2 * HOUR, 7.0),
            order("u-2", 2, NOW - 30 * HOUR, 1.0),  # too old for the 1-day window
        ]
    )
    assert await attributes(store, "u-1") == {
        "orders": 2,
        "recent_orders": 2,
        "recent_revenue": 7.0,
    }
    # each profile is indexed under its partition at its earliest bucket's expiry
    assert store.expiries[("user", SOURCE)] == {
        "u-1": NOW - 47 * HOUR + 2 * DAY,
        "u-2": NOW - 30 * HOUR + 2 * DAY,
    }

    assert await processor.expire(SOURCE, limit=100) == 0  # nothing due yet
    clock.ms = NOW + HOUR  # the oldest order leaves the 2-day window
    assert await processor.expire(SOURCE, limit=100) == 1
    assert await attributes(store, "u-1") == {
        "orders": 2,
        "recent_orders": 1,
        "recent_revenue": 7.0,
    }
    assert store.expiries[("user", SOURCE)]["u-1"] == NOW - 2 * HOUR + DAY

    clock.ms = NOW + 3 * DAY  # every window is empty: both leave the index
    assert await processor.expire(SOURCE, limit=100) == 2
    assert await attributes(store, "u-1") == {"orders": 2, "recent_orders": 0, "recent_revenue": 0}
    assert await attributes(store, "u-2") == {"orders": 1, "recent_orders": 0, "recent_revenue": 0}
    assert store.expiries[("user", SOURCE)] == {}


async def test_expiring_changes_neither_offsets_nor_versions(world: Any) -> None:
    processor, store, clock = world
    await processor.process([order("u-1", 0, NOW - HOUR)])
    before = (await store.load("user", ["u-1"]))["u-1"]
    clock.ms = NOW + 3 * DAY
    assert await processor.expire(SOURCE, limit=100) == 1
    after = (await store.load("user", ["u-1"]))["u-1"]
    assert (after.offsets, after.version) == (before.offsets, before.version)
    assert after.attributes["recent_orders/count@2days"] == []  # the bucket is gone too


async def test_expire_takes_at_most_limit_profiles_earliest_first(world: Any) -> None:
    processor, store, clock = world
    await processor.process([order(f"u-{i}", i, NOW - (40 - i) * HOUR) for i in range(5)])
    # u-i leaves the 2-day window at NOW + (8 + i) hours
    clock.ms = NOW + 10 * HOUR  # u-0, u-1 and u-2 are due
    assert await processor.expire(SOURCE, limit=2) == 2
    assert set(store.expiries[("user", SOURCE)]) == {"u-2", "u-3", "u-4"}
    assert await store.due("user", SOURCE, now=clock.ms, limit=10) == ["u-2"]
    assert await processor.expire(SOURCE, limit=2) == 1


async def test_a_profile_that_breaks_re_rendering_stops_no_other(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug one profile meets while its windows are re-rendered: it leaves the index
    (its next event schedules it again), and every other due profile is re-rendered."""
    processor, store, clock = world
    await processor.process([order(f"u-{i}", i, NOW - (40 - i) * HOUR) for i in range(3)])
    views = processor.entities["user"].views
    write = type(views).write

    def breaking(self: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
        if state.id == "u-1":
            raise RuntimeError("a bug this profile meets")
        return write(self, state, *args, **kwargs)

    monkeypatch.setattr(views, "write", breaking.__get__(views))
    clock.ms = NOW + 11 * HOUR  # all three are due
    assert await processor.expire(SOURCE, limit=100) == 2
    assert await attributes(store, "u-0") == await attributes(store, "u-2")
    assert (await attributes(store, "u-0"))["recent_orders"] == 0
    assert "u-1" not in store.expiries[("user", SOURCE)]


async def test_a_deleted_profile_leaves_the_index() -> None:
    store, clock = MemoryProfileStore(), Clock(NOW)
    processor = BatchProcessor(RULES, store, ListDeadLetters(), clock=clock)
    await processor.process([order("u-1", 0, NOW - HOUR)])
    del store.states[("user", "u-1")]
    clock.ms = NOW + 3 * DAY
    assert await processor.expire(SOURCE, limit=100) == 0
    assert store.expiries[("user", SOURCE)] == {}


async def test_rules_without_windows_keep_no_index() -> None:
    store = MemoryProfileStore()
    rules = parse_rules("attributes:\n  - name: orders\n    function: count\n")
    await BatchProcessor(rules, store, ListDeadLetters()).process([order("u-1", 0, NOW)])
    assert store.expiries == {}


# --- a changed rule file --------------------------------------------------------------------


async def test_an_attribute_whose_state_changed_shape_starts_afresh() -> None:
    """Between runs `recent_orders` gains a longer window and `orders` becomes a sum:
    their old states do not fit, so they restart instead of failing every event."""
    store = MemoryProfileStore()
    before = BatchProcessor(RULES, store, ListDeadLetters(), clock=Clock(NOW))
    await before.process([order("u-1", 0, NOW - HOUR, 4.0), order("u-1", 1, NOW - HOUR, 6.0)])

    changed = parse_rules(
        "attributes:\n"
        "  - name: orders\n    function: sum\n    field: properties.revenue\n"
        "    event: Order\n"
        "  - name: recent_orders\n    function: count\n    event: Order\n"
        "    lookback: {count: 3, unit: days}\n"
        "  - name: recent_revenue\n    function: sum\n    field: properties.revenue\n"
        "    event: Order\n    lookback: {count: 1, unit: days}\n"
    )
    dead = ListDeadLetters()
    after = BatchProcessor(changed, store, dead, clock=Clock(NOW))
    await after.process([order("u-1", 2, NOW - HOUR, 5.0)])

    assert dead.records == []
    assert await attributes(store, "u-1") == {
        "orders": 5.0,  # restarted as a sum
        "recent_orders": 1,  # restarted with its new window
        "recent_revenue": 15.0,  # unchanged: kept its state
    }
    state = (await store.load("user", ["u-1"]))["u-1"]
    assert set(state.attributes) == changed.state_keys


async def test_expire_leaves_a_partition_revoked_meanwhile_alone(world: Any) -> None:
    """The expiry round snapshots nothing: a partition no longer owned once the lock
    is held belongs to another worker now, the only writer of its profiles."""
    processor, store, clock = world
    await processor.process([order("u-1", 0, NOW - HOUR)])
    clock.ms = NOW + 3 * DAY
    owned: set[str] = set()  # revoked before the round got the lock
    assert await processor.expire(SOURCE, limit=100, owned=owned) == 0
    assert await attributes(store, "u-1") == {
        "orders": 1,
        "recent_orders": 1,
        "recent_revenue": 1.0,
    }
    owned.add(SOURCE)
    assert await processor.expire(SOURCE, limit=100, owned=owned) == 1
    assert await attributes(store, "u-1") == {"orders": 1, "recent_orders": 0, "recent_revenue": 0}
