"""`traitflow rules`: the computed attributes API (`/data/core/ca/attributes`) from the
command line, against the same Redis catalog and through the same core
(`traitflow.rule_changes`), so a change made here is checked, refused and versioned
exactly as one made through the API.

A refused change prints what is wrong and exits 2, as `traitflow validate` does; an
unreachable Redis exits 1. `status` shows each attribute's status and, while one
backfills (`PROCESSING`), a progress bar with its percentage and ETA; `--watch`
redraws it every second until none is backfilling."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import typer
import yaml

from attributes.catalog import LifecycleError, Status
from attributes.rules import RuleFileError
from traitflow import rule_changes
from traitflow.cli_context import fail, redis_failure, run_closing, settings_of
from traitflow.config import Settings
from traitflow.rule_catalog import Catalog, RedisRuleCatalog, RuleCatalog, RuleSource
from traitflow.rule_changes import ConfiguredAttribute, UnknownAttribute

T = TypeVar("T")

app = typer.Typer(
    no_args_is_help=True,
    help="Computed attributes (as the API's /data/core/ca/attributes): list, show, create, "
    "update, delete, and backfill status.",
)

#: seconds between two draws of `status --watch`
WATCH_INTERVAL_S = 1.0
#: characters of a progress bar
BAR_WIDTH = 24


def open_catalog(settings: Settings) -> RuleCatalog:
    """The catalog the API and the workers use (tests put a memory one here)."""
    return RedisRuleCatalog.from_url(settings, settings.key_prefix)


def _source(settings: Settings) -> RuleSource:
    try:
        return RuleSource.read(settings.rules_path, settings.entities)
    except RuleFileError as exc:
        raise fail(f"invalid rule file (TRAITFLOW_RULES_PATH):\n{exc}") from None


def _run(settings: Settings, action: Callable[[RuleCatalog], Awaitable[T]]) -> T:
    """Run `action` against the catalog; a refusal is its message and exit 2, an
    unreachable Redis a message (host and port only: a URL may hold a password) and
    exit 1, never a traceback."""
    import redis

    try:
        return run_closing(lambda: open_catalog(settings), action)
    except (UnknownAttribute, ConfiguredAttribute) as exc:
        raise fail(str(exc)) from None
    except (RuleFileError, LifecycleError) as exc:
        raise fail(f"refused: {rule_changes.problem_text(exc)}") from None
    except (redis.RedisError, OSError) as exc:
        raise redis_failure(settings, exc) from None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _mapping(text: str, what: str) -> dict[str, Any]:
    """A YAML or JSON mapping (JSON is YAML); exit 2 naming `what` otherwise."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise fail(f"{what} is not YAML or JSON: {exc}") from None
    if not isinstance(value, dict):
        raise fail(f"{what} must be a mapping of fields (as the API's body), not {value!r}")
    return value


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def duration_text(seconds: float) -> str:
    """`45s`, `3m05s`, `2h07m`: an ETA as people read one."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def progress_text(progress: Mapping[str, Any], now_ms: int, width: int = BAR_WIDTH) -> str:
    """A backfill's progress (`done`, `total`, `started_ms`, and the `phase` it is in)
    as the phase, a bar, the percentage, the counts and an ETA (the rate so far,
    carried over what is left). Without a total it says how many are done; without a
    start or anything done, no ETA."""
    done = progress.get("done")
    total = progress.get("total")
    phase = progress.get("phase")
    prefix = f"{phase} " if isinstance(phase, str) and phase else ""
    if not isinstance(done, int | float) or (not done and not total):
        return prefix.strip() or "waiting to start"
    if not isinstance(total, int | float) or total <= 0:
        return f"{prefix}{done:,} done"
    fraction = min(max(done / total, 0.0), 1.0)
    filled = int(fraction * width)
    bar = "#" * filled + "-" * (width - filled)
    text = f"{prefix}[{bar}] {fraction * 100:5.1f}%  {done:,}/{total:,}"
    started = progress.get("started_ms")
    if isinstance(started, int | float) and 0 < done < total and now_ms > started:
        left = (now_ms - started) / 1000 * (total - done) / done
        return f"{text}  ETA {duration_text(left)}"
    return text + ("  ETA ?" if done < total else "")


def listed_rows(attributes: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = [["ID", "NAME", "ENTITY", "STATUS", "ORIGIN"]]
    rows += [[a["id"], a["name"], a["entity"], a["status"], a["origin"]] for a in attributes]
    return rows


def status_lines(source: RuleSource, catalog: Catalog, now_ms: int) -> list[str]:
    """What `status` draws: the rules version, then each attribute with its status and,
    while it backfills, its progress."""
    rows = [["ID", "NAME", "STATUS", "BACKFILL"]]
    for attribute in rule_changes.listed(source, catalog):
        shown = ""
        if attribute["status"] == Status.PROCESSING:
            shown = progress_text(attribute.get("progress") or {}, now_ms)
        rows.append([attribute["id"], attribute["name"], attribute["status"], shown])
    running = catalog.recomputation
    if running is not None:  # every attribute, for source delete jobs
        phase = "RENDERING" if running.rendering else "PROCESSING"
        shown = progress_text(running.progress, now_ms)
        rows.append(["recomputation", f"generation {running.version}", phase, shown])
    return [f"rules version {catalog.version}", *table(rows)]


def backfilling(catalog: Catalog) -> bool:
    processing = any(a.status is Status.PROCESSING for a in catalog.attributes)
    return processing or catalog.recomputation is not None


async def pause(seconds: float) -> None:
    """Between two draws of `--watch` (tests replace it)."""
    await asyncio.sleep(seconds)


@app.command("list")
def list_attributes(
    ctx: typer.Context,
    entity: str | None = typer.Option(None, help="only this entity's"),
    status: Status | None = typer.Option(None, case_sensitive=False, help="only this status"),  # noqa: B008
) -> None:
    """The rule file's attributes (origin file, read-only) and those made through the
    API or this command (origin api): id, name, entity, status, origin."""
    settings = settings_of(ctx)
    source = _source(settings)
    catalog = _run(settings, lambda catalog: catalog.snapshot())
    every = rule_changes.listed(source, catalog, entity=entity, status=status)
    typer.echo(f"rules version {catalog.version}")
    for line in table(listed_rows(every)):
        typer.echo(line)


@app.command("show")
def show(
    ctx: typer.Context,
    attribute_id: str = typer.Argument(..., help="its id: ca-… or file:NAME, as `list` shows"),
) -> None:
    """One attribute as the API's GET /data/core/ca/attributes/{id} answers (JSON)."""
    settings = settings_of(ctx)
    catalog = _run(settings, lambda catalog: catalog.snapshot())
    try:
        _echo_json(rule_changes.found(catalog, attribute_id, lambda: _source(settings)))
    except UnknownAttribute as exc:
        raise fail(str(exc)) from None


