"""The README's rule examples are rules this version accepts."""

from __future__ import annotations

import re

import yaml

from attributes.rules import parse_rules
from attributes.specs import AttributeSpec
from tests.unit.conftest import ROOT

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
