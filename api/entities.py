"""Entities: Adobe Real-Time Customer Profile's profile access shape (`/access/entities`).

Every entity is served: the profile schema (`_xdm.context.profile`) is the `user`
entity, and `_xdm.context.{entity}` any other configured one (`_xdm.context.account`,
Adobe's B2B account schema, is the `account` entity). An entity is read through the
collection that serves it (which the caller's key must be allowed to read). An identity
namespace (`entityIdNS`: `email`, `ECID`, ...) is one of our identity index names as it is;
no namespace means `entityId` is the profile's own id.
`mergePolicyId` names one of the configured merge policies (`TRAITFLOW_MERGE_POLICIES`,
default: `TRAITFLOW_DEFAULT_MERGE_POLICY`); another than the default gets the traits
merged under it from the stored per-source fragments (`api.policies`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api import shapes
from api.auth import Principal, authenticate
from api.caching import view_response
from api.errors import ApiError
from api.policies import chosen_policy, reshaped
from api.records import RECORD_EXAMPLE, cached, check_id, collection_entity, lookup_value
from api.state import services
from attributes.policies import MergePolicy
from traitflow.store import PRIMARY_INDEX, ProfileStore

router = APIRouter()

PROFILE_SCHEMA = "_xdm.context.profile"
PROFILE_ENTITY = "user"
SCHEMA_PREFIX = "_xdm.context."


def schema_of(entity: str) -> str:
    return PROFILE_SCHEMA if entity == PROFILE_ENTITY else f"{SCHEMA_PREFIX}{entity}"


def schema_entity(request: Request, schema_name: str, principal: Principal) -> str:
    """The entity `schema_name` names, through the collection that serves it."""
    settings = services(request).settings
    entities = {schema_of(entity): entity for entity in settings.entities}
    if schema_name not in entities:
        served = ", ".join(sorted(entities))
        raise ApiError(400, f"schema.name {schema_name!r} is not served: use one of {served}")
    entity = entities[schema_name]
    for collection, served_entity in settings.collections.items():
        if served_entity == entity:
            return collection_entity(request, collection, principal)
    raise ApiError(404, f"no collection serves the {entity!r} entity")


async def check_request(
    request: Request, merge_policy: str | None
) -> tuple[str, MergePolicy] | None:
    """The merge policy the request names, or None for the default (the stored views)."""
    settings = services(request).settings
    policy_id, policy = await chosen_policy(settings, services(request).policies, merge_policy)
    return None if policy_id == settings.default_merge_policy else (policy_id, policy)


async def views_under(
    store: ProfileStore,
    entity: str,
    lookups: list[tuple[str, str]],
    policy: tuple[str, MergePolicy] | None,
) -> list[dict[str, Any] | None]:
    """The decoded views `lookups` find, their traits merged under `policy` (None: as
    stored)."""
    if policy is None:
        return [
            None if view is None else shapes.decode_view(view)
            for view in await store.read_views(entity, lookups)
        ]
    return [
        None if found is None else reshaped(*found, *policy, provenance=False)
        for found in await store.read_profiles(entity, lookups)
    ]


ADOBE_EXAMPLE: dict[str, Any] = {
    "u-123": shapes.adobe_entity(RECORD_EXAMPLE, ["identities", "attributes.lifetime_value"])
}


@router.get(
    "/access/entities",
    summary="Read a profile by identity (Adobe Real-Time Customer Profile API shape)",
    description=(
        "The profile whose identity in namespace `entityIdNS` (one of our identity "
        "indexes: `user_id`, `anonymous_id`, ...) is `entityId`, keyed by its id. "
        "Without `entityIdNS`, `entityId` is the profile's own id."
    ),
    responses=cached(
        {
            200: {
                "description": "the profile, keyed by its id",
                "content": {"application/json": {"example": ADOBE_EXAMPLE}},
            },
            400: {"description": "missing or malformed parameters, unknown schema, id too long"},
            403: {"description": "the API key may not read the profile collection"},
            404: {"description": "no such profile, or an unknown merge policy"},
        }
    ),
)
async def read_entity(
    request: Request,
    schema_name: str = Query(alias="schema.name", examples=[PROFILE_SCHEMA]),
    entity_id: str = Query(alias="entityId", examples=["u-123"]),
    entity_id_ns: str | None = Query(None, alias="entityIdNS", examples=["user_id"]),
    fields: str | None = Query(
        None, description="comma-separated paths in `entity`, e.g. `identities,attributes.ltv`"
    ),
    merge_policy: str | None = Query(None, alias="mergePolicyId"),
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    settings = services(request).settings
    entity = schema_entity(request, schema_name, principal)
    policy = await check_request(request, merge_policy)
    namespace = entity_id_ns or PRIMARY_INDEX
    check_id("entityIdNS", namespace, settings)
    check_id("entityId", entity_id, settings)
    store = services(request).store
    lookup = (namespace, lookup_value(request, entity, namespace, entity_id))
    decoded = (await views_under(store, entity, [lookup], policy))[0]
    if decoded is None:
        raise ApiError(404, f"no profile with {namespace} = {entity_id!r}")
    shaped = shapes.adobe_entity(decoded, shapes.parse_fields(fields))
    return view_response(request, shapes.encode({str(decoded.get("id")): shaped}))


class Namespace(BaseModel):
    code: str


class Identity(BaseModel):
    entityId: str  # Adobe's field names
    entityIdNS: Namespace | None = None


class Schema(BaseModel):
    name: str


class EntitiesRequest(BaseModel):
    """Adobe's batch body; its other keys (`timeFilter`, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    schema_: Schema = Field(alias="schema")
    identities: list[Identity]
    fields: list[str] | None = None
    mergePolicyId: str | None = None


