"""The FastAPI app: serves the materialised profile views, nothing computed per read.

A read is one Redis round trip (index lookup and fetch run inside Redis) and the
stored JSON bytes go out as they are: no model is built for the response body.

The app is assembled here from one module per concern: the three read shapes
(`records`, `activation`, `entities`), `operations` (health, readiness, metrics) and
`middleware` (limits, instrumentation). Routes find the settings and the store on
`request.app.state`. The hot reads are `api.direct` routes, served on a short path
ahead of FastAPI's per-request layers (`DirectApp`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import activation, entities, errors, merge_policies, middleware, operations, records
from api.direct import DirectApp
from api.instrumented import InstrumentedStore
from api.keys import KeyStore, RedisKeyStore
from api.policy_store import PolicyStore, RedisPolicyStore
from attributes.identities import IdentityRules
from traitflow.config import Settings
from traitflow.redis_store import RedisProfileStore
from traitflow.resp import RespClient
from traitflow.runtime import tune_gc
from traitflow.store import ProfileStore


def create_app(
    settings: Settings,
    store: ProfileStore | None = None,
    keys: KeyStore | None = None,
    policies: PolicyStore | None = None,
) -> FastAPI:

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # one lean connection for every command a request sends (key records, the
        # rate-limit charge, profiles, merge policies): a request's charge and its read
        # go out in one write (api.auth.admit), and any of them that Redis does not
        # answer fails within the client's timeout (traitflow.resp.TIMEOUT_S)
        reads = RespClient.from_url(settings.redis_url)
        app.state.keys = (  # the API keys (api.auth): Redis unless a test gives its own
            keys
            if keys is not None
            else RedisKeyStore.from_url(
                settings.redis_url, settings.key_prefix, settings.api_key_cache_s, reads
            )
        )
        app.state.store = (
            store
            if store is not None
            else InstrumentedStore(  # times every Redis round trip for /metrics
                RedisProfileStore.from_url(settings.redis_url, settings.key_prefix, reads),
                app.state.metrics,
            )
        )
        app.state.policies = (  # merge policies made through the API (api.merge_policies)
            policies
            if policies is not None
            else RedisPolicyStore.from_url(
                settings.redis_url, settings.key_prefix, settings.api_policy_cache_s, reads
            )
        )
        try:
            yield
        finally:
            await app.state.policies.close()
            await app.state.keys.close()
            await app.state.store.close()
            await reads.close()

    app = DirectApp(title="traitflow", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    #: entity -> its identity rules: lookups are normalised as the worker indexed them
    app.state.identities = {
        entity: IdentityRules(spec) for entity, spec in settings.entities.items()
    }
    errors.install(app)
    middleware.install(app, settings)
    for module in (operations, records, activation, entities, merge_policies):
        # the routes themselves: FastAPI matches the routes of an `include_router`-ed
        # router through a wrapper that cost ~14% of a record read's CPU
        app.router.routes.extend(module.router.routes)
    return app


def served_app(settings: Settings) -> FastAPI:
    """The app as `traitflow api` serves it, in a process whose garbage collector is
    tuned for a long run (`traitflow.runtime.tune_gc`)."""
    app = create_app(settings)
    tune_gc()
    return app


def create_served_app() -> FastAPI:
    """The factory each uvicorn worker process calls: an entry point, so the one place
    such a process reads its environment."""
    return served_app(Settings.from_environ(os.environ))
