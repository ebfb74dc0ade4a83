from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest

from attributes.aggregators import (
    FUNCTIONS,
    Aggregator,
    Count,
    MostRecent,
    Rejected,
    State,
    Sum,
    register,
    unregister,
)
from attributes.derived import RESULT_TYPES, cel_value
from attributes.events import Event, decode_event
from attributes.expressions import DYN, list_of
from attributes.multisets import MostFrequent, RecentValues, UniqueCount
from attributes.paths import MISSING
from attributes.profile import ProfileState, apply_event, compute_attributes
from attributes.rules import (
    RuleFileError,
    RuleProblem,
    aggregator_for,
    load_rules,
    parse_rules,
    state_key,
)
from attributes.ruleset import RuleSet
from attributes.specs import AttributeSpec

FILE = "rules.yaml"


def problems(text: str) -> list[RuleProblem]:
    with pytest.raises(RuleFileError) as caught:
        parse_rules(text, FILE)
    return caught.value.problems


def only_problem(text: str) -> RuleProblem:
    (problem,) = problems(text)
    return problem


def selected(rules: RuleSet, event_type: str, event_name: str | None) -> list[str]:
    return [attribute.name for attribute in rules.for_event(event_type, event_name)]


# --- loading ------------------------------------------------------------------------------


def test_the_example_rules_load(example_rules: RuleSet) -> None:
    assert [attribute.name for attribute in example_rules.attributes] == [
        "lifetime_value",
        "purchase_count",
        "largest_order",
        "smallest_order",
        "last_product",
        "last_category_viewed",
        "page_views",
        "avg_order_value",
        "first_product",
        "recently_viewed",
        "categories_viewed",
        "favourite_category",
        "big_orders",
        "eur_revenue",
        "orders_last_30_days",
        "revenue_last_7_days",
        "categories_this_month",
    ]
    assert [derived.name for derived in example_rules.derived] == ["average_order", "loyal"]
    assert example_rules.names[-2:] == ("average_order", "loyal")
    assert [attribute.name for attribute in example_rules.windowed] == [
        "orders_last_30_days",
        "revenue_last_7_days",
        "categories_this_month",
    ]
    by_name = {attribute.name: attribute for attribute in example_rules.attributes}
    lifetime_value = by_name["lifetime_value"]
    assert isinstance(lifetime_value.aggregator, Sum)
    assert lifetime_value.entity == "user"
    assert lifetime_value.description == "Total revenue of all completed orders."
    assert lifetime_value.getter is not None
    order = Event(type="track", event="Order Completed", userId="u", properties={"revenue": 3})
    assert lifetime_value.getter(order) == 3
    assert isinstance(by_name["purchase_count"].aggregator, Count)
    assert by_name["purchase_count"].getter is None
    assert isinstance(by_name["last_product"].aggregator, MostRecent)


def test_a_field_compiles_to_a_getter() -> None:
    rules = parse_rules(
        "attributes:\n  - name: city\n    function: most_recent\n    field: context.geo.city\n"
    )
    (city,) = rules.attributes
    assert city.getter is not None
    assert city.getter(Event(type="page", userId="u", context={"geo": {"city": "Oslo"}})) == "Oslo"
    assert city.getter(Event(type="page", userId="u")) is MISSING


def test_an_empty_attribute_list_is_valid() -> None:
    assert parse_rules("attributes: []\n").attributes == ()


def test_load_rules_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("attributes:\n  - name: visits\n    function: count\n", encoding="utf-8")
    assert [attribute.name for attribute in load_rules(path).attributes] == ["visits"]
    assert [attribute.name for attribute in load_rules(str(path)).attributes] == ["visits"]


# --- problems: file, line, attribute --------------------------------------------------------


def test_unknown_function() -> None:
    problem = only_problem(
        "attributes:\n"
        "  - name: ok\n"
        "    function: count\n"
        "  - name: spend\n"
        "    function: total\n"
        "    field: properties.revenue\n"
    )
    assert (problem.file, problem.line, problem.name) == (FILE, 4, "spend")
    assert problem.problem.startswith("function: ")
    assert "'sum'" in problem.problem  # the valid choices are listed
    assert str(problem).startswith(f"{FILE}:4: attribute 'spend': function: ")


