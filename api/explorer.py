"""The profile explorer: web pages, served by the API process, that look a profile up by
any of its identities and list the rules (README, "Profile explorer").

The pages, their script and their style are static files shipped in the package
(`api/explorer_static/`): no build step and nothing fetched from elsewhere, so they
work on a machine without internet and are served without a key (they hold no data).
What they show comes from the JSON API, which the page calls with the admin key the
operator types in: kept in the tab's sessionStorage, sent as `Authorization: Bearer`
on each call, never put in a URL (URLs end up in logs, history and Referer headers)
and never in a cookie (a cookie would be sent by any page that links here). The page
reads a record with `?provenance=true`, `GET /v1/audiences`, and the two admin routes
here: which collections and identity indexes a lookup may name, and which rules
there are.

Every page answer carries a Content-Security-Policy that allows only this origin's
script, style and fetches, and the script inserts profile data only as text: a trait
is whatever an event sender chose, and must not become markup that could read the key.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from api import shapes
from api.auth import Principal, authenticate
from api.errors import ApiError
from api.state import services
from attributes.catalog import ManagedAttribute
from attributes.recomputation import Recomputation
from attributes.rules import RuleFileError, load_rules
from attributes.ruleset import RuleSet
from traitflow.config import Settings

router = APIRouter()

#: where the page files are: beside this module, installed with it as package data
#: (`api` is a namespace package, which `importlib.resources` does not serve from)
STATIC = Path(__file__).resolve().parent / "explorer_static"

#: a file the pages load, by name: its media type (nothing else is served)
ASSETS = {
    "explorer.js": "text/javascript; charset=utf-8",
    "explorer.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
PAGES = {"profile": "profile.html", "rules": "rules.html"}

#: what every page answer may load: its own origin's script, style and fetches only
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # a new version of the package is picked up at once; the files are small
    "Cache-Control": "no-cache",
}

#: the status every configured rule has (the rule file has no lifecycle)
CONFIGURED_STATUS = "ACTIVE"


@functools.cache
def static_file(name: str) -> bytes:
    """A page file's bytes, read once per process from the installed package."""
    return (STATIC / name).read_bytes()


