"""Every error the API returns is JSON `{"error": "..."}` with a 4xx status: a client
gets something to act on, never a pydantic trace or a 500 for its own mistake. An
unreachable profile store is a 503 with `Retry-After`."""

from __future__ import annotations

import orjson
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from traitflow.resp import RespConnectionError


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


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    """Redis down or not answering is not the caller's fault, and not a bug: 503, and
    when to try again."""
    return error(503, f"profile store unavailable: {exc}", headers={"Retry-After": "1"})


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    for unavailable in (
        RespConnectionError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        TimeoutError,
    ):
        app.add_exception_handler(unavailable, _store_unavailable)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
