"""Running an export job: SCAN the entity's views, MGET each round's, keep an
audience's members, write them to the job's file or topic, save a checkpoint; at a
pace (`traitflow.export_jobs` says what a job is, `traitflow.export_store` where it
is kept).

Who runs a job: any process that claims it (a lease in Redis). `traitflow export
start` runs the job it makes in the foreground, with a progress line; API processes
run jobs made through the API, one at a time each (`ExportRunner`), and take over any
job whose runner died once its lease has expired: a job outlives the process that
ran it, and goes on from its last checkpoint (`traitflow export resume` does the same
by hand, and resumes a FAILED job).

Each profile once in a file. A round's lines are written and fsynced before its
checkpoint (cursor, counts, the file's length) is saved; a run that takes a job over
first cuts the file back to the saved length, so a round written but not saved is
written again, not twice, and reads back the ids the file holds. A run remembers
every id it wrote (16 bytes each, `seen_digest`), so a key that SCAN returns twice
(it may, when Redis resizes its table during the scan) is written once.

A topic is at least once: every view is sent keyed by profile id (to a topic created
compacted) and a round is saved once the broker acknowledged it, so a takeover may
send the last unsaved round again; a compacted topic, or a consumer keeping the last
record per key, sees each profile once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from attributes.errors import StoreError, TraitflowError
from traitflow.config import Settings
from traitflow.export_jobs import (
    FAILED,
    SUCCEEDED,
    Checkpoint,
    ExportRefused,
    ExportSpec,
    Job,
    Pacer,
    ids_of_lines,
    is_member,
    one_line,
    seen_digest,
)
from traitflow.export_store import ExportJobs
from traitflow.export_views import ExportViews, views_of
from traitflow.resp import RespClient

log = logging.getLogger(__name__)

#: header of every record a topic export sends: the job's id
JOB_HEADER = "traitflow.export.job"
#: how often an API process looks for jobs to take (a new one through the API at once)
POLL_S = 2.0


class DestinationChanged(TraitflowError):
    """The file is shorter than what the job wrote into it: someone changed it."""


class ExportMetrics:
    """What export runs did, on the registry of the process that runs them (an API
    process's `/metrics`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.profiles = Counter(
            "traitflow_export_profiles",
            "Profiles export jobs wrote, by destination (file, topic).",
            ["destination"],
            registry=registry,
        )
        self.jobs = Counter(
            "traitflow_export_jobs",
            "Export runs that ended, by outcome: succeeded, failed (the destination "
            "refused: the job is FAILED), cancelled, interrupted (Redis failed or the "
            "lease was lost: another runner takes it over).",
            ["outcome"],
            registry=registry,
        )
        self.takeovers = Counter(
            "traitflow_export_takeovers",
            "Runs that took over a job another run had started (it died, failed or "
            "stopped), going on from its checkpoint.",
            registry=registry,
        )
        self.running = Gauge(
            "traitflow_export_running", "Export jobs this process runs now.", registry=registry
        )


class Sink(ABC):
    """Where a job's lines go."""

    @abstractmethod
    async def start(self, job: Job) -> set[bytes]:
        """Open for `job` at its checkpoint; the digests of the ids written already."""

    @abstractmethod
    async def write(self, rows: Sequence[tuple[bytes, bytes]]) -> int:
        """Write (profile id, view) rows for good; the bytes written to a file."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass


class FileSink(Sink):
    """An NDJSON file: appended to, fsynced each round, cut back to the checkpoint's
    length when a run takes the job over."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    async def start(self, job: Job) -> set[bytes]:
        return await asyncio.to_thread(self._open, job)

    def _open(self, job: Job) -> set[bytes]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        length = job.checkpoint.file_bytes
        size = self.path.stat().st_size if self.path.exists() else None
        if size and not job.checkpoint.opened:
            raise FileExistsError(f"{self.path} exists: a new job writes a new file")
        if (size or 0) < length:
            raise DestinationChanged(
                f"{self.path} has {size or 0} bytes, fewer than the {length} the job wrote: "
                "it was changed or deleted; start a new job"
            )
        seen: set[bytes] = set()
        if size is not None:
            os.truncate(self.path, length)  # what a run wrote after its last checkpoint
            with self.path.open("rb") as lines:
                seen = {seen_digest(pid) for pid in ids_of_lines(lines)}
        self._file = self.path.open("ab")
        return seen

    async def write(self, rows: Sequence[tuple[bytes, bytes]]) -> int:
        data = b"".join(one_line(view) for _, view in rows)
        if data:
            self._file.write(data)
            self._file.flush()
            await asyncio.to_thread(os.fsync, self._file.fileno())
        return len(data)

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()