@pytest.mark.parametrize("function", ["sum", "min", "max", "most_recent"])
def test_functions_that_need_a_field(function: str) -> None:
    problem = only_problem(f"attributes:\n  - name: x\n    function: {function}\n")
    assert (problem.line, problem.name) == (2, "x")
    assert problem.problem == f"function {function!r} needs a 'field'"


def test_bad_field_root() -> None:
    problem = only_problem(
        "attributes:\n  - name: spend\n    function: sum\n    field: propertes.revenue\n"
    )
    assert (problem.line, problem.name) == (2, "spend")
    assert "'propertes.revenue' must start with one of" in problem.problem


def test_duplicate_name_points_at_the_first() -> None:
    problem = only_problem(
        "attributes:\n"
        "  - name: visits\n"
        "    function: count\n"
        "\n"
        "  - name: visits\n"
        "    function: count\n"
        "    type: [page]\n"
    )
    assert (problem.line, problem.name) == (5, "visits")
    assert problem.problem == "duplicate name (first defined on line 2)"


def test_every_duplicate_points_at_the_first() -> None:
    found = problems(
        "attributes:\n"
        "  - name: visits\n"
        "    function: count\n"
        "  - name: visits\n"
        "    function: count\n"
        "  - name: visits\n"
        "    function: count\n"
    )
    assert [(p.line, p.problem) for p in found] == [
        (4, "duplicate name (first defined on line 2)"),
        (6, "duplicate name (first defined on line 2)"),
    ]


@pytest.mark.parametrize("name", ["9lives", "life-time", "has space", "", "x" * 65])
def test_bad_name(name: str) -> None:
    problem = only_problem(f"attributes:\n  - name: '{name}'\n    function: count\n")
    assert problem.line == 2
    assert problem.problem.startswith("name: ")
    assert "must be an identifier" in problem.problem


def test_longest_name_is_allowed() -> None:
    assert parse_rules(f"attributes:\n  - name: {'x' * 64}\n    function: count\n").attributes


def test_unknown_key() -> None:
    problem = only_problem(
        "attributes:\n  - name: visits\n    function: count\n    events: [Page Viewed]\n"
    )
    assert (problem.line, problem.name) == (2, "visits")
    assert problem.problem.startswith("events: ")
    assert "not permitted" in problem.problem


def test_unknown_event_type() -> None:
    problem = only_problem("attributes:\n  - name: x\n    function: count\n    type: [click]\n")
    assert (problem.line, problem.name) == (2, "x")
    assert problem.problem.startswith("type.0: ")


def test_an_item_that_is_not_a_mapping() -> None:
    problem = only_problem("attributes:\n  - visits\n")
    assert (problem.line, problem.name) == (2, None)
    assert str(problem).startswith(f"{FILE}:2: ")


def test_invalid_yaml_reports_its_line() -> None:
    problem = only_problem(
        "attributes:\n  - name: a\n    function: count\n  - name: b\n\tfunction: count\n"
    )
    assert problem.line == 5
    assert problem.name is None
    assert problem.problem.startswith("not valid YAML: ")


@pytest.mark.parametrize(
    "text",
    ["", "# nothing\n", "- name: a\n", "attributes: visits\n", "attributes:\n", "rules: []\n"],
)
def test_not_a_mapping_with_an_attributes_list(text: str) -> None:
    problem = only_problem(text)
    assert (problem.line, problem.name) == (1, None)
    assert problem.problem == "expected a mapping with an 'attributes' list"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(RuleFileError) as caught:
        load_rules(path)
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.name) == (str(path), None, None)
    assert str(problem) == f"{path}: cannot read: No such file or directory"


def test_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("attributes:\n  - name: spend\n    function: sum\n", encoding="utf-8")
    with pytest.raises(RuleFileError) as caught:
        load_rules(path)
    assert str(caught.value) == f"{path}:2: attribute 'spend': function 'sum' needs a 'field'"


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_rules(
            "attributes:\n"
            "  - name: spend\n"  # 2: no field
            "    function: sum\n"
            "  - name: fine\n"  # 4
            "    function: count\n"
            "  - name: 2fast\n"  # 6: bad name and bad function
            "    function: average\n"
            "  - name: fine\n"  # 8: duplicate
            "    function: count\n",
            FILE,
        )
    found = [(p.line, p.name, p.problem.split(":")[0]) for p in caught.value.problems]
    assert found == [
        (2, "spend", "function 'sum' needs a 'field'"),
        (6, "2fast", "name"),
        (6, "2fast", "function"),
        (8, "fine", "duplicate name (first defined on line 4)"),
    ]
    assert str(caught.value).splitlines() == [str(p) for p in caught.value.problems]


