"""Differential tests: our compiled expressions against the reference CEL implementation.

The reference is the `cel` package (common-expression-language 0.10.0, on cel-rust).
Our result must equal `cel.evaluate(source, activation)` (same value and Python type;
NaN equals NaN), or both must fail, for random JSON-like activations and
- random well-typed expressions, nested a few levels deep (`Generator`);
- every operator and function once, on operands from small pools of every kind,
  with the static types known or hidden by dyn() (`operations`);
- each macro over small lists and maps (`macro_calls`).

Where the reference deviates from the CEL spec, the generator leaves that shape out;
each exclusion is marked "Excluded:" below and pinned by `test_reference_deviations`,
which asserts our (spec) answer and the reference's different one, so an exclusion
cannot outlive its reason unnoticed. (Map iteration order, which CEL leaves
unspecified and the reference randomises, cannot be pinned.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import cel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attributes.expressions import (
    BOOL,
    DOUBLE,
    DYN,
    INT,
    STRING,
    EvaluationError,
    Expression,
    ExpressionError,
    compile_expression,
    list_of,
    map_of,
)

INT_MAX, INT_MIN = 2**63 - 1, -(2**63)

# Excluded: ints beyond +-2**53 meeting doubles. The reference compares an int with a
# double by converting the int to a double (`9007199254740993 == 9007199254740992.0`
# is true there); CEL compares them exactly, on one number line. So every int a
# generated expression reads is within +-2**53, and int arithmetic, whose results
# may be larger, only meets ints; only "safe" expressions (no int arithmetic) are
# compared with doubles or dyn values, or put into lists.
SAFE_INTS = st.one_of(st.integers(-3, 3), st.integers(-(2**53), 2**53))  # small: x / 0, x % 1
KEYS = ("a", "b", "c")
# Excluded: non-ASCII strings. The reference's size() counts UTF-8 bytes, CEL counts
# code points; and its `\d` in patterns matches any Unicode digit, RE2's only 0-9.
ALPHABET = "abAB01 .-+e_"
STRINGS = st.one_of(
    st.text(ALPHABET, max_size=5),
    st.sampled_from(["", "true", "1e3", "-0", "inf", "nan", "12", str(INT_MAX), str(2**63)]),
)
PATTERNS = (
    *("a", "^a", "b$", "a.b", "[ab]+", "^$", "a|B", "(ab)*", r"\d", "^[0-9]+$", r"\."),
    # RE2 syntax that Python's `re` reads differently or refuses
    *(r"\pL+", "(?i)ab", r"a\z", "[[:digit:]]", r"\bab\b", r"\w+\s"),
)

VARIABLES = {
    "i": INT,
    "j": INT,
    "d": DOUBLE,
    "s": STRING,
    "b": BOOL,
    "xs": list_of(INT),
    "props": map_of(STRING, DYN),
}

JSON = st.recursive(
    st.none() | st.booleans() | SAFE_INTS | st.floats(allow_nan=False) | STRINGS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS), children, max_size=3)
    ),
    max_leaves=6,
)
ACTIVATIONS = st.fixed_dictionaries(
    {
        "i": SAFE_INTS,
        "j": SAFE_INTS,
        "d": st.floats(),
        "s": STRINGS,
        "b": st.booleans(),
        "xs": st.lists(SAFE_INTS, max_size=4),
        "props": st.fixed_dictionaries({"a": JSON, "b": JSON}, optional={"c": JSON}),
    }
)

Draw = Callable[[st.SearchStrategy[Any]], Any]
T = TypeVar("T")


class Generator:
    """Random CEL source of a given kind, well-typed for `VARIABLES`, avoiding exclusions.

    Each method returns source whose static type is its kind (or `dyn`); composites
    are parenthesised, so the intended structure is the parsed one (precedence is
    tested on fixed examples). `safe` expressions never evaluate to an int beyond
    +-2**53 (see SAFE_INTS).
    """

    def __init__(self, draw: Draw) -> None:
        self._draw = draw
        self._macro_variables: list[str] = []

    def pick(self, *options: T) -> T:
        choice: T = self._draw(st.sampled_from(options))
        return choice

    def weighted(self, **weights: int) -> str:
        """One of the names, drawn with the given relative weights."""
        return self.pick(*(name for name, weight in weights.items() for _ in range(weight)))

    def chance(self, probability: float) -> bool:
        return bool(self._draw(st.floats(0, 1)) < probability)

    def expression(self, depth: int) -> str:
        """Any kind; bools, what filters are, most often."""
        kinds = [self.int_, self.int_, self.double, self.double, self.string, self.list_]
        kinds += [self.bool_] * 4 + [self.map_, self.dyn]
        return self.pick(*kinds)(depth)

    def safe(self, depth: int) -> str:
        """Any kind, but no int arithmetic: fit to compare with doubles and dyn values."""
        kinds = (
            self.int_atom,
            self.double,
            self.string,
            self.bool_,
            self.list_,
            self.map_,
            self.dyn,
        )
        return self.pick(*kinds)(depth)

    def scalar(self, depth: int) -> str:
        """A safe expression that is ordered with dyn values: no list or map."""
        return self.pick(self.int_atom, self.double, self.string, self.bool_, self.dyn)(depth)

    def operand(self, kind: Callable[[int], str], depth: int) -> str:
        """An operand of `kind`, or sometimes of `dyn`."""
        return self.dyn(depth) if self.chance(0.25) else kind(depth)

    def binary(self, kind: Callable[[int], str], operators: tuple[str, ...], depth: int) -> str:
        """`kind op kind`, with at most one dyn side, so the result is of `kind` when valid."""
        sides = [kind(depth - 1), self.operand(kind, depth - 1)]
        if self.chance(0.5):
            sides.reverse()
        return f"({sides[0]} {self.pick(*operators)} {sides[1]})"

    def conditional(self, kind: Callable[[int], str], depth: int) -> str:
        return f"({self.bool_(depth - 1)} ? {kind(depth - 1)} : {kind(depth - 1)})"

    # --- kinds ---------------------------------------------------------------------------

    def int_atom(self, depth: int = 0) -> str:
        literal = self._draw(SAFE_INTS)
        if literal >= 0 and self.chance(0.2):
            return hex(literal)
        return self.pick("i", "j", str(literal))

    def int_(self, depth: int) -> str:
        if depth <= 0 or self.chance(0.3):
            # Excluded: negating a non-atom. The reference's -x wraps for the int
            # minimum and negates bools (`-true` is false); CEL makes both errors.
            return self.pick(self.int_atom(), f"-{self.int_atom()}")
        production = self.weighted(arithmetic=6, big=1, size=1, int=1, index=1, conditional=1)
        if production == "arithmetic":
            return self.binary(self.int_, ("+", "-", "*", "/", "%"), depth)
        if production == "big":
            return str(self.pick(INT_MAX, INT_MIN, -INT_MAX, 2**62, -(2**62)))
        if production == "size":
            return f"size({self.pick(self.string, self.list_, self.map_)(depth - 1)})"
        if production == "int":
            return f"int({self.pick(self.double, self.string)(depth - 1)})"
        if production == "index":
            return f"xs[{self.int_atom()}]"
        return self.conditional(self.int_, depth)

    def double(self, depth: int) -> str:
        if depth <= 0 or self.chance(0.3):
            literal = repr(self._draw(st.floats(allow_nan=False, allow_infinity=False)))
            return self.pick("d", literal, f"-{self.pick('d', literal.lstrip('-'))}")
        production = self.weighted(arithmetic=4, double=1, conditional=1)
        if production == "arithmetic":
            return self.binary(self.double, ("+", "-", "*", "/"), depth)
        if production == "double":
            # int() of a double may exceed 2**53, but double() of it is exact again
            return f"double({self.pick(self.int_, self.string)(depth - 1)})"
        return self.conditional(self.double, depth)

    def string(self, depth: int) -> str:
        if depth <= 0 or self.chance(0.3):
            text = self._draw(STRINGS).replace("\\", "\\\\").replace('"', '\\"')
            return self.pick("s", f'"{text}"')
        production = self.pick("concatenation", "string", "conditional")
        if production == "concatenation":
            return self.binary(self.string, ("+",), depth)
        if production == "string":
            # Excluded: string(bool); the reference has no such overload.
            return f"string({self.pick(self.int_, self.double, self.string)(depth - 1)})"
        return self.conditional(self.string, depth)

    def bool_(self, depth: int) -> str:
        if depth <= 0 or self.chance(0.2):
            return self.pick("b", "true", "false")
        production = self.weighted(
            comparison=4, logic=4, not_=1, has=1, in_=2, text=2, quantifier=2, conditional=1
        )
        if production == "comparison":
            return self.comparison(depth)
        if production == "logic":
            return self.binary(self.bool_, ("&&", "||"), depth)
        if production == "not_":
            # Excluded: `!!x` unparenthesised. The reference's parser, like cel-go's,
            # drops pairs of `!` (so `!!1` is 1); CEL's `!` takes a bool.
            return f"!({self.operand(self.bool_, depth - 1)})"
        if production == "has":
            return f"has(props.{self.pick(*KEYS)})"
        if production == "in_":
            return self.membership(depth)
        if production == "text":
            return self.text_test(depth)
        if production == "quantifier":
            return self.quantifier(depth)
        return self.conditional(self.bool_, depth)

    def list_(self, depth: int) -> str:
        if depth <= 0 or self.chance(0.3):
            if self.chance(0.3):
                return "xs"
            items = [self.safe(depth - 1) for _ in range(self._draw(st.integers(0, 3)))]
            return f"[{', '.join(items)}]"
        # Excluded: map() and filter() over maps. CEL leaves a map's order unspecified;
        # the reference iterates in hash order, ours in insertion order. So these
        # macros iterate over lists only.
        production = self.pick("concatenation", "map", "filter", "conditional")
        if production == "concatenation":
            # Excluded: `list + map`, which the reference takes as the list followed by
            # the map's keys. A dyn operand, which may be a map, goes on the left.
            return f"({self.operand(self.list_, depth - 1)} + {self.list_(depth - 1)})"
        if production == "conditional":
            return self.conditional(self.list_, depth)
        variable, iterated = self.pick("x", "y"), self.list_(depth - 1)
        with self.bound(variable):
            if production == "filter":
                return f"{iterated}.filter({variable}, {self.bool_(depth - 1)})"
            if self.chance(0.5):
                return f"{iterated}.map({variable}, {self.safe(depth - 1)})"
            return f"{iterated}.map({variable}, {self.bool_(depth - 1)}, {self.safe(depth - 1)})"

    def map_(self, depth: int) -> str:
        if depth <= 0 or self.chance(0.5):
            if self.chance(0.3):
                return "props"
            # Excluded: repeated keys (the reference keeps the last value; CEL makes it
            # an error) and bool keys (refused here, as Python's True == 1): keys are
            # distinct string literals.
            keys = self._draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=3))
            return "{" + ", ".join(f'"{key}": {self.safe(depth - 1)}' for key in keys) + "}"
        return self.conditional(self.map_, depth)

    def dyn(self, depth: int) -> str:
        """A dyn value read from data: a JSON property, a list item, a macro variable."""
        atoms = [f"props.{self.pick(*KEYS)}", f'props["{self.pick(*KEYS)}"]']
        atoms += [f"dyn({variable})" for variable in self._macro_variables]
        if depth <= 0 or self.chance(0.5):
            return self.pick(*atoms)
        production = self.pick("select", "index", "dyn", "conditional")
        if production == "select":
            return f"{self.dyn(depth - 1)}.{self.pick(*KEYS)}"
        if production == "index":
            # Excluded: double indexes and keys. CEL finds `[7, 8][0.0]` and the int key
            # 1 for `m[1.0]`; the reference refuses doubles there. Indexes are ints,
            # keys strings.
            index, key = self.int_atom(), f'"{self.pick(*KEYS)}"'
            container = self.pick("dyn", "list", "map")
            if container == "list":
                return f"dyn({self.list_(depth - 1)}[{index}])"  # xs[0] is an int, not dyn
            if container == "map":
                return f"dyn({self.map_(depth - 1)}[{key}])"
            return f"{self.dyn(depth - 1)}[{self.pick(index, key)}]"
        if production == "dyn":
            return f"dyn({self.safe(depth - 1)})"
        return self.conditional(self.dyn, depth)

    # --- boolean productions -------------------------------------------------------------

    def comparison(self, depth: int) -> str:
        operator = self.pick("==", "!=", "<", "<=", ">", ">=")
        pairs: list[tuple[Callable[[int], str], Callable[[int], str]]] = [
            (self.int_, self.int_),
            (self.int_atom, self.double),
            (self.double, self.double),
            (self.string, self.string),
            (self.bool_, self.bool_),
            (self.dyn, self.scalar),
        ]
        if operator in ("==", "!="):
            pairs += [(self.list_, self.list_), (self.map_, self.map_), (self.dyn, self.safe)]
        first, second = self.pick(*pairs)
        sides = [first(depth - 1), second(depth - 1)]
        if self.chance(0.5):
            sides.reverse()
        return f"({sides[0]} {operator} {sides[1]})"

    def membership(self, depth: int) -> str:
        # Excluded: double map keys (see dyn). A needle that may meet a map's keys is
        # a string or an int; dyn() keeps the checker from refusing `"a" in [1]`.
        if self.chance(0.5):
            return f"(dyn({self.safe(depth - 1)}) in {self.list_(depth - 1)})"
        needle = self.pick(self.string(depth - 1), self.int_atom())
        container = self.pick(self.map_, self.dyn)(depth - 1)
        return f"(dyn({needle}) in {container})"

    def text_test(self, depth: int) -> str:
        text = self.operand(self.string, depth - 1)
        method = self.pick("contains", "startsWith", "endsWith", "matches")
        if method == "matches":
            # Excluded: the global matches(s, re), which the reference lacks.
            return f"{text}.matches(r'{self.pick(*PATTERNS)}')"
        return f"{text}.{method}({self.operand(self.string, depth - 1)})"

    def quantifier(self, depth: int) -> str:
        variable = self.pick("x", "y")
        iterated = self.pick(self.list_, self.map_, self.dyn)(depth - 1)
        macro = self.pick("all", "exists", "exists_one")
        with self.bound(variable):
            if macro == "exists_one":
                return f"{iterated}.exists_one({variable}, {self.bool_(depth - 1)})"
            return f"{iterated}.{macro}({variable}, {self.total_predicate(variable, depth - 1)})"

    def total_predicate(self, variable: str, depth: int) -> str:
        """A predicate that cannot fail.

        Excluded: errors in all() and exists() predicates. CEL's all/exists absorb an
        element's error when another element decides the result, as && and || do;
        the reference fails on the first error.
        """
        if depth <= 0 or self.chance(0.4):
            other = self.pick("i", "d", "s", "b", "null", self.int_atom(), self.string(0))
            return f"(dyn({variable}) {self.pick('==', '!=')} {other})"
        if self.chance(0.3):
            return f"!({self.total_predicate(variable, depth - 1)})"
        first = self.total_predicate(variable, depth - 1)
        second = self.total_predicate(variable, depth - 1)
        return f"({first} {self.pick('&&', '||')} {second})"

    def bound(self, variable: str) -> _Binding:
        return _Binding(self._macro_variables, variable)


@dataclass
class _Binding:
    """Makes a macro variable usable (as a dyn atom) while generating the macro's body."""

    variables: list[str]
    variable: str

    def __enter__(self) -> None:
        self.variables.append(self.variable)

    def __exit__(self, *_: object) -> None:
        self.variables.pop()


