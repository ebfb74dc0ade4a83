"""One problem class for both files a user writes (attributes.rules.RuleProblem), and
the names a personalization offer reads checked against the rules
(attributes.offer_names, through api.td_config.parse_personalization)."""

from __future__ import annotations

import pytest

from api.td_config import PersonalizationFileError, parse_personalization
from attributes.expressions.parser import parse
from attributes.offer_names import keys_read
from attributes.rules import RuleFileError, RuleProblem, parse_rules

ENTITIES = ["user", "account"]
TOPICS = ["traitflow-events"]

RULES = parse_rules(
    """\
attributes:
  - {name: lifetime_value, function: sum, field: properties.revenue}
  - {name: purchase_count, function: count}
  - {name: average_order, function: derived, expression: lifetime_value / double(purchase_count)}
  - {name: account_revenue, entity: account, function: sum, field: properties.revenue}
audiences:
  - {name: big_spenders, condition: lifetime_value >= 500.0}
  - {name: big_accounts, entity: account, condition: account_revenue >= 5000.0}
""",
    "rules.yaml",
    ENTITIES,
)

SERVICE = """\
services:
  - name: web
    account_id: "1"
    database: db
    table: t
    offers:
      - name: loyal
        condition: attributes.lifetime_value >= 100.0 && has(attributes.purchase_count)
        attributes: {average: "attributes['average_order']", plan: traits.plan}
      - name: vip
        audience: big_spenders
"""


# --- one problem class, one format ------------------------------------------------------


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        (RuleProblem("r.yaml", 4, "spend", "bad"), "r.yaml:4: attribute 'spend': bad"),
        (RuleProblem("r.yaml", 9, "vip", "bad", "audience"), "r.yaml:9: audience 'vip': bad"),
        (RuleProblem("p.yaml", 12, "web", "bad", "service"), "p.yaml:12: service 'web': bad"),
        (RuleProblem("p.yaml", 1, None, "bad", "service"), "p.yaml:1: bad"),
        (RuleProblem("p.yaml", None, None, "cannot read"), "p.yaml: cannot read"),
    ],
)
def test_a_problem_says_file_line_kind_name_and_problem(problem: RuleProblem, text: str) -> None:
    assert str(problem) == text


def test_the_personalization_file_reports_rule_problems_naming_services() -> None:
    with pytest.raises(PersonalizationFileError) as caught:
        parse_personalization(
            SERVICE.replace("table: t", "colour: red"), "p.yaml", ENTITIES, TOPICS
        )
    assert isinstance(caught.value, RuleFileError)  # `except RuleFileError` sees both files
    problem = caught.value.problems[0]
    assert isinstance(problem, RuleProblem)
    assert (problem.file, problem.line, problem.name, problem.kind) == (
        "p.yaml",
        2,
        "web",
        "service",
    )
    assert str(caught.value).splitlines() == [
        "p.yaml:2: service 'web': table: Field required",
        "p.yaml:2: service 'web': colour: Extra inputs are not permitted",
    ]


# --- the keys an expression reads from a map ---------------------------------------------


@pytest.mark.parametrize(
    ("source", "keys"),
    [
        ("attributes.a >= 1.0 && attributes['b'] == 'x'", ["a", "b"]),
        ("has(attributes.a) ? attributes.b.c : traits.d", ["a", "b"]),
        ("[attributes.a, {'k': attributes.b}].size() > 0 && -attributes.c < 0", ["a", "b", "c"]),
        ("attributes.exists(k, attributes.a == k)", ["a"]),
        ("[{'a': 1}].all(attributes, attributes.a == 1)", []),  # a macro variable hides it
        ("attributes[traits.key] == 1 && 'a' in attributes", []),  # not known at load
        ("traits.a == identities.b", []),
    ],
)
def test_the_keys_read_from_the_attributes_map(source: str, keys: list[str]) -> None:
    assert [key for key, _ in keys_read(parse(source), "attributes")] == keys


# --- offers checked against the rules ---------------------------------------------------


def problems(text: str) -> list[str]:
    with pytest.raises(PersonalizationFileError) as caught:
        parse_personalization(text, "p.yaml", ENTITIES, TOPICS, RULES)
    return [str(problem) for problem in caught.value.problems]


def test_offers_naming_what_the_rules_declare_pass() -> None:
    services = parse_personalization(SERVICE, "p.yaml", ENTITIES, TOPICS, RULES)
    assert [offer.name for offer in services["web"].offers] == ["loyal", "vip"]


def test_an_unknown_attribute_in_a_condition_is_reported_at_the_offer() -> None:
    text = SERVICE.replace("attributes.lifetime_value", "attributes.lifetime_valu")
    assert problems(text) == [
        "p.yaml:7: service 'web': offer 'loyal': condition: the rules declare no user "
        "attribute 'lifetime_valu' at column 12 (did you mean 'lifetime_value'?)"
    ]


def test_an_unknown_attribute_in_an_offer_attribute_is_reported_once() -> None:
    text = SERVICE.replace(
        "\"attributes['average_order']\"", "attributes.avg + attributes.avg + attributes.x"
    )
    assert problems(text) == [
        "p.yaml:7: service 'web': offer 'loyal': attribute 'average': the rules declare no "
        "user attribute 'avg' at column 12",
        "p.yaml:7: service 'web': offer 'loyal': attribute 'average': the rules declare no "
        "user attribute 'x' at column 46",
    ]


def test_an_unknown_audience_is_reported() -> None:
    assert problems(SERVICE.replace("audience: big_spenders", "audience: big_spender")) == [
        "p.yaml:10: service 'web': offer 'vip': the rules declare no user audience "
        "'big_spender' (did you mean 'big_spenders'?)"
    ]


def test_names_of_another_entity_are_unknown_to_the_service() -> None:
    text = SERVICE.replace("attributes.lifetime_value", "attributes.account_revenue").replace(
        "audience: big_spenders", "audience: big_accounts"
    )
    assert [problem.split(": ", 3)[-1] for problem in problems(text)] == [
        "condition: the rules declare no user attribute 'account_revenue' at column 12",
        "the rules declare no user audience 'big_accounts'",
    ]
    account = SERVICE.replace("table: t", "table: t\n    entity: account")
    found = problems(account.replace("attributes.lifetime_value", "attributes.account_revenue"))
    assert [problem.split(": ", 3)[-1].split(" at ")[0] for problem in found] == [
        "condition: the rules declare no account attribute 'purchase_count'",
        "attribute 'average': the rules declare no account attribute 'average_order'",
        "the rules declare no account audience 'big_spenders'",
    ]


def test_without_rules_the_names_are_not_checked() -> None:
    """The API loads the file without the rules: an unknown name is no problem there."""
    text = SERVICE.replace("lifetime_value", "nope").replace("big_spenders", "nope")
    assert list(parse_personalization(text, "p.yaml", ENTITIES, TOPICS)) == ["web"]
    assert len(problems(text)) == 2


def test_an_offer_that_does_not_compile_is_reported_once() -> None:
    text = SERVICE.replace(">= 100.0 &&", ">= &&")
    (problem,) = problems(text)
    assert problem.startswith("p.yaml:7: service 'web': offer 'loyal': condition: ")
    assert "declare" not in problem
