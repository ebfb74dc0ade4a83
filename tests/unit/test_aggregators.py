from __future__ import annotations

import copy
import itertools
import math
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attributes.aggregators import (
    FUNCTIONS,
    OPTIONS,
    Aggregator,
    Avg,
    Count,
    First,
    Max,
    Min,
    MostRecent,
    Rejected,
    State,
    Sum,
    register,
    unregister,
)
from attributes.expressions import DOUBLE, DYN, INT, list_of
from attributes.multisets import MostFrequent, RecentValues, UniqueCount, value_key
from attributes.specs import AttributeSpec

Item = tuple[Any, int, str]  # (value, event ms, messageId)


def fold(aggregator: Aggregator, items: Sequence[Item], state: State | None = None) -> State:
    state = aggregator.initial() if state is None else state
    for value, ts, mid in items:
        state = aggregator.add(state, value, ts=ts, mid=mid)
    return state


def total(aggregator: Aggregator, values: Sequence[Any]) -> Any:
    return aggregator.result(fold(aggregator, [(value, 0, "") for value in values]))


# --- sum ----------------------------------------------------------------------------------


def test_sum_of_nothing_is_int_zero() -> None:
    result = total(Sum(), [])
    assert result == 0
    assert type(result) is int


def test_sum_of_ints_stays_int() -> None:
    result = total(Sum(), [3, -1, 2**62, -(2**62), 2**62 - 1])
    assert result == 2**62 + 1
    assert type(result) is int


def test_a_sum_past_64_bits_stays_storable() -> None:
    """States are stored as msgpack, which holds 64-bit integers at most."""
    values = [2**63 - 1, 2**63 - 1, 2]
    state = fold(Sum(), [(value, 0, "") for value in values])
    msgspec.msgpack.encode(state)
    assert Sum().result(state) in (sum(values), float(sum(values)))


def test_spilling_past_64_bits_is_exact_and_order_free() -> None:
    values = [2**63 - 1, 2, -(2**63 - 1)]
    results = [total(Sum(), list(order)) for order in itertools.permutations(values)]
    assert [repr(result) for result in results] == [repr(2)] * len(results)


def test_sum_is_exact() -> None:
    assert sum([0.1] * 10) != 1.0  # what a plain float total would serve
    assert total(Sum(), [0.1] * 10) == 1.0
    assert total(Sum(), [1e100, 1.0, -1e100]) == 1.0
    assert total(Sum(), [19.99, 45.5, 120.0, 5.01]) == 190.5


def test_sum_mixing_ints_and_floats_is_a_float() -> None:
    result = total(Sum(), [1, 0.5, 2])
    assert result == 3.5
    assert type(result) is float


def test_sum_of_floats_that_cancel_is_still_a_float() -> None:
    result = total(Sum(), [1.5, -1.5])
    assert result == 0.0
    assert type(result) is float


def test_sum_is_exact_when_a_large_int_total_meets_floats() -> None:
    values = [2**53, 1, 0.5]
    assert total(Sum(), values) == float(sum(map(Fraction, values)))


def test_a_sum_past_a_double_s_range_is_infinite_or_nan_never_an_error() -> None:
    """Its result is computed at each render of the profile: had it raised, every
    later event of the profile would be a dead letter (events are admitted with any
    finite double, e.g. 1e308)."""
    assert math.isnan(total(Sum(), [1e308, 1e308]))  # added one by one, partials overflow
    # one bucket each (a window): exact, out of range, the infinity of its sign
    assert Sum().result_of([[0, [1e308]], [0, [1e308]]]) == math.inf
    assert Sum().result_of([[0, [-1e308]], [0, [-1e308]], [0, [1.0]]]) == -math.inf
    assert math.isnan(total(Sum(), [1e308, 1e308, -1e308]))  # the partials overflowed
    assert math.isnan(total(Avg(), [1e308, 1e308]))


# --- count --------------------------------------------------------------------------------


def test_count_counts_any_value() -> None:
    assert total(Count(), []) == 0
    assert total(Count(), [None, "x", 1.5, True, [1]]) == 5


