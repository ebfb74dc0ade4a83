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
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi import Path as PathParameter

from api.auth import Principal, authenticate
from api.errors import ApiError
from api.state import services
from attributes.catalog import (
    LifecycleError,
    ManagedAttribute,
    Status,
    on_request,
    patched,
    requested,
)
from attributes.rules import RuleFileError, RuleSet
from traitflow.config import Settings
from traitflow.rule_catalog import Catalog, Change, RuleSource, new_id

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


def described(attribute: ManagedAttribute) -> dict[str, Any]:
    definition = dict(attribute.definition)
    return {
        "id": attribute.id,
        "name": attribute.name,
        "entity": attribute.entity,
        "description": definition.pop("description", ""),
        "status": attribute.status.value,
        "origin": "api",
        "definition": {k: v for k, v in definition.items() if k not in ("name", "entity")},
        "createEpoch": attribute.created_ms // 1000,
        "updateEpoch": attribute.updated_ms // 1000,
        "rulesVersion": attribute.version,
        "progress": dict(attribute.progress),
    }


def configured(rules: RuleSet) -> list[dict[str, Any]]:
    """The rule file's attributes, as the API lists them (always ACTIVE)."""
    listed = [
        {"name": a.name, "entity": a.entity, "description": a.description} for a in rules.attributes
    ]
    listed += [
        {"name": d.name, "entity": d.entity, "description": d.description} for d in rules.derived
    ]
    order = {name: i for i, name in enumerate(rules.names)}
    listed.sort(key=lambda a: order.get(a["name"], 0))
    return [
        {**a, "id": f"file:{a['name']}", "status": Status.ACTIVE.value, "origin": "file"}
        for a in listed
    ]


def _problem(exc: RuleFileError | LifecycleError) -> ApiError:
    """A 400 naming what is wrong: the field, or the attribute and its problem."""
    if isinstance(exc, LifecycleError):
        return ApiError(400, f"{exc.field}: {exc.problem}")
    return ApiError(400, "; ".join(p.problem if p.name else str(p) for p in exc.problems))


async def _change(request: Request, edit: Any) -> Catalog:
    """Apply `edit` through the catalog; its refusals are 400s."""
    try:
        return await services(request).catalog.change(edit)
    except (RuleFileError, LifecycleError) as exc:
        raise _problem(exc) from None


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
    listed = configured(source.compose(())) + [described(a) for a in catalog.attributes]
    listed = [
        a
        for a in listed
        if (entity is None or a["entity"] == entity) and (status is None or a["status"] == status)
    ]
    page = listed[offset : offset + limit]
    return {
        "_page": {"totalCount": len(listed), "pageSize": len(page), "offset": offset},
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
    if attribute_id.startswith("file:"):
        source = rule_source(services(request).settings)
        for attribute in configured(source.compose(())):
            if attribute["id"] == attribute_id:
                return attribute
    elif (found := (await services(request).catalog.snapshot()).get(attribute_id)) is not None:
        return described(found)
    raise ApiError(404, f"computed attribute {attribute_id!r} not found")


@router.post(PATH, status_code=201, summary="Create a computed attribute")
async def create_attribute(
    request: Request,
    body: dict[str, Any] = Body(..., examples=[{"name": "orders_30d", "function": "count"}]),  # noqa: B008
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> dict[str, Any]:
    """The body is a rule as a rule file writes it (`name`, `function`, `event`,
    `where`, `lookback`, ...), plus `status` (`DRAFT`, the default, or `ACTIVE`)."""
    _admin(principal)
    settings = services(request).settings
    source = rule_source(settings)
    definition = {k: v for k, v in body.items() if k != "status"}
    now = int(time.time() * 1000)
    attribute_id = new_id()

    def create(catalog: Catalog) -> Change:
        status = on_request(None, requested(body.get("status", "DRAFT")), backfill=False)
        name = definition.get("name")
        if isinstance(name, str) and name in source.names:
            raise LifecycleError("name", f"{name!r} is an attribute of the rule file")
        made = ManagedAttribute(attribute_id, status, definition, now, now)
        source.check([*catalog.attributes, made])
        return Change(put=made)

    after = await _change(request, create)
    made = after.get(attribute_id)
    assert made is not None
    return described(made)


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
    now = int(time.time() * 1000)

    def patch(catalog: Catalog) -> Change:
        current = catalog.get(attribute_id)
        if current is None:
            raise ApiError(404, f"computed attribute {attribute_id!r} not found")
        changed = patched(current, body, now_ms=now, backfill=False)
        source.check([a if a.id != attribute_id else changed for a in catalog.attributes])
        return Change(put=changed)

    after = await _change(request, patch)
    changed = after.get(attribute_id)
    assert changed is not None
    return described(changed)


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

    def delete(catalog: Catalog) -> Change:
        if catalog.get(attribute_id) is None:
            raise ApiError(404, f"computed attribute {attribute_id!r} not found")
        source.check([a for a in catalog.attributes if a.id != attribute_id])
        return Change(drop=attribute_id)

    await _change(request, delete)
    return Response(status_code=204)


def _not_configured(attribute_id: str) -> None:
    if attribute_id.startswith("file:"):
        raise ApiError(
            409,
            f"{attribute_id[5:]!r} is declared in the rule file (TRAITFLOW_RULES_PATH): "
            "change it there",
        )
