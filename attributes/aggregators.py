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

    #: the skip's category in metrics
    kind = "wrong_type"


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

    def result_of(self, states: list[State]) -> Any:
        """The result of the states merged (a window's buckets); the inputs are left
        alone. Aggregators with a cheaper way than pairwise merges override it."""
        if not states:
            return self.result(self.initial())
        total = states[0]
        for state in states[1:]:
            total = self.merge(total, state)
        return self.result(total)


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


def _int_total(stored: int | str) -> int:
    return stored if isinstance(stored, int) else int(stored)


def _storable(total: int) -> int | str:
    """States are msgpack (64-bit ints at most): a larger exact total is kept as text."""
    return total if -_INT64 <= total < _INT64 else str(total)


class Sum(Aggregator):
    """Exact sum. State: [int_total, [float partials]]; ints stay exact ints (stored as
    text past 64 bits) and floats are summed without rounding error until `result`."""

    function = "sum"

    def initial(self) -> State:
        return [0, []]

    def add(self, state: State, value: Any, ts: int, mid: str) -> State:
        number = _number(value)
        if isinstance(number, int):
            state[0] = _storable(_int_total(state[0]) + number)
        else:
            _add_partial(state[1], number)
        return state

    def merge(self, a: State, b: State) -> State:
        merged: State = [_storable(_int_total(a[0]) + _int_total(b[0])), list(a[1])]
        for partial in b[1]:
            _add_partial(merged[1], partial)
        return merged

    def result(self, state: State) -> int | float:
        return _exact_total(_int_total(state[0]), state[1])

    def result_of(self, states: list[State]) -> int | float:
        # fsum is exact over any number of partials: no need to merge them first
        total = sum(_int_total(state[0]) for state in states)
        return _exact_total(total, [partial for state in states for partial in state[1]])


def _exact_total(total: int, partials: list[float]) -> int | float:
    if not partials:
        return total
    # float(total) alone rounds past 2**53; its exact remainder joins the fsum
    high = float(total)
    return math.fsum([*partials, high, float(total - int(high))])


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

    def result_of(self, states: list[State]) -> int:
        return int(sum(states))


def _tie_key(number: int | float) -> tuple[bool, float]:
    """Orders numbers that compare equal (10 and 10.0, 0.0 and -0.0), so min and max
    keep the same one whatever order they arrived in."""
    return isinstance(number, float), math.copysign(1, number)


class Min(Aggregator):
    function = "min"

    def initial(self) -> State:
        return None

    def add(self, state: State, value: Any, ts: int, mid: str) -> State:
        return self.merge(state, _number(value))

    def merge(self, a: State, b: State) -> State:
        if a is None or b is None:
            return b if a is None else a
        if a == b:
            return b if _tie_key(b) < _tie_key(a) else a
        return b if b < a else a

    def result(self, state: State) -> Any:
        return state


class Max(Aggregator):
    function = "max"

    def initial(self) -> State:
        return None

    def add(self, state: State, value: Any, ts: int, mid: str) -> State:
        return self.merge(state, _number(value))

    def merge(self, a: State, b: State) -> State:
        if a is None or b is None:
            return b if a is None else a
        if a == b:
            return b if _tie_key(b) > _tie_key(a) else a
        return b if b > a else a

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


class First(Aggregator):
    """The value of the earliest event by event time. State: [ts, messageId, value];
    equal timestamps are ordered by messageId (the smallest wins)."""

    function = "first"

    def initial(self) -> State:
        return None

    def add(self, state: State, value: Any, ts: int, mid: str) -> State:
        if state is None or (ts, mid) < (state[0], state[1]):
            return [ts, mid, value]
        return state

    def merge(self, a: State, b: State) -> State:
        if a is None or b is None:
            return b if a is None else a
        return b if (b[0], b[1]) < (a[0], a[1]) else a

    def result(self, state: State) -> Any:
        return None if state is None else state[2]


class Avg(Aggregator):
    """Mean of the field. State: [exact sum state, count]: the mean of the exact sum,
    so it too is the same whatever order the events came in."""

    function = "avg"
    _sum = Sum()

    def initial(self) -> State:
        return [self._sum.initial(), 0]

    def add(self, state: State, value: Any, ts: int, mid: str) -> State:
        state[0] = self._sum.add(state[0], value, ts, mid)  # raises Rejected first
        state[1] += 1
        return state

    def merge(self, a: State, b: State) -> State:
        return [self._sum.merge(a[0], b[0]), a[1] + b[1]]

    def result(self, state: State) -> float | None:
        total, count = state
        return self._sum.result(total) / count if count else None

    def result_of(self, states: list[State]) -> float | None:
        count = sum(state[1] for state in states)
        return self._sum.result_of([state[0] for state in states]) / count if count else None