# --- min and max --------------------------------------------------------------------------


def test_min_and_max_of_nothing_is_none() -> None:
    assert total(Min(), []) is None
    assert total(Max(), []) is None


def test_min_and_max() -> None:
    values = [5, -2.5, 10, 0, 7.25]
    assert total(Min(), values) == -2.5
    assert total(Max(), values) == 10


@pytest.mark.parametrize("aggregator", [Min(), Max()], ids=["min", "max"])
@pytest.mark.parametrize("values", [[10, 10.0], [0.0, -0.0]])
def test_min_and_max_do_not_depend_on_arrival_order_of_equal_numbers(
    aggregator: Aggregator, values: list[float]
) -> None:
    forward = total(aggregator, values)
    backward = total(aggregator, values[::-1])
    assert repr(forward) == repr(backward)


# --- most_recent --------------------------------------------------------------------------


def test_most_recent_of_nothing_is_none() -> None:
    assert total(MostRecent(), []) is None


def test_most_recent_is_latest_by_event_time_not_arrival() -> None:
    items: list[Item] = [("b", 2_000, "m-1"), ("c", 3_000, "m-2"), ("a", 1_000, "m-3")]
    assert MostRecent().result(fold(MostRecent(), items)) == "c"


def test_most_recent_breaks_ties_by_message_id() -> None:
    items: list[Item] = [("from m-2", 1_000, "m-2"), ("from m-1", 1_000, "m-1")]
    for order in (items, items[::-1]):
        assert MostRecent().result(fold(MostRecent(), order)) == "from m-2"


def test_most_recent_takes_any_value() -> None:
    for value in ("sku-1", 3, None, {"a": [1]}, True):
        assert total(MostRecent(), [value]) == value


# --- rejections ---------------------------------------------------------------------------

NUMERIC = [Sum(), Min(), Max()]
NOT_NUMBERS = [True, False, "12.5", None, [1], {"amount": 1}]
NOT_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("aggregator", NUMERIC, ids=lambda agg: agg.function)
@pytest.mark.parametrize("value", NOT_NUMBERS, ids=repr)
def test_numeric_aggregators_reject_non_numbers(aggregator: Aggregator, value: Any) -> None:
    with pytest.raises(Rejected, match="expected a number, got "):
        aggregator.add(aggregator.initial(), value, ts=0, mid="m")


@pytest.mark.parametrize("aggregator", NUMERIC, ids=lambda agg: agg.function)
@pytest.mark.parametrize("value", NOT_FINITE, ids=repr)
def test_numeric_aggregators_reject_non_finite(aggregator: Aggregator, value: float) -> None:
    with pytest.raises(Rejected, match="expected a finite number"):
        aggregator.add(aggregator.initial(), value, ts=0, mid="m")


@pytest.mark.parametrize("aggregator", NUMERIC, ids=lambda agg: agg.function)
def test_a_rejected_value_leaves_the_state_alone(aggregator: Aggregator) -> None:
    state = fold(aggregator, [(2, 0, "m-1"), (3.5, 0, "m-2")])
    before = copy.deepcopy(state)
    with pytest.raises(Rejected):
        aggregator.add(state, "oops", ts=0, mid="m-3")
    assert state == before


# --- the oracle: any order, any split, merged, equals the batch result ----------------------

numbers = st.one_of(
    st.integers(min_value=-(2**31), max_value=2**31),
    st.floats(min_value=-1e300, max_value=1e300),
)
any_values = st.one_of(numbers, st.text(max_size=3), st.none(), st.booleans())
#: For min/max, no float equal to an int: the tie order (10 vs 10.0) has its own test above.
ordered_numbers = st.one_of(
    st.integers(min_value=-(2**31), max_value=2**31),
    st.floats(min_value=-1e300, max_value=1e300).filter(lambda x: not x.is_integer()),
)


def items_of(values: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Item]]:
    """Events with distinct messageIds (the id is what makes an event unique)."""
    return st.lists(
        st.tuples(values, st.integers(min_value=0, max_value=20), st.text(max_size=2)),
        max_size=30,
        unique_by=lambda item: item[2],
    )


