"""The `traitflow` command line."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from attributes.rules import RuleFileError, RuleSet, load_rules
from traitflow.cli_context import Environment, environment, settings_of
from traitflow.cli_dead_letters import app as dead_letters_app
from traitflow.cli_export import app as export_app
from traitflow.cli_profiles import app as profiles_app
from traitflow.cli_profiles import jobs_app
from traitflow.cli_recount import recount_command
from traitflow.cli_rules import app as rules_app
from traitflow.config import Settings
from traitflow.redis_client import access_problem
from traitflow.rule_catalog import RuleSource
from traitflow.runtime import tune_gc
from traitflow.services import ServiceError, embedded_services

if TYPE_CHECKING:
    from api.keys import KeyStore
    from attributes.offers import Service

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
services_app = typer.Typer(no_args_is_help=True, help="The embedded broker and Redis.")
app.add_typer(services_app, name="services")
keys_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke.")
app.add_typer(keys_app, name="keys")
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(export_app, name="export")
app.add_typer(profiles_app, name="profiles")
app.add_typer(jobs_app, name="jobs")
profiles_app.command("recount")(recount_command)
app.add_typer(rules_app, name="rules")
write_key_app = typer.Typer(no_args_is_help=True, help="HTTP ingest write keys: make one.")
app.add_typer(write_key_app, name="write-key")


@app.callback()
def _environment(ctx: typer.Context) -> None:
    # the one read of the process's environment: commands get settings_of(ctx)
    ctx.obj = Environment(os.environ)


def _rules_or_exit(path: Path, settings: Settings) -> RuleSet:
    """The rules, checked against the entities the settings declare."""
    try:
        return load_rules(path, settings.entities)
    except RuleFileError as exc:
        typer.echo(f"invalid rule file:\n{exc}", err=True)
        raise typer.Exit(2) from None


def _current_rules_or_exit(settings: Settings) -> tuple[RuleSource, tuple[RuleSet, int]]:
    """The rule file and the current rules: the file's with the attributes made
    through the API (`traitflow.rule_catalog`), at their version, as a running worker
    reads them (`streams.rule_switch`)."""
    import redis

    from streams.rule_switch import RuleSwitch
    from traitflow.rule_catalog import RedisRuleCatalog

    async def current(source: RuleSource) -> tuple[RuleSet, int]:
        catalog = RedisRuleCatalog.from_url(settings, settings.key_prefix)
        try:
            return await RuleSwitch(catalog, source).current()
        except (redis.RedisError, OSError) as exc:
            # safe: every commit is checked against the current version, and one made
            # with the file alone is refused and computed again once Redis answers
            logging.getLogger(__name__).warning(
                "Redis did not answer (%r): starting with the rule file alone", exc
            )
            return source.compose(()), 0
        finally:
            await catalog.close()

    try:
        source = RuleSource.read(settings.rules_path, settings.entities)
        return source, asyncio.run(current(source))
    except RuleFileError as exc:
        typer.echo(f"invalid rules (file, or attributes made through the API):\n{exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def validate(
    ctx: typer.Context,
    rules: Path = typer.Argument(..., help="rule file to check"),
    personalization: Path | None = typer.Option(
        None,
        "--personalization",
        help="personalization file to check with the rules (default: "
        "TRAITFLOW_PERSONALIZATION_FILE, if set)",
    ),
) -> None:
    """Check a rule file, and the personalization file against it; print every problem
    with file, line and what it is in (attribute, audience, service)."""
    settings = settings_of(ctx)
    personalization = personalization or settings.personalization_file
    services = None
    if personalization is None:
        ruleset = _rules_or_exit(rules, settings)
    else:
        # the personalization file is checked even when the rules are not usable (its
        # own problems then; the names its offers read need the rules)
        try:
            ruleset = load_rules(rules, settings.entities)
        except RuleFileError as exc:
            typer.echo(f"invalid rule file:\n{exc}", err=True)
            _personalization_or_exit(personalization, settings, None)
            raise typer.Exit(2) from None
        services = _personalization_or_exit(personalization, settings, ruleset)
    counts = []
    for entity in ruleset.entities:
        part = ruleset.of(entity)
        counts.append(
            f"{entity} {len(part.names)} ({len(part.windowed)} windowed, "
            f"{len(part.derived)} derived)"
        )
    audiences = f", {len(ruleset.audiences)} audiences" if ruleset.audiences else ""
    typer.echo(f"{rules}: {len(ruleset.names)} attributes OK: {', '.join(counts)}{audiences}")
    if services is not None:
        offers = sum(len(service.offers) for service in services.values())
        typer.echo(f"{personalization}: {len(services)} service(s), {offers} offer(s) OK")


def _personalization_or_exit(
    path: Path, settings: Settings, rules: RuleSet | None
) -> dict[str, Service]:
    """The personalization file's services, checked as the API checks them and, given
    the rules, for offers naming what the rules do not declare; exits 2 on problems."""
    from api.td_config import PersonalizationFileError, load_personalization

    try:
        return load_personalization(path, list(settings.entities), list(settings.sources), rules)
    except PersonalizationFileError as exc:
        typer.echo(f"invalid personalization file:\n{exc}", err=True)
        raise typer.Exit(2) from None


def _redis_or_exit(settings: Settings) -> None:
    """Refuse to start against a Redis that could evict traitflow's keys."""
    from traitflow.redis_checks import UnsafeRedis, check_redis

    try:
        check_redis(settings, settings.redis_sync)
    except UnsafeRedis as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def worker(
    ctx: typer.Context,
    loglevel: str = typer.Option("info", help="debug, info, warning"),
    processes: int | None = typer.Option(
        None,
        min=1,
        help="worker processes in the consumer group (default: TRAITFLOW_WORKER_PROCESSES, "
        "else one per core). 1: this process is the worker; N > 1: it supervises N, "
        "process i serving metrics on TRAITFLOW_WORKER_METRICS_PORT + i",
    ),
) -> None:
    """Run the stream worker: ingest topics -> computed attributes -> Redis."""
    from traitflow.supervisor import Supervisor, resolve_processes

    settings = settings_of(ctx)
    _redis_or_exit(settings)
    _kafka_or_exit(settings)
    _rules_or_exit(settings.rules_path, settings)  # refused before any process starts
    count = resolve_processes(processes, settings.worker_processes)
    if count > 1:
        logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(message)s")
        command = [sys.executable, "-m", "traitflow", "worker", "--processes", "1"]
        supervisor = Supervisor(
            [*command, "--loglevel", loglevel],
            count,
            metrics_port=settings.worker_metrics_port,
            env=environment(ctx).environ,  # each child reads it once, at its own start
        )
        raise typer.Exit(supervisor.run())

    import faust

    from streams.app import create_app
    from streams.metrics import WorkerMetrics

    source, (rules, version) = _current_rules_or_exit(settings)
    metrics = WorkerMetrics()
    faust_app = create_app(settings, rules, metrics, source=source, rules_version=version)
    if settings.worker_metrics_port is not None:
        metrics.serve(settings.api_host, settings.worker_metrics_port)
    tune_gc()
    faust.Worker(faust_app, loglevel=loglevel).execute_from_commandline()


