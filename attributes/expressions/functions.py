"""Compiles calls of the standard functions: size, conversions, string tests, `dyn`,
timestamps, durations and their accessors (`times.py`).

Calls are resolved at compile time against the overload tables, so an unknown
function, a wrong argument count or `size(1)` fails when the rules load. A
`matches` pattern that is a literal is compiled once, and an invalid one (including
one RE2 does not support: backreferences, lookaround) is refused then; a pattern
known at run time only is compiled when met, and an invalid one is an evaluation
error for that event. Patterns run on RE2, as CEL specifies (`regex.py`: linear
time whatever the pattern and the text).
"""

from __future__ import annotations

from typing import Any

from attributes.expressions.compiled import Compiled, Scope, apply
from attributes.expressions.errors import EvaluationError
from attributes.expressions.nodes import Call
from attributes.expressions.operators import no_matching_overload
from attributes.expressions.overloads import FUNCTIONS, TIME_ACCESSORS, TIME_ACCESSORS_IN_ZONE
from attributes.expressions.regex import InvalidPattern, Pattern, cached_pattern
from attributes.expressions.times import parse_duration, parse_timestamp
from attributes.expressions.types import BOOL, DYN, STRING
from attributes.expressions.values import no_overload

_METHODS = frozenset({"size", "contains", "startsWith", "endsWith", "matches", *TIME_ACCESSORS})
_GLOBALS = frozenset(
    {"size", "int", "double", "string", "bool", "dyn", "matches", "timestamp", "duration"}
)
#: literal texts are checked when the rules load: `duration("3 days")` is refused then
_PARSERS = {"timestamp": parse_timestamp, "duration": parse_duration}

_UNSUPPORTED = {
    "uint": "uint values are not supported",
    "bytes": "bytes values are not supported",
    "type": "type() and type values are not supported",
}


def compile_call(node: Call, operands: list[Compiled], scope: Scope) -> Compiled:
    """A call of `node.function` on `operands`: the receiver first, if any, then the arguments."""
    name = node.function
    _check_call_style(node, scope)
    if name == "dyn":
        _check_arity(node, operands, 1, scope)
        (operand,) = operands
        return Compiled(DYN, operand.evaluate, operand.constant)
    if name == "matches":
        _check_arity(node, operands, 2, scope)
        return _matches(node, operands[0], operands[1], scope)
    if name in TIME_ACCESSORS:
        accessors = TIME_ACCESSORS_IN_ZONE if len(operands) == 2 else TIME_ACCESSORS
        overloads = accessors[name]
    else:
        overloads = FUNCTIONS[name]
    _check_arity(node, operands, overloads.arity, scope)
    if name in _PARSERS and type(operands[0].constant) is str:
        try:
            _PARSERS[name](operands[0].constant)
        except EvaluationError as error:
            raise scope.error(str(error), node.offset) from None
    compiled = overloads.compile(operands)
    if compiled is None:
        types = tuple(operand.type for operand in operands)
        raise scope.error(no_matching_overload(name, types), node.offset)
    return compiled


def _check_call_style(node: Call, scope: Scope) -> None:
    """Refuses unknown and unsupported functions, and `x.int()` or `contains(x, y)`."""
    name = node.function
    if name in _UNSUPPORTED:
        raise scope.error(f"{name}(): {_UNSUPPORTED[name]}", node.offset)
    if node.target is not None and name not in _METHODS:
        if name in _GLOBALS:
            raise scope.error(f"{name}() is not a method: call it as {name}(x)", node.offset)
        raise scope.error(f"unknown method '{name}'", node.offset)
    if node.target is None and name not in _GLOBALS:
        if name in _METHODS:
            raise scope.error(f"{name}() is called on a value: x.{name}(...)", node.offset)
        raise scope.error(f"unknown function '{name}'", node.offset)


def _check_arity(node: Call, operands: list[Compiled], arity: int, scope: Scope) -> None:
    if len(operands) == arity:
        return
    given = len(operands) - (node.target is not None)
    expected = arity - (node.target is not None)
    plural = "" if expected == 1 else "s"
    message = f"{node.function}() takes {expected} argument{plural}, got {given}"
    raise scope.error(message, node.offset)


def _matches(node: Call, text: Compiled, pattern: Compiled, scope: Scope) -> Compiled:
    for operand in (text, pattern):
        if operand.type not in (STRING, DYN):
            types = (text.type, pattern.type)
            raise scope.error(no_matching_overload("matches", types), node.offset)
    if type(pattern.constant) is not str:  # known at run time only (or a dyn non-string)
        return apply(BOOL, _matches_any_pattern, text, pattern)
    try:
        compiled = Pattern(pattern.constant)
    except InvalidPattern as error:
        message = f"invalid regular expression {pattern.constant!r}: {error}"
        raise scope.error(message, node.offset) from None
    search = compiled.search

    def matches(value: Any) -> bool:
        if type(value) is str:
            return search(value)
        raise no_overload("matches", value, pattern.constant)

    return apply(BOOL, matches, text)


def _matches_any_pattern(value: Any, pattern: Any) -> bool:
    if type(value) is not str or type(pattern) is not str:
        raise no_overload("matches", value, pattern)
    try:
        compiled = cached_pattern(pattern)
    except InvalidPattern as error:
        raise EvaluationError(f"invalid regular expression {pattern!r}: {error}") from None
    return compiled.search(value)
