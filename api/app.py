"""The FastAPI app: serves the materialised profile views, nothing computed per read.

A read is one Redis round trip (index lookup and fetch run inside Redis) and the
stored JSON bytes go out as they are: no model is built for the response body.

The app is assembled here from one module per concern: the three read shapes
(`records`, `activation`, `entities`), `operations` (health, readiness, metrics) and
`middleware` (limits, instrumentation). Routes find the settings and the store on
`request.app.state`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import activation, entities, errors, middleware, operations, records
from api.instrumented import InstrumentedStore
from api.keys import KeyStore, RedisKeyStore
from traitflow.config import Settings
from traitflow.store import ProfileStore, RedisProfileStore


def create_app(
    settings: Settings | None = None,
    store: ProfileStore | None = None,
    keys: KeyStore | None = None,
) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.keys = (  # the API keys (api.auth): Redis unless a test gives its own
            keys
            if keys is not None
            else RedisKeyStore.from_url(
                settings.redis_url, settings.key_prefix, settings.api_key_cache_s
            )
        )
        app.state.store = (
            store
            if store is not None
            else InstrumentedStore(  # times every Redis round trip for /metrics
                RedisProfileStore.from_url(settings.redis_url, settings.key_prefix),
                app.state.metrics,
            )
        )
        try:
            yield
        finally:
            await app.state.keys.close()
            await app.state.store.close()

    app = FastAPI(title="traitflow", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    errors.install(app)
    middleware.install(app, settings)
    for module in (operations, records, activation, entities):
        app.include_router(module.router)
    return app
