"""Profile export jobs (Adobe Real-Time Customer Profile's `/export/jobs`): create,
list, read, cancel. Admin keys only: an export reads every profile.

A job made here is run by an API process in the background (`traitflow.export_run`:
the one that made it if it is free, else the first one free), and taken over by
another API process, from its last checkpoint, if the one running it dies. Its
status and progress are read from Redis, so any API process answers for any job.

The body is Adobe's shape where Adobe has one: `schema.name` (the entity, as in
`/access/entities`), `filter.segments` (one audience: `segmentId`), `destination`
(here `{"file": name}`, a file in `TRAITFLOW_EXPORT_DIR`, or `{"topic": name}`);
`rate` and `batchSize` bound its load on Redis.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi import Path as PathParameter
from pydantic import BaseModel, ConfigDict, Field

from api import shapes
from api.audiences import declared
from api.auth import Principal, authenticate
from api.entities import PROFILE_SCHEMA, schema_of
from api.errors import ApiError
from api.state import services
from traitflow.export_jobs import MAX_BATCH, ExportSpec, InvalidExport, described
from traitflow.export_views import audience_size

router = APIRouter()

PATH = "/export/jobs"
#: what a job id is (`traitflow.export_store`)
JobId = Annotated[str, PathParameter(pattern=r"^[0-9a-f]{12}$", description="an export job id")]


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = PROFILE_SCHEMA


class Segment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    segmentId: str = Field(min_length=1, max_length=64)
    segmentNs: str = "ups"
    status: list[str] = ["realized"]


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    segments: list[Segment] = Field(default=[], max_length=1)


class Destination(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str | None = Field(default=None, max_length=128)
    topic: str | None = Field(default=None, max_length=249)


class ExportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_: Schema = Field(default=Schema(), alias="schema")
    filter: Filter = Filter()
    destination: Destination
    #: profiles read per second, at most (default: TRAITFLOW_EXPORT_RATE_PER_S)
    rate: float | None = Field(default=None, gt=0, le=1_000_000)
    #: profiles per round: one MGET, and each SCAN's COUNT (default: TRAITFLOW_EXPORT_BATCH)
    batchSize: int | None = Field(default=None, ge=1, le=MAX_BATCH)


EXAMPLE = {
    "schema": {"name": PROFILE_SCHEMA},
    "filter": {"segments": [{"segmentId": "recent_buyers"}]},
    "destination": {"file": "recent-buyers.ndjson"},
    "rate": 2000,
}

JOB_EXAMPLE: dict[str, Any] = {
    "id": "3f9c0a1b2d4e",
    "jobType": "BATCH",
    "status": "PROCESSING",
    "entity": "user",
    "filter": {"segments": [{"segmentId": "recent_buyers", "segmentNs": "ups"}]},
    "destination": {"file": "recent-buyers.ndjson"},
    "rate": 2000.0,
    "batchSize": 500,
    "progress": {
        "exported": 1200,
        "scanned": 9000,
        "fraction": 0.42,
        "estimatedTotal": 2860,
        "ratePerSecond": 266.7,
        "etaSeconds": 6.2,
    },
    "runs": 1,
    "creationTime": 1764956400000,
    "updateTime": 1764956404500,
    "metrics": {
        "totalTime": {"startTimeInMs": 1764956400000, "endTimeInMs": None, "totalTimeInMs": None}
    },
}


def _admin(principal: Principal) -> None:
    if not principal.admin:
        raise ApiError(403, "export jobs need an admin key")


def _json(body: Any, status: int = 200) -> Response:
    return Response(shapes.encode(body), status_code=status, media_type="application/json")


def _spec(request: Request, body: ExportBody) -> ExportSpec:
    """The job asked for, checked (a 400 names the field)."""
    settings = services(request).settings
    entities = {schema_of(entity): entity for entity in settings.entities}
    if body.schema_.name not in entities:
        raise ApiError(400, f"schema.name: {body.schema_.name!r} is not served: {sorted(entities)}")
    targets = [(kind, name) for kind, name in body.destination if name is not None]
    if len(targets) != 1:
        raise ApiError(400, 'destination: give one of {"file": name} or {"topic": name}')
    (kind, target), segments = targets[0], body.filter.segments
    spec = ExportSpec(
        entity=entities[body.schema_.name],
        audience=segments[0].segmentId if segments else None,
        destination="file" if kind == "file" else "topic",
        target=target,
        rate_per_s=body.rate or settings.export_rate_per_s,
        batch=body.batchSize or settings.export_batch,
    )
    audiences = {} if spec.audience is None else {a.name: a.entity for a in declared(settings)}
    try:
        return spec.check(settings.entities, audiences)
    except InvalidExport as exc:
        raise ApiError(400, str(exc)) from None


@router.post(
    PATH,
    status_code=201,
    summary="Create a profile export job",
    responses={
        201: {
            "description": "the job, NEW",
            "content": {"application/json": {"example": JOB_EXAMPLE}},
        },
        400: {"description": "unknown schema or audience, a bad file or topic name, rate, batch"},
        403: {"description": "not an admin key"},
        409: {"description": "the file exists, or another running job writes it"},
    },
)
async def create_job(
    request: Request,
    body: ExportBody = Body(openapi_examples={"an audience to a file": {"value": EXAMPLE}}),  # noqa: B008
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    _admin(principal)
    spec = _spec(request, body)
    state = services(request)
    if spec.destination == "file" and (state.settings.exports_path / spec.target).exists():
        raise ApiError(409, f"file: {spec.target!r} exists in the export directory")
    if spec.target in await state.exports.targets_in_use(spec.destination):
        raise ApiError(409, f"{spec.destination}: {spec.target!r} is written by a running job")
    expected = None
    if spec.audience is not None:
        expected = await audience_size(state.settings, state.exports, spec.entity, spec.audience)
    job = await state.exports.create(spec, expected)
    if state.export_runner is not None:
        state.export_runner.wake()
    return _json(described(job), 201)


@router.get(
    PATH,
    summary="List export jobs, newest first",
    responses={
        200: {
            "description": "the jobs",
            "content": {"application/json": {"example": {"records": [JOB_EXAMPLE]}}},
        },
        403: {"description": "not an admin key"},
    },
)
async def list_jobs(
    request: Request,
    limit: int = Query(default=100, ge=1, le=1000),
    status: str | None = Query(
        default=None, pattern=r"^(NEW|PROCESSING|SUCCEEDED|FAILED|CANCELLED)$"
    ),
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    _admin(principal)
    jobs = await services(request).exports.recent(limit, status)
    records = [described(job) for job in jobs]
    return _json({"records": records, "page": {"limit": limit, "count": len(records)}})


@router.get(
    PATH + "/{job_id}",
    summary="Read an export job: status and progress",
    responses={
        200: {"description": "the job", "content": {"application/json": {"example": JOB_EXAMPLE}}},
        400: {"description": "not a job id"},
        403: {"description": "not an admin key"},
        404: {"description": "no such job"},
    },
)
async def read_job(
    job_id: JobId,
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    _admin(principal)
    job = await services(request).exports.get(job_id)
    if job is None:
        raise ApiError(404, f"export job {job_id!r} not found")
    return _json(described(job))


@router.delete(
    PATH + "/{job_id}",
    status_code=204,
    summary="Cancel an export job",
    responses={
        400: {"description": "not a job id"},
        403: {"description": "not an admin key"},
        404: {"description": "no such job"},
        409: {"description": "the job has ended (SUCCEEDED, FAILED or CANCELLED)"},
    },
)
async def cancel_job(
    job_id: JobId,
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    _admin(principal)
    outcome = await services(request).exports.cancel(job_id)
    if outcome == "missing":
        raise ApiError(404, f"export job {job_id!r} not found")
    if outcome != "ok":
        raise ApiError(409, f"export job {job_id!r} has ended: {outcome}")
    return Response(status_code=204)
