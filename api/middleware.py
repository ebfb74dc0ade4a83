"""Request limits and instrumentation around every route: plain ASGI middleware.

One small class each, called per request with no task, no `Request` object and no
copy of the body (Starlette's `BaseHTTPMiddleware` costs a task and a stream per
request). Order, outermost first: `RequestMetrics` (so that it also times and counts
the 413s), then `BodySizeLimit`, then the app.
"""

from __future__ import annotations

from time import perf_counter

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors
from api.instrumented import ApiMetrics
from attributes.errors import InputError
from traitflow.config import Settings

UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes"


class BodyTooLarge(HTTPException, InputError):
    """A request body over the limit: 413. An `HTTPException` first, which FastAPI passes
    on as it is, and which the app's handlers (and `BodySizeLimit`) answer."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit))


class BodySizeLimit:
    """Bodies over `limit` bytes are a 413 JSON error.

    A `Content-Length` over the limit is refused before the app runs, without reading
    the body. A chunked body (or one that lies about its length) is counted as the app
    reads it: the read that crosses the limit raises `BodyTooLarge`, which FastAPI
    passes on as the HTTPException it is, and the app's handlers answer 413; so no
    more than `limit` bytes plus one chunk are ever held."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        declared: int | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    chunked = True  # unknown length: count what arrives
            elif name == b"transfer-encoding":
                chunked = True
        if declared is not None and declared > limit:
            await errors.error(413, too_large(limit))(scope, receive, send)
            return
        if not chunked:
            # no body, or the server delivers no more than the declared length
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            # read outside the handlers' reach (e.g. by another middleware)
            if started:
                raise
            await errors.error(413, str(exc.detail))(scope, receive, send)


class RequestMetrics:
    """Counts and times every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        status = 500

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, status_send)
        finally:
            method = scope["method"]
            self.metrics.observe_request(
                method if method in METHODS else "OTHER",
                getattr(scope.get("route"), "path", UNMATCHED),
                status,
                perf_counter() - start,
            )


def install(app: FastAPI, settings: Settings, metrics: ApiMetrics) -> None:
    """Add the middleware to `app`, counting requests in `metrics` (the app's services'
    own: `/metrics` serves them)."""
    # add_middleware puts each new one outside the ones before
    app.add_middleware(BodySizeLimit, limit=settings.api_max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
