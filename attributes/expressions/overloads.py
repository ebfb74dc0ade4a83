"""CEL's standard overloads for the operators and functions this subset supports
(those on timestamps and durations are implemented in `times.py`).

An overload set maps the kinds of the arguments to the Python function that
implements the operation. The same table serves the checker (is there any overload
these static types could select? what does it return?) and evaluation: with static
types the function is chosen at compile time; with a `dyn` argument a dispatcher
chooses it per call from the values' Python types, and refuses what has none
(`"a" + 1`, `true + 1`: a bool is not a number in CEL).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from attributes.expressions import arithmetic, conversions, times
from attributes.expressions.compiled import Activation, Compiled, Evaluator, apply
from attributes.expressions.types import (
    BOOL,
    DOUBLE,
    DURATION,
    DYN,
    INT,
    STRING,
    TIMESTAMP,
    CelType,
    list_of,
)
from attributes.expressions.values import PYTHON_TYPES, no_overload

Function = Callable[..., Any]


@dataclass(frozen=True)
class Overload:
    kinds: tuple[str, ...]
    result: CelType
    function: Function


class OverloadSet:
    """The overloads of one operator or function, from (argument kinds, result, function)."""

    def __init__(self, symbol: str, *overloads: tuple[str, CelType, Function]) -> None:
        self.symbol = symbol
        self.overloads = tuple(
            Overload(tuple(kinds.split()), result, function)
            for kinds, result, function in overloads
        )
        self.arity = len(self.overloads[0].kinds)
        self.by_python_types: dict[tuple[type, ...], Function] = {
            tuple(PYTHON_TYPES[kind] for kind in overload.kinds): overload.function
            for overload in self.overloads
        }

    def compile(self, operands: Sequence[Compiled]) -> Compiled | None:
        """The operation on these operands, or None when no overload fits their static types."""
        types = [operand.type for operand in operands]
        fitting = [
            overload
            for overload in self.overloads
            if all(
                t.is_dyn or t.name == kind for t, kind in zip(types, overload.kinds, strict=True)
            )
        ]
        if not fitting:
            return None
        result_type = _result_type(fitting, types)
        if not any(t.is_dyn for t in types):
            (overload,) = fitting
            return apply(result_type, overload.function, *operands)
        if all(operand.is_scalar_constant for operand in operands):
            return apply(result_type, self.dispatch, *operands)
        return Compiled(result_type, _dispatching(self, operands))

    def dispatch(self, *values: Any) -> Any:
        """The operation on these values, by the overload their Python types select."""
        function = self.by_python_types.get(tuple(map(type, values)))
        if function is None:
            raise no_overload(self.symbol, *values)
        return function(*values)


def _result_type(fitting: list[Overload], types: Sequence[CelType]) -> CelType:
    results = {overload.result for overload in fitting}
    if len(results) > 1:
        return DYN
    (result,) = results
    if len(set(types)) == 1 and types[0].name == result.name:
        return types[0]  # list(int) + list(int) is a list(int), not just a list(dyn)
    return result


def _dispatching(overloads: OverloadSet, operands: Sequence[Compiled]) -> Evaluator:
    """A closure choosing the overload per evaluation, from the operands' Python types.

    The closure looks the function up and calls it itself, rather than calling
    `dispatch`, and a constant operand's type is looked up at compile time: on the
    hot path (`properties.revenue > 100.0`) that saves a call and a tuple per event.
    """
    symbol, table = overloads.symbol, overloads.by_python_types
    if len(operands) == 1:
        by_type = {types[0]: function for types, function in table.items()}
        return _dispatching_one(symbol, by_type, operands[0].evaluate)
    first, second = operands
    if second.is_scalar_constant:
        value = second.constant
        by_type = {types[0]: f for types, f in table.items() if types[1] is type(value)}
        return _dispatching_with_constant_second(symbol, by_type, first.evaluate, value)
    if first.is_scalar_constant:
        value = first.constant
        by_type = {types[1]: f for types, f in table.items() if types[0] is type(value)}
        return _dispatching_with_constant_first(symbol, by_type, value, second.evaluate)
    return _dispatching_two(symbol, table, first.evaluate, second.evaluate)


def _dispatching_one(symbol: str, by_type: dict[type, Function], operand: Evaluator) -> Evaluator:
    def evaluate(activation: Activation) -> Any:
        value = operand(activation)
        function = by_type.get(type(value))
        if function is None:
            raise no_overload(symbol, value)
        return function(value)

    return evaluate


def _dispatching_two(
    symbol: str, by_types: dict[tuple[type, ...], Function], first: Evaluator, second: Evaluator
) -> Evaluator:
    def evaluate(activation: Activation) -> Any:
        left, right = first(activation), second(activation)
        function = by_types.get((type(left), type(right)))
        if function is None:
            raise no_overload(symbol, left, right)
        return function(left, right)

    return evaluate


def _dispatching_with_constant_second(
    symbol: str, by_type: dict[type, Function], first: Evaluator, right: Any
) -> Evaluator:
    def evaluate(activation: Activation) -> Any:
        left = first(activation)
        function = by_type.get(type(left))
        if function is None:
            raise no_overload(symbol, left, right)
        return function(left, right)

    return evaluate


def _dispatching_with_constant_first(
    symbol: str, by_type: dict[type, Function], left: Any, second: Evaluator
) -> Evaluator:
    def evaluate(activation: Activation) -> Any:
        right = second(activation)
        function = by_type.get(type(right))
        if function is None:
            raise no_overload(symbol, left, right)
        return function(left, right)

    return evaluate


def _identity(value: Any) -> Any:
    return value


def _ordering(symbol: str, compare: Function) -> OverloadSet:
    """`<` and friends: on numbers across int and double, strings, bools, timestamps
    and durations."""
    with_doubles = arithmetic.ordering_of_doubles(compare)
    return OverloadSet(
        symbol,
        ("int int", BOOL, compare),
        ("int double", BOOL, with_doubles),
        ("double int", BOOL, with_doubles),
        ("double double", BOOL, with_doubles),
        ("string string", BOOL, compare),
        ("bool bool", BOOL, compare),
        ("timestamp timestamp", BOOL, compare),
        ("duration duration", BOOL, compare),
    )


ARITHMETIC = {
    "+": OverloadSet(
        "+",
        ("int int", INT, arithmetic.add_int),
        ("double double", DOUBLE, operator.add),
        ("string string", STRING, operator.add),
        ("list list", list_of(DYN), operator.add),
        ("timestamp duration", TIMESTAMP, times.add_timestamp_duration),
        ("duration timestamp", TIMESTAMP, times.add_duration_timestamp),
        ("duration duration", DURATION, times.add_durations),
    ),
    "-": OverloadSet(
        "-",
        ("int int", INT, arithmetic.subtract_int),
        ("double double", DOUBLE, operator.sub),
        ("timestamp timestamp", DURATION, times.subtract_timestamps),
        ("timestamp duration", TIMESTAMP, times.subtract_timestamp_duration),
        ("duration duration", DURATION, times.subtract_durations),
    ),
    "*": OverloadSet(
        "*", ("int int", INT, arithmetic.multiply_int), ("double double", DOUBLE, operator.mul)
    ),
    "/": OverloadSet(
        "/",
        ("int int", INT, arithmetic.divide_int),
        ("double double", DOUBLE, arithmetic.divide_double),
    ),
    "%": OverloadSet("%", ("int int", INT, arithmetic.modulo_int)),
}

ORDERING = {
    "<": _ordering("<", operator.lt),
    "<=": _ordering("<=", operator.le),
    ">": _ordering(">", operator.gt),
    ">=": _ordering(">=", operator.ge),
}

UNARY = {
    "-": OverloadSet("-", ("int", INT, arithmetic.negate_int), ("double", DOUBLE, operator.neg)),
    "!": OverloadSet("!", ("bool", BOOL, operator.not_)),
}

FUNCTIONS = {
    "size": OverloadSet("size", ("string", INT, len), ("list", INT, len), ("map", INT, len)),
    "int": OverloadSet(
        "int",
        ("int", INT, _identity),
        ("double", INT, conversions.double_to_int),
        ("string", INT, conversions.string_to_int),
        ("timestamp", INT, times.timestamp_to_int),
    ),
    "double": OverloadSet(
        "double",
        ("int", DOUBLE, float),
        ("double", DOUBLE, _identity),
        ("string", DOUBLE, conversions.string_to_double),
    ),
    "string": OverloadSet(
        "string",
        ("string", STRING, _identity),
        ("int", STRING, str),
        ("double", STRING, conversions.double_to_string),
        ("bool", STRING, conversions.bool_to_string),
        ("timestamp", STRING, times.timestamp_to_string),
        ("duration", STRING, times.duration_to_string),
    ),
    "bool": OverloadSet(
        "bool", ("bool", BOOL, _identity), ("string", BOOL, conversions.string_to_bool)
    ),
    "contains": OverloadSet("contains", ("string string", BOOL, operator.contains)),
    "startsWith": OverloadSet("startsWith", ("string string", BOOL, str.startswith)),
    "endsWith": OverloadSet("endsWith", ("string string", BOOL, str.endswith)),
    "timestamp": OverloadSet(
        "timestamp",
        ("string", TIMESTAMP, times.parse_timestamp),
        ("timestamp", TIMESTAMP, times.identity),
    ),
    "duration": OverloadSet(
        "duration",
        ("string", DURATION, times.parse_duration),
        ("duration", DURATION, times.identity),
    ),
}

#: the time accessors on a receiver alone (`t.getHours()`, `d.getHours()`) ...
TIME_ACCESSORS = {
    name: OverloadSet(
        name,
        ("timestamp", INT, read),
        *(
            (("duration", INT, times.DURATION_FIELDS[name]),)
            if name in times.DURATION_FIELDS
            else ()
        ),
    )
    for name, read in times.TIMESTAMP_FIELDS.items()
}
#: ... and with a time zone (`t.getHours("Europe/Paris")`, `t.getHours("+05:30")`)
TIME_ACCESSORS_IN_ZONE = {
    name: OverloadSet(name, ("timestamp string", INT, read))
    for name, read in times.TIMESTAMP_FIELDS.items()
}