BATCH_EXAMPLE = {
    "schema": {"name": PROFILE_SCHEMA},
    "fields": ["identities", "attributes.lifetime_value"],
    "identities": [
        {"entityId": "u-123", "entityIdNS": {"code": "user_id"}},
        {"entityId": "ada@example.com", "entityIdNS": {"code": "email"}},
    ],
}


@router.post(
    "/access/entities",
    summary="Read several profiles by identity (Adobe batch shape)",
    description=(
        "Up to `max_batch_lookups` identities, one Redis round trip. The answer is keyed by "
        "profile id, each with the `requestedIdentities` that found it; identities that "
        "find no profile are left out."
    ),
    responses={
        200: {
            "description": "the profiles found, keyed by id",
            "content": {
                "application/json": {
                    "example": {
                        "u-123": {
                            "requestedIdentities": [BATCH_EXAMPLE["identities"][0]],  # type: ignore[index]
                            **ADOBE_EXAMPLE["u-123"],
                        }
                    }
                }
            },
        },
        400: {"description": "malformed body, no identities, too many, or an id too long"},
        403: {"description": "the API key may not read the profile collection"},
        404: {"description": "an unknown merge policy"},
    },
)
async def read_entities(
    request: Request,
    body: EntitiesRequest = Body(  # noqa: B008
        openapi_examples={"two identities": {"value": BATCH_EXAMPLE}}
    ),
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    settings = services(request).settings
    entity = schema_entity(request, body.schema_.name, principal)
    policy = await check_request(request, body.mergePolicyId)
    identities = body.identities
    if not identities:
        raise ApiError(400, "identities should have at least one item")
    if len(identities) > settings.max_batch_lookups:
        raise ApiError(
            400,
            f"identities should have at most {settings.max_batch_lookups} items, "
            f"not {len(identities)}",
        )
    lookups: list[tuple[str, str]] = []
    for number, identity in enumerate(identities):
        namespace = identity.entityIdNS.code if identity.entityIdNS else PRIMARY_INDEX
        check_id(f"identities.{number}.entityIdNS.code", namespace, settings)
        check_id(f"identities.{number}.entityId", identity.entityId, settings)
        lookups.append((namespace, lookup_value(request, entity, namespace, identity.entityId)))
    store = services(request).store
    views = await views_under(store, entity, lookups, policy)
    found: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for identity, decoded in zip(identities, views, strict=True):
        if decoded is None:
            continue
        key = str(decoded.get("id"))
        requested = identity.model_dump(exclude_none=True)
        if key in found:
            found[key][1].append(requested)
        else:
            found[key] = (decoded, [requested])
    answer = {
        key: shapes.adobe_entity(decoded, body.fields or None, requested)
        for key, (decoded, requested) in found.items()
    }
    return Response(shapes.encode(answer), media_type="application/json")
