"""Aggregators: how one computed attribute folds events into a small, mergeable state.

An aggregator is stateless; its *state* is a plain value (int, float, list, None)
that serialises without ceremony and lives inside the profile state. Every
aggregator offers `merge(a, b)`, so two profiles can be merged (identity stitching)
and time buckets combined, and the result never depends on the order events
arrived in: streaming over any interleaving equals a batch recomputation.

Order-independence is why `sum` keeps exact partial sums (Shewchuk's algorithm, the
one behind `math.fsum`) instead of one float, and why `most_recent` breaks
timestamp ties by messageId instead of by arrival.

Each function is one class, `@register`ed where it is defined: `FUNCTIONS` is what a
rule file may name (with `derived`, which reads attributes, not events), and the
class says everything the rest needs, read once as the rules load: its name, its
result's CEL type, whether it needs a field, the rule-file options it takes and the
shape of its state (part of the attribute's state key).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from fractions import Fraction
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from attributes.errors import DataError
from attributes.expressions.types import DOUBLE, DYN, INT, CelType

State = Any
"""An aggregator state: only JSON/msgpack-native values (None, int, float, str, list)."""


class Rejected(DataError):
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
    the event's messageId, the deterministic tie-break.

    A subclass that rule files may name is `@register`ed; it declares its `function`
    and, where the defaults do not fit, the class attributes below. Its constructor
    takes its `options` as keyword arguments, each with a default."""

    #: its name in rule files (`function: sum`)
    function: ClassVar[str]
    #: the CEL type of its result in derived expressions (`dyn` when it can be null)
    result_type: ClassVar[CelType] = DYN
    #: whether derived expressions see its non-null result as a double (an int becomes
    #: a float: `sum` of ints, `min` and `max` of ints)
    as_double: ClassVar[bool] = False
    #: whether it reads a field; without one, it counts events
    needs_field: ClassVar[bool] = True
    #: the rule-file options it takes (of OPTIONS), given to its constructor as
    #: keyword arguments when the rule sets them
    options: ClassVar[tuple[str, ...]] = ()

    @property
    def shape(self) -> str:
        """What the form of its states depends on: the function, and the options that
        change what a state holds (`list:5:distinct`, `unique_count:100`). The state
        key includes it, so a change of shape starts the attribute afresh."""
        return self.function

    @abstractmethod
    def initial(self) -> State: ...

    @abstractmethod
    def add(self, state: State, value: Any, *, ts: int, mid: str) -> State: ...

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


_REGISTERED: dict[str, type[Aggregator]] = {}
#: function name -> its aggregator class, every `@register`ed one (read-only): those
#: below, `attributes.multisets`' (which `attributes.specs`, the rule-file format,
#: imports), and any registered since
FUNCTIONS: Mapping[str, type[Aggregator]] = MappingProxyType(_REGISTERED)
#: not an aggregator: a derived attribute reads other attributes (`attributes.derived`)
DERIVED = "derived"
#: the rule-file keys an aggregator may take as `options`: `AttributeSpec` fields,
#: whose bounds are checked there (a new one is a new field there too)
OPTIONS = ("size", "distinct", "max_values")
_FUNCTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

_Class = TypeVar("_Class", bound=type[Aggregator])


def register(cls: _Class) -> _Class:
    """Make an aggregator class a function rule files may name (a class decorator)."""
    name = cls.__dict__.get("function")
    if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
        raise TypeError(
            f"{cls.__qualname__} needs its own `function`: a name of lower-case letters, "
            f"digits and '_', got {name!r}"
        )
    if name == DERIVED or name in _REGISTERED:
        taken = "reserved" if name == DERIVED else f"{_REGISTERED[name].__qualname__}'s"
        raise ValueError(f"function {name!r} is already {taken}")
    if unknown := [option for option in cls.options if option not in OPTIONS]:
        raise TypeError(f"{cls.__qualname__} takes options rule files lack: {unknown}")
    if cls.__abstractmethods__:
        raise TypeError(f"{cls.__qualname__} is abstract: {sorted(cls.__abstractmethods__)}")
    _REGISTERED[name] = cls
    return cls


