"""The compiled rule set (`attributes.ruleset`): which attributes an event feeds."""

from __future__ import annotations

import pytest

from attributes.rules import parse_rules
from attributes.ruleset import RuleSet


def selected(rules: RuleSet, event_type: str, event_name: str | None) -> list[str]:
    return [attribute.name for attribute in rules.for_event(event_type, event_name)]


# --- selecting the attributes an event feeds -----------------------------------------------

SELECTION = """
attributes:
  - name: orders
    function: count
    event: Order Completed
  - name: views
    function: count
    event: [Product Viewed, Product Added]
  - name: pages
    function: count
    type: [page, screen]
  - name: everything
    function: count
  - name: tracked_orders
    function: count
    event: Order Completed
    type: [track]
"""


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return parse_rules(SELECTION)


def test_selects_by_event_name(rules: RuleSet) -> None:
    assert set(selected(rules, "track", "Order Completed")) == {
        "orders",
        "everything",
        "tracked_orders",
    }


def test_selects_by_any_of_a_list_of_names(rules: RuleSet) -> None:
    assert set(selected(rules, "track", "Product Viewed")) == {"views", "everything"}
    assert set(selected(rules, "track", "Product Added")) == {"views", "everything"}


def test_names_match_exactly(rules: RuleSet) -> None:
    assert selected(rules, "track", "order completed") == ["everything"]


def test_selects_by_type(rules: RuleSet) -> None:
    assert set(selected(rules, "page", None)) == {"pages", "everything"}
    assert set(selected(rules, "screen", "Home")) == {"pages", "everything"}
    assert selected(rules, "identify", None) == ["everything"]


def test_a_type_filter_applies_to_named_events_too(rules: RuleSet) -> None:
    assert set(selected(rules, "page", "Order Completed")) == {"orders", "pages", "everything"}


def test_no_filter_selects_every_event(rules: RuleSet) -> None:
    for event_type, name in [("track", "Anything"), ("identify", None), ("alias", None)]:
        assert "everything" in selected(rules, event_type, name)


def test_each_attribute_is_selected_once(rules: RuleSet) -> None:
    for event_type in ("track", "page", "identify"):
        for name in (None, "Order Completed", "Product Viewed", "Other"):
            chosen = selected(rules, event_type, name)
            assert len(chosen) == len(set(chosen))
