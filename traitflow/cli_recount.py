"""`traitflow profiles recount`: rebuild the profile counts from every stored state
(`traitflow.profile_recount`), with the workers stopped. Registered on `traitflow
profiles` by `traitflow.cli`."""

from __future__ import annotations

import asyncio

import typer

from traitflow.cli_context import fail, settings_of
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.profile_counts import composition
from traitflow.profile_recount import Recount, recount


def recount_command(
    ctx: typer.Context,
    entity: str = typer.Option("user", help="the entity whose profiles are counted"),
    rate: float = typer.Option(2000.0, min=1.0, help="profile states read per second, at most"),
    batch: int = typer.Option(200, min=1, help="states per round (one SCAN COUNT, one MGET)"),
    workers_stopped: bool = typer.Option(
        False, "--workers-stopped", help="say that no worker runs (required)"
    ),
) -> None:
    """Count every profile of ENTITY again, per source and identity namespace, and
    replace its counters (for profiles stored before the counts existed). Stop the
    workers first: a commit during the pass would be miscounted."""
    import redis

    from traitflow.redis_client import access_problem, async_client

    settings = settings_of(ctx)
    if entity not in settings.entities:
        raise fail(f"unknown entity {entity!r}: use one of {', '.join(settings.entities)}")
    if not workers_stopped:
        raise fail("stop every worker first, then pass --workers-stopped")

    async def run() -> Recount:
        if settings.redis_layout == "spread":  # each bucket's counters, from its states
            return await spread_recount(settings, entity, rate, batch)
        client = async_client(settings, decode_responses=False)
        try:
            return await recount(
                client, KeyLayout(settings.key_prefix), entity, rate_per_s=rate, batch=batch
            )
        finally:
            await client.aclose()

    try:
        found = asyncio.run(run())
    except (redis.RedisError, OSError) as exc:
        if problem := access_problem(exc, settings):  # credentials, TLS, ACL: what to set
            raise fail(problem, 1) from None
        raise fail(f"Redis did not answer: {type(exc).__name__}", 1) from None
    counted = composition(found.counts())
    typer.echo(
        f"{found.scanned} states counted, {found.rewritten} rewritten: "
        f"{counted['profiles']} profiles; sources {counted['sources']}; "
        f"namespaces {counted['namespaces']}"
    )


async def spread_recount(settings: Settings, entity: str, rate: float, batch: int) -> Recount:
    from traitflow.spread_recount import recount_spread
    from traitflow.spread_store import SpreadProfileStore

    profiles = SpreadProfileStore.from_url(settings, settings.key_prefix, settings.redis_buckets)
    try:
        return await recount_spread(profiles, entity, rate_per_s=rate, batch=batch)
    finally:
        await profiles.close()
