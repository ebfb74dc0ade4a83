"""Erasing a person (GDPR): `DELETE /access/entities`, Adobe's profile delete shape,
and `GET /access/erasures/{id}`, the request's status. Admin keys only.

The API does not write the profile: it publishes an erase command to the ingest topic
and answers 202 with the request's id; the worker that owns the partition erases it in
its normal commit (`traitflow.erasure_requests`). Poll the status until it says
`applied`.
"""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response

from api.auth import Principal, authenticate
from api.entities import PROFILE_SCHEMA, schema_of
from api.errors import ApiError
from api.publisher import PublishFailed
from api.state import services
from traitflow.erasure_requests import (
    InvalidErasure,
    erase_record,
    erase_topic,
    new_request_id,
    pending_status,
    target_identity,
)

router = APIRouter()

#: a request id in a path (what `new_request_id` makes), else a 400
RequestId = Annotated[str, Path(pattern=r"^er-[0-9a-f]{32}$", description="an erase request id")]


def _admin(principal: Principal) -> None:
    if not principal.admin:
        raise ApiError(403, "erasing profiles needs an admin key")


@router.delete(
    "/access/entities",
    status_code=202,
    summary="Erase a profile by any of its identities (GDPR; Adobe's profile delete shape)",
    description=(
        "Publishes an erase command for the profile that `entityId` in namespace "
        "`entityIdNS` (no namespace: the profile's own id) finds; the worker erases it, "
        "leaving only a tombstone of hashed identities and offsets. Poll `statusUrl`."
    ),
    responses={
        202: {"description": "accepted: the request's id and where to poll its status"},
        400: {"description": "unknown schema or namespace, empty or too long an id"},
        403: {"description": "not an admin key"},
        503: {"description": "the event broker did not acknowledge: try again"},
    },
)
async def erase_entity(
    request: Request,
    schema_name: str = Query(alias="schema.name", examples=[PROFILE_SCHEMA]),
    entity_id: str = Query(alias="entityId", examples=["u-123"]),
    entity_id_ns: str | None = Query(None, alias="entityIdNS", examples=["email"]),
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    _admin(principal)
    state = services(request)
    entities = {schema_of(entity): entity for entity in state.settings.entities}
    if schema_name not in entities:
        served = ", ".join(sorted(entities))
        raise ApiError(400, f"schema.name {schema_name!r} is not served: use one of {served}")
    entity = entities[schema_name]
    try:
        identity = target_identity(state.identities[entity], entity_id_ns, entity_id)
    except InvalidErasure as exc:
        raise ApiError(400, str(exc)) from None
    request_id = new_request_id()
    await state.store.note_erasure(
        request_id, pending_status(request_id, entity, int(time.time() * 1000))
    )
    key, value = erase_record(entity, identity, request_id)
    try:
        await state.publisher.publish(erase_topic(state.settings), key, value)
    except PublishFailed:
        raise ApiError(503, "event broker unavailable; try again") from None
    state.metrics.erasures_requested.inc()
    body = {
        "requestId": request_id,
        "status": "pending",
        "entity": entity,
        "statusUrl": f"/access/erasures/{request_id}",
    }
    return Response(orjson.dumps(body), status_code=202, media_type="application/json")


@router.get(
    "/access/erasures/{request_id}",
    summary="The status of an erase request: pending, or applied (and whether found)",
    responses={
        200: {"description": "the request's status"},
        403: {"description": "not an admin key"},
        404: {"description": "no such request (or its status has expired)"},
    },
)
async def erasure_status(
    request: Request,
    request_id: RequestId,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    _admin(principal)
    status = await services(request).store.erasure_status(request_id)
    if status is None:
        raise ApiError(404, f"no erase request {request_id!r}")
    return Response(status, media_type="application/json")
