"""Static types of expressions, as declared for variables and inferred by the compiler.

The checker knows only what a rule file needs: the scalar types, null, timestamps
and durations, and lists and maps with element types. `DYN` means "known at run time
only"; JSON event properties are `map(string, dyn)`, so `properties.revenue > 100.0`
type-checks, and the comparison checks the actual value when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CelType:
    """A CEL type: a name, plus element types for `list` and key and value types for `map`."""

    name: str
    params: tuple[CelType, ...] = ()

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(str(param) for param in self.params)})"

    @property
    def is_dyn(self) -> bool:
        return self.name == "dyn"

    @property
    def is_numeric(self) -> bool:
        return self.name in ("int", "double")

    @property
    def element(self) -> CelType:
        """The type of a list's elements, or of a map's keys (what macros iterate over)."""
        return self.params[0] if self.params else DYN

    @property
    def value(self) -> CelType:
        """The type of a map's values."""
        return self.params[1] if len(self.params) == 2 else DYN


DYN = CelType("dyn")
BOOL = CelType("bool")
INT = CelType("int")
DOUBLE = CelType("double")
STRING = CelType("string")
NULL = CelType("null_type")
#: CEL's google.protobuf.Timestamp and Duration (`attributes.expressions.times`)
TIMESTAMP = CelType("timestamp")
DURATION = CelType("duration")


def list_of(element: CelType) -> CelType:
    return CelType("list", (element,))


def map_of(key: CelType, value: CelType) -> CelType:
    return CelType("map", (key, value))


def join(first: CelType, second: CelType) -> CelType:
    """The most precise type both may have: themselves when equal, else DYN."""
    return first if first == second else DYN


def assignable(actual: CelType, expected: CelType) -> bool:
    """Whether a value of static type `actual` may be of type `expected` at run time."""
    if actual.is_dyn or expected.is_dyn:
        return True
    if actual.name != expected.name or len(actual.params) != len(expected.params):
        return False
    return all(map(assignable, actual.params, expected.params))


def comparable(first: CelType, second: CelType) -> bool:
    """Whether `==` between the two can ever be true: CEL's checker refuses it otherwise.

    Numbers compare across int and double, anything compares with null (JSON
    properties are often null), and a list with a list, a map with a map, whatever
    their items.
    """
    if first.is_numeric and second.is_numeric:
        return True
    if NULL in (first, second) or first.is_dyn or second.is_dyn:
        return True
    return first.name == second.name
