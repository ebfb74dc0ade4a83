"""Computed attributes through the API (Adobe Real-Time Customer Profile's
`/data/core/ca/attributes`): list, read, create, patch and delete.

An attribute made here is a rule in traitflow's rule language (the fields of a rule
file's attribute) with an id, a status and times (`attributes.catalog`); it is kept
in Redis (`traitflow.rule_catalog`), and every change is checked with the rule file
and the other attributes exactly as `traitflow validate` checks a file: a problem is
a 400 naming the field. Each change increments the rules version, which running
workers switch to between batches. The rule file's attributes are listed too, with
`origin: file`, read-only (a 409 says to change the file). Admin keys only.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi import Path as PathParameter

from api.auth import Principal, authenticate
from api.errors import ApiError
from api.state import services
from attributes.catalog import Status
from attributes.rules import RuleFileError
from traitflow import rule_changes
from traitflow.config import Settings
from traitflow.rule_catalog import RuleSource
from traitflow.rule_changes import (
    REFUSALS,
    ConfiguredAttribute,
    Refusal,
    UnknownAttribute,
    described,
    editable,
    found,
    listed,
    problem_text,
)

T = TypeVar("T")

router = APIRouter()

PATH = "/data/core/ca/attributes"
#: an attribute id in a path: ours (`ca-` and hex) or a file attribute's (`file:name`)
AttributeId = Annotated[
    str, PathParameter(pattern=r"^(ca-[0-9a-f]{12}|file:[A-Za-z_][A-Za-z0-9_]{0,63})$")
]
#: the most attributes a page lists
PAGE_LIMIT = 100


@functools.lru_cache(maxsize=8)
def _source(path: Path, entities: tuple[str, ...]) -> RuleSource:
    return RuleSource.read(path, entities)


def rule_source(settings: Settings) -> RuleSource:
    """The rule file, read once per process; one the API cannot use answers 503 (the
    worker refuses to start on it too)."""
    try:
        return _source(settings.rules_path, tuple(settings.entities))
    except RuleFileError as exc:
        raise ApiError(503, f"the rule file cannot be used: {exc.problems[0]}") from None


def _admin(principal: Principal) -> None:
    if not principal.admin:
        raise ApiError(403, "computed attributes need an admin key")


def _refusal(exc: Refusal) -> ApiError:
    """A refused change as the API answers it: 404 for an unknown id, 409 for a rule
    file attribute, else a 400 naming the field, or the attribute and its problem."""
    if isinstance(exc, UnknownAttribute):
        return ApiError(404, str(exc))
    if isinstance(exc, ConfiguredAttribute):
        return ApiError(409, str(exc))
    return ApiError(400, problem_text(exc))


async def _answered(change: Awaitable[T]) -> T:
    """Run a change of `traitflow.rule_changes`; its refusals are 4xx answers."""
    try:
        return await change
    except REFUSALS as exc:
        raise _refusal(exc) from None


@router.get(PATH, summary="List computed attributes")
async def list_attributes(
    request: Request,
    entity: str | None = Query(None, max_length=64),
    status: Status | None = Query(None),  # noqa: B008 - FastAPI's parameter idiom
    limit: int = Query(PAGE_LIMIT, ge=1, le=PAGE_LIMIT),
    offset: int = Query(0, ge=0),
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> dict[str, Any]:
    _admin(principal)
    settings = services(request).settings
    source = rule_source(settings)
    catalog = await services(request).catalog.snapshot()
    every = listed(source, catalog, entity=entity, status=status)
    page = every[offset : offset + limit]
    return {
        "_page": {"totalCount": len(every), "pageSize": len(page), "offset": offset},
        "rulesVersion": catalog.version,
        "computedAttributes": page,
    }


@router.get(PATH + "/{attribute_id}", summary="Read a computed attribute")
async def read_attribute(
    attribute_id: AttributeId,
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> dict[str, Any]:
    _admin(principal)
    settings = services(request).settings
    catalog = await services(request).catalog.snapshot()
    try:
        return found(catalog, attribute_id, lambda: rule_source(settings))
    except UnknownAttribute as exc:
        raise _refusal(exc) from None


@router.post(PATH, status_code=201, summary="Create a computed attribute")
async def create_attribute(
    request: Request,
    body: dict[str, Any] = Body(..., examples=[{"name": "orders_30d", "function": "count"}]),  # noqa: B008
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> dict[str, Any]:
    """The body is a rule as a rule file writes it (`name`, `function`, `event`,
    `where`, `lookback`, ...), plus `status` (`DRAFT`, the default, or `ACTIVE`)."""
    _admin(principal)
    source = rule_source(services(request).settings)
    catalog = services(request).catalog
    now = int(time.time() * 1000)
    change = rule_changes.create(
        catalog, source, body, now_ms=now, backfill=services(request).settings.backfill
    )
    return described(await _answered(change))


@router.patch(PATH + "/{attribute_id}", summary="Change a computed attribute")
async def patch_attribute(
    attribute_id: AttributeId,
    request: Request,
    body: dict[str, Any] = Body(..., examples=[{"status": "DISABLED"}]),  # noqa: B008
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> dict[str, Any]:
    """Changes `description`, the condition (`where`; `expression` for a derived
    one), the window (`lookback`), `event` or `status`. A change of what it counts
    starts its state afresh (a new revision)."""
    _admin(principal)
    _not_configured(attribute_id)
    source = rule_source(services(request).settings)
    catalog = services(request).catalog
    now = int(time.time() * 1000)
    change = rule_changes.patch(
        catalog,
        source,
        attribute_id,
        body,
        now_ms=now,
        backfill=services(request).settings.backfill,
    )
    return described(await _answered(change))


@router.delete(PATH + "/{attribute_id}", status_code=204, summary="Delete a computed attribute")
async def delete_attribute(
    attribute_id: AttributeId,
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    """Workers stop computing it, and each profile's state of it is dropped at its
    next write. An attribute another one (or an audience) reads cannot go (400)."""
    _admin(principal)
    _not_configured(attribute_id)
    source = rule_source(services(request).settings)
    await _answered(rule_changes.delete(services(request).catalog, source, attribute_id))
    return Response(status_code=204)


def _not_configured(attribute_id: str) -> None:
    """A rule file attribute is a 409 before the file is read (a file the API cannot
    use would otherwise make it a 503)."""
    try:
        editable(attribute_id)
    except ConfiguredAttribute as exc:
        raise _refusal(exc) from None