def static_response(name: str, media_type: str) -> Response:
    return Response(static_file(name), media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/explorer", include_in_schema=False)
async def profile_page() -> Response:
    return static_response(PAGES["profile"], "text/html; charset=utf-8")


@router.get("/explorer/rules", include_in_schema=False)
async def rules_page() -> Response:
    return static_response(PAGES["rules"], "text/html; charset=utf-8")


@router.get("/explorer/assets/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:  # a fixed list: no path from a request reaches the disk
        raise ApiError(404, f"no explorer file {name!r}")
    return static_response(name, media_type)


def admin_only(principal: Principal) -> None:
    if not principal.admin:
        raise ApiError(403, "the profile explorer needs an admin key")


def lookups(settings: Settings) -> list[dict[str, Any]]:
    """Per entity, the first collection that serves its whole view (a mapped one has no
    provenance to show) and the indexes a record read takes: its identity types, in
    priority order, then `id`."""
    found: dict[str, dict[str, Any]] = {}
    for collection, entity in settings.collections.items():
        if entity in found or collection in settings.collection_fields:
            continue
        spec = settings.entities.get(entity)
        types = [identity.type for identity in spec.identities] if spec is not None else []
        found[entity] = {"entity": entity, "collection": collection, "indexes": [*types, "id"]}
    return list(found.values())


@functools.lru_cache(maxsize=8)
def _rule_set(path: Path, entities: tuple[str, ...]) -> RuleSet:
    return load_rules(path, entities)


async def listed_rules(request: Request) -> dict[str, Any]:
    """What the rules page lists, the current rules version and the recomputation in
    progress, if any: the one place its data comes from. The rule file's rules, then
    those made through the computed-attributes API (`api.computed_attributes`), each
    with its status and, while it backfills, the progress its catalog entry holds."""
    state = services(request)
    catalog = await state.catalog.snapshot()
    managed = [managed_rule(attribute) for attribute in catalog.attributes]
    return {
        "rules": configured_rules(state.settings) + managed,
        "rulesVersion": catalog.version,
        "recomputation": recomputation(catalog.recomputation),
    }


def recomputation(running: Recomputation | None) -> dict[str, Any] | None:
    """Every attribute being recomputed for source delete jobs (`attributes.
    recomputation`), as the rules page shows it: its jobs, phase and progress."""
    if running is None:
        return None
    return {
        "jobs": list(running.jobs),
        "phase": "rendering" if running.rendering else "computing",
        "backfill": dict(running.progress) or None,
    }


def managed_rule(attribute: ManagedAttribute) -> dict[str, Any]:
    """An attribute made through the API, as the rules page lists it."""
    definition = attribute.definition
    lookback = definition.get("lookback")
    window = None
    if isinstance(lookback, Mapping):
        window = f"{lookback.get('count')} {lookback.get('unit')}"
        window += "/calendar" if definition.get("calendar") else ""
    listed = {
        "name": attribute.name,
        "function": str(definition.get("function", "")),
        "window": window,
        "entity": attribute.entity,
        "description": str(definition.get("description", "")),
    }
    if "expression" in definition:
        listed["expression"] = str(definition["expression"])
    return listed | {
        "status": attribute.status.value,
        "backfill": dict(attribute.progress) or None,
        "origin": "api",
        "id": attribute.id,
    }


def configured_rules(settings: Settings) -> list[dict[str, Any]]:
    """The rule file's rules, in its order, each ACTIVE and never backfilled (read-only
    through the computed-attributes API too). The file is read once per process, as
    for audiences; one the API cannot use answers 503."""
    try:
        rules = _rule_set(settings.rules_path, tuple(settings.entities))
    except RuleFileError as exc:
        raise ApiError(503, f"the rule file cannot be used: {exc.problems[0]}") from None
    listed: dict[str, dict[str, Any]] = {}
    for attribute in rules.attributes:
        # the window as the state key spells it: `orders/count@30days` -> `30 days`
        window = re.sub(r"^(\d+)", r"\1 ", attribute.key.partition("@")[2])
        listed[attribute.name] = {
            "function": attribute.aggregator.function,
            "window": window or None,
            "entity": attribute.entity,
            "description": attribute.description,
        }
    for derived in rules.derived:
        listed[derived.name] = {
            "function": "derived",
            "window": None,
            "entity": derived.entity,
            "description": derived.description,
            "expression": derived.expression.source,
        }
    return [
        {
            "name": name,
            **listed[name],
            "status": CONFIGURED_STATUS,
            "backfill": None,
            "origin": "file",
            "id": f"file:{name}",  # as the computed-attributes API names it
        }
        for name in rules.names
        if name in listed
    ]


LOOKUPS_EXAMPLE = {
    "entities": [
        {
            "entity": "user",
            "collection": "users",
            "indexes": ["user_id", "email", "anonymous_id", "id"],
        }
    ]
}
RULES_EXAMPLE = {
    "rules": [
        {
            "name": "lifetime_value",
            "function": "sum",
            "window": None,
            "entity": "user",
            "description": "Total revenue of all completed orders.",
            "status": CONFIGURED_STATUS,
            "backfill": None,
            "origin": "file",
            "id": "file:lifetime_value",
        },
        {
            "name": "orders_30d",
            "function": "count",
            "window": "30 days",
            "entity": "user",
            "description": "Orders in the last 30 days.",
            "status": "PROCESSING",
            "backfill": {"done": 1200, "total": 5000},
            "origin": "api",
            "id": "ca-3f9c0a1b2d4e",
        },
    ],
    "rulesVersion": 4,
    "recomputation": None,
}
ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no API key, or an invalid one"},
    403: {"description": "the API key is not an admin key"},
}


@router.get(
    "/explorer/api/entities",
    summary="What the profile explorer may look profiles up by (admin key)",
    responses={
        200: {
            "description": "per entity, the collection read and its identity indexes",
            "content": {"application/json": {"example": LOOKUPS_EXAMPLE}},
        },
        **ADMIN_RESPONSES,
    },
)
async def explorer_entities(
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    admin_only(principal)
    body = {"entities": lookups(services(request).settings)}
    return Response(shapes.encode(body), media_type="application/json")


@router.get(
    "/explorer/api/rules",
    summary="The rules the profile explorer lists (admin key)",
    responses={
        200: {
            "description": "the rule file's rules, then those made through the API",
            "content": {"application/json": {"example": RULES_EXAMPLE}},
        },
        **ADMIN_RESPONSES,
        503: {"description": "the rule file cannot be used"},
    },
)
async def explorer_rules(
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    admin_only(principal)
    return Response(shapes.encode(await listed_rules(request)), media_type="application/json")
