"""Source delete jobs through the API (Adobe's profile system jobs, `/system/jobs`):
create one for a source (Adobe: `dataSetId`), read it, list them, delete a finished
one. Admin keys only. The job runs in the background (`traitflow.source_job_run`);
what it removes: `traitflow.source_jobs`.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict

from api.auth import Principal, authenticate
from api.errors import ApiError
from api.state import services
from traitflow.source_jobs import InvalidSourceJob, SourceJob, now_ms, source_topic

router = APIRouter()

PATH = "/system/jobs"
#: a job id in a path (what `SourceJob.new` makes), else a 400
JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="a source delete job id")]


class NewJob(BaseModel):
    """`{"dataSetId": "crm"}`: the source whose contribution goes."""

    model_config = ConfigDict(extra="forbid")

    dataSetId: str  # Adobe's field name


def _admin(principal: Principal) -> None:
    if not principal.admin:
        raise ApiError(403, "source delete jobs need an admin key")


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.post(
    PATH,
    status_code=201,
    summary="Delete what one source contributed (Adobe's profile system job), in the background",
    responses={
        201: {"description": "the job, NEW"},
        400: {"description": "dataSetId is not a configured source"},
        403: {"description": "not an admin key"},
    },
)
async def create_job(
    request: Request,
    body: NewJob,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    _admin(principal)
    state = services(request)
    try:
        source_topic(state.settings, body.dataSetId)
    except InvalidSourceJob as exc:
        raise ApiError(400, str(exc)) from None
    job = SourceJob.new(body.dataSetId, now_ms())
    await state.source_jobs.create(job)
    return _json(job.shown(), 201)


@router.get(
    PATH,
    summary="Source delete jobs, newest first",
    responses={200: {"description": "`children`: the jobs"}, 403: {"description": "not admin"}},
)
async def list_jobs(
    request: Request,
    limit: int = Query(50, ge=1, le=1000),
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    _admin(principal)
    state = services(request)
    jobs = await state.source_jobs.newest(limit)
    recomputed = (await state.catalog.snapshot()).recomputed
    shown = [job.seen(recomputed).shown() for job in jobs]
    return _json({"_page": {"count": len(jobs)}, "children": shown})


@router.get(
    PATH + "/{job_id}",
    summary="A source delete job: status and progress",
    responses={
        200: {"description": "the job"},
        403: {"description": "not an admin key"},
        404: {"description": "no such job"},
    },
)
async def read_job(
    request: Request,
    job_id: JobId,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    _admin(principal)
    job = await _job(request, job_id)
    return _json(job.shown())


@router.delete(
    PATH + "/{job_id}",
    status_code=204,
    summary="Forget a finished source delete job (what it deleted stays deleted)",
    responses={
        204: {"description": "forgotten"},
        403: {"description": "not an admin key"},
        404: {"description": "no such job"},
        409: {"description": "the job is still running"},
    },
)
async def delete_job(
    request: Request,
    job_id: JobId,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    _admin(principal)
    job = await _job(request, job_id)
    if not job.finished:
        raise ApiError(409, f"job {job_id} is {job.shown_status}: it can be removed once finished")
    await services(request).source_jobs.remove(job_id)
    return Response(status_code=204)


async def _job(request: Request, job_id: str) -> SourceJob:
    """The job, knowing whether its attributes were recomputed; 404 if there is none."""
    state = services(request)
    job = await state.source_jobs.get(job_id)
    if job is None:
        raise ApiError(404, f"no source delete job {job_id!r}")
    return job.seen((await state.catalog.snapshot()).recomputed)
