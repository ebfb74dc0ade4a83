"""`derived` attributes: CEL expressions over other attributes of the same profile.

`average_order: lifetime_value / double(purchase_count)` is computed from the profile's
other attributes every time the view is rendered, never from events, so it is always
consistent with them. A derived attribute may use another derived attribute; the rule
file's order does not matter, a cycle is an error at load.

Inside an expression an attribute has a CEL type, so that type errors show at load:
its aggregator's `result_type` (`attributes.aggregators.FUNCTIONS`). `sum` is a double
(an int total is converted), `count` and `unique_count` are ints, `list` is a list.
The attributes that can be null (`avg`, `min` and `max` of nothing, `most_recent`,
`first`, `most_frequent`, and derived ones) are `dyn`, checked as they are evaluated;
`avg`, `min` and `max` hold doubles when they are not null (`as_double`). An
expression that cannot be evaluated (null in arithmetic, an int division by zero)
makes the derived attribute `null`. `now` is the processing time, a timestamp
(`attributes.clock`); a timestamp or duration result is served as RFC 3339 text or
an ISO 8601 duration (`PT5400S`), and other expressions read it as a time.

The compiled expressions trust the declared types (a `double` variable is never
null), which is why every value passes through `cel_value` first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from attributes.aggregators import FUNCTIONS
from attributes.clock import NOW
from attributes.errors import RuleError
from attributes.expressions import (
    DYN,
    TIMESTAMP,
    CelType,
    EvaluationError,
    Expression,
    ExpressionError,
    compile_expression,
)


class _ResultTypes(Mapping[str, CelType]):
    """The registered functions' `result_type`s, read from the registry as asked."""

    def __getitem__(self, function: str) -> CelType:
        return FUNCTIONS[function].result_type

    def __iter__(self) -> Iterator[str]:
        return iter(FUNCTIONS)

    def __len__(self) -> int:
        return len(FUNCTIONS)


#: The CEL type of each aggregating function's result.
RESULT_TYPES: Mapping[str, CelType] = _ResultTypes()


def _as_double(value: Any) -> Any:
    return None if value is None else float(value)


def _as_is(value: Any) -> Any:
    return value


def cel_value(function: str) -> Callable[[Any], Any]:
    """How an attribute's served value becomes the value its CEL type promises."""
    return _as_double if FUNCTIONS[function].as_double else _as_is


@dataclass(frozen=True, slots=True)
class DerivedAttribute:
    name: str
    entity: str
    expression: Expression
    description: str = ""

    def evaluate(self, values: Mapping[str, Any]) -> Any:
        """The value, or None when the expression fails on these values. A non-finite
        double (0.0 / 0.0) is None too: JSON has no NaN or infinity."""
        try:
            value = self.expression.evaluate(values)
        except EvaluationError:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value


class DerivedCycle(RuleError):
    def __init__(self, members: list[str]) -> None:
        self.members = members
        super().__init__(f"derived attributes form a cycle: {' -> '.join(members)}")


def dependency_order(reads: Mapping[str, frozenset[str]]) -> list[str]:
    """The derived attributes in an order where each comes after those it reads.

    `reads` maps each derived attribute to the attributes it reads (derived or not);
    raises DerivedCycle naming the cycle, e.g. "a -> b -> a"."""
    order: list[str] = []
    state: dict[str, str] = {}  # name -> "visiting" | "done"

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise DerivedCycle([*path[path.index(name) :], name])
        state[name] = "visiting"
        for dependency in sorted(used for used in reads[name] if used in reads):
            visit(dependency, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in reads:
        visit(name, [])
    return order


def compile_derived(
    sources: Mapping[str, str], aggregated: Mapping[str, CelType]
) -> tuple[dict[str, Expression], dict[str, str]]:
    """Compile every derived expression against the types of the attributes it reads.

    `sources`: derived name -> expression text; `aggregated`: the other attributes and
    their CEL types. Returns (the compiled ones in dependency order, problems by name).
    An attribute that reads a broken one is left out without a problem of its own."""
    problems: dict[str, str] = {}
    everything = {name: DYN for name in (*aggregated, *sources)}
    everything[NOW] = TIMESTAMP
    reads: dict[str, frozenset[str]] = {}
    for name, source in sources.items():
        try:
            reads[name] = compile_expression(source, everything).names
        except ExpressionError as exc:
            problems[name] = f"expression: {exc}"
    for name in [name for name, used in reads.items() if name in used]:
        problems[name] = "expression: a derived attribute cannot read itself"
        del reads[name]
    while True:
        _drop_readers_of(problems.keys(), reads)
        try:
            order = dependency_order(reads)
            break
        except DerivedCycle as cycle:
            for name in cycle.members:
                problems[name] = str(cycle)
                reads.pop(name, None)

    types = {**aggregated, NOW: TIMESTAMP}
    compiled: dict[str, Expression] = {}
    for name in order:
        if name not in reads:
            continue  # reads one whose types failed
        try:
            expression = compile_expression(sources[name], types)
        except ExpressionError as exc:
            problems[name] = f"expression: {exc}"
            _drop_readers_of({name}, reads)
            continue
        compiled[name] = expression
        types[name] = DYN  # null when it fails
    return compiled, problems


def _drop_readers_of(broken: Iterable[str], reads: dict[str, frozenset[str]]) -> None:
    """Remove, transitively, the attributes that read a broken one."""
    gone = set(broken)
    while readers := [name for name, used in reads.items() if used & gone]:
        for name in readers:
            del reads[name]
        gone.update(readers)