def exact_sum(values: Sequence[int | float]) -> int | float:
    if all(isinstance(value, int) for value in values):
        return sum(values)
    return float(sum(map(Fraction, values)))


def most_recent_value(items: Sequence[Item]) -> Any:
    return max(items, key=lambda item: (item[1], item[2]))[0] if items else None


def first_value(items: Sequence[Item]) -> Any:
    return min(items, key=lambda item: (item[1], item[2]))[0] if items else None


def mean(items: Sequence[Item]) -> float | None:
    """What a batch job computes: the exact sum, divided by the count."""
    return exact_sum([v for v, _, _ in items]) / len(items) if items else None


#: values for the multiset functions: few, with ties, objects compared by content
multiset_values = st.one_of(
    st.integers(min_value=-3, max_value=3),
    st.sampled_from(["a", "b", "ab", ""]),
    st.none(),
    st.booleans(),
    st.dictionaries(st.sampled_from(["x", "y"]), st.integers(0, 2), max_size=2),
)


def by_recency(items: Sequence[Item]) -> list[Item]:
    return sorted(items, key=lambda item: (item[1], item[2], value_key(item[0])), reverse=True)


def recent(size: int, distinct: bool) -> Any:
    def batch(items: Sequence[Item]) -> list[Any]:
        kept: list[Any] = []
        for value, _, _ in by_recency(items):
            if not distinct or value_key(value) not in map(value_key, kept):
                kept.append(value)
        return kept[:size]

    return batch


def unique_count(items: Sequence[Item]) -> int:
    return len({value_key(value) for value, _, _ in items})


def capped_unique_count(cap: int) -> Any:
    """The README's rule: the number of distinct values, at most `cap`."""
    return lambda items: min(unique_count(items), cap)


def capped_most_frequent(cap: int) -> Any:
    """The README's rule: the most frequent of the `cap` values whose canonical JSON
    sorts first; the other values are not counted."""

    def batch(items: Sequence[Item]) -> Any:
        counted = sorted({value_key(value) for value, _, _ in items})[:cap]
        return most_frequent([item for item in items if value_key(item[0]) in counted])

    return batch


def most_frequent(items: Sequence[Item]) -> Any:
    if not items:
        return None
    counts = Counter(value_key(value) for value, _, _ in items)
    latest: dict[str, tuple[int, str]] = {}
    for value, ts, mid in items:
        key = value_key(value)
        latest[key] = max(latest.get(key, (ts, mid)), (ts, mid))
    rank = {key: (counts[key], *latest[key]) for key in counts}
    top = max(rank.values())
    return msgspec.json.decode(min(key for key in rank if rank[key] == top))


#: (aggregator, the events it takes, the batch result computed without the aggregator)
CASES = [
    pytest.param(
        Sum(), items_of(numbers), lambda items: exact_sum([v for v, _, _ in items]), id="sum"
    ),
    pytest.param(Count(), items_of(any_values), len, id="count"),
    pytest.param(
        Min(),
        items_of(ordered_numbers),
        lambda items: min((v for v, _, _ in items), default=None),
        id="min",
    ),
    pytest.param(
        Max(),
        items_of(ordered_numbers),
        lambda items: max((v for v, _, _ in items), default=None),
        id="max",
    ),
    pytest.param(MostRecent(), items_of(any_values), most_recent_value, id="most_recent"),
    pytest.param(First(), items_of(any_values), first_value, id="first"),
    pytest.param(Avg(), items_of(numbers), mean, id="avg"),
    pytest.param(RecentValues(3), items_of(multiset_values), recent(3, False), id="list"),
    pytest.param(
        RecentValues(3, distinct=True),
        items_of(multiset_values),
        recent(3, True),
        id="list-distinct",
    ),
    pytest.param(UniqueCount(), items_of(multiset_values), unique_count, id="unique_count"),
    pytest.param(MostFrequent(), items_of(multiset_values), most_frequent, id="most_frequent"),
    # capped: the values drawn have ~15 distinct keys, so caps of 1 and 3 often overflow
    *(
        pytest.param(
            UniqueCount(max_values=cap),
            items_of(multiset_values),
            capped_unique_count(cap),
            id=f"unique_count-max{cap}",
        )
        for cap in (1, 3)
    ),
    *(
        pytest.param(
            MostFrequent(max_values=cap),
            items_of(multiset_values),
            capped_most_frequent(cap),
            id=f"most_frequent-max{cap}",
        )
        for cap in (1, 3)
    ),
]