def test_an_event_listed_twice_feeds_the_attribute_once() -> None:
    rules = parse_rules(
        "attributes:\n  - name: orders\n    function: count\n    event: [Order, Order]\n"
    )
    assert selected(rules, "track", "Order") == ["orders"]


def test_a_repeated_attributes_key_does_not_crash() -> None:
    # Reporting the repeated key is fine; so is taking the last one, as YAML does.
    with contextlib.suppress(RuleFileError):
        parse_rules("attributes: visits\nattributes:\n  - name: visits\n    function: count\n")


def test_a_file_that_is_not_utf8_is_a_rule_file_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("attributes: []  # café\n".encode("latin-1"))
    with pytest.raises(RuleFileError):
        load_rules(path)


# --- functions: the registry is what rule files may use ---------------------------------------

BUILT_IN = [
    "sum",
    "count",
    "min",
    "max",
    "most_recent",
    "first",
    "avg",
    "list",
    "unique_count",
    "most_frequent",
]


def test_the_registry_is_what_specs_rules_and_derived_accept() -> None:
    assert list(FUNCTIONS)[: len(BUILT_IN)] == BUILT_IN
    assert set(RESULT_TYPES) == set(FUNCTIONS)
    for function, kind in FUNCTIONS.items():
        spec = AttributeSpec(
            name="a", function=function, field="properties.x" if kind.needs_field else None
        )
        aggregator = aggregator_for(spec)
        assert type(aggregator) is kind
        assert aggregator.function == function
        assert aggregator is aggregator_for(spec)  # no options: one shared instance
        assert RESULT_TYPES[function] == kind.result_type
        assert state_key(spec) == f"a/{aggregator.shape}"
        assert aggregator.shape.startswith(function)
        assert cel_value(function)(1) == (1.0 if kind.as_double else 1)
    assert not aggregator_for(AttributeSpec(name="a", function="count")).needs_field
    listed = ", ".join(repr(name) for name in FUNCTIONS)
    with pytest.raises(pydantic.ValidationError) as caught:
        AttributeSpec(name="a", function="median")
    (error,) = caught.value.errors()
    assert error["loc"] == ("function",)
    assert error["msg"] == f"Value error, Input should be {listed} or 'derived'"


@pytest.mark.parametrize("function", [5, None, ["sum"], {"sum": 1}])
def test_a_function_that_is_no_name_lists_the_functions(function: Any) -> None:
    problem = only_problem(
        rule_file(f"  - name: x\n    function: {orjson.dumps(function).decode()}\n")
    )
    assert problem.problem.startswith("function: Input should be 'sum', 'count'")


def test_state_keys_are_the_shapes_they_were() -> None:
    """Stored states are found by these keys: a new spelling would drop every state."""
    keys = {
        "a": "a/sum",
        "b": "b/list:10",
        "c": "c/list:5:distinct",
        "d": "d/list:3",
        "e": "e/unique_count:100",
        "f": "f/most_frequent:7@30days",
        "g": "g/count@1months/calendar",
        "h": "h/most_frequent",
    }
    rules = parse_rules(
        rule_file(
            "  - {name: a, function: sum, field: properties.x}\n",
            "  - {name: b, function: list, field: properties.x, distinct: false}\n",
            "  - {name: c, function: list, field: properties.x, size: 5, distinct: true}\n",
            "  - {name: d, function: list, field: properties.x, size: 3}\n",
            "  - {name: e, function: unique_count, field: properties.x, max_values: 100}\n",
            "  - {name: f, function: most_frequent, field: properties.x, max_values: 7,\n"
            "     lookback: {count: 30, unit: days}}\n",
            "  - {name: g, function: count, lookback: {count: 1, unit: months}, calendar: true}\n",
            "  - {name: h, function: most_frequent, field: properties.x}\n",
        )
    )
    assert {attribute.name: attribute.key for attribute in rules.attributes} == keys


