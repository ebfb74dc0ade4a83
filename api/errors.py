"""Every error the API returns is JSON `{"error": "..."}` with a 4xx status: a client
gets something to act on, never a pydantic trace or a 500 for its own mistake. A
profile store that fails in any way is a 503 with `Retry-After` and no detail (the
detail is logged)."""

from __future__ import annotations

import logging

import orjson
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from traitflow.resp import RespConnectionError, RespError

log = logging.getLogger(__name__)


def error(
    status: int, message: str, headers: dict[str, str] | None = None, field: str = "error"
) -> Response:
    return Response(
        orjson.dumps({field: message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


class ApiError(Exception):
    """Raised anywhere in a request: answered as JSON `{field: message}` with `status`.

    `field` is "error" except where a product's contract says otherwise (RudderStack's
    400s are `{"message": ...}`)."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        field: str = "error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.field = field


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error(exc.status, exc.message, exc.headers, exc.field)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in exc.errors()
    )
    return error(400, problems or "invalid request")


def store_error_kind(exc: BaseException) -> str:
    """A short, address-free name for a store failure (a metric label, a readiness
    reason): an error reply's first word (`LOADING`, `READONLY`, `OOM`, `MOVED`, ...),
    else `timeout` or `connection`."""
    if isinstance(exc, RespError | redis.exceptions.ResponseError):
        word = str(exc).split(" ", 1)[0]
        return word if word.isupper() and word.isalpha() else "error"
    if isinstance(exc, TimeoutError | redis.exceptions.TimeoutError):
        return "timeout"
    return "connection"


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    """Any failure of Redis (down, not answering, loading, read-only, out of memory) is
    not the caller's fault, and not a bug of theirs: 503, and when to try again. What
    failed and where (host, port, the error's text) goes to the log and the metric,
    never to the caller."""
    kind = store_error_kind(exc)
    log.warning("%s %s: profile store failed (%s): %r", request.method, request.url.path, kind, exc)
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.observe_store_error(kind)
    return error(503, "profile store unavailable; try again", headers={"Retry-After": "1"})


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    for unavailable in (  # looked up along each exception's MRO: bases cover the rest
        RespError,
        RespConnectionError,
        redis.exceptions.RedisError,
        TimeoutError,
        ConnectionError,
    ):
        app.add_exception_handler(unavailable, _store_unavailable)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
