"""Records: Hightouch's Personalization API shape.

A collection is the served profiles of one entity (`Settings.collections`); a record is
looked up by any of the entity's identity indexes (`user_id`, `anonymous_id`, ...), `id`
being the profile's own id. A record is the stored view, sent as the stored bytes
unless `?fields=` projects it.

A collection with a field mapping (`Settings.collection_fields`) serves records of the
mapped fields instead, under their names: the record document the worker wrote with the
view, read in the same round trip, or, for a profile written before the mapping (or
under another one), the stored view mapped on the fly, which is the same record.
`?fields=` then names paths in the mapped record.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict

from api import caching, errors, shapes
from api.auth import Principal, authenticate
from api.caching import view_response
from api.direct import DirectRoute, admitted
from api.errors import ApiError
from api.policies import chosen_policy, reshaped
from api.state import services
from attributes.records import RecordMapping, mapped_record
from traitflow.config import Settings
from traitflow.store import Found

router = APIRouter()
#: the single-record read, the hot path: no per-request FastAPI machinery (`api.direct`)
direct = APIRouter(route_class=DirectRoute)

FIELDS_DESCRIPTION = (
    "Comma-separated fields to return: top-level keys or dotted paths "
    "(`id,attributes.lifetime_value`); absent ones are left out. Default: the whole record."
)

RECORD_EXAMPLE: dict[str, Any] = {
    "id": "u-123",
    "entity": "user",
    "identities": {"user_id": ["u-123"], "anonymous_id": ["a-9"]},
    "traits": {"email": "ada@example.com", "plan": "pro"},
    "attributes": {"lifetime_value": 70.5, "purchase_count": 3, "last_product": "sku-b"},
    "first_seen": "2026-10-01T10:00:00.000Z",
    "last_seen": "2026-11-04T09:00:00.000Z",
    "version": 5,
}


def cached(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """`responses` of a route answered by `view_response`, with its caching headers and 304."""
    merged = {status: dict(entry) for status, entry in responses.items()}
    for status, entry in caching.RESPONSES.items():
        merged[status] = {**entry, **merged.get(status, {})}
    return merged


MERGE_POLICY_DESCRIPTION = (
    "A configured merge policy id: the record's traits merged under it. Default: the "
    "default policy, whose merge is stored."
)
PROVENANCE_DESCRIPTION = (
    "`true`: add `provenance`, the source and event time of each trait and the policy."
)


def flag(name: str, value: str | None) -> bool:
    """A boolean query parameter: absent, `false` or `0` is False; `true` or `1` True."""
    if value is None or value.lower() in ("false", "0"):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise ApiError(400, f"{name} should be true or false, not {value!r}")


def check_id(what: str, value: str, settings: Settings, field: str = "error") -> None:
    """A 400 for an identifier longer than `max_id_length`, or that no key can be made of
    (a lone surrogate from a JSON escape is not text: Redis keys are UTF-8)."""
    if len(value) > settings.max_id_length:
        raise ApiError(
            400, f"{what} should be at most {settings.max_id_length} characters", field=field
        )
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise ApiError(400, f"{what} should be valid Unicode text", field=field) from exc


def lookup_value(request: Request, entity: str, index: str, value: str) -> str:
    """`value` as the identity index holds it (`IdentityRules.lookup_value`)."""
    rules = services(request).identities.get(entity)
    return value if rules is None else rules.lookup_value(index, value)


def collection_entity(request: Request, collection: str, principal: Principal) -> str:
    """The entity `collection` serves, once the caller may read it (403/404 otherwise)."""
    settings = services(request).settings
    if not principal.may_read_collection(collection):
        raise ApiError(403, f"this API key may not read collection {collection!r}")
    entity = settings.collections.get(collection)
    if entity is None:
        raise ApiError(404, f"collection {collection!r} not found")
    return entity


def no_record(collection: str, index: str, value: str) -> Response:
    return errors.error(404, f"no record with {index} = {value!r} in {collection!r}")


def mapping_of(settings: Settings, entity: str, collection: str) -> RecordMapping | None:
    """The field mapping of `collection` (None: it serves the view as it is)."""
    return settings.record_mappings.get(entity, {}).get(collection)


def record_of(found: Found, mapping: RecordMapping) -> bytes:
    """A mapped collection's record: the stored document, or the view mapped now."""
    stored, data = found
    return data if stored else shapes.encode(mapped_record(shapes.decode_view(data), mapping))


def projected(view: bytes, fields: list[str] | None) -> bytes:
    return (
        view if fields is None else shapes.encode(shapes.project(shapes.decode_view(view), fields))
    )


