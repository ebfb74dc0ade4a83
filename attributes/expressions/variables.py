"""Compiles reading a variable, checked against its declared type.

The compiled closures trust static types: `event.startsWith("x")` calls Python's
`str.startswith`, `purchase_count + 1` adds Python ints. So a declared variable's
value is checked as it is read, and a string variable holding null fails there, as
an EvaluationError, instead of as a TypeError somewhere inside. Items of typed lists
and maps are checked too, at the cost of a pass over them; `dyn` ones are not.
Macro variables need no check: what they iterate over was checked.
"""

from __future__ import annotations

from difflib import get_close_matches
from typing import Any

from attributes.expressions.compiled import Activation, Compiled, Evaluator, Scope
from attributes.expressions.errors import EvaluationError, ExpressionError
from attributes.expressions.nodes import Ident
from attributes.expressions.types import DOUBLE, CelType
from attributes.expressions.values import PYTHON_TYPES, kind_of

_TYPE_NAMES = frozenset(
    {"bool", "int", "double", "string", "bytes", "list", "map", "null_type", "type", "dyn"}
)


def compile_variable(node: Ident, scope: Scope) -> Compiled:
    """A declared or macro variable's value (refused at compile time if it is neither)."""
    name = node.name
    if name in scope.macro_variables:
        return Compiled(scope.macro_variables[name], lambda activation: activation[name])
    if name not in scope.variables:
        raise _unknown_variable(node, scope)
    scope.reads.add(name)
    declared = scope.variables[name]
    load = _load(name) if declared.is_dyn else _load_checked(name, declared)
    return Compiled(declared, load)


def unbound(name: str) -> EvaluationError:
    return EvaluationError(f"no value for variable '{name}'")


def _load(name: str) -> Evaluator:
    def load(activation: Activation) -> Any:
        try:
            return activation[name]
        except KeyError:
            raise unbound(name) from None

    return load


def _load_checked(name: str, declared: CelType) -> Evaluator:
    """Loads a value of the declared type; an int declared double becomes a double."""
    python_type, deep = PYTHON_TYPES[declared.name], not _is_shallow(declared)

    def load(activation: Activation) -> Any:
        try:
            value = activation[name]
        except KeyError:
            raise unbound(name) from None
        if type(value) is python_type and (not deep or _conforms(value, declared)):
            return value
        if declared == DOUBLE and type(value) is int:
            return float(value)  # JSON writes 100.0 as 100
        held = kind_of(value)
        if type(value) is python_type:
            held = f"a {held} with items of other types"
        raise EvaluationError(f"variable '{name}' is declared {declared}, but holds {held}")

    return load


def _is_shallow(declared: CelType) -> bool:
    """Whether checking the Python type is enough: no typed items (JSON keys are strings)."""
    if declared.name == "map":
        return declared.value.is_dyn
    return all(param.is_dyn for param in declared.params)


def _conforms(value: Any, declared: CelType) -> bool:
    """Whether `value` is of type `declared`, items included (an int passes for a double)."""
    if declared.is_dyn:
        return True
    if declared.name == "list":
        return isinstance(value, list) and all(_conforms(item, declared.element) for item in value)
    if declared.name == "map":
        return isinstance(value, dict) and all(
            _conforms(key, declared.element) and _conforms(item, declared.value)
            for key, item in value.items()
        )
    if declared == DOUBLE:
        return type(value) is float or type(value) is int
    return type(value) is PYTHON_TYPES[declared.name]


def _unknown_variable(node: Ident, scope: Scope) -> ExpressionError:
    name = node.name
    if name in _TYPE_NAMES:
        return scope.error(f"type values ('{name}') are not supported", node.offset)
    suggestions = get_close_matches(name, [*scope.variables, *scope.macro_variables], n=1)
    hint = f"did you mean '{suggestions[0]}'?" if suggestions else ""
    return scope.error(f"unknown variable '{name}'", node.offset, hint)
