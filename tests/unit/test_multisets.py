"""list, unique_count and most_frequent: each against a plain batch computation, in any
arrival order and after splitting the stream and merging the two states."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from attributes.aggregators import Aggregator, State
from attributes.multisets import MostFrequent, RecentValues, UniqueCount, value_key

Item = tuple[Any, int, str]  # (value, event ms, messageId)

values = st.one_of(
    st.integers(min_value=-3, max_value=3),
    st.sampled_from(["a", "b", "ab", ""]),
    st.none(),
    st.booleans(),
    st.dictionaries(st.sampled_from(["x", "y"]), st.integers(0, 2), max_size=2),
)
#: events with distinct messageIds and few distinct timestamps (ties are the hard part)
streams = st.lists(
    st.tuples(values, st.integers(min_value=0, max_value=5), st.text("mn0123", max_size=3)),
    max_size=25,
    unique_by=lambda item: item[2],
)


def fold(aggregator: Aggregator, items: Sequence[Item]) -> State:
    state = aggregator.initial()
    for value, ts, mid in items:
        state = aggregator.add(state, value, ts, mid)
    return state


def results(aggregator: Aggregator, items: list[Item], cut: int, seed: int) -> list[Any]:
    """The result folded in order, in a shuffled order, and as two merged halves."""
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    cut = min(cut, len(items))
    merged = aggregator.merge(fold(aggregator, items[:cut]), fold(aggregator, items[cut:]))
    return [
        aggregator.result(fold(aggregator, items)),
        aggregator.result(fold(aggregator, shuffled)),
        aggregator.result(merged),
    ]


def by_recency(items: Sequence[Item]) -> list[Item]:
    return sorted(items, key=lambda item: (item[1], item[2], value_key(item[0])), reverse=True)


@given(streams, st.integers(1, 6), st.integers(0, 25), st.integers())
def test_list_is_the_most_recent_values_newest_first(
    items: list[Item], size: int, cut: int, seed: int
) -> None:
    expected = [value for value, _, _ in by_recency(items)[:size]]
    assert results(RecentValues(size=size), items, cut, seed) == [expected] * 3


@given(streams, st.integers(1, 6), st.integers(0, 25), st.integers())
def test_distinct_list_keeps_each_value_once_at_its_latest_occurrence(
    items: list[Item], size: int, cut: int, seed: int
) -> None:
    expected: list[Any] = []
    for value, _, _ in by_recency(items):
        if value_key(value) not in map(value_key, expected):
            expected.append(value)
    assert (
        results(RecentValues(size=size, distinct=True), items, cut, seed) == [expected[:size]] * 3
    )


@given(streams, st.integers(0, 25), st.integers())
def test_unique_count_counts_distinct_values(items: list[Item], cut: int, seed: int) -> None:
    expected = len({value_key(value) for value, _, _ in items})
    assert results(UniqueCount(), items, cut, seed) == [expected] * 3


@given(streams, st.integers(0, 25), st.integers())
def test_most_frequent_breaks_ties_by_recency_then_value(
    items: list[Item], cut: int, seed: int
) -> None:
    counts = Counter(value_key(value) for value, _, _ in items)
    latest: dict[str, tuple[int, str]] = {}
    for value, ts, mid in items:
        key = value_key(value)
        latest[key] = max(latest.get(key, (ts, mid)), (ts, mid))
    if items:
        rank = {key: (counts[key], *latest[key]) for key in counts}
        top = max(rank.values())
        expected = msgspec.json.decode(min(key for key in rank if rank[key] == top))
    else:
        expected = None
    assert results(MostFrequent(), items, cut, seed) == [expected] * 3


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