@st.composite
def sources(draw: Draw) -> str:
    return Generator(draw).expression(depth=draw(st.integers(1, 4)))


def same(first: Any, second: Any) -> bool:
    """Equal values of the same Python type (bool is not int here); NaN is NaN."""
    if type(first) is not type(second):
        return False
    if isinstance(first, float) and math.isnan(first):
        return math.isnan(second)
    if isinstance(first, list):
        return len(first) == len(second) and all(map(same, first, second))
    if isinstance(first, dict):
        return first.keys() == second.keys() and all(same(first[k], second[k]) for k in first)
    return bool(first == second)


@dataclass(frozen=True)
class Outcome:
    value: Any = None
    error: str | None = None


def ours(source: str, activation: dict[str, Any]) -> Outcome:
    return evaluated(compile_expression(source, VARIABLES), activation)


def evaluated(expression: Expression, activation: dict[str, Any]) -> Outcome:
    try:
        return Outcome(expression.evaluate(activation))
    except EvaluationError as error:
        return Outcome(error=str(error))


def reference(source: str, activation: dict[str, Any]) -> Outcome:
    try:
        return Outcome(cel.evaluate(source, activation))
    except Exception as error:  # the reference raises ValueError, TypeError, KeyError, ...
        return Outcome(error=f"{type(error).__name__}: {error}")