def same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def draw_split(data: st.DataObject, items: st.SearchStrategy[list[Item]]) -> tuple[Any, ...]:
    """Events, and the same events in a random order cut in two."""
    events = data.draw(items)
    order = data.draw(st.permutations(events))
    cut = data.draw(st.integers(min_value=0, max_value=len(order)))
    return events, order[:cut], order[cut:]


@pytest.mark.parametrize(("aggregator", "items", "batch"), CASES)
@given(data=st.data())
def test_streaming_in_any_order_equals_batch(
    aggregator: Aggregator, items: st.SearchStrategy[list[Item]], batch: Any, data: st.DataObject
) -> None:
    events = data.draw(items)
    order = data.draw(st.permutations(events))
    assert same(aggregator.result(fold(aggregator, order)), batch(events))


@pytest.mark.parametrize(("aggregator", "items", "batch"), CASES)
@given(data=st.data())
def test_merging_two_splits_equals_batch(
    aggregator: Aggregator, items: st.SearchStrategy[list[Item]], batch: Any, data: st.DataObject
) -> None:
    events, left, right = draw_split(data, items)
    merged = aggregator.merge(fold(aggregator, left), fold(aggregator, right))
    assert same(aggregator.result(merged), batch(events))


@pytest.mark.parametrize(("aggregator", "items", "batch"), CASES)
@given(data=st.data())
def test_merge_is_commutative(
    aggregator: Aggregator, items: st.SearchStrategy[list[Item]], batch: Any, data: st.DataObject
) -> None:
    _, left, right = draw_split(data, items)
    a, b = fold(aggregator, left), fold(aggregator, right)
    a_before, b_before = copy.deepcopy(a), copy.deepcopy(b)
    ab, ba = aggregator.merge(a, b), aggregator.merge(b, a)
    assert same(aggregator.result(ab), aggregator.result(ba))
    assert (a, b) == (a_before, b_before)  # merge leaves its inputs alone


@pytest.mark.parametrize(("aggregator", "items", "batch"), CASES)
@given(data=st.data())
def test_merge_with_initial_is_identity(
    aggregator: Aggregator, items: st.SearchStrategy[list[Item]], batch: Any, data: st.DataObject
) -> None:
    events = data.draw(items)
    state = fold(aggregator, events)
    assert same(aggregator.result(aggregator.merge(state, aggregator.initial())), batch(events))
    assert same(aggregator.result(aggregator.merge(aggregator.initial(), state)), batch(events))


@pytest.mark.parametrize(("aggregator", "items", "batch"), CASES)
@given(data=st.data())
def test_a_merged_state_keeps_folding(
    aggregator: Aggregator, items: st.SearchStrategy[list[Item]], batch: Any, data: st.DataObject
) -> None:
    events, left, rest = draw_split(data, items)
    cut = data.draw(st.integers(min_value=0, max_value=len(rest)))
    merged = aggregator.merge(fold(aggregator, left), fold(aggregator, rest[:cut]))
    assert same(aggregator.result(fold(aggregator, rest[cut:], merged)), batch(events))


@pytest.mark.parametrize(("aggregator", "items", "batch"), CASES)
@given(data=st.data())
def test_the_result_of_several_states_equals_batch(
    aggregator: Aggregator, items: st.SearchStrategy[list[Item]], batch: Any, data: st.DataObject
) -> None:
    """`result_of` (a window's buckets) is the result of the states merged."""
    events = data.draw(items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=4)))
    parts = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    states = [fold(aggregator, part) for part in parts]
    before = copy.deepcopy(states)
    assert same(aggregator.result_of(states), batch(events))
    assert states == before
    assert same(aggregator.result_of([]), batch([]))


