"""The parts of a backfill that need no broker (`streams.backfill`): folding scratch
states into stored profiles, and activation (where a partition's history lies:
`test_history`)."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from attributes.catalog import ManagedAttribute, Status
from attributes.events import decode_event
from attributes.profile import ProfileState, apply_event
from attributes.rules import parse_rules
from attributes.ruleset import RuleSet
from streams.backfill import Backfill, fold
from streams.backfill_runner import activated
from streams.history_reader import Target
from streams.processor import BatchProcessor, ListDeadLetters, Record
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.rule_catalog import Catalog, MemoryRuleCatalog
from traitflow.state_cache import CachedProfileStore

pytestmark = pytest.mark.anyio

NOW_S = 1_794_394_800.0
RULES = parse_rules(
    """\
attributes:
  - name: orders
    function: count
    event: Order
audiences:
  - name: repeat
    condition: orders > 2
"""
)


def order(offset: int) -> Record:
    body = {"type": "track", "event": "Order", "userId": "u-1", "messageId": f"m-{offset}"}
    return Record("events", 0, offset, orjson.dumps(body), int(NOW_S * 1000))


async def test_folding_history_counts_both_spans_once_and_renders_the_view() -> None:
    store = MemoryProfileStore()
    processor = BatchProcessor(RULES, store, ListDeadLetters(), clock=lambda: NOW_S)
    await processor.process([order(10)])  # live, after the start
    history = ProfileState(id="u-1", entity="user")
    for offset in range(3):  # before the start
        event = decode_event(orjson.dumps({"type": "track", "event": "Order"}))
        apply_event(history, event, ts=1, rules=RULES, source="events/0", offset=offset, now=1)
    entity = processor.entities["user"]
    written = await fold(
        entity,
        {"u-1": history, "gone": ProfileState(id="gone")},
        RULES.attributes,
        int(NOW_S * 1000),
    )
    assert written == 1  # a profile no longer stored is skipped
    view = orjson.loads(await store.read_view("user", "id", "u-1") or b"")
    assert view["attributes"]["orders"] == 4
    assert view["_audiences"] == {"repeat": True}
    assert await store.audience_sizes("user") == {"repeat": 1}


def test_activation_happens_only_for_the_definition_that_was_backfilled() -> None:
    backfilled = ManagedAttribute("ca-1", Status.PROCESSING, {"name": "n"}, 1, 1, version=4)
    done = activated(backfilled, 9)(Catalog(5, (backfilled,)))
    assert done.put is not None
    assert (done.put.status, done.put.updated_ms) == (Status.ACTIVE, 9)
    changed = replace(backfilled, version=5)  # its condition changed meanwhile
    assert activated(backfilled, 9)(Catalog(5, (changed,))).put is None
    disabled = replace(backfilled, status=Status.DISABLED)
    assert activated(backfilled, 9)(Catalog(5, (disabled,))).put is None
    assert activated(backfilled, 9)(Catalog(5, ())).put is None


async def test_a_join_from_another_process_makes_a_live_workers_cache_stale_not_wrong() -> None:
    """With TRAITFLOW_BACKFILL_PROCESS the join commits from the backfill process, past
    the live worker's cache: the worker's next commit of that profile conflicts, its
    stale cached state is dropped, and its events are applied again on the stored one
    (history 3 + live 1 + live 1 = 5, not the cached 1 + 1)."""
    shared = MemoryProfileStore()
    cached = CachedProfileStore(shared, 100)
    live = BatchProcessor(RULES, cached, ListDeadLetters(), clock=lambda: NOW_S)
    beside = BatchProcessor(RULES, shared, ListDeadLetters(), clock=lambda: NOW_S)
    await live.process([order(10)])
    assert len(cached) == 1  # the live worker keeps u-1's state
    history = ProfileState(id="u-1", entity="user")
    for offset in range(3):
        event = decode_event(orjson.dumps({"type": "track", "event": "Order"}))
        apply_event(history, event, ts=1, rules=RULES, source="events/0", offset=offset, now=1)
    assert await fold(beside.entities["user"], {"u-1": history}, RULES.attributes, 1) == 1
    report = await live.process([order(11)])
    assert report.conflicts >= 1  # the cached state was stale
    view = orjson.loads(await shared.read_view("user", "id", "u-1") or b"")
    assert view["attributes"]["orders"] == 5


async def test_a_join_that_finds_the_rules_changed_switches_and_joins_again() -> None:
    """The backfill process follows the rules version as a worker does: a join refused
    because the rules moved meanwhile (`RulesChanged`) reloads them and is made again."""
    store = MemoryProfileStore()
    processor = BatchProcessor(RULES, store, ListDeadLetters(), clock=lambda: NOW_S)
    await processor.process([order(10)])
    store.rules_version = 2  # an attribute was made through the API meanwhile
    reloads: list[int] = []

    async def current() -> tuple[RuleSet, int]:
        reloads.append(store.rules_version)
        return RULES, store.rules_version

    processor.reload = current
    backfill = Backfill(Settings(), processor, MemoryRuleCatalog(), client=None)  # type: ignore[arg-type]
    backfill.recording = False
    history = ProfileState(id="u-1", entity="user")
    event = decode_event(orjson.dumps({"type": "track", "event": "Order"}))
    apply_event(history, event, ts=1, rules=RULES, source="events/0", offset=0, now=1)
    attribute = ManagedAttribute("ca-1", Status.PROCESSING, {"name": "orders"}, 1, 1, version=2)
    target = Target(attribute.entity, attribute.version, RULES, attribute.id)
    assert await backfill._join(target, {"u-1": history}, 0)
    assert reloads == [2]
    assert processor.rules_version == 2
    view = orjson.loads(await store.read_view("user", "id", "u-1") or b"")
    assert view["attributes"]["orders"] == 2


async def test_a_rules_switch_calls_the_hook_that_forgets_a_workers_cached_states() -> None:
    """A worker forgets its cached states at each rules switch (`streams.app` sets
    `on_switch`): after a backfill joined in another process, its activation switches
    the workers, whose next commits then conflict with nothing the join left stale."""
    cached = CachedProfileStore(MemoryProfileStore(), 100)
    live = BatchProcessor(RULES, cached, ListDeadLetters(), clock=lambda: NOW_S)
    live.on_switch = cached.clear
    await live.process([order(10)])
    assert len(cached) == 1
    live.switch(RULES, 1)
    assert len(cached) == 0
    assert live.rules_version == 1