def same_outcome(mine: Outcome, theirs: Outcome) -> bool:
    """The same value, or an error in both (the messages differ)."""
    if mine.error is None and theirs.error is None:
        return same(mine.value, theirs.value)
    return (mine.error is None) == (theirs.error is None)


def assert_same_outcome(source: str, activation: dict[str, Any]) -> None:
    mine, theirs = ours(source, activation), reference(source, activation)
    assert same_outcome(mine, theirs), (mine, theirs)


@settings(max_examples=300, deadline=None)
@given(source=sources(), activation=ACTIVATIONS)
def test_random_expressions_match_the_reference(source: str, activation: dict[str, Any]) -> None:
    assert_same_outcome(source, activation)


ACTIVATION: dict[str, Any] = {
    "i": 7,
    "j": -3,
    "d": 2.5,
    "s": "abc",
    "b": True,
    "xs": [1, 2, 3],
    "props": {"a": 1, "b": "x", "c": {"a": [1, 2.0, None]}},
}


@dataclass(frozen=True)
class Operand:
    source: str
    kind: str


#: A few values of each kind, chosen to meet the corner cases: 0 and -1 as divisors and
#: indexes, 1 against true and "1", NaN, empty and heterogeneous lists, int-keyed maps,
#: an operand that fails (for `&&` and `||` to absorb or pass on), and variables.
OPERANDS = tuple(
    Operand(source, kind)
    for kind, sources in {
        "int": ("0", "1", "-1"),
        "double": ("0.0", "-1.5", "(0.0 / 0.0)"),
        "string": ('""', '"1"', "s"),
        "bool": ("true", "false", "!b"),  # !b: a false known at run time only
        "null": ("null",),
        "list": ("[]", "[1, 'abc']", "[true, null]"),
        "map": ("{}", "{'abc': 1}", "{1: 'one'}"),
        "error": ("props.missing",),
    }.items()
    for source in sources
)

