"""A collection's field mapping: the record it makes of a view (pure), its validation
in settings, and the record documents the worker's renderer writes with the view."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from attributes.events import decode_event
from attributes.policies import DEFAULT_POLICY
from attributes.profile import ProfileState, apply_event
from attributes.records import RecordMapping, mapped_record
from attributes.ruleset import RuleSet
from streams.rendering import ViewRenderer
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.store import record_header

FIELDS = {
    "ltv": "attributes.lifetime_value",
    "email": "traits.email",
    "in_vip": "_audiences.vip",
    "user_ids": "identities.user_id",
    "id": "id",
}
VIEW: dict[str, Any] = {
    "id": "u-1",
    "entity": "user",
    "identities": {"user_id": ["u-1"], "anonymous_id": ["a-1"]},
    "traits": {"email": "ada@example.com", "plan": "pro"},
    "attributes": {"lifetime_value": 70.5, "purchase_count": 3},
    "_audiences": {"vip": True},
    "version": 4,
}


def test_a_record_is_the_mapped_fields_under_their_names_in_the_mapping_order() -> None:
    record = mapped_record(VIEW, RecordMapping.of(FIELDS))
    assert list(record.items()) == [
        ("ltv", 70.5),
        ("email", "ada@example.com"),
        ("in_vip", True),
        ("user_ids", ["u-1"]),
        ("id", "u-1"),
    ]


def test_a_path_the_view_lacks_is_left_out() -> None:
    view = {"id": "u-2", "traits": {"email": None}, "attributes": "not an object"}
    record = mapped_record(view, RecordMapping.of(FIELDS))
    assert record == {"email": None, "id": "u-2"}  # a null value is a value


def test_the_stamp_names_the_mapping_its_order_included() -> None:
    stamp = RecordMapping.of(FIELDS).stamp
    assert RecordMapping.of(dict(FIELDS)).stamp == stamp
    assert RecordMapping.of(dict(reversed(FIELDS.items()))).stamp != stamp
    assert RecordMapping.of(FIELDS | {"plan": "traits.plan"}).stamp != stamp


def mapped_settings(fields: Any, name: str = "users", **more: Any) -> Settings:
    return Settings.model_validate(
        {"collections": {name: {"entity": "user", "fields": fields}, **more}}
    )


def test_settings_keep_the_entity_and_the_mapping_of_a_collection() -> None:
    settings = mapped_settings(FIELDS, accounts="account")
    assert settings.collections == {"users": "user", "accounts": "account"}
    assert settings.collection_fields == {"users": FIELDS}
    assert settings.record_mappings == {"user": {"users": RecordMapping.of(FIELDS)}}
    # what a worker started by a test or the CLI is handed reads back the same
    again = Settings.from_environ(settings.as_env())
    assert again.collections == settings.collections
    assert again.record_mappings == settings.record_mappings


def test_an_isolated_copy_keeps_the_mappings_of_its_collections() -> None:
    settings = mapped_settings(FIELDS)
    assert settings.isolated("copy").record_mappings == settings.record_mappings
    again = settings.isolated("copy", collections={"users": {"entity": "user", "fields": FIELDS}})
    assert again.record_mappings == settings.record_mappings
    assert settings.isolated("copy", collections={"people": "user"}).record_mappings == {}


def test_the_plain_form_and_an_entity_alone_have_no_mapping() -> None:
    settings = Settings.model_validate(
        {"collections": {"users": "user", "people": {"entity": "user"}}}
    )
    assert settings.collections == {"users": "user", "people": "user"}
    assert settings.record_mappings == {}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ltv": "attribute.lifetime_value"}, "'users': field 'ltv': path 'attribute."),
        ({"x": "provenance"}, "starts with 'provenance', not one of id, entity"),
        ({"x": "id.more"}, "field 'x': path 'id.more' goes inside 'id', which is a value"),
        ({"x": "traits..email"}, "field 'x': path 'traits..email' has an empty segment"),
        ({" ": "traits.email"}, "'users': a field name must not be blank"),
        ({"": "traits.email"}, "'users': a field name must not be blank"),
        ({"a.b": "traits.email"}, "field 'a.b': a name has no '.'"),
        (
            {"email": "traits.email", "mail": "traits.email"},
            "'users': field 'mail' maps 'traits.email', which field 'email' maps already",
        ),
        ({"x": 3}, "'users': field 'x' should map a path"),
    ],
)
def test_a_bad_mapping_is_refused_naming_the_collection_and_field(
    fields: Any, message: str
) -> None:
    with pytest.raises(ValidationError, match="collections: ") as caught:
        mapped_settings(fields)
    assert message in str(caught.value)


def test_a_bad_declaration_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown keys: field"):
        Settings.model_validate({"collections": {"users": {"entity": "user", "field": {}}}})
    with pytest.raises(ValidationError, match="'users' serves entity 'usr'"):
        Settings.model_validate({"collections": {"users": {"entity": "usr", "fields": FIELDS}}})
    with pytest.raises(ValidationError, match="'a:b' has fields, so its name must have no ':'"):
        mapped_settings(FIELDS, name="a:b")
    with pytest.raises(ValidationError, match="collection_fields: 'people' is not a collection"):
        Settings(collections={"users": "user"}, collection_fields={"people": FIELDS})


NOW = 946_684_800_000 + 3 * 86_400_000


def ordered(state: ProfileState, rules: RuleSet, revenue: float) -> None:
    event = decode_event(
        orjson.dumps(
            {
                "type": "track",
                "event": "Order Completed",
                "userId": "u-1",
                "messageId": "m-1",
                "timestamp": "2000-01-02T00:00:00Z",
                "properties": {"revenue": revenue},
            }
        )
    )
    apply_event(state, event, ts=NOW - 86_400_000, rules=rules, source="e/0", offset=0, now=NOW)


@pytest.mark.anyio
async def test_the_renderer_writes_each_record_from_the_view_it_writes(
    example_rules: RuleSet,
) -> None:
    mapping = RecordMapping.of({"ltv": "attributes.lifetime_value", "id": "id"})
    views = ViewRenderer(rules=example_rules, policy=DEFAULT_POLICY, records={"users": mapping})
    state = ProfileState(id="u-1")
    ordered(state, example_rules, 10.0)
    write = views.write(state, "e/0", touched=set(), now=NOW)
    assert write.view is not None
    stored = write.records["users"]
    assert stored is not None
    header = record_header(mapping.stamp, state.version)
    assert stored.startswith(header)
    assert orjson.loads(stored[len(header) :]) == {"ltv": 10.0, "id": "u-1"}
    assert stored[len(header) :] == orjson.dumps(mapped_record(orjson.loads(write.view), mapping))

    store = MemoryProfileStore()
    await store.save("user", [write])
    found = await store.read_records("user", [("id", "u-1")], collection="users", stamp="other")
    assert found == [(False, write.view)]  # another mapping's document is not served

    state.deleted = True  # a deleted profile: no view, and its documents go with it
    gone = views.write(state, "e/0", touched=set(), now=NOW)
    assert gone.view is None
    assert gone.records == {"users": None}
    await store.save("user", [gone])
    assert store.records == {}
