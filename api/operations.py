"""Operations endpoints: liveness, readiness and Prometheus metrics. No API key needed:
they say nothing about profiles, and probes and scrapers carry none.

- `GET /healthz`: the process is up (no I/O);
- `GET /readyz`: the settings are loaded and Redis answers a PING within
  `api_ready_timeout_s`; 503 otherwise, with the reason;
- `GET /metrics`: Prometheus text format, from the app's own registry
  (`api.instrumented`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import errors
from api.instrumented import ApiMetrics
from traitflow.config import Settings

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
    summary="Readiness: settings loaded and Redis answering",
    response_model=None,
    responses={
        200: _json({"status": "ready"}, "ready to serve reads"),
        503: _json(
            {"status": "unavailable", "failing": ["redis"], "error": "redis: connection"},
            "not ready: what fails (Redis unreachable, too slow or refusing; no settings),"
            " never where it is",
        ),
    },
)
async def readyz(request: Request) -> Response | dict[str, str]:
    state = request.app.state
    if not isinstance(getattr(state, "settings", None), Settings):
        return _unready("settings", "settings: not loaded")
    store = getattr(state, "store", None)
    if store is None:
        return _unready("redis", "redis: store not open")
    settings: Settings = state.settings
    try:
        await asyncio.wait_for(store.ping(), settings.api_ready_timeout_s)
    except TimeoutError:
        return _unready("redis", f"redis: no answer within {settings.api_ready_timeout_s:g} s")
    except Exception as exc:
        log.warning("readiness: Redis failed: %r", exc)  # the detail, with its address
        return _unready("redis", f"redis: {errors.store_error_kind(exc)}")
    return {"status": "ready"}


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
    registry = request.app.state.metrics
    assert isinstance(registry, ApiMetrics)
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
