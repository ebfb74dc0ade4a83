"""`Reevaluation`: a write evaluates again only the audiences whose condition reads
something that changed since the last write of the same state; these tests fail if it
skips one it must not (a window that moved without an event, traits an identify set,
a name the rules do not compute) or evaluates one it need not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from attributes.audiences import (
    Audience,
    AudienceSet,
    AudienceSpec,
    compile_audience,
    membership_change,
)
from attributes.events import decode_event
from attributes.expressions import BOOL, INT, Expression
from attributes.policies import DEFAULT_POLICY
from attributes.profile import ProfileState, apply_event
from attributes.reevaluation import Reevaluation, as_json
from attributes.rules import parse_rules
from streams.rendering import ViewRenderer
from traitflow.store import ProfileWrite

HOUR = 3_600_000
DAY = 24 * HOUR
NOW = 1_794_394_800_000  # 2026-11-11T11:00:00Z

RULES = parse_rules("""\
attributes:
  - name: orders_7d
    function: count
    event: Order
    lookback: {count: 7, unit: days}
  - name: spend
    function: sum
    field: properties.revenue
    event: Order
  - name: visits
    function: count
    type: [page]
  - name: average
    function: derived
    expression: spend / double(orders_7d)
audiences:
  - name: recent_buyers
    condition: orders_7d > 0
  - name: high_average
    condition: average > 50.0
  - name: pro
    condition: traits.plan == "pro"
  - name: vip
    condition: traits.vip == true
  - name: visitors
    condition: visits >= 1
