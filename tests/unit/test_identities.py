from __future__ import annotations

from typing import Any

import orjson
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attributes.events import Event, decode_event
from attributes.identities import DEFAULT_USER, EntitySpec, IdentityRules, IdentitySpec


def event(**fields: Any) -> Any:
    body: dict[str, Any] = {"type": "identify", **fields}
    body.setdefault("anonymousId", "anon-1")
    return decode_event(orjson.dumps(body))


USER = IdentityRules(DEFAULT_USER)


def test_the_default_user_reads_ids_and_an_email_in_priority_order() -> None:
    found = USER.extract(event(userId="u-1", traits={"email": " Ada@Example.IO "}))
    assert found == [("user_id", "u-1"), ("email", "ada@example.io"), ("anonymous_id", "anon-1")]


def test_the_first_path_with_a_usable_value_wins() -> None:
    both = event(traits={"email": "a@x.io"}, context={"traits": {"email": "b@x.io"}})
    only_context = event(context={"traits": {"email": "B@X.io"}})
    blocked_first = event(traits={"email": "null"}, context={"traits": {"email": "c@x.io"}})
    assert ("email", "a@x.io") in USER.extract(both)
    assert ("email", "b@x.io") in USER.extract(only_context)
    assert ("email", "c@x.io") in USER.extract(blocked_first)


@pytest.mark.parametrize("junk", ["", "  ", "null", "NULL", "undefined", "anonymous", "0", "None"])
def test_junk_values_are_no_identity(junk: str) -> None:
    assert USER.extract(event(traits={"email": junk})) == [("anonymous_id", "anon-1")]


@pytest.mark.parametrize("value", [True, 1.5, {"a": 1}, ["a@x.io"]])
def test_values_that_are_not_text_or_integers_are_ignored(value: Any) -> None:
    assert USER.extract(event(traits={"email": value})) == [("anonymous_id", "anon-1")]


def test_integers_are_ids_as_text() -> None:
    rules = IdentityRules(
        EntitySpec(identities=[IdentitySpec(type="crm_id", paths=["traits.crm_id"])])
    )
    assert rules.extract(event(traits={"crm_id": 42})) == [("crm_id", "42")]


def test_configured_values_and_patterns_are_blocked() -> None:
    spec = EntitySpec(
        identities=[IdentitySpec(type="email", paths=["traits.email"], normalise="email")],
        blocked=["Test@Example.com"],
        blocked_patterns=[r".*@mailinator\.com"],
    )
    rules = IdentityRules(spec)
    assert rules.extract(event(traits={"email": "test@example.com"})) == []
    assert rules.extract(event(traits={"email": "X@Mailinator.com"})) == []
    assert rules.extract(event(traits={"email": "x@mailinator.com.au"})) == [
        ("email", "x@mailinator.com.au")
    ]


def test_trim_keeps_case_and_lower_lowers() -> None:
    spec = EntitySpec(
        identities=[
            IdentitySpec(type="device", paths=["context.device.id"]),
            IdentitySpec(type="handle", paths=["traits.handle"], normalise="lower"),
        ]
    )
    found = IdentityRules(spec).extract(
        event(context={"device": {"id": " AbC "}}, traits={"handle": " @Ada "})
    )
    assert found == [("device", "AbC"), ("handle", "@ada")]


def test_the_spec_reads_as_written_in_yaml() -> None:
    spec = EntitySpec.model_validate(
        {"identities": [{"type": "email", "paths": ["traits.email"], "normalise": "email"}]}
    )
    assert spec.identities[0].paths == ["traits.email"]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"identities": []}, "at least 1"),
        ({"identities": [{"type": "Email", "paths": ["traits.email"]}]}, "lower-case"),
        ({"identities": [{"type": "email", "paths": []}]}, "at least 1"),
        ({"identities": [{"type": "email", "paths": ["traitz.email"]}]}, "must start with"),
        (
            {
                "identities": [
                    {"type": "email", "paths": ["traits.email"]},
                    {"type": "email", "paths": ["context.traits.email"]},
                ]
            },
            "listed twice",
        ),
        (
            {"identities": [{"type": "e", "paths": ["userId"]}], "blocked_patterns": ["("]},
            "blocked pattern",
        ),
        ({"identities": [{"type": "e", "paths": ["userId"], "normalise": "upper"}]}, "normalise"),
        ({"identities": [{"type": "e", "paths": ["userId"]}], "stiching": False}, "stiching"),
    ],
)
def test_bad_specs_say_what_is_wrong(raw: dict[str, Any], problem: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=problem):
        EntitySpec.model_validate(raw)


# --- limits, alias types, previousId, profile ids ---------------------------------------------


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_is_at_least_one(limit: int) -> None:
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 1"):
        IdentitySpec(type="email", paths=["traits.email"], limit=limit)


def test_a_limit_of_one_or_none_is_valid_and_compiled_per_type() -> None:
    spec = EntitySpec(
        identities=[
            IdentitySpec(type="user_id", paths=["userId"], limit=1),
            IdentitySpec(type="device", paths=["context.device.id"]),
        ]
    )
    assert IdentityRules(spec).limits == {"user_id": 1, "device": None}


def test_the_default_user_limits_and_alias_types() -> None:
    assert USER.limits == {"user_id": 1, "email": 5, "anonymous_id": 1000}
    assert DEFAULT_USER.alias_types == ["user_id", "anonymous_id"]
    assert DEFAULT_USER.stitching is True


