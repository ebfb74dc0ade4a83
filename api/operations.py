"""Operations endpoints: liveness, readiness and Prometheus metrics. No API key needed:
they say nothing about profiles, and probes and scrapers carry none.

- `GET /healthz`: the process is up (no I/O);
- `GET /readyz`: the settings are loaded, and Redis answers a PING and takes a write
  (each read charges its key's rate limit) within `api_ready_timeout_s`; otherwise
  503 `{"status": "unavailable", "failing": [dependency], "error": reason}`, the reason
  without any address;
- `GET /metrics`: Prometheus text format, from the app's own registry
  (`api.instrumented`), the audience sizes and profile counts read from Redis for each
  scrape.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import errors
from api.audiences import observe_sizes
from api.errors import ApiError
from api.keys import KeyStore
from api.profile_status import observe_counts
from api.state import services, services_if_any
from attributes.errors import StoreError
from traitflow.store import ProfileStore

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


def _json(example: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": example}}}


@router.get(
    "/healthz",
    summary="Liveness: the process is up",
    responses={200: _json({"status": "ok"}, "the process answers")},
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: settings loaded, Redis answering and taking writes",
    response_model=None,
    responses={
        200: _json({"status": "ready"}, "ready to serve reads"),
        503: _json(
            {"status": "unavailable", "failing": ["redis"], "error": "redis: READONLY"},
            "not ready: which dependency fails (`settings` or `redis`) and how (`redis: "
            "connection`, `redis: no answer within 0.5 s`, `redis: ` and an error reply's "
            "code: `LOADING`, `READONLY`, `OOM`, ...), never where it is (the log says)",
        ),
    },
)
async def readyz(request: Request) -> Response | dict[str, str]:
    state = services_if_any(request)
    if state is None:
        return _unready("settings", "settings: not loaded")
    if not state.is_open():
        return _unready("redis", "redis: store not open")
    settings = state.settings
    try:
        await asyncio.wait_for(_redis_serves(state.store, state.keys), settings.api_ready_timeout_s)
    except TimeoutError:
        log.warning(
            "readiness: Redis at %s did not answer within %g s",
            errors.store_address(settings.redis_url),
            settings.api_ready_timeout_s,
        )
        return _unready("redis", f"redis: no answer within {settings.api_ready_timeout_s:g} s")
    except Exception as exc:
        kind = errors.store_error_kind(exc)
        where = errors.store_address(settings.redis_url)
        log.warning("readiness: Redis at %s failed (%s): %r", where, kind, exc)
        return _unready("redis", f"redis: {kind}")
    return {"status": "ready"}


#: the key id the readiness probe charges: not 12 hex digits, so no real key's
PROBE_KEY_ID = "readyz"


async def _redis_serves(store: ProfileStore, keys: KeyStore) -> None:
    """What every authenticated read needs of Redis: an answer (a PING through the
    profile store: a Redis that is down or loading fails here) and a write, since each
    read charges its key's rate limit (a rate-limit charge on a bucket of the probe's
    own, gone a second later: a read-only replica or a Redis out of memory, which
    still answer a PING, fail here)."""
    await store.ping()
    await keys.take(PROBE_KEY_ID, rate_per_s=1000.0, burst=1)


def _unready(dependency: str, reason: str) -> Response:
    """Which dependency fails and how, without where it is (the log has that)."""
    body = {"status": "unavailable", "failing": [dependency], "error": reason}
    return Response(orjson.dumps(body), status_code=503, media_type="application/json")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {
                "text/plain": {
                    "example": 'traitflow_api_requests_total{method="GET",route="/healthz",'
                    'status="200"} 3.0\n'
                }
            },
        }
    },
)
async def metrics(request: Request) -> Response:
    state = services(request)
    try:
        await observe_sizes(request, state.metrics.audience_size)
    except (ApiError, StoreError) as exc:  # the other metrics are still worth a scrape
        log.warning("audience sizes not refreshed for /metrics: %s", exc)
    try:
        await observe_counts(request, state.metrics.profile_counts)
    except (ApiError, StoreError) as exc:
        log.warning("profile counts not refreshed for /metrics: %s", exc)
    registry = state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
