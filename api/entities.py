"""STUB (being written): the entities endpoints."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