""")


def apply(state: ProfileState, offset: int, at: int, **body: Any) -> set[str]:
    event = decode_event(orjson.dumps({"userId": "u", "messageId": f"m{offset}", **body}))
    applied = apply_event(state, event, ts=at, rules=RULES, source="e/0", offset=offset, now=at)
    return set(applied.touched)


def served(write: ProfileWrite) -> dict[str, bool]:
    assert write.view is not None
    members: dict[str, bool] = orjson.loads(write.view)["_audiences"]
    return members


def members(write: ProfileWrite) -> list[str]:
    return [name for name, member in served(write).items() if member]


def test_a_window_that_moves_without_an_event_is_evaluated_again() -> None:
    views = ViewRenderer(rules=RULES, policy=DEFAULT_POLICY)
    state = ProfileState(id="u")
    touched = apply(state, 0, NOW, type="track", event="Order", properties={"revenue": 80.0})
    first = views.write(state, "e/0", touched=touched, now=NOW)
    assert members(first) == ["recent_buyers", "high_average"]
    # a page view: only `visitors` reads what changed; the others keep their result
    touched = apply(state, 1, NOW + DAY, type="page")
    assert touched == {"visits"}
    second = views.write(state, "e/0", touched=touched, now=NOW + DAY)
    assert members(second) == ["recent_buyers", "high_average", "visitors"]
    assert (second.entered, second.exited) == (["visitors"], [])
    # eight days on, no event and nothing touched but the window that moved: the
    # audience over it and the one over a derived attribute that reads it are left
    left = views.write(state, "e/0", touched=set(), now=NOW + 8 * DAY)
    assert members(left) == ["visitors"]
    assert (left.entered, left.exited) == ([], ["recent_buyers", "high_average"])


def test_traits_an_identify_sets_are_evaluated_again_with_no_attribute_touched() -> None:
    views = ViewRenderer(rules=RULES, policy=DEFAULT_POLICY)
    state = ProfileState(id="u")
    touched = apply(state, 0, NOW, type="page")
    assert members(views.write(state, "e/0", touched=touched, now=NOW)) == ["visitors"]
    touched = apply(state, 1, NOW, type="identify", traits={"plan": "pro", "vip": 1})
    assert touched == set()
    entered = views.write(state, "e/0", touched=touched, now=NOW)
    assert members(entered) == ["pro", "visitors"]
    assert entered.entered == ["pro"]
    # 1 == True in Python, not to the condition: a change of type alone is a change
    apply(state, 2, NOW, type="identify", traits={"vip": True})
    assert members(views.write(state, "e/0", touched=set(), now=NOW)) == ["pro", "vip", "visitors"]
    apply(state, 3, NOW, type="identify", traits={"plan": "free"})
    left = views.write(state, "e/0", touched=set(), now=NOW)
    assert members(left) == ["vip", "visitors"]
    assert left.exited == ["pro"]


def counting(name: str, reads: str, evaluate: Callable[[Any], bool]) -> tuple[Audience, list[int]]:
    calls: list[int] = []

    def condition(variables: Any) -> bool:
        calls.append(1)
        return evaluate(variables)

    return Audience(name, "user", Expression(name, BOOL, frozenset({reads}), condition)), calls


def test_only_the_audiences_that_read_a_touched_attribute_are_evaluated_again() -> None:
    on_x, x_calls = counting("on_x", "x", lambda v: v["x"] > 1)
    on_d, d_calls = counting("on_d", "d", lambda v: v["d"] > 1)  # d is derived from y
    on_traits, traits_calls = counting("on_traits", "traits", lambda v: "plan" in v["traits"])
    audiences = AudienceSet.of([on_x, on_d, on_traits], {})
    reevaluation = Reevaluation(audiences, ["x", "y", "z"], {"d": frozenset({"y"})})

    def calls() -> tuple[int, int, int]:
        return len(x_calls), len(d_calls), len(traits_calls)

    last = reevaluation.evaluate({"x": 0, "y": 0, "d": 0}, {}, [])
    assert calls() == (1, 1, 1)
    same = reevaluation.evaluate(
        {"x": 0, "y": 0, "d": 0}, {}, last.joined, last=last, touched={"z"}
    )
    assert same.members is last.members
    assert calls() == (1, 1, 1)
    after = reevaluation.evaluate(
        {"x": 0, "y": 5, "d": 5}, {}, same.joined, last=same, touched={"y"}
    )
    assert after.members == {"on_x": False, "on_d": True, "on_traits": False}
    assert (after.entered, after.exited, after.joined) == (["on_d"], [], ["on_d"])
    assert calls() == (1, 2, 1)
    traits = {"plan": "pro"}
    after = reevaluation.evaluate({"x": 0, "y": 5, "d": 5}, traits, after.joined, last=after)
    assert after.members == {"on_x": False, "on_d": True, "on_traits": True}
    assert (after.entered, after.joined) == (["on_traits"], ["on_d", "on_traits"])
    assert calls() == (1, 2, 2)
    # the same traits in a new object: nothing to evaluate, nothing entered again
    again = reevaluation.evaluate({"x": 0, "y": 5, "d": 5}, dict(traits), after.joined, last=after)
    assert (again.members, again.entered, again.exited) == (after.members, [], [])
    assert again.joined is after.joined
    assert calls() == (1, 2, 2)


def test_a_membership_changed_elsewhere_is_compared_in_full() -> None:
    """The enters and exits of what was not evaluated again are found when the state's
    membership is not the list the last write left (a merge, say, replaced it)."""
    on_x, _ = counting("on_x", "x", lambda v: v["x"] > 1)
    on_y, _ = counting("on_y", "y", lambda v: v["y"] > 1)
    reevaluation = Reevaluation(AudienceSet.of([on_x, on_y], {}), ["x", "y"], {})
    last = reevaluation.evaluate({"x": 5, "y": 0}, {}, [])
    assert last.joined == ["on_x"]
    after = reevaluation.evaluate({"x": 5, "y": 5}, {}, ["gone"], last=last, touched={"y"})
    assert (after.entered, after.exited) == (["on_x", "on_y"], ["gone"])
    assert after.joined == ["on_x", "on_y"]


def test_a_condition_over_a_name_the_rules_do_not_compute_is_evaluated_every_time() -> None:
    """A variable the renderer is not told changes of (a clock, say) cannot be skipped."""
    late = compile_audience(AudienceSpec(name="late", condition="clock > 5"), {"clock": INT})
    reevaluation = Reevaluation(AudienceSet.of([late], {}), ["spend"], {})
    last = reevaluation.evaluate({"clock": 1}, {}, [])
    assert last.members == {"late": False}
    later = reevaluation.evaluate({"clock": 9}, {}, last.joined, last=last)
    assert (later.members, later.entered) == ({"late": True}, ["late"])


def test_a_trait_that_changes_type_alone_is_a_change() -> None:
    """`1 == 1.0 == True` in Python; `string(traits.v)` or `traits.v == true` tell them apart."""
    on_traits, calls = counting("on_traits", "traits", lambda v: v["traits"].get("v") is True)
    reevaluation = Reevaluation(AudienceSet.of([on_traits], {}), [], {})
    last = reevaluation.evaluate({}, {"v": 1}, [])
    for value in (1.0, True):
        last = reevaluation.evaluate({}, {"v": value}, last.joined, last=last)
    assert (len(calls), last.members, last.entered) == (3, {"on_traits": True}, ["on_traits"])
    last = reevaluation.evaluate({}, {"v": True}, last.joined, last=last)  # the same again
    assert len(calls) == 3
    assert as_json({"v": 2**70}) == b'{"v":1180591620717411303424}'
    assert as_json({"v": object()}) is None  # not JSON: taken as changed


# --- the oracle: whatever changes, the incremental membership is the full evaluation ------

DERIVED_RULES = parse_rules("""\
attributes:
  - name: x
    function: count
    event: X
  - name: y
    function: max
    field: properties.y
    event: Y
  - name: total
    function: derived
    expression: 'double(x) + (y == null ? 0.0 : y)'
  - name: twice
    function: derived
    expression: total * 2.0
