"""`traitflow profiles`: erase a person (GDPR) by any of their identities, and follow the
request (`traitflow.erasure_requests`; the API's `DELETE /access/entities` does the
same). The command publishes an erase command and prints the request's id; the worker
that owns its partition erases the profile in its normal commit.

`traitflow jobs`: source delete jobs (`traitflow.source_jobs`; the API's `/system/jobs`):
create one (and run it here with `--run`), list them, show one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import typer

from attributes.identities import IdentityRules
from traitflow.cli_context import fail, run_closing, settings_of
from traitflow.config import Settings
from traitflow.erasure_requests import (
    InvalidErasure,
    erase_record,
    new_request_id,
    pending_status,
    publish_erase,
    target_identity,
)
from traitflow.recomputation_requests import catalog_recomputation
from traitflow.redis_client import RedisTarget, access_problem
from traitflow.redis_store import RedisProfileStore
from traitflow.rule_catalog import RedisRuleCatalog, RuleCatalog
from traitflow.source_job_run import SourceJobRunner, kafka_publisher
from traitflow.source_jobs import (
    InvalidSourceJob,
    SourceJob,
    SourceJobStore,
    now_ms,
    source_topic,
)
from traitflow.spread_source_jobs import source_job_store
from traitflow.spread_store import SpreadProfileStore
from traitflow.store import ProfileStore

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, help="Profiles: erase one by identity (GDPR).")
jobs_app = typer.Typer(
    no_args_is_help=True, help="Source delete jobs: delete what one source contributed."
)

#: how often `--wait` asks for the status (s)
POLL_S = 0.2


def _profile_store(settings: Settings) -> ProfileStore:
    """The profile store on the settings' Redis layout (an erase request's status is in
    a bucket of its own on the spread one)."""
    if settings.redis_layout == "spread":
        target = RedisTarget.of(settings)
        return SpreadProfileStore.from_url(target, settings.key_prefix, settings.redis_buckets)
    return RedisProfileStore.from_url(settings, settings.key_prefix)


def _with_store(settings: Settings, action: Callable[[ProfileStore], Awaitable[T]]) -> T:
    """Run `action` with the profile store; an unreachable Redis or broker is a message
    (host and port only: a URL may hold a password), not a traceback."""
    import redis
    from aiokafka.errors import KafkaError

    try:
        return run_closing(lambda: _profile_store(settings), action)
    except (redis.RedisError, OSError) as exc:  # an OSError may be the broker's
        if problem := access_problem(exc, settings):  # credentials, TLS, ACL: what to set
            raise fail(problem, 1) from None
        raise fail(f"Redis or the broker did not answer: {type(exc).__name__}", 1) from None
    except KafkaError as exc:
        raise fail(f"the broker did not acknowledge: {type(exc).__name__}", 1) from None


@app.command("delete")
def delete(
    ctx: typer.Context,
    value: str = typer.Argument(..., help="the identity's value, or the profile id"),
    kind: str | None = typer.Option(
        None, "--type", help="identity type (email, user_id, ...); none: VALUE is a profile id"
    ),
    entity: str = typer.Option("user", help="the entity the profile is of"),
    wait: float = typer.Option(0.0, help="wait up to this many seconds for it to be applied"),
) -> None:
    """Erase the profile an identity finds: state, view, index keys, audiences, expiry
    entries; only a tombstone of hashed identities and offsets stays."""
    settings = settings_of(ctx)
    spec = settings.entities.get(entity)
    if spec is None:
        raise fail(f"unknown entity {entity!r}: use one of {', '.join(settings.entities)}")
    try:
        identity = target_identity(IdentityRules(spec), kind, value)
    except InvalidErasure as exc:
        raise fail(str(exc)) from None
    request = new_request_id()

    async def action(store: ProfileStore) -> bytes | None:
        await store.note_erasure(request, pending_status(request, entity, int(time.time() * 1000)))
        await publish_erase(settings, *erase_record(entity, identity, request))
        deadline = time.monotonic() + wait
        status = await store.erasure_status(request)
        while wait > 0 and _state(status) != "applied" and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            status = await store.erasure_status(request)
        return status

    status = _with_store(settings, action)
    typer.echo(request)
    if wait > 0:
        typer.echo((status or b"{}").decode())
        if _state(status) != "applied":
            raise fail(f"not applied within {wait:g} s: is a worker running?", 1)


@app.command("erasure")
def erasure(
    ctx: typer.Context, request: str = typer.Argument(..., help="the id `delete` printed")
) -> None:
    """Print an erase request's status (JSON): pending, or applied."""
    status = _with_store(settings_of(ctx), lambda store: store.erasure_status(request))
    if status is None:
        raise fail(f"no erase request {request!r} (unknown, or its status expired)", 1)
    typer.echo(status.decode())


