"""Fixtures shared by the unit tests: the example rules and events, and the async backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from attributes.rules import load_rules
from attributes.ruleset import RuleSet

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def example_rules() -> RuleSet:
    """The example file's `user` rules (what user profiles are computed with)."""
    return load_rules(EXAMPLES / "rules.yaml").of("user")


@pytest.fixture(scope="session")
def example_lines() -> list[bytes]:
    """The lines of examples/events.jsonl, as a producer would publish them."""
    return (EXAMPLES / "events.jsonl").read_bytes().splitlines()
