"""The CLI's pure commands; the ones that run services are integration-tested."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from traitflow.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_validate_accepts_the_example_rules() -> None:
    result = runner.invoke(app, ["validate", str(ROOT / "examples" / "rules.yaml")])
    assert result.exit_code == 0, result.output
    assert (
        "23 attributes OK: user 19 (3 windowed, 2 derived), account 4 (1 windowed, 1 derived)"
        in result.output
    )


def test_validate_reports_file_line_attribute_and_problem(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "attributes:\n"
        "  - name: ok\n"
        "    function: count\n"
        "  - name: spend\n"
        "    function: total\n"
        "    field: properties.revenue\n"
    )
    result = runner.invoke(app, ["validate", str(rules)])
    assert result.exit_code == 2
    assert f"{rules}:4: attribute 'spend': function:" in result.output


def test_commands_are_listed() -> None:
    result = runner.invoke(app, ["--help"])
    for command in ("worker", "api", "services", "produce", "validate", "demo"):
        assert command in result.output


def test_worker_processes_option_says_its_default_and_the_metrics_ports() -> None:
    result = runner.invoke(app, ["worker", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())  # unwrapped from rich's box
    assert "TRAITFLOW_WORKER_PROCESSES, else one per core" in text, text
    assert "TRAITFLOW_WORKER_METRICS_PORT + i" in text, text


def test_worker_refuses_zero_processes() -> None:
    result = runner.invoke(app, ["worker", "--processes", "0"])
    assert result.exit_code == 2


# --- the personalization file, checked with the rules -------------------------------------

RULES = """\
attributes:
  - {name: lifetime_value, function: sum, field: properties.revenue}
audiences:
  - {name: big_spenders, condition: lifetime_value >= 500.0}
"""

PERSONALIZATION = """\
services:
  - name: web
    account_id: "1234"
    database: p13n_db
    table: customer_info_table
    offers:
      - name: loyal
        condition: attributes.lifetime_value >= 100.0
      - name: vip
        audience: big_spenders
"""


def files(tmp_path: Path, personalization: str, rules: str = RULES) -> tuple[Path, Path]:
    (tmp_path / "rules.yaml").write_text(rules)
    (tmp_path / "p13n.yaml").write_text(personalization)
    return tmp_path / "rules.yaml", tmp_path / "p13n.yaml"


def test_validate_checks_the_example_personalization_file_with_the_rules() -> None:
    result = runner.invoke(
        app,
        [
            "validate",
            str(ROOT / "examples" / "rules.yaml"),
            "--personalization",
            str(ROOT / "examples" / "personalization.yaml"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "23 attributes OK" in result.output
    assert "personalization.yaml: 1 service(s), 2 offer(s) OK" in result.output


def test_validate_reads_the_personalization_file_of_the_settings(tmp_path: Path) -> None:
    rules, p13n = files(tmp_path, PERSONALIZATION)
    env = {"TRAITFLOW_PERSONALIZATION_FILE": str(p13n)}
    result = runner.invoke(app, ["validate", str(rules)], env=env)
    assert result.exit_code == 0, result.output
    assert f"{p13n}: 1 service(s), 2 offer(s) OK" in result.output
    result = runner.invoke(
        app, ["validate", str(rules)], env={"TRAITFLOW_PERSONALIZATION_FILE": None}
    )
    assert "offer(s)" not in result.output  # none configured: the rules alone


def test_validate_reports_offers_naming_what_the_rules_do_not_declare(tmp_path: Path) -> None:
    rules, p13n = files(
        tmp_path,
        PERSONALIZATION.replace("lifetime_value >=", "lifetime_valu >=").replace(
            "audience: big_spenders", "audience: big_spender"
        ),
    )
    result = runner.invoke(app, ["validate", str(rules), "--personalization", str(p13n)])
    assert result.exit_code == 2, result.output
    assert "invalid personalization file:" in result.output
    assert (
        f"{p13n}:7: service 'web': offer 'loyal': condition: the rules declare no user "
        "attribute 'lifetime_valu' at column 12 (did you mean 'lifetime_value'?)"
    ) in result.output
    assert (
        f"{p13n}:9: service 'web': offer 'vip': the rules declare no user audience "
        "'big_spender' (did you mean 'big_spenders'?)"
    ) in result.output
    assert "OK" not in result.output


def test_validate_reports_a_personalization_file_that_is_no_yaml(tmp_path: Path) -> None:
    rules, p13n = files(tmp_path, PERSONALIZATION.replace("offers:", "offers: [", 1))
    result = runner.invoke(app, ["validate", str(rules), "--personalization", str(p13n)])
    assert result.exit_code == 2, result.output
    assert f"{p13n}:7: not valid YAML: " in result.output


def test_validate_reports_both_files_when_the_rules_are_broken(tmp_path: Path) -> None:
    rules, p13n = files(
        tmp_path,
        PERSONALIZATION.replace("table: customer_info_table", "entity: shop"),
        RULES.replace("function: sum", "function: summ"),
    )
    result = runner.invoke(app, ["validate", str(rules), "--personalization", str(p13n)])
    assert result.exit_code == 2, result.output
    assert f"{rules}:2: attribute 'lifetime_value': function:" in result.output
    assert f"{p13n}:2: service 'web': table: Field required" in result.output