@direct.get(
    "/v1/collections/{collection}/records/{index}/{value}",
    summary="Read one record (Hightouch Personalization API shape)",
    description=(
        "The record whose identity `index` (`user_id`, `anonymous_id`, ...; `id` is the "
        "profile's own id) equals `value`."
    ),
    responses=cached(
        {
            200: {
                "description": "the record",
                "content": {"application/json": {"example": RECORD_EXAMPLE}},
            },
            400: {"description": "value longer than `max_id_length`"},
            403: {"description": "the API key may not read this collection"},
            404: {
                "description": "unknown collection, or no such record",
                "content": {
                    "application/json": {
                        "example": {"error": "no record with user_id = 'u-2' in 'users'"}
                    }
                },
            },
        }
    ),
)
async def read_record(
    collection: str,
    index: str,
    value: str,
    request: Request,
    fields: str | None = Query(None, description=FIELDS_DESCRIPTION),
    merge_policy: str | None = Query(None, description=MERGE_POLICY_DESCRIPTION),
    provenance: str | None = Query(None, description=PROVENANCE_DESCRIPTION),
) -> Response:
    async with admitted(request) as principal:
        entity = collection_entity(request, collection, principal)
        settings = services(request).settings
        check_id("index", index, settings)
        check_id("value", value, settings)
        policy_id, policy = settings.default_merge_policy, settings.default_policy
        if merge_policy is not None:
            policy_id, policy = await chosen_policy(
                settings, services(request).policies, merge_policy
            )
        with_provenance = flag("provenance", provenance)
        mapping = mapping_of(settings, entity, collection)
        if mapping is not None and with_provenance:
            raise ApiError(400, f"collection {collection!r} maps fields: it has no provenance")
        store = services(request).store
        key = lookup_value(request, entity, index, value)
        wanted = shapes.parse_fields(fields)
        if mapping is not None and policy_id == settings.default_merge_policy:
            stamp = mapping.stamp  # the record document and, if stale, the view: one trip
            record = (
                await store.read_records(entity, [(index, key)], collection=collection, stamp=stamp)
            )[0]
            if record is None:
                return no_record(collection, index, value)
            return view_response(request, projected(record_of(record, mapping), wanted))
        if policy_id == settings.default_merge_policy and not with_provenance:
            view = await store.read_view(entity, index, key)  # as stored: the hot path
            if view is None:
                return no_record(collection, index, value)
            return view_response(request, projected(view, wanted))
        found = (await store.read_profiles(entity, [(index, key)]))[0]
        if found is None:
            return no_record(collection, index, value)
        document = reshaped(*found, policy_id, policy, with_provenance)
        if mapping is not None:  # another policy's traits, mapped
            document = mapped_record(document, mapping)
        body = document if wanted is None else shapes.project(document, wanted)
        return view_response(request, shapes.encode(body))


class Lookup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: str
    value: str


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lookups: list[Lookup]


BATCH_EXAMPLES: dict[str, Any] = {
    "two lookups": {
        "summary": "by user_id and by anonymous_id",
        "value": {
            "lookups": [
                {"index": "user_id", "value": "u-123"},
                {"index": "anonymous_id", "value": "a-unknown"},
            ]
        },
    }
}


@router.post(
    "/v1/collections/{collection}/records/batch",
    summary="Read up to `max_batch_lookups` records in one request",
    description=(
        "One Redis round trip for the whole batch. `records` holds one entry per lookup, in "
        "request order: the record, or `null` when there is none."
    ),
    responses={
        200: {
            "description": "the records, in request order",
            "content": {"application/json": {"example": {"records": [RECORD_EXAMPLE, None]}}},
        },
        400: {"description": "malformed body, no lookups, too many lookups or a value too long"},
        403: {"description": "the API key may not read this collection"},
        404: {"description": "unknown collection"},
    },
)
async def read_records(
    collection: str,
    request: Request,
    body: BatchRequest = Body(openapi_examples=BATCH_EXAMPLES),  # noqa: B008
    fields: str | None = Query(None, description=FIELDS_DESCRIPTION),
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    entity = collection_entity(request, collection, principal)
    settings = services(request).settings
    lookups = body.lookups
    if not lookups:
        raise ApiError(400, "lookups should have at least one item")
    if len(lookups) > settings.max_batch_lookups:
        raise ApiError(
            400,
            f"lookups should have at most {settings.max_batch_lookups} items, not {len(lookups)}",
        )
    for number, lookup in enumerate(lookups):
        check_id(f"lookups.{number}.index", lookup.index, settings)
        check_id(f"lookups.{number}.value", lookup.value, settings)
    store = services(request).store
    keys = [(lu.index, lookup_value(request, entity, lu.index, lu.value)) for lu in lookups]
    wanted = shapes.parse_fields(fields)
    mapping = mapping_of(settings, entity, collection)
    if mapping is not None:
        found = await store.read_records(entity, keys, collection=collection, stamp=mapping.stamp)
        views = [None if one is None else record_of(one, mapping) for one in found]
    else:
        views = await store.read_views(entity, keys)
    records = b",".join(b"null" if view is None else projected(view, wanted) for view in views)
    return Response(b'{"records":[' + records + b"]}", media_type="application/json")


router.routes.extend(direct.routes)
