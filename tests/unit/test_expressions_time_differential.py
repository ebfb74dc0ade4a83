"""Differential tests of timestamps and durations against the reference CEL package.

As in test_expressions_differential.py, our compiled expressions must give the
reference's value (`cel.evaluate`, which takes and returns `datetime` and
`timedelta` as we do) or both must fail: on random well-typed time expressions
(arithmetic, comparisons, accessors, `timestamp()`/`duration()` of random literals,
operands hidden by dyn()), and on every time operation applied to operands of every
kind. Where the reference departs from the CEL spec the shape is excluded and pinned
in `test_time_reference_deviations`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attributes.expressions import (
    DURATION,
    DYN,
    INT,
    STRING,
    TIMESTAMP,
    EvaluationError,
    ExpressionError,
    compile_expression,
)
from tests.unit.test_expressions_differential import (
    ERROR,
    Outcome,
    evaluated,
    reference,
    same,
    same_outcome,
)

VARIABLES = {"t": TIMESTAMP, "u": TIMESTAMP, "dd": DURATION, "i": INT, "s": STRING}
#: whole microseconds, from 1970 to 2100: far from the ends of the range
MOMENTS = st.datetimes(datetime(1970, 1, 1), datetime(2100, 1, 1)).map(
    lambda moment: moment.replace(tzinfo=UTC)
)
LENGTHS = st.timedeltas(timedelta(days=-36_500), timedelta(days=36_500))
ACTIVATIONS = st.fixed_dictionaries(
    {"t": MOMENTS, "u": MOMENTS, "dd": LENGTHS, "i": st.integers(-50, 50), "s": st.text("ab")}
)
#: timestamp accessors (also taken by durations: DURATION_ACCESSORS)
ACCESSORS = (
    *("getFullYear", "getMonth", "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear"),
    *("getHours", "getMinutes", "getSeconds", "getMilliseconds"),
)
DURATION_ACCESSORS = ("getHours", "getMinutes", "getSeconds", "getMilliseconds")
Draw = Callable[[st.SearchStrategy[Any]], Any]


class TimeGenerator:
    """Random well-typed CEL source over timestamps and durations (see module doc)."""

    def __init__(self, draw: Draw) -> None:
        self._draw = draw

    def pick(self, *options: Any) -> Any:
        return self._draw(st.sampled_from(options))

    def chance(self, probability: float) -> bool:
        return bool(self._draw(st.floats(0, 1)) < probability)

    def hidden(self, source: str) -> str:
        return f"dyn({source})" if self.chance(0.2) else source

    def timestamp_literal(self) -> str:
        moment: datetime = self._draw(MOMENTS)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S")
        if moment.microsecond and self.chance(0.5):
            text += f".{moment.microsecond:06d}"
        # Excluded: offsets other than UTC's. The reference's accessors read the fields
        # at the text's offset; CEL's read them in UTC unless given a time zone.
        offset = self.pick("Z", "z", "+00:00", "-00:00")
        return f'timestamp("{text}{offset}")'

    def duration_literal(self) -> str:
        parts = self._draw(
            st.lists(
                # Excluded: nanoseconds. Ours are truncated to microseconds as each text
                # is read, the reference's when a result is handed to Python.
                st.tuples(st.integers(0, 999), st.sampled_from(["h", "m", "s", "ms", "us"])),
                min_size=1,
                max_size=3,
            )
        )
        text = "".join(f"{count}{unit}" for count, unit in parts)
        if self.chance(0.2):
            # Excluded: fractions other than halves. The reference computes them in
            # floating point (32.3h is a microsecond short); Go's syntax is exact.
            text = f"{self._draw(st.integers(0, 99))}.{self.pick(0, 5, 50)}{self.pick('h', 'm')}"
        return f'duration("{self.pick("", "-", "+")}{text}")'

    def timestamp(self, depth: int) -> str:
        if depth <= 0 or self.chance(0.3):
            return str(self.pick("t", "u", self.timestamp_literal()))
        production = self.pick("plus", "minus", "plus_left", "conditional", "timestamp")
        if production == "plus":
            return f"({self.hidden(self.timestamp(depth - 1))} + {self.duration(depth - 1)})"
        if production == "minus":
            return f"({self.timestamp(depth - 1)} - {self.hidden(self.duration(depth - 1))})"
        if production == "timestamp":
            return f"timestamp({self.timestamp(depth - 1)})"
        if production == "plus_left":  # Excluded: duration + timestamp (see deviations)
            return f"({self.timestamp(depth - 1)} + {self.duration(depth - 1)})"
        return f"({self.comparison(depth - 1)} ? {self.timestamp(0)} : {self.timestamp(0)})"

    def duration(self, depth: int) -> str:
        if depth <= 0 or self.chance(0.3):
            return str(self.pick("dd", self.duration_literal()))
        production = self.pick("difference", "sum", "subtraction", "duration")
        if production == "difference":
            return f"({self.hidden(self.timestamp(depth - 1))} - {self.timestamp(depth - 1)})"
        if production == "sum":
            return f"({self.duration(depth - 1)} + {self.hidden(self.duration(depth - 1))})"
        if production == "duration":
            return f"duration({self.duration(depth - 1)})"
        return f"({self.duration(depth - 1)} - {self.duration(depth - 1)})"

    def integer(self, depth: int) -> str:
        if self.chance(0.5):
            accessor = self.pick(*DURATION_ACCESSORS)
            reading = f"{self.hidden(self.duration(depth - 1))}.{accessor}()"
        else:
            reading = f"{self.hidden(self.timestamp(depth - 1))}.{self.pick(*ACCESSORS)}()"
        return f"({reading} / 24)" if self.chance(0.2) else reading

    def comparison(self, depth: int) -> str:
        operator = self.pick("==", "!=", "<", "<=", ">", ">=")
        kind = self.pick(self.timestamp, self.duration, self.integer)
        return f"({self.hidden(kind(depth))} {operator} {kind(depth)})"

    def expression(self, depth: int) -> str:
        kinds = (self.timestamp, self.duration, self.integer, self.comparison)
        return str(self.pick(*kinds)(depth))


@st.composite
def time_sources(draw: Draw) -> str:
    return TimeGenerator(draw).expression(depth=draw(st.integers(1, 3)))


def assert_same_outcome(source: str, activation: dict[str, Any]) -> None:
    mine = evaluated(compile_expression(source, VARIABLES), activation)
    theirs = reference(source, activation)
    assert same_outcome(mine, theirs), (source, mine, theirs)


@settings(max_examples=400, deadline=None)
@given(source=time_sources(), activation=ACTIVATIONS)
def test_random_time_expressions_match_the_reference(
    source: str, activation: dict[str, Any]
) -> None:
    assert_same_outcome(source, activation)


ACTIVATION: dict[str, Any] = {
    "t": datetime(2026, 3, 1, 5, 6, 7, 890_000, tzinfo=UTC),
    "u": datetime(2025, 12, 31, 23, 0, tzinfo=UTC),
    "dd": timedelta(hours=-36, milliseconds=5),
    "i": 7,
    "s": "2026-03-01T05:06:07Z",
}
OPERANDS = {
    "timestamp": ("t", 'timestamp("2024-02-29T23:59:59.999Z")', "timestamp(s)"),
    "duration": ("dd", 'duration("1h30m")', 'duration("-0.5s")'),
    "int": ("1", "i"),
    "double": ("1.5",),
    "string": ('"1h"', "s"),
    "null": ("null",),
}
OPERATIONS = (
    *("{} + {}", "{} - {}", "{} == {}", "{} != {}", "{} < {}", "{} <= {}", "{} > {}"),
    "{} >= {}",
)


def excluded(operation: str, kinds: tuple[str, str]) -> bool:
    return operation == "{} + {}" and kinds == ("duration", "timestamp")


def time_operation_sources() -> list[str]:
    """Each binary operation with a time operand on one side at least, each accessor and
    conversion on every kind: as written and with the operands in dyn()."""
    sources = []
    every = [(kind, source) for kind, sources_ in OPERANDS.items() for source in sources_]
    for operation in OPERATIONS:
        for first_kind, first in every:
            for second_kind, second in every:
                time_kinds = {"timestamp", "duration"}
                if not ({first_kind, second_kind} & time_kinds):
                    continue
                if excluded(operation, (first_kind, second_kind)):
                    continue
                sources.append(operation.format(first, second))
                sources.append(operation.format(f"dyn({first})", f"dyn({second})"))
    for kind, operand in every:
        for accessor in ACCESSORS:
            sources.append(f"{operand}.{accessor}()")
        for function in ("timestamp", "duration"):
            if kind != "string":  # literal texts are checked apart (test_literal_texts)
                sources.append(f"{function}({operand})")
            sources.append(f"{function}(dyn({operand}))")
    return sources


def test_every_time_operation_matches_the_reference() -> None:
    """What the checker refuses must fail in the reference too, except where CEL's
    checker is stricter than its runtime (`==` between kinds is false there)."""
    mismatches = []
    for source in time_operation_sources():
        theirs = reference(source, ACTIVATION)
        try:
            expression = compile_expression(source, VARIABLES)
        except ExpressionError as error:
            if theirs.error is None and "=" not in source:
                mismatches.append(f"{source}: refused ({error}), the reference evaluates it")
            continue
        mine = evaluated(expression, ACTIVATION)
        if not same_outcome(mine, theirs):
            mismatches.append(f"{source}: {mine} but the reference {theirs}")
    assert not mismatches, "\n".join(mismatches[:20])


@pytest.mark.parametrize(
    "text",
    [
        *("1.5h", "-1.5h", "+1h", "1h30m", "250ms", "3us", "7ns", ".5s", "1.s", "0", "-0"),
        *("0s", "00012s", "1.0000001s", "2562047h", "1", "h", "", " 1h", "1H", "1d"),
    ],
)
def test_duration_texts_match_the_reference(text: str) -> None:
    assert_same_outcome("duration(s)", {**ACTIVATION, "s": text})


@pytest.mark.parametrize(
    "text",
    [
        *("2026-03-01T05:06:07Z", "2026-03-01T05:06:07.5+05:30", "2026-03-01t05:06:07z"),
        *("2026-03-01 05:06:07Z", "2026-03-01T05:06:07-00:00", "0001-01-01T00:00:00Z"),
        *("9999-12-31T23:59:59.999999999Z", "2026-02-30T00:00:00Z", "2026-03-01T24:00:00Z"),
        *("2026-03-01T05:06:07", "2026-3-01T05:06:07Z", "0000-01-01T00:00:00Z", "2026-03-01"),
    ],
)
def test_timestamp_texts_match_the_reference(text: str) -> None:
    assert_same_outcome("timestamp(s)", {**ACTIVATION, "s": text})


@pytest.mark.parametrize(
    "source",
    [
        'timestamp("9999-12-31T23:59:59Z") + duration("1s")',
        'timestamp("0001-01-01T00:00:00Z") - duration("1s")',
        'timestamp("9999-12-31T23:59:59Z") - timestamp("0001-01-01T00:00:00Z")',
        "(t - u).getHours() / 24",
        "(t - u).getMinutes() > 60 * 24 * 59",
        "t > u && t - u > duration('1440h')",
        "[t, u].exists(x, x > u)",
        "t in [u, t]",
        "{'last': t}.last.getDayOfWeek()",
    ],
)
def test_fixed_time_expressions_match_the_reference(source: str) -> None:
    assert_same_outcome(source, ACTIVATION)


@pytest.mark.parametrize(
    ("source", "spec", "reference_answer"),
    [
        # the spec's duration + timestamp; the reference has only timestamp + duration
        ('duration("1h") + x', datetime(2026, 1, 1, 1, tzinfo=UTC), ERROR),
        # string() as cel-go writes them (RFC 3339 with Z; protobuf's seconds)
        ("string(x)", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00+00:00"),
        ("string(x - timestamp('2025-12-31T22:30:00Z'))", "5400s", "1h30m0s"),
        # int(timestamp): seconds since the epoch; the reference has no int() of one
        ("int(x)", 1_767_225_600, ERROR),
        # accessors read UTC's fields; the reference's those at the text's offset
        ("timestamp('2000-01-01T00:00:00+05:30').getFullYear()", 1999, 2000),
        # accessors in a time zone; the reference has none
        ("x.getHours('Asia/Kolkata')", 5, ERROR),
        ("x.getDate('-01:00')", 31, ERROR),
        # Go's duration syntax: the reference accepts a repeated unit and inner signs
        ("duration(s)", ERROR, timedelta(hours=1)),
        ("duration(s + '-1m')", ERROR, timedelta(minutes=59)),
        ("duration(s)", timedelta(hours=32, minutes=18), timedelta(seconds=116_279.999_999)),
        # CEL bounds durations to ten thousand years; the reference saturates
        ("duration('100000000' + s)", ERROR, timedelta(microseconds=2**63 // 1000)),
    ],
)
def test_time_reference_deviations(source: str, spec: Any, reference_answer: Any) -> None:
    """Where the reference departs from the CEL spec: we follow the spec."""
    activation = {"x": datetime(2026, 1, 1, tzinfo=UTC), "s": "1h"}
    if source == "duration(s)":  # literal texts are checked at compile time
        activation["s"] = "1hh" if spec is ERROR else "32.3h"
    expression = compile_expression(source, {"x": DYN, "s": DYN})
    if spec is ERROR:
        with pytest.raises(EvaluationError):
            expression.evaluate(activation)
    else:
        assert same(expression.evaluate(activation), spec)
    theirs: Outcome = reference(source, activation)
    if reference_answer is ERROR:
        assert theirs.error is not None
    else:
        assert same(theirs.value, reference_answer)