def unregister(function: str) -> None:
    """Forget a registered function (for tests that register their own)."""
    del _REGISTERED[function]


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


@register
class Sum(Aggregator):
    """Exact sum. State: [int_total, [float partials]]; ints stay exact ints (stored as
    text past 64 bits) and floats are summed without rounding error until `result`."""

    function = "sum"
    result_type = DOUBLE
    as_double = True

    def initial(self) -> State:
        return [0, []]

    def add(self, state: State, value: Any, *, ts: int, mid: str) -> State:
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
    """The total as a number; past a double's range, an infinity or NaN (served as
    null), never an exception: a render that raised would dead-letter every later
    event of the profile, and stop its windows' expiry."""
    if not partials:
        return total
    # float(total) alone rounds past 2**53; its exact remainder joins the fsum
    high = float(total)
    try:
        return math.fsum([*partials, high, float(total - int(high))])
    except OverflowError:  # exact, but beyond a double: the infinity of its sign
        exact = sum(map(Fraction, partials), Fraction(total))
        return math.inf if exact > 0 else -math.inf
    except ValueError:  # partials overflowed as they were added (inf and -inf)
        return math.nan


@register
class Count(Aggregator):
    """Number of matching events (with a field: those where the field is present)."""

    function = "count"
    result_type = INT
    needs_field = False

    def initial(self) -> State:
        return 0

    def add(self, state: State, value: Any, *, ts: int, mid: str) -> State:
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


@register
class Min(Aggregator):
    function = "min"
    as_double = True

    def initial(self) -> State:
        return None

    def add(self, state: State, value: Any, *, ts: int, mid: str) -> State:
        return self.merge(state, _number(value))

    def merge(self, a: State, b: State) -> State:
        if a is None or b is None:
            return b if a is None else a
        if a == b:
            return b if _tie_key(b) < _tie_key(a) else a
        return b if b < a else a

    def result(self, state: State) -> Any:
        return state


@register
class Max(Aggregator):
    function = "max"
    as_double = True

    def initial(self) -> State:
        return None

    def add(self, state: State, value: Any, *, ts: int, mid: str) -> State:
        return self.merge(state, _number(value))

    def merge(self, a: State, b: State) -> State:
        if a is None or b is None:
            return b if a is None else a
        if a == b:
            return b if _tie_key(b) > _tie_key(a) else a
        return b if b > a else a

    def result(self, state: State) -> Any:
        return state


@register
class MostRecent(Aggregator):
    """The value of the latest event by event time. State: [ts, messageId, value];
    equal timestamps are ordered by messageId so every interleaving agrees."""

    function = "most_recent"

    def initial(self) -> State:
        return None

    def add(self, state: State, value: Any, *, ts: int, mid: str) -> State:
        if state is None or (ts, mid) >= (state[0], state[1]):
            return [ts, mid, value]
        return state

    def merge(self, a: State, b: State) -> State:
        if a is None or b is None:
            return b if a is None else a
        return b if (b[0], b[1]) >= (a[0], a[1]) else a

    def result(self, state: State) -> Any:
        return None if state is None else state[2]


@register
class First(Aggregator):
    """The value of the earliest event by event time. State: [ts, messageId, value];
    equal timestamps are ordered by messageId (the smallest wins)."""

    function = "first"

    def initial(self) -> State:
        return None

    def add(self, state: State, value: Any, *, ts: int, mid: str) -> State:
        if state is None or (ts, mid) < (state[0], state[1]):
            return [ts, mid, value]
        return state

    def merge(self, a: State, b: State) -> State:
        if a is None or b is None:
            return b if a is None else a
        return b if (b[0], b[1]) < (a[0], a[1]) else a

    def result(self, state: State) -> Any:
        return None if state is None else state[2]


@register
class Avg(Aggregator):
    """Mean of the field. State: [exact sum state, count]: the mean of the exact sum,
    so it too is the same whatever order the events came in."""

    function = "avg"
    as_double = True
    _sum = Sum()

    def initial(self) -> State:
        return [self._sum.initial(), 0]

    def add(self, state: State, value: Any, *, ts: int, mid: str) -> State:
        state[0] = self._sum.add(state[0], value, ts=ts, mid=mid)  # raises Rejected first
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