# --- first and avg --------------------------------------------------------------------------


def test_first_breaks_a_timestamp_tie_by_the_smaller_message_id() -> None:
    first = First()
    assert first.result(fold(first, [("b", 5, "m2"), ("a", 5, "m1")])) == "a"
    assert first.result(fold(first, [("a", 5, "m1"), ("b", 5, "m2")])) == "a"


def test_avg_of_nothing_is_null_and_rejects_what_sum_rejects() -> None:
    avg = Avg()
    assert avg.result(avg.initial()) is None
    with pytest.raises(Rejected):
        avg.add(avg.initial(), "12", ts=0, mid="m")
    assert avg.result(fold(avg, [(1, 0, "a"), (2, 0, "b")])) == 1.5


# --- the registry -------------------------------------------------------------------------


def test_each_built_in_function_declares_what_rules_and_derived_need() -> None:
    declared = {
        name: (kind.result_type, kind.as_double, kind.needs_field, kind.options)
        for name, kind in FUNCTIONS.items()
        if kind.__module__.startswith("attributes.")
    }
    assert declared == {
        "sum": (DOUBLE, True, True, ()),
        "count": (INT, False, False, ()),
        "min": (DYN, True, True, ()),
        "max": (DYN, True, True, ()),
        "most_recent": (DYN, False, True, ()),
        "first": (DYN, False, True, ()),
        "avg": (DYN, True, True, ()),
        "list": (list_of(DYN), False, True, ("size", "distinct")),
        "unique_count": (INT, False, True, ("max_values",)),
        "most_frequent": (DYN, False, True, ("max_values",)),
    }


def test_every_built_in_function_is_checked_against_its_batch_result() -> None:
    """A function added to traitflow gets a row in CASES: the oracle tests above."""
    tested = {case.values[0] for case in CASES}
    built_in = [kind for kind in FUNCTIONS.values() if kind.__module__.startswith("attributes.")]
    assert {kind.function for kind in built_in} <= {
        aggregator.function for aggregator in tested if isinstance(aggregator, Aggregator)
    }


def test_the_options_functions_take_are_rule_file_keys() -> None:
    assert set(OPTIONS) <= set(AttributeSpec.model_fields)


class Tally(Aggregator):
    """A count under another name: enough for registering."""

    def initial(self) -> State:
        return 0

    def add(self, state: State, value: Any, ts: int, mid: str) -> State:
        return state + 1

    def merge(self, a: State, b: State) -> State:
        return a + b

    def result(self, state: State) -> Any:
        return state


def test_register_files_a_class_under_its_function() -> None:
    class Tallies(Tally):
        function = "tally"

    assert register(Tallies) is Tallies
    try:
        assert FUNCTIONS["tally"] is Tallies
        with pytest.raises(TypeError):
            FUNCTIONS["other"] = Tallies  # type: ignore[index]  # read-only: register
    finally:
        unregister("tally")
    assert "tally" not in FUNCTIONS


@pytest.mark.parametrize("name", ["sum", "most_frequent", "derived"])
def test_a_taken_or_reserved_name_is_refused(name: str) -> None:
    before = dict(FUNCTIONS)

    class Again(Tally):
        function = name

    with pytest.raises(ValueError, match=f"function '{name}' is already "):
        register(Again)
    assert dict(FUNCTIONS) == before


def test_a_class_without_a_name_or_with_an_unknown_option_is_refused() -> None:
    before = dict(FUNCTIONS)

    class Nameless(Tally):  # `function` of its own, or none
        pass

    class Badly(Tally):
        function = "Bad Name"

    class Percentile(Tally):
        function = "percentile"
        options = ("rank",)

    class Abstract(Aggregator):
        function = "abstract"

    with pytest.raises(TypeError, match="needs its own `function`"):
        register(Nameless)
    with pytest.raises(TypeError, match="needs its own `function`"):
        register(Badly)
    with pytest.raises(TypeError, match=r"takes options rule files lack: \['rank'\]"):
        register(Percentile)
    with pytest.raises(TypeError, match="is abstract"):
        register(Abstract)
    assert dict(FUNCTIONS) == before