UNARY_OPERATIONS = ("-{}", "!{}", "size({})", "int({})", "double({})", "string({})", "{} ? 1 : 2")
BINARY_OPERATIONS = (
    *("{} + {}", "{} - {}", "{} * {}", "{} / {}", "{} % {}"),
    *("{} == {}", "{} != {}", "{} < {}", "{} <= {}", "{} > {}", "{} >= {}"),
    *("{} in {}", "{}[{}]", "{} && {}", "{} || {}"),
    *("{}.contains({})", "{}.startsWith({})", "{}.endsWith({})", "{}.matches({})"),
)


def excluded(operation: str, operands: tuple[Operand, ...]) -> bool:
    """The shapes where the reference deviates from the spec (see test_reference_deviations)."""
    kinds = [operand.kind for operand in operands]
    return (
        (operation == "-{}" and kinds == ["bool"])  # the reference negates bools
        or (operation == "string({})" and kinds == ["bool"])  # it has no string(bool)
        or (operation == "{} + {}" and kinds == ["list", "map"])  # it appends the map's keys
        or (operation == "{} in {}" and kinds[0] == "double")  # it refuses double keys
        or (operation == "{}[{}]" and kinds[1] == "double")
    )


def operation_sources() -> list[str]:
    """Every operation on every operand (pair), as written and with each operand in dyn()."""
    combinations: list[tuple[str, tuple[Operand, ...]]] = [
        (operation, (operand,)) for operation in UNARY_OPERATIONS for operand in OPERANDS
    ]
    combinations += [
        (operation, (first, second))
        for operation in BINARY_OPERATIONS
        for first in OPERANDS
        for second in OPERANDS
    ]
    sources = []
    for operation, operands in combinations:
        if not excluded(operation, operands):
            sources.append(operation.format(*(operand.source for operand in operands)))
            sources.append(operation.format(*(f"dyn({operand.source})" for operand in operands)))
    return sources


