"""STUB (being written): the activation endpoints."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
