"""`merge_states`: two profiles found to be one person become what one profile fed all
their events would be (the oracle: a single state fed the whole stream)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attributes.events import Event, decode_event
from attributes.merge import merge_states
from attributes.profile import (
    ProfileState,
    add_identity,
    apply_event,
    compute_attributes,
    render_view,
)
from attributes.ruleset import RuleSet
from tests.unit.event_strategies import orders, product_views

HOUR = 3_600_000
DAY = 24 * HOUR
#: the processing time windows are evaluated at: 2026-11-11T11:00:00Z
NOW = int(datetime(2026, 11, 11, 11, tzinfo=UTC).timestamp() * 1000)

encode = msgspec.json.Encoder().encode  # tells 10 from 10.0, as served views do


def event(**fields: Any) -> Event:
    return decode_event(orjson.dumps({"userId": "u-1", **fields}))


# --- the oracle -------------------------------------------------------------------------------

bodies = st.one_of(
    orders(["sku-1", "sku-2", "sku-3"], [{}, {"currency": "EUR"}, {"currency": "USD"}]),
    product_views(["books", "garden", "kitchen"], ["sku-1", "sku-2", "sku-3"]),
    st.builds(
        lambda traits: {"type": "identify", "traits": traits},
        st.dictionaries(
            st.sampled_from(["plan", "name", "email"]), st.sampled_from(["a", "b", 1]), max_size=2
        ),
    ),
    st.just({"type": "page"}),
)

#: when an event happened, in hours before NOW: mostly the last day (inside every window
#: and the lateness), sometimes weeks back (outside some), with ties at the minute
hours_ago = st.one_of(st.integers(0, 30), st.integers(0, 1_000))
minutes = st.sampled_from([0, 30, 59])

stream = st.lists(st.tuples(bodies, hours_ago, minutes), max_size=30)

#: identities a part's profile holds (types and values from a small pool: overlaps)
held = st.lists(
    st.tuples(
        st.sampled_from(["user_id", "email", "anonymous_id"]), st.sampled_from(["x", "y", "z"])
    ),
    max_size=3,
)


#: an event, its time, its partition and offset, and the source its topic is bound to
Item = tuple[Event, int, str, int, str]


def applied(state: ProfileState, rules: RuleSet, item: Item) -> None:
    e, ts, partition, offset, origin = item
    assert apply_event(
        state, e, ts=ts, rules=rules, source=partition, offset=offset, now=NOW, origin=origin
    ).changed


@settings(max_examples=150, deadline=None)
@given(drawn=stream, data=st.data())
def test_merged_parts_equal_one_profile_fed_everything(
    example_rules: RuleSet, drawn: list[Any], data: st.DataObject
) -> None:
    """Split a person's events over 2-4 profiles (their own partitions, or one shared
    partition whose offsets interleave), merge them in a random order and shape."""
    parts = data.draw(st.integers(2, 4), label="parts")
    shared = data.draw(st.booleans(), label="one partition")
    mids = data.draw(st.permutations(range(len(drawn))), label="messageIds")
    whose = [data.draw(st.integers(0, parts - 1)) for _ in drawn]
    next_offset = [0] * parts
    items: list[tuple[int, Item]] = []
    for n, ((body, hours, minute), part) in enumerate(zip(drawn, whose, strict=True)):
        e = event(**body, messageId=f"m-{mids[n]:02d}")
        ts = NOW - hours * HOUR - minute * 60_000
        if shared:
            source, offset = "events/0", n
        else:
            source, offset = f"events/{part}", next_offset[part]
            next_offset[part] += data.draw(st.integers(1, 3))  # offsets may skip
        origin = data.draw(st.sampled_from(["web", "crm"]))
        items.append((part, (e, ts, source, offset, origin)))

    single = ProfileState(id="single")
    for _, item in items:
        applied(single, example_rules, item)
    states = [ProfileState(id=f"p-{n}") for n in range(parts)]
    for part, item in items:
        applied(states[part], example_rules, item)
    for state in states:
        for kind, value in data.draw(held, label=f"identities of {state.id}"):
            add_identity(state, kind, value)
    before = {state.id: copy.deepcopy(state.identities) for state in states}
    union = {(kind, v) for state in states for kind, vs in state.identities.items() for v in vs}

    while len(states) > 1:  # any survivor, any absorbed: chains and trees alike
        survivor = data.draw(st.integers(0, len(states) - 1), label="survivor")
        absorbed = data.draw(st.integers(0, len(states) - 2), label="absorbed")
        absorbed += absorbed >= survivor
        merge_states(states[survivor], states[absorbed], example_rules)
        del states[absorbed]
    merged = states[0]

    assert encode(compute_attributes(merged, example_rules, NOW)) == encode(
        compute_attributes(single, example_rules, NOW)
    )
    assert merged.source_traits == single.source_traits
    traits = render_view(merged, example_rules, NOW)["traits"]
    assert traits == render_view(single, example_rules, NOW)["traits"]
    assert merged.offsets == single.offsets
    assert (merged.first_seen, merged.last_seen) == (single.first_seen, single.last_seen)
    assert merged.version == single.version == len(items)
    for attribute in example_rules.windowed:
        assert attribute.window is not None
        mine = merged.attributes.get(attribute.key, [])
        theirs = single.attributes.get(attribute.key, [])
        assert [bucket for bucket, _ in mine] == [bucket for bucket, _ in theirs]
        inner = attribute.window.inner
        assert [encode(inner.result(state)) for _, state in mine] == [
            encode(inner.result(state)) for _, state in theirs
        ]
    # identities: the union, the survivor's own first (per type, in their order)
    assert {(kind, v) for kind, vs in merged.identities.items() for v in vs} == union
    for kind, values in merged.identities.items():
        assert len(values) == len(set(values))
        own = before[merged.id].get(kind, [])
        assert values[: len(own)] == own


# --- each part on its own ---------------------------------------------------------------------


def state(pid: str, **fields: Any) -> ProfileState:
    return ProfileState(id=pid, **fields)


def test_offsets_take_the_higher_watermark_per_partition(example_rules: RuleSet) -> None:
    survivor = state("u", offsets={"events/0": 5, "events/1": 9}, version=2)
    absorbed = state("a", offsets={"events/0": 7, "events/2": 1}, version=1)
    merge_states(survivor, absorbed, example_rules)
    assert survivor.offsets == {"events/0": 7, "events/1": 9, "events/2": 1}


def test_first_and_last_seen_are_the_earlier_and_the_later(example_rules: RuleSet) -> None:
    survivor = state("u", first_seen=200, last_seen=300, version=2)
    merge_states(survivor, state("a", first_seen=100, last_seen=250, version=1), example_rules)
    assert (survivor.first_seen, survivor.last_seen, survivor.version) == (100, 300, 3)
    merge_states(survivor, state("b", first_seen=150, last_seen=900, version=4), example_rules)
    assert (survivor.first_seen, survivor.last_seen, survivor.version) == (100, 900, 7)


def test_a_new_survivor_takes_the_absorbed_times(example_rules: RuleSet) -> None:
    """A profile made by the login event has seen nothing yet: its zeros are no time."""
    survivor = state("u")
    merge_states(survivor, state("a", first_seen=100, last_seen=250, version=3), example_rules)
    assert (survivor.first_seen, survivor.last_seen, survivor.version) == (100, 250, 3)


def test_an_empty_absorbed_profile_changes_no_time(example_rules: RuleSet) -> None:
    survivor = state("u", first_seen=100, last_seen=250, version=3)
    merge_states(survivor, state("a"), example_rules)
    assert (survivor.first_seen, survivor.last_seen, survivor.version) == (100, 250, 3)


def test_identities_are_the_union_the_survivors_first(example_rules: RuleSet) -> None:
    survivor = state("u", identities={"user_id": ["u"], "anonymous_id": ["a-1"]})
    absorbed = state("a", identities={"anonymous_id": ["a-2", "a-1"], "email": ["e@x.io"]})
    merge_states(survivor, absorbed, example_rules)
    assert survivor.identities == {
        "user_id": ["u"],
        "anonymous_id": ["a-1", "a-2"],
        "email": ["e@x.io"],
    }


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_traits_are_the_latest_by_event_time_then_message_id(
    example_rules: RuleSet, direction: str
) -> None:
    web = {"plan": [10, "m-1", "free"], "name": [30, "m-2", "Ada"], "a": [5, "m-0", 1]}
    left = state("l", version=3, source_traits={"web": web, "crm": {"tier": [1, "m-9", "gold"]}})
    right = state(
        "r",
        version=3,
        source_traits={
            "web": {"plan": [20, "m-0", "pro"], "name": [30, "m-3", "Ada L."], "b": [1, "", 2]},
            "app": {"plan": [99, "m-5", "trial"]},
        },
    )
    survivor, absorbed = (left, right) if direction == "forward" else (right, left)
    merge_states(survivor, absorbed, example_rules)
    assert survivor.source_traits == {  # per source: a newer plan from the app is apart
        "web": {
            "plan": [20, "m-0", "pro"],
            "name": [30, "m-3", "Ada L."],
            "a": [5, "m-0", 1],
            "b": [1, "", 2],
        },
        "crm": {"tier": [1, "m-9", "gold"]},
        "app": {"plan": [99, "m-5", "trial"]},
    }


def test_an_absorbed_profile_that_applied_nothing_brings_only_identities_and_watermarks(
    example_rules: RuleSet,
) -> None:
    survivor = state("u", first_seen=100, last_seen=250, version=3)
    absorbed = state(
        "a",
        identities={"anonymous_id": ["a-1"]},
        offsets={"events/0": 4},
        source_traits={"web": {"plan": [999, "m-1", "pro"]}},
    )
    merge_states(survivor, absorbed, example_rules)
    assert survivor.identities == {"anonymous_id": ["a-1"]}
    assert survivor.offsets == {"events/0": 4}
    assert survivor.source_traits == {}
    assert (survivor.first_seen, survivor.last_seen, survivor.version) == (100, 250, 3)


def test_windows_merge_bucket_by_bucket(example_rules: RuleSet) -> None:
    (window,) = [a for a in example_rules.windowed if a.name == "orders_last_30_days"]
    order = {"type": "track", "event": "Order Completed", "properties": {"revenue": 1}}
    left, right = state("l"), state("r")
    for target, hours, offset in [(left, 1, 0), (left, 5, 1), (right, 1, 2), (right, 48, 3)]:
        e = event(**order, messageId=f"m-{offset}")
        apply_event(
            target,
            e,
            ts=NOW - hours * HOUR,
            rules=example_rules,
            source="events/0",
            offset=offset,
            now=NOW,
        )
    merge_states(left, right, example_rules)
    bucket = NOW - NOW % HOUR
    assert left.attributes[window.key] == [
        [bucket - 48 * HOUR, 1],
        [bucket - 5 * HOUR, 1],
        [bucket - HOUR, 2],
    ]
    assert compute_attributes(left, example_rules, NOW)["orders_last_30_days"] == 4


def test_a_state_only_one_side_has_is_kept(example_rules: RuleSet) -> None:
    left, right = state("l"), state("r")
    apply_event(
        left, event(type="page"), ts=NOW, rules=example_rules, source="events/0", offset=0, now=NOW
    )
    product = {"category": "books", "product_id": "sku-1"}
    viewed = event(type="track", event="Product Viewed", properties=product)
    apply_event(right, viewed, ts=NOW, rules=example_rules, source="events/0", offset=1, now=NOW)
    merge_states(left, right, example_rules)
    values = compute_attributes(left, example_rules, NOW)
    assert values["page_views"] == 1
    assert values["recently_viewed"] == ["sku-1"]
    assert values["categories_this_month"] == 1
