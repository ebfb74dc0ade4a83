from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from attributes.events import Event, decode_event
from attributes.expressions import Expression, ExpressionError
from attributes.filters import EVENT_VARIABLES, FilterResults, compile_filter, event_variables


def event(**fields: Any) -> Event:
    return decode_event(orjson.dumps({"type": "track", "event": "Order", "userId": "u", **fields}))


ORDER = event(properties={"revenue": 120.5, "currency": "EUR", "items": [{"sku": "a"}]})


@pytest.mark.parametrize(
    ("source", "verdict"),
    [
        ('event == "Order" && properties.revenue > 100.0', True),
        ('properties.currency in ["USD", "GBP"]', False),
        ('properties.items.exists(i, i.sku == "a")', True),
        ('type == "track" && userId.startsWith("u")', True),
        ("has(properties.coupon)", False),
    ],
)
def test_filters_see_the_envelope(source: str, verdict: bool) -> None:
    assert FilterResults(ORDER).verdict(compile_filter(source)) is verdict


def test_every_envelope_part_is_a_variable() -> None:
    assert set(event_variables(ORDER)) == set(EVENT_VARIABLES)


@pytest.mark.parametrize(
    "source",
    ["properties.coupon == 1", 'properties.revenue > "100"', "properties.currency"],
)
def test_a_filter_that_fails_on_an_event_does_not_match_and_says_why(source: str) -> None:
    verdict = FilterResults(ORDER).verdict(compile_filter(source))
    assert isinstance(verdict, str)
    assert verdict  # the reason, for the skip report


@pytest.mark.parametrize("source", ["1 + 1", '"yes"', "properties.revenue +", "timestamp > 1"])
def test_filters_that_cannot_work_are_refused_at_load(source: str) -> None:
    with pytest.raises(ExpressionError):
        compile_filter(source)


def test_each_filter_is_evaluated_once_per_event() -> None:
    calls: list[str] = []
    where = compile_filter("properties.revenue > 100.0")
    counted = dataclasses.replace(where, evaluate=lambda variables: record(variables, where))

    def record(variables: Mapping[str, Any], inner: Expression) -> Any:
        calls.append(inner.source)
        return inner.evaluate(variables)

    results = FilterResults(ORDER)
    assert [results.verdict(counted) for _ in range(3)] == [True, True, True]
    assert calls == ["properties.revenue > 100.0"]
    FilterResults(ORDER).verdict(counted)
    assert len(calls) == 2  # a new event, a new verdict
