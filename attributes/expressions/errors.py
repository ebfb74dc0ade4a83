"""The two ways an expression fails: when it is compiled, and when it is evaluated.

A rule file with a typo or a type error must fail when the rules are loaded, never
per event, so everything that can be decided from the source and the declared
variable types raises `ExpressionError` at compile time. What depends on the data
(a missing key, a string where a number was expected in a JSON property) raises
`EvaluationError` for that one event.
"""

from __future__ import annotations

from attributes.errors import DataError, RuleError


class ExpressionError(RuleError):
    """The source is not a valid expression: syntax, unknown name, or a type error."""


class EvaluationError(DataError):
    """Evaluating a valid expression failed for this activation (CEL's runtime errors).
    Not a `RuleError`: the rule loader must never take one for a problem of the rule."""


def describe_position(source: str, offset: int) -> str:
    """Where `offset` is, for messages: 'column 5', or 'line 2, column 3' in multi-line sources."""
    line_start = source.rfind("\n", 0, offset) + 1
    column = offset - line_start + 1
    if "\n" not in source:
        return f"column {column}"
    line = source.count("\n", 0, offset) + 1
    return f"line {line}, column {column}"
