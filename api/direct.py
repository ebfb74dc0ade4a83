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

from collections.abc import Awaitable, Callable, Coroutine
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


def admitted(request: Request) -> Admission:
    """`async with admitted(request) as principal:` (see `Admission`)."""
    return Admission(request)


class Admission:
    """`authenticate` for a direct route, with the rate-limit charge settled when the
    block ends, so that the route's Redis read goes out with it (`api.auth.admit`). A
    429 takes precedence over whatever the block answered, as it would have if it had
    been checked first. Honours `app.dependency_overrides` for `authenticate`, as
    `Depends(authenticate)` would (tests replace it there). A class, not an
    `asynccontextmanager`: this runs on every read, and a generator costs more."""

    __slots__ = ("_charge", "_request")

    def __init__(self, request: Request) -> None:
        self._request = request
        self._charge: Awaitable[float | bytes] | None = None

    async def __aenter__(self) -> Principal:
        request = self._request
        override = request.app.dependency_overrides.get(authenticate)
        if override is not None:
            principal: Principal = await override(request)
            return principal
        principal, self._charge = await admit(request)
        return principal

    async def __aexit__(self, *exc_info: object) -> None:
        if self._charge is not None:
            await settle(self._charge)
