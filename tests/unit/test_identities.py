from __future__ import annotations

from typing import Any

import orjson
import pydantic
import pytest

from attributes.events import decode_event
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
