"""Aggregators that keep several values of a field: `list`, `unique_count`, `most_frequent`.

Values are compared by their canonical JSON (`value_key`: sorted object keys), so
`{"a": 1, "b": 2}` and `{"b": 2, "a": 1}` are one value, and states hold only
msgpack-native text. Like every aggregator, each state merges, and the result does
not depend on the order events arrived in: ties are broken by event time, then
messageId, then the value itself.

`unique_count` and `most_frequent` keep every distinct value they have seen: exact,
and as large as the field's cardinality for one profile. Use them on fields of
bounded cardinality (categories, plans, countries), not on free text or ids; or give
them a cap (`max_values: N`). A capped state keeps the N + 1 values whose keys sort
first (with `most_frequent`, their exact tallies), and forgets every other value:
- which values are kept depends on the values seen, never on the order they came in,
  so streaming equals batch, and merging two states (union, then the first N + 1
  again) is exactly the state of all their events: a value in the first N + 1 of the
  union is in the first N + 1 of each side that saw it, with all of its occurrences;
- holding N + 1 values means more than N were seen: the cap overflowed. `unique_count`
  then says N ("N or more"); `most_frequent` is the most frequent of the first N
  values, the others being no longer counted. Up to N distinct values both are exact.
"""

from __future__ import annotations

import bisect
from typing import Any

import msgspec

from attributes.aggregators import Aggregator, State, register
from attributes.expressions.types import DYN, INT, list_of

_encode = msgspec.json.Encoder(order="sorted").encode


def value_key(value: Any) -> str:
    """The canonical JSON text of a value: equal values, equal keys."""
    return _encode(value).decode()


def value_of(key: str) -> Any:
    return msgspec.json.decode(key)


@register
class RecentValues(Aggregator):
    """The `size` most recent values by event time, newest first; with `distinct`,
    each value once (at its most recent occurrence). State: ascending
    [[ts, messageId, key], ...], at most `size` long.

    Trimming keeps the result exact: a value dropped from the state is older than
    every value kept, so no later event can bring it back into the top `size` except
    by occurring again, which adds it anew."""

    function = "list"
    result_type = list_of(DYN)
    options = ("size", "distinct")

    def __init__(self, size: int = 10, distinct: bool = False) -> None:
        self.size = size
        self.distinct = distinct

    @property
    def shape(self) -> str:
        return f"list:{self.size}" + (":distinct" if self.distinct else "")

    def initial(self) -> State:
        return []

    def add(self, state: State, value: Any, *, ts: int, mid: str) -> State:
        return self._keep(state, [[ts, mid, value_key(value)]])

    def merge(self, a: State, b: State) -> State:
        return self._keep(list(a), b)

    def _keep(self, state: list[list[Any]], entries: list[list[Any]]) -> list[list[Any]]:
        for entry in entries:
            if self.distinct:
                existing = next((e for e in state if e[2] == entry[2]), None)
                if existing is not None:
                    if (entry[0], entry[1]) <= (existing[0], existing[1]):
                        continue
                    state.remove(existing)
            bisect.insort(state, entry)
        del state[: max(0, len(state) - self.size)]
        return state

    def result(self, state: State) -> list[Any]:
        return [value_of(key) for _, _, key in reversed(state)]


@register
class UniqueCount(Aggregator):
    """Number of distinct values; with `max_values`, at most that (see the module's
    docstring). State: the sorted distinct keys, at most `max_values + 1` of them."""

    function = "unique_count"
    result_type = INT
    options = ("max_values",)

    def __init__(self, max_values: int | None = None) -> None:
        self.max_values = max_values
        self._kept = None if max_values is None else max_values + 1

    @property
    def shape(self) -> str:
        return _capped(self.function, self.max_values)

    def initial(self) -> State:
        return []

    def add(self, state: State, value: Any, *, ts: int, mid: str) -> State:
        key = value_key(value)
        at = bisect.bisect_left(state, key)
        if at == len(state) or state[at] != key:
            kept = self._kept
            if kept is None:
                state.insert(at, key)
            elif at < kept:  # else it sorts after every kept key: forgotten
                state.insert(at, key)
                del state[kept:]
        return state

    def merge(self, a: State, b: State) -> State:
        return sorted(set(a) | set(b))[: self._kept]

    def result(self, state: State) -> int:
        if self.max_values is None:
            return len(state)
        return min(len(state), self.max_values)


@register
class MostFrequent(Aggregator):
    """The value seen most often; ties go to the value seen most recently (event
    time, then messageId), then to the smaller key. With `max_values`, only the
    values whose keys sort first are counted (see the module's docstring).
    State: {key: [count, ts, mid]}, at most `max_values + 1` keys."""

    function = "most_frequent"
    options = ("max_values",)

    def __init__(self, max_values: int | None = None) -> None:
        self.max_values = max_values
        self._kept = None if max_values is None else max_values + 1

    @property
    def shape(self) -> str:
        return _capped(self.function, self.max_values)

    def initial(self) -> State:
        return {}

    def add(self, state: State, value: Any, *, ts: int, mid: str) -> State:
        key = value_key(value)
        kept = self._kept
        if kept is not None and len(state) >= kept and key not in state:
            last = max(state)
            if key > last:
                return state  # sorts after every kept key: forgotten
            del state[last]
        _tally(state, key, count=1, ts=ts, mid=mid)
        return state

    def merge(self, a: State, b: State) -> State:
        merged = {key: list(seen) for key, seen in a.items()}
        for key, (count, ts, mid) in b.items():
            _tally(merged, key, count=count, ts=ts, mid=mid)
        if self._kept is not None and len(merged) > self._kept:
            merged = {key: merged[key] for key in sorted(merged)[: self._kept]}
        return merged

    def result(self, state: State) -> Any:
        counted = state
        if self.max_values is not None and len(state) > self.max_values:
            counted = dict(state)
            del counted[max(counted)]  # past the cap: kept only to know it overflowed
        if not counted:
            return None
        top = max((count, ts, mid) for count, ts, mid in counted.values())
        best = min(key for key, (count, ts, mid) in counted.items() if (count, ts, mid) == top)
        return value_of(best)


def _capped(function: str, max_values: int | None) -> str:
    """A capped state's shape names its cap: which values it keeps depends on it."""
    return function if max_values is None else f"{function}:{max_values}"


def _tally(state: dict[str, list[Any]], key: str, *, count: int, ts: int, mid: str) -> None:
    """Count `count` more occurrences of `key`, the latest of them at (ts, mid)."""
    seen = state.get(key)
    if seen is None:
        state[key] = [count, ts, mid]
        return
    seen[0] += count
    if (ts, mid) > (seen[1], seen[2]):
        seen[1], seen[2] = ts, mid
