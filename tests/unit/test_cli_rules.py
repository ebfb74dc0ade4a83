"""`traitflow rules`: each command against a memory catalog put where the Redis one
would be, what it prints, and each refusal's message and exit code (2, as `traitflow
validate`; 1 for an unreachable Redis). The API over the same core:
tests/unit/test_api_computed_attributes.py; a real Redis: tests/integration/test_cli_rules.py."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attributes.catalog import ManagedAttribute, Status
from traitflow import cli_rules
from traitflow.cli import app
from traitflow.cli_rules import backfilling, duration_text, progress_text, status_lines
from traitflow.recomputation_requests import recompute_for
from traitflow.rule_catalog import RECOMPUTATION, Catalog, Change, MemoryRuleCatalog, RuleSource

runner = CliRunner()

RULES = """\
attributes:
  - name: lifetime_value
    function: sum
    field: properties.revenue
    description: Total revenue.
  - name: purchase_count
    function: count
    event: Order Completed
audiences:
  - name: buyers
    condition: purchase_count > 0
"""
ORDERS_30D: dict[str, object] = {
    "name": "orders_30d",
    "function": "count",
    "event": "Order Completed",
    "lookback": {"count": 30, "unit": "days"},
    "description": "Orders in the last 30 days.",
}


class Catalogs:
    """The one memory catalog every command of a test opens (closing it keeps it)."""

    def __init__(self) -> None:
        self.catalog = MemoryRuleCatalog()

    def stored(self) -> Catalog:
        return self.catalog.catalog


@pytest.fixture
def catalogs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Catalogs:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    monkeypatch.setenv("TRAITFLOW_RULES_PATH", str(rules))
    monkeypatch.setenv("TRAITFLOW_BACKFILL", "false")  # ACTIVE at once
    # were a command to reach for Redis, it would fail with exit 1
    monkeypatch.setenv("TRAITFLOW_REDIS_URL", "redis://127.0.0.1:1/0")
    made = Catalogs()
    monkeypatch.setattr(cli_rules, "open_catalog", lambda settings: made.catalog)
    return made


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["rules", *args])
    return result.exit_code, result.output


def created(catalogs: Catalogs, body: dict[str, object]) -> str:
    code, output = invoke("create", "--json", json.dumps(body))
    assert code == 0, output
    return str(json.loads(output)["id"])


def test_list_shows_the_file_s_attributes_then_those_made_here(catalogs: Catalogs) -> None:
    made = created(catalogs, ORDERS_30D)
    code, output = invoke("list")
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0] == "rules version 1"
    assert lines[1].split() == ["ID", "NAME", "ENTITY", "STATUS", "ORIGIN"]
    assert [line.split() for line in lines[2:]] == [
        ["file:lifetime_value", "lifetime_value", "user", "ACTIVE", "file"],
        ["file:purchase_count", "purchase_count", "user", "ACTIVE", "file"],
        [made, "orders_30d", "user", "DRAFT", "api"],
    ]
    code, output = invoke("list", "--status", "DRAFT")
    assert [line.split()[0] for line in output.splitlines()[2:]] == [made]
    code, output = invoke("list", "--entity", "account")
    assert output.splitlines()[2:] == []


def test_create_from_a_yaml_file_and_show_print_the_api_s_json(
    catalogs: Catalogs, tmp_path: Path
) -> None:
    body = tmp_path / "orders.yaml"
    body.write_text(
        "name: orders_30d\nfunction: count\nevent: Order Completed\n"
        "lookback: {count: 30, unit: days}\nstatus: ACTIVE\n"
    )
    code, output = invoke("create", str(body))
    assert code == 0, output
    made = json.loads(output)
    assert (made["name"], made["status"], made["origin"], made["rulesVersion"]) == (
        "orders_30d",
        "ACTIVE",
        "api",
        1,
    )
    assert made["definition"] == {
        "function": "count",
        "event": "Order Completed",
        "lookback": {"count": 30, "unit": "days"},
    }
    code, output = invoke("show", made["id"])
    assert (code, json.loads(output)) == (0, made)
    code, output = invoke("show", "file:lifetime_value")
    assert code == 0, output
    assert json.loads(output) == {
        "id": "file:lifetime_value",
        "name": "lifetime_value",
        "entity": "user",
        "description": "Total revenue.",
        "status": "ACTIVE",
        "origin": "file",
    }


def test_update_and_delete_each_make_a_new_version(catalogs: Catalogs) -> None:
    made = created(catalogs, ORDERS_30D)
    code, output = invoke("update", made, "--json", '{"status": "ACTIVE"}')
    assert code == 0, output
    assert (json.loads(output)["status"], json.loads(output)["rulesVersion"]) == ("ACTIVE", 2)
    code, output = invoke("update", made, "--json", "{where: 'properties.revenue > 10.0'}")
    assert code == 0, output
    assert json.loads(output)["definition"]["revision"] == 1  # counts afresh
    code, output = invoke("delete", made)
    assert (code, output) == (0, f"deleted {made}; rules version 4\n")
    assert catalogs.stored().attributes == ()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({**ORDERS_30D, "function": "median"}, "refused: function"),
        ({**ORDERS_30D, "where": "properties.x +"}, "refused: where"),
        ({**ORDERS_30D, "name": "lifetime_value"}, "'lifetime_value' is an attribute of the rule"),
        ({**ORDERS_30D, "status": "PROCESSING"}, "refused: status: must be one of"),
        ({**ORDERS_30D, "colour": "red"}, "colour"),
    ],
)
def test_a_bad_attribute_is_refused_naming_what_is_wrong(
    catalogs: Catalogs, body: dict[str, object], problem: str
) -> None:
    code, output = invoke("create", "--json", json.dumps(body))
    assert code == 2
    assert problem in output
    assert catalogs.stored().version == 0


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["create"], "give the attribute as a FILE or with --json, one of them"),
        (["create", "--json", "[1, 2]"], "--json must be a mapping of fields"),
        (["create", "--json", "{name: ["], "--json is not YAML or JSON"),
        (["update", "ca-000000000000", "--json", "3"], "--json must be a mapping"),
        (["update", "ca-000000000000", "--json", "{}"], "'ca-000000000000' not found"),
        (["delete", "ca-000000000000"], "computed attribute 'ca-000000000000' not found"),
        (["show", "ca-000000000000"], "computed attribute 'ca-000000000000' not found"),
        (["show", "file:nothing"], "computed attribute 'file:nothing' not found"),
        (["delete", "file:lifetime_value"], "'lifetime_value' is declared in the rule file"),
        (["update", "file:lifetime_value", "--json", "{}"], "declared in the rule file"),
    ],
)
def test_what_cannot_be_done_exits_2_with_the_problem(
    catalogs: Catalogs, args: list[str], problem: str
) -> None:
    code, output = invoke(*args)
    assert code == 2
    assert problem in output


def test_an_attribute_another_reads_cannot_be_deleted_or_disabled(catalogs: Catalogs) -> None:
    base = created(catalogs, {**ORDERS_30D, "status": "ACTIVE"})
    created(catalogs, {"name": "twice", "function": "derived", "expression": "orders_30d * 2"})
    code, output = invoke("delete", base)
    assert code == 2
    assert "orders_30d" in output
    code, output = invoke("update", base, "--json", '{"status": "DISABLED"}')
    assert code == 2
    assert catalogs.stored().version == 2


def test_a_rule_file_that_cannot_be_used_exits_2(
    catalogs: Catalogs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("attributes:\n  - {name: x, function: summ}\n")
    monkeypatch.setenv("TRAITFLOW_RULES_PATH", str(broken))
    for args in (["list"], ["status"], ["create", "--json", json.dumps(ORDERS_30D)]):
        code, output = invoke(*args)
        assert code == 2, args
        assert "invalid rule file (TRAITFLOW_RULES_PATH)" in output
        assert "attribute 'x'" in output


def test_an_unreachable_redis_is_a_message_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    monkeypatch.setenv("TRAITFLOW_RULES_PATH", str(rules))
    monkeypatch.setenv("TRAITFLOW_REDIS_URL", "redis://:secret@127.0.0.1:1/0")
    code, output = invoke("list")
    assert code == 1
    assert "Redis at 127.0.0.1:1" in output
    assert "secret" not in output


# --- status and its progress bar --------------------------------------------------------

NOW_MS = 1_000_000


def test_a_progress_bar_says_the_percentage_the_counts_and_the_eta() -> None:
    # 250 of 1,000 done in 50 s: 750 left at 5/s is 150 s
    started = NOW_MS - 50_000
    shown = progress_text({"done": 250, "total": 1000, "started_ms": started}, NOW_MS, width=20)
    assert shown == "[#####---------------]  25.0%  250/1,000  ETA 2m30s"
    finished = progress_text({"done": 1000, "total": 1000, "started_ms": started}, NOW_MS, 10)
    assert finished == "[##########] 100.0%  1,000/1,000"


def test_a_progress_bar_without_a_rate_has_no_eta() -> None:
    assert progress_text({"done": 0, "total": 80}, NOW_MS, 8) == "[--------]   0.0%  0/80  ETA ?"
    assert progress_text({"done": 3, "total": 80}, NOW_MS, 8) == "[--------]   3.8%  3/80  ETA ?"
    assert progress_text({"done": 1234}, NOW_MS) == "1,234 done"
    assert progress_text({}, NOW_MS) == "waiting to start"


def test_a_backfill_s_phase_leads_its_progress() -> None:
    """What streams.backfill records: waiting for the workers, reading the topics,
    joining the histories into the profiles."""
    waiting = {"phase": "waiting", "done": 0, "total": 0, "started_ms": NOW_MS}
    assert progress_text(waiting, NOW_MS) == "waiting"
    joining = {"phase": "joining", "done": 30, "total": 40, "started_ms": NOW_MS - 3_000}
    assert progress_text(joining, NOW_MS, 4) == "joining [###-]  75.0%  30/40  ETA 1s"


def test_durations_read_as_people_do() -> None:
    assert [duration_text(s) for s in (0.4, 45, 185, 7620)] == ["0s", "45s", "3m05s", "2h07m"]


def processing(catalog: MemoryRuleCatalog, progress: dict[str, int]) -> str:
    """A PROCESSING attribute, with its backfill's progress, put in the catalog."""
    attribute = ManagedAttribute(
        "ca-0123456789ab", Status.PROCESSING, ORDERS_30D, 1, 1, progress=progress
    )
    asyncio.run(catalog.change(lambda _: Change(put=attribute)))
    return attribute.id


