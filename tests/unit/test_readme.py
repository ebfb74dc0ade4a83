"""The README's examples are what this version accepts and serves."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from attributes.aggregators import FUNCTIONS, unregister
from attributes.identities import DEFAULT_ACCOUNT, DEFAULT_USER, EntitySpec, IdentityRules
from attributes.rules import load_rules, parse_rules
from attributes.ruleset import RuleSet
from attributes.specs import AttributeSpec
from streams.processor import BatchProcessor, ListDeadLetters, Record
from tests.unit.conftest import ROOT
from tests.unit.trust_support import trusting
from traitflow.memory_store import MemoryProfileStore

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```yaml\n(.*?)```", README, flags=re.DOTALL)


def attribute_blocks() -> list[str]:
    """The YAML blocks of rule files or fragments of one (lists of attributes)."""
    return [block for block in BLOCKS if re.match(r"(attributes:|\s*- (name|\{name))", block)]


def test_the_readme_has_rule_examples() -> None:
    assert len(attribute_blocks()) >= 6


def test_every_rule_example_is_a_valid_attribute() -> None:
    for block in attribute_blocks():
        text = block if block.startswith("attributes:") else "attributes:\n" + block
        for attribute in yaml.safe_load(text)["attributes"]:
            AttributeSpec.model_validate(attribute)


def test_complete_rule_file_examples_load() -> None:
    complete = [block for block in attribute_blocks() if block.startswith("attributes:")]
    assert len(complete) >= 2
    for block in complete:
        parse_rules(block, "README.md")


JSON_BLOCKS = re.findall(r"```json\n(.*?)```", README, flags=re.DOTALL)


def test_the_documented_entities_are_the_default() -> None:
    documented = next(block for block in JSON_BLOCKS if block.startswith('{"user": {'))
    entities = json.loads(documented)
    assert list(entities) == ["user", "account"]
    assert EntitySpec.model_validate(entities["user"]) == DEFAULT_USER
    assert EntitySpec.model_validate(entities["account"]) == DEFAULT_ACCOUNT


@pytest.mark.anyio
async def test_the_accounts_walkthrough_serves_the_documented_account() -> None:
    """`examples/accounts.jsonl` through users and accounts, as the worker runs them."""
    documented = json.loads(next(b for b in JSON_BLOCKS if '"id": "nasa"' in b))
    lines = (ROOT / "examples" / "accounts.jsonl").read_bytes().splitlines()
    entities = {"user": IdentityRules(DEFAULT_USER), "account": IdentityRules(DEFAULT_ACCOUNT)}
    rules = load_rules(ROOT / "examples" / "rules.yaml", entities)
    store = MemoryProfileStore()
    now = datetime(2026, 11, 12, tzinfo=UTC).timestamp()
    processor = BatchProcessor(
        rules,
        store,
        ListDeadLetters(),
        clock=lambda: now,
        identities=entities,
        trust=trusting("events"),
    )
    records = [Record("events", 0, offset, line, 0) for offset, line in enumerate(lines)]
    assert (await processor.process(records)).dead_lettered == 0
    assert (
        json.loads(await store.read_view("account", "account_id", "nasa") or b"null") == documented
    )
    user = json.loads(await store.read_view("user", "user_id", "u-77") or b"null")
    assert user["traits"] == {}  # the group call's traits are the account's


@pytest.mark.anyio
async def test_the_stitching_walkthrough_serves_the_documented_profile(
    example_rules: RuleSet,
) -> None:
    """anonymous -> CRM by email -> login -> order, one event per batch, as a worker
    fed `examples/stitching.jsonl` would see them; read by each identity."""
    documented = json.loads(next(b for b in JSON_BLOCKS if '"id": "u-77"' in b))
    lines = (ROOT / "examples" / "stitching.jsonl").read_bytes().splitlines()
    store = MemoryProfileStore()
    now = datetime(2026, 11, 12, tzinfo=UTC).timestamp()
    processor = BatchProcessor(
        example_rules, store, ListDeadLetters(), clock=lambda: now, trust=trusting("events")
    )
    merges = [
        (await processor.process([Record("events", 0, offset, line, 0)])).merges
        for offset, line in enumerate(lines)
    ]
    assert merges == [0, 0, 0, 2, 0]  # the login merges the anonymous and the CRM profiles
    views = [
        await store.read_view("user", index, value)
        for index, value in [
            ("id", "u-77"),
            ("user_id", "u-77"),
            ("email", "katherine@example.com"),
            ("anonymous_id", "a-77"),
        ]
    ]
    assert len(set(views)) == 1
    served = json.loads(views[0] or b"null")
    shown = {**documented, "attributes": served["attributes"]}
    assert served == shown
    attributes = {k: v for k, v in documented["attributes"].items() if k != "…"}
    assert attributes.items() <= served["attributes"].items()
    assert set(store.views) == {("user", "u-77")}  # the merged-away profiles are gone


def test_the_add_a_function_example_is_one_class_and_works() -> None:
    """The section's Python blocks, run in order: the class registers itself, and a
    rule file uses it (with a window and a derived attribute) through the pure API;
    the blocks assert what they compute."""
    section = README.split("\n#### Add a function\n", 1)[1]
    section = re.split(r"\n#{2,4} ", section, maxsplit=1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 2
    assert "any" not in FUNCTIONS
    namespace: dict[str, Any] = {"__name__": "readme_add_a_function"}
    try:
        exec(compile(blocks[0], "README.md (the class)", "exec"), namespace)
        assert FUNCTIONS["any"] is namespace["AnyTrue"]
        exec(compile(blocks[1], "README.md (its use)", "exec"), namespace)
    finally:
        if "any" in FUNCTIONS:
            unregister("any")
    assert namespace["rules"].names == ("ever_subscribed", "subscribed_lately", "lapsed")
