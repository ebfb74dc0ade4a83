from __future__ import annotations

from typing import Any

import orjson
import pytest

from attributes.events import Event, decode_event
from attributes.profile import (
    Applied,
    ProfileState,
    Skip,
    add_identity,
    applied_before,
    apply_event,
    compute_attributes,
    decode_state,
    encode_state,
    merge_offsets,
    reconcile,
    render_view,
    settle,
)
from attributes.rules import parse_rules
from attributes.ruleset import RuleSet

SOURCE = "events/0"
DAY = 86_400_000
Y2K_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
NOW = Y2K_MS + 3 * DAY  # the processing time: the tests' events are inside every window


def apply_at(
    state: ProfileState,
    e: Event,
    rules: RuleSet,
    *,
    offset: int,
    ts: int = Y2K_MS,
    source: str = SOURCE,
) -> Applied:
    """`apply_event` at `NOW`, by default of an event at `Y2K_MS` from `SOURCE`."""
    return apply_event(state, e, ts=ts, rules=rules, source=source, offset=offset, now=NOW)


def event(**fields: Any) -> Event:
    return decode_event(orjson.dumps({"userId": "u-1", **fields}))


def order(mid: str, **properties: Any) -> Event:
    return event(type="track", event="Order Completed", messageId=mid, properties=properties)


def identify(mid: str, **traits: Any) -> Event:
    return event(type="identify", messageId=mid, traits=traits)


