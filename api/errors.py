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

from api.state import services_if_any
from attributes.errors import TraitflowError
from traitflow.resp import Address, RespConnectionError, RespError

log = logging.getLogger(__name__)

#: the body of every 503 for a Redis failure: what to do, nothing of what or where
UNAVAILABLE = "profile store unavailable; try again"
#: seconds: the API's Redis client reconnects on the next command, so one second is
#: enough for a restart or a failover the client can follow to be seen
RETRY_AFTER_S = "1"


def error(
    status: int, message: str, headers: dict[str, str] | None = None, field: str = "error"
) -> Response:
    return Response(
        orjson.dumps({field: message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


class ApiError(TraitflowError):
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


#: redis-py's exception for each error code it strips from the message (redis-py 8
#: keeps the code in `status_code`; older ones only in the class)
_REDIS_PY_CODES: dict[type[BaseException], str] = {
    redis.exceptions.BusyLoadingError: "LOADING",
    redis.exceptions.ReadOnlyError: "READONLY",
    redis.exceptions.OutOfMemoryError: "OOM",
    redis.exceptions.MovedError: "MOVED",
    redis.exceptions.AskError: "ASK",
    redis.exceptions.TryAgainError: "TRYAGAIN",
    redis.exceptions.MasterDownError: "MASTERDOWN",
    redis.exceptions.ClusterDownError: "CLUSTERDOWN",
    redis.exceptions.NoPermissionError: "NOPERM",
    redis.exceptions.NoScriptError: "NOSCRIPT",
    redis.exceptions.ExecAbortError: "EXECABORT",
}


def store_error_kind(exc: BaseException) -> str:
    """A short, address-free name for a store failure (a metric label, a readiness
    reason): an error reply's code (`LOADING`, `READONLY`, `OOM`, `MOVED`, ...), else
    `timeout` or `connection`. Bounded: Redis's error codes are a short list."""
    if isinstance(exc, RespError):
        return exc.code
    if isinstance(exc, redis.exceptions.RedisError):
        code = getattr(exc, "status_code", None)
        if isinstance(code, str) and code:
            return code
        for cls in type(exc).__mro__:  # the most specific first: MovedError is an AskError
            if cls in _REDIS_PY_CODES:
                return _REDIS_PY_CODES[cls]
        if isinstance(exc, redis.exceptions.ResponseError):
            return RespError(str(exc)).code  # a code redis-py does not strip, else ERR
    if isinstance(exc, TimeoutError | redis.exceptions.TimeoutError):
        return "timeout"
    return "connection"


def store_address(url: str) -> str:
    """Where a Redis URL points, for the log: host and port (or the socket's path),
    never the URL itself, which may carry a password."""
    try:
        address = Address.from_url(url)
    except ValueError:
        return "an unreadable URL"
    return address.path if address.path is not None else f"{address.host}:{address.port}"


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    """Any failure of Redis (down, not answering, loading, read-only, out of memory) is
    not the caller's fault, and not a bug of theirs: 503, and when to try again. What
    failed and where (host, port, the error's text) goes to the log, once per request,
    and its kind to the metric; never to the caller."""
    kind = store_error_kind(exc)
    state = services_if_any(request)
    where = store_address(state.settings.redis_url) if state is not None else "?"
    log.warning(
        "%s %s: 503, Redis at %s failed (%s): %r",
        request.method,
        request.url.path,
        where,
        kind,
        exc,
    )
    if state is not None:
        state.metrics.observe_store_error(kind)
    return error(503, UNAVAILABLE, headers={"Retry-After": RETRY_AFTER_S})


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