def test_alias_types_must_be_declared_identities() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"alias type 'device' is not one of"):
        EntitySpec.model_validate(
            {"identities": [{"type": "user_id", "paths": ["userId"]}], "alias_types": ["device"]}
        )
    spec = EntitySpec.model_validate(
        {"identities": [{"type": "user_id", "paths": ["userId"]}], "alias_types": ["user_id"]}
    )
    assert spec.alias_types == ["user_id"]


def alias(**fields: Any) -> Any:
    return decode_event(orjson.dumps({"type": "alias", "userId": "u-1", **fields}))


def test_previous_is_the_previous_id_as_each_alias_type_in_order() -> None:
    assert USER.previous(alias(previousId=" a-7 ")) == [
        ("user_id", "a-7"),
        ("anonymous_id", "a-7"),
    ]
    assert USER.previous(alias(previousId=42)) == [("user_id", "42"), ("anonymous_id", "42")]


def test_previous_is_empty_for_other_events_and_aliases_without_one() -> None:
    assert USER.previous(event(previousId="a-7")) == []  # an identify
    assert USER.previous(decode_event(b'{"type": "track", "event": "x", "previousId": "a"}')) == []
    assert USER.previous(alias()) == []


@pytest.mark.parametrize("junk", ["", "  ", "null", "Undefined", "0", 0])
def test_a_blocked_previous_id_is_no_identity(junk: Any) -> None:
    assert USER.previous(alias(previousId=junk)) == []


@pytest.mark.parametrize("junk", [True, 1.5, ["a-1"]])
def test_a_previous_id_that_is_no_text_or_integer_is_no_identity(junk: Any) -> None:
    """The envelope refuses these; an event built otherwise is still safe."""
    assert USER.previous(Event(type="alias", userId="u-1", previousId=junk)) == []


def test_previous_is_normalised_per_type_and_blocked_per_entity() -> None:
    spec = EntitySpec(
        identities=[
            IdentitySpec(type="email", paths=["traits.email"], normalise="email"),
            IdentitySpec(type="device", paths=["context.device.id"]),
        ],
        alias_types=["device", "email"],
        blocked_patterns=[r"test-.*"],
    )
    rules = IdentityRules(spec)
    assert rules.previous(alias(previousId=" Ada@X.io ")) == [
        ("device", "Ada@X.io"),
        ("email", "ada@x.io"),
    ]
    assert rules.previous(alias(previousId="test-1")) == []
    no_alias_types = IdentityRules(EntitySpec(identities=spec.identities))
    assert no_alias_types.previous(alias(previousId="a-1")) == []


def test_a_profile_is_named_by_its_identity() -> None:
    assert USER.profile_id("user_id", "u-1") == "u-1"
    assert USER.profile_id("email", "ada@x.io") == "email:ada@x.io"
    assert USER.profile_id("anonymous_id", "a-9") == "anonymous_id:a-9"


def test_a_primary_value_with_a_colon_is_prefixed() -> None:
    assert USER.profile_id("user_id", "email:ada@x.io") == "user_id:email:ada@x.io"
    assert USER.profile_id("user_id", "email:ada@x.io") != USER.profile_id("email", "ada@x.io")
    assert USER.profile_id("user_id", "a:b") == "user_id:a:b"


def test_the_rank_of_a_profile_id_is_its_identity_types_priority() -> None:
    assert USER.id_rank("u-1") == 0
    assert USER.id_rank("user_id:a:b") == 0
    assert USER.id_rank("email:ada@x.io") == 1
    assert USER.id_rank("anonymous_id:a-9") == 2


identity_values = st.text(alphabet=st.sampled_from("ab:_-@x.1U"), min_size=1, max_size=8).filter(
    lambda value: value.strip() == value
)


@given(
    st.lists(
        st.tuples(st.sampled_from(USER.types), identity_values), min_size=2, max_size=2, unique=True
    )
)
def test_profile_ids_of_different_identities_never_collide(
    pair: list[tuple[str, str]],
) -> None:
    (kind_a, value_a), (kind_b, value_b) = pair
    assert USER.profile_id(kind_a, value_a) != USER.profile_id(kind_b, value_b)


@given(st.sampled_from(USER.types), identity_values)
def test_the_rank_of_any_profile_id_is_its_types(kind: str, value: str) -> None:
    assert USER.id_rank(USER.profile_id(kind, value)) == USER.rank[kind]


def test_blocked_patterns_run_in_linear_time_on_any_value() -> None:
    """Identity values come from events: a pattern that backtracks exponentially in
    Python's `re` ((a+)+$ on "aaaa…!") answers at once on RE2, matched whole."""
    spec = EntitySpec(
        identities=[IdentitySpec(type="user_id", paths=["userId"])],
        blocked_patterns=[r"(a+)+", r"guest-\d+"],
    )
    rules = IdentityRules(spec)
    hostile = "a" * 500 + "!"
    assert rules.extract(Event(type="page", userId=hostile)) == [("user_id", hostile)]
    assert rules.extract(Event(type="page", userId="a" * 500)) == []
    assert rules.extract(Event(type="page", userId="guest-42")) == []
    assert rules.extract(Event(type="page", userId="my-guest-42")) == [("user_id", "my-guest-42")]


def test_a_blocked_pattern_re2_cannot_run_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="backreferences are not supported"):
        EntitySpec(
            identities=[IdentitySpec(type="user_id", paths=["userId"])],
            blocked_patterns=[r"(a)\1"],
        )
