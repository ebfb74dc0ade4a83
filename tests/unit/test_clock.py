"""Time in the rule language (`attributes.clock`): `now`, attributes read as
timestamps, and profiles whose rules read `now` scheduled to be rendered again."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attributes.audiences import membership_change
from attributes.clock import next_render, now_value
from attributes.events import decode_event
from attributes.policies import DEFAULT_POLICY
from attributes.profile import ProfileState, apply_event, compute_attributes
from attributes.reevaluation import Reevaluation
from attributes.rules import RuleFileError, parse_rules
from attributes.ruleset import RuleSet
from streams.rendering import ViewRenderer

DAY, HOUR = 86_400_000, 3_600_000
START = 1_796_083_200_000  # 2026-12-01T00:00Z
RULES = """
attributes:
  - {name: last_order_at, function: most_recent, field: timestamp, event: Order}
  - {name: first_order_at, function: first, field: timestamp, event: Order}
  - {name: orders, function: count, event: Order}
  - {name: last_delivery, function: max, field: properties.delivered_ms, event: Order,
     as: timestamp}
  - {name: promised_at, function: most_recent, field: properties.promised, event: Order,
     as: timestamp}
  - name: days_since_last_order
    function: derived
    expression: (now - last_order_at).getHours() / 24
  - name: average_days_between_orders
    function: derived
    expression: >-
      orders > 1 ? double((last_order_at - first_order_at).getMinutes()) / 1440.0
      / double(orders - 1) : null
  - {name: days_since_delivery, function: derived,
     expression: (now - last_delivery).getHours() / 24}
  - {name: promise_kept, function: derived, expression: last_delivery <= promised_at}
  - {name: next_reminder, function: derived, expression: "last_order_at + duration('720h')"}
audiences:
  - {name: lapsed, condition: "now - last_order_at > duration('48h')"}
  - {name: recent, condition: days_since_last_order < 2}
  - {name: buyers, condition: orders > 0}