def _kafka_or_exit(settings: Settings) -> None:
    """Refuse to start when the broker refuses what the settings say (its TLS
    certificate not trusted, the SASL credentials or mechanism refused), with a message
    naming the settings to check: Faust's own start would end in a traceback saying
    only that it could not bootstrap. A broker that did not answer or closed the
    connection is logged and left to Faust's start, as before."""
    from traitflow.kafka_client import connection_problem

    problem = asyncio.run(connection_problem(settings))
    if problem is None:
        return
    if problem.fatal:
        typer.echo(f"error: {problem.message}", err=True)
        raise typer.Exit(1)
    logging.getLogger(__name__).warning("%s", problem.message)


@app.command()
def api(
    ctx: typer.Context,
    host: str | None = typer.Option(None, help="default: TRAITFLOW_API_HOST"),
    port: int | None = typer.Option(None, help="default: TRAITFLOW_API_PORT"),
    workers: int = typer.Option(1, help="API worker processes"),
) -> None:
    """Serve profiles over HTTP."""
    import uvicorn

    from api.app import served_app

    settings = settings_of(ctx)
    _redis_or_exit(settings)
    uvicorn.run(
        # one process: the app made from these settings; more: uvicorn starts each from
        # the factory, which reads the environment they inherit, once, as this did
        served_app(settings) if workers == 1 else "api.app:create_served_app",
        factory=workers != 1,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        log_level="warning",
    )


