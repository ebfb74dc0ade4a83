"""`traitflow profiles`: what `delete` refuses before any I/O (the command against a real
worker, broker and Redis: tests/integration/test_erasure.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from traitflow.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def unreachable_services(monkeypatch: pytest.MonkeyPatch) -> None:
    """Were a refused command to reach Redis or the broker, it would fail with exit 1."""
    monkeypatch.setenv("TRAITFLOW_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("TRAITFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:1")


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["u-1", "--entity", "shop"], "unknown entity 'shop'"),
        (["u-1", "--type", "shoe"], "unknown identity namespace 'shoe'"),
        (["  "], "1 to 1024 characters"),
    ],
)
def test_delete_refuses_what_names_no_identity(args: list[str], problem: str) -> None:
    result = runner.invoke(app, ["profiles", "delete", *args])
    assert result.exit_code == 2
    assert problem in result.output


def test_an_unreachable_redis_is_a_message_not_a_traceback() -> None:
    result = runner.invoke(app, ["profiles", "erasure", "er-0"])
    assert result.exit_code == 1
    assert "did not answer" in result.output


def test_a_job_for_a_source_no_topic_is_bound_to_is_refused() -> None:
    result = runner.invoke(app, ["jobs", "create", "--source", "erp"])
    assert result.exit_code == 2
    assert "not a configured source" in result.output
