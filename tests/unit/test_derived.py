from __future__ import annotations

import math
from typing import Any

import pytest

from attributes.aggregators import FUNCTIONS, Aggregator, State, register, unregister
from attributes.derived import (
    RESULT_TYPES,
    DerivedAttribute,
    DerivedCycle,
    cel_value,
    compile_derived,
    dependency_order,
)
from attributes.expressions import BOOL, DOUBLE, INT, STRING, compile_expression


def test_dependency_order_puts_each_after_what_it_reads() -> None:
    reads = {
        "c": frozenset({"b", "orders"}),
        "b": frozenset({"a"}),
        "a": frozenset({"orders"}),
    }
    assert dependency_order(reads) == ["a", "b", "c"]


def test_dependency_order_names_the_cycle() -> None:
    with pytest.raises(DerivedCycle) as caught:
        dependency_order(
            {"x": frozenset(), "a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"})}
        )
    assert caught.value.members == ["a", "b", "c", "a"]
    assert str(caught.value) == "derived attributes form a cycle: a -> b -> c -> a"


def test_compile_derived_types_follow_the_functions() -> None:
    compiled, problems = compile_derived(
        {"avg": "ltv / double(orders)", "big": "avg > 100.0"},
        {"ltv": RESULT_TYPES["sum"], "orders": RESULT_TYPES["count"]},
    )
    assert problems == {}
    assert list(compiled) == ["avg", "big"]
    assert compiled["avg"].type == DOUBLE
    assert compiled["big"].type == BOOL
    assert compiled["big"].type == BOOL


def test_a_reader_of_a_broken_attribute_gets_no_problem_of_its_own() -> None:
    compiled, problems = compile_derived(
        {"broken": "orders + 'x'", "reader": "broken + 1", "fine": "orders * 2"},
        {"orders": INT},
    )
    assert set(problems) == {"broken"}
    assert list(compiled) == ["fine"]


@pytest.mark.parametrize(
    ("function", "value", "expected"),
    [("sum", 3, 3.0), ("avg", None, None), ("max", 2, 2.0), ("count", 4, 4), ("list", [1], [1])],
)
def test_values_take_the_type_their_function_promises(
    function: str, value: object, expected: object
) -> None:
    converted = cel_value(function)(value)
    assert converted == expected
    assert type(converted) is type(expected)


def test_result_types_and_conversions_are_read_from_the_registry() -> None:
    class Initials(Aggregator):
        function = "initials"
        result_type = STRING

        def initial(self) -> State:
            return ""

        def add(self, state: State, value: Any, ts: int, mid: str) -> State:
            return state + str(value)[:1]

        def merge(self, a: State, b: State) -> State:
            return a + b

        def result(self, state: State) -> Any:
            return state

    assert "initials" not in RESULT_TYPES
    register(Initials)
    try:
        assert RESULT_TYPES["initials"] == STRING
        assert list(RESULT_TYPES) == list(FUNCTIONS)
        assert cel_value("initials")("ab") == "ab"
    finally:
        unregister("initials")
    assert "initials" not in RESULT_TYPES
    doubles = {name for name in FUNCTIONS if type(cel_value(name)(1)) is float}
    assert doubles == {"sum", "avg", "min", "max"}


def derived(source: str) -> DerivedAttribute:
    types = {"ltv": RESULT_TYPES["sum"], "orders": INT, "mean": RESULT_TYPES["avg"]}
    return DerivedAttribute("x", "user", compile_expression(source, types))


def test_a_failing_expression_is_null() -> None:
    values = {"ltv": 10.0, "orders": 4, "mean": None}
    assert derived("ltv / double(orders)").evaluate(values) == 2.5
    assert derived("orders / 0").evaluate(values) is None  # int division by zero
    assert derived("mean + 1.0").evaluate(values) is None  # the avg of nothing
    assert derived("mean == null ? 0.0 : mean").evaluate(values) == 0.0


@pytest.mark.parametrize(("source", "ltv"), [("ltv / double(orders)", 0.0), ("-ltv / 0.0", 1.0)])
def test_a_non_finite_result_is_null(source: str, ltv: float) -> None:
    values = {"ltv": ltv, "orders": 0, "mean": None}
    assert not math.isfinite(derived(source).expression.evaluate(values))
    assert derived(source).evaluate(values) is None
