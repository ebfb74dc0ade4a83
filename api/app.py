"""The FastAPI app: serves the materialised profile views, nothing computed per read.

A read is one Redis round trip (index lookup and fetch run inside Redis) and the
stored JSON bytes go out as they are: no model is built for the response body.

The app is assembled here from one module per concern: the route modules registered
in `api.routes` (the three read shapes `records`, `activation`, `entities`;
`operations`: health, readiness, metrics; `merge_policies`) and `middleware` (limits,
instrumentation). Routes find the settings and the stores in the app's typed
services (`api.state.services(request)`), which this factory makes. The hot reads are
`api.direct` routes, served on a short path ahead of FastAPI's per-request layers
(`DirectApp`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors, middleware
from api.direct import DirectApp
from api.gate import GatedReads
from api.instrumented import ApiMetrics, InstrumentedStore
from api.key_layout import ApiKeyLayout
from api.keys import KeyStore, RedisKeyStore
from api.policy_store import PolicyStore, RedisPolicyStore
from api.publisher import KafkaPublisher, Publisher
from api.routes import ROUTE_MODULES, routers
from api.spread_store import ChargedSpreadStore
from api.state import ApiState, attach
from api.td_config import load_personalization
from api.td_services import Personalization, RedisServiceStore, ServiceStore
from traitflow.config import Settings
from traitflow.export_run import ExportMetrics, ExportRunner
from traitflow.export_store import ExportJobs
from traitflow.memory_store import MemoryProfileStore
from traitflow.recomputation_requests import catalog_recomputation
from traitflow.redis_client import RedisTarget, resp_client
from traitflow.redis_store import RedisProfileStore
from traitflow.resp import RespClient
from traitflow.rule_catalog import RedisRuleCatalog, RuleCatalog
from traitflow.runtime import tune_gc
from traitflow.source_job_run import SourceJobMetrics, SourceJobRunner
from traitflow.source_jobs import MemorySourceJobs, SourceJobStore
from traitflow.spread_source_jobs import source_job_store
from traitflow.store import ProfileStore


def create_app(
    settings: Settings,
    store: ProfileStore | None = None,
    keys: KeyStore | None = None,
    policies: PolicyStore | None = None,
    route_modules: Sequence[str] = ROUTE_MODULES,
    publisher: Publisher | None = None,
    personalization: ServiceStore | None = None,
    catalog: RuleCatalog | None = None,
    source_jobs: SourceJobStore | None = None,
) -> FastAPI:
    """The app over `settings`, serving the routes of `route_modules` (`api.routes`).
    The stores given are used as they are (tests, benchmarks); those not given are
    Redis's, opened by the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # one lean connection for every command a request sends (key records, the
        # rate-limit charge, profiles, merge policies): a request's charge and its read
        # go in one script (api.gate), and any of them that Redis does not
        # answer fails within the client's timeout (traitflow.resp.TIMEOUT_S)
        reads = resp_client(settings)
        if keys is None:  # a read goes behind its key's charge (api.gate)
            reads = GatedReads(reads, ApiKeyLayout(settings.key_prefix))
        state.keys = (  # Redis unless a test gives its own
            keys
            if keys is not None
            else RedisKeyStore.from_url(
                settings, settings.key_prefix, settings.api_key_cache_s, reads
            )
        )
        state.store = (
            store
            if store is not None
            else InstrumentedStore(  # times every Redis round trip for /metrics
                profile_store(settings, reads), state.metrics
            )
        )
        state.policies = (
            policies
            if policies is not None
            else RedisPolicyStore.from_url(
                settings, settings.key_prefix, settings.api_policy_cache_s, reads
            )
        )
        state.catalog = catalog or RedisRuleCatalog.from_url(settings, settings.key_prefix)
        # the broker is connected to on the first publish (`api.publisher`)
        state.publisher = publisher or KafkaPublisher.from_settings(settings)
        # source delete jobs: an app given a memory store scans that one (tests); this
        # process runs jobs unless told not to, or unless it was given its stores
        state.source_jobs = source_jobs or (
            MemorySourceJobs(store)
            if isinstance(store, MemoryProfileStore)
            else source_job_store(settings)
        )
        source_runner = None
        if settings.source_jobs_in_api and store is None:
            running = SourceJobRunner(
                settings,
                state.source_jobs,
                state.publisher.publish_batch,
                recompute=catalog_recomputation(settings, state.catalog),
                metrics=job_metrics,
            )
            source_runner = asyncio.create_task(running.run_forever())
        state.personalization = Personalization(
            configured,
            personalization
            if personalization is not None
            else RedisServiceStore(reads, settings.key_prefix, settings.api_key_cache_s),
            entities=list(settings.entities),
            topics=list(settings.sources),
        )
        # export jobs get a connection of their own (a round's MGET of hundreds of views
        # would queue ahead of the reads on theirs); this process runs jobs unless told
        # not to, or unless it was given its stores (a test's app has no Redis to export)
        exports = resp_client(settings)
        state.exports = ExportJobs(exports, settings.key_prefix)
        runner = None
        if settings.export_in_api and store is None:
            state.export_runner = ExportRunner(settings, exports, export_metrics)
            runner = asyncio.create_task(state.export_runner.run_forever())
        try:
            yield
        finally:
            if source_runner is not None:  # a job it runs is let go, for another to take
                source_runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await source_runner
            await state.source_jobs.close()
            if runner is not None:  # a job it runs is let go, for another to take over
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
            await exports.close()
            await state.publisher.close()
            await state.catalog.close()
            await state.policies.close()
            await state.keys.close()
            await state.store.close()
            await reads.close()

    # a broken personalization file stops the API here, naming file, line and problem
    configured = (
        {}
        if settings.personalization_file is None
        else load_personalization(
            settings.personalization_file, list(settings.entities), list(settings.sources)
        )
    )
    state = ApiState(settings, ApiMetrics())
    job_metrics = SourceJobMetrics(state.metrics.registry)
    export_metrics = ExportMetrics(state.metrics.registry)
    app = DirectApp(title="traitflow", version="0.1.0", lifespan=lifespan)
    attach(app, state)
    errors.install(app)
    middleware.install(app, settings, state.metrics)
    for router in routers(route_modules):
        # the routes themselves: FastAPI matches the routes of an `include_router`-ed
        # router through a wrapper that was a noticeable share of a record read's CPU
        app.router.routes.extend(router.routes)
    return app


def profile_store(settings: Settings, reads: RespClient) -> ProfileStore:
    """The API's Redis profile store: on the spread layout, its own (`api.spread_store`)."""
    if settings.redis_layout != "spread":
        return RedisProfileStore.from_url(settings, settings.key_prefix, reads)
    return ChargedSpreadStore.from_url(
        RedisTarget.of(settings), settings.key_prefix, settings.redis_buckets
    )


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
