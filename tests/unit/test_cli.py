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