audiences:
  - name: some_x
    condition: x > 2
  - name: big_total
    condition: twice > 10.0
  - name: pro
    condition: traits.plan == "pro"
  - name: pro_with_y
    condition: y != null && has(traits.plan)
  - name: everyone
    condition: "true"
""")

values: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {"x": st.integers(0, 5), "y": st.one_of(st.none(), st.integers(0, 8).map(float))}
)
#: a plan of another type than a string too: `1`, then `True`, is a change
plans: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.just({}), st.fixed_dictionaries({"plan": st.sampled_from(["pro", "free", 1, True])})
)


def rendered(aggregated: dict[str, Any]) -> dict[str, Any]:
    """The attribute values a render serves for these aggregated ones."""
    total = aggregated["x"] + (aggregated["y"] or 0.0)
    return {**aggregated, "total": total, "twice": total * 2.0}


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(values, plans, st.sets(st.sampled_from(["x", "y", "total", "other"]))),
        min_size=1,
        max_size=8,
    )
)
def test_incremental_membership_equals_a_full_evaluation(
    steps: list[tuple[dict[str, Any], dict[str, Any], set[str]]],
) -> None:
    membership = DERIVED_RULES.membership
    reevaluation = Reevaluation(
        membership,
        [a.name for a in DERIVED_RULES.attributes],
        {d.name: d.expression.names for d in DERIVED_RULES.derived},
    )
    last = None
    joined: list[str] = []
    before: dict[str, Any] | None = None
    for aggregated, step_traits, extra in steps:
        view = rendered(aggregated)
        # the write is told at least the aggregated attributes that changed
        touched = extra | {
            name for name in ("x", "y") if before is None or before[name] != aggregated[name]
        }
        last = reevaluation.evaluate(view, step_traits, joined, last=last, touched=touched)
        expected = membership.membership(view, step_traits)
        assert last.members == expected
        assert (last.entered, last.exited) == membership_change(joined, expected)
        assert last.joined == [name for name, member in expected.items() if member]
        joined, before = last.joined, aggregated
