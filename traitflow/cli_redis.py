"""`traitflow redis copy-keys`: copy a deployment's keys from another Redis into the
one the settings name, renaming the prefix (`tf:` to `{tf}:` on a Redis Cluster):
how a deployment on a single Redis moves to a cluster (`traitflow.redis_copy`;
README, "Redis Cluster").

The target is the settings' Redis, connected to as every traitflow process connects
(cluster mode, TLS, credentials: `traitflow.redis_client`); the source is a URL given
here, so that both can be reached from one process. Messages name hosts and ports,
never a URL (it may hold a password)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import redis
import typer
from redis.cluster import RedisCluster

from traitflow.cli_context import fail, settings_of
from traitflow.redis_client import RedisTarget, access_problem, sync_client
from traitflow.redis_copy import BATCH, copy_keys, count_keys, writes_during
from traitflow.redis_copy_spread import copy_to_spread, count_profiles
from traitflow.spread_layout import SpreadLayout

app = typer.Typer(no_args_is_help=True, help="Redis: copy a deployment's keys to another Redis.")

#: a key prefix, as TRAITFLOW_KEY_PREFIX takes it (`ConnectionSettings.key_prefix`)
PREFIX = re.compile(r"\{?[A-Za-z0-9_.-]{1,64}\}?")
#: how long the source is watched for writes before the copy starts (seconds)
QUIET_S = 2.0


def _source(url: str, password_file: Path | None, ca_file: Path | None) -> redis.Redis:
    options: dict[str, Any] = {"socket_timeout": 30.0, "socket_connect_timeout": 5.0}
    if password_file is not None:
        options["password"] = password_file.read_text().strip()
    if urlsplit(url).scheme == "rediss" and ca_file is not None:
        options["ssl_ca_certs"] = str(ca_file)
    return redis.Redis.from_url(url, **options)


@app.command("copy-keys")
def copy_keys_command(
    ctx: typer.Context,
    source_url: str = typer.Option(
        ...,
        "--from",
        help="the Redis to copy from: redis://host:port/db or rediss://...; a password "
        "in it is seen by local users (ps): prefer --from-password-file",
    ),
    from_prefix: str | None = typer.Option(
        None, help="the source's key prefix (default: the settings' prefix without braces)"
    ),
    from_password_file: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="a file holding the source's password"),
    ] = None,
    from_ca_file: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="the CA of a rediss:// source's certificate"
        ),
    ] = None,
    batch: int = typer.Option(BATCH, min=1, max=10_000, help="keys per SCAN and round trip"),
    force: bool = typer.Option(
        False, help="copy even if the source is being written to (another deployment's writes)"
    ),
) -> None:
    """Copy every key under the prefix from --from into the settings' Redis (a cluster
    or not), renaming the prefix to the settings' (`{tf}` in cluster mode), with its
    TTL (DUMP/RESTORE REPLACE, in batches). Stop every worker and API first. Safe to
    run again after an interruption: what was copied is overwritten."""
    settings = settings_of(ctx)
    new_prefix = settings.key_prefix
    old_prefix = from_prefix or new_prefix.strip("{}")
    if not PREFIX.fullmatch(old_prefix):  # a glob character would match other keys
        raise fail(f"--from-prefix {old_prefix!r}: letters, digits, '_', '.', '-' (or braces)", 2)
    parts = urlsplit(source_url)
    where = f"{parts.hostname}:{parts.port or 6379}"
    target_where = RedisTarget.of(settings).where
    if where == target_where and old_prefix == new_prefix:
        raise fail(f"the source is the target ({where}, prefix {old_prefix!r}): nothing to copy", 1)
    source = _source(source_url, from_password_file, from_ca_file)
    target = sync_client(settings, socket_timeout=30.0, socket_connect_timeout=5.0)
    spread, spread_target = None, None
    if settings.redis_layout == "spread":  # each key placed by what it names
        spread = SpreadLayout.of(new_prefix, settings.redis_buckets)
        found = RedisTarget.of(settings)
        spread_target = RedisCluster.from_url(found.bare_url, **found.redis_py_kwargs())
    step = "reading the source"
    try:
        seen = writes_during(source, QUIET_S)
        if seen and not force:
            raise fail(
                f"the source Redis at {where} took {seen} writes in {QUIET_S:g} s: stop every "
                "traitflow worker and API using it, then run this again (--force if the "
                "writes are another deployment's)",
                1,
            )
        onto = f"{new_prefix}:*" if spread is None else f"the spread layout's {new_prefix} buckets"
        typer.echo(f"copying {old_prefix}:* from {where} to {onto} at {target_where}")
        shown = [time.monotonic()]

        def progress(copied: int) -> None:
            if time.monotonic() - shown[0] >= 1.0:
                shown[0] = time.monotonic()
                typer.echo(f"  {copied:,} keys copied")

        step = "copying"
        if spread is not None:
            result = copy_to_spread(source, spread_target, old_prefix, spread, progress=progress)
            step = "counting"
            in_source = count_profiles(source, f"{old_prefix}:s:*", batch)
            states = "{" + spread.base + ".b*}:s:*"  # every bucket's profile states
            in_target = count_profiles(spread_target, states, batch)
        else:
            result = copy_keys(
                source, target, old_prefix, new_prefix, batch=batch, progress=progress
            )
            step = "counting"
            in_source = count_keys(source, old_prefix, batch)
            in_target = count_keys(target, new_prefix, batch)
    except redis.RedisError as exc:
        if problem := access_problem(exc, settings):
            raise fail(
                f"while {step}: {problem}; if it was the source that refused, check --from, "
                "--from-password-file and --from-ca-file",
                1,
            ) from None
        raise fail(f"while {step}: {exc}", 1) from None
    finally:
        source.close()
        target.close()
        if spread_target is not None:
            spread_target.close()
    counted = "profiles" if spread is not None else "keys"
    typer.echo(
        f"copied {result.copied:,} keys ({result.vanished:,} expired before their copy); "
        f"{in_source:,} {counted} under {old_prefix}: at {where}, {in_target:,} "
        f"{'in its buckets' if spread is not None else f'under {new_prefix}:'} at {target_where}"
    )
    if result.source_writes and not force:
        raise fail(
            f"the source took {result.source_writes} writes during the copy: a worker or API "
            "is still running on it. Stop it and run this again (it overwrites what it copied)",
            1,
        )
    if in_source != in_target:
        raise fail(
            f"the counts differ ({in_source:,} in the source, {in_target:,} in the target): "
            "keys expired during the copy, or the target held keys of its own under the "
            "prefix. Run again; if the target still has more, it had keys before the copy",
            1,
        )
    typer.echo("done: the counts match")