@app.command("create")
def create(
    ctx: typer.Context,
    file: Path | None = typer.Argument(  # noqa: B008 - typer's parameter idiom
        None, exists=True, dir_okay=False, help="the attribute, as YAML or JSON"
    ),
    body: str | None = typer.Option(None, "--json", help="the attribute, inline (JSON)"),
) -> None:
    """Make an attribute: the API's POST body, a rule as a rule file writes it (`name`,
    `function`, `event`, `where`, `lookback`, ...) plus `status` (`DRAFT`, the default,
    or `ACTIVE`). Checked with the rule file and the others as `validate` checks a file;
    prints it as stored."""
    if (file is None) == (body is None):
        raise fail("give the attribute as a FILE or with --json, one of them")
    settings = settings_of(ctx)
    if file is not None:
        definition = _mapping(file.read_text(encoding="utf-8"), str(file))
    else:
        definition = _mapping(body or "", "--json")
    source = _source(settings)
    made = _run(
        settings,
        lambda catalog: rule_changes.create(
            catalog, source, definition, now_ms=_now_ms(), backfill=settings.backfill
        ),
    )
    _echo_json(rule_changes.described(made))


@app.command("update")
def update(
    ctx: typer.Context,
    attribute_id: str = typer.Argument(..., help="its id (ca-…)"),
    patch: str = typer.Option(..., "--json", help='the API\'s PATCH body: {"status": "ACTIVE"}'),
) -> None:
    """Change `description`, the condition (`where`; `expression` for a derived one),
    the window (`lookback`), `event` or `status` (null removes a field). A change of
    what it counts starts its state afresh (a new revision); prints it as stored."""
    settings = settings_of(ctx)
    changes = _mapping(patch, "--json")
    source = _source(settings)
    changed = _run(
        settings,
        lambda catalog: rule_changes.patch(
            catalog, source, attribute_id, changes, now_ms=_now_ms(), backfill=settings.backfill
        ),
    )
    _echo_json(rule_changes.described(changed))


