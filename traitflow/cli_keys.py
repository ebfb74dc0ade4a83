"""`traitflow keys` and `traitflow write-key`: the commands that make the credentials
clients present (API keys for reads, write keys for the HTTP ingest). Registered on
`traitflow` by `traitflow.cli`.

They are one module because they share their concern: a secret is shown once, at its
making, and never again (only its hash is kept or configured), and a refusal is a
message naming what to fix, not a traceback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import typer

from traitflow.cli_context import fail, redis_failure, run_closing, settings_of
from traitflow.config import Settings

if TYPE_CHECKING:
    from api.keys import KeyStore

T = TypeVar("T")

keys_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke.")
write_key_app = typer.Typer(no_args_is_help=True, help="HTTP ingest write keys: make one.")


def _with_keys(settings: Settings, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Run `action` against the Redis key store of `settings`; an unreachable Redis is a
    message, not a traceback (and names host and port only: the URL may hold a password)."""
    import redis

    from api.keys import RedisKeyStore

    try:
        return run_closing(lambda: RedisKeyStore.from_url(settings, settings.key_prefix), action)
    except redis.RedisError as exc:
        raise redis_failure(settings, exc) from None


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: str = typer.Option(..., help="who or what the key is for"),
    collection: list[str] | None = typer.Option(  # noqa: B008 - typer's parameter idiom
        None, "--collection", help="a collection it may read (repeat for more)"
    ),
    destination: list[str] | None = typer.Option(  # noqa: B008 - typer's parameter idiom
        None, "--destination", help="an activation destination it may read (repeat for more)"
    ),
    admin: bool = typer.Option(False, "--admin", help="it may read everything"),
    rate: float | None = typer.Option(None, help="requests/s; default TRAITFLOW_API_RATE_PER_S"),
    burst: int | None = typer.Option(None, help="burst; default TRAITFLOW_API_BURST"),
) -> None:
    """Create a key and print it: the only time it is shown (only its hash is kept)."""
    from api.keys import InvalidKeyParameters, new_key

    settings = settings_of(ctx)
    collections, destinations = collection or [], destination or []
    if admin and (collections or destinations):
        raise fail("--admin reads everything: give it without --collection/--destination")
    if not (admin or collections or destinations):
        raise fail("a key needs a scope: --admin, or at least one --collection or --destination")
    unknown = sorted(set(collections) - set(settings.collections))
    if unknown:
        configured = ", ".join(sorted(settings.collections)) or "none"
        raise fail(f"unknown collection {unknown[0]!r} (TRAITFLOW_COLLECTIONS has: {configured})")
    try:
        record, token = new_key(
            name,
            admin=admin,
            collections=collections,
            destinations=destinations,
            rate_per_s=rate,
            burst=burst,
        )
    except InvalidKeyParameters as exc:
        raise fail(str(exc)) from None
    _with_keys(settings, lambda keys: keys.create(record))
    typer.echo(token)
    typer.echo(
        f"created key {record.key_id} ({name}: {record.scopes()}). This is the only time "
        "it is shown: store it now. Send it as 'Authorization: Bearer <key>'.",
        err=True,
    )


@keys_app.command("list")
def keys_list(ctx: typer.Context) -> None:
    """List keys: id, name, scopes, rate limit, creation time (never secrets)."""
    settings = settings_of(ctx)
    records = _with_keys(settings, lambda keys: keys.list_keys())
    if not records:
        typer.echo("no API keys")
        return
    rows = [("ID", "NAME", "SCOPES", "RATE/S", "BURST", "CREATED (UTC)")]
    for key in records:
        rate = key.rate_per_s if key.rate_per_s is not None else settings.api_rate_per_s
        burst = key.burst if key.burst is not None else settings.api_burst
        created = datetime.fromtimestamp(key.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        rows.append((key.key_id, key.name, key.scopes(), f"{rate:g}", str(burst), created))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key_id: str = typer.Argument(..., help="the key's id, as `keys list` shows"),
) -> None:
    """Delete a key. API processes refuse it within TRAITFLOW_API_KEY_CACHE_S seconds."""
    from api.keys import KEY_ID

    settings = settings_of(ctx)
    if KEY_ID.fullmatch(key_id) is None:
        raise fail(f"{key_id!r} is not a key id (12 hex digits, as `traitflow keys list` shows)")
    if not _with_keys(settings, lambda keys: keys.revoke(key_id)):
        raise fail(f"no API key with id {key_id}", 1)
    typer.echo(
        f"revoked key {key_id}; API processes refuse it within {settings.api_key_cache_s:g}s"
    )


@write_key_app.command("new")
def write_key_new(
    ctx: typer.Context,
    source: str = typer.Option(..., help="the source its events come from (TRAITFLOW_SOURCES)"),
) -> None:
    """Make a write key; print it, the only time it is shown, then its entry for
    TRAITFLOW_WRITE_KEYS (its SHA-256 -> the source). Nothing is stored: configure it."""
    import json
    import shlex

    from api.ingest import new_write_key

    settings = settings_of(ctx)
    topics = [topic for topic, bound in settings.sources.items() if bound == source]
    if len(topics) != 1:  # the API would refuse to start with the entry
        bound = json.dumps(settings.sources)
        raise fail(
            f"source {source!r} is not bound to one ingest topic (TRAITFLOW_SOURCES: {bound})"
        )
    key, digest = new_write_key()
    typer.echo(key)
    typer.echo(json.dumps({digest: source})[1:-1])
    value = shlex.quote(json.dumps({**settings.write_keys, digest: source}))
    typer.echo(
        f"made a write key for source {source!r} (topic {topics[0]}); this is the only time it "
        "is shown: store it now.\nAdd its entry to TRAITFLOW_WRITE_KEYS of every API process "
        f"and restart them; with the value this shell has:\nTRAITFLOW_WRITE_KEYS={value}\n"
        "Send the key as the Basic auth username, with an empty password.",
        err=True,
    )
