"""`ViewRenderer`: what it remembers between renders, and for which state object."""

from __future__ import annotations

import orjson

from attributes.events import decode_event
from attributes.policies import DEFAULT_POLICY
from attributes.profile import ProfileState, apply_event
from attributes.ruleset import RuleSet
from streams.rendering import ViewRenderer

NOW = 946_684_800_000 + 3 * 86_400_000


def ordered(state: ProfileState, rules: RuleSet, revenue: float, offset: int) -> None:
    event = decode_event(
        orjson.dumps(
            {
                "type": "track",
                "event": "Order Completed",
                "userId": "u-1",
                "messageId": f"m-{offset}",
                "timestamp": "2000-01-02T00:00:00Z",
                "properties": {"revenue": revenue},
            }
        )
    )
    apply_event(
        state, event, ts=NOW - 86_400_000, rules=rules, source="e/0", offset=offset, now=NOW
    )


def lifetime_value(view: bytes | None) -> float:
    assert view is not None
    value: float = orjson.loads(view)["attributes"]["lifetime_value"]
    return value


def test_untouched_attributes_are_taken_from_the_last_render_of_the_same_object(
    example_rules: RuleSet,
) -> None:
    views = ViewRenderer(rules=example_rules, policy=DEFAULT_POLICY)
    state = ProfileState(id="u-1")
    ordered(state, example_rules, 10.0, 0)
    assert lifetime_value(views.write(state, "e/0", touched=set(), now=NOW).view) == 10.0
    ordered(state, example_rules, 5.0, 1)
    # not told the attribute changed: the remembered value stands (that is the saving)
    assert lifetime_value(views.write(state, "e/0", touched=set(), now=NOW).view) == 10.0
    assert (
        lifetime_value(views.write(state, "e/0", touched={"lifetime_value"}, now=NOW).view) == 15.0
    )


def test_another_object_or_a_forgotten_profile_is_rendered_in_full(
    example_rules: RuleSet,
) -> None:
    views = ViewRenderer(rules=example_rules, policy=DEFAULT_POLICY)
    state = ProfileState(id="u-1")
    ordered(state, example_rules, 10.0, 0)
    views.write(state, "e/0", touched=set(), now=NOW)
    ordered(state, example_rules, 5.0, 1)
    views.forget(["u-1"])
    assert lifetime_value(views.write(state, "e/0", touched=set(), now=NOW).view) == 15.0
    copy = ProfileState(id="u-1", attributes=dict(state.attributes))
    ordered(copy, example_rules, 1.0, 2)
    assert lifetime_value(views.write(copy, "e/0", touched=set(), now=NOW).view) == 16.0


def test_a_deleted_profile_has_no_view(example_rules: RuleSet) -> None:
    views = ViewRenderer(rules=example_rules, policy=DEFAULT_POLICY)
    state = ProfileState(id="u-1", deleted=True)
    assert views.write(state, "e/0", touched=set(), now=NOW).view is None


def test_it_remembers_a_bounded_number_of_profiles(example_rules: RuleSet) -> None:
    views = ViewRenderer(rules=example_rules, policy=DEFAULT_POLICY, remembered=1)
    first, second = ProfileState(id="u-1"), ProfileState(id="u-2")
    ordered(first, example_rules, 10.0, 0)
    views.write(first, "e/0", touched=set(), now=NOW)
    views.write(second, "e/0", touched=set(), now=NOW)  # u-1's render is dropped
    ordered(first, example_rules, 5.0, 1)
    assert lifetime_value(views.write(first, "e/0", touched=set(), now=NOW).view) == 15.0