@app.command("delete")
def delete(
    ctx: typer.Context,
    attribute_id: str = typer.Argument(..., help="its id (ca-…)"),
) -> None:
    """Delete an attribute: workers stop computing it and each profile's state of it
    is dropped at its next write. One another attribute or an audience reads cannot go."""
    settings = settings_of(ctx)
    source = _source(settings)
    after = _run(settings, lambda catalog: rule_changes.delete(catalog, source, attribute_id))
    typer.echo(f"deleted {attribute_id}; rules version {after.version}")


@app.command("status")
def status(
    ctx: typer.Context,
    watch: bool = typer.Option(
        False, "--watch", help="redraw every second until no attribute is backfilling"
    ),
) -> None:
    """Each attribute's status; a backfilling (PROCESSING) one's progress bar and ETA."""
    settings = settings_of(ctx)
    source = _source(settings)
    redraw = watch and sys.stdout.isatty()

    async def draw(catalog: RuleCatalog) -> None:
        while True:
            current = await catalog.snapshot()
            if redraw:
                typer.echo("\x1b[H\x1b[2J", nl=False)  # home, clear: draw in place
            for line in status_lines(source, current, _now_ms()):
                typer.echo(line)
            if not (watch and backfilling(current)):
                return
            await pause(WATCH_INTERVAL_S)
            if not redraw:
                typer.echo("")

    _run(settings, draw)


@app.command("backfill")
def backfill(
    ctx: typer.Context,
    attribute_id: str = typer.Argument(..., help="its id (ca-…)"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="compute over the topic's history, write nothing, report"
    ),
    sample: int = typer.Option(10, min=1, max=1000, help="profiles to report"),
) -> None:
    """What a backfill makes of an attribute, for a sample of profiles: the value each
    is served now, and after. A PROCESSING attribute's history joins its live values; a
    DRAFT's (or an ACTIVE one's, as a check) is computed over the whole topic. The
    backfill itself starts when an attribute is made ACTIVE (workers run it)."""
    if not dry_run:
        raise fail("only --dry-run: a backfill starts when the attribute is made ACTIVE")
    from streams.dry_run import dry_run as preview  # the worker's parts: loaded here only

    settings = settings_of(ctx)
    source = _source(settings)
    try:
        found = asyncio.run(preview(settings, source, attribute_id, sample))
    except LookupError as exc:
        raise fail(str(exc.args[0])) from None
    width = max([len("profile"), *(len(p.profile) for p in found)])
    typer.echo(f"{'profile':<{width}}  {'now':>14}  {'after':>14}")
    for p in found:
        typer.echo(f"{p.profile:<{width}}  {_shown(p.before):>14}  {_shown(p.after):>14}")
    changed = sum(p.before != p.after for p in found)
    typer.echo(f"{len(found)} profiles, {changed} would change; nothing was written")


def _shown(value: object) -> str:
    return "-" if value is None else json.dumps(value)
