"""`traitflow dead-letters`: what it prints, and what it refuses before any I/O (the
commands against a real broker, Redis and worker: tests/integration/test_dead_letters*.py)."""

from __future__ import annotations

import aiokafka.conn
import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed
from typer.testing import CliRunner

from streams.dead_letters import Letter
from traitflow import cli_dead_letters
from traitflow.cli import app
from traitflow.cli_dead_letters import describe, letter_rows, render_value, size_text
from traitflow.replay import ReplayLedger

runner = CliRunner()


@pytest.fixture(autouse=True)
def unreachable_services(monkeypatch: pytest.MonkeyPatch) -> None:
    """Were a refused command to reach Redis or the broker, it would fail with exit 1."""
    monkeypatch.setenv("TRAITFLOW_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("TRAITFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:1")


def test_a_value_is_pretty_json_when_it_parses_and_cut_unless_full() -> None:
    assert render_value(b'{"type":"track","userId":"u-1"}', full=False) == (
        '{\n  "type": "track",\n  "userId": "u-1"\n}'
    )
    assert render_value(b"not json \xff", full=False) == "not json \\xff"
    long = b"x" * 50
    assert render_value(long, full=False, limit=20) == (
        "x" * 20 + "\n… 30 more characters (--full shows them all)"
    )
    assert render_value(long, full=True, limit=20) == "x" * 50


def test_sizes_read_as_people_do() -> None:
    assert [size_text(n) for n in (312, 2048, 3 * 1024 * 1024)] == ["312 B", "2.0 KiB", "3.0 MiB"]


def test_rows_say_where_each_letter_is_and_whether_it_was_replayed() -> None:
    letters = [
        Letter("0:4", False, "events", 1, 30, "no id", b"{}", 1_800_000_000_000),
        Letter("0:5", False, "events", 1, 31, "no  id\nat all", b"{}", 1_800_000_000_000),
        Letter("1800000000000-0", True, "events", 2, 9, "too big", b"x" * 2048, 0),
    ]
    rows = letter_rows(letters, {0: ReplayLedger(5)})
    assert rows[0] == ["ID", "WHERE", "ORIGIN", "SIZE", "TIME (UTC)", "REASON"]
    assert rows[1] == [
        "0:4",
        "topic, replayed",
        "events/1@30",
        "2 B",
        "2027-01-15 08:00:00",
        "no id",
    ]
    assert rows[2][1] == "topic"
    assert rows[2][5] == "no id at all"
    assert rows[3][:4] == ["1800000000000-0", "parked", "events/2@9", "2.0 KiB"]


def test_show_describes_the_reason_the_error_and_the_headers() -> None:
    parked = Letter("17-0", True, "events", 2, 9, "too big", b"{}", 0, error="Message...")
    lines = describe(parked, full=False)
    assert "reason:  too big" in lines
    assert "error:   Message... (why the dead-letter topic refused it)" in lines
    on_topic = Letter("0:1", False, "e", 0, 1, "r", b"{}", 0, headers=(("h", b"v"),))
    assert "header:  h: v" in describe(on_topic, full=False)


@pytest.mark.parametrize("letter_id", ["3", "abc", "3:x", "17-", "1:2:3"])
def test_show_wants_a_dead_letter_id(letter_id: str) -> None:
    result = runner.invoke(app, ["dead-letters", "show", letter_id])
    assert result.exit_code == 2, result.output
    assert "is no dead-letter id (3:17 on the topic, 1764075301234-0 parked)" in result.output


def test_replay_refuses_a_since_it_cannot_read() -> None:
    result = runner.invoke(app, ["dead-letters", "replay", "--since", "last tuesday"])
    assert result.exit_code == 2, result.output
    assert "give a duration (30m, 2h, 7d) or a time" in result.output


def test_dead_letter_commands_are_listed() -> None:
    result = runner.invoke(app, ["dead-letters", "--help"])
    assert result.exit_code == 0
    for command in ("list", "show", "replay"):
        assert command in result.output


class RefusedBroker:
    """`DeadLetters` whose broker refused the connection as aiokafka says it: only that
    it could not bootstrap."""

    def __init__(self, settings: object) -> None:
        pass

    async def load(self, **where: bool) -> None:
        raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1, <AF_INET>)]")

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("command", [["list"], ["replay", "--dry-run"]])
def test_a_broker_that_refuses_the_credentials_is_named_with_the_settings_to_check(
    monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """The message of every command whose broker refuses it (`traitflow.kafka_client.
    failure_message`), not the client's "Unable to bootstrap"."""
    password = "not-to-be-printed"
    for name, value in {
        "SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SASL_MECHANISM": "PLAIN",
        "SASL_USERNAME": "traitflow",
        "SASL_PASSWORD": password,
    }.items():
        monkeypatch.setenv(f"TRAITFLOW_KAFKA_{name}", value)
    monkeypatch.setattr(cli_dead_letters, "DeadLetters", RefusedBroker)

    async def refuse(*args: object, **kwargs: object) -> None:
        raise SaslAuthenticationFailed("Authentication failed: invalid credentials")

    monkeypatch.setattr(aiokafka.conn, "create_conn", refuse)
    result = runner.invoke(app, ["dead-letters", *command])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        "error: Kafka at 127.0.0.1:1 (SASL_PLAINTEXT, PLAIN as 'traitflow'): the broker "
        "refused the SASL credentials ("
    ), result.output
    assert "Check TRAITFLOW_KAFKA_SASL_USERNAME, TRAITFLOW_KAFKA_SASL_PASSWORD" in result.output
    assert "Unable to bootstrap" not in result.output
    assert password not in result.output


def test_a_broker_failure_that_is_no_refusal_keeps_its_own_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker that accepts a connection as configured did not refuse the settings:
    the operation's own error is the message, with where the broker is."""
    monkeypatch.setattr(cli_dead_letters, "DeadLetters", RefusedBroker)

    class Accepted:
        def close(self) -> None:
            pass

    async def accept(*args: object, **kwargs: object) -> Accepted:
        return Accepted()

    monkeypatch.setattr(aiokafka.conn, "create_conn", accept)
    result = runner.invoke(app, ["dead-letters", "list"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        'error: Kafka at 127.0.0.1:1 (PLAINTEXT): KafkaConnectionError("Unable to bootstrap'
    ), result.output
