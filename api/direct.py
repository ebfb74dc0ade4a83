"""`DirectRoute`: a documented FastAPI route without FastAPI's per-request machinery.

A read route is a few microseconds of our own work around one Redis round trip, and
FastAPI's dependency resolution and parameter validation cost many times that per
request (`solve_dependencies` re-inspects annotations on every call; figures in
bench/README.md, `bench.api`). A `DirectRoute` keeps the
route's declaration, so OpenAPI documents its parameters, bodies and responses exactly
as before, but calls the endpoint with the path and query parameters as the strings
they are (missing query parameters as None) and nothing is injected or validated: the
endpoint must take only `request` and `str`/`str | None` parameters and check them
itself. Authentication is then explicit: `async with admitted(request) as principal:`.

`DirectApp` goes one step further: it serves its direct routes ahead of FastAPI's own
per-request layers (see there).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import Token
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import Principal, admit, authenticate, settle
from api.gate import PENDING, Charge

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class DirectRoute(APIRoute):
    """Use as `APIRouter(route_class=DirectRoute)`."""

    #: the endpoint called with a `Request`, without Starlette's wrapper (`DirectApp`)
    direct_handler: Handler

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
            arguments: dict[str, Any]
            if request.scope["query_string"]:
                query = request.query_params
                arguments = {name: query.get(alias) for name, alias in query_names}
            else:  # the common case, without building `query_params`
                arguments = dict.fromkeys(name for name, _ in query_names)
            arguments.update(request.path_params)
            response: Response = await endpoint(request=request, **arguments)
            return response

        self.direct_handler = handle
        return handle


def admitted(request: Request) -> Admission:
    """`async with admitted(request) as principal:` (see `Admission`)."""
    return Admission(request)


class Admission:
    """`authenticate` for a direct route, with the rate-limit charge pending while the
    block runs: the block's first read carries it and happens only if the key had a
    token (`api.gate`); if the block reads nothing the charge is sent when it ends. A
    429 takes precedence over whatever the block answered, as it would have if it had
    been checked first. Honours `app.dependency_overrides` for `authenticate`, as
    `Depends(authenticate)` would (tests replace it there). A class, not an
    `asynccontextmanager`: this runs on every read, and a generator costs more."""

    __slots__ = ("_charge", "_pending", "_request")

    def __init__(self, request: Request) -> None:
        self._request = request
        self._charge: Charge | None = None
        self._pending: Token[Charge | None] | None = None

    async def __aenter__(self) -> Principal:
        request = self._request
        override = request.app.dependency_overrides.get(authenticate)
        if override is not None:
            principal: Principal = await override(request)
            return principal
        principal, self._charge = await admit(request)
        self._pending = PENDING.set(self._charge)
        return principal

    async def __aexit__(self, *exc_info: object) -> None:
        if self._charge is not None:
            if self._pending is not None:
                PENDING.reset(self._pending)
            await settle(self._request, self._charge)


class DirectApp(FastAPI):
    """A FastAPI app that answers the requests of its direct routes itself.

    FastAPI runs every request through layers a direct route has no use for: its
    telemetry check, its own body limit, Starlette's exception middleware, an exit
    stack, the router's walk and the `request_response` wrapper, each with its own
    closures per request. Together they were about a third of a record read's CPU
    (bench/README.md). Here a request whose method and path match one of the
    direct routes goes through a shorter stack that does
    the same for it: `ServerErrorMiddleware` (a 500 for a bug, re-raised to the
    server), the app's own middleware (`app.add_middleware`: metrics, limits) and
    `DirectEndpoint` (the route, then the app's exception handlers). Anything else
    (other methods or paths, an app behind a `root_path`) takes the full stack, where
    the router also tries the direct routes first. The routes are fixed when the first
    request builds the stacks, as Starlette fixes the middleware then.

    Not on the short path: FastAPI's native OpenTelemetry spans (FastAPI 0.165 starts
    one per request when a tracer provider is configured). Direct routes are in the
    app's Prometheus metrics instead (`api.middleware.RequestMetrics`).
    """

    #: (methods, route) of each direct route, in the router's order
    _direct_routes: tuple[tuple[frozenset[str], DirectRoute], ...] = ()
    _direct_stack: ASGIApp | None = None

    def build_middleware_stack(self) -> ASGIApp:
        # the router tries the direct routes first too (a stable sort: the order among
        # each kind stays), so that the short path answers what the router would
        self.router.routes.sort(key=lambda route: not isinstance(route, DirectRoute))
        direct = [route for route in self.router.routes if isinstance(route, DirectRoute)]
        self._direct_routes = tuple((frozenset(route.methods or ()), route) for route in direct)
        stack: ASGIApp = DirectEndpoint(self.exception_handlers)
        for cls, args, kwargs in reversed(self.user_middleware):
            stack = cls(stack, *args, **kwargs)
        error_handler = self.exception_handlers.get(500) or self.exception_handlers.get(Exception)
        self._direct_stack = ServerErrorMiddleware(stack, handler=error_handler, debug=self.debug)
        return super().build_middleware_stack()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            if self.middleware_stack is None:
                self.middleware_stack = self.build_middleware_stack()
            method, path = scope["method"], scope["path"]
            for methods, route in self._direct_routes:
                if method not in methods:
                    continue
                match = route.path_regex.match(path)
                if match is not None:
                    convertors = route.param_convertors
                    scope["app"] = self
                    scope["route"] = route
                    scope["endpoint"] = route.endpoint
                    scope["path_params"] = {
                        name: convertors[name].convert(value)
                        for name, value in match.groupdict().items()
                    }
                    assert self._direct_stack is not None
                    await self._direct_stack(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


ExceptionHandler = Callable[[Request, Exception], Response | Awaitable[Response]]


class DirectEndpoint:
    """The end of `DirectApp`'s short stack: calls the matched route's handler and
    answers what it raises with the app's exception handlers, as Starlette's
    `ExceptionMiddleware` would; an exception without a handler goes up to
    `ServerErrorMiddleware`."""

    def __init__(self, handlers: dict[Any, Callable[..., Any]]) -> None:
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route: DirectRoute = scope["route"]
        request = Request(scope, receive)
        try:
            response = await route.direct_handler(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> ExceptionHandler | None:
        if isinstance(exc, HTTPException) and exc.status_code in self.handlers:
            return self.handlers[exc.status_code]
        for cls in type(exc).__mro__:
            handler = self.handlers.get(cls)
            if handler is not None:
                return handler
        return None
