"""`traitflow export`: profile export jobs from the command line (`traitflow.export_jobs`).

`start` makes a job and runs it in this process, with a progress line, unless
`--detach` leaves it to the API processes; `resume` takes over a job whose runner
died (once its lease is over) or that FAILED; `status`, `list` and `cancel` work on
any job, wherever it runs. Jobs are the same ones as the API's `/export/jobs`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
import typer

from attributes.rules import RuleFileError, load_rules
from traitflow.cli_context import fail, redis_failure, run_closing, settings_of
from traitflow.config import Settings
from traitflow.export_jobs import (
    SUCCEEDED,
    ExportRefused,
    ExportSpec,
    InvalidExport,
    Job,
    described,
    progress_line,
)
from traitflow.export_run import run_job
from traitflow.export_store import ExportJobs
from traitflow.export_views import audience_size
from traitflow.redis_client import resp_client
from traitflow.resp import RespClient

T = TypeVar("T")

app = typer.Typer(
    no_args_is_help=True,
    help="Profile export jobs: start, resume, status, list, cancel.",
)

#: seconds between progress lines when stderr is not a terminal (a log)
LOG_EVERY_S = 1.0


def _run(settings: Settings, action: Callable[[RespClient], Awaitable[T]], hint: str = "") -> T:
    """Run `action` with a Redis connection; a Redis that fails is a message naming
    host and port (a URL may hold a password) and `hint`, not a traceback."""
    from attributes.errors import StoreError

    try:
        return run_closing(lambda: resp_client(settings), action)
    except (StoreError, OSError) as exc:
        raise redis_failure(settings, exc, hint) from None
    except ExportRefused as exc:
        raise fail(str(exc), 1) from None


class ProgressLine:
    """The progress of a run on stderr: one line rewritten in place on a terminal, a
    line a second otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, job: Job) -> None:
        now = time.monotonic()
        if now - self.last < (0.2 if self.tty else LOG_EVERY_S):
            return
        self.last = now
        line = progress_line(job)
        if self.tty:
            sys.stderr.write(f"\r\x1b[K{line}")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def end(self, job: Job) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
        line = progress_line(job)
        typer.echo(line + (f"\n{job.error}" if job.error else ""))


def _execute(settings: Settings, job_id: str, *, resume_failed: bool) -> None:
    """Run the job here to its end; exit 1 unless it SUCCEEDED."""
    shown = ProgressLine()

    async def action(client: RespClient) -> Job:
        return await run_job(client, settings, job_id, resume_failed=resume_failed, on_round=shown)

    hint = (
        f"\nthe job stays as it was saved: 'traitflow export resume {job_id}' goes on "
        f"from there once its lease is over ({settings.export_lease_s:g} s), or an API "
        "process takes it over"
    )
    try:
        job = _run(settings, action, hint)
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: 'traitflow export resume {job_id}' goes on", err=True)
        raise typer.Exit(130) from None
    shown.end(job)
    if job.status != SUCCEEDED:
        raise typer.Exit(1)


@app.command("start")
def start(
    ctx: typer.Context,
    entity: str = typer.Option("user", "--entity", help="whose profiles"),
    audience: str | None = typer.Option(None, "--audience", help="only this audience's members"),
    file: str | None = typer.Option(
        None, "--file", help="an NDJSON file, named in TRAITFLOW_EXPORT_DIR"
    ),
    topic: str | None = typer.Option(None, "--topic", help="a Kafka topic (created compacted)"),
    rate: float | None = typer.Option(
        None, "--rate", help="profiles read per second (default TRAITFLOW_EXPORT_RATE_PER_S)"
    ),
    batch: int | None = typer.Option(
        None, "--batch", help="profiles per round (default TRAITFLOW_EXPORT_BATCH)"
    ),
    detach: bool = typer.Option(
        False, "--detach", help="make the job only: an API process runs it"
    ),
) -> None:
    """Export profiles to a file or a topic: make a job and run it here, with progress."""
    settings = settings_of(ctx)
    if (file is None) == (topic is None):
        raise fail("give one of --file NAME or --topic NAME")
    spec = ExportSpec(
        entity=entity,
        audience=audience,
        destination="file" if file is not None else "topic",
        target=file if file is not None else str(topic),
        rate_per_s=rate or settings.export_rate_per_s,
        batch=batch or settings.export_batch,
    )
    audiences: dict[str, str] = {}
    if audience is not None:
        try:
            ruleset = load_rules(settings.rules_path, settings.entities)
        except RuleFileError as exc:
            raise fail(f"the rule file cannot be used:\n{exc}") from None
        audiences = {a.name: a.entity for a in ruleset.audiences}
    try:
        spec.check(settings.entities, audiences)
    except InvalidExport as exc:
        raise fail(str(exc)) from None
    if file is not None and (settings.exports_path / file).exists():
        raise fail(f"{settings.exports_path / file} exists: name a new file")

    async def create(client: RespClient) -> Job:
        jobs = ExportJobs(client, settings.key_prefix)
        if spec.target in await jobs.targets_in_use(spec.destination):
            raise ExportRefused(f"{spec.destination} {spec.target!r} is written by a running job")
        expected = None
        if audience is not None:
            expected = await audience_size(settings, jobs, entity, audience)
        return await jobs.create(spec, expected)

    job = _run(settings, create)
    where = settings.exports_path / spec.target if file is not None else f"topic {topic}"
    typer.echo(f"export job {job.id}: {spec.entity} profiles to {where}")
    if not detach:
        _execute(settings, job.id, resume_failed=False)


@app.command("resume")
def resume(ctx: typer.Context, job_id: str = typer.Argument(..., help="the job's id")) -> None:
    """Run a job from its last checkpoint: one whose runner died (its lease is over) or
    one that FAILED (once what failed is fixed)."""
    _execute(settings_of(ctx), job_id, resume_failed=True)


@app.command("status")
def status(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="the job's id"),
    as_json: bool = typer.Option(False, "--json", help="the job as the API shows it"),
) -> None:
    """A job's status and progress."""
    settings = settings_of(ctx)
    job = _run(settings, lambda client: ExportJobs(client, settings.key_prefix).get(job_id))
    if job is None:
        raise fail(f"no export job {job_id!r}", 1)
    if as_json:
        typer.echo(orjson.dumps(described(job), option=orjson.OPT_INDENT_2).decode())
        return
    typer.echo(progress_line(job))
    if job.error:
        typer.echo(job.error)


@app.command("list")
def list_jobs(
    ctx: typer.Context, limit: int = typer.Option(20, "--limit", help="newest jobs, at most")
) -> None:
    """Export jobs, newest first: id, status, what, where, progress."""
    settings = settings_of(ctx)
    jobs = _run(settings, lambda client: ExportJobs(client, settings.key_prefix).recent(limit))
    for job in jobs:
        what = job.spec.entity + (f"/{job.spec.audience}" if job.spec.audience else "")
        typer.echo(f"{progress_line(job)}  [{what} -> {job.spec.destination} {job.spec.target}]")


@app.command("cancel")
def cancel(ctx: typer.Context, job_id: str = typer.Argument(..., help="the job's id")) -> None:
    """Cancel a NEW or PROCESSING job (its runner stops after its current round; what
    it wrote stays)."""
    settings = settings_of(ctx)
    outcome = _run(settings, lambda client: ExportJobs(client, settings.key_prefix).cancel(job_id))
    if outcome == "missing":
        raise fail(f"no export job {job_id!r}", 1)
    if outcome != "ok":
        raise fail(f"export job {job_id} has ended: {outcome}", 1)
    typer.echo(f"export job {job_id} cancelled")
