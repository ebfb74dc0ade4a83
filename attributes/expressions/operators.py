"""Compiles CEL's unary and binary operators, except the logical ones (see logic.py).

Each operator picks the cheapest correct implementation its operands' static types
allow: Python's own operator when both types are known and Python agrees with CEL
(`event == "Order Completed"` is a plain string comparison), CEL's rules from
values.py or a run-time dispatcher when an operand is `dyn`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from attributes.expressions.compiled import Compiled, Scope, apply
from attributes.expressions.nodes import Binary, Unary
from attributes.expressions.overloads import ARITHMETIC, ORDERING, UNARY, OverloadSet
from attributes.expressions.types import BOOL, NULL, STRING, CelType, comparable
from attributes.expressions.values import in_container, in_list, in_map, values_differ, values_equal


def compile_unary(node: Unary, operand: Compiled, scope: Scope) -> Compiled:
    return _overloaded(UNARY[node.operator], node.offset, scope, operand)


def compile_binary(node: Binary, left: Compiled, right: Compiled, scope: Scope) -> Compiled:
    symbol = node.operator
    if symbol in ("==", "!="):
        return _equality(node, left, right, scope)
    if symbol == "in":
        return _membership(node, left, right, scope)
    overloads = ARITHMETIC.get(symbol) or ORDERING[symbol]
    return _overloaded(overloads, node.offset, scope, left, right)


def no_matching_overload(symbol: str, types: tuple[CelType, ...]) -> str:
    return f"no matching overload for '{symbol}' on {' and '.join(map(str, types))}"


def _overloaded(overloads: OverloadSet, offset: int, scope: Scope, *operands: Compiled) -> Compiled:
    compiled = overloads.compile(operands)
    if compiled is None:
        types = tuple(operand.type for operand in operands)
        raise scope.error(no_matching_overload(overloads.symbol, types), offset)
    return compiled


def _equality(node: Binary, left: Compiled, right: Compiled, scope: Scope) -> Compiled:
    if not comparable(left.type, right.type):
        raise scope.error(no_matching_overload(node.operator, (left.type, right.type)), node.offset)
    equal = node.operator == "=="
    if _python_equality_is_cel(left.type, right.type):
        return apply(BOOL, operator.eq if equal else operator.ne, left, right)
    return apply(BOOL, values_equal if equal else values_differ, left, right)


def _python_equality_is_cel(first: CelType, second: CelType) -> bool:
    """Whether Python's `==` gives CEL's answer for values of these static types.

    A string or null equals only a string or null, in both languages. Python's `==`
    goes wrong only where a bool meets a number (`1 == True`) and, inside lists, on
    NaN, so it is used when both sides are numbers or both are bools.
    """
    if first in (STRING, NULL) or second in (STRING, NULL):
        return True
    return (first.is_numeric and second.is_numeric) or first == second == BOOL


def _membership(node: Binary, needle: Compiled, container: Compiled, scope: Scope) -> Compiled:
    kind = container.type.name
    if kind not in ("list", "map", "dyn") or not comparable(needle.type, container.type.element):
        types = (needle.type, container.type)
        raise scope.error(no_matching_overload("in", types), node.offset)
    if kind == "list" and container.is_constant and _all_strings(container.constant):
        members = frozenset(container.constant)

        def is_member(value: Any) -> bool:
            return type(value) is str and value in members

        return apply(BOOL, is_member, needle)
    memberships: dict[str, Callable[[Any, Any], bool]] = {
        "list": in_list,
        "map": in_map,
        "dyn": in_container,
    }
    return apply(BOOL, memberships[kind], needle, container)


def _all_strings(values: list[Any]) -> bool:
    return all(type(value) is str for value in values)
