r"""`matches` runs on RE2: linear time on any text, RE2's syntax and semantics, and
what RE2 does not support refused at load (literal patterns) or per event (patterns
from event data).

The catastrophic patterns below take a backtracking engine (Python's `re`) a number
of steps exponential in the text's length: on "aaaa…!", `(a+)+$` tries every way of
cutting the run of a's into groups (2**(n-1) of them) before it fails. At n = 100,000
that never finishes; RE2 answers in one pass. The tests assert the answers on such
inputs; the timeout only keeps a regression from hanging the suite.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from attributes.events import decode_event
from attributes.expressions import (
    DYN,
    STRING,
    EvaluationError,
    ExpressionError,
    compile_expression,
    map_of,
)
from attributes.expressions.regex import InvalidPattern, Pattern, cached_pattern
from attributes.filters import FilterResults, compile_filter

LONG = 100_000
VARIABLES = {"s": STRING, "properties": map_of(STRING, DYN)}


def evaluate(source: str, **activation: Any) -> Any:
    return compile_expression(source, VARIABLES).evaluate(activation)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("pattern", "text", "found"),
    [
        ("(a+)+$", "a" * LONG + "!", False),
        ("^(a|aa)+$", "a" * LONG + "b", False),
        ("(a*)*b", "a" * LONG, False),
        ("^(x+x+)+y", "x" * LONG, False),
        ("(.*a){20}", "a" * LONG, True),
        ("(a+)+!$", "a" * LONG + "!", True),
    ],
)
def test_catastrophic_patterns_run_in_linear_time(pattern: str, text: str, found: bool) -> None:
    assert evaluate(f"s.matches(r'{pattern}')", s=text) is found
    # the same pattern taken from the event (compiled at run time)
    assert evaluate("s.matches(properties.p)", s=text, properties={"p": pattern}) is found


@pytest.mark.timeout(60)
def test_a_filter_over_a_hostile_event_string_answers() -> None:
    """The whole path a worker takes: the event decoded, the filter compiled from the
    rule, its verdict."""
    event = decode_event(
        orjson.dumps({"type": "track", "event": "Signed Up", "userId": "u",
                      "properties": {"email": "a" * LONG + "!"}})
    )  # fmt: skip
    where = compile_filter(r"properties.email.matches('^([a-z0-9]+)+@example\\.com$')")
    assert FilterResults(event).verdict(where) is False


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        (r"(a)\1", r"invalid escape sequence: \1 (backreferences are not supported; "),
        (r"(?P<x>a)(?P=x)", "(backreferences are not supported; "),
        (r"(?P<x>a)\k<x>", "(backreferences are not supported; "),
        ("a(?=b)", "invalid perl operator: (?= (lookahead is not supported; "),
        ("a(?!b)", "(lookahead is not supported; "),
        ("(?<=a)b", "(lookbehind is not supported; "),
        ("(?<!a)b", "(lookbehind is not supported; "),
        ("(?>a)", "(atomic groups are not supported; "),
        ("a++", "(possessive quantifiers are not supported; "),
        (r"a\Z", r"(the end of the text is \z; "),
        ("[", "missing ]: ["),
        ("a{1001}", "invalid repetition size: {1001}"),
    ],
)
def test_what_re2_does_not_support_is_refused_when_compiled(pattern: str, problem: str) -> None:
    with pytest.raises(ExpressionError) as refused:
        compile_expression(f"s.matches(r'{pattern}')", VARIABLES)
    message = str(refused.value)
    assert message.startswith(f"invalid regular expression {pattern!r}: ")
    assert problem in message
    assert message.endswith(" at column 3")  # the call's
    hinted = problem.endswith("; ")  # a feature RE2 lacks: the message points to its syntax
    assert ("https://github.com/google/re2/wiki/Syntax" in message) is hinted


@pytest.mark.parametrize("pattern", [r"(a)\1", "a(?=b)", "[", "(a"])
def test_a_bad_pattern_from_the_event_fails_that_event_only(pattern: str) -> None:
    with pytest.raises(EvaluationError, match=r"^invalid regular expression "):
        evaluate("s.matches(properties.p)", s="ab", properties={"p": pattern})
    event = decode_event(
        orjson.dumps({"type": "track", "event": "E", "userId": "u",
                      "properties": {"p": pattern}})
    )  # fmt: skip
    verdict = FilterResults(event).verdict(compile_filter("event.matches(properties.p)"))
    assert isinstance(verdict, str)  # the filter_error skip's reason
    assert verdict.startswith("invalid regular expression")


@pytest.mark.parametrize(
    ("source", "text", "found"),
    [
        (r"s.matches('a$')", "a\n", False),  # `$` is the end of the text (Python: before \n too)
        (r"s.matches('(?m)a$')", "a\nb", True),
        (r"s.matches(r'a\z')", "ba", True),  # Python 3.11's `re` has no \z
        (r"s.matches(r'^\pL+$')", "héllo", True),  # Unicode classes
        (r"s.matches(r'\d')", "\u0663", False),  # \d is ASCII
        (r"s.matches('[[:digit:]]')", "x1", True),  # POSIX classes
        (r"s.matches('(?i)ÉTÉ')", "été", True),
        (r"s.matches('^.$')", "é", True),  # one code point, two UTF-8 bytes
        (r"s.matches('b')", "ab", True),  # anywhere in the text
        (r"s.matches('')", "", True),
    ],
)
def test_re2_semantics(source: str, text: str, found: bool) -> None:
    assert evaluate(source, s=text) is found


def test_text_that_is_not_unicode_is_an_evaluation_error() -> None:
    with pytest.raises(EvaluationError, match="not valid Unicode"):
        evaluate("s.matches('a')", s="a\ud800")
    with pytest.raises(InvalidPattern, match="not valid Unicode"):
        Pattern("a\ud800")


def test_patterns_from_events_are_compiled_once_per_text() -> None:
    assert cached_pattern("^sku-[0-9]+$") is cached_pattern("^sku-[0-9]+$")
    assert cached_pattern("^sku-[0-9]+$").search("sku-12")
    assert not cached_pattern("^sku-[0-9]+$").search("sku-x")
