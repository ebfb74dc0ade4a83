"""`traitflow write-key new`: a fresh write key, shown once, and the entry that makes the
API take it, in TRAITFLOW_WRITE_KEYS's own format (checked by an API given it)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex

import pytest
from typer.testing import CliRunner, Result

from api.app import create_app
from api.ingest import WRITE_KEY_PREFIX, writer_of
from api.publisher import ListPublisher
from tests.unit import api_support
from traitflow.cli import app
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore

runner = CliRunner()
SOURCES = {"events-web": "web", "events-server": "server", "a": "twice", "b": "twice"}
EXISTING = {hashlib.sha256(b"old-key").hexdigest(): "server"}


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Were the command to reach Redis or the broker, it would fail."""
    monkeypatch.setenv("TRAITFLOW_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("TRAITFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("TRAITFLOW_SOURCES", json.dumps(SOURCES))
    monkeypatch.delenv("TRAITFLOW_WRITE_KEYS", raising=False)


def new(source: str) -> Result:
    return runner.invoke(app, ["write-key", "new", "--source", source])


def made(result: Result) -> tuple[str, str]:
    """The key and the entry the command printed (stdout: nothing else)."""
    assert result.exit_code == 0, result.output
    key, entry = result.stdout.splitlines()
    return key, entry


def test_it_prints_a_fresh_key_and_its_entry() -> None:
    key, entry = made(new("web"))
    assert key.startswith(WRITE_KEY_PREFIX)
    assert len(key) >= len(WRITE_KEY_PREFIX) + 32
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert entry == f'"{digest}": "web"'
    assert key not in made(new("web"))[0]  # another each time


@pytest.mark.anyio
async def test_the_entry_is_what_the_api_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    key, entry = made(new("web"))
    monkeypatch.setenv("TRAITFLOW_WRITE_KEYS", "{" + entry + "}")
    settings = Settings.from_environ(os.environ)
    writer = writer_of(settings, key)
    assert (writer.source, writer.topic) == ("web", "events-web")
    published = ListPublisher()
    api = create_app(settings, store=MemoryProfileStore(), publisher=published)
    async with api_support.serve(api, key=None) as client:
        auth = base64.b64encode(f"{key}:".encode()).decode()
        response = await client.post(
            "/v1/track",
            json={"userId": "u1", "event": "E"},
            headers={"Authorization": f"Basic {auth}"},
        )
    assert response.status_code == 200, response.text
    assert [topic for topic, _, _ in published.records] == ["events-web"]


def test_it_shows_the_configured_value_with_the_entry_added(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRAITFLOW_WRITE_KEYS", json.dumps(EXISTING))
    result = new("web")
    key, _ = made(result)
    assert "only time it is shown" in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "TRAITFLOW_WRITE_KEYS=" in line]
    [assignment] = shlex.split(line)  # as a shell reads it
    value = json.loads(assignment.removeprefix("TRAITFLOW_WRITE_KEYS="))
    assert value == {**EXISTING, hashlib.sha256(key.encode()).hexdigest(): "web"}
    assert Settings(sources=SOURCES, write_keys=value).write_keys == value


@pytest.mark.parametrize("source", ["nowhere", "twice", ""])
def test_a_source_not_bound_to_one_ingest_topic_is_refused(source: str) -> None:
    result = new(source)
    assert result.exit_code == 2, result.output
    assert f"error: source {source!r} is not bound to one ingest topic" in result.output
    assert WRITE_KEY_PREFIX not in result.output
    assert "Traceback" not in result.output


def test_the_command_is_listed_and_needs_a_source() -> None:
    listed = runner.invoke(app, ["write-key", "--help"])
    assert listed.exit_code == 0
    assert "new" in listed.output
    missing = runner.invoke(app, ["write-key", "new"])
    assert missing.exit_code == 2
    assert "--source" in missing.output
