"""CEL's standard overloads for the operators and functions this subset supports.

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
from dataclasses import dataclass, field
from typing import Any

from attributes.expressions import arithmetic, conversions
from attributes.expressions.compiled import Activation, Compiled, Evaluator, apply
from attributes.expressions.types import BOOL, DOUBLE, DYN, INT, STRING, CelType, list_of
from attributes.expressions.values import PYTHON_TYPES, no_overload

Function = Callable[..., Any]


@dataclass(frozen=True)
class Overload:
    kinds: tuple[str, ...]
    result: CelType
    function: Function


@dataclass(frozen=True)
class OverloadSet:
    symbol: str
    overloads: tuple[Overload, ...]
    _by_python_types: dict[tuple[type, ...], Function] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_python_types = {
            tuple(PYTHON_TYPES[kind] for kind in overload.kinds): overload.function
            for overload in self.overloads
        }
        object.__setattr__(self, "_by_python_types", by_python_types)

    @property
    def arity(self) -> int:
        return len(self.overloads[0].kinds)

    def apply(self, operands: Sequence[Compiled]) -> Compiled | None:
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
            return apply(result_type, self._dispatch, *operands)
        return Compiled(result_type, self._dispatching(operands))

    def _dispatch(self, *values: Any) -> Any:
        """Applies the overload the values' types select: for folding constants."""
        function = self._by_python_types.get(tuple(map(type, values)))
        if function is None:
            raise no_overload(self.symbol, *values)
        return function(*values)

    def _dispatching(self, operands: Sequence[Compiled]) -> Evaluator:
        """A closure choosing the overload per evaluation, by the operands' Python types."""
        if len(operands) == 1:
            return self._dispatching_one(operands[0].evaluate)
        first, second = operands
        if second.is_scalar_constant:
            return self._dispatching_with_constant(
                first.evaluate, second.constant, constant_first=False
            )
        if first.is_scalar_constant:
            return self._dispatching_with_constant(
                second.evaluate, first.constant, constant_first=True
            )
        return self._dispatching_two(first.evaluate, second.evaluate)

    def _dispatching_one(self, operand: Evaluator) -> Evaluator:
        by_type, symbol = {types[0]: f for types, f in self._by_python_types.items()}, self.symbol

        def evaluate(activation: Activation) -> Any:
            value = operand(activation)
            function = by_type.get(type(value))
            if function is None:
                raise no_overload(symbol, value)
            return function(value)

        return evaluate

    def _dispatching_two(self, first: Evaluator, second: Evaluator) -> Evaluator:
        by_types, symbol = self._by_python_types, self.symbol

        def evaluate(activation: Activation) -> Any:
            left, right = first(activation), second(activation)
            function = by_types.get((type(left), type(right)))
            if function is None:
                raise no_overload(symbol, left, right)
            return function(left, right)

        return evaluate

    def _dispatching_with_constant(
        self, operand: Evaluator, value: Any, *, constant_first: bool
    ) -> Evaluator:
        """Dispatch on one operand's type only: the constant's is known (`revenue > 100.0`)."""
        position = 0 if constant_first else 1
        by_type = {
            types[1 - position]: function
            for types, function in self._by_python_types.items()
            if types[position] is type(value)
        }
        symbol = self.symbol

        if constant_first:

            def evaluate_right(activation: Activation) -> Any:
                right = operand(activation)
                function = by_type.get(type(right))
                if function is None:
                    raise no_overload(symbol, value, right)
                return function(value, right)

            return evaluate_right

        def evaluate_left(activation: Activation) -> Any:
            left = operand(activation)
            function = by_type.get(type(left))
            if function is None:
                raise no_overload(symbol, left, value)
            return function(left, value)

        return evaluate_left


def _result_type(fitting: list[Overload], types: Sequence[CelType]) -> CelType:
    results = {overload.result for overload in fitting}
    if len(results) > 1:
        return DYN
    (result,) = results
    if len(set(types)) == 1 and types[0].name == result.name:
        return types[0]  # list(int) + list(int) is a list(int), not just a list(dyn)
    return result


def _overloads(symbol: str, *overloads: tuple[str, CelType, Function]) -> OverloadSet:
    """An overload set from (argument kinds separated by spaces, result, function)."""
    return OverloadSet(
        symbol, tuple(Overload(tuple(kinds.split()), r, f) for kinds, r, f in overloads)
    )


def _identity(value: Any) -> Any:
    return value


def _ordering(symbol: str, compare: Function) -> OverloadSet:
    """`<` and friends: on numbers across int and double, strings, and bools."""
    kinds = ("int int", "int double", "double int", "double double", "string string", "bool bool")
    return _overloads(symbol, *((pair, BOOL, compare) for pair in kinds))


ARITHMETIC = {
    "+": _overloads(
        "+",
        ("int int", INT, arithmetic.add_int),
        ("double double", DOUBLE, operator.add),
        ("string string", STRING, operator.add),
        ("list list", list_of(DYN), operator.add),
    ),
    "-": _overloads(
        "-", ("int int", INT, arithmetic.subtract_int), ("double double", DOUBLE, operator.sub)
    ),
    "*": _overloads(
        "*", ("int int", INT, arithmetic.multiply_int), ("double double", DOUBLE, operator.mul)
    ),
    "/": _overloads(
        "/",
        ("int int", INT, arithmetic.divide_int),
        ("double double", DOUBLE, arithmetic.divide_double),
    ),
    "%": _overloads("%", ("int int", INT, arithmetic.modulo_int)),
}

ORDERING = {
    "<": _ordering("<", operator.lt),
    "<=": _ordering("<=", operator.le),
    ">": _ordering(">", operator.gt),
    ">=": _ordering(">=", operator.ge),
}

UNARY = {
    "-": _overloads("-", ("int", INT, arithmetic.negate_int), ("double", DOUBLE, operator.neg)),
    "!": _overloads("!", ("bool", BOOL, operator.not_)),
}

FUNCTIONS = {
    "size": _overloads("size", ("string", INT, len), ("list", INT, len), ("map", INT, len)),
    "int": _overloads(
        "int",
        ("int", INT, _identity),
        ("double", INT, conversions.double_to_int),
        ("string", INT, conversions.string_to_int),
    ),
    "double": _overloads(
        "double",
        ("int", DOUBLE, float),
        ("double", DOUBLE, _identity),
        ("string", DOUBLE, conversions.string_to_double),
    ),
    "string": _overloads(
        "string",
        ("string", STRING, _identity),
        ("int", STRING, str),
        ("double", STRING, conversions.double_to_string),
        ("bool", STRING, conversions.bool_to_string),
    ),
    "bool": _overloads(
        "bool", ("bool", BOOL, _identity), ("string", BOOL, conversions.string_to_bool)
    ),
    "contains": _overloads("contains", ("string string", BOOL, operator.contains)),
    "startsWith": _overloads("startsWith", ("string string", BOOL, str.startswith)),
    "endsWith": _overloads("endsWith", ("string string", BOOL, str.endswith)),
}
