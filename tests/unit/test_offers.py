"""Personalization services and offers (attributes.offers) and their file (api.td_config)."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from api.td_config import PersonalizationFileError, parse_personalization
from attributes.offers import (
    MAX_TOKENS,
    InvalidEventObject,
    InvalidService,
    OfferSpec,
    ServiceSpec,
    TokenSpec,
    allowed,
    call_event,
    compile_service,
    hash_token,
    offers_for,
    parse_rt_token,
    parse_td1,
)

ENTITIES = ["user", "account"]
TOPICS = ["traitflow-events"]


def service(**fields: Any) -> Any:
    spec = ServiceSpec.model_validate(
        {"name": "web", "account_id": "1", "database": "db", "table": "t", **fields}
    )
    return compile_service(spec, ENTITIES, TOPICS)


LOYAL = {
    "name": "loyal",
    "condition": "attributes.lifetime_value >= 100.0",
    "attributes": {"status": "'high'", "plan": "traits.plan", "broken": "attributes.nope + 1"},
    "batch_segments": ["1588214"],
}
MEMBERS = {"name": "members", "audience": "vip"}


def test_an_offer_is_answered_when_its_condition_is_met() -> None:
    web = service(offers=[LOYAL, MEMBERS])
    view = {"attributes": {"lifetime_value": 150.0}, "traits": {"plan": "pro"}}
    assert offers_for(web, view) == {
        "offers": {
            "loyal": {
                "attributes": {"status": "high", "plan": "pro", "broken": None},
                "batch_segments": [{"id": "1588214"}],
            }
        }
    }


@pytest.mark.parametrize(
    "view",
    [
        {"attributes": {"lifetime_value": 99.5}},
        {"attributes": {}},  # a missing attribute: not met
        {"attributes": {"lifetime_value": "lots"}},  # a failing comparison: not met
        {},
    ],
)
def test_an_unmet_or_failing_condition_answers_no_offer(view: dict[str, Any]) -> None:
    assert offers_for(service(offers=[LOYAL]), view) == {"offers": {}}


@pytest.mark.parametrize(
    ("audiences", "offered"),
    [({"vip": True}, True), ({"vip": False}, False), ({}, False), (None, False)],
)
def test_an_audience_offer_reads_the_views_audiences(audiences: Any, offered: bool) -> None:
    view = {} if audiences is None else {"_audiences": audiences}
    assert ("members" in offers_for(service(offers=[MEMBERS]), view)["offers"]) is offered


def test_no_profile_no_offer() -> None:
    assert offers_for(service(offers=[MEMBERS, LOYAL]), None) == {"offers": {}}


def test_an_offer_needs_exactly_one_criterion() -> None:
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        OfferSpec.model_validate({"name": "x"})
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        OfferSpec.model_validate({"name": "x", "audience": "a", "condition": "true"})


def test_a_service_that_does_not_compile_names_each_problem() -> None:
    with pytest.raises(InvalidService) as caught:
        service(
            entity="house",
            topic="other",
            offers=[{"name": "a", "condition": "attributes.x +"}, {"name": "b", "condition": "1"}],
        )
    text = str(caught.value)
    assert "entity 'house'" in text
    assert "topic 'other'" in text
    assert [index for index, _ in caught.value.problems] == [None, None, 0, 1]


def test_at_most_fifty_tokens() -> None:
    tokens = [{"instance_id": f"i{n}", "sha256": hash_token(f"s{n}")} for n in range(MAX_TOKENS)]
    assert len(service(tokens=tokens).tokens) == MAX_TOKENS
    extra = [*tokens, {"instance_id": "one-more", "sha256": hash_token("x")}]
    with pytest.raises(pydantic.ValidationError, match="at most 50"):
        service(tokens=extra)


def test_tokens_are_kept_by_digest_never_by_secret() -> None:
    web = service(tokens=[{"instance_id": "site", "sha256": hash_token("s3cret")}])
    assert dict(web.tokens) == {hash_token("s3cret"): "site"}
    with pytest.raises(pydantic.ValidationError):
        TokenSpec.model_validate({"instance_id": "site", "sha256": "s3cret"})


@pytest.mark.parametrize(
    ("header", "parts"),
    [
        ("1/site/abc", ("1", "site", "abc")),
        (" 1/site/abc ", ("1", "site", "abc")),
        ("1/site", None),
        ("1//abc", None),
        ("1/site/abc/d", None),
        ("1/si te/abc", None),
    ],
)
def test_rt_token_format(header: str, parts: tuple[str, ...] | None) -> None:
    token = parse_rt_token(header)
    assert (None if token is None else (token.account_id, token.instance_id, token.secret)) == parts


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("TD1 1/tf_key", ("1", "tf_key")),
        ("td1 1/tf_key", ("1", "tf_key")),
        ("Bearer 1/tf_key", None),
        ("TD1 1", None),
        ("TD1 /k", None),
        ("", None),
    ],
)
def test_td1_authorization(header: str, parsed: tuple[str, str] | None) -> None:
    assert parse_td1(header) == parsed


def test_the_body_becomes_a_track_event() -> None:
    body = {
        "email": "Ada@Example.com",
        "td_client_id": "c-1",
        "number_of_clicks": 10,
        "attributes": {"country": "INDIA"},
    }
    call = call_event(service(), body, message_id="m-1", timestamp="T", max_id_length=512)
    assert call.event == {
        "type": "track",
        "event": "Personalization Request",
        "messageId": "m-1",
        "timestamp": "T",
        "properties": {"number_of_clicks": 10, "country": "INDIA"},
        "anonymousId": "c-1",
        "context": {
            "traits": {"email": "Ada@Example.com"},
            "personalization": {"service": "web", "database": "db", "table": "t"},
        },
    }
    assert call.key == "c-1"


def test_a_configured_identifier_and_event_name() -> None:
    web = service(identifiers={"customer_id": "userId"})
    body = {"customer_id": 4631, "event_name": "Checkout Viewed"}
    call = call_event(web, body, message_id="m", timestamp="T", max_id_length=512)
    assert (call.event["userId"], call.event["event"], call.key) == (
        "4631",
        "Checkout Viewed",
        "4631",
    )


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([], "JSON object"),
        ({"age": 3}, "at least one identifier"),
        ({"email": " "}, "at least one identifier"),
        ({"email": {"a": 1}}, "should be a string"),
        ({"email": True}, "should be a string"),
        ({"email": "x" * 513}, "at most 512"),
        ({"email": "a@b.c", "event_name": ""}, "event_name"),
        ({"email": "a@b.c", "attributes": [1]}, "attributes should be"),
    ],
)
def test_an_invalid_event_object(body: Any, problem: str) -> None:
    with pytest.raises(InvalidEventObject, match=problem):
        call_event(service(), body, message_id="m", timestamp="T", max_id_length=512)


def test_an_identifier_may_not_overwrite_the_envelope() -> None:
    with pytest.raises(pydantic.ValidationError, match="outside the envelope"):
        service(identifiers={"email": "properties.email"})


@pytest.mark.parametrize(
    ("address", "ok"), [("10.1.2.3", True), ("192.168.0.1", False), (None, False), ("x", False)]
)
def test_the_ip_allow_list(address: str | None, ok: bool) -> None:
    assert allowed(service(allowed_ips=["10.0.0.0/8"]), address) is ok
    assert allowed(service(), address) is True


FILE = """\
services:
  - name: web
    account_id: "1"
    database: db
    table: t
    offers:
      - name: fine
        audience: vip
      - name: broken
        condition: attributes.x >
  - name: web
    account_id: "1"
    database: db
    table: t
  - name: other
    account_id: "1"
    database: db
    tble: t
