"""Records: Hightouch's Personalization API shape."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from api import errors
from api.auth import Principal, authenticate
from api.caching import view_response
from traitflow.store import ProfileStore

router = APIRouter()


@router.get(
    "/v1/collections/{collection}/records/{index}/{value}",
    summary="Read one record (Hightouch Personalization API shape)",
    responses={404: {"description": "unknown collection, or no such record"}},
)
async def read_record(
    collection: str,
    index: str,
    value: str,
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    entity = request.app.state.settings.collections.get(collection)
    if entity is None:
        return errors.error(404, f"collection {collection!r} not found")
    store: ProfileStore = request.app.state.store
    view = await store.read_view(entity, index, value)
    if view is None:
        return errors.error(404, f"no record with {index} = {value!r} in {collection!r}")
    return view_response(request, view)
