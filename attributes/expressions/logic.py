"""Compiles `&&`, `||` and `?:`, the operators that decide which operands matter.

CEL's `&&` and `||` are commutative: `false && <error>` and `<error> && false` are
both false, `true || <error>` and `<error> || true` both true. So the left operand
is evaluated first and the right one is skipped when the left decides, as usual;
but an error (or a non-bool) on the left is held back until the right operand has
had its chance to decide the result.
"""

from __future__ import annotations

from typing import Any

from attributes.expressions.compiled import Activation, Compiled, Evaluator, Scope, constant
from attributes.expressions.errors import EvaluationError
from attributes.expressions.nodes import Binary, Conditional
from attributes.expressions.types import BOOL, join
from attributes.expressions.values import no_overload


def compile_logical(node: Binary, left: Compiled, right: Compiled, scope: Scope) -> Compiled:
    """`left && right` or `left || right`."""
    for operand in (left, right):
        if operand.type != BOOL and not operand.type.is_dyn:
            message = f"'{node.operator}' needs bool operands, got {left.type} and {right.type}"
            raise scope.error(message, node.offset)
    decisive = node.operator == "||"  # the operand value that decides the result alone
    if left.constant is decisive or right.constant is decisive:
        return constant(decisive, BOOL)
    if left.constant is (not decisive) and right.type == BOOL:
        return right
    if right.constant is (not decisive) and left.type == BOOL:
        return left
    logical = _or if decisive else _and
    return Compiled(BOOL, logical(left.evaluate, right.evaluate))


def _and(left: Evaluator, right: Evaluator) -> Evaluator:
    def evaluate(activation: Activation) -> bool:
        try:
            first = left(activation)
        except EvaluationError:
            if right(activation) is False:
                return False
            raise
        if first is False:
            return False
        second = right(activation)
        if second is False:
            return False
        if first is True and second is True:
            return True
        raise no_overload("&&", first, second)

    return evaluate


def _or(left: Evaluator, right: Evaluator) -> Evaluator:
    def evaluate(activation: Activation) -> bool:
        try:
            first = left(activation)
        except EvaluationError:
            if right(activation) is True:
                return True
            raise
        if first is True:
            return True
        second = right(activation)
        if second is True:
            return True
        if first is False and second is False:
            return False
        raise no_overload("||", first, second)

    return evaluate


def compile_conditional(
    node: Conditional, condition: Compiled, if_true: Compiled, if_false: Compiled, scope: Scope
) -> Compiled:
    """`condition ? if_true : if_false`; only the chosen branch is evaluated."""
    if condition.type != BOOL and not condition.type.is_dyn:
        raise scope.error(f"'?:' needs a bool condition, got {condition.type}", node.offset)
    if condition.constant is True:
        return if_true
    if condition.constant is False:
        return if_false
    result_type = join(if_true.type, if_false.type)
    choose, when_true, when_false = condition.evaluate, if_true.evaluate, if_false.evaluate

    def evaluate(activation: Activation) -> Any:
        chosen = choose(activation)
        if chosen is True:
            return when_true(activation)
        if chosen is False:
            return when_false(activation)
        raise no_overload("?:", chosen)

    return Compiled(result_type, evaluate)