def test_status_lists_each_attribute_and_a_backfill_s_progress(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    catalog = MemoryRuleCatalog()
    processing(catalog, {"done": 500, "total": 1000, "started_ms": NOW_MS - 20_000})
    lines = status_lines(RuleSource.read(rules), catalog.catalog, NOW_MS)
    assert lines[0] == "rules version 1"
    assert lines[1].split() == ["ID", "NAME", "STATUS", "BACKFILL"]
    assert lines[2].split() == ["file:lifetime_value", "lifetime_value", "ACTIVE"]
    assert lines[4].endswith("[############------------]  50.0%  500/1,000  ETA 20s")
    assert lines[4].split()[:3] == ["ca-0123456789ab", "orders_30d", "PROCESSING"]


def test_status_shows_a_recomputation_for_source_delete_jobs(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    catalog = MemoryRuleCatalog()
    asyncio.run(catalog.change(recompute_for("job-1", ["crm-events"])))
    asyncio.run(catalog.set_progress(RECOMPUTATION, {"phase": "reading", "done": 1, "total": 4}))
    lines = status_lines(RuleSource.read(rules), asyncio.run(catalog.snapshot()), NOW_MS)
    assert lines[-1].split()[:5] == ["recomputation", "generation", "1", "PROCESSING", "reading"]
    assert "25.0%" in lines[-1]
    assert backfilling(catalog.catalog)  # `--watch` goes on until it is done


def test_status_watch_redraws_until_nothing_backfills(
    catalogs: Catalogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    attribute_id = processing(catalogs.catalog, {"done": 1, "total": 4})
    pauses: list[float] = []

    async def pause(seconds: float) -> None:  # the backfill ends while the command waits
        pauses.append(seconds)
        finished = catalogs.stored().get(attribute_id)
        assert finished is not None
        done = replace(finished, status=Status.ACTIVE, progress={})
        await catalogs.catalog.change(lambda _: Change(put=done))

    monkeypatch.setattr(cli_rules, "pause", pause)
    code, output = invoke("status", "--watch")
    assert code == 0, output
    assert pauses == [1.0]
    draws = output.split("\n\n")
    assert len(draws) == 2
    assert "PROCESSING  [######------------------]  25.0%  1/4  ETA ?" in draws[0]
    assert draws[1].splitlines()[-1].split() == ["ca-0123456789ab", "orders_30d", "ACTIVE"]
    code, output = invoke("status")  # without --watch: drawn once
    assert (code, output.count("rules version")) == (0, 1)
