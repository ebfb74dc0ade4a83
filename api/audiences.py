"""Audience sizes: `GET /v1/audiences` and `GET /v1/audiences/{name}`.

An audience's size is the number of profiles in it, kept by the worker's commits (a
write that enters or exits an audience adjusts its counter in the same transaction:
`traitflow.redis_store`), so a size is one Redis read, never a scan. Which audiences
exist, and their descriptions, come from the rule file the worker runs
(`Settings.rules_path`), read once per process on first use. A profile's own
membership is in its record (`_audiences`; one audience alone: `?fields=_audiences.
{name}`, answered from the stored view).

A key may read the sizes of the audiences of an entity it may read a collection of.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi import Path as PathParameter
from prometheus_client import Gauge

from api import shapes
from api.auth import Principal, authenticate
from api.errors import ApiError
from api.state import services
from attributes.audiences import Audience
from attributes.rules import RuleFileError, load_rules
from traitflow.config import Settings

router = APIRouter()

#: what an audience's name is (`attributes.specs.identifier`)
AUDIENCE_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"

AUDIENCE_EXAMPLE: dict[str, Any] = {
    "name": "recent_buyers",
    "entity": "user",
    "description": "Ordered in the last 7 days.",
    "size": 1284,
}


@functools.lru_cache(maxsize=8)
def _declared(path: Path, entities: tuple[str, ...]) -> tuple[Audience, ...]:
    return load_rules(path, entities).audiences


def declared(settings: Settings) -> tuple[Audience, ...]:
    """The rule file's audiences; a rule file the API cannot use answers 503 (the
    worker refuses to start on it too)."""
    try:
        return _declared(settings.rules_path, tuple(settings.entities))
    except RuleFileError as exc:
        raise ApiError(503, f"the rule file cannot be used: {exc.problems[0]}") from None


def readable(principal: Principal, entity: str, settings: Settings) -> bool:
    return principal.admin or any(
        served == entity and principal.may_read_collection(collection)
        for collection, served in settings.collections.items()
    )


async def sizes(request: Request, audiences: tuple[Audience, ...]) -> list[dict[str, Any]]:
    """Each audience with its size: one read per entity."""
    store = services(request).store
    counted: dict[str, dict[str, int]] = {}
    for entity in dict.fromkeys(audience.entity for audience in audiences):
        counted[entity] = await store.audience_sizes(entity)
    return [
        {
            "name": audience.name,
            "entity": audience.entity,
            "description": audience.description,
            "size": counted[audience.entity].get(audience.name, 0),
        }
        for audience in audiences
    ]


async def observe_sizes(request: Request, gauge: Gauge) -> None:
    """Set the size gauge of every declared audience (before a metrics scrape)."""
    for counted in await sizes(request, declared(services(request).settings)):
        gauge.labels(counted["entity"], counted["name"]).set(counted["size"])


@router.get(
    "/v1/audiences",
    summary="Every audience with its current size",
    responses={
        200: {
            "description": "the audiences, in rule-file order",
            "content": {"application/json": {"example": {"audiences": [AUDIENCE_EXAMPLE]}}},
        }
    },
)
async def list_audiences(
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    settings = services(request).settings
    shown = tuple(a for a in declared(settings) if readable(principal, a.entity, settings))
    body = {"audiences": await sizes(request, shown)}
    return Response(shapes.encode(body), media_type="application/json")


@router.get(
    "/v1/audiences/{name}",
    summary="One audience's current size",
    responses={
        200: {
            "description": "the audience",
            "content": {"application/json": {"example": AUDIENCE_EXAMPLE}},
        },
        400: {"description": "a name no audience can have (not an identifier)"},
        403: {"description": "the API key may read no collection of the audience's entity"},
        404: {"description": "no such audience"},
    },
)
async def read_audience(
    request: Request,
    name: str = PathParameter(pattern=AUDIENCE_NAME, examples=["recent_buyers"]),
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    settings = services(request).settings
    found = [audience for audience in declared(settings) if audience.name == name]
    if not found:
        raise ApiError(404, f"audience {name!r} not found")
    if not readable(principal, found[0].entity, settings):
        raise ApiError(403, f"this API key may not read audience {name!r}")
    (body,) = await sizes(request, (found[0],))
    return Response(shapes.encode(body), media_type="application/json")
