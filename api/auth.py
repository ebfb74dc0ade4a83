"""Who is calling: the `Principal` behind a request's API key, and what it may read.

Every data route depends on `authenticate`: `Authorization: Bearer <key>` is checked
against the hashed key records (`api.keys`) and counted against the key's rate limit.
Routes then check the principal's scope themselves, because what "outside the scope"
answers differs by route (403 in general, 401 where RudderStack's contract says so).

Cost per request: the key record comes from the key store's in-process cache
(`TRAITFLOW_API_KEY_CACHE_S`, a Redis GET when stale) and the rate limit is one Lua
script call, which the direct routes (`api.direct`) send in the same write as their
read: one Redis round trip per request in all.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

from fastapi import Request

from api.errors import ApiError
from api.keys import ApiKey, parse_token
from api.ratelimit import retry_after
from api.state import services


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated API key and its scopes."""

    key_id: str
    admin: bool = False
    collections: frozenset[str] = frozenset()
    destinations: frozenset[str] = frozenset()

    def may_read_collection(self, collection: str) -> bool:
        return self.admin or collection in self.collections

    def may_read_destination(self, destination: str) -> bool:
        return self.admin or destination in self.destinations

    @classmethod
    def of(cls, key: ApiKey) -> Principal:
        return cls(key.key_id, key.admin, key.collections, key.destinations)


def _unauthorized(message: str) -> ApiError:
    # RFC 6750: a 401 names the scheme the client should use
    return ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})


async def authenticate(request: Request) -> Principal:
    """The request's principal (a FastAPI dependency); raises `ApiError` 401/429.

    Unknown, wrong and revoked keys get the same answer: a caller learns nothing
    about which keys exist."""
    principal, charge = await admit(request)
    await settle(charge)
    return principal


async def admit(request: Request) -> tuple[Principal, Awaitable[float | bytes]]:
    """The request's principal (401 if none), and its rate-limit charge, started but
    not awaited: a route that sends its Redis read before awaiting the charge
    (`settle`) has both commands go to Redis in one write (`traitflow.resp`), one
    round trip instead of two. A refused key is charged nothing."""
    header = request.headers.get("authorization")
    if not header:
        raise _unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
    scheme, _, token = header.partition(" ")
    parsed = parse_token(token.strip()) if scheme.lower() == "bearer" else None
    if parsed is None:
        raise _unauthorized("malformed API key: expected 'Authorization: Bearer tf_<id>_<secret>'")
    key_id, secret = parsed
    state = services(request)
    keys = state.keys
    key = await keys.lookup(key_id)
    if key is None or not key.verifies(secret):
        raise _unauthorized("invalid API key")
    settings = state.settings
    rate, burst = key.rate_per_s or settings.api_rate_per_s, key.burst or settings.api_burst
    return Principal.of(key), keys.charge(key_id, rate, burst)


async def settle(charge: Awaitable[float | bytes]) -> None:
    """Wait for a charge from `admit`; a 429 with `Retry-After` if the key has no token."""
    wait = float(await charge)
    if wait > 0:
        raise ApiError(
            429, "rate limit exceeded for this API key", headers={"Retry-After": retry_after(wait)}
        )
