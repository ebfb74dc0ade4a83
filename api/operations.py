"""Operations endpoints: liveness (`/healthz`); readiness and metrics are being added."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
