"""The lifecycle of computed attributes made through the API (`attributes.catalog`)."""

from __future__ import annotations

import pytest

from attributes.catalog import (
    REVISIONS,
    LifecycleError,
    ManagedAttribute,
    Status,
    compiled,
    join_history,
    live_definitions,
    new_attribute,
    on_request,
    patched,
    requested,
)
from attributes.profile import ProfileState, reconcile
from attributes.rules import parse_rules

COUNT = {"name": "orders", "function": "count", "event": "Order Completed"}


def attribute(status: Status = Status.ACTIVE, **definition: object) -> ManagedAttribute:
    return ManagedAttribute("ca-1", status, {**COUNT, **definition}, 1, 1)


def test_activating_backfills_when_history_is_to_be_computed() -> None:
    assert on_request(None, Status.ACTIVE, backfill=True) is Status.PROCESSING
    assert on_request(None, Status.ACTIVE, backfill=False) is Status.ACTIVE
    assert on_request(Status.DISABLED, Status.ACTIVE, backfill=True) is Status.PROCESSING
    assert on_request(Status.PROCESSING, Status.ACTIVE, backfill=True) is Status.PROCESSING


def test_nothing_goes_back_to_draft_and_processing_is_the_system_s() -> None:
    assert on_request(Status.DRAFT, Status.DRAFT, backfill=False) is Status.DRAFT
    with pytest.raises(LifecycleError, match="cannot go back to DRAFT"):
        on_request(Status.ACTIVE, Status.DRAFT, backfill=False)
    with pytest.raises(LifecycleError, match="status: must be one of"):
        requested("PROCESSING")


def test_a_changed_condition_is_a_new_revision_and_a_description_is_not() -> None:
    described = patched(attribute(), {"description": "All orders."}, now_ms=5, backfill=False)
    assert "revision" not in described.definition
    assert described.updated_ms == 5
    narrowed = patched(attribute(), {"where": "properties.x > 1"}, now_ms=5, backfill=True)
    assert narrowed.definition["revision"] == 1
    assert narrowed.status is Status.PROCESSING  # recomputed over the history
    again = patched(narrowed, {"where": None}, now_ms=6, backfill=False)
    assert "where" not in again.definition
    assert again.definition["revision"] == 2


def test_a_patch_may_not_rename_or_change_the_function() -> None:
    with pytest.raises(LifecycleError) as caught:
        patched(attribute(), {"function": "sum"}, now_ms=5, backfill=False)
    assert caught.value.field == "function"


def test_only_live_attributes_are_computed() -> None:
    attributes = [
        attribute(Status.DRAFT, name="a"),
        attribute(Status.ACTIVE, name="b"),
        attribute(Status.PROCESSING, name="c"),
        attribute(Status.DISABLED, name="d"),
    ]
    assert [d["name"] for _, d in live_definitions(attributes)] == ["b", "c"]
    assert live_definitions(attributes)[0][0] == "ca/attributes/ca-1"


def test_an_attribute_round_trips_through_json() -> None:
    made = attribute(Status.PROCESSING, where="true")
    assert ManagedAttribute.from_json(made.as_json()) == made


def test_a_new_attribute_s_state_is_its_own_and_re_enabling_starts_afresh() -> None:
    made = new_attribute("ca-2", COUNT, Status.ACTIVE, 1_000)
    assert compiled(made)["revision"] == 1_000 * REVISIONS  # its own, whatever its name
    off = patched(made, {"status": "DISABLED"}, now_ms=2_000, backfill=True)
    assert "revision" not in off.definition
    on = patched(off, {"status": "ACTIVE"}, now_ms=3_000, backfill=True)
    assert (on.status, on.definition["revision"]) == (Status.PROCESSING, 1)
    assert compiled(on)["revision"] == 1_000 * REVISIONS + 1


def test_history_joins_the_live_state_of_the_backfilled_attributes_only() -> None:
    rules = parse_rules(
        "attributes:\n  - {name: n, function: count}\n"
        "  - {name: s, function: sum, field: properties.x}\n"
    )
    count = next(a for a in rules.attributes if a.name == "n")
    live = ProfileState(id="p", attributes={count.key: 2, "s/sum": 5.0})
    history = ProfileState(id="p", attributes={count.key: 3, "s/sum": 7.0})
    assert join_history(live, history, [count])
    assert live.attributes == {count.key: 5, "s/sum": 5.0}
    assert not join_history(live, ProfileState(id="p"), [count])


def test_a_history_joined_again_is_not_counted_twice_and_its_note_goes_with_its_key() -> None:
    """A backfill whose process died after joining some profiles starts again from the
    beginning: the profiles it joined note it (`ProfileState.histories`)."""
    rules = parse_rules("attributes:\n  - {name: n, function: count}\n")
    (count,) = rules.attributes
    live = ProfileState(id="p", attributes={count.key: 2})
    history = ProfileState(id="p", attributes={count.key: 3})
    assert join_history(live, history, [count])
    assert not join_history(live, history, [count])  # made again: nothing
    assert live.attributes == {count.key: 5}
    assert live.histories == [count.key]
    other = parse_rules("attributes:\n  - {name: m, function: count}\n")
    assert reconcile(live, other) == [count.key]
    assert live.histories == []  # the note of a key no rule has any more
