"""The FastAPI app: serves the materialised profile views, nothing computed per read.

A read is one Redis round trip (index lookup and fetch run inside Redis) and the
stored JSON bytes go out as they are: no model is built for the response body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from api import errors
from traitflow.config import Settings
from traitflow.store import ProfileStore, RedisProfileStore


def create_app(settings: Settings | None = None, store: ProfileStore | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = (
            store
            if store is not None
            else RedisProfileStore.from_url(settings.redis_url, settings.key_prefix)
        )
        try:
            yield
        finally:
            await app.state.store.close()

    app = FastAPI(title="traitflow", version="0.1.0", lifespan=lifespan)
    errors.install(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/v1/collections/{collection}/records/{index}/{value}",
        summary="Read one record (Hightouch Personalization API shape)",
        responses={404: {"description": "unknown collection, or no such record"}},
    )
    async def read_record(collection: str, index: str, value: str, request: Request) -> Response:
        entity = settings.collections.get(collection)
        if entity is None:
            return errors.error(404, f"collection {collection!r} not found")
        store: ProfileStore = request.app.state.store
        view = await store.read_view(entity, index, value)
        if view is None:
            return errors.error(404, f"no record with {index} = {value!r} in {collection!r}")
        return Response(view, media_type="application/json")

    return app
