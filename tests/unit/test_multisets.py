"""list, unique_count and most_frequent: what is particular to them. Their laws (any
order, any split merged, equals a batch computation) are checked with those of every
other aggregator, in test_aggregators.py."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from attributes.aggregators import Aggregator
from attributes.multisets import MostFrequent, RecentValues, UniqueCount, value_key
from tests.unit.test_aggregators import Item, fold, items_of, multiset_values


def test_values_are_compared_by_content_not_by_key_order() -> None:
    unique = UniqueCount()
    state = fold(unique, [({"a": 1, "b": 2}, 0, "m1"), ({"b": 2, "a": 1}, 1, "m2")])
    assert unique.result(state) == 1
    assert value_key(1) != value_key("1")  # a number and its text are different values


def test_list_trims_to_size_and_states_stay_msgpack_native() -> None:
    recent = RecentValues(size=2)
    state = fold(recent, [("a", 1, "m1"), ("b", 2, "m2"), ("c", 3, "m3")])
    assert recent.result(state) == ["c", "b"]
    assert len(state) == 2
    for aggregator in (recent, UniqueCount(), MostFrequent()):
        kept = fold(aggregator, [({"k": [1, None]}, 1, "m1")])
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(kept)) == kept


def test_empty_states() -> None:
    assert RecentValues().result([]) == []
    assert UniqueCount().result([]) == 0
    assert MostFrequent().result({}) is None


# --- caps (`max_values`) ----------------------------------------------------------------------


def keys(*values: Any) -> list[str]:
    return sorted(value_key(value) for value in values)


def test_a_capped_unique_count_keeps_the_first_keys_and_says_the_cap_past_it() -> None:
    unique = UniqueCount(max_values=2)
    state = fold(unique, [("c", 1, "m1"), ("b", 2, "m2")])
    assert (unique.result(state), state) == (2, keys("b", "c"))  # exactly the cap: exact
    state = fold(unique, [("d", 3, "m3")], state)
    assert (unique.result(state), state) == (2, keys("b", "c", "d"))  # cap + 1: overflowed
    state = fold(unique, [("e", 4, "m4"), ("c", 5, "m5")], state)  # past the kept: forgotten
    assert state == keys("b", "c", "d")
    state = fold(unique, [("a", 6, "m6")], state)  # sorts first: kept, "d" forgotten
    assert (unique.result(state), state) == (2, keys("a", "b", "c"))


def test_a_capped_most_frequent_counts_the_first_values_only() -> None:
    frequent = MostFrequent(max_values=2)
    items = [("b", 1, "m1"), ("c", 2, "m2"), ("c", 3, "m3")]
    state = fold(frequent, items)
    assert frequent.result(state) == "c"  # within the cap: exact
    state = fold(frequent, [("z", 4, "m4"), ("z", 5, "m5"), ("z", 6, "m6")], state)
    assert frequent.result(state) == "c"  # "z" is past the cap: kept to say so, not counted
    assert state == {'"b"': [1, 1, "m1"], '"c"': [2, 3, "m3"], '"z"': [3, 6, "m6"]}
    state = fold(frequent, [("a", 7, "m7")], state)  # sorts first: "z" is forgotten
    assert state == {'"a"': [1, 7, "m7"], '"b"': [1, 1, "m1"], '"c"': [2, 3, "m3"]}
    # "c" (seen twice) is the third value now: not counted; "a" and "b" tie, "a" is newer
    assert frequent.result(state) == "a"


def test_a_capped_state_stays_small_and_msgpack_native() -> None:
    items = [(n, n, f"m{n}") for n in range(100)]
    for aggregator in (UniqueCount(max_values=10), MostFrequent(max_values=10)):
        state = fold(aggregator, items)
        assert len(state) == 11
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(state)) == state


capped = st.sampled_from([UniqueCount(max_values=2), MostFrequent(max_values=2)])


@given(aggregator=capped, items=items_of(multiset_values), data=st.data())
def test_a_capped_state_depends_on_the_values_not_on_their_order(
    aggregator: Aggregator, items: list[Item], data: st.DataObject
) -> None:
    """Not only the result: the state itself is the same, folded in any order or split
    and merged, so a stored state is canonical."""
    order = data.draw(st.permutations(items))
    cut = data.draw(st.integers(0, len(items)))
    state = fold(aggregator, items)
    assert fold(aggregator, order) == state
    assert aggregator.merge(fold(aggregator, order[:cut]), fold(aggregator, order[cut:])) == state
