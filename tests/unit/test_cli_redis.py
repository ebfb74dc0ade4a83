"""`traitflow redis copy-keys`' refusals before it connects anywhere: a copy of a prefix
onto itself, and a source prefix with glob characters (SCAN would match other keys)."""

from __future__ import annotations

from typer.testing import CliRunner

from traitflow.cli import app


def test_a_copy_of_a_redis_onto_itself_is_refused() -> None:
    env = {"TRAITFLOW_REDIS_URL": "redis://127.0.0.1:16399/0"}
    result = CliRunner().invoke(
        app, ["redis", "copy-keys", "--from", "redis://127.0.0.1:16399/0"], env=env
    )
    assert result.exit_code == 1
    assert "nothing to copy" in result.output


def test_a_source_prefix_with_glob_characters_is_refused() -> None:
    env = {"TRAITFLOW_REDIS_URL": "redis://127.0.0.1:16399/0"}
    args = ["redis", "copy-keys", "--from", "redis://127.0.0.1:16398/0", "--from-prefix", "t*"]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 2
    assert "--from-prefix 't*'" in result.output
