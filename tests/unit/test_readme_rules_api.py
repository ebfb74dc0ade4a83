"""README, "Computed attributes through the API": its examples are what the API and
`traitflow rules` take and answer, over the example rule file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from attributes.catalog import ManagedAttribute, Status
from traitflow import cli_rules
from traitflow.cli import app
from traitflow.cli_rules import status_lines
from traitflow.rule_catalog import Catalog, MemoryRuleCatalog, RuleSource
from traitflow.rule_changes import described

README = Path(__file__).resolve().parents[2] / "README.md"
TITLE = "### Computed attributes through the API"
EXAMPLE_RULES = Path(__file__).resolve().parents[2] / "examples" / "rules.yaml"

NOW_MS = 10_000_000

runner = CliRunner()


def section() -> str:
    text = README.read_text()
    start = text.index(f"\n{TITLE}\n")
    end = text.index("\n### ", start + 1)
    return text[start:end]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(), re.DOTALL)


@pytest.fixture
def catalog(monkeypatch: pytest.MonkeyPatch) -> MemoryRuleCatalog:
    made = MemoryRuleCatalog()
    monkeypatch.setenv("TRAITFLOW_RULES_PATH", str(EXAMPLE_RULES))
    monkeypatch.setenv("TRAITFLOW_BACKFILL", "false")  # ACTIVE at once, as the README shows
    monkeypatch.setenv("TRAITFLOW_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(cli_rules, "open_catalog", lambda settings: made)
    return made


def cli(*args: str) -> Any:
    result = runner.invoke(app, ["rules", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_file_and_the_post_body_make_the_documented_attribute(
    catalog: MemoryRuleCatalog,
) -> None:
    (body,) = blocks("yaml")
    (answer,) = blocks("json")
    documented = json.loads(answer)
    curl = blocks("sh")[0]
    post = re.search(r"\$CA -d '(\{.*?\})'", curl, re.DOTALL)
    assert post is not None
    posted = json.loads(post[1])
    assert posted == yaml.safe_load(body)

    made = json.loads(cli("create", "--json", json.dumps(posted)))
    patch = re.search(r"-d '(\{\"status\": \"ACTIVE\"\})'", curl)
    assert patch is not None
    active = json.loads(cli("update", made["id"], "--json", patch[1]))
    assert set(active) == set(documented)
    times = ("id", "createEpoch", "updateEpoch")
    assert {k: v for k, v in active.items() if k not in times} == {
        k: v for k, v in documented.items() if k not in times
    }
    stored = catalog.catalog.get(made["id"])
    assert stored is not None
    assert described(stored) == active


def test_the_documented_list_counts_what_the_example_rules_and_the_attribute_make(
    catalog: MemoryRuleCatalog,
) -> None:
    cli("create", "--json", json.dumps({**yaml.safe_load(blocks("yaml")[0]), "status": "ACTIVE"}))
    curl = blocks("sh")[0]
    total = re.search(r'"totalCount":(\d+)', curl)
    assert total is not None
    listed = cli("list", "--status", "ACTIVE", "--entity", "user").splitlines()[2:]
    assert len(listed) == int(total[1])
    first = re.search(r'"computedAttributes":\[\n#  (\{.*?\}),', curl, re.DOTALL)
    assert first is not None
    shown = json.loads(first[1].replace("\n#   ", ""))
    assert listed[0].split() == [shown["id"], shown["name"], "user", "ACTIVE", "file"]


def test_the_documented_status_is_what_status_draws() -> None:
    documented = [
        line.removeprefix("# ") for line in blocks("sh")[1].splitlines() if line.startswith("# ")
    ]
    backfilling = documented[-1].split()
    done, total = (int(n.replace(",", "")) for n in backfilling[-3].split("/"))
    eta = re.fullmatch(r"(\d+)m(\d+)s", backfilling[-1])
    assert eta is not None
    # started when the documented counts at their rate so far leave the documented ETA
    elapsed_ms = (int(eta[1]) * 60 + int(eta[2])) * 1000 * done // (total - done)
    progress = {"phase": "reading", "done": done, "total": total, "started_ms": NOW_MS - elapsed_ms}
    definition = {"name": backfilling[1], "function": "count"}
    attribute = ManagedAttribute(
        backfilling[0], Status.PROCESSING, definition, 1, 1, progress=progress
    )
    source = RuleSource.read(EXAMPLE_RULES, ["user", "account"])
    drawn = status_lines(source, Catalog(2, (attribute,)), NOW_MS)
    assert drawn[0] == documented[0]
    assert [line.split() for line in drawn[1:3]] == [line.split() for line in documented[1:3]]
    assert drawn[-1].split() == backfilling
