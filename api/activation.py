"""Activation: RudderStack's Activation API shape.

`POST /v2/activation` with `{"entity", "destinationId", "id": {"type", "value"}}`
answers `{"entity", "id", "data"}`, `data` holding the attributes the destination
exposes (`Settings.destinations`), `{}` when no profile has that id. Statuses and
messages are RudderStack's: 401 for a missing token or a destination the token may not
read, 404 for an absent, blank or unknown destination, 400 `{"message": ...}` for a
malformed request.

The body is checked by hand, not by a model: RudderStack answers a missing destination
with a 404 before it looks at the rest, and its 400s say `message`, not `error`.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from api import shapes
from api.auth import Principal
from api.caching import view_response
from api.direct import DirectRoute, admitted
from api.errors import ApiError
from api.records import cached, check_id, lookup_value
from api.state import services

#: the hot path: no per-request FastAPI machinery (`api.direct`)
router = APIRouter(route_class=DirectRoute)

UNAUTHORIZED = "Unauthorized request. Please check your access token"
INVALID_DESTINATION = "Invalid Destination. Please verify you are passing the right destination ID"


def _bad(message: str) -> ApiError:
    return ApiError(400, message, field="message")


def _nonblank_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["entity", "destinationId", "id"],
    "properties": {
        "entity": {"type": "string", "description": "the entity type, e.g. `user`"},
        "destinationId": {"type": "string", "description": "a configured destination"},
        "id": {
            "type": "object",
            "required": ["type", "value"],
            "properties": {
                "type": {"type": "string", "description": "an identity index, or `id`"},
                "value": {"type": "string"},
            },
        },
    },
}

REQUEST_EXAMPLE = {
    "entity": "user",
    "destinationId": "web-personalisation",
    "id": {"type": "user_id", "value": "u-123"},
}


def _json(example: Any) -> dict[str, Any]:
    return {"content": {"application/json": {"example": example}}}


@router.post(
    "/v2/activation",
    summary="Read a profile's destination attributes (RudderStack Activation API shape)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": REQUEST_SCHEMA,
                    "examples": {"by user_id": {"value": REQUEST_EXAMPLE}},
                }
            },
        }
    },
    responses=cached(
        {
            200: {
                "description": "the destination's attributes; `data` is `{}` for an unknown id",
                **_json(
                    {
                        "entity": "user",
                        "id": {"type": "user_id", "value": "u-123"},
                        "data": {"lifetime_value": 70.5, "purchase_count": 3},
                    }
                ),
            },
            400: {
                "description": "malformed request",
                **_json({"message": "id should have at least one item"}),
            },
            401: {
                "description": "missing token, or no access to the destination",
                **_json({"error": UNAUTHORIZED}),
            },
            404: {
                "description": "absent, blank or unknown destination",
                **_json({"error": INVALID_DESTINATION}),
            },
        }
    ),
)
async def activate(request: Request) -> Response:
    try:
        async with admitted(request) as principal:
            return await _activate(request, principal)
    except ApiError as exc:  # RudderStack's message for every 401
        if exc.status == 401:
            raise ApiError(401, UNAUTHORIZED, exc.headers) from exc
        raise


async def _activate(request: Request, principal: Principal) -> Response:
    settings = services(request).settings
    try:  # orjson, not msgspec: it refuses nesting deeper than 1024 instead of recursing
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise _bad(f"request body should be a JSON object ({exc})") from exc
    if not isinstance(body, dict):
        raise _bad("request body should be a JSON object")

    destination_id = body.get("destinationId")
    if not _nonblank_str(destination_id):
        raise ApiError(404, INVALID_DESTINATION)
    assert isinstance(destination_id, str)
    if not principal.may_read_destination(destination_id):
        raise ApiError(401, UNAUTHORIZED)
    destination = settings.destinations.get(destination_id)
    if destination is None:
        raise ApiError(404, INVALID_DESTINATION)

    entity = body.get("entity")
    if not _nonblank_str(entity):
        raise _bad("entity should be a non-empty string")
    if entity != destination.entity:
        raise _bad(
            f"entity {entity!r} is not served by destination {destination_id!r} "
            f"(it serves {destination.entity!r})"
        )

    identity = body.get("id")
    if identity is None or identity == {}:
        raise _bad("id should have at least one item")
    if not isinstance(identity, dict):
        raise _bad("id should be an object with type and value")
    id_type, id_value = identity.get("type"), identity.get("value")
    if not _nonblank_str(id_type):
        raise _bad("id.type should be a non-empty string")
    if not _nonblank_str(id_value):
        raise _bad("id.value should be a non-empty string")
    assert isinstance(id_type, str)
    assert isinstance(id_value, str)
    check_id("id.type", id_type, settings, field="message")
    check_id("id.value", id_value, settings, field="message")

    store = services(request).store
    view = await store.read_view(
        destination.entity, id_type, lookup_value(request, destination.entity, id_type, id_value)
    )
    data = (
        {}
        if view is None
        else shapes.activation_data(
            shapes.decode_view(view), destination.attributes, destination.traits
        )
    )
    answer = {"entity": entity, "id": {"type": id_type, "value": id_value}, "data": data}
    return view_response(request, shapes.encode(answer))