class Profile:
    """A state and the next offset to apply at, so tests read as a sequence of events."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.state = ProfileState(id="u-1")
        self.offset = 0

    def apply(self, e: Event, ts: int = Y2K_MS, source: str = SOURCE) -> Applied:
        applied = apply_at(self.state, e, self.rules, offset=self.offset, ts=ts, source=source)
        self.offset += 1
        return applied

    @property
    def attributes(self) -> dict[str, Any]:
        return compute_attributes(self.state, self.rules, NOW)

    @property
    def traits(self) -> dict[str, Any]:
        traits: dict[str, Any] = render_view(self.state, self.rules, NOW)["traits"]
        return traits


@pytest.fixture
def profile(example_rules: RuleSet) -> Profile:
    return Profile(example_rules)


# --- traits and identities ------------------------------------------------------------------


def test_identify_sets_traits(profile: Profile) -> None:
    profile.apply(identify("m-1", email="ada@example.com", plan="free"))
    assert profile.traits == {"email": "ada@example.com", "plan": "free"}


def test_a_newer_identify_overwrites_per_trait(profile: Profile) -> None:
    profile.apply(identify("m-1", email="ada@example.com", plan="free"), ts=Y2K_MS)
    profile.apply(identify("m-2", plan="pro"), ts=Y2K_MS + DAY)
    assert profile.traits == {"email": "ada@example.com", "plan": "pro"}


def test_an_older_identify_does_not_overwrite_a_newer_trait(profile: Profile) -> None:
    profile.apply(identify("m-2", plan="pro"), ts=Y2K_MS + DAY)
    profile.apply(identify("m-1", plan="free", email="ada@example.com"), ts=Y2K_MS)
    assert profile.traits == {"plan": "pro", "email": "ada@example.com"}


def test_trait_ties_are_broken_by_message_id(example_rules: RuleSet) -> None:
    first, second = identify("m-2", plan="pro"), identify("m-1", plan="free")
    for order_ in ([first, second], [second, first]):
        profile = Profile(example_rules)
        for e in order_:
            profile.apply(e, ts=Y2K_MS)
        assert profile.traits == {"plan": "pro"}


def test_only_identify_sets_traits(profile: Profile) -> None:
    profile.apply(event(type="track", event="Signed Up", traits={"plan": "pro"}))
    profile.apply(event(type="page", traits={"plan": "pro"}))
    assert profile.traits == {}


def test_identities_are_left_to_stitching(profile: Profile) -> None:
    """Which identities a profile takes is decided across profiles (`Stitcher`)."""
    profile.apply(event(type="page", anonymousId="a-1"))
    assert profile.state.identities == {}


def test_identities_accumulate_without_duplicates(profile: Profile) -> None:
    for kind, value in [("anonymous_id", "a-1"), ("anonymous_id", "a-1"), ("user_id", "u-1")]:
        add_identity(profile.state, kind, value)
    assert profile.state.identities == {"anonymous_id": ["a-1"], "user_id": ["u-1"]}


# --- applied offsets -----------------------------------------------------------------------


def test_a_replayed_offset_changes_nothing(example_rules: RuleSet) -> None:
    state = ProfileState(id="u-1")
    first = order("m-1", revenue=10, product_id="sku-1")
    assert apply_at(state, first, example_rules, offset=5).changed
    settle(state, {SOURCE: 3})  # written with a batch that began at offset 4
    before = encode_state(state)

    again = apply_at(state, first, example_rules, offset=5)
    older = order("m-0", revenue=99, product_id="sku-0")
    below = apply_at(state, older, example_rules, offset=3, ts=Y2K_MS + DAY)

    assert (again.changed, below.changed) == (False, False)
    assert (again.skips, below.skips) == ([], [])
    assert encode_state(state) == before
    assert state.version == 1


def test_offsets_above_the_floor_are_applied_one_by_one(example_rules: RuleSet) -> None:
    """Another profile's offset between two of this one's is not taken as applied:
    offsets above the floor count only when this profile applied them."""
    state = ProfileState(id="u-1")
    for offset in (9, 7):  # 7 after 9: a merge can bring offsets in any order
        apply_at(state, order(f"m-{offset}", revenue=1), example_rules, offset=offset)
    assert state.recent == {SOURCE: [7, 9]}
    assert apply_at(state, order("m-8", revenue=1), example_rules, offset=8).changed
    assert [applied_before(state, SOURCE, o) for o in range(6, 11)] == [False, *[True] * 3, False]


def test_settling_raises_the_floor_and_forgets_the_offsets_under_it() -> None:
    state = ProfileState(id="u-1", offsets={"t/0": 2}, recent={"t/0": [4, 6, 9], "t/1": [3]})
    settle(state, {"t/0": 6, "t/2": 10})  # t/2: no offsets of it to forget, no floor
    assert (state.offsets, state.recent) == ({"t/0": 6}, {"t/0": [9], "t/1": [3]})
    settle(state, {"t/0": 9, "t/1": 1})
    assert (state.offsets, state.recent) == ({"t/0": 9, "t/1": 1}, {"t/1": [3]})
    settle(state, {"t/1": 0})  # a floor never goes down
    assert (state.offsets, state.recent) == ({"t/0": 9, "t/1": 1}, {"t/1": [3]})


def test_merged_offsets_are_the_higher_floor_and_what_either_applied() -> None:
    survivor = ProfileState(id="a", offsets={"t/0": 49}, recent={"t/0": [100]})
    absorbed = ProfileState(id="b", offsets={"t/0": 20, "t/1": 5}, recent={"t/0": [30, 60]})
    merge_offsets(survivor, absorbed)
    assert survivor.offsets == {"t/0": 49, "t/1": 5}
    assert survivor.recent == {"t/0": [60, 100]}
    # offset 50 of t/0 was neither's: a redo of it after the merge is applied
    assert not applied_before(survivor, "t/0", 50)


def test_offsets_are_per_source(example_rules: RuleSet) -> None:
    state = ProfileState(id="u-1")
    apply_at(state, order("m-1", revenue=10), example_rules, offset=5, source="events/0")
    applied = apply_at(state, order("m-2", revenue=5), example_rules, offset=5, source="events/1")
    assert applied.changed
    assert state.recent == {"events/0": [5], "events/1": [5]}
    assert compute_attributes(state, example_rules, NOW)["lifetime_value"] == 15
    assert state.version == 2


def test_offset_zero_is_applied_once(example_rules: RuleSet) -> None:
    state = ProfileState(id="u-1")
    assert apply_at(state, order("m-1", revenue=1), example_rules, offset=0).changed
    assert not apply_at(state, order("m-1", revenue=1), example_rules, offset=0).changed


def test_version_counts_applied_events(profile: Profile) -> None:
    profile.apply(identify("m-1", plan="free"))
    profile.apply(event(type="page"))
    profile.apply(order("m-3", revenue=1))
    assert profile.state.version == 3


# --- attributes -----------------------------------------------------------------------------


def test_orders_feed_the_attributes(profile: Profile) -> None:
    profile.apply(order("m-1", revenue=19.99, product_id="sku-42"), ts=Y2K_MS)
    profile.apply(order("m-2", revenue=120.0, product_id="sku-99"), ts=Y2K_MS + 2 * DAY)
    profile.apply(order("m-3", revenue=5.01, product_id="sku-1"), ts=Y2K_MS + DAY)
    assert profile.attributes == {
        "lifetime_value": 145.0,
        "purchase_count": 3,
        "largest_order": 120.0,
        "smallest_order": 5.01,
        "last_product": "sku-99",
        "last_category_viewed": None,
        "page_views": 0,
        "avg_order_value": 145.0 / 3,
        "first_product": "sku-42",
        "recently_viewed": [],
        "categories_viewed": 0,
        "favourite_category": None,
        "big_orders": 1,
        "eur_revenue": 0,  # no currency given
        "orders_last_30_days": 3,
        "revenue_last_7_days": 120.0,  # the others were processed over a day late
        "categories_this_month": 0,
        "average_order": 145.0 / 3,
        "loyal": True,
    }


@pytest.mark.parametrize("properties", [{"product_id": "sku-1"}, {"revenue": None}])
def test_a_missing_field_is_a_skip(profile: Profile, properties: dict[str, Any]) -> None:
    applied = profile.apply(order("m-1", **properties))
    assert applied.changed
    skipped = {skip.attribute for skip in applied.skips}
    assert {"lifetime_value", "largest_order", "smallest_order"} <= skipped
    assert "purchase_count" not in skipped  # count needs no field
    missing = [skip for skip in applied.skips if skip.kind == "missing_field"]
    assert {"lifetime_value", "largest_order", "smallest_order", "avg_order_value"} <= {
        skip.attribute for skip in missing
    }
    for skip in missing:
        assert skip == Skip(skip.attribute, "m-1", "field is missing", "missing_field")
    assert {(skip.kind, skip.attribute) for skip in applied.skips if skip not in missing} == {
        ("filter_error", "big_orders"),  # no revenue to compare
        ("filter_error", "eur_revenue"),  # no currency
    }
    assert profile.attributes["purchase_count"] == 1
    assert profile.attributes["lifetime_value"] == 0


def test_a_count_with_a_field_counts_events_that_have_it() -> None:
    rules = parse_rules(
        "attributes:\n  - name: coupons\n    function: count\n    field: properties.coupon\n"
    )
    profile = Profile(rules)
    profile.apply(event(type="track", event="Order", properties={"coupon": "XMAS"}))
    applied = profile.apply(event(type="track", event="Order", properties={}))
    assert applied.skips == []
    assert profile.attributes == {"coupons": 1}


def test_a_string_to_sum_is_a_skip_not_a_crash(profile: Profile) -> None:
    profile.apply(order("m-1", revenue=12.5, product_id="sku-5"))
    applied = profile.apply(order("m-2", revenue="free", product_id="sku-6"))
    assert applied.changed
    wrong = [skip for skip in applied.skips if skip.kind == "wrong_type"]
    assert [skip.attribute for skip in wrong] == [
        "lifetime_value",
        "largest_order",
        "smallest_order",
        "avg_order_value",
    ]
    for skip in wrong:
        assert skip.message_id == "m-2"
        assert skip.reason == "expected a number, got str 'free'"
    attributes = profile.attributes
    assert attributes["lifetime_value"] == 12.5
    assert attributes["purchase_count"] == 2
    assert attributes["last_product"] == "sku-6"


def test_a_skip_without_message_id(profile: Profile) -> None:
    applied = profile.apply(event(type="track", event="Order Completed", properties={}))
    assert {skip.message_id for skip in applied.skips} == {None}


def test_never_fed_attributes_are_zero_or_null(example_rules: RuleSet) -> None:
    values = compute_attributes(ProfileState(id="u-1"), example_rules, NOW)
    assert values == {
        "lifetime_value": 0,
        "purchase_count": 0,
        "largest_order": None,
        "smallest_order": None,
        "last_product": None,
        "last_category_viewed": None,
        "page_views": 0,
        "avg_order_value": None,
        "first_product": None,
        "recently_viewed": [],
        "categories_viewed": 0,
        "favourite_category": None,
        "big_orders": 0,
        "eur_revenue": 0,
        "orders_last_30_days": 0,
        "revenue_last_7_days": 0,
        "categories_this_month": 0,
        "average_order": None,  # 0.0 / 0.0
        "loyal": False,
    }
    assert type(values["lifetime_value"]) is int
    assert list(values) == list(example_rules.names)


# --- the view -------------------------------------------------------------------------------


def test_render_view(profile: Profile) -> None:
    profile.apply(
        event(type="identify", anonymousId="a-1", messageId="m-1", traits={"plan": "free"}),
        ts=Y2K_MS + DAY,
    )
    profile.apply(event(type="page", anonymousId="a-1", messageId="m-2"), ts=Y2K_MS + 2 * DAY)
    profile.apply(order("m-3", revenue=10, product_id="sku-1"), ts=Y2K_MS + 123)
    add_identity(profile.state, "user_id", "u-1")
    add_identity(profile.state, "anonymous_id", "a-1")
    view = render_view(profile.state, profile.rules, NOW)
    assert view == {
        "id": "u-1",
        "entity": "user",
        "identities": {"user_id": ["u-1"], "anonymous_id": ["a-1"]},
        "traits": {"plan": "free"},
        "attributes": {
            "lifetime_value": 10,
            "purchase_count": 1,
            "largest_order": 10,
            "smallest_order": 10,
            "last_product": "sku-1",
            "last_category_viewed": None,
            "page_views": 1,
            "avg_order_value": 10.0,
            "first_product": "sku-1",
            "recently_viewed": [],
            "categories_viewed": 0,
            "favourite_category": None,
            "big_orders": 0,
            "eur_revenue": 0,
            "orders_last_30_days": 1,
            "revenue_last_7_days": 0,  # processed 3 days late: past its allowed lateness
            "categories_this_month": 0,
            "average_order": 10.0,
            "loyal": False,
        },
        "first_seen": "2000-01-01T00:00:00.123Z",
        "last_seen": "2000-01-03T00:00:00.000Z",
        "version": 3,
    }
    assert orjson.loads(orjson.dumps(view)) == view


# --- the stored state -----------------------------------------------------------------------


def test_state_round_trips(profile: Profile) -> None:
    profile.apply(identify("m-1", plan="free", address={"city": "Oslo"}))
    profile.apply(order("m-2", revenue=0.1, product_id="sku-1"))
    profile.apply(order("m-3", revenue=2, product_id="sku-2"))
    decoded = decode_state(encode_state(profile.state))
    assert decoded == profile.state
    assert render_view(decoded, profile.rules, NOW) == render_view(
        profile.state, profile.rules, NOW
    )


def test_a_decoded_state_carries_on_like_the_original(example_rules: RuleSet) -> None:
    """Sum keeps exact partials; they must survive storage, or a total would drift."""
    kept = ProfileState(id="u-1")
    stored = ProfileState(id="u-1")
    for offset in range(10):
        e = order(f"m-{offset}", revenue=0.1)
        apply_at(kept, e, example_rules, offset=offset)
        stored = decode_state(encode_state(stored))
        apply_at(stored, e, example_rules, offset=offset)
    assert compute_attributes(stored, example_rules, NOW)["lifetime_value"] == 1.0
    assert encode_state(stored) == encode_state(kept)


def test_fresh_states_do_not_share_dicts() -> None:
    first, second = ProfileState(id="a"), ProfileState(id="b")
    first.offsets["x"] = 1
    first.identities["user_id"] = ["a"]
    assert (second.offsets, second.identities) == ({}, {})


def test_reconcile_drops_states_the_rules_no_longer_read() -> None:
    old = parse_rules(
        "attributes:\n  - name: a\n    function: count\n  - name: b\n    function: count\n"
    )
    new = parse_rules(
        "attributes:\n  - name: a\n    function: max\n    field: properties.x\n"
        "  - name: b\n    function: count\n"
    )
    state = ProfileState(id="u-1")
    apply_at(state, event(type="page", messageId="m"), old, offset=0)
    assert set(state.attributes) == {"a/count", "b/count"}
    assert reconcile(state, old) == []
    assert reconcile(state, new) == ["a/count"]
    assert set(state.attributes) == {"b/count"}


def test_the_view_keeps_the_file_order_when_derived_attributes_come_first() -> None:
    rules = parse_rules(
        "attributes:\n"
        "  - name: doubled\n    function: derived\n    expression: orders * 2\n"
        "  - name: orders\n    function: count\n"
        "  - name: pages\n    function: count\n    type: [page]\n"
        "  - name: quadrupled\n    function: derived\n    expression: doubled * 2\n"
    )
    assert [a.name for a in rules.derived_inputs] == ["orders"]
    state = ProfileState(id="u-1")
    apply_at(state, event(type="page", messageId="m"), rules, offset=0)
    values = compute_attributes(state, rules, NOW)
    assert list(values.items()) == [("doubled", 2), ("orders", 1), ("pages", 1), ("quadrupled", 4)]
