"""The pure re-shaping of stored views (api.shapes): no app, no I/O."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from api import shapes

VIEW: dict[str, Any] = {
    "id": "u-1",
    "entity": "user",
    "identities": {"user_id": ["u-1"], "anonymous_id": ["a-1", "a-2"]},
    "traits": {"email": "ada@example.com", "plan": "pro"},
    "attributes": {"lifetime_value": 70.5, "purchase_count": 3, "nested": {"a": 1, "b": 2}},
    "first_seen": "2026-10-01T10:00:00.000Z",
    "last_seen": "2026-11-04T09:00:00.000Z",
    "version": 5,
}


def test_decode_view_reads_stored_bytes() -> None:
    assert shapes.decode_view(orjson.dumps(VIEW)) == VIEW
    assert shapes.decode_view(b"[1, 2]") == {}


@pytest.mark.parametrize(
    ("raw", "fields"),
    [
        (None, None),
        ("", None),
        (" , ,", None),
        ("a", ["a"]),
        ("a, b.c ,,d", ["a", "b.c", "d"]),
    ],
)
def test_parse_fields(raw: str | None, fields: list[str] | None) -> None:
    assert shapes.parse_fields(raw) == fields


def test_project_top_level_keys_in_document_order() -> None:
    assert shapes.project(VIEW, ["version", "id"]) == {"id": "u-1", "version": 5}


def test_project_dotted_paths_keep_nesting() -> None:
    projected = shapes.project(VIEW, ["attributes.lifetime_value", "traits.email"])
    assert projected == {
        "traits": {"email": "ada@example.com"},
        "attributes": {"lifetime_value": 70.5},
    }


def test_project_deep_paths() -> None:
    assert shapes.project(VIEW, ["attributes.nested.b"]) == {"attributes": {"nested": {"b": 2}}}


def test_project_leaves_out_absent_paths_and_paths_through_scalars() -> None:
    assert shapes.project(VIEW, ["nothing", "id.x", "attributes.none", "version.y"]) == {}


def test_project_a_whole_key_wins_over_a_path_inside_it() -> None:
    both = shapes.project(VIEW, ["attributes", "attributes.lifetime_value"])
    assert both == {"attributes": VIEW["attributes"]}
    reversed_order = shapes.project(VIEW, ["attributes.lifetime_value", "attributes"])
    assert reversed_order == {"attributes": VIEW["attributes"]}


def test_activation_data_is_the_destination_attributes_in_its_order() -> None:
    data = shapes.activation_data(VIEW, ["purchase_count", "missing", "lifetime_value"])
    assert data == {"purchase_count": 3, "lifetime_value": 70.5}
    assert list(data) == ["purchase_count", "lifetime_value"]


def test_activation_data_never_exposes_traits_or_other_keys() -> None:
    assert shapes.activation_data(VIEW, ["email", "id", "version"]) == {}
    assert shapes.activation_data({"attributes": None}, ["x"]) == {}


def test_activation_data_serves_the_traits_a_destination_lists() -> None:
    view = {
        "attributes": {"orders": 2, "plan": "attribute"},
        "traits": {"plan": "pro", "tz": "UTC"},
    }
    assert shapes.activation_data(view, ["orders"], ["tz", "missing"]) == {"orders": 2, "tz": "UTC"}
    every = shapes.activation_data(view, ["orders", "plan"], ["*"])
    assert every == {"orders": 2, "plan": "attribute", "tz": "UTC"}  # the attribute's column wins
    assert shapes.activation_data({"attributes": {}, "traits": "junk"}, [], ["*"]) == {}


def test_adobe_identities() -> None:
    assert shapes.adobe_identities(VIEW) == [
        {"id": "u-1", "namespace": {"code": "user_id"}},
        {"id": "a-1", "namespace": {"code": "anonymous_id"}},
        {"id": "a-2", "namespace": {"code": "anonymous_id"}},
    ]
    assert shapes.adobe_identities({"identities": "junk"}) == []


def test_adobe_entity_layout() -> None:
    assert shapes.adobe_entity(VIEW) == {
        "entityId": "u-1",
        "entity": {
            "identities": shapes.adobe_identities(VIEW),
            "traits": VIEW["traits"],
            "attributes": VIEW["attributes"],
        },
        "lastModifiedAt": "2026-11-04T09:00:00.000Z",
    }


def test_adobe_entity_fields_project_the_entity() -> None:
    shaped = shapes.adobe_entity(VIEW, ["attributes.purchase_count"])
    assert shaped["entity"] == {"attributes": {"purchase_count": 3}}
    assert shaped["entityId"] == "u-1"


def test_adobe_entity_with_requested_identities_lists_them_first() -> None:
    requested = [{"entityId": "a-1", "entityIdNS": {"code": "anonymous_id"}}]
    shaped = shapes.adobe_entity(VIEW, None, requested)
    assert list(shaped) == ["requestedIdentities", "entityId", "entity", "lastModifiedAt"]
    assert shaped["requestedIdentities"] == requested
