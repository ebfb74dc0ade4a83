"""STUB (being written): request limits and instrumentation around every route."""

from __future__ import annotations

from fastapi import FastAPI

from traitflow.config import Settings


def install(app: FastAPI, settings: Settings) -> None:
    """Add the middleware to `app`."""
