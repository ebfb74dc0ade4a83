"""The compiler's building blocks: compiled subexpressions, scopes, and `apply`.

Every subexpression compiles to a `Compiled`: its static type and a closure from the
activation (variable name -> value) to its value. Closures call their operands'
closures directly, so evaluation walks no tree and dispatches nothing that was
decided at compile time. `apply` is where most of the speed comes from: it folds
operations on constants at compile time and passes constant operands to the
operation's function directly instead of calling a closure for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from attributes.expressions.errors import EvaluationError, ExpressionError, describe_position
from attributes.expressions.types import CelType

Activation = Mapping[str, Any]
Evaluator = Callable[[Activation], Any]

NOT_CONSTANT: Any = object()
"""`Compiled.constant` of a subexpression whose value is known only at run time."""

_SCALARS = (bool, int, float, str, type(None), datetime, timedelta)  # all immutable


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled subexpression.

    `constant` is its value when known at compile time. Lists and maps are constant
    when all their items are; such a constant is for reading only (`in` turns a
    constant list into a set), and `evaluate` still builds a fresh list or map each
    time, so no caller can change what the next evaluation returns.
    """

    type: CelType
    evaluate: Evaluator
    constant: Any = NOT_CONSTANT

    @property
    def is_constant(self) -> bool:
        return self.constant is not NOT_CONSTANT

    @property
    def is_scalar_constant(self) -> bool:
        return type(self.constant) in _SCALARS


def constant(value: Any, value_type: CelType) -> Compiled:
    return Compiled(value_type, lambda _: value, value)


def apply(result_type: CelType, function: Callable[..., Any], *operands: Compiled) -> Compiled:
    """`function` of one or two operands' values, folded when all are scalar constants."""
    if all(operand.is_scalar_constant for operand in operands):
        try:
            value = function(*(operand.constant for operand in operands))
        except EvaluationError:
            pass  # raised at run time, where `&&` and `||` may absorb it
        else:
            if type(value) in _SCALARS:
                return constant(value, result_type)
    return Compiled(result_type, _call(function, operands))


def _call(function: Callable[..., Any], operands: tuple[Compiled, ...]) -> Evaluator:
    if len(operands) == 1:
        operand = operands[0].evaluate
        return lambda activation: function(operand(activation))
    first, second = operands
    if second.is_scalar_constant:
        evaluate_first, value = first.evaluate, second.constant
        return lambda activation: function(evaluate_first(activation), value)
    if first.is_scalar_constant:
        value, evaluate_second = first.constant, second.evaluate
        return lambda activation: function(value, evaluate_second(activation))
    evaluate_first, evaluate_second = first.evaluate, second.evaluate
    return lambda activation: function(evaluate_first(activation), evaluate_second(activation))


@dataclass(frozen=True)
class Scope:
    """What names mean where a subexpression is compiled, and where to report errors."""

    source: str
    variables: Mapping[str, CelType]
    macro_variables: Mapping[str, CelType] = field(default_factory=dict)
    reads: set[str] = field(default_factory=set)
    """The declared variables read so far; shared by all scopes of one expression."""

    def with_macro_variable(self, name: str, value_type: CelType) -> Scope:
        inner = {**self.macro_variables, name: value_type}
        return Scope(self.source, self.variables, inner, self.reads)

    def error(self, message: str, offset: int, hint: str = "") -> ExpressionError:
        """An error at `offset`; `hint`, if any, follows the position in parentheses."""
        suffix = f" ({hint})" if hint else ""
        return ExpressionError(f"{message} at {describe_position(self.source, offset)}{suffix}")