def test_every_operation_matches_the_reference() -> None:
    """Every operator and function on every kind, with static types known or hidden.

    What the checker refuses must fail in the reference too, except where CEL's
    checker is stricter than its runtime: comparing values of different types (false
    at run time) and a non-bool operand of `&&` or `||` (`0 && false` is false).
    """
    stricter = ("==", "!=", " in ", "&&", "||")
    mismatches = []
    for source in operation_sources():
        theirs = reference(source, ACTIVATION)
        try:
            expression = compile_expression(source, VARIABLES)
        except ExpressionError as error:
            if theirs.error is None and not any(operator in source for operator in stricter):
                mismatches.append(f"{source}: refused ({error}), the reference evaluates it")
            continue
        mine = evaluated(expression, ACTIVATION)
        if not same_outcome(mine, theirs):
            mismatches.append(f"{source}: {mine} but the reference {theirs}")
    assert not mismatches, "\n".join(mismatches[:20])


ITERATED = (
    *("[]", "[1, 2, 2]", "[1, 'abc', null]", "[[1], 2.0]", "xs"),
    *("{}", "{'a': 1, 'abc': 2}", "{1: 'one'}", "props"),
)


def macro_sources() -> list[str]:
    """Each macro over lists and maps, with one-operation bodies."""
    sources = []
    for macro in ("all", "exists", "exists_one", "filter", "map"):
        # map() and filter() iterate over lists only (see Generator.list_)
        maps_too = macro in ("all", "exists", "exists_one")
        # all() and exists() predicates cannot fail (see Generator.total_predicate)
        operators = ("==", "!=") if macro in ("all", "exists") else ("==", "<", "+", "/")
        for iterated in ITERATED[:5] + (ITERATED[5:] if maps_too else ()):
            for operator in operators:
                for other in OPERANDS:
                    if other.kind == "error" or (operator == "+" and other.kind == "map"):
                        continue  # an item may be a list: the reference's list + map
                    body = f"dyn(x) {operator} dyn({other.source})"
                    if macro != "map" and operator in ("+", "/"):
                        body = f"dyn({body}) == 1"
                    sources.append(f"{iterated}.{macro}(x, {body})")
    return sources


