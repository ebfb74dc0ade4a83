"""Hypothesis strategies for event bodies (no ids, no time: each test adds its own),
shared by the property tests that feed the example rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st


def orders(
    products: Sequence[str], currencies: Sequence[dict[str, str]]
) -> st.SearchStrategy[dict[str, Any]]:
    """Completed orders of one of `products`, with `currencies` as extra properties."""
    return st.builds(
        lambda revenue, product, currency: {
            "type": "track",
            "event": "Order Completed",
            "properties": {"revenue": revenue, "product_id": product, **currency},
        },
        # No float equal to an int: which of 10 and 10.0 min/max keep is a known bug.
        st.one_of(
            st.integers(-1000, 1000),
            st.floats(-1e6, 1e6).filter(lambda x: not x.is_integer()),
            st.just("free"),
        ),
        st.sampled_from(products),
        st.sampled_from(currencies),
    )


def product_views(
    categories: Sequence[str], products: Sequence[str]
) -> st.SearchStrategy[dict[str, Any]]:
    """Products viewed or added to a cart."""
    return st.builds(
        lambda kind, category, product: {
            "type": "track",
            "event": kind,
            "properties": {"category": category, "product_id": product},
        },
        st.sampled_from(["Product Viewed", "Product Added"]),
        st.sampled_from(categories),
        st.sampled_from(products),
    )
