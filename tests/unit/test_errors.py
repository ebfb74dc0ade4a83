"""One root for traitflow's exceptions (`attributes.errors`), a tree that says how they
hang together, and rule problems that are told apart from traitflow's own bugs."""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import pytest

import attributes.errors
from attributes import rules
from attributes.errors import RuleError, TraitflowError
from attributes.expressions import INT, EvaluationError, compile_expression
from attributes.expressions.regex import Pattern
from attributes.paths import compile_path
from attributes.rules import RuleFileError, parse_rules
from tests.unit.conftest import ROOT

#: exception classes of the packages that deliberately do not derive from the root
#: ("module.Class" -> why); none so far
OUTSIDE_THE_ROOT: dict[str, str] = {}

#: the packages traitflow installs
PACKAGES = ("attributes", "traitflow", "streams", "api")
#: modules not imported to find their classes: running them is what importing does
NOT_IMPORTED = {"traitflow.__main__"}


def modules() -> list[str]:
    """The name of every module of the packages, from their files."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined at the top of a module of the packages, by
    `module.Class`."""
    found: dict[str, type[BaseException]] = {}
    for name in modules():
        if name in NOT_IMPORTED:
            continue
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
            ):
                found[f"{name}.{value.__qualname__}"] = value
    return found


def test_the_walk_finds_the_exceptions_of_every_package() -> None:
    packages = {name.split(".")[0] for name in exception_classes()}
    assert packages == set(PACKAGES)


def test_every_exception_class_derives_from_the_root() -> None:
    outside = [
        name
        for name, cls in exception_classes().items()
        if not issubclass(cls, TraitflowError) and name not in OUTSIDE_THE_ROOT
    ]
    assert outside == [], "derive these from attributes.errors.TraitflowError (or a group)"


def drawn_tree() -> dict[str, str | None]:
    """The tree in `attributes.errors`'s docstring: each class name -> its parent's."""
    doc = attributes.errors.__doc__
    assert doc is not None
    parents: dict[str, str | None] = {}
    path: list[str] = []
    for line in doc.splitlines():
        if re.fullmatch(r"    TraitflowError", line):
            parents["TraitflowError"] = None
            path = ["TraitflowError"]
            continue
        node = re.match(r"    ((?:[│ ]   )*)[├└]── (\w+)", line)
        if node is None:
            continue
        depth = len(node[1]) // 4 + 1
        path = [*path[:depth], node[2]]
        parents[node[2]] = path[depth - 1]
    return parents


def test_the_drawn_tree_is_the_classes_and_their_bases() -> None:
    tree = drawn_tree()
    classes = {
        cls.__name__: cls
        for name, cls in exception_classes().items()
        if name not in OUTSIDE_THE_ROOT
    }
    assert sorted(tree) == sorted(classes), "the tree in attributes/errors.py is out of date"
    for name, parent in tree.items():
        if parent is not None:
            assert issubclass(classes[name], classes[parent]), f"{name} is not a {parent}"


def test_the_tree_reader_sees_nesting() -> None:
    tree = drawn_tree()
    assert tree["RuleFileError"] == "RuleError"
    assert tree["OutsideWindow"] == "Rejected"
    assert tree["RespTimeoutError"] == "RespConnectionError"
    assert tree["ApiError"] == "TraitflowError"


# --- rule problems are RuleErrors ---------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: compile_path("propertes.revenue"),
        lambda: compile_expression("1 +", {}),
        lambda: Pattern("(?=lookahead)"),
    ],
    ids=["path", "expression", "pattern"],
)
def test_what_a_user_writes_wrong_is_a_rule_error(make: Any) -> None:
    with pytest.raises(RuleError):
        make()


def test_an_expression_failing_on_its_data_is_no_rule_error() -> None:
    with pytest.raises(EvaluationError) as caught:
        compile_expression("1 / x", {"x": INT}).evaluate({"x": 0})
    assert not isinstance(caught.value, RuleError)


FILE = "rules.yaml"


@pytest.mark.parametrize(
    ("attribute", "problem"),
    [
        ("{name: ltv, function: sum}", "function 'sum' needs a 'field'"),
        ("{name: ltv, function: sum, field: propertes.revenue}", "must start with one of"),
        ("{name: ltv, function: count, where: 'event =='}", "where: "),
        ("{name: ltv, function: count, where: \"event.matches('(?=x)')\"}", "lookahead"),
        ("{name: ltv, function: derived, expression: 'ltv + 1'}", "cannot read itself"),
        ("{name: ltv, function: derived, expression: 'nothing + 1'}", "expression: "),
        ("{name: ltv, function: summ, field: properties.revenue}", "function: "),
    ],
)
def test_a_rule_problem_is_a_rule_error_naming_file_line_rule_and_problem(
    attribute: str, problem: str
) -> None:
    text = f"attributes:\n  - {{name: fine, function: count}}\n  - {attribute}\n"
    with pytest.raises(RuleError) as caught:
        parse_rules(text, FILE)
    assert isinstance(caught.value, RuleFileError)
    (found,) = caught.value.problems
    assert (found.file, found.line, found.name) == (FILE, 3, "ltv")
    assert problem in found.problem
    assert str(caught.value).startswith(f"{FILE}:3: attribute 'ltv': ")


def test_a_cycle_is_a_rule_error_on_each_member() -> None:
    text = (
        "attributes:\n"
        "  - {name: a, function: derived, expression: 'b + 1'}\n"
        "  - {name: b, function: derived, expression: 'a + 1'}\n"
    )
    with pytest.raises(RuleError) as caught:
        parse_rules(text, FILE)
    assert isinstance(caught.value, RuleFileError)
    assert [(p.line, p.name) for p in caught.value.problems] == [(2, "a"), (3, "b")]
    assert all("form a cycle" in p.problem for p in caught.value.problems)


# --- a bug is no rule problem -------------------------------------------------------------

#: a rule that goes through every step of compiling an attribute, and a derived one
EVERY_STEP = """\
attributes:
  - name: big_orders
    function: sum
    field: properties.revenue
    where: properties.revenue > 100.0
    lookback: {count: 30, unit: days}
  - name: twice
    function: derived
    expression: big_orders * 2.0
"""


def test_the_rule_that_meets_the_bugs_is_valid() -> None:
    assert parse_rules(EVERY_STEP, FILE).names == ("big_orders", "twice")


@pytest.mark.parametrize(
    "step", ["compile_path", "compile_filter", "window_for", "compile_derived"]
)
@pytest.mark.parametrize("bug", [ValueError, TypeError, KeyError])
def test_a_bug_while_compiling_rules_is_raised_as_it_is_not_as_a_rule_problem(
    monkeypatch: pytest.MonkeyPatch, step: str, bug: type[Exception]
) -> None:
    """A ValueError from traitflow's own code once became `file:line: attribute: ...`,
    a problem for the user to fix in a file that has none."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise bug("a bug in traitflow")

    monkeypatch.setattr(rules, step, broken)
    with pytest.raises(bug, match="a bug in traitflow") as caught:
        parse_rules(EVERY_STEP, FILE)
    assert type(caught.value) is bug  # not a RuleFileError, which once was a ValueError
