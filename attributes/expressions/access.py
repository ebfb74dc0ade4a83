"""Compiles reading into values, `a.b` and `a[k]`, and building list and map literals.

Field selection is the hot path of every event filter (`properties.revenue`), so a
selection on a variable is one closure doing both lookups, and a selection is a
plain Python subscript whose failures are translated to CEL's errors afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from attributes.expressions.compiled import Activation, Compiled, Evaluator, Scope, apply
from attributes.expressions.errors import EvaluationError
from attributes.expressions.nodes import Ident, Index, MapLiteral, Select
from attributes.expressions.types import (
    DOUBLE,
    DYN,
    INT,
    STRING,
    CelType,
    comparable,
    list_of,
    map_of,
)
from attributes.expressions.values import (
    item,
    kind_of,
    list_item,
    map_value,
    select_error,
)
from attributes.expressions.variables import unbound


def _field_type(operand_type: CelType) -> CelType | None:
    """The type of `operand.field`, or None when it can never be selected."""
    if operand_type.is_dyn:
        return DYN
    if operand_type.name == "map" and operand_type.element in (STRING, DYN):
        return operand_type.value
    return None


def compile_select(node: Select, operand: Compiled, scope: Scope) -> Compiled:
    result_type = _field_type(operand.type)
    if result_type is None:
        raise scope.error(f"cannot select field '{node.field}' on {operand.type}", node.offset)
    if isinstance(node.operand, Ident) and result_type.is_dyn:
        # one closure for `properties.revenue`: the subscript itself refuses a non-map
        return Compiled(result_type, _select_variable(node.operand.name, node.field))
    return Compiled(result_type, _select(operand.evaluate, node.field))


def _select(operand: Evaluator, field: str) -> Evaluator:
    def select(activation: Activation) -> Any:
        value = operand(activation)
        try:
            return value[field]
        except (KeyError, TypeError):
            raise select_error(value, field) from None

    return select


def _select_variable(variable: str, field: str) -> Evaluator:
    def select(activation: Activation) -> Any:
        try:
            value = activation[variable]
        except KeyError:
            raise unbound(variable) from None
        try:
            return value[field]
        except (KeyError, TypeError):
            raise select_error(value, field) from None

    return select


def compile_index(node: Index, operand: Compiled, index: Compiled, scope: Scope) -> Compiled:
    container, key = operand.type, index.type
    function: Callable[[Any, Any], Any]
    if container.name == "list" and key in (INT, DYN):
        result_type, function = container.element, list_item
    elif (
        container.name == "map" and key in (STRING, INT, DYN) and comparable(key, container.element)
    ):
        result_type, function = container.value, map_value
    elif container.is_dyn and key in (STRING, INT, DOUBLE, DYN):
        result_type, function = DYN, item
    else:
        raise scope.error(f"no matching overload for '[]' on {container} and {key}", node.offset)
    return apply(result_type, function, operand, index)


def compile_list(items: list[Compiled]) -> Compiled:
    evaluators = tuple(item.evaluate for item in items)
    list_type = list_of(_joined(item.type for item in items))

    def build(activation: Activation) -> list[Any]:
        return [evaluate(activation) for evaluate in evaluators]

    if all(item.is_constant for item in items):
        return Compiled(list_type, build, [item.constant for item in items])
    return Compiled(list_type, build)


def compile_map(
    node: MapLiteral, entries: list[tuple[Compiled, Compiled]], scope: Scope
) -> Compiled:
    """A map literal; keys are strings or ints (bool keys are refused: Python's True == 1)."""
    for (key, _), (key_node, _) in zip(entries, node.entries, strict=True):
        if key.type not in (STRING, INT, DYN):
            raise scope.error(f"map keys must be strings or ints, got {key.type}", key_node.offset)
    map_type = map_of(
        _joined(key.type for key, _ in entries), _joined(value.type for _, value in entries)
    )
    if not all(key.is_constant and key.type in (STRING, INT) for key, _ in entries):
        return Compiled(map_type, _build_map(entries))
    keys = [key.constant for key, _ in entries]
    for position, key in enumerate(keys):
        if key in keys[:position]:
            raise scope.error(f"repeated key {key!r} in map literal", node.offset)
    pairs = tuple((key.constant, value.evaluate) for key, value in entries)

    def build(activation: Activation) -> dict[Any, Any]:
        return {key: evaluate(activation) for key, evaluate in pairs}

    if all(value.is_constant for _, value in entries):
        return Compiled(map_type, build, {key.constant: value.constant for key, value in entries})
    return Compiled(map_type, build)


def _build_map(entries: list[tuple[Compiled, Compiled]]) -> Evaluator:
    """Builds a map whose keys are known at run time only, checking their type and uniqueness."""
    pairs = tuple((key.evaluate, value.evaluate) for key, value in entries)

    def build(activation: Activation) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for evaluate_key, evaluate_value in pairs:
            key = evaluate_key(activation)
            if type(key) is not str and type(key) is not int:
                raise EvaluationError(f"unsupported map key type {kind_of(key)}")
            if key in result:
                raise EvaluationError(f"repeated key {key!r} in map literal")
            result[key] = evaluate_value(activation)
        return result

    return build


def _joined(types: Iterable[CelType]) -> CelType:
    """The element type of a literal with items of these types: DYN when they differ or none."""
    distinct = set(types)
    return distinct.pop() if len(distinct) == 1 else DYN
