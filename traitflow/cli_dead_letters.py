"""`traitflow dead-letters`: list, show and replay dead letters, from the dead-letter
topic and parked in Redis (`streams.dead_letters`, `traitflow.replay`).

Ids say where a letter is: `3:17` is offset 17 of the dead-letter topic's partition 3,
`1764075301234-0` a parked letter (its Redis stream id)."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import orjson
import typer

from streams.dead_letters import Letter, letter_from_record
from traitflow.cli_context import fail, redis_failure, run_closing, settings_of
from traitflow.config import Settings
from traitflow.kafka_client import failure_message
from traitflow.replay import (
    DeadLetters,
    InvalidSince,
    LetterFilter,
    Letters,
    ReplayError,
    ReplayLedger,
    parse_since,
    plan_replay,
    topic_position,
)
from traitflow.topics import read_record

T = TypeVar("T")

app = typer.Typer(
    no_args_is_help=True,
    help="Dead letters: list, show, replay (the dead-letter topic and those parked in Redis).",
)

TOPIC_ID = re.compile(r"^(\d+):(\d+)$")
PARKED_ID = re.compile(r"^\d+-\d+$")

#: characters of a value `show` prints unless --full
SHOWN_CHARS = 2000


def _run(settings: Settings, action: Callable[[DeadLetters], Awaitable[T]]) -> T:
    """Run `action` against the dead letters of `settings`; an unreachable broker or
    Redis is a message, not a traceback (host and port only: a URL may hold a password).
    A broker that refuses the settings (credentials, certificates) is named with the
    settings to check (`traitflow.kafka_client.failure_message`), as everywhere."""
    import redis
    from aiokafka.errors import KafkaError

    try:
        return run_closing(lambda: DeadLetters(settings), action)
    except redis.RedisError as exc:
        raise redis_failure(settings, exc) from None
    except KafkaError as exc:  # what the broker refused, if it did: as `produce` says it
        raise fail(asyncio.run(failure_message(settings, exc)), 1) from None
    except ReplayError as exc:
        raise fail(str(exc), 1) from None


def size_text(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024 / 1024:.1f} MiB"


def time_text(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def letter_rows(letters: Sequence[Letter], ledgers: dict[int, ReplayLedger]) -> list[list[str]]:
    rows = [["ID", "WHERE", "ORIGIN", "SIZE", "TIME (UTC)", "REASON"]]
    for letter in letters:
        where = "parked"
        if not letter.parked:
            partition, offset = topic_position(letter)
            ledger = ledgers.get(partition)
            where = "topic, replayed" if ledger and ledger.replayed(offset) else "topic"
        rows.append(
            [
                letter.id,
                where,
                f"{letter.topic}/{letter.partition}@{letter.offset}",
                size_text(len(letter.value)),
                time_text(letter.time_ms),
                shorten(letter.reason, 70),
            ]
        )
    return rows


def render_value(value: bytes, full: bool, limit: int = SHOWN_CHARS) -> str:
    """Pretty JSON when it parses, else the text (bytes that are not UTF-8 escaped);
    cut at `limit` characters unless `full`, saying so."""
    try:
        text = orjson.dumps(orjson.loads(value), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        text = value.decode(errors="backslashreplace")
    if full or len(text) <= limit:
        return text
    return f"{text[:limit]}\n… {len(text) - limit} more characters (--full shows them all)"


def describe(letter: Letter, full: bool) -> list[str]:
    lines = [
        f"id:      {letter.id} ({'parked in Redis' if letter.parked else 'dead-letter topic'})",
        f"origin:  topic {letter.topic}, partition {letter.partition}, offset {letter.offset}",
        f"time:    {time_text(letter.time_ms)} UTC",
        f"reason:  {letter.reason}",
    ]
    if letter.parked:
        lines.append(f"error:   {letter.error} (why the dead-letter topic refused it)")
    for name, value in letter.headers:
        lines.append(f"header:  {name}: {value.decode(errors='backslashreplace')}")
    lines += [f"value:   {size_text(len(letter.value))}", render_value(letter.value, full)]
    return lines


@app.command("list")
def list_letters(
    ctx: typer.Context,
    limit: int = typer.Option(20, min=1, help="show the newest N"),
    parked: bool = typer.Option(False, "--parked", help="only the parked ones"),
) -> None:
    """List dead letters, newest last: id, where, origin, size, time, reason."""
    settings = settings_of(ctx)
    found: Letters = _run(settings, lambda letters: letters.load(topic=not parked))
    every = sorted(found.all(), key=lambda letter: letter.time_ms)
    if not every:
        typer.echo("no parked dead letters" if parked else "no dead letters")
        return
    for line in table(letter_rows(every[-limit:], found.ledgers)):
        typer.echo(line)
    where = f"{len(found.parked)} parked"
    if not parked:
        where = f"{len(found.topic)} on {settings.dead_letter_topic}, {where}"
    hidden = f"; the newest {limit} shown (--limit)" if len(every) > limit else ""
    typer.echo(f"{where}{hidden}", err=True)


@app.command("show")
def show(
    ctx: typer.Context,
    letter_id: str = typer.Argument(..., metavar="ID", help="as `dead-letters list` shows it"),
    full: bool = typer.Option(False, "--full", help="the whole value, however long"),
) -> None:
    """Show one dead letter: origin, reason, headers and the value (pretty JSON)."""
    settings = settings_of(ctx)
    topic_id = TOPIC_ID.fullmatch(letter_id)
    if topic_id is None and PARKED_ID.fullmatch(letter_id) is None:
        raise fail(
            f"{letter_id!r} is no dead-letter id (3:17 on the topic, 1764075301234-0 parked)"
        )

    async def find(letters: DeadLetters) -> Letter | None:
        if topic_id is None:
            return await letters.parking.get(letter_id)
        partition, offset = int(topic_id[1]), int(topic_id[2])
        record = await read_record(settings, settings.dead_letter_topic, partition, offset)
        if record is None:
            return None
        return letter_from_record(
            record.partition, record.offset, record.timestamp, record.value, record.headers
        )

    letter = _run(settings, find)
    if letter is None:
        raise fail(f"no dead letter {letter_id}", 1)
    for line in describe(letter, full):
        typer.echo(line)


@app.command("replay")
def replay(
    ctx: typer.Context,
    parked: bool = typer.Option(False, "--parked", help="only the parked ones"),
    since: str | None = typer.Option(None, help="dead-lettered since: 2h, 7d, 2026-11-04T09:00"),
    reason: str | None = typer.Option(None, help="only reasons containing this (any case)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be published"),
) -> None:
    """Publish dead letters' original bytes again to the topics they came from (after
    a rule or limit change). Each is published once: topic ones are recorded as
    replayed, parked ones removed."""
    settings = settings_of(ctx)
    try:
        since_ms = parse_since(since, time.time()) if since is not None else None
    except InvalidSince as exc:
        raise fail(str(exc)) from None
    letter_filter = LetterFilter(since_ms, reason)

    async def run(letters: DeadLetters) -> tuple[int, int, int]:
        found = await letters.load(topic=not parked)
        plan = plan_replay(found.all(), found.ledgers, letter_filter, settings.sources)
        for letter in plan.unroutable:
            typer.echo(
                f"skipped {letter.id}: its origin {letter.topic} is no ingest topic now "
                "(TRAITFLOW_SOURCES)",
                err=True,
            )
        if dry_run:
            if plan.publish:
                for line in table(letter_rows(plan.publish, found.ledgers)):
                    typer.echo(line)
            return len(plan.publish), len(plan.duplicates), len(plan.unroutable)
        if plan.total():
            with typer.progressbar(
                length=plan.total(), label="replaying", file=sys.stderr
            ) as progress:
                await letters.replay(plan, found.ledgers, progress.update)
        return len(plan.publish), len(plan.duplicates), len(plan.unroutable)

    published, duplicates, unroutable = _run(settings, run)
    summary = f"{'would publish' if dry_run else 'published'} {published} dead letters"
    if duplicates:
        summary += f"; {duplicates} more with the same origin as one of them, not published again"
    if unroutable:
        summary += f"; {unroutable} left as they are: their origin is no ingest topic now"
    typer.echo(summary)
