"""What the stitching tests share: events, and the one-id oracle they are held to."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest

from tests.integration.oracle import expected_view
from traitflow.config import Settings

Event = dict[str, Any]
NOW = time.time()


def event(mid: str, minutes_ago: float, kind: str = "page", **fields: Any) -> Event:
    """An event this long ago: recent enough for every lookback window to count it."""
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 60 * minutes_ago))
    return {"type": kind, "messageId": mid, "timestamp": at, **fields}


def viewed(mid: str, minutes_ago: float, product: str, category: str, **ids: str) -> Event:
    properties = {"product_id": product, "category": category}
    return event(mid, minutes_ago, "track", event="Product Viewed", properties=properties, **ids)


def order(mid: str, minutes_ago: float, revenue: float, product: str, **ids: str) -> Event:
    properties = {"revenue": revenue, "product_id": product, "currency": "EUR"}
    return event(mid, minutes_ago, "track", event="Order Completed", properties=properties, **ids)


def person_oracle(settings: Settings, events: Sequence[Event], user: str) -> Any:
    """What one profile fed all of a person's events under its user id serves, with
    its identity values sorted: the order they were linked in depends on which worker
    got there first, what they are does not."""
    view = expected_view(settings, [e | {"userId": user} for e in events], user)
    return comparable(view)


def comparable(view: Any) -> Any:
    return view | {"identities": {kind: sorted(v) for kind, v in view["identities"].items()}}


def figure(request: pytest.FixtureRequest, name: str, value: object) -> None:
    """A figure for the run's report (`--junitxml`); `record_property` would warn under
    the default xunit2 family, and warnings are errors here."""
    request.node.user_properties.append((name, value))
