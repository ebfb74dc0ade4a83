"""Recomputing every attribute for a source delete job (`attributes.recomputation`):
the states of two generations side by side in the rules (`attributes.rules.
Generations`), and the catalog's transitions (`traitflow.rule_catalog`), in memory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import orjson
import pytest
from aiokafka import TopicPartition

from attributes.catalog import ManagedAttribute, Status, patched
from attributes.events import decode_event
from attributes.merge import merge_states
from attributes.profile import ProfileState, apply_event, reconcile, render_view
from attributes.recomputation import RECOMPUTED_KEPT, Recomputation, kept_jobs, widened
from attributes.rules import Generations, parse_rules
from streams.backfill_runner import recomputed
from traitflow.config import Settings
from traitflow.recomputation_requests import kept_because, recompute_for
from traitflow.rule_catalog import Catalog, Change, MemoryRuleCatalog

pytestmark = pytest.mark.anyio

RULES = """\
attributes:
  - {name: orders, function: count, event: Order}
  - {name: spend, function: sum, field: properties.revenue, event: Order}
  - {name: recent, function: count, event: Order, lookback: {count: 7, unit: days}}
  - {name: average, function: derived, expression: "orders > 0 ? spend / double(orders) : 0.0"}
"""
NOW = 1_700_000_000_000


def order(revenue: float) -> bytes:
    return orjson.dumps({"type": "track", "event": "Order", "properties": {"revenue": revenue}})


def fed(state: ProfileState, rules: object, revenue: float, offset: int) -> None:
    event = decode_event(order(revenue))
    apply_event(state, event, ts=NOW, rules=rules, source="t/0", offset=offset, now=NOW)  # type: ignore[arg-type]


def test_a_generation_is_part_of_every_state_key() -> None:
    first = parse_rules(RULES)
    second = parse_rules(RULES, generations=Generations(served=7))
    assert [a.key for a in first.attributes] == [
        "orders/count",
        "spend/sum",
        "recent/count@7days",
    ]
    assert [a.key for a in second.attributes] == [
        "orders/count^7",
        "spend/sum^7",
        "recent/count@7days^7",
    ]
    assert first.shadows == second.shadows == ()


def test_while_recomputing_each_attribute_is_computed_twice_and_the_served_one_shown() -> None:
    rules = parse_rules(RULES, generations=Generations(served=3, recomputing=9))
    assert [a.key for a in rules.shadows] == [
        "orders/count^9",
        "spend/sum^9",
        "recent/count@7days^9",
    ]
    assert {a.key for a in rules.attributes} | {a.key for a in rules.shadows} == rules.state_keys
    before = parse_rules(RULES, generations=Generations(served=3))
    state = ProfileState(id="u-1", entity="user")
    for offset in range(5):  # counted before the recomputation began
        fed(state, before, 10, offset)
    fed(state, rules, 10, 5)
    assert state.attributes["orders/count^3"] == 6
    assert state.attributes["orders/count^9"] == 1  # the new generation: since it began
    assert state.attributes["recent/count@7days^9"]  # windows too
    view = render_view(state, rules, NOW)
    assert view["attributes"]["orders"] == 6  # the served generation, only
    assert view["attributes"]["spend"] == 60
    assert view["attributes"]["average"] == 10.0
    assert reconcile(state, rules) == []  # neither generation is dropped


def test_a_merge_merges_both_generations() -> None:
    rules = parse_rules(RULES, generations=Generations(served=0, recomputing=4))
    survivor, absorbed = ProfileState(id="a", entity="user"), ProfileState(id="b", entity="user")
    fed(survivor, rules, 1, 0)
    fed(absorbed, rules, 2, 1)
    merge_states(survivor, absorbed, rules)
    assert survivor.attributes["orders/count"] == 2
    served = render_view(survivor, parse_rules(RULES, generations=Generations(served=4)), NOW)
    assert (served["attributes"]["orders"], served["attributes"]["spend"]) == (2, 3)


def test_once_the_new_generation_is_served_the_old_states_are_dropped() -> None:
    during = parse_rules(RULES, generations=Generations(served=0, recomputing=4))
    state = ProfileState(id="u-1", entity="user")
    fed(state, during, 1, 0)
    after = parse_rules(RULES, generations=Generations(served=4))
    assert sorted(reconcile(state, after)) == ["orders/count", "recent/count@7days", "spend/sum"]
    assert render_view(state, after, NOW)["attributes"]["orders"] == 1


def test_an_entity_s_rules_have_its_shadows_alone() -> None:
    rules = parse_rules(
        "attributes:\n  - {name: orders, function: count}\n"
        "  - {name: members, function: count, entity: account}\n",
        generations=Generations(recomputing=2),
    )
    assert [a.key for a in rules.of("user").shadows] == ["orders/count^2"]
    assert [a.key for a in rules.of("account").shadows] == ["members/count^2"]


def managed(name: str, status: Status = Status.ACTIVE) -> ManagedAttribute:
    return ManagedAttribute(f"ca-{name}", status, {"name": name, "function": "count"}, 1, 1)


async def changed(catalog: MemoryRuleCatalog, edit: Callable[[Catalog], Change]) -> Catalog:
    return await catalog.change(edit)


def put(attribute: ManagedAttribute) -> Callable[[Catalog], Change]:
    return lambda _: Change(put=attribute)


async def test_a_job_starts_a_recomputation_whose_version_is_its_horizon() -> None:
    catalog = MemoryRuleCatalog()
    await changed(catalog, put(managed("seen")))
    started = await changed(catalog, recompute_for("job-1", ["crm-events"]))
    assert started.recomputation == Recomputation(2, ("job-1",))
    assert started.horizons == {"crm-events": 2}
    assert started.generations == Generations(served=0, recomputing=2)
    again = await changed(catalog, recompute_for("job-1", ["crm-events"]))
    assert again.version == 2  # asked twice (a runner that died), changed once


async def test_a_second_job_joins_the_running_recomputation_which_starts_again() -> None:
    catalog = MemoryRuleCatalog()
    await changed(catalog, recompute_for("job-1", ["crm-events"]))
    joined = await changed(catalog, recompute_for("job-2", ["erp-events", "crm-events"]))
    assert joined.recomputation == Recomputation(2, ("job-1", "job-2"))
    assert joined.horizons == {"crm-events": 2, "erp-events": 2}


async def test_a_change_of_what_is_counted_restarts_it_and_other_changes_do_not() -> None:
    catalog = MemoryRuleCatalog()
    seen = managed("seen", Status.PROCESSING)
    await changed(catalog, put(seen))
    await changed(catalog, recompute_for("job-1", ["crm-events"]))
    described = patched(seen, {"description": "x"}, now_ms=2, backfill=True)
    after = await changed(catalog, put(described))
    assert after.recomputation is not None
    assert after.recomputation.version == 2
    activated = replace(described, status=Status.ACTIVE)  # its own backfill is done
    after = await changed(catalog, put(activated))
    assert after.recomputation is not None
    assert after.recomputation.version == 2
    counting = patched(activated, {"where": "true"}, now_ms=3, backfill=True)
    after = await changed(catalog, put(counting))
    assert after.recomputation == Recomputation(5, ("job-1",))  # a new generation
    assert after.horizons == {"crm-events": 2}  # the job's horizon stays where it was
    after = await changed(catalog, lambda _: Change(drop=seen.id))
    assert after.recomputation is not None
    assert after.recomputation.version == 6


async def test_it_is_served_then_rendered_then_done() -> None:
    catalog = MemoryRuleCatalog()
    await changed(catalog, put(managed("seen", Status.PROCESSING)))
    await changed(catalog, recompute_for("job-1", ["crm-events"]))
    stale = await changed(catalog, recomputed(1))  # not the running one: nothing
    assert stale.version == 2
    served = await changed(catalog, recomputed(2))
    assert served.generation == 2
    assert served.recomputation == Recomputation(2, ("job-1",), rendering=True)
    assert served.generations == Generations(served=2)  # nothing computed beside it
    assert [a.status for a in served.attributes] == [Status.ACTIVE]  # in the history too
    assert served.recomputed == ()
    # while rendering, a change does not start it again: the render is at any rules
    await changed(catalog, put(managed("other")))
    done = await changed(catalog, recomputed(2))
    assert done.recomputation is None
    assert done.recomputed == ("job-1",)
    assert done.generation == 2


async def test_a_job_asked_while_one_renders_starts_a_new_one_for_both() -> None:
    catalog = MemoryRuleCatalog()
    await changed(catalog, recompute_for("job-1", ["crm-events"]))
    await changed(catalog, recomputed(1))
    after = await changed(catalog, recompute_for("job-2", ["erp-events"]))
    assert after.recomputation == Recomputation(3, ("job-1", "job-2"))
    assert after.generation == 1


def test_horizons_only_move_later_and_done_jobs_are_bounded() -> None:
    assert widened({"a": 5, "b": 2}, ["b", "c"], 4) == {"a": 5, "b": 4, "c": 4}
    assert widened({"a": 5}, ["a"], 3) == {"a": 5}
    many = kept_jobs([f"j{n}" for n in range(RECOMPUTED_KEPT)], ["new", "j5"])
    assert len(many) == RECOMPUTED_KEPT
    assert many[-1] == "new"
    assert "j0" not in many


def test_attributes_are_kept_when_history_is_missing_or_backfill_off() -> None:
    whole = {TopicPartition("web", 0): 0, TopicPartition("crm", 1): 0}
    assert kept_because(Settings(), whole) is None
    cut = {**whole, TopicPartition("crm", 1): 120}
    why = kept_because(Settings(), cut)
    assert why is not None
    assert "crm partition 1 retains offsets from 120" in why
    off = kept_because(Settings(backfill=False), whole)
    assert off == "TRAITFLOW_BACKFILL is off"