class Largest(Aggregator):
    """A function of the tests' own: the `size` largest numbers, largest first.
    State: the numbers, ascending, at most `size` of them."""

    function = "largest"
    result_type = list_of(DYN)
    options = ("size",)

    def __init__(self, size: int = 3) -> None:
        self.size = size

    @property
    def shape(self) -> str:
        return f"largest:{self.size}"

    def initial(self) -> State:
        return []

    def add(self, state: State, value: Any, ts: int, mid: str) -> State:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Rejected(f"expected an int, got {value!r}")
        bisect.insort(state, value)
        del state[: -self.size]
        return state

    def merge(self, a: State, b: State) -> State:
        return sorted(a + b)[-self.size :]

    def result(self, state: State) -> Any:
        return state[::-1]


@pytest.fixture
def largest() -> Iterator[type[Aggregator]]:
    """`Largest` registered for one test, and forgotten after it."""
    register(Largest)
    try:
        yield Largest
    finally:
        unregister("largest")


LARGEST_RULES = """\
attributes:
  - {name: top, function: largest, field: properties.n}
  - {name: top_two_this_week, function: largest, field: properties.n, size: 2,
     lookback: {count: 7, unit: days}}
  - {name: many, function: derived, expression: size(top) >= 3}
"""
DAY = 86_400_000
NOW = 946_684_800_000 + 30 * DAY


def test_a_registered_class_is_a_function_rule_files_can_use(largest: type[Aggregator]) -> None:
    """Registering is the only edit: specs, rules (options, state key, windows) and
    derived (its CEL type) take it from the registry."""
    rules = parse_rules(LARGEST_RULES)
    top, top_two = rules.attributes
    assert (type(top.aggregator), type(top_two.window.inner if top_two.window else None)) == (
        largest,
        largest,
    )
    assert [top.key, top_two.key] == ["top/largest:3", "top_two_this_week/largest:2@7days"]
    state = ProfileState(id="u-1")
    for offset, (n, days_ago) in enumerate([(5, 1), (1, 2), (9, 20), (7, 3), ("x", 1)]):
        body = {
            "type": "track",
            "event": "Pick",
            "userId": "u-1",
            "messageId": f"m-{offset}",
            "properties": {"n": n},
        }
        apply_event(
            state,
            decode_event(orjson.dumps(body)),
            ts=NOW - days_ago * DAY,
            rules=rules,
            source="events/0",
            offset=offset,
            now=NOW,
        )
    assert compute_attributes(state, rules, NOW) == {
        "top": [9, 7, 5],
        "top_two_this_week": [7, 5],  # 9 is 20 days old
        "many": True,
    }
    assert set(state.attributes) == {"top/largest:3", "top_two_this_week/largest:2@7days"}


def test_a_registered_function_is_checked_like_the_others(largest: type[Aggregator]) -> None:
    found = problems(
        rule_file(
            "  - {name: a, function: largest}\n",  # 2: needs a field
            "  - {name: b, function: count, size: 3}\n",  # 3: the option is not count's
            "  - {name: c, function: largest, field: properties.n, max_values: 3}\n",
            "  - {name: d, function: largest, field: properties.n, size: 0}\n",
            "  - {name: e, function: largest, field: properties.n}\n",
            "  - {name: f, function: derived, expression: e + 1}\n",  # 7: a list plus an int
        )
    )
    assert [(problem.line, problem.problem) for problem in found] == [
        (2, "function 'largest' needs a 'field'"),
        (3, "'size' applies to functions 'list' and 'largest', not 'count'"),
        (4, "'max_values' applies to functions 'unique_count' and 'most_frequent', not 'largest'"),
        (5, "size: Input should be greater than or equal to 1"),
        (7, found[-1].problem),
    ]
    assert found[-1].problem.startswith("expression: ")


def test_an_unregistered_function_is_unknown_again() -> None:
    register(Largest)
    try:
        assert parse_rules(LARGEST_RULES).attributes
    finally:
        unregister("largest")
    assert "largest" not in FUNCTIONS
    found = problems(LARGEST_RULES)
    assert [problem.line for problem in found] == [2, 3, 5]  # the derived one reads them
    assert found[0].problem.startswith("function: Input should be 'sum'")
    assert "'largest'" not in found[0].problem


