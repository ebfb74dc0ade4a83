"""`traitflow profiles recount`: what it refuses before any I/O (the recount itself
against a real Redis: tests/integration/test_profile_counts.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from traitflow.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def unreachable_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Were a refused command to reach Redis, it would fail with exit 1."""
    monkeypatch.setenv("TRAITFLOW_REDIS_URL", "redis://127.0.0.1:1/0")


def test_a_recount_needs_the_workers_stopped() -> None:
    result = runner.invoke(app, ["profiles", "recount"])
    assert result.exit_code == 2
    assert "stop every worker first, then pass --workers-stopped" in result.output


def test_an_unknown_entity_is_refused() -> None:
    result = runner.invoke(app, ["profiles", "recount", "--entity", "shop", "--workers-stopped"])
    assert result.exit_code == 2
    assert "unknown entity 'shop'" in result.output


def test_an_unreachable_redis_is_a_message_not_a_traceback() -> None:
    result = runner.invoke(app, ["profiles", "recount", "--workers-stopped"])
    assert result.exit_code == 1
    assert "Redis did not answer" in result.output
