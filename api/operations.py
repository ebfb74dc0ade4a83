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
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import errors
from api.instrumented import ApiMetrics
from traitflow.config import Settings

router = APIRouter(tags=["operations"])


def _json(example: dict[str, str], description: str) -> dict[str, Any]:
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
            {"error": "redis did not answer: ConnectionError: Error 111 connecting"},
            "not ready: Redis unreachable or too slow, or no settings",
        ),
    },
)
async def readyz(request: Request) -> Response | dict[str, str]:
    state = request.app.state
    if not isinstance(getattr(state, "settings", None), Settings):
        return errors.error(503, "settings not loaded")
    store = getattr(state, "store", None)
    if store is None:
        return errors.error(503, "store not open")
    settings: Settings = state.settings
    try:
        await asyncio.wait_for(store.ping(), settings.api_ready_timeout_s)
    except TimeoutError:
        return errors.error(503, f"redis did not answer within {settings.api_ready_timeout_s:g} s")
    except Exception as exc:
        return errors.error(503, f"redis did not answer: {type(exc).__name__}: {exc}")
    return {"status": "ready"}


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