def _state(status: bytes | None) -> str | None:
    if status is None:
        return None
    found = orjson.loads(status).get("status")
    return found if isinstance(found, str) else None


Jobs = Callable[[SourceJobStore, RuleCatalog], Awaitable[list[SourceJob | None]]]


def _shown_jobs(settings: Settings, action: Jobs) -> list[dict[str, Any] | None]:
    """The jobs `action` returns, as the API shows them (knowing which jobs' attributes
    were recomputed: the rules catalog's)."""

    async def with_store(_: ProfileStore) -> list[dict[str, Any] | None]:
        jobs = source_job_store(settings)
        catalog = RedisRuleCatalog.from_url(settings, settings.key_prefix)
        try:
            found = await action(jobs, catalog)
            recomputed = (await catalog.snapshot()).recomputed
            return [job.seen(recomputed).shown() if job else None for job in found]
        finally:
            await jobs.close()
            await catalog.close()

    return _with_store(settings, with_store)


@jobs_app.command("create")
def jobs_create(
    ctx: typer.Context,
    source: str = typer.Option(..., help="the source (Adobe: dataSetId) whose data goes"),
    run: bool = typer.Option(False, help="run it here, in the foreground, until scanned"),
) -> None:
    """Make a source delete job (an API process runs it unless --run runs it here)."""
    settings = settings_of(ctx)
    try:
        source_topic(settings, source)
    except InvalidSourceJob as exc:
        raise fail(str(exc)) from None

    async def action(jobs: SourceJobStore, catalog: RuleCatalog) -> list[SourceJob | None]:
        job = SourceJob.new(source, now_ms())
        await jobs.create(job)
        if not run:
            return [job]
        recompute = catalog_recomputation(settings, catalog)
        async with kafka_publisher(settings) as publish:
            return [await SourceJobRunner(settings, jobs, publish, recompute=recompute).run(job.id)]

    (shown,) = _shown_jobs(settings, action)
    typer.echo(orjson.dumps(shown).decode())


@jobs_app.command("list")
def jobs_list(ctx: typer.Context, limit: int = typer.Option(50, min=1)) -> None:
    """Source delete jobs, newest first (one JSON object a line)."""

    async def newest(jobs: SourceJobStore, _: RuleCatalog) -> list[SourceJob | None]:
        return list(await jobs.newest(limit))

    for shown in _shown_jobs(settings_of(ctx), newest):
        typer.echo(orjson.dumps(shown).decode())


@jobs_app.command("show")
def jobs_show(ctx: typer.Context, job_id: str = typer.Argument(...)) -> None:
    """One source delete job: status and progress (JSON)."""

    async def one(jobs: SourceJobStore, _: RuleCatalog) -> list[SourceJob | None]:
        return [await jobs.get(job_id)]

    (shown,) = _shown_jobs(settings_of(ctx), one)
    if shown is None:
        raise fail(f"no source delete job {job_id!r}", 1)
    typer.echo(orjson.dumps(shown).decode())
