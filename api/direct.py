"""`DirectRoute`: a documented FastAPI route without FastAPI's per-request machinery.

A read route is a few microseconds of our own work around one Redis round trip, and
FastAPI's dependency resolution and parameter validation cost ~200 µs of CPU per
request on this machine (fastapi 0.165: `solve_dependencies` re-inspects annotations on
every call), which made a record read ~6 times a constant endpoint. A `DirectRoute` keeps the
route's declaration, so OpenAPI documents its parameters, bodies and responses exactly
as before, but calls the endpoint with the path and query parameters as the strings
they are (missing query parameters as None) and nothing is injected or validated: the
endpoint must take only `request` and `str`/`str | None` parameters and check them
itself. Authentication is then explicit: `async with admitted(request) as principal:`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from api.auth import Principal, admit, authenticate, settle

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class DirectRoute(APIRoute):
    """Use as `APIRouter(route_class=DirectRoute)`."""

    def get_route_handler(self) -> Handler:
        endpoint = self.endpoint
        dependant = self.dependant
        ignored = (
            dependant.header_params,
            dependant.cookie_params,
            dependant.body_params,
            dependant.dependencies,
        )
        if any(ignored):
            raise TypeError(
                f"{self.path}: a DirectRoute endpoint takes only the request, path and query "
                "parameters (nothing would check or inject the others)"
            )
        #: (argument name, query-string name): `alias` is the name in the query string
        path_names = {field.name for field in dependant.path_params}
        query_names = [
            (field.name, field.alias)
            for field in dependant.query_params
            if field.name not in path_names
        ]

        async def handle(request: Request) -> Response:
            query = request.query_params
            arguments: dict[str, Any] = {name: query.get(alias) for name, alias in query_names}
            arguments.update(request.path_params)
            response: Response = await endpoint(request=request, **arguments)
            return response

        return handle


@asynccontextmanager
async def admitted(request: Request) -> AsyncIterator[Principal]:
    """`authenticate` for a direct route, with the rate-limit charge settled when the
    block ends, so that the route's Redis read goes out with it (`api.auth.admit`). A
    429 takes precedence over whatever the block answered, as it would have if it had
    been checked first. Honours `app.dependency_overrides` for `authenticate`, as
    `Depends(authenticate)` would (tests replace it there)."""
    override = request.app.dependency_overrides.get(authenticate)
    if override is not None:
        yield await override(request)
        return
    principal, charge = await admit(request)
    try:
        yield principal
    finally:
        await settle(charge)