def test_every_macro_matches_the_reference() -> None:
    mismatches = []
    for source in macro_sources():
        mine, theirs = ours(source, ACTIVATION), reference(source, ACTIVATION)
        if not same_outcome(mine, theirs):
            mismatches.append(f"{source}: {mine} but the reference {theirs}")
    assert not mismatches, "\n".join(mismatches[:20])


@pytest.mark.parametrize(
    "source",
    [
        "1 + 2 * 3 - 4 / 2 % 3",
        "i - j - 1",
        "i / j * j + i % j == i",
        "-i / 2",
        "-7 % 3 + 7 % -3",
        "d * 2.0 + 1.0 / 4.0",
        "!b || b && false",
        "b && false || true",
        "1 < 2 == true",
        "i > 5 ? s + 'x' : s",
        "b ? 1 : b ? 2 : 3",
        "props.c.a[1] == 2",
        "props.a in xs && 'x' in [props.b]",
        "xs.map(x, x * i).filter(x, x % 2 == 1)",
        "xs.exists_one(x, x == 2) && xs.all(x, x > 0)",
        "{'k': xs}.k.size() + size(s) + size(props)",
        "string(d) + string(i) + string(-0.0) + string(1e21) + string(1e-7)",
        "int('-42') + int(d) + int(-d)",
        "double('1e3') + double(i) + double('.5')",
        "s.startsWith('ab') && s.endsWith('bc') && s.contains('b') && s.matches('^a.c$')",
        "has(props.c.a) && !has(props.c.z)",
        "props.c == {'a': [1.0, 2, null]}",
        "1.0 / 0.0 > 1e308 && -1.0 / 0.0 < -1e308",
        "0.0 / 0.0 < d",
        "0.0 / 0.0 == 0.0 / 0.0",
        "9223372036854775807 - 1 + 1",
        "-9223372036854775807 - 1",
        "9223372036854775807 + i",
        "-9223372036854775807 - i",
        "i * 2305843009213693952",
        "(-9223372036854775807 - 1) / (j + 2)",
        "(-9223372036854775807 - 1) % (j + 2)",
        "i / (j + 3)",
        "i % (j + 3)",
        "0x7fffffffffffffff == 9223372036854775807",
        "r'\\d' + '\\x41\\u00e9\\101'",
        r"""'\a\b\f\n\r\t\v\\\?\"\'\`' + '''it's''' + R"\n" """,
        "string(1.0 / 0.0) + string(-1.0 / 0.0) + string(0.0 / 0.0)",
    ],
)
def test_fixed_expressions_match_the_reference(source: str) -> None:
    assert_same_outcome(source, ACTIVATION)


