"""CEL's conversion functions `int()`, `double()`, `string()` and `bool()` on Python values.

Python's own `int(str)` and `float(str)` accept more than CEL (whitespace,
underscores, non-ASCII digits), so strings are matched against the literal forms CEL
accepts first. `string(double)` writes the shortest digits that read back as the same
double, without an exponent, as the reference implementation does.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

from attributes.expressions.arithmetic import INT_MAX, INT_MIN
from attributes.expressions.errors import EvaluationError

# Both read event strings, so neither may backtrack more than linearly: each part of
# a text has one way to match (`[0-9]+\.?[0-9]*` had n ways to split n digits, and a
# run of 40,000 digits then "x" took 24 s to refuse).
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_DOUBLE_TEXT = re.compile(
    r"[+-]?(?:[0-9]+(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?|\.[0-9]+(?:e[+-]?[0-9]+)?|inf|infinity|nan)",
    re.IGNORECASE,
)
#: digits of the largest int, without leading zeros: a longer text is out of range
_INT_DIGITS = len(str(INT_MAX))
_BOOL_TEXT = {
    **dict.fromkeys(("1", "t", "true", "TRUE", "True"), True),
    **dict.fromkeys(("0", "f", "false", "FALSE", "False"), False),
}


def double_to_int(value: float) -> int:
    """Truncates toward zero; the range is (INT_MIN, INT_MAX) exclusive, as CEL specifies."""
    if -(2.0**63) < value < 2.0**63:
        return int(value)
    raise EvaluationError(f"int({value!r}) is out of range")


def string_to_int(text: str) -> int:
    if _INT_TEXT.fullmatch(text):
        # Python's int() refuses texts over 4,300 digits (ValueError): never asked
        digits = text.lstrip("+-").lstrip("0") or "0"
        if len(digits) <= _INT_DIGITS:
            value = -int(digits) if text[0] == "-" else int(digits)
            if INT_MIN <= value <= INT_MAX:
                return value
    raise EvaluationError(f"cannot convert {text!r} to int")


def string_to_double(text: str) -> float:
    if _DOUBLE_TEXT.fullmatch(text):
        return float(text)
    raise EvaluationError(f"cannot convert {text!r} to double")


def string_to_bool(text: str) -> bool:
    try:
        return _BOOL_TEXT[text]
    except KeyError:
        raise EvaluationError(f"cannot convert {text!r} to bool") from None


def double_to_string(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = format(Decimal(repr(value)), "f")
    return text.removesuffix(".0")


def bool_to_string(value: bool) -> str:
    return "true" if value else "false"