def test_list_options() -> None:
    rules = parse_rules(
        "attributes:\n"
        "  - name: recent\n"
        "    function: list\n"
        "    field: properties.sku\n"
        "  - name: recent_distinct\n"
        "    function: list\n"
        "    field: properties.sku\n"
        "    size: 3\n"
        "    distinct: true\n"
    )
    default, distinct = (attribute.aggregator for attribute in rules.attributes)
    assert isinstance(default, RecentValues)
    assert (default.size, default.distinct) == (10, False)
    assert isinstance(distinct, RecentValues)
    assert (distinct.size, distinct.distinct) == (3, True)


def test_list_options_on_another_function_or_out_of_range_are_errors() -> None:
    found = problems(
        "attributes:\n"
        "  - name: total\n"
        "    function: sum\n"
        "    field: properties.revenue\n"
        "    size: 3\n"
        "  - name: recent\n"
        "    function: list\n"
        "    field: properties.sku\n"
        "    size: 0\n"
    )
    assert [(p.line, p.name) for p in found] == [(2, "total"), (6, "recent")]
    assert found[0].problem == "'size' applies to function 'list', not 'sum'"
    assert found[1].problem.startswith("size:")


def test_misplaced_options_are_named_with_the_functions_that_take_them() -> None:
    found = problems(
        rule_file(
            "  - {name: a, function: sum, field: properties.x, size: 3, distinct: true}\n",
            "  - {name: b, function: list, field: properties.x, max_values: 3}\n",
            "  - {name: c, function: derived, expression: '1', size: 2, max_values: 3}\n",
            "  - {name: d, function: sum, field: properties.x, distinct: false}\n",  # fine
        )
    )
    assert [(problem.line, problem.problem) for problem in found] == [
        (2, "'size' and 'distinct' apply to function 'list', not 'sum'"),
        (3, "'max_values' applies to functions 'unique_count' and 'most_frequent', not 'list'"),
        (
            4,
            "'size' applies to function 'list', not 'derived'; "
            "'max_values' applies to functions 'unique_count' and 'most_frequent', not 'derived'",
        ),
    ]


def test_max_values_caps_unique_count_and_most_frequent() -> None:
    rules = parse_rules(
        rule_file(
            "  - name: cats\n    function: unique_count\n    field: properties.c\n",
            "  - name: cats_capped\n    function: unique_count\n    field: properties.c\n"
            "    max_values: 100\n",
            "  - name: fav\n    function: most_frequent\n    field: properties.c\n"
            "    max_values: 10000\n    lookback: {count: 7, unit: days}\n",
        )
    )
    cats, cats_capped, fav = rules.attributes
    assert isinstance(cats.aggregator, UniqueCount)
    assert cats.aggregator.max_values is None
    assert isinstance(cats_capped.aggregator, UniqueCount)
    assert cats_capped.aggregator.max_values == 100
    assert fav.window is not None
    assert isinstance(fav.window.inner, MostFrequent)
    assert fav.window.inner.max_values == 10_000
    # the cap decides what a state holds: changing it starts the attribute afresh
    assert [a.key for a in rules.attributes] == [
        "cats/unique_count",
        "cats_capped/unique_count:100",
        "fav/most_frequent:10000@7days",
    ]


@pytest.mark.parametrize(
    ("attribute", "problem"),
    [
        (
            "    function: list\n    max_values: 5\n",
            "'max_values' applies to functions 'unique_count' and 'most_frequent', not 'list'",
        ),
        ("    function: unique_count\n    max_values: 0\n", "max_values: Input should be greater"),
        ("    function: most_frequent\n    max_values: -3\n", "max_values: Input should be gr"),
        ("    function: unique_count\n    max_values: 10001\n", "less than or equal to 10000"),
        ("    function: unique_count\n    max_values: '100'\n", "max_values: Input should be a"),
        ("    function: unique_count\n    max_values: 1.0e2\n", "max_values: Input should be a"),
        ("    function: unique_count\n    max_values: true\n", "max_values: Input should be a"),
    ],
)
def test_bad_max_values_are_reported(attribute: str, problem: str) -> None:
    found = only_problem(rule_file("  - name: x\n    field: properties.c\n" + attribute))
    assert (found.file, found.line, found.name) == (FILE, 2, "x")
    assert problem in found.problem
    assert str(found).startswith(f"{FILE}:2: attribute 'x': ")


