"""The API's route modules: registering one is one line in `ROUTE_MODULES`.

A route module exposes `router`, a FastAPI `APIRouter` (made with
`route_class=DirectRoute` for a hot read: `api.direct`), and its routes find their
services with `api.state.services(request)`; nothing else needs to know it exists
(README, "Add an API route or an entity"). The app factory includes every registered
module's routes, in this order, which is the order routes are matched in.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module

from fastapi import APIRouter

#: every route module the API serves, in matching order
ROUTE_MODULES: tuple[str, ...] = (
    "api.operations",
    "api.records",
    "api.activation",
    "api.entities",
    "api.erasures",
    "api.source_jobs",
    "api.merge_policies",
    "api.computed_attributes",
    "api.audiences",
    "api.profile_status",
    "api.ingest",
    "api.td_admin",
    "api.exports",
    "api.explorer",
    "api.td",  # last: its `POST /{database}/{table}` matches any two-segment path
)


def routers(modules: Sequence[str] = ROUTE_MODULES) -> list[APIRouter]:
    """The `router` of each module named, imported; a module without one is refused
    when the app is made, not when its first request fails."""
    found = []
    for name in modules:
        router = getattr(import_module(name), "router", None)
        if not isinstance(router, APIRouter):
            raise TypeError(f"route module {name} has no `router` (a fastapi.APIRouter)")
        found.append(router)
    return found
