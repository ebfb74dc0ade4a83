"""Aggregators: how one computed attribute folds events into a small, mergeable state.

An aggregator is stateless; its *state* is a plain value (int, float, list, None)
that serialises without ceremony and lives inside the profile state. Every
aggregator offers `merge(a, b)`, so two profiles can be merged (identity stitching)
and time buckets combined, and the result never depends on the order events
arrived in: streaming over any interleaving equals a batch recomputation.

Order-independence is why `sum` keeps exact partial sums (Shewchuk's algorithm, the
one behind `math.fsum`) instead of one float, and why `most_recent` breaks
timestamp ties by messageId instead of by arrival.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

State = Any
"""An aggregator state: only JSON/msgpack-native values (None, int, float, str, list)."""


class Rejected(ValueError):
    """A value this aggregator cannot take (e.g. a string to sum); the event is
    skipped for this attribute only, and the reason is reported."""


def _number(value: Any) -> int | float:
    # bool is an int subclass in Python; True is not a revenue figure.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected(f"expected a number, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise Rejected(f"expected a finite number, got {value!r}")
    return value


class Aggregator(ABC):
    """Folds values into a state. `value` is what the attribute's field holds in the
    event (None for field-less functions); `ts` is event time in epoch ms; `mid` is
    the event's messageId, the deterministic tie-break."""

    function: ClassVar[str]
    needs_field: ClassVar[bool] = True

    @abstractmethod
    def initial(self) -> State: ...

    @abstractmethod
    def add(self, state: State, value: Any, ts: int, mid: str) -> State: ...

    @abstractmethod
    def merge(self, a: State, b: State) -> State: ...

    @abstractmethod
    def result(self, state: State) -> Any: ...


def _add_partial(partials: list[float], x: float) -> None:
    """Add x to a list of non-overlapping partial sums, exactly (Shewchuk)."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


_INT64 = 2**63


def _spill_int(state: State) -> State:
    """Keep the integer part storable in 64 bits: past that, it joins the float partials."""
    if not -_INT64 <= state[0] < _INT64:
        _add_partial(state[1], float(state[0]))
        state[0] = 0
    return state


class Sum(Aggregator):
    """Exact sum. State: [int_total, [float partials]]; ints stay exact ints (up to 64
    bits) and floats are summed without rounding error until `result`."""

    function = "sum"

    def initial(self) -> State:
        return [0, []]

    def add(self, state: State, value: Any, ts: int, mid: str) -> State:
        number = _number(value)
        if isinstance(number, int):
            state[0] += number
            return _spill_int(state)
        _add_partial(state[1], number)
        return state

    def merge(self, a: State, b: State) -> State:
        merged = [a[0] + b[0], list(a[1])]
        for partial in b[1]:
            _add_partial(merged[1], partial)
        return _spill_int(merged)

    def result(self, state: State) -> int | float:
        total, partials = state
        if not partials:
            return int(total)
        return math.fsum([*partials, total])


class Count(Aggregator):
    """Number of matching events (with a field: those where the field is present)."""

    function = "count"
    needs_field = False

    def initial(self) -> State:
        return 0

    def add(self, state: State, value: Any, ts: int, mid: str) -> State:
        return state + 1

    def merge(self, a: State, b: State) -> State:
        return a + b

    def result(self, state: State) -> int:
        return int(state)


class Min(Aggregator):
    function = "min"

    def initial(self) -> State:
        return None

    def add(self, state: State, value: Any, ts: int, mid: str) -> State:
        number = _number(value)
        return number if state is None or number < state else state

    def merge(self, a: State, b: State) -> State:
        if a is None or b is None:
            return b if a is None else a
        return min(a, b)

    def result(self, state: State) -> Any:
        return state


class Max(Aggregator):
    function = "max"

    def initial(self) -> State:
        return None

    def add(self, state: State, value: Any, ts: int, mid: str) -> State:
        number = _number(value)
        return number if state is None or number > state else state

    def merge(self, a: State, b: State) -> State:
        if a is None or b is None:
            return b if a is None else a
        return max(a, b)

    def result(self, state: State) -> Any:
        return state


class MostRecent(Aggregator):
    """The value of the latest event by event time. State: [ts, messageId, value];
    equal timestamps are ordered by messageId so every interleaving agrees."""

    function = "most_recent"

    def initial(self) -> State:
        return None

    def add(self, state: State, value: Any, ts: int, mid: str) -> State:
        if state is None or (ts, mid) >= (state[0], state[1]):
            return [ts, mid, value]
        return state

    def merge(self, a: State, b: State) -> State:
        if a is None or b is None:
            return b if a is None else a
        return b if (b[0], b[1]) >= (a[0], a[1]) else a

    def result(self, state: State) -> Any:
        return None if state is None else state[2]


AGGREGATORS: dict[str, Aggregator] = {
    aggregator.function: aggregator for aggregator in (Sum(), Count(), Min(), Max(), MostRecent())
}
