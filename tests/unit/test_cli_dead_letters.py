"""`traitflow dead-letters`: what it prints, and what it refuses before any I/O (the
commands against a real broker, Redis and worker: tests/integration/test_dead_letters*.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from streams.dead_letters import Letter
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