@app.command()
def produce(
    ctx: typer.Context,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON-lines events"),
    topic: str | None = typer.Option(None, help="default: the first ingest topic"),
) -> None:
    """Publish a JSON-lines file of events (one event per line)."""
    from aiokafka.errors import KafkaError

    from traitflow.kafka_client import failure_message
    from traitflow.topics import publish_file

    settings = settings_of(ctx)
    try:
        sent = asyncio.run(publish_file(settings, file, topic))
    except KafkaError as exc:  # what the broker refused, if it did, says more
        typer.echo(f"error: {asyncio.run(failure_message(settings, exc))}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"published {sent} events")


@services_app.command("up")
def services_up(ctx: typer.Context) -> None:
    """Start the embedded broker and Redis (those not pointed elsewhere by env vars)."""
    settings = settings_of(ctx)
    try:
        for service in embedded_services(settings):
            service.start()
            typer.echo(f"{service.name}: up on {service.host}:{service.port}")
    except ServiceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@services_app.command("down")
def services_down(ctx: typer.Context) -> None:
    """Stop everything traitflow started: demo worker and API, broker, Redis."""
    from traitflow.demo import demo_processes

    settings = settings_of(ctx)
    for daemon in [*demo_processes(settings), *embedded_services(settings)]:
        daemon.stop()
        typer.echo(f"{daemon.name}: down")


@services_app.command("status")
def services_status(ctx: typer.Context) -> None:
    """Show which embedded services and demo processes run."""
    from traitflow.demo import demo_processes

    settings = settings_of(ctx)
    for service in embedded_services(settings):
        state = "up" if service.running() else "down"
        typer.echo(f"{service.name}: {state} ({service.host}:{service.port})")
    for process in demo_processes(settings):
        typer.echo(f"{process.name}: {'up' if process.pid() else 'down'}")


@app.command()
def demo(
    ctx: typer.Context,
    events: Path = typer.Option(Path("examples/events.jsonl"), exists=True, dir_okay=False),
    user: str = typer.Option("user-1", help="the profile to print"),
    timeout: float = typer.Option(120.0, help="seconds to wait for the profile"),
) -> None:
    """Start everything, publish sample events and print the served profile."""
    from traitflow.demo import DemoError, run_demo

    try:
        run_demo(settings_of(ctx), events, user, timeout, environment(ctx).environ)
    except (DemoError, ServiceError) as exc:
        typer.echo(f"demo failed: {exc}", err=True)
        raise typer.Exit(1) from None


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _with_keys(settings: Settings, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Run `action` against the Redis key store of `settings`; an unreachable Redis is a
    message, not a traceback (and names host and port only: the URL may hold a password)."""
    import redis

    from api.keys import RedisKeyStore

    async def run() -> T:
        store = RedisKeyStore.from_url(settings, settings.key_prefix)
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except redis.RedisError as exc:
        if problem := access_problem(exc, settings):  # credentials, TLS, ACL: what to set
            raise _fail(problem, 1) from None
        host, port = settings.redis_host_port
        raise _fail(f"Redis at {host}:{port}: {exc}", 1) from None


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: str = typer.Option(..., help="who or what the key is for"),
    collection: list[str] | None = typer.Option(
        None, "--collection", help="a collection it may read (repeat for more)"
    ),
    destination: list[str] | None = typer.Option(
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
        raise _fail("--admin reads everything: give it without --collection/--destination")
    if not (admin or collections or destinations):
        raise _fail("a key needs a scope: --admin, or at least one --collection or --destination")
    unknown = sorted(set(collections) - set(settings.collections))
    if unknown:
        configured = ", ".join(sorted(settings.collections)) or "none"
        raise _fail(f"unknown collection {unknown[0]!r} (TRAITFLOW_COLLECTIONS has: {configured})")
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
        raise _fail(str(exc)) from None
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
        raise _fail(f"{key_id!r} is not a key id (12 hex digits, as `traitflow keys list` shows)")
    if not _with_keys(settings, lambda keys: keys.revoke(key_id)):
        raise _fail(f"no API key with id {key_id}", 1)
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
        raise _fail(
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
