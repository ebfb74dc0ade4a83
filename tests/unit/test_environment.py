"""The environment is read once, at the entry point: `Settings.from_environ` builds
settings from the mapping it is given, and components are given settings.

(What each variable means is tests/unit/test_config.py's; this is where it is read.)"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from api.app import create_app, create_served_app
from api.state import state_of
from traitflow.cli import app
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

#: the package directories whose modules are components, entry points among them
PACKAGES = ("api", "attributes", "streams", "traitflow")

#: (module, function) that may touch the process's environment: the entry points that
#: read it once, and what hands it on, untouched, to a child process
MAY_READ_OS_ENVIRON = {
    ("api/app.py", "create_served_app"),  # uvicorn's factory: a worker process's entry
    ("traitflow/cli.py", "_environment"),  # the CLI's callback
    ("traitflow/cli_context.py", "environment"),  # a sub-app invoked on its own
    ("traitflow/config.py", "child_env"),  # a child's PATH etc., TRAITFLOW_* replaced
    ("traitflow/supervisor.py", "Supervisor"),  # its children's default environment
    ("traitflow/objectstore.py", "run"),  # the broker's, plus its S3 keys
}
#: modules that may build settings from an environment (`Settings.from_environ`)
MAY_BUILD_FROM_ENVIRON = {"api/app.py", "traitflow/cli_context.py"}


@pytest.fixture
def conflicting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process's environment says otherwise than the mapping the tests give."""
    monkeypatch.setenv("TRAITFLOW_BATCH_SIZE", "9")
    monkeypatch.setenv("TRAITFLOW_KAFKA_BOOTSTRAP", "kafka.elsewhere:9092")
    monkeypatch.setenv("TRAITFLOW_REDIS_URL", "redis://redis.elsewhere:6379/0")
    monkeypatch.setenv("TRAITFLOW_COLLECTIONS", '{"people": "user"}')


@pytest.mark.usefixtures("conflicting")
def test_settings_from_a_mapping_read_only_that_mapping() -> None:
    settings = Settings.from_environ({"TRAITFLOW_BATCH_SIZE": "5"})
    assert settings.batch_size == 5
    assert settings.kafka_bootstrap == "127.0.0.1:19092"
    assert settings.collections == {"users": "user", "accounts": "account"}
    # which broker is the user's own follows the mapping too: the embedded one's timeouts
    assert not settings.kafka_is_external
    assert not settings.redis_is_external
    assert settings.group_timeouts == (2.0, 1.0, 0.5)
    assert settings.fetch_wait == 5


@pytest.mark.usefixtures("conflicting")
def test_settings_from_values_read_no_environment() -> None:
    settings = Settings(app_id="x")
    assert settings.batch_size == 2000
    assert settings.kafka_bootstrap == "127.0.0.1:19092"
    assert not settings.kafka_is_external
    assert not settings.isolated("copy").kafka_is_external


def test_an_external_broker_is_one_the_mapping_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAITFLOW_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("TRAITFLOW_REDIS_URL", raising=False)
    settings = Settings.from_environ({"TRAITFLOW_KAFKA_BOOTSTRAP": "kafka:9092"})
    assert settings.kafka_is_external
    assert not settings.redis_is_external
    assert settings.group_timeouts == (10.0, 5.0, 3.0)
    assert settings.fetch_wait == 500
    assert settings.isolated("copy").kafka_is_external


def test_values_override_the_mapping() -> None:
    environ = {"TRAITFLOW_SOURCES": '{"a": "web"}', "TRAITFLOW_BATCH_SIZE": "5"}
    settings = Settings.from_environ(environ, batch_size=7)
    assert (settings.batch_size, settings.sources) == (7, {"a": "web"})


@pytest.mark.usefixtures("conflicting")
def test_the_api_app_uses_the_settings_it_is_given() -> None:
    settings = Settings(collections={"users": "user"})
    assert state_of(create_app(settings, store=MemoryProfileStore())).settings is settings


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Mapping[str, str]]:
    """The environments `Settings.from_environ` is called with."""
    calls: list[Mapping[str, str]] = []
    original = Settings.from_environ.__func__  # type: ignore[attr-defined]

    def counted(cls: type[Settings], /, environ: Mapping[str, str], **values: Any) -> Settings:
        calls.append(dict(environ))
        settings: Settings = original(cls, environ, **values)
        return settings

    monkeypatch.setattr(Settings, "from_environ", classmethod(counted))
    return calls


def test_the_uvicorn_factory_reads_the_environment_once(
    reads: list[Mapping[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAITFLOW_COLLECTIONS", '{"people": "user"}')
    app = create_served_app()
    assert len(reads) == 1
    assert state_of(app).settings.collections == {"people": "user"}


@pytest.mark.parametrize(
    "arguments",
    [
        ["validate", str(ROOT / "examples" / "rules.yaml")],
        ["keys", "create", "--name", "x", "--collection", "nope"],  # refused before Redis
        ["keys", "revoke", "not-an-id"],
        ["dead-letters", "show", "not-an-id"],
    ],
)
def test_a_command_reads_the_environment_once(
    reads: list[Mapping[str, str]], monkeypatch: pytest.MonkeyPatch, arguments: list[str]
) -> None:
    monkeypatch.setenv("TRAITFLOW_COLLECTIONS", '{"people": "user"}')
    result = runner.invoke(app, arguments)
    assert result.exit_code in (0, 2), result.output
    assert len(reads) == 1
    assert reads[0]["TRAITFLOW_COLLECTIONS"] == '{"people": "user"}'


def test_help_needs_no_settings(
    reads: list[Mapping[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAITFLOW_BATCH_SIZE", "not a number")
    result = runner.invoke(app, ["worker", "--help"])
    assert result.exit_code == 0, result.output
    assert reads == []


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))


def _enclosing(tree: ast.Module) -> dict[ast.AST, str]:
    """Each node -> the name of the innermost function or class it is in."""
    owner: dict[ast.AST, str] = {}

    def visit(node: ast.AST, name: str) -> None:
        owner[node] = name
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = node.name
        for child in ast.iter_child_nodes(node):
            visit(child, name)

    visit(tree, "<module>")
    return owner


def test_only_entry_points_read_the_process_environment() -> None:
    found = set()
    for module, tree in _modules():
        owner = _enclosing(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("environ", "getenv")
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
            ):
                found.add((module, owner[node]))
    assert found <= MAY_READ_OS_ENVIRON, found - MAY_READ_OS_ENVIRON


def test_components_are_given_settings_not_building_them() -> None:
    building = []
    for module, tree in _modules():
        if module == "traitflow/config.py":
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            call = node.func
            if isinstance(call, ast.Name) and call.id == "Settings":
                building.append(f"{module}:{node.lineno}: Settings(...)")
            if (
                isinstance(call, ast.Attribute)
                and call.attr == "from_environ"
                and module not in MAY_BUILD_FROM_ENVIRON
            ):
                building.append(f"{module}:{node.lineno}: from_environ")
    assert building == []
