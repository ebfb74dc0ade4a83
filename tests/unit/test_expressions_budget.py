"""Comprehensions have a budget per evaluation (`attributes.expressions.macros`): an
expression accepted at load, nested comprehensions over a rule's lists or an event's,
fails in bounded time instead of stalling the worker that evaluates it per event."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from attributes.derived import DerivedAttribute
from attributes.events import decode_event
from attributes.expressions import DYN, STRING, EvaluationError, compile_expression, map_of
from attributes.expressions.macros import MAX_ITERATIONS
from attributes.filters import FilterResults, compile_filter

VARIABLES = {"properties": map_of(STRING, DYN)}
#: what evaluating a few hundred thousand steps takes, with room for a slow machine
BOUNDED_S = 2.0


def evaluated(source: str, properties: dict[str, Any]) -> tuple[Any, float]:
    """The value (or the EvaluationError) and the seconds it took."""
    expression = compile_expression(source, VARIABLES)
    began = time.perf_counter()
    try:
        value: Any = expression.evaluate({"properties": properties})
    except EvaluationError as exc:
        value = exc
    return value, time.perf_counter() - began


def nested(depth: int, elements: int) -> str:
    """`depth` comprehensions over a literal list, one inside the other."""
    listed = "[" + ", ".join(map(str, range(elements))) + "]"
    body = "true"
    for level in range(depth):
        body = f"{listed}.all(x{level}, {body} && x{level} >= 0)"
    return body


def test_nested_comprehensions_over_a_rule_s_lists_fail_in_bounded_time() -> None:
    # 100**5 steps: hours without the budget
    value, took = evaluated(nested(5, 100), {})
    assert isinstance(value, EvaluationError)
    assert f"{MAX_ITERATIONS:,} elements" in str(value)
    assert took < BOUNDED_S


def test_within_the_budget_nothing_changes() -> None:
    assert evaluated(nested(2, 90), {})[0] is True  # 90 + 90 * 90 steps
    # what a map builds is charged, a string by the KiB: names are nearly free
    products = [{"name": f"product number {n:05d}"} for n in range(5_000)]
    assert len(evaluated("properties.p.map(p, p.name)", {"p": products})[0]) == 5_000
    # each outermost comprehension has a budget of its own
    many = list(range(MAX_ITERATIONS * 3 // 4))
    source = "properties.l.all(x, x >= 0) && properties.l.exists(x, x == 0)"
    assert evaluated(source, {"l": many})[0] is True


@pytest.mark.parametrize(
    "source",
    [
        "properties.l.all(a, properties.l.all(b, a == b))",
        "properties.l.exists(a, properties.l.exists(b, a != b))",
        "properties.l.exists_one(a, properties.l.exists_one(b, a == b))",
        "properties.l.filter(a, properties.l.filter(b, a == b).size() > 0).size() > 0",
        "properties.l.map(a, properties.l.map(b, a)).size() > 0",
        # small iterations, each building a large value
        f"{list(range(100))}.map(a, properties.s + properties.s).size() > 0",
        "properties.l.map(a, properties.l).size() > 0",
    ],
)
def test_nested_comprehensions_over_an_event_s_list_fail_in_bounded_time(source: str) -> None:
    """An event under the size limit with a 60,000-element list: billions of steps."""
    value, took = evaluated(source, {"l": [0] * 60_000, "s": "x" * 60_000})
    assert isinstance(value, EvaluationError)
    assert took < BOUNDED_S


def test_a_filter_past_the_budget_does_not_match_and_a_derived_attribute_is_null() -> None:
    event = decode_event(
        json.dumps(
            {"type": "track", "event": "e", "userId": "u", "properties": {"l": [0] * 60_000}}
        ).encode()
    )
    where = compile_filter("properties.l.all(a, properties.l.all(b, a == b))")
    verdict = FilterResults(event).verdict(where)
    assert isinstance(verdict, str)
    assert "elements in one evaluation" in verdict
    derived = DerivedAttribute("d", "user", compile_expression(nested(4, 100), {}))
    assert derived.evaluate({}) is None
