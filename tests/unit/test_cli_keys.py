"""`traitflow keys` refuses bad input before it talks to Redis (the round trip against a
real Redis is in tests/integration/test_api_keys.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from traitflow.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def unreachable_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Were any of these commands to reach Redis, they would fail differently (exit 1)."""
    monkeypatch.setenv("TRAITFLOW_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("TRAITFLOW_COLLECTIONS", '{"users": "user"}')


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--name", "x"], "a key needs a scope: --admin, or at least one --collection"),
        (["--name", "x", "--admin", "--collection", "users"], "--admin reads everything"),
        (["--name", "x", "--collection", "nope"], "unknown collection 'nope' (TRAITFLOW_COLLEC"),
        (["--name", "", "--admin"], "invalid key name ''"),
        (["--name", "x", "--admin", "--rate", "0"], "rate must be > 0"),
        (["--name", "x", "--admin", "--burst", "0"], "burst must be >= 1"),
    ],
)
def test_create_refuses_bad_input(arguments: list[str], message: str) -> None:
    result = runner.invoke(app, ["keys", "create", *arguments])
    assert result.exit_code == 2, result.output
    assert f"error: {message}" in result.output
    assert "Traceback" not in result.output
    assert "tf_" not in result.output


def test_create_needs_a_name() -> None:
    result = runner.invoke(app, ["keys", "create", "--admin"])
    assert result.exit_code == 2
    assert "--name" in result.output


@pytest.mark.parametrize("key_id", ["zz", "0123456789AB", "tf_0123456789ab_" + "a" * 43])
def test_revoke_wants_a_key_id(key_id: str) -> None:
    result = runner.invoke(app, ["keys", "revoke", key_id])
    assert result.exit_code == 2
    assert "is not a key id (12 hex digits" in result.output


def test_keys_commands_are_listed() -> None:
    result = runner.invoke(app, ["keys", "--help"])
    assert result.exit_code == 0
    for command in ("create", "list", "revoke"):
        assert command in result.output
