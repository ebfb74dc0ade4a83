"""list, unique_count and most_frequent: what is particular to them. Their laws (any
order, any split merged, equals a batch computation) are checked with those of every
other aggregator, in test_aggregators.py."""

from __future__ import annotations

import msgspec

from attributes.multisets import MostFrequent, RecentValues, UniqueCount, value_key
from tests.unit.test_aggregators import fold


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
