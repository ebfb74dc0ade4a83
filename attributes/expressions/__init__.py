"""A compiler from a subset of Google's Common Expression Language to Python closures.

Rule files use CEL for `where` filters (`properties.revenue > 100.0 &&
properties.currency == "EUR"`) and derived attributes (`lifetime_value /
double(purchase_count)`). Expressions run once per event on the stream processor's
hot path, so each is type-checked and compiled once, at load, into nested closures:
evaluation walks no syntax tree and generates no source.

Supported: int, double, string, bool, null, timestamp, duration, list and map
values; literals (ints in
decimal and hex, doubles, quoted, triple-quoted and raw strings); variables, `a.b`,
`a[k]`; `!`, unary `-`, `* / % + - < <= > >= == != in && || ?:` with CEL's semantics
(64-bit ints that fail on overflow, truncating division, heterogeneous numeric
equality, commutative `&&`/`||`); `has()`, `size()`, `int() double() string() bool()
dyn()`, `contains startsWith endsWith matches`, the macros `all exists exists_one
map filter`, and time (`times.py`): `timestamp() duration()`, timestamp and duration
arithmetic and ordering, `int(timestamp)`, `string()` of both, and the accessors
`getFullYear getMonth getDate getDayOfMonth getDayOfWeek getDayOfYear getHours
getMinutes getSeconds getMilliseconds` (on timestamps, with an optional time zone;
the last four on durations too). Refused with an ExpressionError: uint, bytes, type
values, protobuf messages, and bool map keys.

Values are Python's: int, float, str, bool, None, list, dict, and timezone-aware
`datetime` (in UTC) and `timedelta` for timestamps and durations. An activation must give
each declared variable a value of its declared type (checked as it is read: a
mismatch is an EvaluationError; an int given for a double becomes a float); declare
`DYN` what may be null or vary, as JSON properties do.
"""

from attributes.expressions.compiler import Expression, compile_expression
from attributes.expressions.errors import EvaluationError, ExpressionError
from attributes.expressions.types import (
    BOOL,
    DOUBLE,
    DURATION,
    DYN,
    INT,
    NULL,
    STRING,
    TIMESTAMP,
    CelType,
    list_of,
    map_of,
)

__all__ = [
    "BOOL",
    "DOUBLE",
    "DURATION",
    "DYN",
    "INT",
    "NULL",
    "STRING",
    "TIMESTAMP",
    "CelType",
    "EvaluationError",
    "Expression",
    "ExpressionError",
    "compile_expression",
    "list_of",
    "map_of",
]