"""


def iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def ordered(rules: RuleSet, state: ProfileState, at: int, offset: int, **properties: Any) -> None:
    event = decode_event(
        json.dumps(
            {
                "type": "track",
                "event": "Order",
                "userId": state.id,
                "timestamp": iso(at),
                "properties": properties,
            }
        ).encode()
    )
    applied = apply_event(state, event, ts=at, rules=rules, source="e/0", offset=offset, now=at)
    assert applied.changed
    assert all(skip.kind == "missing_field" for skip in applied.skips)


def test_days_since_and_between_orders_from_event_times() -> None:
    rules = parse_rules(RULES)
    state = ProfileState(id="u-1")
    ordered(rules, state, START, 0, delivered_ms=START + DAY, promised=iso(START + 2 * DAY))
    ordered(rules, state, START + 3 * DAY, 1, delivered_ms=START + 4 * DAY)
    ordered(rules, state, START + 9 * DAY, 2, delivered_ms=START + 10 * DAY)

    values = compute_attributes(state, rules, START + 9 * DAY + HOUR)
    assert values["days_since_last_order"] == 0
    assert values["average_days_between_orders"] == 4.5
    assert values["last_order_at"] == datetime.fromtimestamp((START + 9 * DAY) / 1000, UTC)
    assert values["next_reminder"] == values["last_order_at"] + (now_value(30 * DAY) - now_value(0))
    # a property in epoch ms (`max`) and one in RFC 3339 text, read `as: timestamp`
    assert values["days_since_delivery"] == 0  # due in 23 hours: -23 / 24 truncates
    assert values["promise_kept"] is False  # the last delivery came after the promise

    later = compute_attributes(state, rules, START + 13 * DAY - 1)
    assert later["days_since_last_order"] == 3  # the same state, only time passed
    assert later["days_since_delivery"] == 2


def test_a_missing_time_is_null_not_an_error() -> None:
    rules = parse_rules(RULES)
    values = compute_attributes(ProfileState(id="u-2"), rules, START)
    assert values["days_since_last_order"] is None
    assert values["average_days_between_orders"] is None


def test_an_unreadable_time_reads_as_null() -> None:
    rules = parse_rules(RULES)
    state = ProfileState(id="u-3")
    ordered(rules, state, START, 0, delivered_ms=START, promised="next tuesday")
    values = compute_attributes(state, rules, START)
    assert values["promised_at"] == "next tuesday"  # served as it came
    assert values["promise_kept"] is None


def renderer(rules: RuleSet, refresh_ms: int = HOUR) -> ViewRenderer:
    return ViewRenderer(rules=rules, policy=DEFAULT_POLICY, time_refresh_ms=refresh_ms)


def test_audiences_over_now_change_without_an_event() -> None:
    rules = parse_rules(RULES)
    views = renderer(rules)
    state = ProfileState(id="u-4")
    ordered(rules, state, START, 0, delivered_ms=START)
    first = views.write(state, "e/0", touched={"last_order_at", "orders"}, now=START + HOUR)
    assert first.entered == ["recent", "buyers"]
    # the next write of the same state, with nothing touched: the remembered render
    second = views.write(state, "e/0", touched=set(), now=START + 2 * DAY + HOUR)
    assert (second.entered, second.exited) == (["lapsed"], ["recent"])
    view = json.loads(second.view or b"{}")
    assert view["attributes"]["days_since_last_order"] == 2
    assert view["_audiences"] == {"lapsed": True, "recent": False, "buyers": True}
    assert view["attributes"]["last_order_at"] == iso(START)  # served as RFC 3339
    assert view["attributes"]["next_reminder"] == iso(START + 30 * DAY)


def test_a_profile_whose_rules_read_now_is_rendered_again_after_the_refresh() -> None:
    rules = parse_rules(RULES)
    state = ProfileState(id="u-5")
    ordered(rules, state, START, 0)
    write = renderer(rules, refresh_ms=5_000).write(state, "e/0", touched=set(), now=START)
    assert write.expiry == ("e/0", START + 5_000)


def test_the_earlier_of_a_window_and_the_refresh_is_scheduled() -> None:
    windowed = RULES.replace(
        "  - {name: orders, function: count, event: Order}",
        "  - {name: orders, function: count, event: Order, lookback: {count: 10, unit: minutes}}",
    )
    rules = parse_rules(windowed)
    state = ProfileState(id="u-6")
    ordered(rules, state, START, 0)
    soon = renderer(rules, refresh_ms=DAY).write(state, "e/0", touched=set(), now=START)
    assert soon.expiry is not None
    assert START < (soon.expiry[1] or 0) <= START + 11 * 60_000
    late = renderer(rules, refresh_ms=1_000).write(state, "e/0", touched=set(), now=START)
    assert late.expiry == ("e/0", START + 1_000)
    assert next_render(10, None, 5) == 15
    assert next_render(10, 12, 5) == 12


def test_rules_that_do_not_read_now_are_not_scheduled() -> None:
    rules = parse_rules("attributes:\n  - {name: orders, function: count}\n")
    assert not rules.reads_now
    assert not rules.changes_on_time
    state = ProfileState(id="u-7")
    assert renderer(rules).write(state, "e/0", touched=set(), now=START).expiry is None


def test_which_rules_read_now() -> None:
    through_audience = parse_rules(
        "attributes:\n  - {name: at, function: first, field: timestamp}\n"
        "audiences:\n  - {name: old, condition: now - at > duration('1h')}\n"
    )
    assert through_audience.reads_now
    assert not through_audience.derived_reads_now
    assert through_audience.changes_on_time
    assert parse_rules(RULES).derived_reads_now


def test_a_deleted_profile_leaves_the_index() -> None:
    rules = parse_rules(RULES)
    state = ProfileState(id="u-8", deleted=True)
    assert renderer(rules).write(state, "e/0", touched=set(), now=START).expiry == ("e/0", None)


@pytest.mark.parametrize(
    ("attribute", "problem"),
    [
        ("{name: now, function: count}", "'now' is the processing time in expressions"),
        ("{name: n, function: count, as: timestamp}", "'as' applies to functions 'most_recent'"),
        ("{name: n, function: first, field: timestamp, as: date}", "as: Input should be"),
        ("{name: n, function: derived, expression: now + 1}", "no matching overload for '+'"),
        ("{name: n, function: derived, expression: duration('2 days')}", "not a duration"),
    ],
)
def test_time_rules_refused_at_load(attribute: str, problem: str) -> None:
    with pytest.raises(RuleFileError) as raised:
        parse_rules(f"attributes:\n  - {attribute}\n")
    assert problem in str(raised.value)


def test_an_audience_without_a_clock_is_not_a_member() -> None:
    """`AudienceSet.membership` without `now` (a caller with no processing time):
    a condition reading it fails, so is false, as on null."""
    rules = parse_rules(RULES)
    at = now_value(START)
    members = rules.membership.membership({"last_order_at": at, "orders": 1}, {})
    assert members["lapsed"] is False
    assert members["buyers"] is True
    later = rules.membership.membership(
        {"last_order_at": at, "orders": 1}, {}, now=now_value(START + 3 * DAY)
    )
    assert later["lapsed"] is True


# --- the oracle: as time passes, the incremental membership is the full evaluation ------

TIMED_RULES = parse_rules("""\
attributes:
  - {name: x, function: count, event: X}
  - {name: at, function: most_recent, field: timestamp, event: X}
  - {name: age_hours, function: derived, expression: (now - at).getHours()}
audiences:
  - {name: some_x, condition: x > 2}
  - {name: old, condition: "now - at > duration('5h')"}
  - {name: aged, condition: age_hours > 3 && x > 0}
""")


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 4),
            st.one_of(st.none(), st.integers(0, 10)),
            st.integers(0, 12),
            st.sets(st.sampled_from(["x", "at", "age_hours"])),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_incremental_membership_over_now_equals_a_full_evaluation(
    steps: list[tuple[int, int | None, int, set[str]]],
) -> None:
    """Only the clock moves between some writes (nothing touched): the audiences that
    read `now`, directly or through a derived attribute, still follow it."""
    membership = TIMED_RULES.membership
    reevaluation = Reevaluation(
        membership,
        [a.name for a in TIMED_RULES.attributes],
        {d.name: d.expression.names for d in TIMED_RULES.derived},
    )
    last = None
    joined: list[str] = []
    before: tuple[int, int | None] | None = None
    clock = START
    for x, at_hours, hours_later, extra in steps:
        clock += hours_later * HOUR
        at = None if at_hours is None else now_value(START + at_hours * HOUR)
        age = None if at is None else (now_value(clock) - at) // (now_value(HOUR) - now_value(0))
        view = {"x": x, "at": at, "age_hours": age}
        touched = extra | {
            name
            for name, index in (("x", 0), ("at", 1))
            if before is None or before[index] != (x, at_hours)[index]
        }
        now = now_value(clock)
        last = reevaluation.evaluate(view, {}, joined, last=last, touched=touched, now=now)
        expected = membership.membership(view, {}, now=now)
        assert last.members == expected
        assert (last.entered, last.exited) == membership_change(joined, expected)
        joined, before = last.joined, (x, at_hours)