# --- filters, windows and derived attributes ------------------------------------------------


def rule_file(*attributes: str) -> str:
    return "attributes:\n" + "".join(attributes)


def test_where_lookback_and_derived_compile() -> None:
    rules = parse_rules(
        rule_file(
            "  - name: big\n    function: count\n    where: properties.revenue >= 100.0\n",
            "  - name: recent\n    function: count\n    lookback: {count: 2, unit: weeks}\n"
            "    calendar: true\n    allowed_lateness: {count: 3, unit: hours}\n",
            "  - name: share\n    function: derived\n    expression: double(big) / 2.0\n",
        )
    )
    big, recent = rules.attributes
    assert big.where is not None
    assert big.where.source == "properties.revenue >= 100.0"
    assert recent.window is not None
    assert recent.window.window.label == "2 weeks"
    assert recent.window.lateness == 3 * 3_600_000
    (share,) = rules.derived
    assert share.expression.names == frozenset({"big"})
    assert rules.names == ("big", "recent", "share")


def test_attributes_with_the_same_filter_share_one_compiled_filter() -> None:
    rules = parse_rules(
        rule_file(
            "  - name: a\n    function: count\n    where: properties.x == 1\n",
            "  - name: b\n    function: sum\n    field: properties.y\n"
            "    where: properties.x == 1\n",
        )
    )
    a, b = rules.attributes
    assert a.where is b.where


@pytest.mark.parametrize(
    ("attribute", "problem"),
    [
        ("    function: count\n    where: properties.x +\n", "where: unexpected end of input"),
        ("    function: count\n    where: 1 + 2\n", "where: expected a bool expression, got int"),
        (
            "    function: count\n    where: propertes.x == 1\n",
            "where: unknown variable 'propertes'",
        ),
        ("    function: count\n    where: '\"a\" + 1 == 2'\n", "where: no matching overload"),
        (
            "    function: count\n    lookback: {count: 400, unit: days}\n",
            "lookback: 400 days is out of range: at most 366 days",
        ),
        ("    function: count\n    lookback: {count: 0, unit: days}\n", "lookback.count:"),
        ("    function: count\n    lookback: {count: 3, unit: years}\n", "lookback.unit:"),
        ("    function: count\n    lookback: {count: 3}\n", "lookback.unit: Field required"),
        (
            "    function: count\n    calendar: true\n",
            "'calendar' and 'allowed_lateness' need a 'lookback' window",
        ),
        (
            "    function: count\n    lookback: {count: 3, unit: days}\n"
            "    allowed_lateness: {count: 1, unit: months}\n",
            "allowed_lateness: use minutes, hours, days or weeks",
        ),
        ("    function: derived\n", "function 'derived' needs an 'expression'"),
        (
            "    function: derived\n    expression: '1'\n    event: Order\n",
            "a derived attribute reads no events: remove 'event'",
        ),
        (
            "    function: count\n    expression: '1'\n",
            "'expression' applies to function 'derived'",
        ),
        ("    function: derived\n    expression: nope + 1\n", "unknown variable 'nope'"),
        ("    function: derived\n    expression: x\n", "a derived attribute cannot read itself"),
        ("    function: derived\n    expression: 'size(1)'\n", "expression: "),
        (  # RE2, which runs every pattern in linear time, has no backreferences
            "    function: count\n    where: properties.x.matches(r'(a+)\\1')\n",
            "where: invalid regular expression '(a+)\\\\1': invalid escape sequence: \\1 "
            "(backreferences are not supported; ",
        ),
        (
            "    function: derived\n    expression: \"'abc'.matches('a(?=b)')\"\n",
            "invalid perl operator: (?= (lookahead is not supported; ",
        ),
    ],
)
def test_bad_filters_windows_and_expressions_are_reported(attribute: str, problem: str) -> None:
    found = only_problem(rule_file("  - name: x\n" + attribute))
    assert (found.file, found.line, found.name) == (FILE, 2, "x")
    assert problem in found.problem


