"""Who is calling: the `Principal` behind a request's API key, and what it may read.

Every data route depends on `authenticate`: `Authorization: Bearer <key>` is checked
against the hashed key records (`api.keys`) and counted against the key's rate limit.
Routes then check the principal's scope themselves, because what "outside the scope"
answers differs by route (403 in general, 401 where RudderStack's contract says so).

Cost per request: the key record comes from the key store's in-process cache
(`TRAITFLOW_API_KEY_CACHE_S`, a Redis GET when stale) and the rate limit is one Lua
script call, which on the direct routes (`api.direct`) also does the route's read, only
if the key had a token (`api.gate`): one Redis round trip per request in all, and none
of it a profile read for a refused request.

Abuse stays in the process (`api.auth_limits`): an unknown or revoked key id is
remembered as such for `TRAITFLOW_API_NEGATIVE_KEY_TTL_S`, and an address that failed
to authenticate more than its bucket allows gets 429s; neither asks Redis anything.
Treasure Data's route (`api.td`) takes the same keys in its own header and answers
its own 401, through the same `admit_key`, so it is protected alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from api.auth_limits import client_address
from api.errors import ApiError
from api.gate import Charge
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


#: how a route answers a failed authentication: its own 401 saying the message (TD's
#: route, `api.td`, has another scheme and error shape than `Bearer` keys)
Unauthorized = Callable[[str], Exception]


async def authenticate(request: Request) -> Principal:
    """The request's principal (a FastAPI dependency); raises `ApiError` 401/429.

    Unknown, wrong and revoked keys get the same answer: a caller learns nothing
    about which keys exist."""
    principal, charge = await admit(request)
    await settle(request, charge)
    return principal


async def admit(request: Request) -> tuple[Principal, Charge]:
    """The request's principal (401 if none, 429 if its address failed too often), and
    its rate-limit charge, not sent yet: a direct route's first read carries it
    (`api.gate`), else `settle` sends it. A refused key is charged nothing.

    Redis is asked for a key record only when this process has no fresh copy of it,
    the id is not remembered as unknown, and the client's address may still fail
    (`api.auth_limits`): a key this process has read before is looked up even from
    an address that failed too often, so a valid client sharing it goes on."""
    header = request.headers.get("authorization")
    if not header:
        raise failed(request, "missing API key: send the header 'Authorization: Bearer <key>'")
    scheme, _, token = header.partition(" ")
    parsed = parse_token(token.strip()) if scheme.lower() == "bearer" else None
    if parsed is None:
        raise failed(
            request, "malformed API key: expected 'Authorization: Bearer tf_<id>_<secret>'"
        )
    key, charge = await admit_key(request, *parsed)
    return Principal.of(key), charge


async def admit_key(
    request: Request, key_id: str, secret: str, unauthorized: Unauthorized = _unauthorized
) -> tuple[ApiKey, Charge]:
    """The key a request's token (`key_id`, `secret`) names and its charge, not sent
    yet, as `admit` finds them, whatever header carried the token: `unauthorized`
    makes the route's 401. What keeps abuse in the process (the memory of unknown ids,
    the failures per address) is then the same for every route that takes API keys."""
    state = services(request)
    keys = state.keys
    paid_by = None  # the address whose failure bucket paid for the lookup, if one did
    if not keys.has_read(key_id):
        if key_id in state.unknown_keys:
            address = client_address(request, state.settings.api_trusted_proxies)
            wait = state.auth_failures.fail(address)
            if wait > 0:
                raise _throttled(request, wait)
            state.metrics.observe_refusal("unknown_key_cached")  # (a 429 is counted as such)
            raise unauthorized(INVALID)
        # a lookup that may find nothing is paid for as a failure before it is sent, and
        # paid back if it finds the key: concurrent requests from one address can then
        # send no more lookups than its bucket holds
        paid_by = client_address(request, state.settings.api_trusted_proxies)
        wait = state.auth_failures.fail(paid_by)
        if wait > 0:
            raise _throttled(request, wait)
    try:
        key = await keys.lookup(key_id)
    except BaseException:  # Redis failed (a 503): that was no failure of the client's
        if paid_by is not None:
            state.auth_failures.refund(paid_by)
        raise
    if key is None:
        state.unknown_keys.add(key_id)
    if key is None or not key.verifies(secret):
        raise failed(request, INVALID, unauthorized) if paid_by is None else unauthorized(INVALID)
    if paid_by is not None:
        state.auth_failures.refund(paid_by)
    settings = state.settings
    rate, burst = key.rate_per_s or settings.api_rate_per_s, key.burst or settings.api_burst
    return key, Charge(keys, key_id, rate, burst)


INVALID = "invalid API key"


def failed(request: Request, message: str, unauthorized: Unauthorized = _unauthorized) -> Exception:
    """A failed authentication: a 401 (`unauthorized`), counted against the client's
    address; a 429 instead once the address has no failure left."""
    state = services(request)
    wait = state.auth_failures.fail(client_address(request, state.settings.api_trusted_proxies))
    return unauthorized(message) if wait <= 0 else _throttled(request, wait)


def _throttled(request: Request, wait: float) -> ApiError:
    services(request).metrics.observe_refusal("auth_failures")
    return ApiError(
        429,
        "too many failed authentications from this address",
        headers={"Retry-After": retry_after(wait)},
    )


async def settle(request: Request, charge: Charge) -> None:
    """Wait for a charge from `admit`, sending it if no read carried it; a 429 with
    `Retry-After` if the key had no token."""
    wait = await charge.settle()
    if wait > 0:
        services(request).metrics.observe_refusal("key_rate_limit")
        raise ApiError(
            429, "rate limit exceeded for this API key", headers={"Retry-After": retry_after(wait)}
        )
