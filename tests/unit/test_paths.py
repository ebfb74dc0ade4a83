from __future__ import annotations

from datetime import UTC, datetime

import pytest

from attributes.events import Event
from attributes.paths import MISSING, InvalidPath, compile_path

EVENT = Event(
    type="track",
    event="Order Completed",
    messageId="m-1",
    userId="u-1",
    anonymousId="a-1",
    properties={
        "revenue": 19.99,
        "coupon": None,
        "product": {"sku": "sku-42", "tags": ["a", "b"]},
        "items": [{"sku": "x"}],
    },
    traits={"address": {"city": "Berlin"}},
    context={"page": {"path": "/checkout"}},
    timestamp=datetime(2026, 11, 1, 9, 0, tzinfo=UTC),
)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("event", "Order Completed"),
        ("type", "track"),
        ("messageId", "m-1"),
        ("userId", "u-1"),
        ("anonymousId", "a-1"),
        ("timestamp", datetime(2026, 11, 1, 9, 0, tzinfo=UTC)),
    ],
)
def test_root_fields(path: str, value: object) -> None:
    assert compile_path(path)(EVENT) == value


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("properties.revenue", 19.99),
        ("properties.product.sku", "sku-42"),
        ("properties.product.tags", ["a", "b"]),
        ("traits.address.city", "Berlin"),
        ("context.page.path", "/checkout"),
        ("properties", EVENT.properties),
    ],
)
def test_nested_fields(path: str, value: object) -> None:
    assert compile_path(path)(EVENT) == value


def test_a_present_null_is_not_missing() -> None:
    assert compile_path("properties.coupon")(EVENT) is None


@pytest.mark.parametrize(
    "path",
    [
        "properties.discount",
        "properties.product.color",
        "properties.shipping.address.city",
        "traits.email",
        "context.page.referrer",
    ],
)
def test_missing_keys_are_missing(path: str) -> None:
    assert compile_path(path)(EVENT) is MISSING


@pytest.mark.parametrize(
    "path",
    [
        "properties.revenue.amount",  # a float
        "properties.product.tags.first",  # a list
        "properties.items.sku",  # a list of dicts
        "properties.coupon.code",  # null
    ],
)
def test_a_non_dict_on_the_way_is_missing(path: str) -> None:
    assert compile_path(path)(EVENT) is MISSING


def test_a_path_reads_each_event_it_is_given() -> None:
    getter = compile_path("properties.product.sku")
    other = Event(type="track", event="x", userId="u-2", properties={"product": {"sku": "s-2"}})
    assert (getter(EVENT), getter(other)) == ("sku-42", "s-2")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "empty segment"),
        ("properties.", "empty segment"),
        (".revenue", "empty segment"),
        ("properties..revenue", "empty segment"),
        ("propertes.revenue", "must start with one of"),
        ("revenue", "must start with one of"),
        ("Properties.revenue", "must start with one of"),
        ("event.name", "'event' has no nested fields"),
        ("userId.value", "'userId' has no nested fields"),
        ("timestamp.year", "'timestamp' has no nested fields"),
    ],
)
def test_invalid_paths_fail_at_compile_time(path: str, message: str) -> None:
    with pytest.raises(InvalidPath) as caught:
        compile_path(path)
    assert message in str(caught.value)
    assert repr(path) in str(caught.value)


def test_the_root_error_lists_the_valid_roots() -> None:
    with pytest.raises(InvalidPath) as caught:
        compile_path("propertes.revenue")
    for root in ("properties", "traits", "context", "event", "userId"):
        assert root in str(caught.value)