"""


def test_the_file_reports_each_problem_with_its_line() -> None:
    with pytest.raises(PersonalizationFileError) as caught:
        parse_personalization(FILE, "p.yaml", ENTITIES, TOPICS)
    lines = [(problem.line, problem.name) for problem in caught.value.problems]
    assert (9, "web") in lines  # the broken offer's own line
    assert (11, "web") in lines  # the duplicate
    assert (15, "other") in lines
    assert str(caught.value).startswith("p.yaml:9: service 'web': offer 'broken'")


def test_a_valid_file() -> None:
    text = FILE.split("  - name: web\n    account_id")[0] + "".join(
        FILE.splitlines(keepends=True)[1:8]
    )
    services = parse_personalization(text, "p.yaml", ENTITIES, TOPICS)
    assert list(services) == ["web"]
    assert [o.name for o in services["web"].offers] == ["fine"]


@pytest.mark.parametrize("text", ["services: [", "- a", "services: {}"])
def test_a_file_that_is_no_list_of_services(text: str) -> None:
    with pytest.raises(PersonalizationFileError, match=r"p\.yaml"):
        parse_personalization(text, "p.yaml", ENTITIES, TOPICS)


def test_the_example_file_loads() -> None:
    from api.td_config import load_personalization

    services = load_personalization("examples/personalization.yaml", ENTITIES, TOPICS)
    assert dict(services["web"].tokens) == {hash_token("example-secret"): "site"}
