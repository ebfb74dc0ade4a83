"""CEL's meaning of equality, membership and lookup on Python values.

Python's own operators are used wherever the static types make them exact; these
functions cover the rest, where Python and CEL disagree: bool is not a number in CEL
(`1 == true` is false, `1 in [true]` too), NaN never equals itself even inside lists
(Python's `[nan] == [nan]` is true by identity), a lookup with `true` does not find
the key 1, and a negative list index is an error, not the last element.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from attributes.expressions.errors import EvaluationError

#: CEL's name for the kind of a Python value, as the overload tables are keyed.
KINDS: dict[type, str] = {
    bool: "bool",
    int: "int",
    float: "double",
    str: "string",
    type(None): "null_type",
    list: "list",
    dict: "map",
    datetime: "timestamp",
    timedelta: "duration",
}
PYTHON_TYPES: dict[str, type] = {kind: python_type for python_type, kind in KINDS.items()}

_NUMBERS = frozenset({int, float})


def kind_of(value: object) -> str:
    return KINDS.get(type(value), type(value).__name__)


def no_overload(symbol: str, *operands: object) -> EvaluationError:
    kinds = " and ".join(kind_of(operand) for operand in operands)
    return EvaluationError(f"no matching overload for '{symbol}' on {kinds}")


def values_equal(first: Any, second: Any) -> bool:
    """CEL's `==`: heterogeneous, with int and double on one number line."""
    kind = type(first)
    if kind is not type(second):
        return kind in _NUMBERS and type(second) in _NUMBERS and first == second
    if kind is list:
        return len(first) == len(second) and all(map(values_equal, first, second))
    if kind is dict:
        return len(first) == len(second) and all(
            key in second and values_equal(value, second[key]) for key, value in first.items()
        )
    return bool(first == second)


def values_differ(first: Any, second: Any) -> bool:
    return not values_equal(first, second)


def in_list(needle: Any, items: list[Any]) -> bool:
    if type(needle) is str:
        return needle in items
    return any(values_equal(needle, item) for item in items)


def in_map(key: Any, mapping: dict[Any, Any]) -> bool:
    kind = type(key)
    if kind is str or kind is int or kind is float:
        return key in mapping
    if kind is bool:
        return False
    raise EvaluationError(f"unsupported map key type {kind_of(key)}")


def in_container(needle: Any, container: Any) -> bool:
    """`needle in container` for a container known at run time only."""
    if type(container) is list:
        return in_list(needle, container)
    if type(container) is dict:
        return in_map(needle, container)
    raise no_overload("in", needle, container)


def list_item(items: list[Any], index: Any) -> Any:
    kind = type(index)
    if kind is float and index.is_integer():
        index = int(index)
    elif kind is not int:
        raise no_overload("[]", items, index)
    if 0 <= index < len(items):
        return items[index]
    raise EvaluationError(f"index {index} out of range for a list of size {len(items)}")


def map_value(mapping: dict[Any, Any], key: Any) -> Any:
    """`mapping[key]`; a double key finds the equal int key, as CEL's numbers are one line."""
    if in_map(key, mapping):
        return mapping[key]
    raise EvaluationError(f"no such key: {key!r}")


def item(container: Any, key: Any) -> Any:
    """`container[key]` for a container known at run time only."""
    if type(container) is list:
        return list_item(container, key)
    if type(container) is dict:
        return map_value(container, key)
    raise no_overload("[]", container, key)


def select_error(value: Any, field: str) -> EvaluationError:
    """Why `value.field` failed (after a plain Python `value[field]` raised)."""
    if type(value) is dict:
        return EvaluationError(f"no such key: '{field}'")
    return EvaluationError(f"cannot select field '{field}' on {kind_of(value)}")


def has_field(value: Any, field: str) -> bool:
    if type(value) is dict:
        return field in value
    raise EvaluationError(f"has() cannot test field '{field}' on {kind_of(value)}")


def iteration_range(value: Any, macro: str) -> list[Any] | dict[Any, Any]:
    """What a macro iterates over: a list's elements or a map's keys."""
    if isinstance(value, list | dict):
        return value
    raise no_overload(macro, value)


def require_bool(value: Any, symbol: str) -> bool:
    if value is True or value is False:
        return value is True
    raise no_overload(symbol, value)