class TopicSink(Sink):
    """A Kafka topic (created compacted), each view keyed by its profile id."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self._producer: Any = None
        self._headers: list[tuple[str, bytes]] = []

    async def start(self, job: Job) -> set[bytes]:
        from aiokafka import AIOKafkaProducer

        from traitflow.kafka_client import client_kwargs
        from traitflow.topics import ensure_topics

        await ensure_topics(self.settings, [self.topic], compacted=[self.topic])
        self._producer = AIOKafkaProducer(
            **client_kwargs(self.settings),
            acks="all",
            linger_ms=5,
            max_request_size=8 * 1024 * 1024,
        )
        await self._producer.start()
        self._headers = [(JOB_HEADER, job.id.encode())]
        return set()

    async def write(self, rows: Sequence[tuple[bytes, bytes]]) -> int:
        sent = [
            await self._producer.send(self.topic, view, key=pid, headers=self._headers)
            for pid, view in rows
        ]
        await asyncio.gather(*sent)  # raises unless the broker acknowledged every one
        return 0

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()


def sink_for(spec: ExportSpec, settings: Settings) -> Sink:
    if spec.destination == "file":
        return FileSink(settings.exports_path / spec.target)
    return TopicSink(settings, spec.target)


#: what a run is told after each round (the job with its new checkpoint)
OnRound = Callable[[Job], None]


async def run_job(
    client: RespClient,
    settings: Settings,
    job_id: str,
    *,
    resume_failed: bool = False,
    on_round: OnRound | None = None,
    metrics: ExportMetrics | None = None,
) -> Job:
    """Claim the job and run it to its end (SUCCEEDED, FAILED, or CANCELLED by someone
    else); the job as it ended. `ExportRefused` if it cannot be claimed; a Redis
    failure is raised as it is (the job stays PROCESSING, to be taken over)."""
    jobs = ExportJobs(client, settings.key_prefix)
    token = uuid.uuid4().hex
    lease_ms = int(settings.export_lease_s * 1000)
    outcome = await jobs.claim(job_id, token, lease_ms, resume_failed=resume_failed)
    if outcome != "ok":
        reason = {"missing": "no such job", "held": "another runner holds it"}.get(
            outcome, f"it is {outcome}"
        )
        raise ExportRefused(f"export job {job_id}: {reason}")
    job = await jobs.get(job_id)
    if job is None:
        raise ExportRefused(f"export job {job_id}: no such job")
    if metrics is not None:
        metrics.running.inc()
        if job.runs > 1:
            metrics.takeovers.inc()
    views = views_of(settings, client)
    try:
        return await _run(views, jobs, job, token, settings, on_round, metrics)
    except asyncio.CancelledError:  # the process is stopping: let another take it now
        await asyncio.shield(jobs.release(job_id, token))
        raise
    finally:
        await views.close()
        if metrics is not None:
            metrics.running.dec()


async def _run(
    views: ExportViews,
    jobs: ExportJobs,
    job: Job,
    token: str,
    settings: Settings,
    on_round: OnRound | None,
    metrics: ExportMetrics | None,
) -> Job:
    spec = job.spec
    lease_ms = int(settings.export_lease_s * 1000)
    sink = sink_for(spec, settings)
    checkpoint = replace(job.checkpoint, buckets=views.buckets)
    try:
        try:
            seen = await sink.start(job)
        except Exception as exc:  # the destination refused at once
            return await _failed(jobs, job, token, lease_ms, checkpoint, exc, metrics)
        if not checkpoint.opened:  # from now on the file is the job's own
            checkpoint = replace(checkpoint, opened=True)
            saved = await jobs.save(job.id, token, lease_ms, checkpoint)
            if saved != "ok":
                return await _stopped(jobs, job, saved, metrics)
        pacer = Pacer(spec.rate_per_s)
        mark = time.monotonic()
        while not checkpoint.scan_done:
            cursor, found = await views.round(spec.entity, checkpoint.cursor, spec.batch)
            rows = []
            for pid, view in found:
                if view is None or (spec.audience and not is_member(view, spec.audience)):
                    continue  # deleted since the SCAN saw it, or not a member
                digest = seen_digest(pid)
                if digest not in seen:
                    seen.add(digest)
                    rows.append((pid, view))
            try:
                written = await sink.write(rows)
            except Exception as exc:
                return await _failed(jobs, job, token, lease_ms, checkpoint, exc, metrics)
            now = time.monotonic()
            checkpoint = checkpoint.after_round(cursor, len(found), len(rows), written, now - mark)
            mark = now
            saved = await jobs.save(job.id, token, lease_ms, checkpoint)
            if metrics is not None:
                metrics.profiles.labels(spec.destination).inc(len(rows))
            if saved != "ok":
                return await _stopped(jobs, job, saved, metrics)
            job.checkpoint = checkpoint
            if on_round is not None:
                on_round(job)
            await asyncio.sleep(pacer.wait_after(len(found)))
        saved = await jobs.save(job.id, token, lease_ms, checkpoint, final=SUCCEEDED)
        if saved != "ok":
            return await _stopped(jobs, job, saved, metrics)
        if metrics is not None:
            metrics.jobs.labels("succeeded").inc()
        log.info("export job %s succeeded: %d profiles", job.id, checkpoint.exported)
    except StoreError:
        if metrics is not None:
            metrics.jobs.labels("interrupted").inc()
        raise
    except Exception as exc:  # a view that is not JSON, a bug: FAILED, not retried forever
        log.exception("export job %s", job.id)
        return await _failed(jobs, job, token, lease_ms, checkpoint, exc, metrics)
    finally:
        await sink.close()
    return await jobs.get(job.id) or job


async def _failed(
    jobs: ExportJobs,
    job: Job,
    token: str,
    lease_ms: int,
    checkpoint: Checkpoint,
    exc: Exception,
    metrics: ExportMetrics | None,
) -> Job:
    """The destination refused (a full disk, a changed file, a broker that does not
    acknowledge): the job is FAILED at its last checkpoint, to be resumed once fixed."""
    error = f"{type(exc).__name__}: {exc}"
    log.error("export job %s failed: %s", job.id, error)
    if metrics is not None:
        metrics.jobs.labels("failed").inc()
    await jobs.save(job.id, token, lease_ms, checkpoint, final=FAILED, error=error)
    return await jobs.get(job.id) or job


async def _stopped(jobs: ExportJobs, job: Job, saved: str, metrics: ExportMetrics | None) -> Job:
    """The job was cancelled, or another runner has it: this run stops."""
    outcome = "cancelled" if saved == "cancelled" else "interrupted"
    log.warning("export job %s: this run stops (%s)", job.id, saved)
    if metrics is not None:
        metrics.jobs.labels(outcome).inc()
    return await jobs.get(job.id) or job


class ExportRunner:
    """What an API process runs in the background: every `POLL_S` (or at once when
    woken by a new job), the oldest job no runner holds, one at a time."""

    def __init__(self, settings: Settings, client: RespClient, metrics: ExportMetrics) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.jobs = ExportJobs(client, settings.key_prefix)
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.run_pending()
            except (StoreError, OSError) as exc:  # Redis is down: try again later
                log.warning("export runner: %s: %s", type(exc).__name__, exc)
            except Exception:  # never a runner that stopped for good, unseen
                log.exception("export runner")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)

    async def run_pending(self) -> None:
        for job_id in await self.jobs.runnable():
            try:
                await run_job(self.client, self.settings, job_id, metrics=self.metrics)
            except ExportRefused:
                continue  # another process took it first
