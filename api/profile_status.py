"""Profile counts (Adobe's preview sample status): `GET /data/core/ups/
previewsamplestatus` and its reports by source (`/report/dataset`) and identity
namespace (`/report/namespace`), admin keys only.

Each answer is one Redis read per entity: the worker's commits keep the counts
(`traitflow.profile_counts`), so nothing scans on the request path. Adobe samples
its store and counts fragments; traitflow counts every profile, exactly, so a
`sampleCount` here is the whole count and a percentage is of the entity's profiles.
Every configured source and declared identity type is listed, with 0 if no profile
holds it; counts start when this counting was deployed (README, "Profile counts").
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from prometheus_client import Gauge

from api import shapes
from api.auth import Principal, authenticate
from api.errors import ApiError
from api.state import services
from attributes.events import iso_from_ms
from traitflow.profile_counts import composition
from traitflow.store import now_ms

router = APIRouter(tags=["profile counts"])

PATH = "/data/core/ups/previewsamplestatus"

#: an entity's name as `TRAITFLOW_ENTITIES` allows it (an identifier)
ENTITY = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"

STATUS_EXAMPLE: dict[str, Any] = {
    "reportTimestamp": "2026-11-04T09:00:00.000Z",
    "entities": {
        "user": {
            "profiles": 1284,
            "sources": {"crm": 410, "web": 1203},
            "namespaces": {"anonymous_id": 1190, "email": 530, "user_id": 402},
        }
    },
}

REPORT_EXAMPLE: dict[str, Any] = {
    "reportTimestamp": "2026-11-04T09:00:00.000Z",
    "entity": "user",
    "numProfiles": 1284,
    "data": [{"value": "crm", "name": "crm", "sampleCount": 410, "samplePercentage": 31.93}],
}


def _admin(principal: Principal) -> None:
    if not principal.admin:
        raise ApiError(403, "profile counts need an admin key")


def _entities(request: Request, entity: str | None) -> list[str]:
    """The entity named (404 if none is declared so), or every declared one."""
    declared = list(services(request).settings.entities)
    if entity is None:
        return declared
    if entity not in declared:
        raise ApiError(404, f"entity {entity!r} not found")
    return [entity]


async def counted(request: Request, entity: str) -> dict[str, Any]:
    """An entity's profiles, per source and per namespace (`composition`), with every
    configured source and declared identity type (0 when none holds it)."""
    settings = services(request).settings
    found = composition(await services(request).store.profile_counts(entity))
    sources = dict.fromkeys(sorted(set(settings.sources.values())), 0)
    kinds = dict.fromkeys(sorted(i.type for i in settings.entities[entity].identities), 0)
    found["sources"] = {**sources, **found["sources"]}
    found["namespaces"] = {**kinds, **found["namespaces"]}
    return found


async def observe_counts(request: Request, gauges: tuple[Gauge, Gauge, Gauge]) -> None:
    """Set the profile-count gauges of every entity (before a metrics scrape)."""
    profiles, by_source, by_namespace = gauges
    for entity in services(request).settings.entities:
        found = await counted(request, entity)
        profiles.labels(entity).set(found["profiles"])
        for source, n in found["sources"].items():
            by_source.labels(entity, source).set(n)
        for kind, n in found["namespaces"].items():
            by_namespace.labels(entity, kind).set(n)


def _json(body: dict[str, Any]) -> Response:
    return Response(shapes.encode(body), media_type="application/json")


RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "an entity name no entity can have"},
    403: {"description": "not an admin key"},
    404: {"description": "no such entity"},
}


@router.get(
    PATH,
    summary="Profile counts: per entity, per source and per identity namespace",
    responses={
        200: {
            "description": "every entity's counts, or the one `entity` names",
            "content": {"application/json": {"example": STATUS_EXAMPLE}},
        },
        **RESPONSES,
    },
)
async def preview_sample_status(
    request: Request,
    entity: str | None = Query(default=None, pattern=ENTITY, examples=["user"]),
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    _admin(principal)
    entities = _entities(request, entity)
    body = {name: await counted(request, name) for name in entities}
    return _json({"reportTimestamp": iso_from_ms(now_ms()), "entities": body})


@router.get(
    PATH + "/report/{report}",
    summary="An entity's profiles per source (dataset) or identity namespace",
    responses={
        200: {
            "description": "one row per source or namespace, most profiles first",
            "content": {"application/json": {"example": REPORT_EXAMPLE}},
        },
        **RESPONSES,
        404: {"description": "no such entity or report (`dataset`, `namespace`)"},
    },
)
async def report(
    request: Request,
    report: str,
    entity: str | None = Query(default=None, pattern=ENTITY, examples=["user"]),
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    _admin(principal)
    if report not in ("dataset", "namespace"):
        raise ApiError(404, f"report {report!r} not found (dataset, namespace)")
    name = _entities(request, entity)[0]  # none named: the first declared
    found = await counted(request, name)
    total = found["profiles"]
    rows = found["sources"] if report == "dataset" else found["namespaces"]
    data = [
        {
            **({"code": key} if report == "namespace" else {}),
            "value": key,
            "name": key,
            "sampleCount": n,
            "samplePercentage": round(100 * n / total, 2) if total else 0.0,
        }
        for key, n in sorted(rows.items(), key=lambda row: (-row[1], row[0]))
    ]
    return _json(
        {
            "reportTimestamp": iso_from_ms(now_ms()),
            "entity": name,
            "numProfiles": total,
            "data": data,
        }
    )
