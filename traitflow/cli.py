"""The `traitflow` command line."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from attributes.rules import RuleFileError, load_rules
from attributes.ruleset import RuleSet
from traitflow.cli_context import Environment, environment, settings_of
from traitflow.cli_dead_letters import app as dead_letters_app
from traitflow.cli_export import app as export_app
from traitflow.cli_keys import keys_app, write_key_app
from traitflow.cli_profiles import app as profiles_app
from traitflow.cli_profiles import jobs_app
from traitflow.cli_recount import recount_command
from traitflow.cli_redis import app as redis_app
from traitflow.cli_rules import app as rules_app
from traitflow.config import Settings
from traitflow.rule_catalog import RuleSource
from traitflow.runtime import tune_gc
from traitflow.services import ServiceError, embedded_services

if TYPE_CHECKING:
    from attributes.offers import Service

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
services_app = typer.Typer(no_args_is_help=True, help="The embedded broker and Redis.")
app.add_typer(services_app, name="services")
app.add_typer(keys_app, name="keys")
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(export_app, name="export")
app.add_typer(profiles_app, name="profiles")
app.add_typer(jobs_app, name="jobs")
profiles_app.command("recount")(recount_command)
app.add_typer(rules_app, name="rules")
app.add_typer(redis_app, name="redis")
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
    supervised: bool = typer.Option(False, "--supervised", hidden=True),
) -> None:
    """Run the stream worker: ingest topics -> computed attributes -> Redis (and, with
    TRAITFLOW_BACKFILL_PROCESS on, the backfill process beside the workers)."""
    from traitflow.supervisor import Supervisor, resolve_processes

    settings = settings_of(ctx)
    _redis_or_exit(settings)
    _kafka_or_exit(settings)
    _rules_or_exit(settings.rules_path, settings)  # refused before any process starts
    count = resolve_processes(processes, settings.worker_processes)
    # --supervised: a child of the supervisor, the worker itself
    if not supervised and (count > 1 or settings.backfill_process):
        logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(message)s")
        command = [sys.executable, "-m", "traitflow", "worker", "--processes", "1"]
        backfills = [sys.executable, "-m", "traitflow", "backfills", "--loglevel", loglevel]
        supervisor = Supervisor(
            [*command, "--supervised", "--loglevel", loglevel],
            count,
            metrics_port=settings.worker_metrics_port,
            backfills=backfills if settings.backfill_process else None,
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


@app.command(hidden=True)
def backfills(
    ctx: typer.Context,
    loglevel: str = typer.Option("info", help="debug, info, warning"),
) -> None:
    """Run backfills in a process of their own, holding no partitions: what `traitflow
    worker` starts beside its workers with TRAITFLOW_BACKFILL_PROCESS on."""
    from streams.backfill_process import main

    settings = settings_of(ctx)
    logging.basicConfig(
        level=loglevel.upper(),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] backfills: %(message)s",
    )
    source, (rules, version) = _current_rules_or_exit(settings)
    main(settings, source, rules, version)


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
