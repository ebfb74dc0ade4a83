"""Events in on the real broker, profiles out of the real API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from tests.integration.conftest import Publisher, user_id, wait_until
from tests.integration.oracle import expected_view
from traitflow.cli import app
from traitflow.config import Settings
from traitflow.services import Daemon

pytestmark = pytest.mark.integration


def order(user: str, mid: str, revenue: Any, ts: str, product: str = "sku-1") -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": mid,
        "userId": user,
        "properties": {"revenue": revenue, "product_id": product},
        "timestamp": ts,
    }


def served(api: httpx.Client, path: str, attributes: dict[str, Any]) -> Any:
    """The record at `path` once its attributes equal `attributes`, else None."""
    response = api.get(path)
    if response.status_code == 200 and response.json()["attributes"] == attributes:
        return response.json()
    return None


def test_purchases_and_traits_are_served(
    worker: Daemon, publish: Publisher, api: httpx.Client, settings: Settings
) -> None:
    user = user_id()
    events = [
        {
            "type": "identify",
            "messageId": f"{user}-1",
            "userId": user,
            "anonymousId": f"anon-{user}",
            "traits": {"email": "ada@example.com", "plan": "free"},
            "timestamp": "2026-11-01T09:00:00Z",
        },
        order(user, f"{user}-2", 19.99, "2026-11-01T10:00:00Z", "sku-a"),
        order(user, f"{user}-3", 45.5, "2026-11-03T10:00:00Z", "sku-b"),
        # older by event time, arriving last: must not become the last product
        order(user, f"{user}-4", 5.01, "2026-10-01T10:00:00Z", "sku-c"),
        {
            "type": "identify",
            "messageId": f"{user}-5",
            "userId": user,
            "traits": {"plan": "pro"},
            "timestamp": "2026-11-04T09:00:00Z",
        },
    ]
    publish(events)

    expected = expected_view(settings, events, user)
    path = f"/v1/collections/users/records/user_id/{user}"
    profile = wait_until(lambda: served(api, path, expected["attributes"]), what="profile")

    assert profile == expected
    attributes = profile["attributes"]
    assert attributes["lifetime_value"] == 70.5
    assert attributes["purchase_count"] == 3
    assert attributes["largest_order"] == 45.5
    assert attributes["smallest_order"] == 5.01
    assert attributes["last_product"] == "sku-b"
    assert profile["traits"] == {"email": "ada@example.com", "plan": "pro"}
    assert profile["first_seen"] == "2026-10-01T10:00:00.000Z"

    by_anonymous_id = api.get(f"/v1/collections/users/records/anonymous_id/anon-{user}")
    assert by_anonymous_id.status_code == 200
    assert by_anonymous_id.json() == profile
    assert api.get(f"/v1/collections/users/records/id/{user}").json() == profile


def test_later_events_update_the_served_profile(
    worker: Daemon, publish: Publisher, api: httpx.Client, settings: Settings
) -> None:
    user = user_id()
    path = f"/v1/collections/users/records/user_id/{user}"
    first = [order(user, f"{user}-1", 10, "2026-11-01T10:00:00Z")]
    publish(first)
    expected = expected_view(settings, first, user)["attributes"]
    assert _orders(expected) == (10, 1, 10, 10)
    wait_until(lambda: served(api, path, expected), what="the first order")

    both = [*first, order(user, f"{user}-2", 32, "2026-11-02T10:00:00Z")]
    publish(both[1:])
    expected = expected_view(settings, both, user)["attributes"]
    assert _orders(expected) == (42, 2, 32, 10)
    profile = wait_until(lambda: served(api, path, expected), what="the second order")
    assert profile["version"] == 2


def _orders(attributes: dict[str, Any]) -> tuple[Any, ...]:
    """lifetime value, count, largest and smallest order."""
    names = ("lifetime_value", "purchase_count", "largest_order", "smallest_order")
    return tuple(attributes[name] for name in names)


def test_unknown_record_and_collection_are_json_404s(api: httpx.Client) -> None:
    missing = api.get(f"/v1/collections/users/records/user_id/{user_id()}")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert "error" in missing.json()

    unknown = api.get("/v1/collections/nothing/records/user_id/x")
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "collection 'nothing' not found"}


def test_produce_command_publishes_a_file(
    worker: Daemon,
    api: httpx.Client,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = user_id()
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        b"\n".join(
            orjson.dumps(order(user, f"{user}-{i}", 7, "2026-11-01T10:00:00Z")) for i in range(3)
        )
        + b"\n\n"
    )
    for key, value in settings.as_env().items():
        monkeypatch.setenv(key, value)

    result = CliRunner().invoke(app, ["produce", str(events)])

    assert result.exit_code == 0, result.output
    assert "published 3 events" in result.output
    path = f"/v1/collections/users/records/user_id/{user}"
    sent = [orjson.loads(line) for line in events.read_bytes().splitlines() if line]
    expected = expected_view(settings, sent, user)["attributes"]
    assert _orders(expected) == (21, 3, 7, 7)
    profile = wait_until(lambda: served(api, path, expected), what="the produced orders")
    assert profile["version"] == 3