@pytest.mark.parametrize("pattern", ["a$", "a$|^b", "(?m)a$", r"a\z", r"a\n$", "(?s)a.b", "a.b"])
@pytest.mark.parametrize("text", ["a", "a\n", "a\nb", "b\na"])
def test_patterns_over_lines_match_the_reference(pattern: str, text: str) -> None:
    """RE2's `$` is the end of the text, not also before a final newline as in Python."""
    assert_same_outcome(f"s.matches(r'{pattern}')", {**ACTIVATION, "s": text})


@pytest.mark.parametrize(
    "source",
    [
        '"a" + 1',
        "true + 1",
        "1 + 2.0",
        "1.5 % 1.0",
        "!1",
        "-s",
        "1 && true",
        "1 ? 2 : 3",
        "size(1)",
        "int(b)",
        "s < 1",
        "[1] < [2]",
        "s in s",
        "s[0]",
        "xs[1.0]",
        "i.foo",
        "has(i.foo)",
        "[1].all(x, x)",
        "[1].map(x, x, x)",
        "foo(1)",
        "s.foo()",
        "nothing + 1",
        "9223372036854775808",
        '"\\z"',
        "1 +",
        "(1",
    ],
)
def test_what_we_refuse_the_reference_cannot_evaluate(source: str) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(source, VARIABLES)
    assert reference(source, ACTIVATION).error is not None


@pytest.mark.parametrize(
    "source",
    [
        "s == 1",  # false in the reference
        "1 == true",  # false
        "'a' in [1]",  # false
        "{'a': 1, 'a': 2}",  # {'a': 2}
        "{1: 'int', true: 'bool'}",  # a map with two keys, one lost in Python's dict
        "1u",  # 1
        "type(1)",  # 'int'
    ],
)
def test_what_we_refuse_like_cels_checker_the_reference_evaluates(source: str) -> None:
    """Refused on purpose, though the reference evaluates them.

    CEL's type checker refuses comparing values that can never be equal; the spec
    makes a repeated map key an error; uint, type values and bool map keys are
    outside the subset.
    """
    with pytest.raises(ExpressionError):
        compile_expression(source, VARIABLES)
    assert reference(source, ACTIVATION).error is None


ERROR = Outcome(error="any")


@pytest.mark.parametrize(
    ("source", "activation", "spec", "reference_answer"),
    [
        ("size('héllo')", {}, 5, 6),
        ("-x", {"x": INT_MIN}, ERROR, INT_MIN),
        ("-x", {"x": True}, ERROR, False),
        ("x > 9007199254740992.0", {"x": 2**53 + 1}, True, False),
        ("x == 9007199254740992.0", {"x": 2**53 + 1}, False, True),
        ("[0, 1].exists(x, 1 / x == 1)", {}, True, ERROR),
        ("[0, 1].all(x, 1 / x == 5)", {}, False, ERROR),
        ("[7, 8, 9][x]", {"x": 0.0}, 7, ERROR),
        ("{1: 'one'}[x]", {"x": 1.0}, "one", ERROR),
        ("x in {1: 'one'}", {"x": 1.0}, True, ERROR),
        ("{x: 1, 'a': 2}", {"x": "a"}, ERROR, {"a": 2}),
        ("[1] + x", {"x": {"a": 2}}, ERROR, [1, "a"]),
        ("!!x", {"x": 1}, ERROR, 1),
        ("string(true)", {}, "true", ERROR),
        ("bool('true')", {}, True, ERROR),
        ("matches('abc', 'b')", {}, True, ERROR),
        ("x.matches(r'\\d')", {"x": "\u0663"}, False, True),  # RE2's \d is ASCII, theirs not
    ],
)
def test_reference_deviations(
    source: str, activation: dict[str, Any], spec: Any, reference_answer: Any
) -> None:
    """Where the reference departs from the CEL spec: we follow the spec."""
    variables = {"x": DYN}
    expression = compile_expression(source, variables)
    if spec is ERROR:
        with pytest.raises(EvaluationError):
            expression.evaluate(activation)
    else:
        assert same(expression.evaluate(activation), spec)
    theirs = reference(source, activation)
    if reference_answer is ERROR:
        assert theirs.error is not None
    else:
        assert same(theirs.value, reference_answer)