def test_a_derived_expression_is_type_checked_against_the_attributes_it_reads() -> None:
    found = only_problem(
        rule_file(
            "  - name: orders\n    function: count\n",
            '  - name: label\n    function: derived\n    expression: orders + "x"\n',
        )
    )
    assert (found.line, found.name) == (4, "label")
    assert "no matching overload for '+' on int and string" in found.problem


def test_a_cycle_of_derived_attributes_is_reported_on_each_member() -> None:
    found = problems(
        rule_file(
            "  - name: a\n    function: derived\n    expression: b + 1\n",
            "  - name: b\n    function: derived\n    expression: a * 2\n",
            "  - name: c\n    function: derived\n    expression: a + 1\n",
            "  - name: ok\n    function: count\n",
        )
    )
    assert [(p.line, p.name) for p in found] == [(2, "a"), (5, "b")]
    assert all(p.problem == "derived attributes form a cycle: a -> b -> a" for p in found)


def test_derived_attributes_may_come_before_what_they_read() -> None:
    rules = parse_rules(
        rule_file(
            "  - name: ratio\n    function: derived\n    expression: double(n) / total\n",
            "  - name: total\n    function: derived\n    expression: double(n) + 1.0\n",
            "  - name: n\n    function: count\n",
        )
    )
    assert [derived.name for derived in rules.derived] == ["total", "ratio"]
    assert rules.names == ("ratio", "total", "n")


# --- entities: each rule is for one entity's profiles ----------------------------------

TWO_ENTITIES = """\
attributes:
  - name: spend
    function: sum
    field: properties.revenue
  - name: account_spend
    entity: account
    function: sum
    field: properties.revenue
    lookback: {count: 7, unit: days}
  - name: big_spender
    function: derived
    expression: spend > 100.0
  - name: big_account
    entity: account
    function: derived
    expression: account_spend > 1000.0
"""


def test_each_entity_gets_its_own_rules() -> None:
    rules = parse_rules(TWO_ENTITIES)
    assert rules.entities == ("user", "account")
    user, account = rules.of("user"), rules.of("account")
    assert user.names == ("spend", "big_spender")
    assert [attribute.name for attribute in user.attributes] == ["spend"]
    assert user.windowed == ()
    assert account.names == ("account_spend", "big_account")
    assert [attribute.name for attribute in account.windowed] == ["account_spend"]
    assert [d.name for d in account.derived] == ["big_account"]
    assert selected(account, "track", "Order Completed") == ["account_spend"]
    assert rules.of("household").names == ()  # an entity no rule is for


def test_rules_of_one_entity_are_the_whole_set() -> None:
    rules = parse_rules("attributes:\n  - name: visits\n    function: count\n")
    assert rules.of("user") is rules
    assert rules.of("account").names == ()


def test_a_derived_attribute_reads_only_its_own_entity() -> None:
    problem = only_problem(
        "attributes:\n"
        "  - name: spend\n"
        "    function: sum\n"
        "    field: properties.revenue\n"
        "  - name: rich_account\n"  # 5
        "    entity: account\n"
        "    function: derived\n"
        "    expression: spend > 100.0\n"
    )
    assert (problem.line, problem.name) == (5, "rich_account")
    assert "spend" in problem.problem


def test_a_rule_for_an_undeclared_entity_fails_at_load(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        TWO_ENTITIES.replace(
            "entity: account\n    function: derived", "entity: acount\n    function: derived"
        ),
        encoding="utf-8",
    )
    with pytest.raises(RuleFileError) as caught:
        load_rules(path, entities=["user", "account"])
    assert str(caught.value) == (
        f"{path}:13: attribute 'big_account': entity 'acount' is not declared (user, account)"
    )


def test_names_are_unique_across_entities() -> None:
    problem = only_problem(
        "attributes:\n"
        "  - name: spend\n"
        "    function: count\n"
        "  - name: spend\n"
        "    entity: account\n"
        "    function: count\n"
    )
    assert (problem.line, problem.name) == (4, "spend")
    assert problem.problem.startswith("duplicate name")
